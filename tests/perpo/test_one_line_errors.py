"""Mistakes in what a user hands a command are one line naming the file (and line or key) and the fix, exit 2, no
traceback, and nothing written: undecodable bytes, broken refer annotations, files that are not images, empty
inputs, options that would train nothing."""

from __future__ import annotations

import importlib.util
import json
import pickle
import shutil
from pathlib import Path

import pytest

from perpo.cli import main

FIXTURES = Path(__file__).parents[1] / "fixtures"


def one_line(argv: list[str], capsys, *absent: Path) -> str:
    assert main(argv) == 2, argv
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error, error
    assert not any(path.exists() for path in absent), "nothing half-written"
    return error


@pytest.fixture
def refer(tmp_path) -> tuple[Path, Path]:
    spec = importlib.util.spec_from_file_location("lmms_fixtures", FIXTURES / "lmms_fixtures.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    return fixtures.write_refer_layout(tmp_path / "refer"), fixtures.write_images(tmp_path / "images")


def _instructions(refer, capsys, out: Path) -> str:
    root, images = refer
    argv = ["data", "instructions", "--source", "refcoco", "--refer_root", str(root), "--coco_images", str(images)]
    return one_line([*argv, "--out", str(out)], capsys, out)


def _refs(root: Path) -> Path:
    return root / "refcoco" / "refs(unc).p"


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda root: _refs(root).write_bytes(pickle.dumps([{"ref_id": 1, "split": "train"}])), "has no 'ann_id'"),
        (
            lambda root: _refs(root).write_bytes(
                pickle.dumps([{"ref_id": 1, "ann_id": 1, "image_id": 1, "split": "train", "sentences": ["x"]}])
            ),
            "has no 'sentences[].sent_id / sent'",
        ),
        (lambda root: (root / "refcoco" / "instances.json").write_text('{"annotations": []}'), "needs 'images'"),
        (lambda root: (root / "refcoco" / "instances.json").write_text('{"images": [], "annot'), "not valid JSON"),
        (lambda root: (root / "refcoco" / "instances.json").write_bytes(b'{"images": "\xff"}'), "not UTF-8 text"),
    ],
    ids=["ref-without-ann_id", "sentences-not-dicts", "instances-without-images", "truncated", "not-utf8"],
)
def test_broken_refer_annotations_are_one_line(refer, capsys, tmp_path, damage, expected):
    damage(refer[0])
    assert expected in _instructions(refer, capsys, tmp_path / "out.jsonl")


def test_a_dangling_annotation_and_a_string_bbox_are_one_line(refer, capsys, tmp_path):
    root, _ = refer
    instances = json.loads((root / "refcoco" / "instances.json").read_text())
    for ann in instances["annotations"]:
        ann["bbox"] = "1 2 3 4"
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    assert "has bbox '1 2 3 4', not [x, y, w, h]" in _instructions(refer, capsys, tmp_path / "a.jsonl")
    instances["annotations"] = instances["annotations"][1:]
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    assert "names annotation 101, which" in _instructions(refer, capsys, tmp_path / "b.jsonl")


def test_instructions_whose_images_are_missing_are_refused(refer, capsys, tmp_path):
    root, images = refer
    shutil.rmtree(images)
    images.mkdir()
    assert "are not in" in _instructions(refer, capsys, tmp_path / "out.jsonl")


def test_data_refcoco_with_no_dataset_writes_nothing(refer, capsys, tmp_path):
    root, images = refer
    argv = ["data", "refcoco", "--refer_root", str(root), "--coco_images", str(images), "--datasets", ""]
    assert "names no dataset" in one_line([*argv, "--out", str(tmp_path / "eval")], capsys, tmp_path / "eval")


