"""Per-response discriminative rewards for building PerPO lists, and the data-margin filter. No torch.

A reward maps one sampled response and the ground truth of its prompt to a float, higher is better.
The built-in rewards are the evaluation metrics themselves, so the ranking used for training
is the one the tasks measure:

- `"iou"` (grounding): IoU of the first box parsed from the response with the ground-truth box, both
  normalised in the training frame (`perpo.objectives.boxes.parse_box` with `fmt="norm"`); 0.0 when no box parses.
- `"ocr"` (page OCR): 1 - normalised character edit distance to the ground-truth text; 0.0 for an empty
  response.

A list is kept for training only if its margin max(r) - min(r) reaches the data margin (paper: 0.8 for
grounding, 0.04 for OCR). Users plug their own reward without editing the package by naming it as a dotted
path: `get_reward("my_pkg.my_rewards:exact_match")` (or `"my_pkg.my_rewards.exact_match"`).
"""

from __future__ import annotations

import math
import pkgutil
from collections.abc import Sequence
from typing import Any, Protocol

from perpo.objectives.boxes import Box, box_iou, parse_box
from perpo.objectives.metrics.ocr import normalized_edit_distance

GROUNDING_MARGIN = 0.8
"""Default data margin for grounding lists (paper: m = 0.8)."""
OCR_MARGIN = 0.04
"""Default data margin for OCR lists (paper: m = 0.04)."""
MARGIN_TOLERANCE = 1e-9
"""Slack in `passes_margin`, so a margin of 0.8 stored as 0.7999999999 still passes."""


class RewardFn(Protocol):
    """A discriminative reward: `(response, target) -> float`, higher is better, finite."""

    def __call__(self, response: str, target: Any) -> float: ...


def iou_reward(response: str, target: Box) -> float:
    """IoU of the box in `response` with `target`; 0.0 when the response has no parseable box.

    Args:
        response: A sampled answer holding `[x1, y1, x2, y2]` in the record's units: normalised to [0, 1], or the
            frame of a record with `pixels` (Qwen's JSON boxes). IoU does not change when both boxes are scaled.
        target: The ground-truth box in the same units and frame.

    Returns:
        IoU in [0, 1] (`perpo.objectives.boxes.box_iou` policy: inverted boxes score 0, nothing is clamped).
    """
    box = parse_box(response, fmt="norm")
    return 0.0 if box is None else box_iou(box, tuple(target))


def ocr_reward(response: str, target: str) -> float:
    """1 - normalised character edit distance between `response` and `target`; 0.0 for an empty response.

    Args:
        response: A sampled page transcription.
        target: The ground-truth page text.

    Returns:
        A value in [0, 1] (1.0 for an exact transcription).
    """
    if not response:
        return 0.0
    return 1.0 - normalized_edit_distance(response, target)


REWARDS: dict[str, RewardFn] = {"iou": iou_reward, "ocr": ocr_reward}
"""Built-in rewards by name."""

DEFAULT_MARGINS: dict[str, float] = {"iou": GROUNDING_MARGIN, "ocr": OCR_MARGIN}
"""Default data margin for each built-in reward."""

TASK_REWARDS: dict[str, str] = {"grounding": "iou", "ocr": "ocr"}
"""The default reward of each record task (`perpo build-data` without --reward, `perpo grpo --reward auto`)."""


def get_reward(name: str) -> RewardFn:
    """Resolve a reward by registry name or by a dotted path to a user's callable.

    Args:
        name: A key of `REWARDS` (`"iou"`, `"ocr"`), or `"package.module:function"`, or
            `"package.module.function"` (the attribute after `:` may itself be dotted, e.g. `"mod:Class.fn"`).

    Returns:
        The reward callable.

    Raises:
        ValueError: If the name is neither registered nor an importable callable; the message names what was
            asked for and the valid choices.
    """
    if name in REWARDS:
        return REWARDS[name]
    choices = f"choose one of {sorted(REWARDS)} or a dotted path such as 'package.module:function'"
    if ":" in name:
        module_name, _, attr_path = name.partition(":")
    elif "." in name:
        module_name, _, attr_path = name.rpartition(".")
    else:
        raise ValueError(f"unknown reward {name!r}: {choices}")
    if not module_name or not attr_path:
        raise ValueError(f"unknown reward {name!r}: {choices}")
    try:
        obj: Any = pkgutil.resolve_name(name)  # `pkg.mod:attr.path` or `pkg.mod.attr`, as entry points name them
    except ImportError as err:
        raise ValueError(f"reward {name!r}: cannot import module {module_name!r} ({err}); {choices}") from err
    except AttributeError as err:
        raise ValueError(f"reward {name!r}: {module_name!r} has no attribute {attr_path!r}; {choices}") from err
    if not callable(obj):
        raise ValueError(f"reward {name!r} resolves to a non-callable {type(obj).__name__}; {choices}")
    return obj


def list_margin(rewards: Sequence[float]) -> float:
    """The data margin of one list: max(rewards) - min(rewards).

    Args:
        rewards: The rewards of the N responses to one prompt.

    Returns:
        The spread, >= 0.

    Raises:
        ValueError: If `rewards` is empty or holds a non-finite value (a reward must be a finite number).
    """
    values = [float(r) for r in rewards]
    if not values:
        raise ValueError("list_margin needs at least one reward")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"rewards must be finite, got {values}")
    return max(values) - min(values)


def passes_margin(rewards: Sequence[float], margin: float) -> bool:
    """Whether a list is kept: max(rewards) - min(rewards) >= margin, with `MARGIN_TOLERANCE` slack.

    Args:
        rewards: The rewards of the N responses to one prompt.
        margin: The data margin m (e.g. `GROUNDING_MARGIN`).

    Returns:
        True if the list's margin reaches `margin - 1e-9`.

    Raises:
        ValueError: As `list_margin`.
    """
    return list_margin(rewards) >= margin - MARGIN_TOLERANCE
