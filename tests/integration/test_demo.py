"""`perpo demo --quick` end to end through the CLI, on the committed base model."""

from __future__ import annotations

import json

import pytest

from perpo.cli import main

pytestmark = pytest.mark.slow


def test_quick_demo_reports_the_base_models_ap50(tmp_path, capsys, base_model_asset):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["base"]["ap50"] <= 1.0 and summary["base"]["n"] > 0
    assert f"AP@50 {100 * summary['base']['ap50']:.1f}%" in printed
    assert (out / "demo_config.json").is_file() and (out / "data" / "manifest.json").is_file()
