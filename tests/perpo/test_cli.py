"""The `perpo` command line: help everywhere, clear errors for bad input."""

from __future__ import annotations

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
