"""Training objectives: PerPO, LiPO-λ, uniform listwise, DPO and SFT as pure functions over tensors.

Every loss takes one batch of B lists (one list = one image + prompt with N sampled responses) and
returns ``(loss, stats)``: a differentiable scalar and a dict of detached scalar statistics. The trainer
selects a loss by name from `LOSSES` (or `get_loss`); no loss reads a config object or a model. `METHODS` records
each method once (label, colour, traits, the miniature's settings) for the trainer, the demo, the reports and the CLI.

Conventions shared by all losses (paper = "PerPO: Perceptual Preference Optimization via Discriminative
Rewarding", Zhu et al.):

- Shapes: ``policy_logps``, ``ref_logps``, ``rewards``, ``mask`` and ``lengths`` are [B, N]. ``logps``
  are *summed* response log-probs (paper Eq. 3 and the released code use the sum, not the mean).
  ``mask`` is bool, True for a real response; padded entries may hold any value (even NaN or inf) and
  change nothing: they are replaced before any arithmetic and receive an exactly zero gradient.
- Scores: ``s_i = log π_θ(y_i|x) − log π_ref(y_i|x)`` (paper Eq. 3). Rewards are higher-is-better and
  never need to be stored sorted: every pairwise loss orders pairs by ``r_i > r_j`` itself. Tied pairs
  carry no preference and weight 0.
- Reduction: the loss is the **mean over all B lists of the batch**; a list with no strictly ordered
  valid pair (all rewards equal, or fewer than two real responses) contributes exactly 0 to the sum
  and still counts in the denominator. Why not the mean over the valid lists only: HF ``Trainer``
  averages the micro-batch losses of a gradient-accumulation window, so ``batch 2 × accum 1`` equals
  ``batch 1 × accum 2`` exactly iff the per-micro-batch reduction is a plain mean over a fixed number of
  lists. Dividing by the number of *valid* lists breaks that as soon as one micro-batch holds a
  degenerate list (lists {A, degenerate}: batch 2 gives L_A / 1, accumulation gives (L_A + 0) / 2). The
  cost is that degenerate lists dilute the step, which the margin filter makes rare; the fraction of
  contributing lists is logged as ``lists/valid``.
- Precision: inputs may be bfloat16/float16/float32/float64; the loss is computed in at least float32
  (``promote_types(dtype, float32)``) with ``F.logsigmoid``, so scores of ±1e4 stay finite. Gradients
  flow back to the input dtype.
- Vectorised over the pair matrix [B, N, N]; no Python loop over B or N.

Statistics (one helper, `loss_stats`, identical for every ranking loss; implicit rewards are
``β·s`` as in TRL, so accuracy and τ do not depend on β while the margin scales with it):

- ``rewards/accuracy``: per list, the fraction of strictly reward-ordered valid pairs (r_i > r_j) with
  ``β s_i > β s_j`` (a score tie counts as wrong, as in TRL); then the mean over lists that have such a pair.
- ``rewards/margin``: per list, the mean of ``β (s_i − s_j)`` over the same ordered pairs; mean over lists.
- ``rewards/kendall_tau``: Kendall τ-b between scores and rewards over the list's valid entries (τ-b, not
  τ-a, because IoU lists hold many ties at 0 and τ-a could then never reach ±1). It is undefined (NaN)
  for a list with fewer than two entries, all-equal rewards or all-equal scores (e.g. step 0, where
  policy = reference); undefined lists are left out of the batch mean.
- ``logps/chosen``, ``logps/rejected``: policy log-probs of the best and worst response of each list
  (the DPO pair, see `dpo_loss`), averaged over lists.
- ``logratio/chosen``, ``logratio/rejected``: the log-ratio ``s = policy − ref`` (summed log-probs, no β) of
  the same best and worst responses, averaged over lists; ``logratio/mean``: mean ``s`` over all valid
  responses of the batch. All three are exactly 0 while policy = reference (step 0): a run where they stay
  near 0 has not moved; ``logratio/chosen`` < 0 while the margin grows is likelihood displacement (the
  policy ranks the pair by pushing both down).
- ``logps/policy``, ``logps/ref``: mean summed log-prob over all valid responses of the batch; with
  ``lengths`` also ``logps/policy_per_token``, ``logps/ref_per_token`` (Σ logps / Σ tokens).
- ``lists/valid``: fraction of the batch's lists that have at least one strictly ordered pair.

A statistic that is undefined for the whole batch is NaN (e.g. τ at step 0): the trainer should
aggregate logged statistics with a NaN-aware mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:  # torch is imported where a loss runs: the registry below is read by torch-free code (reports)
    from torch import Tensor

__all__ = [
    "LOSSES",
    "METHODS",
    "LossFn",
    "Method",
    "dpo_loss",
    "get_loss",
    "lipo_lambda_weights",
    "lipo_loss",
    "listwise_loss",
    "loss_stats",
    "perpo_loss",
    "perpo_pair_weights",
    "sft_loss",
]


class LossFn(Protocol):
    """The one signature every training objective shares (see the module docstring for the conventions)."""

    def __call__(
        self,
        policy_logps: Tensor,
        ref_logps: Tensor | None,
        rewards: Tensor,
        mask: Tensor,
        *,
        lengths: Tensor | None = None,
        beta: float = 0.1,
        gamma: float = 0.5,
    ) -> tuple[Tensor, dict[str, Tensor]]: ...


class _Batch(NamedTuple):
    """Validated inputs in the compute dtype, with padded entries replaced by 0."""

    policy_logps: Tensor  # [B, N]
    ref_logps: Tensor | None  # [B, N]
    rewards: Tensor  # [B, N], detached
    mask: Tensor  # [B, N] bool
    lengths: Tensor | None  # [B, N] in the compute dtype


def _prepare(
    name: str,
    policy_logps: Tensor,
    ref_logps: Tensor | None,
    rewards: Tensor,
    mask: Tensor,
    lengths: Tensor | None,
    *,
    needs_ref: bool,
    beta: float,
    gamma: float,
) -> _Batch:
    """Checks shapes, dtypes and hyper-parameters, casts to the compute dtype and zeroes padded entries.

    Padded entries are replaced with `torch.where` (not multiplied by the mask) so that NaN or inf in a
    padded slot neither leaks into the loss nor into the gradient.

    Raises:
        ValueError: on a shape mismatch, a non-bool mask, a missing reference or an invalid beta/gamma.
    """
    import torch

    if policy_logps.ndim != 2 or policy_logps.shape[0] == 0 or policy_logps.shape[1] == 0:
        raise ValueError(f"{name}: policy_logps must be a non-empty [B, N] tensor, got {tuple(policy_logps.shape)}")
    shape = policy_logps.shape
    named = {"rewards": rewards, "mask": mask, "ref_logps": ref_logps, "lengths": lengths}
    for arg, tensor in named.items():
        if tensor is not None and tensor.shape != shape:
            raise ValueError(f"{name}: {arg} has shape {tuple(tensor.shape)}, expected {tuple(shape)} (policy_logps)")
    if mask.dtype != torch.bool:
        raise ValueError(f"{name}: mask must be a bool tensor (True = real response), got {mask.dtype}")
    if needs_ref and ref_logps is None:
        raise ValueError(f"{name}: this loss needs ref_logps (reference-model log-probs), got None")
    if not beta > 0:
        raise ValueError(f"{name}: beta must be > 0, got {beta}")
    if not gamma >= 0:
        raise ValueError(f"{name}: gamma must be >= 0, got {gamma}")

    dtype = torch.promote_types(policy_logps.dtype, torch.float32)
    zero = torch.zeros((), dtype=dtype, device=policy_logps.device)

    def clean(tensor: Tensor) -> Tensor:
        return torch.where(mask, tensor.to(dtype), zero)  # [B, N]

    return _Batch(
        policy_logps=clean(policy_logps),
        ref_logps=None if ref_logps is None else clean(ref_logps),
        rewards=clean(rewards.detach()),
        mask=mask,
        lengths=None if lengths is None else clean(lengths.detach()),
    )


def _pair_diff(values: Tensor) -> Tensor:
    """[B, N] -> [B, N, N] matrix of ``values_i − values_j`` (row i, column j)."""
    return values[:, :, None] - values[:, None, :]  # [B, N, N]


def _ordered_pairs(rewards: Tensor, mask: Tensor) -> Tensor:
    """Bool [B, N, N]: True where i and j are both real responses and r_i > r_j strictly (ties are False)."""
    both_valid = mask[:, :, None] & mask[:, None, :]  # [B, N, N]
    return both_valid & (_pair_diff(rewards) > 0)  # [B, N, N]


def _best_worst(rewards: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Index of the best and the worst real response of each list, and whether they differ in reward.

    Ties are broken deterministically: the *first* index among the maxima and the *last* index among the
    minima, so that on a list stored best-first the pair is (0, N−1), as in the authors' DPO baseline.

    Returns:
        ``best`` [B] long, ``worst`` [B] long, and ``valid`` [B] bool (``r_best > r_worst``; False for a
        list with all-equal rewards or no real response).
    """
    n = rewards.shape[1]
    for_max = rewards.masked_fill(~mask, -math.inf)  # [B, N]
    for_min = rewards.masked_fill(~mask, math.inf)  # [B, N]
    best = for_max.argmax(dim=1)  # [B]; argmax returns the first maximal index
    worst = (n - 1) - for_min.flip(dims=(1,)).argmin(dim=1)  # [B]; last minimal index
    best_reward = for_max.gather(1, best[:, None]).squeeze(1)  # [B]
    worst_reward = for_min.gather(1, worst[:, None]).squeeze(1)  # [B]
    return best, worst, best_reward > worst_reward


