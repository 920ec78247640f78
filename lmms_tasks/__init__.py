"""PerPO's lmms-eval plugin: the `perpo_*` tasks and the `perpo_llava` model wrapper.

lmms-eval 0.7.x has no plugin API for tasks. Its one hook is the `lmms_eval.models` entry-point group: every
callable registered there runs when `lmms_eval.models` is imported, which `lmms_eval.evaluator` does before the
CLI builds its `TaskManager`. `register` (our entry point, see pyproject.toml) uses it to

1. return the `ModelManifest` of `perpo_llava`, and
2. make every `TaskManager` also index `TASKS_DIR`, by wrapping `TaskManager.initialize_tasks` so that this
   folder is appended to `include_path`.

So after `pip install perpo`, a plain `lmms-eval --model ... --tasks perpo_refcoco` (and `--tasks list`) finds
the tasks. `tests/lmms_tasks/test_registration.py` fails loudly if lmms-eval changes what this relies on.

The hook stays import-light: it imports only the standard library and lmms-eval's small registry module. If
`lmms_eval.tasks` is not imported yet, the wrapper is installed the moment it is (a one-shot import hook), so
`lmms-eval models` and other registry users do not pay for the task machinery.

Fallbacks that need no entry point: `python -m lmms_tasks <lmms-eval args>` (same CLI, hook applied first), or
`lmms-eval --include_path <TASKS_DIR> ...` for the tasks alone (the model wrapper then needs the entry point).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

TASKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tasks")
"""The folder holding every `perpo_*` task YAML (what `--include_path` would be given)."""

MODEL_ID = "perpo_llava"
MODEL_CLASS_PATH = "lmms_tasks.models.perpo_llava.PerpoLlava"
_PATCH_MARK = "_perpo_tasks_dir"


def _with_tasks_dir(include_path: str | list[str] | None) -> list[str]:
    paths = [] if include_path is None else [include_path] if isinstance(include_path, str) else list(include_path)
    if not any(os.path.realpath(p) == os.path.realpath(TASKS_DIR) for p in paths):
        paths.append(TASKS_DIR)
    return paths


def patch_task_manager(task_manager_cls: type) -> None:
    """Wrap `TaskManager.initialize_tasks` so that `TASKS_DIR` is always indexed (idempotent).

    Args:
        task_manager_cls: `lmms_eval.tasks.TaskManager`.
    """
    if getattr(task_manager_cls.initialize_tasks, _PATCH_MARK, None) == TASKS_DIR:
        return
    original = task_manager_cls.initialize_tasks

    def initialize_tasks(self, include_path=None, include_defaults=True):
        return original(self, include_path=_with_tasks_dir(include_path), include_defaults=include_defaults)

    initialize_tasks.__doc__ = original.__doc__
    initialize_tasks.__wrapped__ = original
    setattr(initialize_tasks, _PATCH_MARK, TASKS_DIR)
    task_manager_cls.initialize_tasks = initialize_tasks


class _PatchWhenImported(importlib.abc.MetaPathFinder):
    """One-shot import hook: patches `TaskManager` right after `lmms_eval.tasks` is executed."""

    target = "lmms_eval.tasks"

    def find_spec(self, fullname, path, target=None):
        if fullname != self.target:
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _PatchWhenImported)]
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        original_exec = loader.exec_module

        def exec_module(module):
            original_exec(module)
            patch_task_manager(module.TaskManager)

        loader.exec_module = exec_module
        return spec


def install_task_hook() -> None:
    """Make every lmms-eval `TaskManager` index `TASKS_DIR`, now or as soon as `lmms_eval.tasks` is imported."""
    module = sys.modules.get(_PatchWhenImported.target)
    if module is not None and hasattr(module, "TaskManager"):
        patch_task_manager(module.TaskManager)
        return
    if not any(isinstance(f, _PatchWhenImported) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchWhenImported())


def register():
    """The `lmms_eval.models` entry point: install the task hook and return the `perpo_llava` manifest.

    Returns:
        A list with one `lmms_eval.models.registry_v2.ModelManifest`.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    install_task_hook()
    return [ModelManifest(model_id=MODEL_ID, chat_class_path=MODEL_CLASS_PATH)]
