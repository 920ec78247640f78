"""Tests for `perpo.objectives.boxes`: parsing model answers, frames (original / LLaVA-1.5 padded square) and IoU."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perpo.objectives.boxes import (
    FRAMES,
    box_iou,
    convert_frame,
    denormalize_box,
    format_box,
    from_padded_frame,
    gt_box_in_frame,
    normalize_box,
    padding_offsets,
    parse_box,
    to_padded_frame,
    xywh_to_xyxy,
    xyxy_to_xywh,
)

MALFORMED = Path(__file__).resolve().parents[1] / "fixtures" / "malformed_box_outputs.json"


def _malformed() -> dict:
    return json.loads(MALFORMED.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------------------------
# parse_box
# ----------------------------------------------------------------------------------------------------------------
def test_parses_the_llava_answer_format() -> None:
    assert parse_box("[0.61, 0.1, 0.77, 0.54]") == (0.61, 0.1, 0.77, 0.54)


def test_malformed_corpus_has_at_least_40_cases_with_unique_ids() -> None:
    cases = _malformed()["cases"]
    assert len(cases) >= 40
    assert len({case["id"] for case in cases}) == len(cases)
    assert sum(case["expected"] is None for case in cases) >= 20  # both outcomes well represented
    assert sum(case["expected"] is not None for case in cases) >= 15


@pytest.mark.parametrize("case", _malformed()["cases"], ids=lambda case: case["id"])
def test_malformed_outputs_parse_as_expected(case: dict) -> None:
    """Each adversarial output gives its hand-written outcome (None = parse failure) without raising."""
    size = tuple(case["size"]) if case["size"] else None
    got = parse_box(case["text"], fmt=case["fmt"], size=size)
    if case["expected"] is None:
        assert got is None
    else:
        assert got is not None and all(isinstance(v, float) and math.isfinite(v) for v in got)
        assert got == pytest.approx(tuple(case["expected"]), abs=1e-12)
        assert box_iou(got, tuple(_malformed()["gt_box"])) == pytest.approx(case["expected_iou"], abs=1e-9)


@pytest.mark.parametrize("value", [None, 3, 0.5, b"[0.1, 0.2, 0.3, 0.4]", ["[0.1, 0.2, 0.3, 0.4]"], {"box": 1}])
def test_non_string_input_gives_none(value: object) -> None:
    assert parse_box(value) is None  # type: ignore[arg-type]


def test_first_box_wins_across_shapes() -> None:
    """A corner-pair box earlier in the text beats a later bracketed quadruple, and vice versa."""
    assert parse_box("(0.1, 0.2), (0.3, 0.4) then [0.5, 0.6, 0.7, 0.8]") == (0.1, 0.2, 0.3, 0.4)
    assert parse_box("[0.5, 0.6, 0.7, 0.8] then (0.1, 0.2), (0.3, 0.4)") == (0.5, 0.6, 0.7, 0.8)


def test_formats_scale_the_same_box() -> None:
    """One box written three ways: normalised, Qwen's 0-1000 integers, and pixels of a 640x480 frame."""
    expected = (0.25, 0.5, 0.75, 1.0)
    assert parse_box("[0.25, 0.5, 0.75, 1.0]", fmt="norm") == expected
    assert parse_box("<|box_start|>(250,500),(750,1000)<|box_end|>", fmt="qwen") == expected
    assert parse_box('{"bbox_2d": [160, 240, 480, 480]}', fmt="pixel", size=(640, 480)) == expected


def test_pixel_format_needs_a_valid_size_and_unknown_format_raises() -> None:
    with pytest.raises(ValueError, match="size"):
        parse_box("[1, 2, 3, 4]", fmt="pixel")
    with pytest.raises(ValueError, match="size"):
        parse_box("[1, 2, 3, 4]", fmt="pixel", size=(0, 480))
    with pytest.raises(ValueError, match="valid formats"):
        parse_box("[1, 2, 3, 4]", fmt="xywh")  # type: ignore[arg-type]


def test_inverted_and_out_of_range_are_kept_as_written() -> None:
    """Policy: no re-ordering, no clamping (box_iou then scores them like lmms-eval)."""
    assert parse_box("[0.8, 0.9, 0.1, 0.2]") == (0.8, 0.9, 0.1, 0.2)
    assert parse_box("[-0.5, 0.0, 1.5, 2.0]") == (-0.5, 0.0, 1.5, 2.0)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 200_000,
        "(" * 100_000 + "1," * 100_000,
        "[1" + "1" * 200_000,
        "[0.1, 0.2, 0.3" + ", 0.4" * 50_000,
        ("[0.1, 0.2, 0.3 " * 20_000) + "[0.1, 0.2, 0.3, 0.4]",
    ],
    ids=["brackets", "parens-then-numbers", "digit-run", "many-numbers", "many-near-misses"],
)
def test_adversarial_long_inputs_parse_quickly(text: str) -> None:
    """No catastrophic backtracking: 200 k-character adversarial answers take well under a second."""
    start = time.perf_counter()
    result = parse_box(text)
    assert time.perf_counter() - start < 1.0
    assert result in (None, (0.1, 0.2, 0.3, 0.4))


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_never_raises_on_arbitrary_text(text: str) -> None:
    result = parse_box(text)
    assert result is None or (len(result) == 4 and all(math.isfinite(v) for v in result))


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("[](), .-+0123456789e\n")), max_size=60),
    st.sampled_from(["norm", "qwen"]),
)
def test_never_raises_on_box_like_noise(text: str, fmt: str) -> None:
    result = parse_box(text, fmt=fmt)  # type: ignore[arg-type]
    assert result is None or all(math.isfinite(v) for v in result)