def _masked_mean(values: Tensor, keep: Tensor) -> Tensor:
    """Mean of ``values`` where ``keep``; NaN (0/0) when nothing is kept. Sync-free (no boolean indexing)."""
    import torch

    kept = torch.where(keep, values, torch.zeros_like(values))
    return kept.sum() / keep.sum()


def _gather(values: Tensor, index: Tensor) -> Tensor:
    """values [B, N], index [B] -> [B]."""
    return values.gather(1, index[:, None]).squeeze(1)


def _batch_stats(batch: _Batch, *, beta: float, ranking: bool) -> dict[str, Tensor]:
    """The detached statistics described in the module docstring, from prepared inputs."""
    import torch

    with torch.no_grad():
        mask = batch.mask
        n_valid = mask.sum()
        policy = batch.policy_logps.detach()
        stats = {"logps/policy": policy.sum() / n_valid}
        if batch.ref_logps is not None:
            stats["logps/ref"] = batch.ref_logps.sum() / n_valid
        if batch.lengths is not None:
            tokens = batch.lengths.sum()
            stats["logps/policy_per_token"] = policy.sum() / tokens
            if batch.ref_logps is not None:
                stats["logps/ref_per_token"] = batch.ref_logps.sum() / tokens
        if not ranking:
            return stats
        assert batch.ref_logps is not None  # _prepare enforces it for every ranking loss

        rewards = batch.rewards
        implicit = beta * (policy - batch.ref_logps)  # [B, N] implicit rewards β·s
        ordered = _ordered_pairs(rewards, mask)  # [B, N, N]
        n_ordered = ordered.sum(dim=(1, 2))  # [B]
        has_pairs = n_ordered > 0  # [B]
        per_pair = n_ordered.clamp_min(1).to(implicit.dtype)  # [B]
        margins = _pair_diff(implicit)  # [B, N, N]
        correct = (ordered & (margins > 0)).sum(dim=(1, 2))  # [B]
        margin_sum = torch.where(ordered, margins, torch.zeros_like(margins)).sum(dim=(1, 2))  # [B]
        stats["rewards/accuracy"] = _masked_mean(correct / per_pair, has_pairs)
        stats["rewards/margin"] = _masked_mean(margin_sum / per_pair, has_pairs)

        # Kendall τ-b over unordered valid pairs i < j: (C − D) / sqrt(#pairs untied in s · #pairs untied in r).
        n = mask.shape[1]
        upper = torch.ones(n, n, dtype=torch.bool, device=mask.device).triu(diagonal=1)  # [N, N]
        pairs = mask[:, :, None] & mask[:, None, :] & upper  # [B, N, N]
        sign_s = torch.where(pairs, margins.sign(), torch.zeros_like(margins))  # [B, N, N]
        sign_r = torch.where(pairs, _pair_diff(rewards).sign(), torch.zeros_like(margins))  # [B, N, N]
        concordance = (sign_s * sign_r).sum(dim=(1, 2))  # [B] C − D
        denominator = (sign_s != 0).sum(dim=(1, 2)) * (sign_r != 0).sum(dim=(1, 2))  # [B]
        defined = denominator > 0  # [B]
        tau = concordance / denominator.clamp_min(1).to(concordance.dtype).sqrt()  # [B]
        stats["rewards/kendall_tau"] = _masked_mean(tau, defined)

        best, worst, _ = _best_worst(rewards, mask)
        has_entries = mask.any(dim=1)  # [B]
        stats["logps/chosen"] = _masked_mean(_gather(policy, best), has_entries)
        stats["logps/rejected"] = _masked_mean(_gather(policy, worst), has_entries)
        logratio = policy - batch.ref_logps  # [B, N] s (padded entries are 0 − 0)
        stats["logratio/chosen"] = _masked_mean(_gather(logratio, best), has_entries)
        stats["logratio/rejected"] = _masked_mean(_gather(logratio, worst), has_entries)
        stats["logratio/mean"] = logratio.sum() / n_valid
        stats["lists/valid"] = has_pairs.to(policy.dtype).mean()
        return stats


