"""`perpo.objectives.rewards`: built-in rewards, the registry with user dotted paths, and the margin filter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from perpo.objectives.rewards import (
    DEFAULT_MARGINS,
    GROUNDING_MARGIN,
    OCR_MARGIN,
    REWARDS,
    RewardFn,
    get_reward,
    iou_reward,
    list_margin,
    ocr_reward,
    passes_margin,
)


def test_iou_reward_hand_values() -> None:
    """[0.1, 0.1, 0.5, 0.5] inside GT [0, 0, 0.5, 0.5]: IoU 0.16/0.25 = 0.64; unparseable and inverted -> 0."""
    gt = (0.0, 0.0, 0.5, 0.5)
    assert iou_reward("[0.1, 0.1, 0.5, 0.5]", gt) == pytest.approx(0.64)
    assert iou_reward("[0.0, 0.0, 0.5, 0.5]", [0.0, 0.0, 0.5, 0.5]) == 1.0  # a list target works too
    assert iou_reward("no idea", gt) == 0.0
    assert iou_reward("[0.5, 0.5, 0.0, 0.0]", gt) == 0.0


def test_iou_reward_on_the_malformed_corpus() -> None:
    """The reward is the metric: every adversarial answer gets its hand-derived IoU and never raises."""
    data = json.loads(
        (Path(__file__).resolve().parents[1] / "fixtures" / "malformed_box_outputs.json").read_text("utf-8")
    )
    for case in (case for case in data["cases"] if case["fmt"] == "norm"):
        assert iou_reward(case["text"], data["gt_box"]) == pytest.approx(case["expected_iou"], abs=1e-9), case["id"]


def test_ocr_reward_hand_values() -> None:
    """1 - Levenshtein/max(len): "kitten" vs "sitting" = 1 - 3/7; identical = 1; empty response = 0."""
    assert ocr_reward("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert ocr_reward("page text", "page text") == 1.0
    assert ocr_reward("", "page text") == 0.0
    assert ocr_reward("", "") == 0.0  # empty response policy wins even against an empty target


def test_registry_names_and_default_margins() -> None:
    assert set(REWARDS) == {"iou", "ocr"}
    assert get_reward("iou") is iou_reward and get_reward("ocr") is ocr_reward
    assert GROUNDING_MARGIN == 0.8 and OCR_MARGIN == 0.04
    assert DEFAULT_MARGINS == {"iou": 0.8, "ocr": 0.04}


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user's reward module outside the package, importable from sys.path."""
    package = tmp_path / "my_rewards_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "scoring.py").write_text(
        textwrap.dedent(
            """
            def exact(response, target):
                return float(response.strip() == target)

            class Scorers:
                @staticmethod
                def length_ratio(response, target):
                    return min(len(response), len(target)) / max(len(response), len(target), 1)

            NOT_CALLABLE = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards_pkg.scoring"


def test_user_reward_by_dotted_path(user_module: str) -> None:
    by_colon: RewardFn = get_reward(f"{user_module}:exact")
    by_dot: RewardFn = get_reward(f"{user_module}.exact")
    assert by_colon is by_dot
    assert by_colon(" yes ", "yes") == 1.0 and by_colon("no", "yes") == 0.0
    assert get_reward(f"{user_module}:Scorers.length_ratio")("ab", "abcd") == 0.5


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("iuo", "unknown reward 'iuo'"),
        ("no_such_pkg_xyz.mod:fn", "cannot import module 'no_such_pkg_xyz.mod'"),
        ("my_rewards_pkg.scoring:missing", "has no attribute 'missing'"),
        ("my_rewards_pkg.scoring:NOT_CALLABLE", "non-callable int"),
        (":fn", "unknown reward ':fn'"),
        ("my_rewards_pkg.scoring:", "unknown reward"),
    ],
)
def test_unknown_rewards_name_the_choices(user_module: str, name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        get_reward(name)
    assert "['iou', 'ocr']" in str(info.value)


def test_margins() -> None:
    """Margin = max - min, computed in floats: 0.83 - 0.03 = 0.7999999999999999 and 0.24 - 0.2 =
    0.03999999999999998 fall a hair below the paper's margins; the 1e-9 tolerance keeps such lists (a plain
    `>=` would drop them), while a real shortfall (0.79 < 0.8) is still rejected."""
    assert list_margin([0.2, 0.9, 0.5]) == pytest.approx(0.7)
    assert list_margin([0.3]) == 0.0
    assert 0.83 - 0.03 < 0.8 and passes_margin([0.03, 0.83, 0.5], GROUNDING_MARGIN)
    assert 0.24 - 0.2 < 0.04 and passes_margin([0.2, 0.24], OCR_MARGIN)
    assert passes_margin([0.0, 0.7999999999], 0.8)  # 1e-10 short: within tolerance
    assert not passes_margin([0.0, 0.79], 0.8)
    assert not passes_margin([0.0, 0.8 - 2e-9], 0.8)  # beyond the tolerance
    assert not passes_margin([0.5, 0.5, 0.5], OCR_MARGIN)


@pytest.mark.parametrize("bad", [[], [0.1, float("nan")], [float("inf"), 0.0]])
def test_margin_rejects_empty_and_non_finite(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        list_margin(bad)


def test_reward_modules_import_without_torch_nltk_or_jieba() -> None:
    """boxes, metrics and rewards are pure: importing them loads no torch (the project's import rules) and
    defers nltk and jieba to first use (checked in a clean interpreter)."""
    code = (
        "import sys, perpo.objectives.boxes, perpo.objectives.metrics, perpo.objectives.rewards; "
        "print(sorted(m for m in ('torch', 'transformers', 'nltk', 'jieba') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
