"""Bounding boxes: parsing model answers, frame conversions and IoU. Pure Python.

Conventions used across the package:

- A `Box` is `(x1, y1, x2, y2)`: top-left then bottom-right corner, continuous coordinates (no +1), origin at
  the top-left of the image. "Pixel" boxes are in pixels; "normalised" boxes are divided by the width (x) and
  height (y) of their frame, so a box that covers its frame is `(0, 0, 1, 1)`.
- COCO / RefCOCO ground truth is pixel `[x, y, w, h]` (`x2 = x + w`, `y2 = y + h`).
- Two frames are supported, named by `FRAMES`:
  - `"original"`: normalised by the original image's width and height (lmms-eval's refcoco tasks);
  - `"padded"`: normalised by the side `S = max(W, H)` of the square LLaVA-1.5's `expand2square` builds. The
    image is pasted at the integer offset `((S - W) // 2, (S - H) // 2)` (one of the two is 0), exactly as
    `expand2square` calls `paste(img, (0, (W - H) // 2))` or `paste(img, ((H - W) // 2, 0))`. This module uses
    that integer offset, because it is where the real pixels sit in the square the model sees; for an odd
    `|W - H|` it differs from the centred `(S - H) / 2` by half a pixel.

Parsing policy of `parse_box` (the same function scores metrics and rewards, so the policy is the contract):

- The FIRST box in the text wins, as in lmms-eval (an answer that echoes an example box is scored on it).
- Accepted shapes, with any text around them and any whitespace inside (newlines, Unicode spaces):
  `[x1, y1, x2, y2]`, `(x1, y1, x2, y2)`, and corner pairs `(x1, y1), (x2, y2)` / `[x1, y1], [x2, y2]`
  (the comma between the pairs is optional; Qwen-VL writes `(x1,y1),(x2,y2)`). The brackets must match.
- A number is ASCII decimal: optional sign, digits with an optional fraction, or a leading-dot fraction
  (`.5`, `1.`, `+0.3`, `-0.1`). Exponents, `nan`/`inf`, `%`, thousands separators, non-ASCII digits
  (Arabic-Indic, full-width), the Unicode minus and full-width punctuation are not numbers, so a box written
  with them does not parse. Exactly four numbers: three or five numbers inside one bracket do not parse.
- A decimal string too large for a float (it overflows to infinity) makes the whole answer unparseable: every
  returned coordinate is finite.
- The coordinates are returned as written (only rescaled): an inverted box (`x1 > x2` or `y1 > y2`) is NOT
  re-ordered and an out-of-range box is NOT clamped. `box_iou` then scores them exactly as lmms-eval's refcoco
  scorer does: an inverted box covers nothing (IoU 0) and area outside the image counts in the union. The
  answer format is part of the skill being rewarded, so a box written the wrong way round earns nothing.
"""

from __future__ import annotations

import math
import re
from typing import Literal

Box = tuple[float, float, float, float]
"""(x1, y1, x2, y2): top-left and bottom-right corners."""

BoxFormat = Literal["norm", "qwen", "pixel"]
Frame = Literal["original", "padded"]

FRAMES: tuple[str, ...] = ("original", "padded")
BOX_FORMATS: tuple[str, ...] = ("norm", "qwen", "pixel")
QWEN_SCALE = 1000.0
"""Qwen2-VL writes integer coordinates in [0, 1000) of the original image; `parse_box(fmt="qwen")` divides by
this. (Qwen-VL v1's own evaluation divides by 999 instead: a difference of at most 0.1 % of the image.)"""

_NUM = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_COMMA = r"\s*,\s*"
_QUAD = rf"({_NUM}){_COMMA}({_NUM}){_COMMA}({_NUM}){_COMMA}({_NUM})"
_PAIR = rf"({_NUM}){_COMMA}({_NUM})"
# One pass over the text; `re.search` returns the leftmost match, so the first box in the text wins.
_BOX_RE = re.compile(
    "|".join(
        [
            rf"\[\s*{_QUAD}\s*\]",
            rf"\(\s*{_QUAD}\s*\)",
            rf"\[\s*{_PAIR}\s*\]\s*,?\s*\[\s*{_PAIR}\s*\]",
            rf"\(\s*{_PAIR}\s*\)\s*,?\s*\(\s*{_PAIR}\s*\)",
        ]
    ),
)