def loss_stats(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    mask: Tensor,
    *,
    lengths: Tensor | None = None,
    beta: float = 0.1,
) -> dict[str, Tensor]:
    """The detached batch statistics every ranking loss returns (definitions in the module docstring).

    Args:
        policy_logps: [B, N] summed response log-probs under the policy.
        ref_logps: [B, N] the same under the frozen reference.
        rewards: [B, N] discriminative rewards, higher is better.
        mask: [B, N] bool, True for a real response.
        lengths: optional [B, N] response token counts, for the per-token log-prob statistics.
        beta: scale of the implicit reward β·s (affects only ``rewards/margin``).

    Returns:
        Dict of 0-dim detached tensors keyed ``rewards/accuracy``, ``rewards/margin``,
        ``rewards/kendall_tau``, ``logps/chosen``, ``logps/rejected``, ``logps/policy``, ``logps/ref``,
        ``logratio/chosen``, ``logratio/rejected``, ``logratio/mean``, ``lists/valid`` (plus
        ``logps/*_per_token`` with ``lengths``).
    """
    batch = _prepare(
        "loss_stats", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, beta=beta, gamma=0.0
    )
    return _batch_stats(batch, beta=beta, ranking=True)


def perpo_pair_weights(rewards: Tensor, mask: Tensor, gamma: float = 0.5) -> Tensor:
    """PerPO reward-margin pair weights (paper Eq. 5), normalised per list.

    ``w_ij = |r_i − r_j|^γ / Z`` for every valid pair with ``r_i > r_j``, and 0 otherwise, where
    ``Z = Σ_{valid a<b, r_a ≠ r_b} |r_a − r_b|^γ`` runs over the same pairs as the loss. For γ > 0 that is
    the paper's and the released code's ``Σ_{a<b} |r_a − r_b|^γ`` (ties add 0^γ = 0). For γ = 0 the tied
    pairs are still excluded (no 0^0 = 1), so the weights are uniform over the strictly ordered pairs:
    1 / (number of ordered pairs). A list without an ordered pair gets all-zero weights (``Z`` guarded).

    Args:
        rewards: [B, N] rewards, higher is better; any order, ties allowed.
        mask: [B, N] bool, True for a real response.
        gamma: exponent γ ≥ 0 on the reward gap.

    Returns:
        [B, N, N] weights (row i preferred over column j); each list's weights sum to 1, or to 0 for a list
        with no strictly ordered pair.
    """
    import torch

    ordered = _ordered_pairs(rewards, mask)  # [B, N, N]
    gaps = _pair_diff(rewards).clamp_min(0)  # [B, N, N] r_i − r_j where positive
    raw = torch.where(ordered, gaps.pow(gamma), torch.zeros_like(gaps))  # [B, N, N]
    norm = raw.sum(dim=(1, 2))  # [B] Z
    norm = torch.where(norm > 0, norm, torch.ones_like(norm))  # [B] guard: empty lists keep weights 0
    return raw / norm[:, None, None]  # [B, N, N]