def test_a_byte_that_is_not_utf8_names_the_file_and_line(tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    samples.write_bytes(b'{"id": "\xe9"}\n')
    out = tmp_path / "lists"
    error = one_line(["build-data", "--samples", str(samples), "--out", str(out)], capsys, out)
    assert f"{samples}:1: not UTF-8 text (byte 0xe9 at column 9); save the file as UTF-8" in error
    results = tmp_path / "run"
    shutil.copytree(FIXTURES / "reports" / "synth_base", results)
    (results / "results.json").write_bytes(b'{"results": {"\xff": {}}}')
    error = one_line(
        ["report", "--runs", str(results), "--out", str(tmp_path / "report")], capsys, tmp_path / "report"
    )
    assert "results.json:1: not UTF-8 text" in error


def test_a_folder_given_as_a_data_file_says_so(tmp_path, capsys):
    assert "is a folder" in one_line(["build-data", "--samples", str(tmp_path), "--out", str(tmp_path / "o")], capsys)


def test_sampling_an_empty_file_or_a_record_whose_image_is_not_an_image(tiny_llava, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "samples.jsonl"
    argv = ["sample", "--model", str(tiny_llava), "--device", "cpu", "--out", str(out), "--progress", "false"]
    assert "no instructions to sample" in one_line([*argv, "--instructions", str(empty)], capsys, out)
    text = tmp_path / "photo.jpg"
    text.write_text("not a picture")
    record = {"id": "a", "task": "grounding", "image": str(text), "question": "q", "answer": "[0.1, 0.1, 0.2, 0.2]",
              "target": [0.1, 0.1, 0.2, 0.2], "frame": "padded"}  # fmt: skip
    instructions = tmp_path / "instructions.jsonl"
    instructions.write_text(json.dumps(record) + "\n")
    error = one_line([*argv, "--instructions", str(instructions)], capsys, out)
    assert f"{text}: not an image file that can be read" in error


def test_a_question_longer_than_the_context_is_refused_before_sampling(tiny_llava, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (96, 64)).save(tmp_path / "photo.png")
    base = {"task": "grounding", "image": "photo.png", "answer": "[0.1, 0.1, 0.2, 0.2]",
            "target": [0.1, 0.1, 0.2, 0.2], "frame": "padded"}  # fmt: skip
    records = [base | {"id": "short", "question": "the cat"}, base | {"id": "long", "question": "cat " * 600}]
    instructions = tmp_path / "instructions.jsonl"
    instructions.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "samples.jsonl"
    argv = ["sample", "--model", str(tiny_llava), "--device", "cpu", "--instructions", str(instructions)]
    error = one_line([*argv, "--out", str(out), "--progress", "false"], capsys, out)
    assert f"{instructions}: instruction 'long': the prompt alone is" in error and "shorten the question" in error


def test_a_learning_rate_of_zero_is_refused_before_anything_loads(tmp_path, capsys, caplog):
    out = tmp_path / "run"
    argv = ["train", "--model_name_or_path", "m", "--data", "d.jsonl", "--use_cpu", "true", "--output_dir", str(out)]
    assert "--learning_rate must be > 0, got 0.0" in one_line([*argv, "--learning_rate", "0"], capsys, out)
    assert main(["-v", *argv, "--learning_rate", "0"]) == 2  # -v keeps the traceback, logged before the line
    assert capsys.readouterr().err.strip().endswith("--learning_rate must be > 0, got 0.0")
    assert any(r.exc_info and "check_training_args" in caplog.text for r in caplog.records)


@pytest.mark.parametrize(
    ("train_args", "expected"),
    [
        ("--no_such_flag 3", "--train_args: unrecognized arguments: --no_such_flag 3"),
        ("--learning_rate abc", "--train_args: argument --learning_rate/--learning-rate: invalid float value"),
        ("--learning_rate 0", "--train_args: --learning_rate must be > 0"),
    ],
)
def test_iterate_checks_its_train_flags_before_making_a_round(train_args, expected, tmp_path, capsys):
    out = tmp_path / "iterate"
    argv = ["iterate", "--model", "m", "--instructions", "i.jsonl", "--out", str(out), "--train_args", train_args]
    assert expected in one_line(argv, capsys, out)


@pytest.mark.parametrize(
    "flags",
    [
        ["--beta", "nan"],
        ["--learning_rate", "inf"],
        ["--temperature", "0"],
        ["--temperature", "nan"],
        ["--num_generations", "3", "--per_device_train_batch_size", "4"],  # TRL's GRPOConfig refuses it
    ],
)
def test_grpo_options_are_checked_as_trains_are_before_anything_is_written(flags, tmp_path, capsys):
    out = tmp_path / "grpo"
    argv = ["grpo", "--model_name_or_path", "m", "--data", "d.jsonl", "--use_cpu", "true", "--output_dir", str(out)]
    one_line([*argv, *flags], capsys, out)


def test_a_grpo_run_whose_loss_or_weights_went_non_finite_is_not_finished():
    from types import SimpleNamespace

    import torch

    from perpo.training.grpo import check_finite_run
    from perpo.training.trainer import TrainingDiverged

    layer = torch.nn.Linear(2, 2)
    run = SimpleNamespace(model=layer, state=SimpleNamespace(log_history=[{"step": 1, "loss": 0.5}]))
    check_finite_run(run)
    run.state.log_history.append({"step": 2, "loss": float("nan")})
    with pytest.raises(TrainingDiverged, match="the loss is not finite from step 2, and 0 of 2 trained tensors"):
        check_finite_run(run)
    run.state.log_history.pop()
    layer.weight.data[0, 0] = float("inf")
    with pytest.raises(TrainingDiverged, match="the loss stayed finite, and 1 of 2 trained tensors are not finite"):
        check_finite_run(run)
