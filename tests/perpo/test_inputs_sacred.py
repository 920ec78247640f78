"""No command replaces a file or folder it was given as input: pointed at its own input (or at a folder holding
one, or at a link to one), each refuses in one line before doing any work, and the input is left as it was."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

import pytest

from perpo.cli import main

FIXTURES = Path(__file__).parents[1] / "fixtures"


def _lmms_fixtures():
    spec = importlib.util.spec_from_file_location("lmms_fixtures", FIXTURES / "lmms_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (links not followed) with the sha256 of its bytes."""
    if root.is_file():
        return {root.name: hashlib.sha256(root.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def refused(argv: list[str], capsys, *kept: Path) -> str:
    """Run the command; it must exit 2 with one line on stderr and leave every `kept` path as it was."""
    before = [snapshot(path) for path in kept]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error, error
    assert [snapshot(path) for path in kept] == before
    assert all(before), "the fixture holds files"
    return error


@pytest.fixture
def refer(tmp_path) -> tuple[Path, Path]:
    fixtures = _lmms_fixtures()
    root = fixtures.write_refer_layout(tmp_path / "refer")
    images = fixtures.write_images(tmp_path / "refer" / "images")
    return root, images


def test_data_refcoco_into_its_image_folder_or_its_refer_root(refer, capsys):
    root, images = refer
    argv = ["data", "refcoco", "--refer_root", str(root), "--coco_images", str(images)]
    error = refused([*argv, "--out", str(images)], capsys, images)
    assert error == (
        f"perpo data: error: --out {images} is its input {images}, which writing the output would replace: choose "
        "another --out"
    )
    assert "is its input" in refused([*argv, "--out", str(root)], capsys, root)
    assert "holds its input" in refused([*argv, "--out", str(root.parent)], capsys, root)


def test_a_link_to_an_input_is_the_input(refer, capsys, tmp_path):
    root, images = refer
    link = tmp_path / "link"
    link.symlink_to(images, target_is_directory=True)
    argv = ["data", "refcoco", "--refer_root", str(root), "--coco_images", str(images), "--out", str(link)]
    refused(argv, capsys, images)


def test_data_instructions_onto_its_own_annotations(refer, capsys):
    root, images = refer
    instances = root / "refcoco" / "instances.json"
    argv = ["data", "instructions", "--source", "refcoco", "--refer_root", str(root), "--coco_images", str(images)]
    assert "holds its input" in refused([*argv, "--out", str(root / "refcoco")], capsys, root)
    refused([*argv, "--out", str(instances)], capsys, instances)


@pytest.fixture
def results(tmp_path) -> Path:
    shutil.copytree(FIXTURES / "reports" / "synth_base", tmp_path / "synth_base")
    return tmp_path / "synth_base"


def test_compare_and_report_into_the_results_they_read(results, capsys):
    refused(["compare", str(results), str(results), "--out", str(results)], capsys, results)
    refused(["report", "--runs", str(results), "--out", str(results)], capsys, results)
    refused(["report", "--runs", str(results), "--out", str(results.parent)], capsys, results)


def test_eval_export_train_and_sample_into_their_model_adapter_or_instructions(tiny_llava, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_llava, model)
    refused(["eval", "--model", str(model), "--tasks", "perpo_synth_val", "--output_dir", str(model)], capsys, model)
    adapter = tmp_path / "adapter"
    shutil.copytree(FIXTURES / "reports" / "adapters" / "synth_perpo", adapter)
    refused(["export", str(adapter), "--out", str(adapter)], capsys, adapter)
    refused(["export", str(adapter), "--out", str(model), "--base", str(model)], capsys, model)
    train = ["train", "--model_name_or_path", str(model), "--data", str(tmp_path / "x.jsonl"), "--use_cpu", "true"]
    refused([*train, "--output_dir", str(model)], capsys, model)
    instructions = tmp_path / "instructions.jsonl"
    instructions.write_text('{"id": "a"}\n')
    sample = ["sample", "--model", str(model), "--instructions", str(instructions), "--device", "cpu"]
    refused([*sample, "--out", str(instructions)], capsys, instructions, model)


def test_build_data_may_write_beside_its_samples_but_not_over_them(tmp_path, capsys):
    lists = tmp_path / "lists"
    lists.mkdir()
    train = lists / "train.jsonl"
    train.write_text('{"id": "a"}\n')  # a train-stage file re-scored: its name is one build-data writes
    refused(["build-data", "--samples", str(train), "--out", str(lists)], capsys, train)
