"""Paired bootstrap over documents: the 95% intervals of the demo studies.

Used by `seeds` and `saturation` (scripts/demo_seeds.py, scripts/demo_study_saturation.py), seeds pooled. The
documents are what a replicate resamples: seeds scored on the same documents share one draw (`seed_resamples`), so
a replicate that leaves a document out leaves it out of every seed, and the spread between documents is not
averaged away.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def resample_counts(n_docs: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """[replicates, n_docs]: how often each document is drawn in each bootstrap replicate (n_docs draws each)."""
    return rng.multinomial(n_docs, np.full(n_docs, 1.0 / n_docs), size=replicates).astype(np.int32)


def seed_resamples(documents: Sequence[Sequence], replicates: int, seed: int) -> list[np.ndarray]:
    """Per seed, `resample_counts` over its documents (`documents[i]`: seed i's document ids, in scoring order).

    Seeds whose documents are the same ids in the same order share one draw; seeds on other documents get draws
    of their own (independent, seeded by `seed` and the order in which their document list first appears).
    """
    draws: dict[tuple, np.ndarray] = {}
    for docs in documents:
        key = tuple(docs)
        if key not in draws:
            draws[key] = resample_counts(len(key), replicates, np.random.default_rng([seed, len(draws)]))
    return [draws[tuple(docs)] for docs in documents]


def bootstrap_gain(
    after: Sequence[np.ndarray],
    before: Sequence[np.ndarray],
    counts: Sequence[np.ndarray],
) -> tuple[float, list[float]]:
    """Paired gain `after − before` averaged over documents, then over seeds, and its 95% percentile interval.

    Args:
        after, before: per seed, the per-document scores of the two models, aligned (same documents, same order).
        counts: per seed, `resample_counts(len(documents), R, rng)` (`seed_resamples` for several seeds); the same
            draws serve every comparison.

    Returns:
        The gain on the documents as they are, and `[lo, hi]`: the 2.5% and 97.5% quantiles of the R replicates.
    """
    if not (len(after) == len(before) == len(counts)) or not after:
        raise ValueError("need the same number (>= 1) of seeds for after, before and counts")
    point, replicates = [], []
    for a, b, c in zip(after, before, counts, strict=True):
        diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
        if diff.ndim != 1 or diff.size == 0 or c.shape[1] != diff.size:
            raise ValueError(f"per-seed scores must be aligned 1-d arrays of one length (got {diff.shape}, {c.shape})")
        point.append(diff.mean())
        replicates.append(c @ diff / diff.size)  # [R]
    gains = np.mean(replicates, axis=0)  # [R]: the gain averaged over seeds, per replicate
    lo, hi = np.percentile(gains, [2.5, 97.5])
    return float(np.mean(point)), [float(lo), float(hi)]