# ----------------------------------------------------------------------------------------------------------------
# format_box
# ----------------------------------------------------------------------------------------------------------------
def test_format_box_always_writes_the_requested_digits() -> None:
    assert format_box((0.1, 0.0, 1.0, 0.345)) == "[0.10, 0.00, 1.00, 0.34]"  # 0.345 is 0.34499999... in binary
    assert format_box((0.12345, 0.5, 0.5, 0.5), decimals=3) == "[0.123, 0.500, 0.500, 0.500]"
    assert format_box((-1e-12, -0.0, 0.999, 0.995)) == "[0.00, 0.00, 1.00, 0.99]"  # 0.995 is 0.99499999...


def test_format_box_rejects_non_finite() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        format_box((0.1, math.nan, 0.2, 0.3))


@settings(max_examples=200, deadline=None)
@given(st.tuples(*[st.floats(min_value=0.0, max_value=1.0)] * 4))
def test_format_then_parse_round_trips_within_half_a_step(box: tuple[float, float, float, float]) -> None:
    parsed = parse_box("The box is " + format_box(box) + ".")
    assert parsed is not None
    assert all(abs(p - b) <= 0.005 + 1e-12 for p, b in zip(parsed, box, strict=True))


# ----------------------------------------------------------------------------------------------------------------
# Conversions and frames
# ----------------------------------------------------------------------------------------------------------------
def test_coco_xywh_conversions() -> None:
    assert xywh_to_xyxy((100.0, 50.0, 200.0, 100.0)) == (100.0, 50.0, 300.0, 150.0)
    assert xyxy_to_xywh((100.0, 50.0, 300.0, 150.0)) == (100.0, 50.0, 200.0, 100.0)
    assert normalize_box((100.0, 50.0, 300.0, 150.0), 640, 480) == (100 / 640, 50 / 480, 300 / 640, 150 / 480)
    assert denormalize_box((0.25, 0.5, 0.75, 1.0), 640, 480) == (160.0, 240.0, 480.0, 480.0)


def test_worked_example_landscape() -> None:
    """640x480 image, GT xywh [100, 50, 200, 100] (LLaVA-1.5's expand2square).

    Original frame: [100/640, 50/480, 300/640, 150/480] = [0.15625, 0.1041667, 0.46875, 0.3125].
    Padded frame: square side 640, dy = (640 - 480) // 2 = 80, so y becomes (50 + 80)/640 = 0.203125 and
    (150 + 80)/640 = 0.359375; x is divided by 640 as before.
    A perfect padded-frame answer read in the original frame has IoU 0.4286 with the true box: the padded box
    (0.15625, 0.203125, 0.46875, 0.359375) and the original (0.15625, 0.1041667, 0.46875, 0.3125) share
    y in [0.203125, 0.3125] (height 0.109375) of heights 0.15625 and 0.2083333: IoU = 0.109375 /
    (0.15625 + 0.2083333 - 0.109375) = 0.4286.
    """
    original = gt_box_in_frame((100, 50, 200, 100), 640, 480, "original")
    padded = gt_box_in_frame((100, 50, 200, 100), 640, 480, "padded")
    assert original == pytest.approx((0.15625, 50 / 480, 0.46875, 0.3125))
    assert padded == pytest.approx((0.15625, 0.203125, 0.46875, 0.359375))
    assert format_box(padded) == "[0.16, 0.20, 0.47, 0.36]"
    assert box_iou(padded, original) == pytest.approx(0.109375 / (0.15625 + 0.2083333333 - 0.109375), abs=1e-9)
    assert convert_frame(padded, 640, 480, "padded", "original") == pytest.approx(original)


def test_portrait_pads_in_x() -> None:
    """480 wide x 640 high: side 640, dx = 80, dy = 0: x1 = (100 + 80)/640, y1 = 50/640."""
    assert padding_offsets(480, 640) == (640, 80, 0)
    assert to_padded_frame((100, 50, 300, 150), 480, 640) == (180 / 640, 50 / 640, 380 / 640, 150 / 640)


def test_odd_difference_uses_expand2square_integer_offset() -> None:
    """641x480: expand2square pastes at (0, (641 - 480) // 2) = (0, 80), not 80.5, so a box touching the
    image's top edge starts at y = 80/641 in the square."""
    assert padding_offsets(641, 480) == (641, 0, 80)
    assert padding_offsets(480, 641) == (641, 80, 0)
    assert to_padded_frame((0, 0, 641, 480), 641, 480) == (0.0, 80 / 641, 1.0, 560 / 641)


