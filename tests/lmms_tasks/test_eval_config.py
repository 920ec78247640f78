"""`perpo eval`: the config, the lmms-eval command it builds, the data variables, and the shipped eval_configs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from perpo.cli import main
from perpo.config import ConfigError, parse_command
from perpo.evaluation import EvalConfig, data_environment, lmms_eval_command, model_args

ROOT = Path(__file__).resolve().parents[2]


def config(**kwargs) -> EvalConfig:
    values = {"model": "llava-hf/llava-1.5-7b-hf", "tasks": ["perpo_refcoco"], "output_dir": "out", "device": "cpu"}
    return EvalConfig(**{**values, **kwargs})


def test_perpo_llava_command(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    tasks = ["perpo_refcoco_all", "perpo_synth_val_bon20"]
    cfg = config(adapter=str(adapter), merge_adapter=True, seed=3, num_samples=8, temperature=0.7, limit=5.0,
                 tasks=tasks, extra_args=["--verbosity", "DEBUG"])  # fmt: skip
    command = lmms_eval_command(cfg, tmp_path / "raw")
    assert command[:3] == [sys.executable, "-m", "lmms_tasks"]
    joined = " ".join(command)
    assert "--model perpo_llava" in joined and "--tasks perpo_refcoco_all,perpo_synth_val_bon20" in joined
    assert f"--model_args pretrained=llava-hf/llava-1.5-7b-hf,device=cpu,seed=3,adapter={adapter.resolve()}" in joined
    assert "merge_adapter=True" in joined and "--batch_size 16" in joined and "--seed 3,3,3,3" in joined
    assert "--num_samples 8" in joined and "--gen_kwargs temperature=0.7" in joined and "--limit 5 " in joined
    assert "--log_samples" in command and command[-2:] == ["--verbosity", "DEBUG"]


def test_llava_hf_runs_batch_one_on_an_explicit_device_map():
    cfg = config(model_wrapper="llava_hf", batch_size=32)
    assert model_args(cfg) == "pretrained=llava-hf/llava-1.5-7b-hf,device=cpu,device_map=cpu,dtype=float32"
    command = lmms_eval_command(cfg, Path("raw"))
    assert command[command.index("--batch_size") + 1] == "1"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model_wrapper": "llava"}, "model_wrapper must be one of perpo_llava, llava_hf"),
        ({"tasks": []}, "tasks must be a non-empty list"),
        ({"tasks": ["a,b"]}, "without commas"),
        ({"model_wrapper": "llava_hf", "adapter": "a"}, "llava_hf cannot load a peft adapter"),
        ({"refcoco_source": "s3"}, "refcoco_source must be one of local, hub"),
        ({"batch_size": 0}, "must be >= 1"),
        ({"model": "a,b"}, "contains a comma"),
    ],
)
def test_bad_configs_fail_at_start_up(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        config(**kwargs)


def test_data_variables(tmp_path):
    cfg = config(synth_dir=str(tmp_path), refcoco_source="hub")
    assert data_environment(cfg) == {"PERPO_SYNTH_DIR": str(tmp_path.resolve()), "PERPO_REFCOCO_SOURCE": "hub"}


@pytest.mark.parametrize("path", sorted((ROOT / "eval_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_eval_configs_parse(path):
    (cfg,) = parse_command([EvalConfig], [str(path)], prog="perpo eval", description="")
    assert cfg.tasks and all(task.startswith("perpo_") for task in cfg.tasks) and cfg.output_dir


def test_unknown_key_in_an_eval_config(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model: m\ntasks: [perpo_synth_val]\noutput_dir: o\nnum_sample: 4\n")
    assert main(["eval", str(path)]) == 2
    assert "unknown option(s) 'num_sample' (did you mean 'num_samples'?)" in capsys.readouterr().err


def test_a_run_without_results_fails_and_leaves_nothing(tmp_path, monkeypatch):
    """lmms-eval exits 0 when evaluation fails; no results file must mean failure, and no half-written folder."""
    import perpo.evaluation as evaluation

    monkeypatch.setattr(evaluation, "_run", lambda command, env, log, echo: (0, "Tasks not found: other_x\n"))
    cfg = config(output_dir=str(tmp_path / "eval"), tasks=["other_x"])
    with pytest.raises(RuntimeError, match="(?s)wrote no results file.*Tasks not found: other_x"):
        evaluation.run_eval(cfg, echo=None)
    assert not (tmp_path / "eval").exists()


def test_a_task_data_error_becomes_perpo_evals_one_line(tmp_path, monkeypatch, capsys):
    """The task hooks end lmms-eval with one `lmms-eval: error:` line (exit 2); perpo eval repeats it as its own."""
    import perpo.evaluation as evaluation

    tail = "2026 | INFO | loading\nlmms-eval: error: /d/val.jsonl not found (PERPO_REFCOCO_DIR=/d). Prepare it.\n"
    monkeypatch.setattr(evaluation, "_run", lambda command, env, log, echo: (2, tail))
    path = tmp_path / "ev.yaml"
    path.write_text(f"model: m\ntasks: [perpo_refcoco_val]\noutput_dir: {tmp_path / 'eval'}\ndevice: cpu\n")
    assert main(["eval", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["perpo eval: error: /d/val.jsonl not found (PERPO_REFCOCO_DIR=/d). Prepare it."]
    assert not (tmp_path / "eval").exists()


def test_an_unknown_perpo_task_is_refused_before_lmms_eval_starts():
    with pytest.raises(ConfigError, match="unknown task 'perpo_synth_tset' \\(did you mean 'perpo_synth_test'\\?\\)"):
        config(tasks=["perpo_synth_val", "perpo_synth_tset"])
    config(tasks=["perpo_fox", "perpo_refcoco_plus_testA_bon20", "mmmu_val"])  # groups, tasks, another suite's
