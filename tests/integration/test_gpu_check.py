"""`benchmarks/gpu_check.sh` without a GPU: its step runner logs each step, goes on after a failure and exits non-zero
at the end; `sdpa_shapes.py` runs on the CPU. (The GPU steps themselves are in `benchmarks/RESULTS.md`.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def run_check(tmp_path, checks: str, **env) -> subprocess.CompletedProcess:
    environ = os.environ | {"PYTHON": sys.executable, "CHECKS": checks, "SDPA_CALLS": "2", **env}
    command = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path / "out")]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environ, timeout=600)


def test_sdpa_shapes_step_runs_on_cpu_and_is_logged(tmp_path):
    proc = run_check(tmp_path, "sdpa_shapes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "== sdpa_shapes: exit 0" in proc.stdout and "all GPU checks passed" in proc.stdout
    log = (tmp_path / "out" / "sdpa_shapes.txt").read_text()
    assert "changing/fixed" in log and "default" in log and "math" in log


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine: the machine step would pass")
def test_failed_step_is_reported_and_the_rest_still_runs(tmp_path):
    proc = run_check(tmp_path, "machine sdpa_shapes", PATH="/usr/bin:/bin")  # no nvidia-smi here
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "== machine: exit" in proc.stdout and "== sdpa_shapes: exit 0" in proc.stdout
    assert proc.stdout.strip().endswith("FAILED: machine")


def test_vllm_step_says_skipped_without_vllm_and_needs_the_tiny_loop_with_it(tmp_path):
    import importlib.util

    proc = run_check(tmp_path, "vllm_tiny")
    log = (tmp_path / "out" / "vllm_tiny.txt").read_text()
    if importlib.util.find_spec("vllm") is None:
        assert proc.returncode == 0 and "SKIPPED: vLLM is not installed here" in log
    else:
        assert proc.returncode == 1 and "needs the tiny_loop step's instructions" in log
