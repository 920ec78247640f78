"""perpo.training.heldout without a model: reading and validating held-out rows, and when perpo train evaluates."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from perpo.config import ConfigError
from perpo.model.quickeval import row_question, row_target
from perpo.training.heldout import HeldoutEvaluator, load_eval_rows, training_frame

FLAT = {
    "id": 7,
    "image": "images/a.png",
    "expression": "the red circle",
    "bbox": [8, 16, 16, 32],
    "width": 64,
    "height": 64,
}
RECORD = {
    "id": "r1",
    "task": "grounding",
    "image": "images/a.png",
    "question": "Where is the red circle?",
    "answer": "[0.1, 0.2, 0.3, 0.4]",
    "target": [0.1, 0.2, 0.3, 0.4],
    "frame": "padded",
    "responses": ["[0, 0, 1, 1]", "nothing"],
    "rewards": [0.1, 0.0],
    "reward": "iou",
}


@pytest.fixture
def folder(tmp_path) -> Path:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (64, 64), "white").save(tmp_path / "images" / "a.png")
    return tmp_path


def _write(path: Path, *lines) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_flat_rows_and_listwise_records_mix_and_resolve_images(folder):
    rows = load_eval_rows(_write(folder / "val.jsonl", FLAT, "", RECORD))
    flat, record = rows
    assert flat == {**FLAT, "id": "7", "image": str(folder / "images/a.png")}
    assert record == {"id": "r1", "image": str(folder / "images/a.png"), "question": RECORD["question"]} | {
        "target": RECORD["target"]
    }
    # What evaluate_grounding asks and scores against: the grounding prompt of the expression and the pixel box
    # in the frame for a flat row; the record's own question and target (already in its frame) for a record.
    assert "the red circle" in row_question(flat) and row_question(record) == RECORD["question"]
    assert row_target(flat, "padded") == pytest.approx((0.125, 0.25, 0.375, 0.75))
    assert row_target(record, "original") == tuple(RECORD["target"])


def test_flat_rows_are_asked_and_scored_the_way_a_qwen_model_answers(folder, tiny_model_of):
    """A Qwen2.5-VL model gets its own question, and the flat row's box in pixels of its resized image."""
    from perpo.model.families import QWEN2_5_VL
    from perpo.model.modeling import load_processor

    flat = load_eval_rows(_write(folder / "val.jsonl", FLAT))[0]
    processor = load_processor(tiny_model_of("qwen2_5_vl"))
    assert row_question(flat, QWEN2_5_VL).startswith("Locate the red circle in the image")
    # 64x64 resized to 56x56 by the tiny Qwen's processor; the box is [0.125, 0.25, 0.375, 0.75] of the image
    assert row_target(flat, "original", QWEN2_5_VL, processor) == pytest.approx((7, 14, 21, 42))


def test_limit_and_image_root(folder, tmp_path_factory):
    elsewhere = _write(tmp_path_factory.mktemp("other") / "val.jsonl", FLAT, FLAT, {"broken": True})
    rows = load_eval_rows(elsewhere, image_root=folder, limit=2)  # the broken third line is never read
    assert len(rows) == 2 and all(row["image"] == str(folder / "images/a.png") for row in rows)
    with pytest.raises(ConfigError, match="images/a.png not found.*--eval_image_root"):
        load_eval_rows(elsewhere)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "val.jsonl:2: not valid JSON"),
        ("[1, 2]", "val.jsonl:2: expected a JSON object"),
        ({k: v for k, v in FLAT.items() if k != "bbox"}, "val.jsonl:2: field 'bbox' is missing: a held-out row is"),
        (FLAT | {"bbox": [0, 0, -1, 5]}, "val.jsonl:2: field 'bbox' must be a pixel box"),
        (FLAT | {"width": 0}, "val.jsonl:2: field 'width' must be a positive number"),
        (FLAT | {"expression": " "}, "val.jsonl:2: field 'expression' must be a non-empty string"),
        (FLAT | {"image": "images/missing.png"}, "val.jsonl:2: image .*missing.png not found"),
        (RECORD | {"target": [0, 1]}, "val.jsonl:2: field 'target' must be a box"),
        (RECORD | {"task": "ocr", "target": "text"}, "val.jsonl:2: task 'ocr': only grounding"),
        (RECORD | {"image": ""}, "val.jsonl:2: field 'image' is empty"),
    ],
)
def test_a_bad_line_is_a_config_error_naming_file_and_line(folder, line, message):
    with pytest.raises(ConfigError, match=message):
        load_eval_rows(_write(folder / "val.jsonl", FLAT, line))


def test_missing_and_empty_files(folder):
    with pytest.raises(ConfigError, match="--eval_data .*nope.jsonl not found"):
        load_eval_rows(folder / "nope.jsonl")
    with pytest.raises(ConfigError, match="empty.jsonl: no held-out rows"):
        load_eval_rows(_write(folder / "empty.jsonl", ""))


def _train_records(folder: Path, n: int = 3) -> list[dict]:
    return [RECORD | {"id": f"r{i}", "image": str(folder / "images/a.png")} for i in range(n)]


def _options(folder: Path, eval_strategy="no", **kw):
    """Stand-ins for PerPOArguments and TrainingArguments with the fields `from_args` reads."""
    args = dict(data=str(folder / "train.jsonl"), image_root=None, eval_data=None, eval_image_root=None)
    args |= dict(eval_limit=None, eval_train_lists=0) | kw
    training = dict(eval_strategy=eval_strategy, output_dir=str(folder / "out"), per_device_eval_batch_size=4)
    return SimpleNamespace(**args), SimpleNamespace(**training, resume_from_checkpoint=None)


def test_what_train_evaluates(folder):
    records = _train_records(folder)
    assert HeldoutEvaluator.from_args(*_options(folder), records) is None
    with pytest.raises(ConfigError, match="--eval_strategy steps needs something to evaluate"):
        HeldoutEvaluator.from_args(*_options(folder, eval_strategy="steps"), records)
    data = _write(folder / "val.jsonl", FLAT, FLAT | {"id": 8})
    both = HeldoutEvaluator.from_args(*_options(folder, eval_data=str(data), eval_train_lists=2), records)
    assert [len(both.sets[name]) for name in ("heldout", "train_lists")] == [2, 2]
    assert both.sets["train_lists"][1] == {"id": "r1", "image": str(folder / "images/a.png")} | {
        "question": RECORD["question"],
        "target": RECORD["target"],
    }
    assert len(both.dataset) == 4 and both.path == folder / "out" / "heldout.json" and both.batch_size == 4
    ocr = [RECORD | {"task": "ocr", "target": "text"}]
    with pytest.raises(ConfigError, match="--eval_train_lists: the first 1 lists of .* hold no grounding"):
        HeldoutEvaluator.from_args(*_options(folder, eval_train_lists=5), ocr)


def test_training_frame_is_the_lists_most_common_frame():
    assert training_frame([RECORD, RECORD | {"frame": "original"}, RECORD]) == "padded"
    assert training_frame([RECORD | {"frame": "original"}]) == "original"
    assert training_frame([RECORD | {"task": "ocr"}]) == "padded"
