"""Tests for `perpo.objectives.metrics.grounding`: per-sample AP@50 / IoU / parse failure / ACC@t / centre accuracy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perpo.objectives.boxes import gt_box_in_frame
from perpo.objectives.metrics.grounding import GROUNDING_METRIC_KEYS, IOU_THRESHOLDS, box_metrics, grounding_metrics

MALFORMED = Path(__file__).resolve().parents[1] / "fixtures" / "malformed_box_outputs.json"
GT = (0.0, 0.0, 0.5, 0.5)


def test_keys_are_lowercase_snake_and_complete() -> None:
    assert GROUNDING_METRIC_KEYS == (
        "ap50",
        "iou",
        "parse_fail",
        "acc10",
        "acc20",
        "acc30",
        "acc40",
        "acc50",
        "acc60",
        "acc70",
        "acc80",
        "acc90",
        "center_acc",
    )
    assert all(key.isidentifier() and key == key.lower() for key in GROUNDING_METRIC_KEYS)
    assert IOU_THRESHOLDS["acc50"] == 0.5 and len(IOU_THRESHOLDS) == 9


def test_hand_derived_sample() -> None:
    """Prediction [0.1, 0.1, 0.5, 0.5] vs GT [0, 0, 0.5, 0.5]: the prediction lies inside the GT,
    IoU = 0.4*0.4 / 0.5*0.5 = 0.16 / 0.25 = 0.64 -> passes thresholds 0.1..0.6, fails 0.7..0.9; its centre
    (0.3, 0.3) is inside the GT."""
    got = grounding_metrics("The box is [0.1, 0.1, 0.5, 0.5].", GT)
    assert got["iou"] == pytest.approx(0.64)
    assert got["ap50"] == got["acc50"] == 1.0
    assert [got[key] for key in IOU_THRESHOLDS] == [1.0] * 6 + [0.0] * 3
    assert got["center_acc"] == 1.0 and got["parse_fail"] == 0.0
    assert all(isinstance(value, float) for value in got.values())


def test_thresholds_are_inclusive() -> None:
    """IoU exactly 0.5: [0, 0, 0.5, 0.25] inside GT [0, 0, 0.5, 0.5] has IoU 0.125/0.25 = 0.5 exactly."""
    got = grounding_metrics("[0, 0, 0.5, 0.25]", GT)
    assert got["iou"] == 0.5
    assert got["ap50"] == got["acc50"] == 1.0 and got["acc60"] == 0.0


def test_centre_on_the_border_counts_and_centre_outside_does_not() -> None:
    """[0.5, 0.5, 0.5, 0.5] is a point on the GT's corner: IoU 0 but centre inside (borders included).
    [0.4, 0.4, 0.8, 0.8] has centre (0.6, 0.6), outside the GT, although it overlaps it."""
    on_border = grounding_metrics("[0.5, 0.5, 0.5, 0.5]", GT)
    assert on_border["iou"] == 0.0 and on_border["center_acc"] == 1.0 and on_border["ap50"] == 0.0
    outside = grounding_metrics("[0.4, 0.4, 0.8, 0.8]", GT)
    assert outside["iou"] > 0.0 and outside["center_acc"] == 0.0


def test_inverted_box_scores_zero_iou_but_keeps_its_centre() -> None:
    """The GT written with swapped corners: IoU 0 (an inverted box is empty) while its centre, the midpoint of
    the written corners, is the GT's centre (as lmms-eval's Center_ACC computes it)."""
    got = grounding_metrics("[0.5, 0.5, 0.0, 0.0]", GT)
    assert got["iou"] == 0.0 and got["ap50"] == 0.0 and got["parse_fail"] == 0.0 and got["center_acc"] == 1.0


def test_parse_failure_zeroes_everything() -> None:
    got = grounding_metrics("I don't know.", GT)
    assert got == {**dict.fromkeys(GROUNDING_METRIC_KEYS, 0.0), "parse_fail": 1.0}
    assert box_metrics(None, GT) == got


def test_qwen_and_pixel_answers_with_a_padded_frame_gt() -> None:
    """A 640x480 image, GT xywh [100, 50, 200, 100] in the padded frame is (0.15625, 0.203125, 0.46875,
    0.359375) (dy = 80). A pixel answer in the 640x640 padded square at (100, 130, 300, 230) and a Qwen answer
    (156, 203, 469, 359) both describe it: IoU 1 and about 0.997."""
    gt = gt_box_in_frame((100, 50, 200, 100), 640, 480, "padded")
    pixel = grounding_metrics("(100,130),(300,230)", gt, fmt="pixel", size=(640, 640))
    assert pixel["iou"] == pytest.approx(1.0)
    qwen = grounding_metrics("<|box_start|>(156,203),(469,359)<|box_end|>", gt, fmt="qwen")
    assert qwen["iou"] == pytest.approx(1.0, abs=5e-3) and qwen["ap50"] == 1.0


@pytest.mark.parametrize("case", json.loads(MALFORMED.read_text(encoding="utf-8"))["cases"], ids=lambda c: c["id"])
def test_malformed_outputs_are_scored_without_error(case: dict) -> None:
    """Every adversarial answer yields floats for every key, parse_fail matches the expected outcome, and IoU
    is the hand-derived value against the fixture's GT box."""
    gt = tuple(json.loads(MALFORMED.read_text(encoding="utf-8"))["gt_box"])
    size = tuple(case["size"]) if case["size"] else None
    got = grounding_metrics(case["text"], gt, fmt=case["fmt"], size=size)
    assert set(got) == set(GROUNDING_METRIC_KEYS)
    assert all(isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 1.0 for v in got.values())
    assert got["parse_fail"] == float(case["expected"] is None)
    assert got["iou"] == pytest.approx(case["expected_iou"], abs=1e-9)
    assert got["ap50"] == float(case["expected_iou"] >= 0.5)


_coord = st.floats(-0.2, 1.2, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(st.tuples(_coord, _coord, _coord, _coord), st.tuples(_coord, _coord, _coord, _coord))
def test_accuracies_are_monotone_and_ap50_is_acc50(pred: tuple[float, ...], gt: tuple[float, ...]) -> None:
    got = box_metrics(pred, gt)
    accs = [got[key] for key in IOU_THRESHOLDS]
    assert accs == sorted(accs, reverse=True)
    assert got["ap50"] == got["acc50"] == float(got["iou"] >= 0.5)
