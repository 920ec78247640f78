"""Best-of-k from N samples: unbiased estimates of the oracle score of k samples, for every k <= N.

Given N sampled responses of one instruction with scores v_1..v_N, the best-of-k score is the score of the best
of k responses drawn at random without replacement from those N. Its expectation over all C(N, k) subsets has a
closed form (the estimator used for pass@k in code generation, generalised to real-valued scores): with the
scores sorted ascending v_(1) <= ... <= v_(N), v_(i) is the maximum of a k-subset in C(i - 1, k - 1) of the
C(N, k) subsets, so

    E[max of k] = sum_{i=k..N} v_(i) * C(i - 1, k - 1) / C(N, k).

For a 0/1 score with c successes this is pass@k = 1 - C(N - c, k) / C(N, k). Ties need no care (the maximum's
value does not depend on which tied sample is taken). k = 1 gives the mean, k = N the best sample. One run with N
samples thus gives the whole curve of the paper's Figure 1b, with less variance than a single random ordering of
the samples. For lower-is-better scores (edit distance) the same formula applies to the minimum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def expected_best_of_k(values: Sequence[float], k: int, *, higher_is_better: bool = True) -> float:
    """Expected best score among k of the given N samples drawn without replacement.

    Args:
        values: The N per-sample scores.
        k: Subset size, 1 <= k <= N.
        higher_is_better: True takes the maximum, False the minimum.

    Returns:
        The exact expectation over all k-subsets.

    Raises:
        ValueError: If `values` is empty or k is out of range.
    """
    n = len(values)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] for {n} samples, got {k}")
    ordered = sorted(values, reverse=not higher_is_better)  # worst first, best last
    subsets = math.comb(n, k)
    # 0-based position i is the best of a k-subset in C(i, k - 1) subsets.
    return math.fsum(v * (math.comb(i, k - 1) / subsets) for i, v in enumerate(ordered) if i >= k - 1)


def best_of_k_curve(values: Sequence[float], *, higher_is_better: bool = True) -> list[float]:
    """`expected_best_of_k` for k = 1..N (index 0 is k = 1, the mean; the last entry is the best sample)."""
    return [expected_best_of_k(values, k, higher_is_better=higher_is_better) for k in range(1, len(values) + 1)]


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n - c, k) / C(n, k): the chance that k of n samples, c of them correct, hold a correct one."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def best_of_n_summary(name: str, values: Sequence[float], *, higher_is_better: bool = True) -> dict[str, float]:
    """Per-document best-of-N keys for one metric: `<name>_first`, `_mean`, `_best` and `_bo1`..`_bo<N>`.

    Args:
        name: Metric name, e.g. "ap50".
        values: Scores of the N samples in sampling order (the first is the first sample).
        higher_is_better: Direction of "best".

    Returns:
        {key: float}.
    """
    if not values:
        raise ValueError(f"no samples to summarise for {name}")
    curve = best_of_k_curve(values, higher_is_better=higher_is_better)
    out = {
        f"{name}_first": float(values[0]),
        f"{name}_mean": math.fsum(values) / len(values),
        f"{name}_best": float(max(values) if higher_is_better else min(values)),
    }
    out.update({f"{name}_bo{k}": value for k, value in enumerate(curve, start=1)})
    return out
