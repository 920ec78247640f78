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
