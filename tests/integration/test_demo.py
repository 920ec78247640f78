"""`perpo demo --quick`: the whole PerPO loop end to end through the real CLI, every artefact checked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

PERPO = Path(sys.executable).with_name("perpo")  # the installed console script


def test_quick_demo_runs_every_stage_and_writes_every_artefact(tmp_path, base_model_asset):
    """`perpo demo --quick --study online`: the demo's stages, then iterative PerPO and GRPO beside it."""
    out = tmp_path / "demo"
    command = [str(PERPO), "demo", "--quick", "--study", "online", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
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
        # the trainer's log history, one JSON line per log (the console shows a bar and a summary line instead)
        lines = (out / "models" / method / "train_log.jsonl").read_text().splitlines()
        history = [json.loads(line) for line in lines]
        assert "loss" in history[0] and any("train_runtime" in entry for entry in history), method
        # held-out and train-list AP@50 after training (the demo's --heldout), logged and on the summary line
        assert {"heldout/ap50", "train_lists/ap50"} <= set(history[-1]), method
        assert 0 <= history[-1]["heldout/ap50"] <= 1 and (out / "models" / method / "heldout.json").is_file()
        assert ("rewards/accuracy" in history[0]) == (method != "sft")
        assert list((out / "models" / method / "runs").glob("*/events.out.tfevents.*")), method  # TensorBoard
        assert re.search(
            rf"^  {method} +trained {kept} lists × 1 epoch in [\d.]+ s \([\d.]+ lists/s\), final .*"
            r"AP@50 on its lists [\d.]+%, held-out AP@50 [\d.]+%$",
            printed,
            re.M,
        )
    for model in ("base", "sft", "dpo", "lipo", "perpo"):
        results = json.loads((out / "eval" / model / "results.json").read_text())["results"]
        assert {"perpo_synth_test", "perpo_synth_test_blankimg"} <= set(results), model  # Figure 1c's pair
        assert 0 <= results["perpo_synth_test_blankimg"]["ap50,none"] <= 1
        assert re.search(rf"^  {model} +test AP@50 [\d.]+%, blank image [\d.]+%", printed, re.M), model
        linked = out / "logs" / f"lmms_eval_{model}.log"  # lmms-eval's output: in the eval folder, linked in logs/
        assert linked.read_text() == (out / "eval" / model / "lmms_eval.log").read_text()
    base = json.loads((out / "eval" / "base" / "results.json").read_text())["results"]
    assert "ap50_bo4,none" in base["perpo_synth_test_bon4"]  # the best-of-k curve (best-of-4 in quick mode)

    # a quiet console: no trainer dicts, no library logging (in logs/demo.log instead); the stages and summaries stay
    log = (out / "logs" / "demo.log").read_text()
    assert "perpo.embedded.synth" in log and "perpo.evaluation: running" in log
    assert "{'loss'" not in printed and "{'train_runtime'" not in printed and "[WARNING]" not in printed
    assert "perpo.evaluation" not in done.stderr and "Setting accelerator to CPU" not in printed + done.stderr

    report = out / "report"
    index = (report / "index.md").read_text()
    table = (report / "tables" / "synth.md").read_text()
    for label in ("base", "+ SFT", "+ DPO", "+ LiPO-λ", "+ PerPO"):
        assert f"| {label} |" in table and label in index
    assert "| blank image AP@50 |" in table and "no image" not in table  # the column the demo evaluates
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
    threads = int(os.environ["OMP_NUM_THREADS"])  # tests/conftest.py sets it (1): the demo takes it as its budget
    assert summary["threads"] == {"train": threads, "eval_processes": 2, "eval_threads_each": max(1, threads // 2)}
    assert "[6/7] report" in printed and "min left" in printed

    # the online study: both methods trained from the same instructions, evaluated by `perpo eval` like the others
    assert "[7/7] online study: iterative PerPO and GRPO" in printed
    study = json.loads((out / "online_study.json").read_text())
    assert set(study["rows"]) == {"base", "sft", "dpo", "lipo", "perpo", "perpo_iter", "grpo"}
    instructions = len((out / "lists" / "instructions.jsonl").read_text().splitlines())
    for method in ("perpo_iter", "grpo"):
        row = study["rows"][method]
        assert 0 <= row["ap50"] <= 100 and row["best"] >= row["first"] and row["includes"] == "sampling"
        assert row["generated"] == instructions * 6 and row["steps"] >= 1, method  # quick: N = 6
        assert (
            "ap50_bo4,none"
            in json.loads((out / "eval" / method / "results.json").read_text())["results"]["perpo_synth_test_bon4"]
        )
    assert study["rows"]["perpo"]["generated"] == instructions * 6
    rows = [line.split(" | ")[0] for line in (out / "report" / "online.md").read_text().splitlines()[2:]]
    assert rows == ["| base", "| SFT", "| DPO", "| LiPO-λ", "| PerPO", "| PerPO (iterative)", "| GRPO"]
    assert (out / "report" / "online.md").read_text() in printed
    assert summary["online"]["grpo"]["ap50"] == study["rows"]["grpo"]["ap50"]

    # the several-seed table reads the same folders (here one seed: means without spread)
    seeds = subprocess.run(
        [sys.executable, str(Path(__file__).parents[2] / "scripts" / "demo_seeds.py"), str(out)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = {line.split(" | ")[0].strip("| "): line for line in seeds.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"base", "sft", "dpo", "lipo", "perpo"} and "grpo" not in rows  # the default demo's table
    assert rows["perpo"].split(" | ")[-2].startswith(("+", "-"))  # the paired gain over the base
    # and the online study's, with its budget (a --quick demo's JSON is written only where asked)
    online = subprocess.run(
        [sys.executable, str(Path(__file__).parents[2] / "scripts" / "demo_seeds.py"), "--study", "online", str(out),
         "--json", str(tmp_path / "online_seeds.json"), "--replicates", "100"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    grpo = next(line for line in online.splitlines() if line.startswith("| + GRPO |"))
    assert f"| {study['rows']['grpo']['steps']} |" in grpo and "gain vs PerPO" in online


def test_the_hyper_parameter_search_scores_every_trial_and_resumes(tmp_path, base_model_asset):
    out = tmp_path / "search"
    command = [
        sys.executable, str(Path(__file__).parents[2] / "scripts" / "demo_search.py"), "--out", str(out), "--quick",
        "--methods", "sft", "perpo", "--lrs", "1e-4", "--betas", "0.1", "0.5", "--sft_lrs", "1e-3",
    ]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "Warning" not in first.stderr and " INFO " in (out / "logs" / "search.log").read_text()  # logs to a file
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