def lipo_lambda_weights(scores: Tensor, rewards: Tensor, mask: Tensor) -> Tensor:
    """LiPO-λ lambda weights ``Δ_ij = |G_i − G_j| · |1/D(τ_i) − 1/D(τ_j)|`` (LiPO Eq. 8; PerPO paper Eq. 4).

    ``G = 2^ψ − 1`` with the label ψ = reward; ``D(τ) = ln(1 + τ)`` (natural log: the base only rescales
    every Δ by a constant, ln 2 ≈ 0.69 relative to log₂); τ is the 1-based rank of each real response
    when the list is sorted by the current scores, descending. Score ties are broken by reward, best first
    (then by index, which cannot change the loss): at step 0, where all scores are equal, the ranks are the
    ideal ranks rather than an accident of storage order, and the loss is invariant to permuting the list.
    Padded entries are ranked after every real one and get weight 0. Computed without gradient.

    Args:
        scores: [B, N] current model scores (any positive scaling of ``policy − ref``).
        rewards: [B, N] labels ψ, higher is better (expected in about [0, 1]; 2^ψ overflows above ~128).
        mask: [B, N] bool, True for a real response.

    Returns:
        [B, N, N] detached Δ_ij on the pairs with ψ_i > ψ_j, 0 elsewhere.
    """
    import torch

    with torch.no_grad():
        n = scores.shape[1]
        index = torch.arange(n, device=scores.device)
        s_ahead = _pair_diff(scores) < 0  # [B, N, N] (i, j): s_j > s_i
        s_tied = _pair_diff(scores) == 0  # [B, N, N]
        r_ahead = _pair_diff(rewards) < 0  # [B, N, N] (i, j): r_j > r_i
        r_tied = _pair_diff(rewards) == 0  # [B, N, N]
        index_ahead = index[None, :] < index[:, None]  # [N, N] (i, j): j < i
        ahead = s_ahead | (s_tied & (r_ahead | (r_tied & index_ahead)))  # [B, N, N]: j ranked before i
        ranks = 1 + (ahead & mask[:, None, :]).sum(dim=2)  # [B, N] τ, 1-based among real responses
        inv_discount = 1.0 / torch.log1p(ranks.to(scores.dtype))  # [B, N] 1/D(τ)
        gains = torch.exp2(rewards) - 1  # [B, N] G
        delta = _pair_diff(gains).abs() * _pair_diff(inv_discount).abs()  # [B, N, N]
        ordered = _ordered_pairs(rewards, mask)  # [B, N, N]
        return torch.where(ordered, delta, torch.zeros_like(delta))  # [B, N, N]


