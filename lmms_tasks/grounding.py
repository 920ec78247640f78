"""lmms-eval hooks of the grounding tasks (RefCOCO family and the synthetic benchmark).

The task folders' `utils.py` bind these to a frame and a prompt (lmms-eval calls hooks with the document only, so
every option a hook needs is fixed by which function the YAML names). Scoring is `perpo.objectives.metrics.grounding`:

- greedy tasks return per document `ap50`, `iou`, `parse_fail`, `acc10`..`acc90`, `center_acc` (floats, averaged
  by `aggregation: mean`), `frame` (a string, aggregated to the single frame of the task), and `record`, a dict
  of identifying fields written verbatim to the samples JSONL (aggregated to a count, `lmms_tasks.aggregations`);
- best-of-N tasks return `ap50_first/_mean/_best`, `iou_first/_mean/_best`, `ap50_bo1..bo<N>`, `iou_bo1..bo<N>`
  (`lmms_tasks.bestofk`), `parse_fail_first/_mean`, `n_samples`, `frame` and `record`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from lmms_tasks.bestofk import best_of_n_summary
from lmms_tasks.images import blank_like, expand2square, open_image
from perpo.model.families import LLAVA, QWEN2_5_VL, QWEN3_VL
from perpo.model.families.qwen2_5_vl import resized_size
from perpo.model.prompts import (
    GROUNDING_QUESTION,
    LMMS_EVAL_GROUNDING_QUESTION,
    QWEN_GROUNDING_QUESTION,
    grounding_question,
)
from perpo.objectives.boxes import FRAMES, parse_box
from perpo.objectives.metrics.grounding import box_metrics

PROMPTS: dict[str, str] = {
    "llava15": GROUNDING_QUESTION,
    "lmms_eval": LMMS_EVAL_GROUNDING_QUESTION,
    "qwen": QWEN_GROUNDING_QUESTION,
}
"""Prompt name → template: LLaVA-1.5's own REC prompt, lmms-eval's refcoco_bbox_rec preamble, or Qwen2.5-VL's."""
QWEN_PIXEL_ENV = ("PERPO_QWEN_MIN_PIXELS", "PERPO_QWEN_MAX_PIXELS")
QWEN_PIXEL_DEFAULTS = (256 * 28 * 28, 1605632)
"""The `_qwen` tasks' image area bounds: lmms-eval's `qwen2_5_vl` defaults (its `min_pixels`, `max_pixels`), unless
the two environment variables say otherwise; give them the values of the model's `min_pixels` / `max_pixels`."""
GT_COLUMNS: dict[str, str] = {"padded": "gt_padded", "original": "gt_original"}
BON_METRICS: tuple[str, ...] = ("ap50", "iou")


def _check_frame(frame: str) -> None:
    if frame not in FRAMES:
        raise ValueError(f"unknown frame {frame!r}; valid frames: {', '.join(FRAMES)}")


def doc_to_visual(doc: dict, frame: str) -> list:
    """The document's image as the model should see it for answers normalised in `frame`.

    Args:
        doc: A grounding document (`image` is a path or a PIL image).
        frame: "padded" (LLaVA-1.5's expand2square with the CLIP-mean fill) or "original" (the image as is; a
            LLaVA-1.5 model run by `perpo_llava` still sees it padded, as it was trained: its family pads before
            the processor, and the frame only says how its answer is read).

    Returns:
        A one-element list with an RGB PIL image.
    """
    _check_frame(frame)
    image = open_image(doc["image"])
    return [expand2square(image) if frame == "padded" else image]


def qwen_pixels(doc: dict) -> tuple[int, int]:
    """`(width, height)` of the image the `_qwen` tasks hand over: the document's image as Qwen2.5-VL's processor
    resizes it (`perpo.model.families.qwen2_5_vl.resized_size`, bounds from `QWEN_PIXEL_ENV`). Its answers are pixels
    of this image, and an image already of this size is not resized again by a model run with the same bounds."""
    bounds = []
    for name, default in zip(QWEN_PIXEL_ENV, QWEN_PIXEL_DEFAULTS, strict=True):
        value = os.environ.get(name, "")
        if value and not (value.isdigit() and int(value) > 0):
            raise ValueError(f"{name} must be a positive whole number of pixels, got {value!r}")
        bounds.append(int(value) if value else default)
    min_pixels, max_pixels = bounds
    return resized_size(int(doc["width"]), int(doc["height"]), min_pixels=min_pixels, max_pixels=max_pixels)


def doc_to_qwen_visual(doc: dict) -> list:
    """The document's image resized to `qwen_pixels` (the `_qwen` tasks: boxes are read in its pixels)."""
    return [open_image(doc["image"]).resize(qwen_pixels(doc))]


def doc_to_blank_visual(doc: dict) -> list:
    """The `blankimg` ablation: a uniform CLIP-mean image of the document's size instead of its image."""
    return [blank_like(doc["width"], doc["height"])]


