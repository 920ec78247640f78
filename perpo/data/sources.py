"""Instruction sources: real and synthetic data turned into listwise records (`perpo.data.schema`).

Every source yields records of stage "instructions" (what `perpo sample` samples for), except the importer of
the authors' released `data.json`, which already holds samples and rewards and so yields stage "train" records.

Sources:
    synth       the synthetic grounding benchmark (`perpo data synth`): `<dir>/synth_<split>.jsonl`.
    refcoco     RefCOCO, RefCOCO+ and RefCOCOg in the `refer` layout (instances.json + refs pickle, read with
                pycocotools and a restricted unpickler), images from COCO train2014. With a total count the
                datasets get an equal share, as in the paper (3,000 lists sampled equally from the three).
    fox         Fox-style page OCR: a JSON list of {"image", "conversations": [{"from": "human", "value":
                prompt}, {"from": "gpt", "value": page text}]} plus a folder of page images.
    perpo-json  the released PerPO `data.json` (`answers_gen`, `iou_scores`), see `import_perpo_data`.

Grounding records (one per referring expression): question = the family's `grounding_question(expression)`;
answer = the ground-truth box in `frame` as the family writes it (LLaVA: `format_box`, 2 decimals, what SFT
trains on); target = the exact, unrounded box in that frame (what the IoU reward compares with); meta = dataset,
split, ids, the pixel bbox (COCO xywh), width and height, so a record can be re-expressed in the other frame
later. For a family that answers in its own frame (Qwen2.5-VL: pixels of its resized image; Qwen3-VL: a 0-1000
grid) answer and target are in that frame and `pixels` holds its size.

Image paths: the sources return absolute paths; `write_records` stores each path relative to the output
file's folder when the image lies under that folder, else absolute. `perpo sample` resolves relative paths
against `--image_root`, which defaults to the instruction file's folder, so a data folder can be moved whole.

Equal share (`equal_share_counts`): a total is split as evenly as possible over the groups (datasets); a group
with fewer items than its share gives all it has and the shortfall is spread over the others (water filling);
the remainder of an uneven split goes to the groups in sorted name order. Each group is subsampled with its own
seeded generator (`random.Random(f"{seed}/{group}")`), and the selection keeps the input order, so the same
seed picks the same records whatever else is in the file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from perpo.config import ConfigError
from perpo.data.schema import RecordError, portable_image_path, validate_record
from perpo.model.families import LLAVA, Family
from perpo.model.prompts import GROUNDING_QUESTION, fox_question, grounding_question
from perpo.objectives.boxes import FRAMES, Box, denormalize_box, gt_box_in_frame, parse_box
from perpo.objectives.rewards import iou_reward

logger = logging.getLogger(__name__)

REFCOCO_DATASETS = ("refcoco", "refcoco+", "refcocog")
SOURCES = ("synth", "refcoco", "fox")
_GROUNDING_PREFIX = GROUNDING_QUESTION.split("{expression}")[0]
# How far a released 2-decimal answer may sit from the exact box and still count as "the same box".
_ANSWER_TOLERANCE = 0.005 + 1e-9


def _check_frame(frame: str) -> None:
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")


def grounding_record(
    row: Mapping[str, Any], image: str, frame: str, family: Family = LLAVA, processor: Any = None
) -> dict:
    """One instruction record from a flat refer row (`perpo.data.refer.load_refer_rows`).

    Args:
        row: id, dataset, split, width, height, bbox (COCO xywh pixels), expression and the refer ids.
        image: the image path to store.
        frame: "padded" (LLaVA-1.5's square) or "original": the frame of `answer` and `target`.
        family: the model family the data is for: its question, and how its answers write a box.
        processor: that model's processor, for a family whose boxes are pixels of the image it makes.

    Returns:
        A record of stage "instructions".
    """
    _check_frame(frame)
    box = gt_box_in_frame(row["bbox"], row["width"], row["height"], frame)
    meta = {key: row[key] for key in ("dataset", "split", "ref_id", "ann_id", "image_id", "sent_id", "category")}
    meta |= {"width": int(row["width"]), "height": int(row["height"]), "bbox": [float(v) for v in row["bbox"]]}
    record: dict[str, Any] = {"id": str(row["id"]), "task": "grounding", "image": image}
    record["question"] = grounding_question(row["expression"], family.grounding_template)
    pixels = family.answer_pixels(processor, int(row["width"]), int(row["height"]))
    if pixels is not None:
        if frame != "original":
            raise ValueError(f"{family.model_type} answers in pixels of its resized image: use frame 'original'")
        box = denormalize_box(box, *pixels)
        record["pixels"] = list(pixels)
    record |= {"answer": family.write_box(box), "target": [float(v) for v in box], "frame": frame, "meta": meta}
    return record


def synth_instructions(
    data_dir: str | Path,
    split: str = "train",
    *,
    frame: str = "padded",
    family: Family = LLAVA,
    processor: Any = None,
) -> list[dict]:
    """Instruction records of one split of the synthetic benchmark (`perpo data synth`).

    Args:
        data_dir: the benchmark folder (holds `synth_<split>.jsonl` and `images/`).
        split: "train", "val" or "test".
        frame: box frame of answers and targets (the synthetic images are square, so both frames agree).
        family, processor: the model the data is for (`grounding_record`).

    Raises:
        FileNotFoundError: the split file is missing.
    """
    from perpo.io import read_jsonl

    data_dir = Path(data_dir)
    path = data_dir / f"synth_{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: render the benchmark with `perpo data synth --out {data_dir}`")
    root = Path(os.path.abspath(data_dir))
    return [grounding_record(row, str(root / row["image"]), frame, family, processor) for row in read_jsonl(path)]


def refer_instructions(
    root: str | Path,
    image_dir: str | Path,
    *,
    datasets: Sequence[str] = REFCOCO_DATASETS,
    split: str = "train",
    frame: str = "padded",
    split_by: Mapping[str, str] | None = None,
    family: Family = LLAVA,
    processor: Any = None,
) -> list[dict]:
    """Instruction records of RefCOCO/RefCOCO+/RefCOCOg (or any refer-layout dataset), one per expression.

    Refs pickles are read with `perpo.data.refer.load_refs`' restricted unpickler: a pickle that asks for a class
    or function is refused with `UnsafePickleError` before anything runs.

    Args:
        root: the refer data root (`<root>/<dataset>/instances.json`, `<root>/<dataset>/refs(<split_by>).p`).
        image_dir: the COCO train2014 image folder (all RefCOCO-family images are COCO train2014).
        datasets: dataset folder names under `root`.
        split: the refer split ("train" for preference data).
        frame: box frame of answers and targets.
        split_by: per-dataset split scheme; default `perpo.data.refer.DEFAULT_SPLIT_BY` (unc, unc, umd).
        family, processor: the model the data is for (`grounding_record`).

    Returns:
        Records of all datasets, dataset by dataset in the given order, then by (ref_id, sent_id).
    """
    from perpo.data.refer import load_refer_rows

    image_dir = Path(os.path.abspath(image_dir))
    records = []
    for dataset in datasets:
        rows = load_refer_rows(root, dataset, split, split_by=(split_by or {}).get(dataset), image_dir=image_dir)
        logger.info("%s %s: %d expressions", dataset, split, len(rows))
        records += [grounding_record(row, str(image_dir / row["image"]), frame, family, processor) for row in rows]
    missing = sorted({r["image"] for r in records if not Path(r["image"]).is_file()})
    if missing:
        raise ConfigError(
            f"{len(missing)} images the refs name are not in {image_dir} (first: {Path(missing[0]).name}): "
            "--coco_images is the COCO train2014 image folder"
        )
    return records


def _read_json_list(path: Path, what: str) -> list:
    """A JSON file holding a list; a clear RecordError (file and line) when it is not valid JSON or not a list."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RecordError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err
    if not isinstance(entries, list):
        raise RecordError(f"{path}: expected a JSON list of {what}, got {type(entries).__name__}")
    return entries


def fox_instructions(json_path: str | Path, image_dir: str | Path) -> list[dict]:
    """Instruction records of a Fox-style page-OCR set.

    The prompt is the human turn with its `<image>` placeholder removed (`perpo.model.prompts.fox_question`, the very
    question the perpo_fox tasks ask); an empty prompt becomes `OCR_QUESTION`. Ids are
    `fox_<json stem>_<image stem>`.

    Args:
        json_path: the JSON list, e.g. `en_page_ocr.json`.
        image_dir: the folder of page images, e.g. `en_pdf_png/`.

    Raises:
        RecordError: an entry is malformed (names the file, the entry and the field) or two entries share an image.
        FileNotFoundError: the JSON file, the folder or a page image is missing.
    """
    json_path, image_dir = Path(json_path), Path(os.path.abspath(image_dir))
    if not json_path.is_file():
        raise FileNotFoundError(f"Fox annotation file {json_path} not found")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"Fox image folder {image_dir} not found")
    entries = _read_json_list(json_path, "pages")
    records, seen = [], {}
    for index, entry in enumerate(entries):
        where = f"{json_path}: entry {index}"
        if not isinstance(entry, dict):
            raise RecordError(f"{where}: expected an object, got {type(entry).__name__}")
        image = entry.get("image")
        if not isinstance(image, str) or not image:
            raise RecordError(f"{where}: field 'image' must be the page image's file name, got {image!r}")
        turns = entry.get("conversations")
        if not (
            isinstance(turns, list)
            and len(turns) >= 2
            and all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns[:2])
        ):
            raise RecordError(
                f"{where}: field 'conversations' must be a list [{{'from': 'human', 'value': prompt}}, "
                f"{{'from': 'gpt', 'value': page text}}], got {str(turns)[:120]}"
            )
        if turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
            raise RecordError(
                f"{where}: field 'conversations' must start with a 'human' turn then a 'gpt' turn, got "
                f"{turns[0].get('from')!r}, {turns[1].get('from')!r}"
            )
        if image in seen:
            raise RecordError(f"{where}: field 'image' {image!r} repeats entry {seen[image]}; ids must be unique")
        seen[image] = index
        path = image_dir / image
        if not path.is_file():
            raise FileNotFoundError(f"{where}: page image {path} not found")
        question = fox_question(turns[0]["value"])
        text = turns[1]["value"]
        records.append(
            {
                "id": f"fox_{json_path.stem}_{Path(image).stem}",
                "task": "ocr",
                "image": str(path),
                "question": question,
                "answer": text,
                "target": text,
                "meta": {"dataset": f"fox_{json_path.stem}", "source": json_path.name, "index": index},
            }
        )
    return records


