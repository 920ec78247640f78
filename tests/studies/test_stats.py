"""perpo.studies.stats: the paired bootstrap over documents behind the demo studies' intervals."""

from __future__ import annotations

import numpy as np
import pytest

from perpo.studies.stats import bootstrap_gain, resample_counts, seed_resamples


def _gain(after, before, replicates=2000, seed=0):
    """bootstrap_gain over seeds given as lists of per-document 0/1 hits (converted to percent)."""
    after = [100 * np.asarray(a, dtype=float) for a in after]
    before = [100 * np.asarray(b, dtype=float) for b in before]
    counts = [resample_counts(len(a), replicates, np.random.default_rng([seed, i])) for i, a in enumerate(after)]
    return bootstrap_gain(after, before, counts)


def test_identical_models_gain_exactly_zero_with_a_zero_interval():
    hits = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1]
    assert _gain([hits, hits[::-1]], [hits, hits[::-1]]) == (0.0, [0.0, 0.0])


def test_a_model_right_wherever_the_base_is_wrong_gains_the_base_error_rate():
    base = [1] * 6 + [0] * 14  # the base is right on 6 of 20 documents
    mean, (lo, hi) = _gain([[1] * 20], [base])
    assert mean == pytest.approx(70.0)  # 14 of 20 documents won, none lost
    assert 40 < lo < mean < hi <= 100
    # every document won: every replicate gains 100 points, so the interval collapses onto it
    assert _gain([[1] * 20], [[0] * 20]) == (100.0, [100.0, 100.0])
    # and the other way round: a model wrong everywhere the base was right
    assert _gain([[0] * 20], [base])[0] == pytest.approx(-30.0)


def test_the_bootstrap_is_paired_per_document():
    """Two models that differ on one document of 40 have a tight interval, however noisy each model is alone."""
    rng = np.random.default_rng(1)
    before = rng.integers(0, 2, 40)
    after = before.copy()
    after[np.flatnonzero(before == 0)[0]] = 1
    mean, (lo, hi) = _gain([after], [before])
    assert mean == pytest.approx(2.5)
    assert 0.0 <= lo <= hi <= 10.0  # unpaired, each model alone would move by about ±15 points


def test_the_interval_shrinks_with_more_documents():
    before = [1, 0, 0, 1, 0, 1, 0, 0, 1, 0]
    after = [1, 1, 0, 1, 0, 1, 1, 0, 0, 0]
    mean, (lo, hi) = _gain([after], [before], replicates=4000)
    mean4, (lo4, hi4) = _gain([after * 4], [before * 4], replicates=4000)
    assert mean == pytest.approx(mean4) == pytest.approx(10.0)
    assert 0.4 < (hi4 - lo4) / (hi - lo) < 0.6  # four times the documents: about half the width


def test_seeds_are_pooled_by_averaging_their_gains():
    # seed 0: +50 points; seed 1: -10 points → +20 on average, and every replicate lies between the two extremes
    mean, (lo, hi) = _gain([[1] * 10, [0] * 10], [[1] * 5 + [0] * 5, [1] + [0] * 9])
    assert mean == pytest.approx(20.0)
    assert -5 <= lo < 20 < hi <= 50


def test_the_same_bootstrap_seed_gives_the_same_interval():
    before, after = [1, 0, 0, 1, 0, 1, 0, 0], [1, 1, 0, 1, 1, 1, 0, 0]
    assert _gain([after], [before], seed=3) == _gain([after], [before], seed=3)


def test_misaligned_scores_are_refused():
    counts = [resample_counts(3, 10, np.random.default_rng(0))]
    with pytest.raises(ValueError, match="aligned"):
        bootstrap_gain([np.zeros(4)], [np.zeros(4)], counts)


def test_seeds_on_the_same_documents_share_one_draw_and_others_get_their_own():
    a, b = ["d1", "d2", "d3"], ["d4", "d5", "d6"]
    first, second, third = seed_resamples([a, list(a), b], 50, seed=0)
    assert first is second and first.shape == (50, 3) and (first.sum(axis=1) == 3).all()
    assert not np.array_equal(first, third)
    assert np.array_equal(seed_resamples([a], 50, seed=0)[0], first)  # reproducible from the bootstrap seed


def test_seeds_on_the_same_documents_do_not_narrow_the_interval():
    """Two seeds whose per-document gains are the same: pooling them adds no information about other documents,
    so the interval stays that of one seed (independent draws per seed would shrink it by about 1/sqrt(2))."""
    rng = np.random.default_rng(2)
    before = rng.integers(0, 2, 60).astype(float)
    after = np.where(rng.random(60) < 0.3, 1.0, before)
    docs = [f"d{i}" for i in range(60)]
    one = bootstrap_gain([after], [before], seed_resamples([docs], 4000, seed=1))
    pooled = bootstrap_gain([after, after], [before, before], seed_resamples([docs, docs], 4000, seed=1))
    assert pooled[0] == pytest.approx(one[0]) and pooled[1] == pytest.approx(one[1])
    independent = [resample_counts(60, 4000, np.random.default_rng([1, s])) for s in (0, 1)]
    _, (lo, hi) = bootstrap_gain([after, after], [before, before], independent)
    assert (hi - lo) < 0.85 * (one[1][1] - one[1][0])
