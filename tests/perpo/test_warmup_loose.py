"""The loose annotation convention of `perpo warmup --loose_share`: geometry, validation, and which answers it hits."""

from __future__ import annotations

import random

import pytest

from perpo.config import ConfigError
from perpo.embedded.warmup import WarmupConfig, loosen_box
from perpo.objectives.boxes import box_iou


def test_loosen_box_moves_every_side_out_by_the_margin_times_the_size():
    assert loosen_box((0.4, 0.2, 0.6, 0.6), 0.25) == pytest.approx((0.35, 0.1, 0.65, 0.7))


def test_loosen_box_clips_to_the_image_and_keeps_zero_margin_exact():
    assert loosen_box((0.0, 0.9, 0.2, 1.0), 0.5) == pytest.approx((0.0, 0.85, 0.3, 1.0))
    assert loosen_box((0.1, 0.2, 0.3, 0.4), 0.0) == (0.1, 0.2, 0.3, 0.4)


def test_a_loose_answer_fails_ap50_at_the_default_margin():
    """Margin 0.3 gives a box 1.6× as wide and tall: IoU 1 / 2.56 ≈ 0.39, below the 0.5 of AP@50."""
    box = (0.3, 0.3, 0.5, 0.5)
    assert box_iou(box, loosen_box(box, WarmupConfig.loose_margin)) == pytest.approx(1 / 2.56)


@pytest.mark.parametrize("field,value", [("loose_share", -0.1), ("loose_share", 1.5), ("loose_margin", 2.0)])
def test_out_of_range_loose_settings_are_refused_naming_the_option(field, value):
    with pytest.raises(ConfigError, match=field):
        WarmupConfig(data="d", out="o", **{field: value})


def test_the_share_of_loose_answers_follows_the_setting():
    """The same draw as the warm-up loop: about `loose_share` of the answers are loosened."""
    rng, share, box = random.Random(0), 0.5, (0.3, 0.3, 0.5, 0.5)
    loose = sum(loosen_box(box, 0.3) != box for _ in range(4000) if rng.random() < share)
    assert 1850 < loose < 2150
