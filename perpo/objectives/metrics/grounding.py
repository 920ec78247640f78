"""Per-sample referring-expression grounding metrics (RefCOCO family). Pure Python, no torch.

Every key is a float so that lmms-eval can average it (`aggregation: mean`):

- `ap50`: 1.0 if IoU >= 0.5 else 0.0. PerPO's "AP@50" is this accuracy at IoU 0.5 averaged over referring
  expressions (one predicted box per expression, so not COCO-style AP). Equal to `acc50` by definition.
- `iou`: IoU of the parsed box with the ground truth (`perpo.objectives.boxes.box_iou`; 0.0 when unparseable).
- `parse_fail`: 1.0 when no box could be parsed from the answer (all scores are then 0.0 and the sample stays
  in the denominator, as lmms-eval does with its `[0, 0, 0, 0]` fallback).
- `acc10`, `acc20`, ..., `acc90`: 1.0 if IoU >= 0.1, 0.2, ..., 0.9 (inclusive, as lmms-eval's `ACC@t`; its
  refcoco tasks report ACC@0.1/0.3/0.5/0.7/0.9, i.e. our `acc10/acc30/acc50/acc70/acc90`).
- `center_acc`: 1.0 if the centre of the predicted box lies in the ground-truth box, borders included
  (lmms-eval's `Center_ACC`). The centre is the midpoint of the written corners, so it does not depend on
  their order.

Both boxes must be in the same normalised frame (see `perpo.objectives.boxes.FRAMES`): the caller normalises the ground
truth in the frame the model answers in.
"""

from __future__ import annotations

from perpo.objectives.boxes import Box, BoxFormat, box_iou, parse_box

IOU_THRESHOLDS: dict[str, float] = {
    "acc10": 0.1,
    "acc20": 0.2,
    "acc30": 0.3,
    "acc40": 0.4,
    "acc50": 0.5,
    "acc60": 0.6,
    "acc70": 0.7,
    "acc80": 0.8,
    "acc90": 0.9,
}
"""Metric key -> IoU threshold (inclusive). The thresholds are the float literals lmms-eval compares with."""

GROUNDING_METRIC_KEYS: tuple[str, ...] = ("ap50", "iou", "parse_fail", *IOU_THRESHOLDS, "center_acc")


def center_in_box(pred: Box, gt: Box) -> bool:
    """Whether the midpoint of `pred`'s corners lies inside `gt` (borders included)."""
    cx = (pred[0] + pred[2]) / 2
    cy = (pred[1] + pred[3]) / 2
    return gt[0] <= cx <= gt[2] and gt[1] <= cy <= gt[3]


def box_metrics(pred: Box | None, gt_box: Box) -> dict[str, float]:
    """Grounding metrics of an already parsed box (`None` = parse failure).

    Args:
        pred: Predicted `(x1, y1, x2, y2)` in the ground truth's frame, or `None` if the answer had no box.
        gt_box: Ground-truth `(x1, y1, x2, y2)` in the same frame.

    Returns:
        `{key: float}` for every key in `GROUNDING_METRIC_KEYS`.
    """
    if pred is None:
        scores = dict.fromkeys(GROUNDING_METRIC_KEYS, 0.0)
        scores["parse_fail"] = 1.0
        return scores
    iou = box_iou(pred, gt_box)
    scores = {"ap50": float(iou >= 0.5), "iou": iou, "parse_fail": 0.0}
    scores.update({key: float(iou >= threshold) for key, threshold in IOU_THRESHOLDS.items()})
    scores["center_acc"] = float(center_in_box(pred, gt_box))
    return scores


def grounding_metrics(
    response: str, gt_box: Box, *, fmt: BoxFormat = "norm", size: tuple[int, int] | None = None
) -> dict[str, float]:
    """Parse a model's answer and score it against the ground-truth box.

    Args:
        response: The model's answer text (anything: unparseable text counts as a parse failure).
        gt_box: Ground-truth `(x1, y1, x2, y2)` normalised in the frame the model answers in.
        fmt: Coordinate convention of the answer (`perpo.objectives.boxes.parse_box`).
        size: `(width, height)` of the model's frame in pixels, required for `fmt="pixel"`.

    Returns:
        `{key: float}` for every key in `GROUNDING_METRIC_KEYS` (see the module docstring).

    Raises:
        ValueError: Only for caller errors (unknown `fmt`, missing `size` for `"pixel"`).
    """
    return box_metrics(parse_box(response, fmt=fmt, size=size), gt_box)