def parse_box(text: str, fmt: BoxFormat = "norm", size: tuple[int, int] | None = None) -> Box | None:
    """Parse the first box in a model's answer and normalise it to its frame.

    See the module docstring for the accepted shapes and the policy (first box wins; inverted and
    out-of-range coordinates are kept as written; non-finite values reject the answer).

    Args:
        text: The model's answer. Any value is accepted: a non-`str` gives `None`.
        fmt: How the model writes coordinates: `"norm"` values already in [0, 1] (LLaVA), `"qwen"` integers in
            [0, 1000) (divided by 1000), `"pixel"` absolute pixels of the frame (divided by `size`).
        size: `(width, height)` in pixels of the frame the model answered in; required for `"pixel"` only.

    Returns:
        The box `(x1, y1, x2, y2)` normalised to the model's frame, or `None` when no box can be read.

    Raises:
        ValueError: If `fmt` is unknown, or `fmt="pixel"` comes without a valid positive `size` (caller errors;
            the model's text itself never raises).
    """
    if fmt not in BOX_FORMATS:
        raise ValueError(f"unknown box format {fmt!r}; valid formats: {', '.join(BOX_FORMATS)}")
    if fmt == "pixel":
        _check_size(size)
    if not isinstance(text, str):
        return None
    match = _BOX_RE.search(text)
    if match is None:
        return None
    values = [float(group) for group in match.groups() if group is not None]
    if not all(math.isfinite(v) for v in values):
        return None
    x1, y1, x2, y2 = values
    if fmt == "qwen":
        return (x1 / QWEN_SCALE, y1 / QWEN_SCALE, x2 / QWEN_SCALE, y2 / QWEN_SCALE)
    if fmt == "pixel":
        assert size is not None  # checked above
        width, height = size
        return normalize_box((x1, y1, x2, y2), width, height)
    return (x1, y1, x2, y2)


def _check_size(size: object) -> None:
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or not all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in size)
    ):
        raise ValueError(f"fmt='pixel' needs size=(width, height) with positive values, got {size!r}")


def format_box(box: Box, decimals: int = 2) -> str:
    """Write a box the way the models are trained to answer: `"[0.12, 0.34, 0.56, 0.78]"`.

    Every value gets exactly `decimals` digits (`"0.10"`, `"1.00"`), rounded correctly from the float's exact
    binary value (Python's `format`), and a value that rounds to zero is written without a minus sign.

    Args:
        box: `(x1, y1, x2, y2)`, normally normalised to [0, 1].
        decimals: Digits after the decimal point.

    Returns:
        The bracketed, comma-and-space separated string.

    Raises:
        ValueError: If a value is not finite or `decimals` is negative.
    """
    if decimals < 0:
        raise ValueError(f"decimals must be >= 0, got {decimals}")
    parts = []
    for value in box:
        if not math.isfinite(value):
            raise ValueError(f"cannot format a non-finite box value: {box!r}")
        text = f"{value:.{decimals}f}"
        if text.startswith("-") and float(text) == 0.0:
            text = text[1:]
        parts.append(text)
    return "[" + ", ".join(parts) + "]"


def xywh_to_xyxy(box: Box) -> Box:
    """COCO `(x, y, w, h)` to `(x1, y1, x2, y2)` with `x2 = x + w`, `y2 = y + h` (same units)."""
    x, y, w, h = box
    return (x, y, x + w, y + h)


def xyxy_to_xywh(box: Box) -> Box:
    """`(x1, y1, x2, y2)` to COCO `(x, y, w, h)` (same units)."""
    x1, y1, x2, y2 = box
    return (x1, y1, x2 - x1, y2 - y1)


def normalize_box(box: Box, width: float, height: float) -> Box:
    """Pixel xyxy to normalised xyxy in a frame of `width` x `height` pixels (x by width, y by height)."""
    x1, y1, x2, y2 = box
    return (x1 / width, y1 / height, x2 / width, y2 / height)


def denormalize_box(box: Box, width: float, height: float) -> Box:
    """Normalised xyxy back to pixel xyxy in a frame of `width` x `height` pixels."""
    x1, y1, x2, y2 = box
    return (x1 * width, y1 * height, x2 * width, y2 * height)


def padding_offsets(width: int, height: int) -> tuple[int, int, int]:
    """Where LLaVA-1.5's `expand2square` pastes a `width` x `height` image in its square.

    Args:
        width: Original image width in pixels.
        height: Original image height in pixels.

    Returns:
        `(side, dx, dy)`: the square's side `max(W, H)` and the integer offset of the image's top-left corner
        (`dy = (W - H) // 2` when `W > H`, `dx = (H - W) // 2` when `H > W`, the other one 0).
    """
    if width > height:
        return width, 0, (width - height) // 2
    if height > width:
        return height, (height - width) // 2, 0
    return width, 0, 0