def _pairwise_logistic(scores: Tensor, weights: Tensor, ordered: Tensor) -> Tensor:
    """Per-list ``−Σ_{ordered (i,j)} weights_ij · log σ(scores_i − scores_j)``.

    Args:
        scores: [B, N] already scaled by β. weights: [B, N, N]. ordered: [B, N, N] bool.

    Returns:
        [B] per-list losses; exactly 0 (and zero gradient) for a list without ordered pairs.
    """
    import torch
    import torch.nn.functional as F

    pair_losses = -F.logsigmoid(_pair_diff(scores))  # [B, N, N] softplus(−(s_i − s_j)), stable
    weighted = torch.where(ordered, weights * pair_losses, torch.zeros_like(pair_losses))  # [B, N, N]
    return weighted.sum(dim=(1, 2))  # [B]


def _ranking_loss(
    name: str,
    policy_logps: Tensor,
    ref_logps: Tensor | None,
    rewards: Tensor,
    mask: Tensor,
    lengths: Tensor | None,
    beta: float,
    gamma: float,
    weigh: Callable[[Tensor, _Batch], Tensor],
) -> tuple[Tensor, dict[str, Tensor]]:
    """Shared body of the listwise losses (PerPO, uniform listwise, LiPO-λ), which differ only in the pair weights.

    ``weigh(scores, batch)`` gives the [B, N, N] weights from the β-scaled scores; the weighted pairwise logistic
    runs over the reward-ordered pairs and is averaged over the lists. ``name`` only labels error messages.
    """
    batch = _prepare(name, policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, beta=beta, gamma=gamma)
    assert batch.ref_logps is not None
    scores = beta * (batch.policy_logps - batch.ref_logps)  # [B, N] β·s
    ordered = _ordered_pairs(batch.rewards, batch.mask)  # [B, N, N]
    loss = _pairwise_logistic(scores, weigh(scores, batch), ordered).mean()
    return loss, _batch_stats(batch, beta=beta, ranking=True)


