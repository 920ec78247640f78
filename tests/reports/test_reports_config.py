"""Report and compare configs: the shipped examples parse; mistakes fail at start-up with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_helpers import AFTER, BASE, ROOT

from perpo.cli import main
from perpo.config import ConfigError, parse_command
from reports.cli import CompareConfig
from reports.report import ReportConfig

CONFIGS = sorted((ROOT / "reports" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_configs_parse(path: Path):
    kind = CompareConfig if path.name.startswith("compare_") else ReportConfig
    (cfg,) = parse_command([kind], [str(path)], prog="test", description="")
    if kind is ReportConfig:
        assert cfg.run_specs and all(spec.path.startswith("runs/eval/") for spec in cfg.run_specs)
        assert cfg.compare["base"] in {spec.label for spec in cfg.run_specs}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("runs: [{path: a, lable: x}]", "unknown option(s) 'lable' (did you mean 'label'?)"),
        ("runs: [{path: a}]\nfigures: [best_of_m]", "unknown figure(s) ['best_of_m']"),
        ("runs: [{path: a}]\ncompare: {base: a}", "compare: needs both base and after"),
        ("runs: []", "runs: name at least one result folder"),
        ("runs: [{path: a, meta: {gama: 1}}]", "unknown meta key(s) ['gama']"),
    ],
)
def test_report_config_mistakes_fail_at_start_up(tmp_path, text, message):
    config = tmp_path / "r.yaml"
    config.write_text(f"out: {tmp_path / 'o'}\n{text}\n")
    with pytest.raises(ConfigError) as err:
        parse_command([ReportConfig], [str(config)], prog="test", description="")
    assert message in str(err.value)


def test_unknown_table_is_an_error_and_nothing_is_written(tmp_path, capsys):
    config = tmp_path / "r.yaml"
    config.write_text(f"out: {tmp_path / 'o'}\nruns: [{{path: {BASE}}}, {{path: {AFTER}}}]\ntables: [table9]\n")
    assert main(["report", str(config)]) == 2
    assert "unknown table(s) ['table9']" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_runs_and_compare_from_flags_alone():
    """`--runs` takes PATHs and path=...,label=... text, repeated or several at once; `--compare` base=..,after=..."""
    argv = ["--out", "o", "--runs", "a", "path=b,label=B,method=perpo", "--runs", "c,d", "--compare", "base=B,after=a"]
    (cfg,) = parse_command([ReportConfig], argv, prog="test", description="")
    assert [(s.path, s.label, s.method) for s in cfg.run_specs] == [
        ("a", None, None), ("b", "B", "perpo"), ("c,d", None, None)
    ]  # fmt: skip
    assert cfg.compare == {"base": "B", "after": "a"}


def test_flag_runs_add_to_a_config_files_runs(tmp_path):
    config = tmp_path / "r.yaml"
    config.write_text(f"out: {tmp_path / 'o'}\nruns: [a, {{path: b, label: B}}]\ncompare: base=B,after=a\n")
    (cfg,) = parse_command([ReportConfig], [str(config), "--runs", "path=c,label=C"], prog="test", description="")
    assert [(s.path, s.label) for s in cfg.run_specs] == [("a", None), ("b", "B"), ("c", "C")]
    assert cfg.compare == {"base": "B", "after": "a"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--runs", "path=a,lable=x"], "runs[0]: unknown option(s) 'lable' (did you mean 'label'?)"),
        (["--runs", "a", "a,label=x"], "runs[1]: expected path=...,label=...,method=...,model_label=..., got 'a,"),
        (["--runs", "label=x"], "runs[0]: 'label=x' has no path=PATH"),
        (["--runs", "a", "--compare", "base=a"], "compare: needs both base and after"),
        (["--runs", "a", "--compare", "base=a,aftr=b"], "unknown option(s) 'aftr' (did you mean 'after'?)"),
        (["--runs", "a", "--compare", "base=a,after=b,c"], "compare: expected base=...,after=..., got 'base=a,after"),
        ([], "runs: name at least one result folder (--runs PATH"),
    ],
)
def test_flag_mistakes_exit_2_with_one_line(tmp_path, capsys, argv, message):
    assert main(["report", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_perpo_report_from_flags_alone(tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["report", "--runs", f"path={BASE},label=base", f"path={AFTER},label=PerPO", "--out", str(out)]
    argv += ["--compare", "base=base,after=PerPO", "--tables", "synth", "--paper_tables", "false"]
    assert main([*argv, "--figures", "image_ablation", "--gallery_size", "0"]) == 0
    assert f"report: {out / 'index.md'}" in capsys.readouterr().out
    index = (out / "index.md").read_text(encoding="utf-8")
    assert "## Before / after" in index and "base → PerPO" in index
    assert (out / "tables" / "synth.md").is_file() and (out / "comparison" / "index.md").is_file()
