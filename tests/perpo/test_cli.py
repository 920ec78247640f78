"""The `perpo` command line: help everywhere, clear errors for bad input."""

from __future__ import annotations

import json
import sys

import pytest

from perpo.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"perpo {name}" in out and len(out) > 200


def test_unknown_command_is_an_error(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_unknown_yaml_key_names_the_valid_ones(tmp_path, capsys):
    config = tmp_path / "warm.yaml"
    config.write_text("data: d\nout: o\nstep: 3\n")
    assert main(["warmup", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unknown option(s) 'step' (did you mean 'steps'?)" in err and str(config) in err


def test_bad_choice_fails_at_start_up(capsys):
    assert main(["warmup", "--data", "d", "--out", "o", "--frame", "square"]) == 2
    assert "frame must be one of" in capsys.readouterr().err


def test_the_deepspeed_launchers_leading_local_rank_reaches_the_command(monkeypatch):
    """`deepspeed -m perpo.cli train ...` runs `perpo.cli --local_rank=0 train ...`: the flag moves after it."""
    import dataclasses

    seen = {}

    def fake_train(argv):
        seen["argv"] = argv
        return 0

    monkeypatch.setitem(COMMANDS, "train", dataclasses.replace(COMMANDS["train"], run=fake_train))
    assert main(["--local_rank=3", "train", "cfg.yaml", "--beta", "0.2"]) == 0
    assert seen["argv"] == ["cfg.yaml", "--beta", "0.2", "--local_rank=3"]


def test_help_says_each_default_once_and_what_a_negative_flag_does(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert out.startswith("usage: perpo train [CONFIG.yaml] [--option VALUE ...]")
    assert "--no_cache_reference, --no-cache-reference turn --cache_reference off" in out
    assert "(default: data's folder) --loss" in out  # the help's own default, not a second "(default: None)"
    assert "(default: None)" not in out and "(default: tree)" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["warmup", "--data", "d", "--out", "o", "--lr", "nan"], "--lr must be a finite number > 0, got nan"),
        (["warmup", "--data", "d", "--out", "o", "--loose_share", "1.5"], "--loose_share must be a finite number"),
        (["sample", "--model", "m", "--instructions", "i", "--out", "o", "--top_p", "inf"], "--top_p must be"),
        (["demo", "--epochs", "-1"], "--epochs must be a finite number > 0, got -1.0"),
        (["eval", "--model", "m", "--tasks", "t", "--output_dir", "o", "--limit", "0"], "--limit must be"),
        (["build-data", "--samples", "s", "--out", "o", "--margin", "nan"], "--margin must be a finite number"),
        (["compare", "a", "b", "--out", "o", "--gallery_size", "-1"], "--gallery_size must be >= 0, got -1"),
        (["report", "--runs", "a", "--out", "o", "--gallery_size", "-2"], "--gallery_size must be >= 0, got -2"),
    ],
)
def test_numeric_options_are_checked_at_parse_time(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["data", "synth", "--out", "o", "--train", "-1"], ["tiny-model", "--out", "o", "--text-layers", "0"]],
)
def test_counts_below_their_bound_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "must be >= " in capsys.readouterr().err


def test_resume_from_checkpoint_names_what_is_wrong(tmp_path):
    from perpo.config import ConfigError
    from perpo.training.resume import resume_point

    assert resume_point(tmp_path / "fresh", None) is None  # nothing to resume: start afresh
    with pytest.raises(ConfigError, match="--resume_from_checkpoint true: no complete checkpoint-N in"):
        resume_point(tmp_path, "true")
    (tmp_path / "checkpoint-5").mkdir()
    with pytest.raises(ConfigError, match="checkpoint-5: incomplete \\(no trainer_state.json"):
        resume_point(tmp_path, str(tmp_path / "checkpoint-5"))
    (tmp_path / "checkpoint-5" / "trainer_state.json").write_text('{"global_st')
    with pytest.raises(ConfigError, match="trainer_state.json is torn"):
        resume_point(tmp_path, str(tmp_path / "checkpoint-5"))


def test_a_run_stopped_before_its_first_checkpoint_does_not_block_a_changed_rerun(tmp_path):
    from perpo.config import ConfigError
    from perpo.training.resume import check_rerun, rerun_key

    stored = {"PerPOArguments": {"beta": 0.1}, "TrainingArguments": {"learning_rate": 0.0}, "data_sha256": "x"}
    (tmp_path / "train_config.json").write_text(json.dumps(stored))
    fixed = rerun_key({"beta": 0.1}, {"learning_rate": 1e-4}, "x")
    check_rerun(tmp_path, fixed)  # nothing to resume: the corrected command simply starts again
    (tmp_path / "checkpoint-1").mkdir()
    with pytest.raises(ConfigError, match=r"other settings \(learning_rate: 0.0 -> 0.0001\)"):
        check_rerun(tmp_path, fixed)


def test_perpo_grpo_without_trl_names_the_extra_in_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl raises ImportError
    assert main(["grpo", "--help"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "pip install 'perpo[grpo]'" in error, error


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["train", "--model_name_or_path", "m", "--data", "d", "--learning-rte", "3"], "--learning_rate"),
        (["sample", "--model", "m", "--instructions", "i", "--out", "o", "--temprature", "0.5"], "--temperature"),
        (["build-data", "--samples", "s", "--out", "o", "--margn", "0.8"], "--margin"),
        (["eval", "--model", "m", "--tasks", "t", "--output_dir", "o", "--batchsize", "8"], "--batch_size"),
    ],
)
def test_a_misspelt_flag_is_one_argparse_line_with_the_flag_it_meant(argv, hint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    last = error.strip().splitlines()[-1]
    assert f"unrecognized arguments: {' '.join(argv[-2:])} (did you mean {hint}?)" in last
    assert "Traceback" not in error and len(error.strip().splitlines()) <= 2  # argparse's usage line + the error
