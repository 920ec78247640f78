"""Helpers shared by the lmms-eval task tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "lmms_tasks" / "tasks"


def load_module(path: Path, name: str):
    """Import a file as a fresh module (what lmms-eval does with a task folder's utils.py)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
