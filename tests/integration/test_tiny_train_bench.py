"""`benchmarks/tiny_train_bench.py --quick` runs end to end: equality check, both paths, the table, the JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_tiny_train_bench_quick(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "tiny_train_bench.py"), "--quick", "--threads", "1"]
    command += ["--responses", "jitter", "--work", str(tmp_path / "work"), "--json", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for text in ("machine:", "torch threads 1", "equality", "-> OK", "today", "fast", "ratio", "whole run"):
        assert text in proc.stdout, f"{text!r} missing from:\n{proc.stdout}"

    data = json.loads(out.read_text())
    assert data["equality"]["ok"] and data["equality"]["memo_lists"] > 0 and data["equality"]["cached_lists"] > 0
    assert sorted(r["path"] for r in data["runs"]) == ["fast", "today"]
    for run in data["runs"]:
        assert len(run["step_s"]) == 4 and run["run_lists_per_s"] > 0  # 16 lists, 8 per step, 2 epochs
    assert data["tokens"]["tree_total_tokens"] < data["tokens"]["shared_tokens"]