def test_square_image_frames_coincide() -> None:
    assert padding_offsets(500, 500) == (500, 0, 0)
    box = (10.0, 20.0, 300.0, 400.0)
    assert gt_box_in_frame(xyxy_to_xywh(box), 500, 500, "padded") == gt_box_in_frame(
        xyxy_to_xywh(box), 500, 500, "original"
    )


def test_unknown_frame_raises() -> None:
    assert FRAMES == ("original", "padded")
    with pytest.raises(ValueError, match="valid frames"):
        gt_box_in_frame((0, 0, 1, 1), 10, 10, "square")  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(1, 4000),
    height=st.integers(1, 4000),
    fractions=st.tuples(*[st.floats(0.0, 1.0)] * 4),
)
def test_padded_frame_round_trip_and_containment(
    width: int, height: int, fractions: tuple[float, float, float, float]
) -> None:
    """from_padded_frame inverts to_padded_frame, and any box inside the image lands inside the square at the
    pasted image's place."""
    fx1, fy1, fx2, fy2 = fractions
    box = (fx1 * width, fy1 * height, fx2 * width, fy2 * height)
    padded = to_padded_frame(box, width, height)
    assert from_padded_frame(padded, width, height) == pytest.approx(box, abs=1e-9 * max(width, height))
    side, dx, dy = padding_offsets(width, height)
    assert all(dx / side - 1e-12 <= u <= (dx + width) / side + 1e-12 for u in padded[0::2])
    assert all(dy / side - 1e-12 <= v <= (dy + height) / side + 1e-12 for v in padded[1::2])


# ----------------------------------------------------------------------------------------------------------------
# box_iou
# ----------------------------------------------------------------------------------------------------------------
def test_iou_hand_values() -> None:
    """[0,0,2,2] vs [1,1,3,3]: intersection 1, union 4 + 4 - 1 = 7."""
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert box_iou((0, 0, 1, 1), (1, 0, 2, 1)) == 0.0  # touching edges
    assert box_iou((0, 0, 1, 1), (0.25, 0.25, 0.75, 0.75)) == pytest.approx(0.25)


def test_iou_policies() -> None:
    """Inverted boxes are empty; zero-area unions give 0.0; non-finite values give 0.0; no clamping."""
    gt = (0.1, 0.1, 0.5, 0.5)
    assert box_iou((0.5, 0.5, 0.1, 0.1), gt) == 0.0  # fully inverted copy of gt
    assert box_iou((0.5, 0.1, 0.1, 0.5), gt) == 0.0  # inverted in x only
    assert box_iou((0.2, 0.2, 0.2, 0.2), (0.2, 0.2, 0.2, 0.2)) == 0.0  # zero-area union, no ZeroDivisionError
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    assert box_iou((math.nan, 0.1, 0.5, 0.5), gt) == 0.0
    assert box_iou((0.1, 0.1, math.inf, 0.5), gt) == 0.0
    assert box_iou((1e200, 1e200, 1e300, 1e300), (1e200, 1e200, 1e300, 1e300)) == 0.0  # overflowing area: no NaN
    # Out of range is not clamped: [0.1, 0.1, 0.9, 1.7] has area 0.8 * 1.6 = 1.28 and covers gt (0.16): 0.125.
    assert box_iou((0.1, 0.1, 0.9, 1.7), gt) == pytest.approx(0.16 / 1.28)


def _lmms_eval_iou(box1: tuple[float, ...], box2: tuple[float, ...]) -> float:
    """lmms-eval's refcoco compute_iou (utils_rec.py), transcribed as the comparison target."""
    x_left, y_top = max(box1[0], box2[0]), max(box1[1], box2[1])
    x_right, y_bottom = min(box1[2], box2[2]), min(box1[3], box2[3])
    intersection = max(0, x_right - x_left) * max(0, y_bottom - y_top)
    area1 = (box1[2] - box1[0]) * (box1[3] - box1[1])
    area2 = (box2[2] - box2[0]) * (box2[3] - box2[1])
    return intersection / (area1 + area2 - intersection)


_coord = st.floats(-0.5, 1.5, allow_nan=False)
_boxes = st.tuples(_coord, _coord, _coord, _coord)
_proper_boxes = st.tuples(_coord, _coord, st.floats(1e-3, 1.0), st.floats(1e-3, 1.0)).map(
    lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3])
)


@settings(max_examples=300, deadline=None)
@given(_boxes, _boxes)
def test_iou_is_bounded_and_symmetric(a: tuple[float, ...], b: tuple[float, ...]) -> None:
    value = box_iou(a, b)
    assert 0.0 <= value <= 1.0
    assert value == box_iou(b, a)


@settings(max_examples=300, deadline=None)
@given(_proper_boxes, _proper_boxes)
def test_iou_equals_lmms_eval_on_proper_boxes(a: tuple[float, ...], b: tuple[float, ...]) -> None:
    assert box_iou(a, b) == pytest.approx(_lmms_eval_iou(a, b), abs=1e-12)
    assert box_iou(a, a) == 1.0
