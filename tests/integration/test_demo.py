"""`perpo demo --quick`: the whole PerPO loop end to end through the real CLI, every artefact checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

PERPO = Path(sys.executable).with_name("perpo")  # the installed console script


def test_quick_demo_runs_every_stage_and_writes_every_artefact(tmp_path, base_model_asset):
    out = tmp_path / "demo"
    done = subprocess.run([str(PERPO), "demo", "--quick", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout

    config = json.loads((out / "demo_config.json").read_text())
    assert config["DemoConfig"]["quick"] is True and config["meta"]["versions"]["torch"]
    assert (out / "data" / "manifest.json").is_file()
    stats = json.loads((out / "lists" / "stats.json").read_text())
    kept = stats["lists"]["kept"]
    assert kept >= 2 and len((out / "lists" / "train.jsonl").read_text().splitlines()) == kept
    Image.open(out / "lists" / "stats.png").verify()
    for method in ("sft", "dpo", "lipo", "perpo"):
        assert (out / "models" / method / "adapter_model.safetensors").is_file(), method
        results = json.loads((out / "eval" / method / "results.json").read_text())["results"]
        assert {"perpo_synth_test", "perpo_synth_test_noimg"} <= set(results)
    base = json.loads((out / "eval" / "base" / "results.json").read_text())["results"]
    assert "ap50_bo4,none" in base["perpo_synth_test_bon4"]  # the best-of-k curve (best-of-4 in quick mode)

    report = out / "report"
    index = (report / "index.md").read_text()
    table = (report / "tables" / "synth.md").read_text()
    for label in ("base", "+ SFT", "+ DPO", "+ LiPO-λ", "+ PerPO"):
        assert f"| {label} |" in table and label in index
    assert table in printed  # the demo prints the Table-1-style table
    figures = sorted((report / "figures").glob("*.png"))
    assert {p.stem for p in figures} >= {"best_of_n_ap50", "best_of_n_iou", "image_ablation"}, figures
    for figure in figures:
        Image.open(figure).verify()
        assert f"figures/{figure.name}" in index
    assert (report / "comparison" / "index.md").is_file() and "comparison/index.md" in index

    summary = json.loads((out / "summary.json").read_text())
    stage_names = ["synthetic data and base model", "sample", "rewards and margin filter", "train"]
    assert set(summary["timings_s"]) == {*stage_names, "evaluate (lmms-eval)", "report"}
    assert "[6/6] report" in printed and "min left" in printed

    # the several-seed table reads the same folders (here one seed: means without spread)
    seeds = subprocess.run(
        [sys.executable, str(Path(__file__).parents[2] / "scripts" / "demo_seeds.py"), str(out)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = {line.split(" | ")[0].strip("| "): line for line in seeds.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"base", "sft", "dpo", "lipo", "perpo"}
    assert rows["perpo"].split(" | ")[-2].startswith(("+", "-"))  # the paired gain over the base


def test_the_hyper_parameter_search_scores_every_trial_and_resumes(tmp_path, base_model_asset):
    out = tmp_path / "search"
    command = [
        sys.executable, str(Path(__file__).parents[2] / "scripts" / "demo_search.py"), "--out", str(out), "--quick",
        "--methods", "sft", "perpo", "--lrs", "1e-4", "--betas", "0.1", "0.5", "--sft_lrs", "1e-3",
    ]  # fmt: skip
    subprocess.run(command, capture_output=True, text=True, check=True)
    search = json.loads((out / "search.json").read_text())
    assert [(r["method"], r["lr"], r["beta"]) for r in search["rows"]] == [
        ("base", None, None), ("sft", 1e-3, None), ("perpo", 1e-4, 0.1), ("perpo", 1e-4, 0.5)
    ]  # fmt: skip
    assert search["best_lr"]["sft"] == {"lr": 1e-3, "beta": None}
    assert search["best_lr"]["perpo"]["beta"] in (0.1, 0.5)
    assert "| perpo" in (out / "search.md").read_text()

    # a second run finds every adapter trained (trial.json) and only scores them: the same table, no training
    adapters = sorted((out / "models").glob("*/adapter_model.safetensors"))
    written = [a.stat().st_mtime_ns for a in adapters]
    assert len(adapters) == 3
    subprocess.run(command, capture_output=True, text=True, check=True)
    assert [a.stat().st_mtime_ns for a in adapters] == written
    assert json.loads((out / "search.json").read_text())["rows"] == search["rows"]
