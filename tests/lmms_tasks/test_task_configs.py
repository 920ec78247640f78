"""The task YAMLs: in sync with their generator, complete, named by the convention, hooks that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from lmms_task_helpers import TASKS, load_module

from lmms_tasks import taskgen

FOLDERS = sorted(taskgen.FOLDERS)
TASK_NAME = re.compile(
    r"^perpo_(refcoco|refcoco_plus|refcocog|synth|fox)_(val|testA|testB|test|en_page|cn_page)"
    r"(_orig|_orig_lmmsprompt|_bon\d+|_orig_bon\d+|_noimg|_blankimg|_qwen|_qwen3)?$"
)
PROBE_NAME = re.compile(r"^perpo_synth_(val_)?(pope_(random|popular|adversarial)|describe)(_blankimg)?$")


class FunctionRef(str):
    pass


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: FunctionRef(loader.construct_scalar(node)))


def load(path: Path) -> dict:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)


def resolved(folder: str, name: str) -> dict:
    """A task YAML merged over its include, as lmms-eval's load_yaml_config does (later keys win)."""
    config = load(TASKS / folder / name)
    base = load(TASKS / folder / config.pop("include")) if "include" in config else {}
    return {**base, **config}


def functions(value) -> list[str]:
    if isinstance(value, FunctionRef):
        return [value]
    if isinstance(value, dict):
        return [f for v in value.values() for f in functions(v)]
    if isinstance(value, list):
        return [f for v in value for f in functions(v)]
    return []


@pytest.mark.parametrize("folder", FOLDERS)
def test_committed_yamls_equal_the_generator_output(folder, tmp_path):
    written = taskgen.write_folder(folder, tmp_path)
    committed = {p.name for p in (TASKS / folder).iterdir() if p.name.endswith(("yaml", "_yaml"))}
    assert committed == {p.name for p in written}, f"run python lmms_tasks/tasks/{folder}/_generate_configs.py"
    for path in written:
        assert (TASKS / folder / path.name).read_text() == path.read_text(), f"{path.name} is stale"


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_yaml_is_complete_and_its_hooks_exist(folder):
    utils = load_module(TASKS / folder / "utils.py", f"{folder}_utils_check")
    for path in sorted((TASKS / folder).glob("*.yaml")):
        config = load(path)
        assert config["metadata"]["version"] == taskgen.VERSION, path.name
        if "group" in config:
            names = config["task"]
            assert config["group"] == path.stem and all(TASK_NAME.match(t) or PROBE_NAME.match(t) for t in names)
            continue
        config = resolved(folder, path.name)
        assert (TASK_NAME.match(config["task"]) or PROBE_NAME.match(config["task"])) and config["task"] == path.stem
        for name in functions(config):
            assert name.startswith("utils.") and callable(getattr(utils, name.split(".", 1)[1])), (path.name, name)
        keys = {m["metric"] for m in config["metric_list"]}
        assert "record" in keys
        if PROBE_NAME.match(path.stem):
            kind = "pope" if "_pope_" in path.stem else "describe"
            blank = path.stem.endswith("_blankimg")
            assert config["doc_to_visual"] == ("utils.visual_blank" if blank else "utils.visual_scene")
            assert config["process_results"] == f"utils.results_{kind}"
            assert config["metadata"]["image"] == ("blank" if blank else "image")
            assert all(
                m["aggregation"] == f"utils.{m['metric']}" for m in config["metric_list"] if m["metric"] != "record"
            )
            assert {"pope_f1", "pope_yes_ratio"} <= keys if kind == "pope" else {"describe_f1", "chair_i"} <= keys
            continue
        if "_bon" in path.stem:
            samples = int(re.search(r"_bon(\d+)", path.stem).group(1))
            assert config["repeats"] == samples and config["generation_kwargs"]["temperature"] == 0.5
            assert config["filter_list"][0]["name"] == "none"
            assert any(k.endswith(f"_bo{samples}") for k in keys)
        else:
            assert config.get("repeats", 1) == 1 and config["generation_kwargs"]["temperature"] == 0.0
        if folder != "perpo_fox":
            frame = "original" if "_orig" in path.stem or "_qwen" in path.stem else "padded"
            assert config["metadata"]["frame"] == frame and config["doc_to_target"] == f"gt_{frame}"
            assert "frame" in keys and {"ap50", "iou"} <= {k.split("_")[0] for k in keys}
            hooks = {"_noimg": "utils.visual_none", "_blankimg": "utils.visual_blank", "_qwen": "utils.visual_qwen"}
            assert config["doc_to_visual"] == hooks.get(path.stem[path.stem.rfind("_") :], f"utils.visual_{frame}")
            qwen = path.stem[path.stem.rfind("_") :] if "_qwen" in path.stem else ""
            assert (config["process_results"] == f"utils.results{qwen}") == bool(qwen)
            assert (config["doc_to_text"] == "utils.text_qwen") == bool(qwen)


def test_the_task_list():
    names = {p.stem for folder in FOLDERS for p in (TASKS / folder).glob("perpo_*.yaml")}
    splits = ["refcoco_val", "refcoco_testA", "refcoco_testB", "refcoco_plus_val", "refcoco_plus_testA",
              "refcoco_plus_testB", "refcocog_val", "refcocog_test"]  # fmt: skip
    for split in splits:
        for variant in (
            "",
            "_orig",
            "_orig_lmmsprompt",
            "_bon20",
            "_orig_bon20",
            "_noimg",
            "_blankimg",
            "_qwen",
            "_qwen3",
        ):
            assert f"perpo_{split}{variant}" in names
    for group in ("perpo_refcoco", "perpo_refcoco_plus", "perpo_refcocog", "perpo_refcoco_all", "perpo_synth",
                  "perpo_fox", "perpo_refcoco_all_bon20", "perpo_fox_noimg"):  # fmt: skip
        assert group in names
    assert resolved("perpo_refcoco", "perpo_refcoco_all.yaml")["task"] == [f"perpo_{s}" for s in splits]
    for name in ("perpo_synth_val_bon4", "perpo_fox_en_page", "perpo_fox_cn_page_bon20", "perpo_synth_test_noimg"):
        assert name in names


def test_task_folders_have_a_changelog():
    for folder in FOLDERS:
        readme = (TASKS / folder / "README.md").read_text()
        assert "Changelog" in readme and f"version {taskgen.VERSION}" in readme