def to_padded_frame(box: Box, width: int, height: int) -> Box:
    """Pixel xyxy in the original image to normalised xyxy in LLaVA-1.5's padded square.

    Args:
        box: `(x1, y1, x2, y2)` in pixels of the original `width` x `height` image.
        width: Original image width in pixels.
        height: Original image height in pixels.

    Returns:
        The box shifted by the paste offset and divided by the square's side.
    """
    side, dx, dy = padding_offsets(width, height)
    x1, y1, x2, y2 = box
    return ((x1 + dx) / side, (y1 + dy) / side, (x2 + dx) / side, (y2 + dy) / side)


def from_padded_frame(box: Box, width: int, height: int) -> Box:
    """Normalised xyxy in LLaVA-1.5's padded square back to pixel xyxy in the original image.

    Args:
        box: `(u1, v1, u2, v2)` normalised to the square of side `max(width, height)`.
        width: Original image width in pixels.
        height: Original image height in pixels.

    Returns:
        `(x1, y1, x2, y2)` in pixels of the original image (may lie outside it if the box covers padding).
    """
    side, dx, dy = padding_offsets(width, height)
    u1, v1, u2, v2 = box
    return (u1 * side - dx, v1 * side - dy, u2 * side - dx, v2 * side - dy)


def _check_frame(frame: str) -> None:
    if frame not in FRAMES:
        raise ValueError(f"unknown frame {frame!r}; valid frames: {', '.join(FRAMES)}")


def pixel_box_to_frame(box: Box, width: int, height: int, frame: Frame) -> Box:
    """Pixel xyxy in the original image to normalised xyxy in `frame`.

    Raises:
        ValueError: If `frame` is not one of `FRAMES`.
    """
    _check_frame(frame)
    if frame == "padded":
        return to_padded_frame(box, width, height)
    return normalize_box(box, width, height)


def frame_box_to_pixels(box: Box, width: int, height: int, frame: Frame) -> Box:
    """Normalised xyxy in `frame` back to pixel xyxy in the original image.

    Raises:
        ValueError: If `frame` is not one of `FRAMES`.
    """
    _check_frame(frame)
    if frame == "padded":
        return from_padded_frame(box, width, height)
    return denormalize_box(box, width, height)


def convert_frame(box: Box, width: int, height: int, src: Frame, dst: Frame) -> Box:
    """Re-express a normalised box given in frame `src` in frame `dst` (e.g. read a padded-frame answer in the
    original frame). Identity when `src == dst`.

    Raises:
        ValueError: If a frame is not one of `FRAMES`.
    """
    return pixel_box_to_frame(frame_box_to_pixels(box, width, height, src), width, height, dst)


def gt_box_in_frame(bbox_xywh: Box, width: int, height: int, frame: Frame) -> Box:
    """A COCO ground-truth box, normalised xyxy in the chosen frame.

    Args:
        bbox_xywh: COCO `[x, y, w, h]` in pixels of the original image.
        width: Original image width in pixels.
        height: Original image height in pixels.
        frame: `"original"` or `"padded"` (see the module docstring).

    Returns:
        `(x1, y1, x2, y2)` normalised to the frame.

    Raises:
        ValueError: If `frame` is not one of `FRAMES`.
    """
    return pixel_box_to_frame(xywh_to_xyxy(bbox_xywh), width, height, frame)


def box_area(box: Box) -> float:
    """Area of a box; an inverted box (`x2 < x1` or `y2 < y1`) is empty and has area 0."""
    x1, y1, x2, y2 = box
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two xyxy boxes (any units, the same for both).

    Policy: an inverted box (`x2 < x1` or `y2 < y1`) is empty, so its IoU with anything is 0; coordinates
    outside [0, 1] are used as given (no clamping: area outside the image inflates the union, as in lmms-eval);
    a non-finite coordinate gives 0; a zero-area union (two empty boxes) gives 0, never NaN or an error. For
    boxes that are not inverted this is exactly lmms-eval's refcoco IoU.

    Args:
        a: `(x1, y1, x2, y2)`.
        b: `(x1, y1, x2, y2)`.

    Returns:
        IoU in [0, 1].
    """
    if not all(math.isfinite(v) for v in (*a, *b)):
        return 0.0
    inter_w = min(a[2], b[2]) - max(a[0], b[0])
    inter_h = min(a[3], b[3]) - max(a[1], b[1])
    if inter_w <= 0.0 or inter_h <= 0.0:
        return 0.0
    intersection = inter_w * inter_h
    union = box_area(a) + box_area(b) - intersection
    if not union > 0.0:
        return 0.0
    return min(1.0, intersection / union)
