"""Fixtures of the lmms-eval task tests: hand-made data folders and the task folders' hooks loaded by path."""

from __future__ import annotations

from pathlib import Path

import pytest
from lmms_task_helpers import ROOT, TASKS, load_module


@pytest.fixture(scope="session")
def fixtures():
    """tests/fixtures/lmms_fixtures.py (hand-made refer layout, Fox folder, hub-style dataset)."""
    return load_module(ROOT / "tests" / "fixtures" / "lmms_fixtures.py", "lmms_fixtures")


@pytest.fixture(scope="session")
def coco_images(tmp_path_factory, fixtures) -> Path:
    return fixtures.write_images(tmp_path_factory.mktemp("coco") / "train2014")


@pytest.fixture(scope="session")
def refer_root(tmp_path_factory, fixtures) -> Path:
    return fixtures.write_refer_layout(tmp_path_factory.mktemp("refer"))


@pytest.fixture(scope="session")
def refcoco_dir(tmp_path_factory, refer_root, coco_images) -> Path:
    """What `perpo data refcoco` writes for the hand-made refer layout."""
    from perpo.data.refcoco import build_refcoco

    return build_refcoco(refer_root, coco_images, tmp_path_factory.mktemp("prepared") / "refcoco")


@pytest.fixture(scope="session")
def fox_dir(tmp_path_factory, fixtures) -> Path:
    return fixtures.write_fox(tmp_path_factory.mktemp("fox"))


@pytest.fixture(scope="session")
def refcoco_utils():
    return load_module(TASKS / "perpo_refcoco" / "utils.py", "perpo_refcoco_utils")


@pytest.fixture(scope="session")
def synth_utils():
    return load_module(TASKS / "perpo_synth" / "utils.py", "perpo_synth_utils")


@pytest.fixture(scope="session")
def fox_utils():
    return load_module(TASKS / "perpo_fox" / "utils.py", "perpo_fox_utils")
