"""Reports tests run from the repository root: recorded relative paths (the adapter in the fixtures'
eval_config.json) resolve against it, as for every perpo config."""

from __future__ import annotations

import pytest
from report_helpers import ROOT


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)
