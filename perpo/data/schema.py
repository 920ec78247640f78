"""The listwise record: one instruction, its N sampled responses and their rewards (one JSONL line each).

Three files use this schema, at three stages:
    instructions.jsonl   what to sample for        (no `responses`, no `rewards`)
    samples.jsonl        `perpo sample` output     (+ `responses`, `sampler`)
    train.jsonl          `perpo build-data` output (+ `rewards`, `reward`), what `perpo train` reads

Fields:
    id        str    unique instruction id (also the sampling seed key)
    task      str    "grounding" | "ocr"
    image     str    image path, absolute or relative to the data's image root (default: the JSONL's folder);
                     "" for a text-only instruction
    question  str    the user question, without chat template (the processor's template is applied later)
    answer    str    the ground-truth answer text (what SFT trains on)
    target    list | str   what the reward compares with: the exact ground-truth box [x1, y1, x2, y2] normalised
                     in `frame` (grounding), or the reference text (ocr)
    frame     str    grounding only: "padded" | "original" — the box frame of `answer`, `target` and responses
    pixels    [W, H] grounding only, optional: `answer`, `target` and responses are coordinates of a W x H frame,
                     not normalised: the pixels of the image the model sees (Qwen2.5-VL's resized image) or a
                     1000 x 1000 relative grid (Qwen3-VL); `frame` is then "original". IoU does not change when
                     both boxes are scaled, so rewards compare them as they are.
    responses list[str]    the N sampled responses
    rewards   list[float]  one reward per response, higher is better
    reward    str    the reward's name (registry name or dotted path)
    sampler   dict   how responses were made: model, adapter, temperature, top_p, n, seed, backend
    meta      dict   free-form provenance (source dataset, split, ref/sent ids, image size, ...)

Validation names the file, line and field at fault, so a broken line is found without a debugger.

Conventions of the writers (`perpo.data.sources`, `perpo.sampling.sample`, `perpo.data.build`):
    - one record per line, written by `dump_record` (keys sorted, UTF-8 kept), so equal data gives equal bytes;
    - `image` is relative to the folder of the JSONL that holds it when the image lies under that folder, else
      absolute (`portable_image_path`); a file written elsewhere rebases its paths (`rebase_image`);
    - `sampler` (samples and train stages) holds only what determines the responses (backend, model and adapter
      with their fingerprints, n, temperature, top_p, max_new_tokens, seed, dtype, device type), never times or
      batch sizes, so an interrupted and resumed run writes the same bytes as an uninterrupted one;
    - responses are in sampling order (response i is sample i of the instruction), never sorted by reward.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from perpo.config import ConfigError
from perpo.objectives.boxes import FRAMES

TASKS = ("grounding", "ocr")
STAGES = ("instructions", "samples", "train")
_BASE_FIELDS = {"id": str, "task": str, "image": str, "question": str, "answer": str}
_OPTIONAL = {"frame", "pixels", "meta", "sampler", "responses", "rewards", "reward", "target"}


class RecordError(ConfigError):
    """A record that does not follow the schema; the message names source, line and field."""


def _where(source: str | None, line: int | None) -> str:
    if source is None:
        return "record"
    return f"{source}:{line}" if line is not None else str(source)


def validate_record(
    record: Any, *, stage: str = "train", n: int | None = None, source: str | None = None, line: int | None = None
) -> dict:
    """Check one record for `stage` ("instructions", "samples" or "train") and return it.

    Args:
        record: the parsed JSON object.
        stage: which fields are required (see the module docstring).
        n: if given, lists must hold at least `n` responses (training with N responses per list).
        source, line: where the record came from, for the error message.

    Raises:
        RecordError: naming the place and the field at fault.
    """
    where = _where(source, line)
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(record).__name__}")

    def fail(field: str, problem: str) -> RecordError:
        return RecordError(f"{where}: field '{field}' {problem} (record id {record.get('id')!r})")

    for field, kind in _BASE_FIELDS.items():
        if field not in record:
            raise fail(field, "is missing")
        if not isinstance(record[field], kind):
            raise fail(field, f"must be {kind.__name__}, got {type(record[field]).__name__}")
    unknown = set(record) - set(_BASE_FIELDS) - _OPTIONAL
    if unknown:
        raise fail(sorted(unknown)[0], f"is not part of the schema (known: {sorted(set(_BASE_FIELDS) | _OPTIONAL)})")
    if record["task"] not in TASKS:
        raise fail("task", f"must be one of {TASKS}, got {record['task']!r}")
    if "target" not in record:
        raise fail("target", "is missing")
    if record["task"] == "grounding":
        if record.get("frame") not in FRAMES:
            raise fail("frame", f"must be one of {FRAMES} for grounding, got {record.get('frame')!r}")
        target = record["target"]
        if not (
            isinstance(target, list)
            and len(target) == 4
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in target)
        ):
            raise fail("target", f"must be a box [x1, y1, x2, y2] of 4 finite numbers, got {target!r}")
        if "pixels" in record:
            pixels = record["pixels"]
            if not (
                isinstance(pixels, list)
                and len(pixels) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pixels)
            ):
                raise fail("pixels", f"must be the model's image size [width, height] in pixels, got {pixels!r}")
            if record["frame"] != "original":
                raise fail("frame", "must be 'original' when boxes are pixels of a resized image ('pixels')")
    elif "pixels" in record:
        raise fail("pixels", "is for grounding records only")
    elif not isinstance(record["target"], str):
        raise fail("target", f"must be the reference text (str) for ocr, got {type(record['target']).__name__}")
    for field in ("meta", "sampler"):
        if field in record and not isinstance(record[field], dict):
            raise fail(field, "must be an object")

    if stage in ("samples", "train"):
        responses = record.get("responses")
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise fail("responses", "must be a list of strings")
        if not responses:
            raise fail("responses", "is empty")
        if n is not None and len(responses) < n:
            raise fail("responses", f"holds {len(responses)} responses, fewer than N={n}")
    if stage == "train":
        rewards = record.get("rewards")
        if not isinstance(rewards, list) or not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) for r in rewards
        ):
            raise fail("rewards", "must be a list of finite numbers")
        if len(rewards) != len(record["responses"]):
            raise fail("rewards", f"has {len(rewards)} values for {len(record['responses'])} responses")
        if not isinstance(record.get("reward"), str):
            raise fail("reward", "must name the reward used (e.g. 'iou')")
    return record


def iter_records(path: str | Path, *, stage: str = "train", n: int | None = None) -> Iterator[dict]:
    """Read and validate a JSONL file of records, line by line."""
    from perpo.io import jsonl_objects

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} not found")
    for number, record in jsonl_objects(path, RecordError):
        yield validate_record(record, stage=stage, n=n, source=str(path), line=number)


def record_lines(path: str | Path) -> list[int]:
    """The line number of each record of a JSONL file (blank lines hold none), for messages about record i."""
    from perpo.io import text_lines

    return [number for number, text in text_lines(path) if text.strip()]


def load_records(path: str | Path, *, stage: str = "train", n: int | None = None) -> list[dict]:
    """All records of a JSONL file, validated; duplicate ids are an error."""
    records = list(iter_records(path, stage=stage, n=n))
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
        if record["id"] in seen:
            raise RecordError(
                f"{path}: id {record['id']!r} appears twice (records {seen[record['id']] + 1} and {index + 1})"
            )
        seen[record["id"]] = index
    return records


def resolve_image(record: dict, image_root: str | Path) -> Path | None:
    """The record's image file (None for text-only records)."""
    if not record["image"]:
        return None
    path = Path(record["image"])
    return path if path.is_absolute() else Path(image_root) / path


def dump_record(record: dict) -> str:
    """One JSONL line for `record` (keys sorted, non-ASCII kept, newline included): equal data, equal bytes."""
    return json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"


def portable_image_path(image: str | Path, base: str | Path) -> str:
    """`image` relative to `base` when it lies under `base`, else absolute (no symlinks are resolved).

    Args:
        image: an image path, absolute or relative to the current directory.
        base: the folder of the JSONL file the path will be stored in.
    """
    image_abs, base_abs = Path(os.path.abspath(image)), Path(os.path.abspath(base))
    try:
        return image_abs.relative_to(base_abs).as_posix()
    except ValueError:
        return str(image_abs)


def rebase_image(record: dict, image_root: str | Path, new_base: str | Path) -> dict:
    """A copy of `record` whose image path, read against `image_root`, is stored for a file in `new_base`."""
    if not record["image"]:
        return dict(record)
    return {**record, "image": portable_image_path(resolve_image(record, image_root), new_base)}
