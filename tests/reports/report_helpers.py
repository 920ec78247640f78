"""Paths and helpers of the reports tests (fixtures: tests/fixtures/reports, see its PROVENANCE.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "reports"
BASE = FIXTURES / "synth_base"
AFTER = FIXTURES / "synth_perpo"
RAW = FIXTURES / "raw_lmms_eval"
IMAGES = FIXTURES / "images"
GOLDEN = FIXTURES / "golden"


def trained_copy(tmp_path: Path, name: str, **train: object) -> Path:
    """A copy of the PerPO fixture run whose adapter's train_config.json has `train` overrides (loss, n, gamma)
    and, with `margin`, its own stats.json: the shape of a sweep over training settings. Returns the eval folder."""
    run = tmp_path / name
    shutil.copytree(AFTER, run)
    adapter = tmp_path / f"{name}_adapter"
    shutil.copytree(FIXTURES / "adapters" / "synth_perpo", adapter)
    config = json.loads((adapter / "train_config.json").read_text())
    margin = train.pop("margin", None)
    config["PerPOArguments"].update(train)
    if margin is not None:
        data = tmp_path / f"{name}_data"
        data.mkdir()
        (data / "stats.json").write_text(json.dumps({"margin_threshold": margin}))
        config["PerPOArguments"]["data"] = str(data / "train.jsonl")
    (adapter / "train_config.json").write_text(json.dumps(config))
    eval_config = json.loads((run / "eval_config.json").read_text())
    eval_config["EvalConfig"]["adapter"] = str(adapter)
    (run / "eval_config.json").write_text(json.dumps(eval_config))
    return run


def scale_metric(run: Path, task: str, metric: str, factor: float) -> None:
    """Multiply one metric of a copied run's results.json (to give sweep points distinct values)."""
    path = run / "results.json"
    results = json.loads(path.read_text())
    results["results"][task][f"{metric},none"] *= factor
    path.write_text(json.dumps(results))