def _perpo_weights(gamma: float) -> Callable[[Tensor, _Batch], Tensor]:
    return lambda scores, batch: perpo_pair_weights(batch.rewards, batch.mask, gamma)


def perpo_loss(
    policy_logps: Tensor,
    ref_logps: Tensor | None,
    rewards: Tensor,
    mask: Tensor,
    *,
    lengths: Tensor | None = None,
    beta: float = 0.1,
    gamma: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PerPO listwise loss (paper Eq. 6 with the weights of Eq. 5), averaged over the batch's lists.

    Per list: ``L = −Σ_{r_i > r_j} w_ij · log σ(β (s_i − s_j))`` with ``s = policy − ref`` and
    ``w_ij = |r_i − r_j|^γ / Σ |r_a − r_b|^γ`` (`perpo_pair_weights`). Pairs are ordered by reward here,
    so lists need not be stored sorted; tied pairs weigh 0; a list whose rewards are all equal contributes
    0 with zero gradient. The loss is the mean over all B lists (module docstring: why).

    Args:
        policy_logps: [B, N] summed response log-probs under the policy.
        ref_logps: [B, N] the same under the frozen reference (required).
        rewards: [B, N] discriminative rewards (IoU, 1 − edit distance), higher is better.
        mask: [B, N] bool, True for a real response.
        lengths: optional [B, N] token counts, only for the per-token statistics.
        beta: β, the KL-strength / score scale.
        gamma: γ ≥ 0, the exponent on the reward gap (γ = 0 is `listwise_loss`).

    Returns:
        Scalar loss (float32 or wider) and the detached statistics of `loss_stats`.
    """
    return _ranking_loss(
        "perpo_loss", policy_logps, ref_logps, rewards, mask, lengths, beta, gamma, _perpo_weights(gamma)
    )


def listwise_loss(
    policy_logps: Tensor,
    ref_logps: Tensor | None,
    rewards: Tensor,
    mask: Tensor,
    *,
    lengths: Tensor | None = None,
    beta: float = 0.1,
    gamma: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Uniform listwise loss: PerPO with γ = 0 (basic LiPO, Δ_ij = 1, paper Eq. 4), normalised per list.

    Every strictly reward-ordered pair weighs ``1 / (number of ordered pairs in the list)``; tied pairs 0.
    This is the uniform all-pairs logistic baseline; it equals ``perpo_loss(..., gamma=0.0)`` exactly.

    Args:
        policy_logps, ref_logps, rewards, mask, lengths, beta: as in `perpo_loss`.
        gamma: unused (fixed to 0); accepted for the shared signature.

    Returns:
        Scalar loss and the detached statistics of `loss_stats`.
    """
    return _ranking_loss(
        "listwise_loss", policy_logps, ref_logps, rewards, mask, lengths, beta, 0.0, _perpo_weights(0.0)
    )


def lipo_loss(
    policy_logps: Tensor,
    ref_logps: Tensor | None,
    rewards: Tensor,
    mask: Tensor,
    *,
    lengths: Tensor | None = None,
    beta: float = 0.1,
    gamma: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """LiPO-λ loss (Liu et al. 2024, LiPO Eq. 8; PerPO paper Eq. 4 with the lambda weight).

    Per list: ``L = −Σ_{ψ_i > ψ_j} Δ_ij · log σ(s_i − s_j)`` with ``s = β (policy − ref)``, ψ = reward and
    ``Δ_ij`` from `lipo_lambda_weights` (treated as a constant). As in the LiPO paper the pair terms are
    *summed*, not normalised, so the loss scale grows with N (for N = 20 up to 190 pairs, Δ ≤ ~1.1) and is
    not comparable to PerPO's normalised weights; the loss is then averaged over the B lists.

    Args:
        policy_logps, ref_logps, rewards, mask, lengths, beta: as in `perpo_loss`.
        gamma: unused; accepted for the shared signature.

    Returns:
        Scalar loss and the detached statistics of `loss_stats`.
    """

    def weigh(scores: Tensor, batch: _Batch) -> Tensor:
        return lipo_lambda_weights(scores, batch.rewards, batch.mask)  # [B, N, N] Δ, no grad

    return _ranking_loss("lipo_loss", policy_logps, ref_logps, rewards, mask, lengths, beta, gamma, weigh)


def dpo_loss(
    policy_logps: Tensor,
    ref_logps: Tensor | None,
    rewards: Tensor,
    mask: Tensor,
    *,
    lengths: Tensor | None = None,
    beta: float = 0.1,
    gamma: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Sigmoid DPO (paper Eq. 2) on the best-vs-worst pair of each list (the largest reward gap).

    Per list: ``L = −log σ(β ((π_c − ref_c) − (π_r − ref_r)))`` with c the real response of maximal reward
    (first index among ties) and r the one of minimal reward (last index among ties), i.e. (0, N−1) on a
    list stored best-first. A list whose best and worst rewards are equal contributes 0; the loss is the
    mean over the B lists.

    Args:
        policy_logps, ref_logps, rewards, mask, lengths, beta: as in `perpo_loss`.
        gamma: unused; accepted for the shared signature.

    Returns:
        Scalar loss and the detached statistics of `loss_stats`.
    """
    import torch
    import torch.nn.functional as F

    batch = _prepare(
        "dpo_loss", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=True, beta=beta, gamma=gamma
    )
    assert batch.ref_logps is not None
    scores = beta * (batch.policy_logps - batch.ref_logps)  # [B, N] β·s
    best, worst, valid = _best_worst(batch.rewards, batch.mask)  # [B], [B], [B]
    margins = _gather(scores, best) - _gather(scores, worst)  # [B]
    per_list = torch.where(valid, -F.logsigmoid(margins), torch.zeros_like(margins))  # [B]
    return per_list.mean(), _batch_stats(batch, beta=beta, ranking=True)


def sft_loss(
    policy_logps: Tensor,
    ref_logps: Tensor | None,
    rewards: Tensor,
    mask: Tensor,
    *,
    lengths: Tensor | None = None,
    beta: float = 0.1,
    gamma: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SFT baseline: token-mean negative log-likelihood of the target answers.

    The paper's SFT baseline trains on the ground-truth answer, which the trainer passes as the single
    response of each list (N = 1). The loss is ``−Σ logps / Σ lengths`` over the real entries of the whole
    batch, i.e. the usual token-mean NLL. It trains on whatever responses are masked in, so "SFT on the
    best sampled response" is a data choice (pass the best response as the N = 1 list), not another loss.
    Unlike the ranking losses, the token mean of a micro-batch makes ``batch 2 × accum 1`` equal
    ``batch 1 × accum 2`` only when the micro-batches hold equal token counts (as with HF's default loss).

    Args:
        policy_logps: [B, N] summed log-probs of the target answers (usually N = 1).
        ref_logps: optional [B, N]; unused by the loss, only logged as ``logps/ref``.
        rewards: [B, N]; unused (any values).
        mask: [B, N] bool, True for a real target.
        lengths: [B, N] target token counts (required).
        beta, gamma: unused; accepted for the shared signature.

    Returns:
        Scalar loss (0 when the batch holds no token) and detached statistics ``logps/policy``,
        ``logps/policy_per_token`` (= −loss) and, with ``ref_logps``, ``logps/ref`` and ``logps/ref_per_token``.

    Raises:
        ValueError: when ``lengths`` is None, or on the checks shared by every loss.
    """
    if lengths is None:
        raise ValueError("sft_loss: lengths (response token counts, [B, N]) are required for the token-mean NLL")
    batch = _prepare(
        "sft_loss", policy_logps, ref_logps, rewards, mask, lengths, needs_ref=False, beta=beta, gamma=gamma
    )
    assert batch.lengths is not None
    tokens = batch.lengths.sum().clamp_min(1)
    loss = -batch.policy_logps.sum() / tokens
    return loss, _batch_stats(batch, beta=beta, ranking=False)


@dataclass(frozen=True)
class Method:
    """A training method as every part of perpo shows it: `perpo train --loss`, the demo, the reports.

    Adding a loss is its function above plus one entry in `METHODS`: the trainer finds it by name, the demo trains
    it on the tracks in `settings` (or when `--methods` names it), the reports label and colour it, and the CLI
    help lists it.
    """

    label: str
    """Display name in tables, figures and the demo's rows ("PerPO", "LiPO-λ")."""
    colour: str
    """Its colour in every figure (matplotlib's tab10)."""
    loss: LossFn | None = None
    """The objective `perpo train --loss NAME` runs; None for a method another command trains (or the base)."""
    needs_reference: bool = True
    """The loss reads reference log-probs (the trainer skips the reference pass otherwise)."""
    on_answers: bool = False
    """The loss trains on each list's ground-truth answer (its only response) instead of its N sampled responses."""
    lr: float = 1e-4
    """The miniature's learning rate where `settings` names no value for a track."""
    beta: float = 0.1
    """The miniature's β (KL coefficient) likewise; a loss without β records it and ignores it."""
    settings: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    """(learning rate, β) per demo track, the best of the val-split search (docs/demo.md); a track named here
    trains the method by default."""

    def setting(self, track: str) -> tuple[float, float]:
        """(learning rate, β) of the method on a demo track."""
        return self.settings.get(track, (self.lr, self.beta))


METHODS: dict[str, Method] = {
    "base": Method("base", "#7f7f7f", needs_reference=False),
    "sft": Method(
        "SFT", "#1f77b4", sft_loss, needs_reference=False, on_answers=True,
        settings={"grounding": (3e-4, 0.1), "ocr": (3e-3, 0.1)},
    ),
    "dpo": Method("DPO", "#ff7f0e", dpo_loss, settings={"grounding": (1e-4, 0.5), "ocr": (3e-5, 0.5)}),
    "lipo": Method("LiPO-λ", "#9467bd", lipo_loss, beta=0.5, settings={"grounding": (1e-4, 0.5)}),
    "listwise": Method("Listwise", "#8c564b", listwise_loss),
    "perpo": Method("PerPO", "#d62728", perpo_loss, settings={"grounding": (1e-4, 0.5), "ocr": (1e-4, 0.5)}),
    # trained by `perpo iterate` and `perpo grpo`: the demo's --study online, at these (val-picked) settings
    "perpo_iter": Method("PerPO (iterative)", "#e377c2"),
    "grpo": Method("GRPO", "#2ca02c", beta=0.0),
}  # fmt: skip
"""Every method by its name, in the paper's row order (base, +SFT, +DPO, ..., +PerPO)."""


class _Losses(Mapping):
    """The `perpo train --loss` names and their functions: a live view of `METHODS` (the entries with a loss)."""

    def __getitem__(self, name: str) -> LossFn:
        method = METHODS.get(name)
        if method is None or method.loss is None:
            raise KeyError(name)
        return method.loss

    def __iter__(self) -> Iterator[str]:
        return (name for name, method in METHODS.items() if method.loss is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


LOSSES: Mapping[str, LossFn] = _Losses()
"""Every training objective by its config name (``--loss``)."""


def get_loss(name: str) -> LossFn:
    """The loss function registered under ``name``.

    Raises:
        ValueError: for an unknown name; the message lists the valid choices.
    """
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid choices: {', '.join(sorted(LOSSES))}") from None
