"""`benchmarks/train_bench.py --quick` runs end to end: every layout, the TRL comparison, the tables and the JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_train_bench_quick(tmp_path):
    out = tmp_path / "train_bench.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "train_bench.py"), "--quick", "--threads", "1"]
    proc = subprocess.run([*command, "--json", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = proc.stdout
    for header in ("machine:", "layout", "lists/s", "peak MB", "shared / naive", "target N=2", "runner", "pairs/s"):
        assert header in text, f"{header!r} missing from:\n{text}"
    assert "FAILED" not in text

    data = json.loads(out.read_text())
    assert [(r["layout"], r["n"]) for r in data["results"]] == [
        ("naive", 2),
        ("shared-online", 2),
        ("shared-precomputed", 2),
    ]
    for r in data["results"]:
        assert r["lists_per_s"] > 0 and r["peak_mb"] >= 0 and r["total_mb"] > 0
        assert math.isclose(r["losses"][0], math.log(2), rel_tol=1e-4)  # policy = reference at step 1
    naive, online, precomputed = data["results"]
    assert naive["tokens_per_step"] > online["tokens_per_step"] > precomputed["tokens_per_step"]
    assert (naive["images_per_step"], online["images_per_step"], precomputed["images_per_step"]) == (4, 2, 1)

    # TRL and the project train on the very same model and pair: equal step-1 log-probs of the chosen answer.
    pairs = {p["runner"]: p for p in data["pairs"]}
    assert set(pairs) == {"trl-dpo", "perpo-dpo-online", "perpo-dpo-precomputed"}
    trl, ours = pairs["trl-dpo"], pairs["perpo-dpo-online"]
    assert trl["pairs_per_s"] > 0 and ours["pairs_per_s"] > 0
    assert trl["first_logps_chosen"] == pytest.approx(ours["first_logps_chosen"], rel=1e-3)
