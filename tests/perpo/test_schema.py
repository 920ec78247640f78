"""The listwise record schema: every failure names the file, the line and the field at fault."""

from __future__ import annotations

import json
import os

import pytest

from perpo.data.schema import (
    RecordError,
    dump_record,
    iter_records,
    load_records,
    portable_image_path,
    rebase_image,
    resolve_image,
    validate_record,
)


def grounding(**changes) -> dict:
    record = {
        "id": "g1",
        "task": "grounding",
        "image": "images/a.png",
        "question": "Please provide the bounding box coordinate of the region this sentence describes: the dog.",
        "answer": "[0.10, 0.20, 0.30, 0.40]",
        "target": [0.1, 0.2, 0.3, 0.4],
        "frame": "padded",
        "responses": ["[0.1, 0.2, 0.3, 0.4]", "none"],
        "rewards": [1.0, 0.0],
        "reward": "iou",
        "meta": {"dataset": "refcoco"},
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not _DROP}


_DROP = object()


def ocr(**changes) -> dict:
    record = {
        "id": "o1",
        "task": "ocr",
        "image": "p.png",
        "question": "OCR this image:",
        "answer": "hi",
        "target": "hi",
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not _DROP}


def test_valid_records_pass_at_every_stage():
    assert validate_record(grounding(), stage="train") is not None
    assert validate_record(grounding(rewards=_DROP, reward=_DROP), stage="samples")
    assert validate_record(grounding(responses=_DROP, rewards=_DROP, reward=_DROP), stage="instructions")
    assert validate_record(ocr(), stage="instructions")


@pytest.mark.parametrize(
    ("record", "stage", "field", "problem"),
    [
        (grounding(id=_DROP), "train", "id", "is missing"),
        (grounding(id=3), "train", "id", "must be str"),
        (grounding(question=None), "train", "question", "must be str"),
        (grounding(task="caption"), "train", "task", "must be one of"),
        (grounding(colour="red"), "train", "colour", "is not part of the schema"),
        (grounding(target=_DROP), "train", "target", "is missing"),
        (grounding(frame="square"), "train", "frame", "must be one of"),
        (grounding(frame=_DROP), "train", "frame", "must be one of"),
        (grounding(target=[0.1, 0.2, 0.3]), "train", "target", "4 finite numbers"),
        (grounding(target=[0.1, 0.2, 0.3, float("nan")]), "train", "target", "4 finite numbers"),
        (ocr(target=["hi"]), "instructions", "target", "reference text"),
        (grounding(meta=[1]), "train", "meta", "must be an object"),
        (grounding(sampler="hf"), "train", "sampler", "must be an object"),
        (grounding(responses=_DROP), "samples", "responses", "must be a list of strings"),
        (grounding(responses=["a", 3]), "samples", "responses", "must be a list of strings"),
        (grounding(responses=[], rewards=[]), "samples", "responses", "is empty"),
        (grounding(rewards=_DROP), "train", "rewards", "must be a list of finite numbers"),
        (grounding(rewards=[1.0, float("inf")]), "train", "rewards", "must be a list of finite numbers"),
        (grounding(rewards=[True, 0.0]), "train", "rewards", "must be a list of finite numbers"),
        (grounding(rewards=[1.0]), "train", "rewards", "has 1 values for 2 responses"),
        (grounding(reward=_DROP), "train", "reward", "must name the reward"),
        (grounding(frame="original", pixels=[84, 0]), "train", "pixels", "image size [width, height]"),
        (grounding(frame="original", pixels=[84.0, 56]), "train", "pixels", "image size [width, height]"),
        (grounding(pixels=[84, 56]), "train", "frame", "must be 'original'"),
        (ocr(pixels=[84, 56]), "instructions", "pixels", "for grounding records only"),
    ],
)
def test_each_failure_names_place_and_field(record, stage, field, problem):
    with pytest.raises(RecordError) as info:
        validate_record(record, stage=stage, source="data/train.jsonl", line=7)
    message = str(info.value)
    assert message.startswith("data/train.jsonl:7: ")
    assert f"field '{field}'" in message and problem in message


def test_fewer_responses_than_n_is_an_error():
    with pytest.raises(RecordError, match=r"field 'responses' holds 2 responses, fewer than N=4"):
        validate_record(grounding(), stage="train", n=4, source="f", line=1)
    assert validate_record(grounding(), stage="train", n=2)


def test_non_object_and_unknown_stage():
    with pytest.raises(RecordError, match=r"f:2: expected a JSON object, got list"):
        validate_record([1], source="f", line=2)
    with pytest.raises(ValueError, match="stage must be one of"):
        validate_record(grounding(), stage="eval")


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_file_errors_name_the_line(tmp_path):
    good = json.dumps(grounding())
    path = write_lines(tmp_path / "train.jsonl", [good, "", json.dumps(grounding(id="g2", reward=_DROP))])
    with pytest.raises(RecordError, match=rf"{path}:3: field 'reward'"):
        load_records(path)
    path = write_lines(tmp_path / "broken.jsonl", [good, '{"id": "x", '])
    with pytest.raises(RecordError, match=rf"{path}:2: not valid JSON"):
        list(iter_records(path))
    path = write_lines(tmp_path / "dup.jsonl", [good, good])
    with pytest.raises(RecordError, match=r"id 'g1' appears twice \(records 1 and 2\)"):
        load_records(path)
    with pytest.raises(FileNotFoundError, match="missing.jsonl not found"):
        load_records(tmp_path / "missing.jsonl")


def test_blank_lines_are_skipped_and_n_is_checked(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [json.dumps(grounding()), "   ", json.dumps(grounding(id="g2"))])
    assert [r["id"] for r in load_records(path, n=2)] == ["g1", "g2"]
    with pytest.raises(RecordError, match=rf"{path}:1: field 'responses'"):
        load_records(path, n=3)


def test_dump_record_is_canonical():
    a = dump_record({"b": 1, "a": "é"})
    assert a == '{"a": "é", "b": 1}\n'
    assert dump_record({"a": "é", "b": 1}) == a


def test_image_paths_are_portable(tmp_path):
    data = tmp_path / "data"
    assert portable_image_path(data / "images" / "a.png", data) == "images/a.png"
    assert portable_image_path(tmp_path / "other" / "a.png", data) == str(tmp_path / "other" / "a.png")
    record = grounding(image="images/a.png")
    moved = rebase_image(record, data, tmp_path / "out")
    assert moved["image"] == os.path.abspath(data / "images" / "a.png")
    assert resolve_image(moved, "/anything") == data / "images" / "a.png"
    back = rebase_image(moved, "/anything", data)
    assert back["image"] == "images/a.png" and record["image"] == "images/a.png"
    assert rebase_image(grounding(image=""), data, tmp_path)["image"] == ""
    assert resolve_image(grounding(image=""), data) is None