def equal_share_counts(available: Mapping[str, int], total: int) -> dict[str, int]:
    """How many items each group gives to make `total`, as evenly as the groups allow (water filling).

    Args:
        available: items per group.
        total: wanted items; if it exceeds the sum, every group gives all it has.

    Returns:
        Items per group (same keys). Groups that run short give all they have; the rest share the shortfall;
        an uneven remainder goes to groups in sorted name order.
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    counts = {group: 0 for group in available}
    open_groups = sorted(g for g, n in available.items() if n > 0)
    remaining = min(total, sum(available.values()))
    while open_groups and remaining > 0:
        share = remaining // len(open_groups)
        short = [g for g in open_groups if available[g] <= share]
        if not short:
            extra = remaining - share * len(open_groups)
            for i, group in enumerate(open_groups):
                counts[group] = share + (1 if i < extra else 0)
            break
        for group in short:
            counts[group] = available[group]
            remaining -= available[group]
        open_groups = [g for g in open_groups if g not in short]
    return counts


def equal_share_sample(
    records: Sequence[dict], total: int, seed: int, group: Callable[[dict], str] | None = None
) -> list[dict]:
    """A seeded subsample of `total` records with an equal share per group, in the input order.

    Args:
        records: the candidates.
        total: how many to keep (all of them if there are fewer).
        seed: subsample seed; each group draws from `random.Random(f"{seed}/{group}")`.
        group: the group of a record; default `meta["dataset"]` (records without one form the group "").

    Returns:
        The selected records, in their original order.
    """
    group = group or (lambda r: str((r.get("meta") or {}).get("dataset", "")))
    members: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        members.setdefault(group(record), []).append(index)
    counts = equal_share_counts({g: len(idx) for g, idx in members.items()}, total)
    chosen: set[int] = set()
    for name, indices in members.items():
        chosen.update(random.Random(f"{seed}/{name}").sample(indices, counts[name]))
    if total > len(records):
        logger.warning("asked for %d records but only %d are available: keeping all", total, len(records))
    return [record for index, record in enumerate(records) if index in chosen]


def write_records(path: str | Path, records: Iterable[dict], *, stage: str = "instructions") -> Path:
    """Validate and write records as JSONL (atomically, keys sorted), with portable image paths.

    An absolute image path under the output file's folder becomes relative to it; other paths are kept as given
    (a relative path already means "relative to the image root").

    Raises:
        RecordError: a record breaks the schema for `stage`, or two records share an id (nothing is written).
    """
    from perpo.io import write_jsonl

    path = Path(path)
    base = Path(os.path.abspath(path.parent))
    rows, seen = [], {}
    for number, record in enumerate(records, start=1):
        record = dict(record)
        if record.get("image") and Path(record["image"]).is_absolute():
            record["image"] = portable_image_path(record["image"], base)
        validate_record(record, stage=stage, source=f"{path} (record {number})")
        if record["id"] in seen:
            raise RecordError(f"{path}: id {record['id']!r} appears twice (records {seen[record['id']]} and {number})")
        seen[record["id"]] = number
        rows.append(record)
    return write_jsonl(path, rows)


def released_refer_rows(root: str | Path, datasets: Sequence[str] = REFCOCO_DATASETS, split: str = "train") -> list:
    """RefCOCO-family rows (file names, expressions, exact boxes) to recover exact targets of released data.

    Only file names are needed, so no image folder is checked (the refer root stands in for it).
    """
    from perpo.data.refer import load_refer_rows

    return [row for name in datasets for row in load_refer_rows(root, name, split, image_dir=root)]


# --------------------------------------------------------------------------------------------------------------
# The released PerPO data.json


def _released_expression(question: str) -> str:
    question = question.replace("</s>", "").replace("<image>", "").strip()
    if question.startswith(_GROUNDING_PREFIX):
        question = question[len(_GROUNDING_PREFIX) :]
    return question.strip()


def _normalise_expression(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".").strip()


def refer_box_index(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """Index refer rows by (image file name, normalised expression), to recover exact boxes for released data."""
    index: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        index.setdefault((Path(row["image"]).name, _normalise_expression(row["expression"])), []).append(row)
    return index


def _close(a: Sequence[float], b: Sequence[float], tolerance: float = _ANSWER_TOLERANCE) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def _exact_target(
    entry: Mapping[str, Any], answer_box: Box | None, frame: str, index: Mapping | None
) -> tuple[list[float], dict]:
    """The exact GT box of a released entry when refer rows identify it, else the parsed answer (noted in meta)."""
    note: dict[str, Any] = {}
    if index is not None:
        key = (Path(str(entry["image_path"])).name, _normalise_expression(_released_expression(entry["question"])))
        candidates = {}
        for row in index.get(key, []):
            box = gt_box_in_frame(row["bbox"], row["width"], row["height"], frame)
            candidates.setdefault(tuple(box), row)
        if len(candidates) > 1 and answer_box is not None:
            # Several objects share image and words (RefCOCO and RefCOCO+ share images): the answer tells which.
            close = {box: row for box, row in candidates.items() if _close(box, answer_box)}
            candidates = close if len(close) == 1 else candidates
        if len(candidates) == 1:
            ((box, row),) = candidates.items()
            note = {
                "target_source": "refer",
                "dataset": row["dataset"],
                "ref_id": row["ref_id"],
                "sent_id": row["sent_id"],
                "width": row["width"],
                "height": row["height"],
                "bbox": [float(v) for v in row["bbox"]],
            }
            if answer_box is not None and not _close(box, answer_box):
                note["answer_disagrees_with_target"] = True
            return [float(v) for v in box], note
        note["refer_match"] = "ambiguous" if candidates else "none"
    if answer_box is None:
        raise RecordError(f"field 'answer' {entry['answer']!r} holds no box and no refer row identifies the object")
    note["target_source"] = "parsed_answer"
    return [float(v) for v in answer_box], note


def import_perpo_data(
    path: str | Path,
    *,
    frame: str = "padded",
    image_folder: str | Path | None = None,
    refer_rows: Iterable[Mapping[str, Any]] | None = None,
) -> list[dict]:
    """Convert the authors' released listwise `data.json` into train-stage records.

    The released file is a JSON list of {"image_id", "image_path", "question", "answer", "answers_gen",
    "iou_scores"} (grounding only; lists stored best-first, but nothing here relies on the order). Each entry
    becomes one record with responses = answers_gen, rewards = iou_scores (kept as released), reward "iou".

    The released `answer` is rounded to 2 decimals while the released IoUs were computed against the exact box.
    So `target` is the exact box when `refer_rows` (RefCOCO/+/g train rows from `perpo.data.refer`) identify the
    object by image file name and expression; otherwise it is the parsed `answer`, and `meta.target_source` says
    which ("refer" or "parsed_answer"). `meta.rewards_recomputed_max_diff` is the largest gap between a released
    IoU and the IoU recomputed against `target` in `frame`: near 0 means the frame and the target are right.

    Args:
        path: the released JSON file.
        frame: the box frame the released boxes are in ("padded" for LLaVA-1.5, unless told otherwise).
        image_folder: if given, image paths become `image_folder/image_path` (absolute); else `image_path` is
            kept as released (relative to the folder the authors trained from, passed later as an image root).
        refer_rows: optional refer rows to recover exact targets.

    Returns:
        Train-stage records with ids `perpo_<index>`.

    Raises:
        RecordError: an entry is malformed; the message names the file, the entry and the field.
    """
    _check_frame(frame)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"released data file {path} not found")
    entries = _read_json_list(path, "entries")
    index = refer_box_index(refer_rows) if refer_rows is not None else None
    folder = Path(os.path.abspath(image_folder)) if image_folder is not None else None
    records, parsed_targets, disagreements = [], 0, 0
    for number, entry in enumerate(entries):
        where = f"{path}: entry {number}"
        if not isinstance(entry, dict):
            raise RecordError(f"{where}: expected an object, got {type(entry).__name__}")
        for field, kind in (("image_path", str), ("question", str), ("answer", str), ("answers_gen", list)):
            if not isinstance(entry.get(field), kind):
                raise RecordError(f"{where}: field '{field}' must be {kind.__name__}, got {entry.get(field)!r:.80}")
        scores = entry.get("iou_scores")
        if not isinstance(scores, list) or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores
        ):
            raise RecordError(f"{where}: field 'iou_scores' must be a list of finite numbers, got {scores!r:.80}")
        if len(scores) != len(entry["answers_gen"]):
            raise RecordError(
                f"{where}: field 'iou_scores' has {len(scores)} values for {len(entry['answers_gen'])} answers_gen"
            )
        answer_box = parse_box(entry["answer"], fmt="norm")
        try:
            target, note = _exact_target(entry, answer_box, frame, index)
        except RecordError as err:
            raise RecordError(f"{where}: {err}") from None
        parsed_targets += note["target_source"] == "parsed_answer"
        disagreements += bool(note.get("answer_disagrees_with_target"))
        recomputed = [iou_reward(str(response), target) for response in entry["answers_gen"]]
        image = str(entry["image_path"])
        meta = {
            "source": "perpo_data_json",
            "file": path.name,
            "index": number,
            "image_id": entry.get("image_id"),
            "released_order": "best-first",
            "rewards_recomputed_max_diff": max(
                (abs(a - b) for a, b in zip(recomputed, scores, strict=True)), default=0.0
            ),
            **note,
        }
        meta.setdefault("dataset", "refcoco_family")
        record = {
            "id": f"perpo_{number}",
            "task": "grounding",
            "image": str(folder / image) if folder is not None else image,
            "question": entry["question"].replace("</s>", "").replace("<image>", "").strip(),
            "answer": entry["answer"],
            "target": target,
            "frame": frame,
            "responses": [str(r) for r in entry["answers_gen"]],
            "rewards": [float(s) for s in scores],
            "reward": "iou",
            "sampler": {"backend": "imported", "source": path.name},
            "meta": meta,
        }
        records.append(validate_record(record, stage="train", source=where))
    if parsed_targets:
        logger.warning(
            "%s: %d of %d targets are the released 2-decimal answers (no refer row identified the object); "
            "pass refer rows for exact targets",
            path,
            parsed_targets,
            len(records),
        )
    if disagreements:
        logger.warning(
            "%s: %d released answers disagree with the refer box in the %r frame by more than rounding: "
            "is the frame right?",
            path,
            disagreements,
            frame,
        )
    return records