def doc_to_no_visual(doc: dict) -> list:
    """The `noimg` ablation: no image at all (the question alone)."""
    return []


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None, *, prompt: str = "llava15") -> str:
    """The grounding question for the document's expression, with optional model-specific pre/post prompts.

    Args:
        doc: A grounding document.
        lmms_eval_specific_kwargs: lmms-eval's per-model block (`pre_prompt`, `post_prompt`), may be None.
        prompt: A key of `PROMPTS`.
    """
    kwargs = lmms_eval_specific_kwargs or {}
    question = grounding_question(doc["expression"], PROMPTS[prompt])
    return f"{kwargs.get('pre_prompt', '')}{question}{kwargs.get('post_prompt', '')}"


def gt_box(doc: dict, frame: str) -> tuple[float, float, float, float]:
    """The document's ground-truth box, normalised xyxy in `frame` (precomputed by `lmms_tasks.data`)."""
    _check_frame(frame)
    return tuple(float(v) for v in doc[GT_COLUMNS[frame]])


def _record(doc: dict, frame: str) -> dict:
    image = doc.get("image")
    return {
        "id": doc["id"],
        "dataset": doc["dataset"],
        "split": doc["split"],
        "image": image if isinstance(image, str) else doc.get("file_name", ""),
        "width": doc["width"],
        "height": doc["height"],
        "bbox_xywh": list(doc["bbox"]),
        "expression": doc["expression"],
        "ref_id": doc.get("ref_id", -1),
        "ann_id": doc.get("ann_id", -1),
        "sent_id": doc.get("sent_id", -1),
        "frame": frame,
        "gt_box": list(gt_box(doc, frame)),
    }


BOXES = {"norm": LLAVA, "qwen_pixels": QWEN2_5_VL, "qwen_relative": QWEN3_VL}
"""How an answer writes its box, and the family that writes it so (`Family.read_box` reads it): normalised to
[0, 1] (LLaVA), absolute pixels of the `qwen_pixels` image (Qwen2.5-VL), or relative on a 0-1000 grid (Qwen3-VL)."""


def read_answer_box(response: str, boxes: str = "norm", pixels: tuple[int, int] | None = None):
    """The first box of an answer, normalised, read the way `boxes` says it is written (`pixels`: the `qwen_pixels`
    size, for `qwen_pixels`)."""
    if boxes not in BOXES:
        raise ValueError(f"unknown box convention {boxes!r}; valid: {', '.join(BOXES)}")
    return BOXES[boxes].read_box(response, pixels)


def process_results(doc: dict, results: Sequence[str], *, frame: str, boxes: str = "norm") -> dict:
    """Score the first response of a document (greedy tasks).

    Args:
        doc: A grounding document (image columns may have been removed by lmms-eval).
        results: The model's responses; only the first is scored.
        frame: The frame the answer is read in.
        boxes: How the answer writes its box (`BOXES`); Qwen's are read back to `frame`, the original.

    Returns:
        The metric floats, `frame`, and `record` (identifying fields, the parsed box and the raw response; for
        `qwen_pixels` also `pixels`, the size of the image the box was read in).
    """
    response = results[0] if results else ""
    pixels = qwen_pixels(doc) if boxes == "qwen_pixels" else None
    pred = read_answer_box(response, boxes, pixels)
    scores = box_metrics(pred, gt_box(doc, frame))
    record = _record(doc, frame)
    if pixels:
        record["pixels"] = list(pixels)
    record.update({"pred_box": list(pred) if pred is not None else None, "response": response})
    return {**scores, "frame": frame, "record": record}


def process_results_bon(doc: dict, results: Sequence[str], *, frame: str) -> dict:
    """Score all N sampled responses of a document (best-of-N tasks).

    Returns:
        `<m>_first`, `<m>_mean`, `<m>_best`, `<m>_bo1`..`<m>_bo<N>` for m in ap50, iou (unbiased best-of-k
        estimates, `lmms_tasks.bestofk`), `parse_fail_first`, `parse_fail_mean`, `n_samples`, `frame`, and
        `record` with every response, parsed box and IoU.
    """
    responses = list(results) or [""]
    gt = gt_box(doc, frame)
    preds = [parse_box(response) for response in responses]
    scores = [box_metrics(pred, gt) for pred in preds]
    out: dict = {}
    for name in BON_METRICS:
        out.update(best_of_n_summary(name, [s[name] for s in scores]))
    fails = [s["parse_fail"] for s in scores]
    out.update({"parse_fail_first": fails[0], "parse_fail_mean": sum(fails) / len(fails)})
    out.update({"n_samples": float(len(responses)), "frame": frame})
    record = _record(doc, frame)
    record.update(
        {
            "pred_boxes": [list(p) if p is not None else None for p in preds],
            "ious": [s["iou"] for s in scores],
            "responses": responses,
        }
    )
    out["record"] = record
    return out
