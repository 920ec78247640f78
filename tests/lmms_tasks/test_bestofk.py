"""The best-of-k estimator: exact expectation over all k-subsets of the N samples."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from lmms_tasks.bestofk import best_of_k_curve, best_of_n_summary, expected_best_of_k, pass_at_k


def brute_force(values, k, best=max):
    subsets = list(itertools.combinations(values, k))
    return math.fsum(best(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_average_over_all_subsets(seed):
    rng = random.Random(seed)
    values = [round(rng.random(), 2) for _ in range(rng.randint(1, 8))]
    values += values[:2]  # ties
    for k in range(1, len(values) + 1):
        assert expected_best_of_k(values, k) == pytest.approx(brute_force(values, k), abs=1e-12)
        assert expected_best_of_k(values, k, higher_is_better=False) == pytest.approx(
            brute_force(values, k, min), abs=1e-12
        )


def test_binary_scores_give_pass_at_k():
    """4 samples, 1 correct: best of 2 is correct in 3 of the C(4, 2) = 6 pairs -> 0.5 = 1 - C(3,2)/C(4,2)."""
    values = [0.0, 1.0, 0.0, 0.0]
    assert expected_best_of_k(values, 2) == pytest.approx(0.5)
    for k in range(1, 5):
        assert expected_best_of_k(values, k) == pytest.approx(pass_at_k(4, 1, k))
    assert pass_at_k(20, 3, 20) == 1.0 and pass_at_k(20, 0, 5) == 0.0


def test_curve_ends_are_mean_and_best_and_it_never_drops():
    values = [0.1, 0.7, 0.3, 0.0, 0.95]
    curve = best_of_k_curve(values)
    assert curve[0] == pytest.approx(sum(values) / len(values))
    assert curve[-1] == max(values)
    assert all(a <= b + 1e-12 for a, b in zip(curve, curve[1:], strict=False))
    low = best_of_k_curve(values, higher_is_better=False)
    assert low[-1] == min(values) and all(a >= b - 1e-12 for a, b in zip(low, low[1:], strict=False))


def test_summary_keys_and_the_first_sample():
    out = best_of_n_summary("iou", [0.2, 0.9, 0.4])
    assert set(out) == {"iou_first", "iou_mean", "iou_best", "iou_bo1", "iou_bo2", "iou_bo3"}
    assert out["iou_first"] == 0.2 and out["iou_best"] == 0.9 and out["iou_bo3"] == 0.9
    # best of 2 from {0.2, 0.9, 0.4}: pairs (0.2,0.9) (0.2,0.4) (0.9,0.4) -> (0.9 + 0.4 + 0.9) / 3
    assert out["iou_bo2"] == pytest.approx(2.2 / 3)
    assert best_of_n_summary("edit_dist", [0.5, 0.1], higher_is_better=False)["edit_dist_best"] == 0.1


@pytest.mark.parametrize("k", [0, 4])
def test_k_out_of_range_is_an_error(k):
    with pytest.raises(ValueError, match="k must be in"):
        expected_best_of_k([0.1, 0.2, 0.3], k)
    with pytest.raises(ValueError):
        best_of_n_summary("ap50", [])
