"""In-process evaluation: greedy answers on a flat JSONL split, scored with AP@50 (grounding) or edit distance (OCR).

This is the quick check used while training (warm-up progress, demo stages). The reported numbers of record
come from the lmms-eval tasks in `lmms_tasks/`, which call the same metric functions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from perpo.io import load_image
from perpo.model.families import LLAVA, Family
from perpo.model.generation import GenerationRequest, generate
from perpo.model.prompts import chat_prompt, grounding_question
from perpo.objectives.boxes import denormalize_box, gt_box_in_frame
from perpo.objectives.metrics.grounding import grounding_metrics
from perpo.objectives.metrics.ocr import normalized_edit_distance

logger = logging.getLogger(__name__)


def row_question(row: dict, family: Family = LLAVA) -> str:
    """The question of a row: its own `question` (a listwise record's) or the family's grounding question of its
    expression."""
    return row["question"] if "question" in row else grounding_question(row["expression"], family.grounding_template)


def row_target(row: dict, frame: str, family: Family = LLAVA, processor=None) -> tuple[float, ...]:
    """The ground-truth box of a row in the units the model answers in: its own `target` (a listwise record's,
    already in them) or its pixel `bbox` [x, y, w, h] normalised in `frame`, then in pixels of the model's resized
    image for a family that answers in those (`Family.answer_pixels`)."""
    if "target" in row:
        return tuple(row["target"])
    box = gt_box_in_frame(row["bbox"], row["width"], row["height"], frame)
    pixels = family.answer_pixels(processor, int(row["width"]), int(row["height"]))
    if pixels and frame != "original":
        raise ValueError(f"{family.model_type} answers in its own frame of the image: score it in 'original'")
    return denormalize_box(box, *pixels) if pixels else box


def grounding_requests(processor, rows: Sequence[dict], image_root: str | Path, family: Family = LLAVA):
    image_root = Path(image_root)
    return [
        GenerationRequest(
            prompt=chat_prompt(processor, row_question(row, family)),
            image=load_image(image_root / row["image"]),
            key=str(row["id"]),
        )
        for row in rows
    ]


def evaluate_grounding(
    model,
    processor,
    rows: Sequence[dict],
    image_root: str | Path,
    *,
    frame: str = "padded",
    batch_size: int = 32,
    max_new_tokens: int = 24,
    progress: bool = False,
) -> dict[str, float]:
    """Mean grounding metrics (ap50, iou, parse_fail, …) of greedy answers over `rows`.

    A row is a flat grounding row (image, expression, pixel bbox, width, height; scored in `frame`) or carries its
    own `question` and `target` box (a listwise record's instruction; see `row_question`, `row_target`). Flat rows
    are asked and scored the way the model's family answers (`perpo.model.families`).
    """
    from tqdm import tqdm

    from perpo.model.families import family_of

    family = family_of(model)  # unwraps peft / DeepSpeed, as held-out scoring may pass them
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="evaluating AP@50", unit="batch", disable=not progress):
        chunk = rows[start : start + batch_size]
        answers = generate(
            model, processor, grounding_requests(processor, chunk, image_root, family), max_new_tokens=max_new_tokens
        )
        for row, (answer,) in zip(chunk, answers, strict=True):
            gt = row_target(row, frame, family, processor)
            for key, value in grounding_metrics(answer, gt).items():
                totals[key] = totals.get(key, 0.0) + value
    model.train(was_training)
    return {key: value / max(len(rows), 1) for key, value in totals.items()} | {"n": float(len(rows))}


def evaluate_ocr(
    model,
    processor,
    records: Sequence[dict],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    per_page: bool = False,
) -> dict:
    """Mean normalised edit distance (lower is better) and exact-page share of greedy transcriptions.

    Args:
        records: OCR instruction records (`perpo.data.sources.fox_instructions`): image path, question, target.
        per_page: also return `distances`, each record's edit distance in order (for paired comparisons).
    """
    was_training = model.training
    model.eval()
    distances, exact = [], 0
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        requests = [
            GenerationRequest(prompt=chat_prompt(processor, r["question"]), image=load_image(r["image"]), key=r["id"])
            for r in chunk
        ]
        for record, (answer,) in zip(
            chunk, generate(model, processor, requests, max_new_tokens=max_new_tokens), strict=True
        ):
            distances.append(normalized_edit_distance(answer, record["target"]))  # as the Fox tasks score it
            exact += answer == record["target"]
    model.train(was_training)
    n = max(len(records), 1)
    scores = {"edit_dist": sum(distances) / n, "exact": exact / n, "n": float(len(records))}
    return scores | {"distances": distances} if per_page else scores
