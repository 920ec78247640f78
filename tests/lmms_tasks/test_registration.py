"""Guard of the one lmms-eval hook the plugin relies on: fails loudly if lmms-eval changes under it.

lmms-eval 0.7.x has no task plugin API. `lmms_tasks.register`, our `lmms_eval.models` entry point, runs when
`lmms_eval.models` is imported (before the CLI builds its TaskManager) and wraps `TaskManager.initialize_tasks` so
that `lmms_tasks/tasks` is always indexed. These tests pin every assumption in that chain.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from importlib.metadata import entry_points

import pytest

import lmms_tasks

EXPECTED = [
    "perpo_refcoco", "perpo_refcoco_plus", "perpo_refcocog", "perpo_refcoco_all", "perpo_synth", "perpo_fox",
    "perpo_refcoco_val", "perpo_refcoco_testA_orig", "perpo_refcocog_test_bon20", "perpo_refcoco_plus_val_noimg",
    "perpo_synth_val_bon4", "perpo_fox_en_page", "perpo_fox_cn_page_noimg", "perpo_refcoco_all_orig",
]  # fmt: skip


def test_the_entry_point_is_installed():
    (ep,) = [ep for ep in entry_points(group="lmms_eval.models") if ep.name == "perpo"]
    assert ep.value == "lmms_tasks:register" and ep.load() is lmms_tasks.register


def test_lmms_eval_loads_entry_points_before_building_the_task_manager():
    import lmms_eval.__main__ as cli
    import lmms_eval.evaluator as evaluator
    import lmms_eval.models as models
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    assert "load_entrypoint_manifests" in inspect.getsource(models._initialize_model_registry)
    assert inspect.signature(ModelRegistryV2.load_entrypoint_manifests).parameters["group"].default == (
        "lmms_eval.models"
    )
    assert "from lmms_eval import models" in inspect.getsource(evaluator)  # evaluator import runs the hook
    assert "from lmms_eval import evaluator" in inspect.getsource(cli)  # ... before cli_evaluate_single runs
    assert "TaskManager(args.verbosity, include_path=args.include_path" in inspect.getsource(cli.cli_evaluate_single)


def test_task_manager_still_has_the_wrapped_method():
    from lmms_eval.tasks import TaskManager

    original = getattr(TaskManager.initialize_tasks, "__wrapped__", TaskManager.initialize_tasks)
    assert list(inspect.signature(original).parameters) == ["self", "include_path", "include_defaults"]
    assert "self.initialize_tasks(include_path=include_path, include_defaults=include_defaults)" in (
        inspect.getsource(TaskManager.__init__)
    )


def test_register_makes_every_task_manager_index_the_perpo_tasks():
    import lmms_eval.models  # noqa: F401  (runs the entry point)
    from lmms_eval.tasks import TaskManager

    manifests = lmms_tasks.register()
    lmms_tasks.register()  # idempotent: the method is wrapped once
    assert [m.model_id for m in manifests] == ["perpo_llava"]
    wrapped = TaskManager.initialize_tasks
    assert wrapped._perpo_tasks_dir == lmms_tasks.TASKS_DIR
    assert not hasattr(wrapped.__wrapped__, "_perpo_tasks_dir")
    manager = TaskManager(include_defaults=False)
    missing = [name for name in EXPECTED if name not in manager.all_tasks]
    assert not missing, f"lmms-eval no longer indexes the perpo tasks: {missing}"
    assert manager.task_index["perpo_refcoco"]["type"] == "group"
    assert manager.task_index["perpo_fox_en_page"]["yaml_path"].startswith(lmms_tasks.TASKS_DIR)
    explicit = TaskManager(include_path=lmms_tasks.TASKS_DIR, include_defaults=False)  # the documented fallback
    assert explicit.all_tasks == manager.all_tasks


def test_the_model_is_registered():
    from lmms_eval.models import MODEL_REGISTRY_V2

    from lmms_tasks.models.perpo_llava import PerpoLlava

    assert MODEL_REGISTRY_V2.resolve("perpo_llava").class_path == lmms_tasks.MODEL_CLASS_PATH
    assert MODEL_REGISTRY_V2.get_model_class("perpo_llava") is PerpoLlava and PerpoLlava.is_simple is False


def test_the_one_shot_import_hook_patches_on_import(tmp_path, monkeypatch):
    """Until `lmms_eval.tasks` is imported the hook only waits; it patches the module's TaskManager on import."""
    (tmp_path / "fake_lmms_tasks_module.py").write_text(
        "class TaskManager:\n    def initialize_tasks(self, include_path=None, include_defaults=True):\n"
        "        return include_path\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    class Hook(lmms_tasks._PatchWhenImported):
        target = "fake_lmms_tasks_module"

    monkeypatch.setattr(sys, "meta_path", [Hook(), *sys.meta_path])
    module = importlib.import_module("fake_lmms_tasks_module")
    assert module.TaskManager().initialize_tasks() == [lmms_tasks.TASKS_DIR]
    assert module.TaskManager().initialize_tasks(include_path="/x") == ["/x", lmms_tasks.TASKS_DIR]
    assert not any(isinstance(f, Hook) for f in sys.meta_path)  # one shot
    sys.modules.pop("fake_lmms_tasks_module")


@pytest.fixture
def synth_env(synth_data, monkeypatch):
    monkeypatch.setenv("PERPO_SYNTH_DIR", str(synth_data))
    return synth_data


def test_lmms_eval_loads_the_rows_the_variable_names_every_time(synth_env, tmp_path, monkeypatch):
    """Through lmms-eval's own loading (placeholder JSON + process_docs): no cached rows survive a new folder."""
    import lmms_eval.models  # noqa: F401
    from lmms_eval.tasks import TaskManager, get_task_dict

    from perpo.embedded.synth import SynthSpec, build_synth

    manager = TaskManager(include_defaults=False)
    first = get_task_dict(["perpo_synth_val"], manager, "chat")["perpo_synth_val"]
    docs = list(first.test_docs())
    assert len(docs) == sum(1 for _ in open(synth_env / "synth_val.jsonl"))
    assert docs[0]["gt_padded"] and docs[0]["image"].startswith(str(synth_env.resolve()))
    other = build_synth(tmp_path / "other", seed=3, spec=SynthSpec(counts={"val": 2}), progress=False)
    monkeypatch.setenv("PERPO_SYNTH_DIR", str(other))
    second = list(get_task_dict(["perpo_synth_val"], manager, "chat")["perpo_synth_val"].test_docs())
    assert len(second) == sum(1 for _ in open(other / "synth_val.jsonl")) != len(docs)
    assert all(doc["image"].startswith(str(other.resolve())) for doc in second)
