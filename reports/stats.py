"""Paired bootstrap over documents: the 95% intervals of the demo studies.

Used by scripts/demo_seeds.py (seeds pooled) and scripts/demo_study_saturation.py (one seed per base).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def resample_counts(n_docs: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """[replicates, n_docs]: how often each document is drawn in each bootstrap replicate (n_docs draws each)."""
    return rng.multinomial(n_docs, np.full(n_docs, 1.0 / n_docs), size=replicates).astype(np.int32)


def bootstrap_gain(
    after: Sequence[np.ndarray],
    before: Sequence[np.ndarray],
    counts: Sequence[np.ndarray],
) -> tuple[float, list[float]]:
    """Paired gain `after − before` averaged over documents, then over seeds, and its 95% percentile interval.

    Args:
        after, before: per seed, the per-document scores of the two models, aligned (same documents, same order).
        counts: per seed, `resample_counts(len(documents), R, rng)`; the same draws serve every comparison.

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
