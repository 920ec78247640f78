"""Tests for perpo.objectives.losses: loop references, properties, golden values and peer cross-checks.

The vectorised losses are compared with deliberately naive per-list Python loops (float64, explicit
pair enumeration), with a literal transcription of the released PerPO formula, and with TRL's own
sigmoid DPO code path.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from perpo.objectives.losses import (
    LOSSES,
    METHODS,
    dpo_loss,
    get_loss,
    lipo_lambda_weights,
    lipo_loss,
    listwise_loss,
    loss_stats,
    perpo_loss,
    perpo_pair_weights,
    sft_loss,
)

RANKING = ("perpo", "listwise", "lipo", "dpo")
STAT_KEYS = {
    "rewards/accuracy",
    "rewards/margin",
    "rewards/kendall_tau",
    "logps/chosen",
    "logps/rejected",
    "logps/policy",
    "logps/ref",
    "logratio/chosen",
    "logratio/rejected",
    "logratio/mean",
    "lists/valid",
}
REWARD_GRID = (0.0, 0.1, 0.25, 0.5, 0.8, 1.0)  # a coarse grid makes ties frequent
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)
F64 = torch.float64


# --------------------------------------------------------------------------------------------------
# Naive references: one list at a time, Python floats, explicit loops.
# --------------------------------------------------------------------------------------------------


def _softplus(x: float) -> float:
    """log(1 + e^x), stable for any finite x."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _ref_perpo(s: list[float], r: list[float], beta: float, gamma: float) -> float:
    """PerPO for one list of real responses: the paper's formula, looping over every ordered pair."""
    pairs = [(i, j) for i in range(len(r)) for j in range(len(r)) if r[i] > r[j]]
    z = sum((r[i] - r[j]) ** gamma for i, j in pairs)
    if not pairs:
        return 0.0
    return sum((r[i] - r[j]) ** gamma / z * _softplus(-beta * (s[i] - s[j])) for i, j in pairs)


def _ref_lipo(s: list[float], r: list[float], beta: float) -> float:
    """LiPO-λ for one list: ranks by score (ties: higher reward first, then index), D = ln(1 + τ)."""
    scores = [beta * x for x in s]
    order = sorted(range(len(r)), key=lambda i: (-scores[i], -r[i], i))
    rank = {i: pos + 1 for pos, i in enumerate(order)}
    total = 0.0
    for i in range(len(r)):
        for j in range(len(r)):
            if r[i] > r[j]:
                delta = abs((2 ** r[i] - 1) - (2 ** r[j] - 1)) * abs(
                    1 / math.log(1 + rank[i]) - 1 / math.log(1 + rank[j])
                )
                total += delta * _softplus(-(scores[i] - scores[j]))
    return total


def _ref_dpo(s: list[float], r: list[float], beta: float) -> float:
    """DPO on (first maximum, last minimum) of one list; 0 when they tie."""
    if not r:
        return 0.0
    best = r.index(max(r))
    worst = len(r) - 1 - r[::-1].index(min(r))
    if r[best] == r[worst]:
        return 0.0
    return _softplus(-beta * (s[best] - s[worst]))


def _released_perpo(s: list[float], r: list[float], beta: float, gamma: float) -> float:
    """Own literal transcription of the released `perpo_loss`, one list.

    Source: ningerhhh/PerPO, perpo/training/trainer/base_perpo_trainer.py `perpo_loss`.

    Assumes the list is sorted best-first: every i < j is treated as "i preferred", the normaliser runs
    over all index pairs, and the pair loss is written log(1 + exp(−β(s_i − s_j))) as released.
    """
    z = 0.0
    for o1, o2 in itertools.combinations(range(len(r)), 2):
        z += abs(r[o1] - r[o2]) ** gamma
    loss = 0.0
    for i in range(len(s)):
        for j in range(i + 1, len(s)):
            loss += abs(r[i] - r[j]) ** gamma / z * math.log(1 + math.exp(-beta * (s[i] - s[j])))
    return loss


def _ref_batch(name: str, policy, ref, rewards, mask, beta: float, gamma: float) -> float:
    """Mean over all lists of the per-list reference on the real entries."""
    total = 0.0
    for b in range(policy.shape[0]):
        keep = mask[b].tolist()
        s = [float(p - q) for p, q, k in zip(policy[b], ref[b], keep, strict=True) if k]
        r = [float(x) for x, k in zip(rewards[b], keep, strict=True) if k]
        if name == "perpo":
            total += _ref_perpo(s, r, beta, gamma)
        elif name == "listwise":
            total += _ref_perpo(s, r, beta, 0.0)
        elif name == "lipo":
            total += _ref_lipo(s, r, beta)
        else:
            total += _ref_dpo(s, r, beta)
    return total / policy.shape[0]


def _t(rows: list[list[float]], dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


def _ones_mask(b: int, n: int) -> torch.Tensor:
    return torch.ones(b, n, dtype=torch.bool)


# --------------------------------------------------------------------------------------------------
# Hypothesis strategies
# --------------------------------------------------------------------------------------------------

_logp = st.floats(-60.0, 0.0, allow_nan=False, allow_infinity=False)
_reward = st.one_of(st.sampled_from(REWARD_GRID), st.floats(0.0, 1.0, allow_nan=False))


@st.composite
def batches(draw, min_n: int = 1, max_n: int = 6, max_b: int = 3, masked: bool = True):
    """(policy, ref, rewards, mask) float64 [B, N] with ties, unsorted rewards and random padding."""
    b = draw(st.integers(1, max_b))
    n = draw(st.integers(min_n, max_n))

    def matrix(elements):
        return draw(st.lists(st.lists(elements, min_size=n, max_size=n), min_size=b, max_size=b))

    policy, ref, rewards = _t(matrix(_logp)), _t(matrix(_logp)), _t(matrix(_reward))
    mask = torch.tensor(matrix(st.booleans())) if masked else _ones_mask(b, n)
    return policy, ref, rewards, mask


# --------------------------------------------------------------------------------------------------
# Registry and signature
# --------------------------------------------------------------------------------------------------


def test_registry_names_and_reference_needs() -> None:
    assert set(LOSSES) == {"perpo", "lipo", "listwise", "dpo", "sft"}
    assert {name for name in LOSSES if METHODS[name].needs_reference} == {"perpo", "lipo", "listwise", "dpo"}
    assert [name for name in LOSSES if METHODS[name].on_answers] == ["sft"]
    for name, fn in LOSSES.items():
        assert get_loss(name) is fn


def test_get_loss_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="dpo, lipo, listwise, perpo, sft"):
        get_loss("ppo")


def test_every_loss_shares_one_signature() -> None:
    signatures = {name: inspect.signature(fn) for name, fn in LOSSES.items()}
    reference = signatures["perpo"]
    assert list(reference.parameters) == [
        "policy_logps",
        "ref_logps",
        "rewards",
        "mask",
        "lengths",
        "beta",
        "gamma",
    ]
    assert reference.parameters["beta"].default == 0.1 and reference.parameters["gamma"].default == 0.5
    for name, sig in signatures.items():
        assert sig == reference, name


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ref_logps": None}, "needs ref_logps"),
        ({"rewards": torch.zeros(2, 4)}, "rewards has shape"),
        ({"mask": torch.ones(2, 3)}, "mask must be a bool"),
        ({"beta": 0.0}, "beta must be > 0"),
        ({"gamma": -1.0}, "gamma must be >= 0"),
        ({"policy_logps": torch.zeros(3), "ref_logps": torch.zeros(3)}, r"\[B, N\]"),
    ],
)
@pytest.mark.parametrize("name", RANKING)
def test_invalid_inputs_raise(name: str, kwargs: dict, match: str) -> None:
    args = {
        "policy_logps": torch.zeros(2, 3),
        "ref_logps": torch.zeros(2, 3),
        "rewards": torch.zeros(2, 3),
        "mask": _ones_mask(2, 3),
        "beta": 0.1,
        "gamma": 0.5,
    } | kwargs
    positional = [args.pop(key) for key in ("policy_logps", "ref_logps", "rewards", "mask")]
    if name == "listwise" and "gamma" in kwargs:  # listwise documents gamma as unused: no error
        LOSSES[name](*positional, **args)
        return
    with pytest.raises(ValueError, match=match):
        LOSSES[name](*positional, **args)


def test_sft_requires_lengths() -> None:
    with pytest.raises(ValueError, match="lengths"):
        sft_loss(torch.zeros(2, 1), None, torch.zeros(2, 1), _ones_mask(2, 1))


# --------------------------------------------------------------------------------------------------
# Golden values, derived by hand
# --------------------------------------------------------------------------------------------------

# One unsorted list: rewards r = [0.5, 0, 1], scores s = policy − ref = [0, 0, 1] (ref = 0), β = 1.
GOLD_R = [[0.5, 0.0, 1.0]]
GOLD_S = [[0.0, 0.0, 1.0]]


def _gold(name: str, **kwargs) -> torch.Tensor:
    policy = _t(GOLD_S)
    loss, _ = LOSSES[name](policy, torch.zeros_like(policy), _t(GOLD_R), _ones_mask(1, 3), beta=1.0, **kwargs)
    return loss


def test_golden_perpo_gamma_1() -> None:
    """Ordered pairs (i ≻ j): (2,0) gap 0.5, (2,1) gap 1, (0,1) gap 0.5; γ=1 so Z = 0.5 + 1 + 0.5 = 2 and
    w = 0.25, 0.5, 0.25. Margins s_i − s_j: 1, 1, 0. Loss = 0.25·softplus(−1) + 0.5·softplus(−1)
    + 0.25·softplus(0) = 0.75·ln(1 + e^−1) + 0.25·ln 2 = 0.23494627 + 0.17328680 = 0.40823306.
    """
    expected = 0.75 * math.log1p(math.exp(-1)) + 0.25 * math.log(2)
    torch.testing.assert_close(_gold("perpo", gamma=1.0), torch.tensor(expected, dtype=F64))
    assert abs(expected - 0.40823306) < 1e-8


def test_golden_perpo_gamma_half() -> None:
    """γ=0.5: raw weights √0.5, 1, √0.5, Z = 1 + √2; the two margin-1 pairs weigh (√0.5 + 1)/Z, the
    margin-0 pair √0.5/Z. Loss = ((1 + √0.5)·ln(1 + e^−1) + √0.5·ln 2) / (1 + √2).
    """
    h = math.sqrt(0.5)
    expected = ((1 + h) * math.log1p(math.exp(-1)) + h * math.log(2)) / (1 + math.sqrt(2))
    torch.testing.assert_close(_gold("perpo", gamma=0.5), torch.tensor(expected, dtype=F64))


def test_golden_listwise() -> None:
    """Uniform weights 1/3 over the 3 ordered pairs: (2·ln(1 + e^−1) + ln 2) / 3."""
    expected = (2 * math.log1p(math.exp(-1)) + math.log(2)) / 3
    torch.testing.assert_close(_gold("listwise"), torch.tensor(expected, dtype=F64))


def test_golden_dpo() -> None:
    """Best = index 2 (r=1), worst = index 1 (r=0): −log σ(1·(1 − 0)) = ln(1 + e^−1)."""
    torch.testing.assert_close(_gold("dpo"), torch.tensor(math.log1p(math.exp(-1)), dtype=F64))


def test_golden_lipo_scores_against_rewards() -> None:
    """Rewards [1, 0.5, 0], scores (β=1) [0, 1, 2]: the model ranks the list upside down, τ = [3, 2, 1].
    G = 2^r − 1 = [1, √2 − 1, 0]; 1/D(τ) = 1/ln(1 + τ) = [1/ln 4, 1/ln 3, 1/ln 2].
    Δ_01 = (2 − √2)·(1/ln 3 − 1/ln 4), Δ_02 = 1·(1/ln 2 − 1/ln 4), Δ_12 = (√2 − 1)·(1/ln 2 − 1/ln 3).
    Pair losses softplus(−(s_i − s_j)): (0,1) ln(1 + e), (0,2) ln(1 + e²), (1,2) ln(1 + e).
    """
    d01 = (2 - math.sqrt(2)) * (1 / math.log(3) - 1 / math.log(4))
    d02 = 1 / math.log(2) - 1 / math.log(4)
    d12 = (math.sqrt(2) - 1) * (1 / math.log(2) - 1 / math.log(3))
    expected = (d01 + d12) * math.log1p(math.e) + d02 * math.log1p(math.e**2)
    policy = _t([[0.0, 1.0, 2.0]])
    loss, _ = lipo_loss(policy, torch.zeros_like(policy), _t([[1.0, 0.5, 0.0]]), _ones_mask(1, 3), beta=1.0)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=F64))


def test_golden_lipo_tied_scores_rank_by_reward() -> None:
    """All scores 0 (step 0: policy = reference): ties are ranked by reward, so with rewards
    [0, 1, 0.5] the ranks are τ = [3, 1, 2] (not the storage order). Every pair loss is ln 2, so
    loss = ln 2 · (Δ_10 + Δ_12 + Δ_20) with Δ_10 = 1·(1/ln 2 − 1/ln 4),
    Δ_12 = (2 − √2)·(1/ln 2 − 1/ln 3), Δ_20 = (√2 − 1)·(1/ln 3 − 1/ln 4).
    """
    d10 = 1 / math.log(2) - 1 / math.log(4)
    d12 = (2 - math.sqrt(2)) * (1 / math.log(2) - 1 / math.log(3))
    d20 = (math.sqrt(2) - 1) * (1 / math.log(3) - 1 / math.log(4))
    policy = torch.zeros(1, 3, dtype=F64)
    loss, _ = lipo_loss(policy, policy.clone(), _t([[0.0, 1.0, 0.5]]), _ones_mask(1, 3), beta=1.0)
    torch.testing.assert_close(loss, torch.tensor(math.log(2) * (d10 + d12 + d20), dtype=F64))


def test_golden_sft_token_mean() -> None:
    """Two ground-truth answers: logps −6 over 3 tokens and −2 over 1 token; a third padded entry holds
    garbage. Token-mean NLL = (6 + 2) / (3 + 1) = 2, not the mean of per-answer means (2 + 2) / 2.
    """
    policy = _t([[-6.0], [-2.0], [float("nan")]])
    lengths = torch.tensor([[3], [1], [7]])
    mask = torch.tensor([[True], [True], [False]])
    loss, stats = sft_loss(policy, None, torch.zeros(3, 1), mask, lengths=lengths)
    torch.testing.assert_close(loss, torch.tensor(2.0, dtype=F64))
    assert set(stats) == {"logps/policy", "logps/policy_per_token"}
    torch.testing.assert_close(stats["logps/policy"], torch.tensor(-4.0, dtype=F64))
    torch.testing.assert_close(stats["logps/policy_per_token"], torch.tensor(-2.0, dtype=F64))


def test_golden_stats() -> None:
    """Same list, β=1. Ordered pairs (2,0), (2,1), (0,1) have margins 1, 1, 0: accuracy 2/3 (the score
    tie counts as wrong), margin 2/3. τ-b: pairs (0,1) Δs=0, (0,2) and (1,2) concordant: C − D = 2,
    3 pairs, 1 tied in s, none in r: τ_b = 2 / √((3 − 1)(3 − 0)) = 2/√6. Chosen = s of index 2 = 1,
    rejected = index 1 = 0 (policy logps, ref = 0). logps/policy = 1/3, logps/ref = 0; with ref = 0 the
    log-ratios equal the policy log-probs: chosen 1, rejected 0, mean 1/3.
    """
    policy = _t(GOLD_S)
    _, stats = perpo_loss(policy, torch.zeros_like(policy), _t(GOLD_R), _ones_mask(1, 3), beta=1.0)
    expected = {
        "rewards/accuracy": 2 / 3,
        "rewards/margin": 2 / 3,
        "rewards/kendall_tau": 2 / math.sqrt(6),
        "logps/chosen": 1.0,
        "logps/rejected": 0.0,
        "logps/policy": 1 / 3,
        "logps/ref": 0.0,
        "logratio/chosen": 1.0,
        "logratio/rejected": 0.0,
        "logratio/mean": 1 / 3,
        "lists/valid": 1.0,
    }
    assert set(stats) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(stats[key], torch.tensor(value, dtype=F64), msg=key)


# --------------------------------------------------------------------------------------------------
# Agreement with the loop references and the released formula
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RANKING)
@SETTINGS
@given(batch=batches(), beta=st.sampled_from([0.1, 1.0]), gamma=st.sampled_from([0.0, 0.5, 1.0, 2.0]))
def test_matches_loop_reference(name: str, batch, beta: float, gamma: float) -> None:
    policy, ref, rewards, mask = batch
    loss, _ = LOSSES[name](policy, ref, rewards, mask, beta=beta, gamma=gamma)
    expected = _ref_batch(name, policy, ref, rewards, mask, beta, gamma)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=F64), rtol=1e-9, atol=1e-12)


@SETTINGS
@given(
    n=st.integers(2, 7),
    data=st.data(),
    beta=st.sampled_from([0.1, 1.0]),
    gamma=st.sampled_from([0.5, 1.0, 2.0]),
)
def test_perpo_equals_released_formula_on_sorted_lists(n: int, data, beta: float, gamma: float) -> None:
    """On lists stored best-first without ties the released code's formula and ours coincide."""
    r = sorted(data.draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n, unique=True)), reverse=True)
    s = data.draw(st.lists(st.floats(-20.0, 20.0), min_size=n, max_size=n))
    loss, _ = perpo_loss(_t([s]), torch.zeros(1, n, dtype=F64), _t([r]), _ones_mask(1, n), beta=beta, gamma=gamma)
    torch.testing.assert_close(loss, torch.tensor(_released_perpo(s, r, beta, gamma), dtype=F64))


@SETTINGS
@given(batch=batches(), beta=st.sampled_from([0.1, 1.0]))
def test_stats_match_loop_reference(batch, beta: float) -> None:
    policy, ref, rewards, mask = batch
    stats = loss_stats(policy, ref, rewards, mask, beta=beta)
    accuracies, margins = [], []
    for b in range(policy.shape[0]):
        idx = [i for i in range(policy.shape[1]) if mask[b, i]]
        pairs = [(i, j) for i in idx for j in idx if rewards[b, i] > rewards[b, j]]
        if pairs:
            score = beta * (policy[b] - ref[b])
            accuracies.append(sum(float(score[i] > score[j]) for i, j in pairs) / len(pairs))
            margins.append(sum(float(score[i] - score[j]) for i, j in pairs) / len(pairs))
    if accuracies:
        torch.testing.assert_close(
            stats["rewards/accuracy"], torch.tensor(sum(accuracies) / len(accuracies), dtype=F64)
        )
        torch.testing.assert_close(stats["rewards/margin"], torch.tensor(sum(margins) / len(margins), dtype=F64))
    else:
        assert stats["rewards/accuracy"].isnan() and stats["rewards/margin"].isnan()
    torch.testing.assert_close(stats["lists/valid"], torch.tensor(len(accuracies) / policy.shape[0], dtype=F64))


@SETTINGS
@given(batch=batches(masked=False, min_n=1))
def test_kendall_tau_b_matches_scipy(batch) -> None:
    import scipy.stats as scipy_stats

    policy, ref, rewards, mask = batch
    policy = policy.round()  # integer scores so that score ties occur too
    ref = torch.zeros_like(ref)
    taus = []
    for b in range(policy.shape[0]):
        if policy.shape[1] >= 2 and len(set(policy[b].tolist())) > 1 and len(set(rewards[b].tolist())) > 1:
            taus.append(scipy_stats.kendalltau(policy[b].numpy(), rewards[b].numpy(), variant="b").statistic)
    tau = loss_stats(policy, ref, rewards, mask)["rewards/kendall_tau"]
    if taus:
        torch.testing.assert_close(tau, torch.tensor(sum(taus) / len(taus), dtype=F64))
    else:
        assert tau.isnan()


# --------------------------------------------------------------------------------------------------
# Properties named in the issue
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["perpo", "listwise", "lipo"])
@SETTINGS
@given(
    s=st.tuples(st.floats(-50.0, 50.0), st.floats(-50.0, 50.0)),
    r=st.tuples(_reward, _reward),
    beta=st.sampled_from([0.1, 1.0]),
)
def test_two_responses_reduce_to_weighted_dpo(name: str, s, r, beta: float) -> None:
    """N=2: PerPO/listwise weight the single pair by 1 (normalised), LiPO-λ by Δ = |G_1 − G_2|·(1/ln 2 − 1/ln 3)."""
    assume(r[0] != r[1])
    policy, ref, rewards, mask = _t([list(s)]), torch.zeros(1, 2, dtype=F64), _t([list(r)]), _ones_mask(1, 2)
    loss, _ = LOSSES[name](policy, ref, rewards, mask, beta=beta)
    dpo, _ = dpo_loss(policy, ref, rewards, mask, beta=beta)
    weight = 1.0
    if name == "lipo":
        weight = abs(2 ** r[0] - 2 ** r[1]) * (1 / math.log(2) - 1 / math.log(3))
    torch.testing.assert_close(loss, weight * dpo)


@pytest.mark.parametrize("name", RANKING)
@SETTINGS
@given(batch=batches(min_n=2), seed=st.integers(0, 2**16))
def test_permuting_a_list_leaves_loss_unchanged(name: str, batch, seed: int) -> None:
    policy, ref, rewards, mask = batch
    if name == "dpo":  # the best/worst pick breaks ties by position: require unique extremes per list
        for b in range(policy.shape[0]):
            real = rewards[b][mask[b]].tolist()
            assume(not real or (real.count(max(real)) == 1 and real.count(min(real)) == 1))
    generator = torch.Generator().manual_seed(seed)
    perm = torch.stack([torch.randperm(policy.shape[1], generator=generator) for _ in range(policy.shape[0])])

    def shuffle(x: torch.Tensor) -> torch.Tensor:
        return x.gather(1, perm)

    loss, stats = LOSSES[name](policy, ref, rewards, mask)
    loss_p, stats_p = LOSSES[name](shuffle(policy), shuffle(ref), shuffle(rewards), shuffle(mask))
    torch.testing.assert_close(loss_p, loss)
    for key in ("rewards/accuracy", "rewards/margin", "rewards/kendall_tau", "logps/policy", "lists/valid"):
        torch.testing.assert_close(stats_p[key], stats[key], equal_nan=True, msg=key)


@SETTINGS
@given(batch=batches(min_n=2, max_b=1, masked=False), k=st.integers(0, 5), gamma=st.sampled_from([0.0, 0.5, 1.0]))
def test_duplicate_response_is_a_tie(batch, k: int, gamma: float) -> None:
    """Appending a copy of response k: the copy and k form a tie with weight 0; the weights among the
    original responses keep their ratios (only Z grows); PerPO still equals the loop reference; DPO is
    unchanged when the rewards are distinct; LiPO gives the tied pair Δ = 0.
    """
    policy, ref, rewards, mask = batch
    n = policy.shape[1]
    k = k % n

    def dup(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x[:, k : k + 1]], dim=1)

    weights = perpo_pair_weights(rewards, mask, gamma)[0]  # [N, N]
    weights_dup = perpo_pair_weights(dup(rewards), dup(mask), gamma)[0]  # [N+1, N+1]
    assert weights_dup[k, n] == 0 and weights_dup[n, k] == 0
    if weights.sum() > 0:
        ratio = weights.sum() / weights_dup[:n, :n].sum()
        torch.testing.assert_close(weights_dup[:n, :n] * ratio, weights)
    loss, _ = perpo_loss(dup(policy), dup(ref), dup(rewards), dup(mask), gamma=gamma)
    expected = _ref_batch("perpo", dup(policy), dup(ref), dup(rewards), dup(mask), 0.1, gamma)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=F64))
    if len(set(rewards[0].tolist())) == n:
        # DPO pairs the first best with the *last* worst. With distinct rewards the copy (appended last) is the
        # worst only when k is, and then has k's scores: unchanged. With k tied at the minimum the copy becomes
        # the worst in place of another tied response, so the loss may change, by design.
        torch.testing.assert_close(dpo_loss(*map(dup, batch))[0], dpo_loss(*batch)[0])
    delta = lipo_lambda_weights(dup(policy - ref), dup(rewards), dup(mask))[0]
    assert delta[k, n] == 0 and delta[n, k] == 0


@pytest.mark.parametrize("name", ["perpo", "listwise"])
@SETTINGS
@given(batch=batches(min_n=1))
def test_duplicating_every_response_leaves_perpo_unchanged(name: str, batch) -> None:
    """Each ordered pair appears 4 times in the sum and in Z; the N new ties weigh 0: same loss."""
    policy, ref, rewards, mask = batch

    def twice(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x], dim=1)

    torch.testing.assert_close(LOSSES[name](*map(twice, batch))[0], LOSSES[name](policy, ref, rewards, mask)[0])


@pytest.mark.parametrize("name", RANKING)
@pytest.mark.parametrize("n", [1, 2, 5])
def test_all_equal_rewards_give_zero_loss_and_gradient(name: str, n: int) -> None:
    policy = torch.tensor([[-3.0, 2.0, -1e4, 1e4, 0.5][:n], [-1.0, 4.0, 0.0, 7.0, 1.0][:n]], requires_grad=True)
    ref = torch.zeros(2, n)
    rewards = torch.tensor([[0.7] * n, [0.0] * n])
    mask = torch.tensor([[True] * n, [False] * n])  # second list fully padded
    loss, stats = LOSSES[name](policy, ref, rewards, mask, gamma=0.0)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(policy.grad, torch.zeros_like(policy))
    assert stats["lists/valid"] == 0 and stats["rewards/accuracy"].isnan()
    assert not any(value.isnan() for key, value in stats.items() if key.startswith("logps/"))


@pytest.mark.parametrize("name", RANKING)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_extreme_scores_are_finite(name: str, dtype: torch.dtype, beta: float) -> None:
    """Scores ±1e4 with the wrong order: softplus(β·2e4) must be the linear β·2e4·w, not inf."""
    policy = torch.tensor([[-1e4, 1e4, 0.0], [1e4, -1e4, 3.0]], dtype=dtype, requires_grad=True)
    ref = torch.zeros(2, 3, dtype=dtype)
    rewards = torch.tensor([[1.0, 0.0, 0.5], [1.0, 0.0, 0.5]])
    loss, stats = LOSSES[name](policy, ref, rewards, _ones_mask(2, 3), beta=beta)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(policy.grad).all()
    assert all(torch.isfinite(value) for value in stats.values())
    if name == "dpo":  # first list: β(−1e4 − 1e4); second: ~0 loss
        torch.testing.assert_close(loss, torch.tensor(beta * 2e4 / 2), rtol=1e-2, atol=0)  # bf16: 1e4 -> 9984


@pytest.mark.parametrize("name", RANKING)
@SETTINGS
@given(batch=batches(min_n=1, masked=True), pad=st.integers(1, 3), junk=st.sampled_from([math.nan, math.inf, 1e30]))
def test_masked_entries_change_nothing(name: str, batch, pad: int, junk: float) -> None:
    """Padding every list with `pad` masked-out columns of junk (NaN, inf, 1e30 in logps and rewards)
    changes neither the loss, nor the statistics, nor the gradient of the real entries; the padded
    entries get an exactly zero gradient.
    """
    policy, ref, rewards, mask = batch
    b = policy.shape[0]
    junk_cols = torch.full((b, pad), junk, dtype=F64)
    padded_policy = torch.cat([policy, junk_cols], dim=1).requires_grad_()
    policy = policy.clone().requires_grad_()
    padded = (torch.cat([ref, -junk_cols], 1), torch.cat([rewards, junk_cols], 1))
    padded_mask = torch.cat([mask, torch.zeros(b, pad, dtype=torch.bool)], dim=1)

    loss, stats = LOSSES[name](policy, ref, rewards, mask)
    loss_p, stats_p = LOSSES[name](padded_policy, *padded, padded_mask)
    torch.testing.assert_close(loss_p, loss)
    for key in stats:
        torch.testing.assert_close(stats_p[key], stats[key], equal_nan=True, msg=key)
    (grad,) = torch.autograd.grad(loss, policy)
    (grad_p,) = torch.autograd.grad(loss_p, padded_policy)
    torch.testing.assert_close(grad_p[:, : policy.shape[1]], grad)
    assert torch.equal(grad_p[:, policy.shape[1] :], torch.zeros(b, pad, dtype=F64))


# --------------------------------------------------------------------------------------------------
# Normalisation, batching, gradients, dtypes
# --------------------------------------------------------------------------------------------------


@SETTINGS
@given(batch=batches(), gamma=st.sampled_from([0.0, 0.5, 1.0, 3.0]))
def test_perpo_weights_sum_to_one_per_list(batch, gamma: float) -> None:
    _, _, rewards, mask = batch
    weights = perpo_pair_weights(rewards, mask, gamma)  # [B, N, N]
    for b in range(rewards.shape[0]):
        real = rewards[b][mask[b]]
        has_pair = real.numel() > 1 and bool((real != real[0]).any())
        torch.testing.assert_close(weights[b].sum(), torch.tensor(float(has_pair), dtype=F64))
        ordered = (rewards[b][:, None] > rewards[b][None, :]) & mask[b][:, None] & mask[b][None, :]
        assert (weights[b][~ordered] == 0).all() and (weights[b][ordered] > 0).all()


@SETTINGS
@given(batch=batches(), beta=st.sampled_from([0.1, 1.0]))
def test_gamma_zero_equals_listwise_exactly(batch, beta: float) -> None:
    loss, stats = perpo_loss(*batch, beta=beta, gamma=0.0)
    listwise, stats_l = listwise_loss(*batch, beta=beta, gamma=2.0)  # listwise ignores gamma
    assert torch.equal(loss, listwise)
    assert stats.keys() == stats_l.keys()


@pytest.mark.parametrize("name", RANKING)
def test_batch_loss_is_mean_over_all_lists(name: str) -> None:
    """Gradient-accumulation equivalence: lists A (N=4, one padded), B (all rewards equal, contributes 0)
    and C (N=2). The batch loss and its gradient equal the mean of the three single-list losses and
    gradients, i.e. batch 3 × accum 1 = batch 1 × accum 3 under HF Trainer's mean over micro-batches.
    """
    policy = torch.tensor([[-5.0, -2.0, -9.0, 0.0], [-1.0, -3.0, -2.0, -4.0], [-2.0, -6.0, 0.0, 0.0]], dtype=F64)
    ref = torch.tensor([[-4.0, -4.0, -4.0, 0.0], [-2.0, -2.0, -2.0, -2.0], [-3.0, -3.0, 0.0, 0.0]], dtype=F64)
    rewards = torch.tensor([[0.9, 0.1, 0.5, 0.0], [0.3, 0.3, 0.3, 0.3], [0.2, 0.6, 0.0, 0.0]], dtype=F64)
    mask = torch.tensor([[True, True, True, False], [True] * 4, [True, True, False, False]])
    fn = LOSSES[name]
    full = policy.clone().requires_grad_()
    loss, _ = fn(full, ref, rewards, mask, beta=0.5)
    loss.backward()
    singles, grads = [], []
    for b in range(3):
        one = policy[b : b + 1].clone().requires_grad_()
        single, _ = fn(one, ref[b : b + 1], rewards[b : b + 1], mask[b : b + 1], beta=0.5)
        single.backward()
        singles.append(single)
        grads.append(one.grad)
    assert singles[1].item() == 0.0 and singles[0] > 0 and singles[2] > 0
    torch.testing.assert_close(loss, torch.stack(singles).mean())
    torch.testing.assert_close(full.grad, torch.cat(grads) / 3)


@pytest.mark.parametrize("name", RANKING)
def test_raising_the_better_response_lowers_the_loss(name: str) -> None:
    policy = torch.tensor([[-4.0, -3.0, -5.0, -2.0]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[-3.0, -3.0, -3.0, -3.0]], dtype=F64)
    rewards = torch.tensor([[0.9, 0.2, 0.5, 0.0]], dtype=F64)
    loss, _ = LOSSES[name](policy, ref, rewards, _ones_mask(1, 4), beta=1.0)
    loss.backward()
    assert policy.grad[0, 0] < 0  # best response: increasing its logp decreases the loss
    assert policy.grad[0, 3] > 0  # worst response: increasing its logp increases the loss
    bumped = policy.detach().clone()
    bumped[0, 0] += 0.1
    assert LOSSES[name](bumped, ref, rewards, _ones_mask(1, 4), beta=1.0)[0] < loss


@pytest.mark.parametrize("name", RANKING)
def test_bfloat16_inputs_compute_in_float32(name: str) -> None:
    generator = torch.Generator().manual_seed(0)
    policy = (-10 * torch.rand(3, 5, generator=generator)).to(torch.bfloat16).requires_grad_()
    ref = (-10 * torch.rand(3, 5, generator=generator)).to(torch.bfloat16)
    rewards = torch.rand(3, 5, generator=generator).to(torch.bfloat16)
    mask = torch.rand(3, 5, generator=generator) > 0.2
    loss, stats = LOSSES[name](policy, ref, rewards, mask)
    loss.backward()
    assert loss.dtype == torch.float32 and all(value.dtype == torch.float32 for value in stats.values())
    assert policy.grad.dtype == torch.bfloat16 and torch.isfinite(policy.grad.float()).all()
    upcast, _ = LOSSES[name](policy.detach().float(), ref.float(), rewards.float(), mask)
    assert torch.equal(loss, upcast)


@pytest.mark.parametrize("name", RANKING)
def test_stats_are_detached_scalars(name: str) -> None:
    policy = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    lengths = torch.tensor([[2, 4, 4]])
    _, stats = LOSSES[name](
        policy, torch.zeros(1, 3), torch.tensor([[0.1, 0.9, 0.4]]), _ones_mask(1, 3), lengths=lengths
    )
    assert set(stats) == STAT_KEYS | {"logps/policy_per_token", "logps/ref_per_token"}
    assert all(value.ndim == 0 and not value.requires_grad for value in stats.values())
    torch.testing.assert_close(stats["logps/policy_per_token"], torch.tensor(-6.0 / 10))


@pytest.mark.parametrize("name", RANKING)
def test_logratio_stats_by_hand(name: str) -> None:
    """Two lists, β irrelevant (s = policy − ref, no β). List 0: rewards [0.2, 0.9, 0.5], policy [−3, −1, −4],
    ref [−2, −2, −4]: s = [−1, 1, 0]; chosen = index 1 (s 1), rejected = index 0 (s −1). List 1: the third entry
    is padding (NaN logps, ignored); rewards [1, 0], policy [−5, −6], ref [−7, −6]: s = [2, 0]; chosen s 2,
    rejected s 0. Means over lists: chosen (1 + 2) / 2 = 1.5, rejected (−1 + 0) / 2 = −0.5; mean s over the five
    valid responses (−1 + 1 + 0 + 2 + 0) / 5 = 0.4. With policy = reference (step 0) all three are exactly 0.
    """
    policy = _t([[-3.0, -1.0, -4.0], [-5.0, -6.0, float("nan")]])
    ref = _t([[-2.0, -2.0, -4.0], [-7.0, -6.0, float("nan")]])
    rewards = _t([[0.2, 0.9, 0.5], [1.0, 0.0, 0.3]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    _, stats = LOSSES[name](policy, ref, rewards, mask, beta=0.3)
    expected = {"logratio/chosen": 1.5, "logratio/rejected": -0.5, "logratio/mean": 0.4}
    for key, value in expected.items():
        torch.testing.assert_close(stats[key], torch.tensor(value, dtype=F64), msg=key)
    torch.testing.assert_close(stats["logps/chosen"], torch.tensor((-1.0 - 5.0) / 2, dtype=F64))

    _, still = LOSSES[name](policy, policy.clone(), rewards, mask, beta=0.3)
    assert all(still[key].item() == 0.0 for key in expected)


def test_dpo_tie_break_first_best_last_worst() -> None:
    """Rewards [1, 0, 1, 0]: best is index 0 (first maximum), worst index 3 (last minimum)."""
    policy = _t([[2.0, 5.0, -7.0, -1.0]])
    loss, stats = dpo_loss(policy, torch.zeros_like(policy), _t([[1.0, 0.0, 1.0, 0.0]]), _ones_mask(1, 4), beta=1.0)
    torch.testing.assert_close(loss, torch.tensor(_softplus(-(2.0 - -1.0)), dtype=F64))
    assert stats["logps/chosen"] == 2.0 and stats["logps/rejected"] == -1.0


def test_sft_ignores_rewards_beta_and_reference() -> None:
    policy = torch.tensor([[-6.0], [-3.0]], requires_grad=True)
    lengths = torch.tensor([[4], [2]])
    loss, stats = sft_loss(policy, torch.full((2, 1), -1.0), torch.rand(2, 1), _ones_mask(2, 1), lengths=lengths)
    other, _ = sft_loss(policy, None, torch.rand(2, 1), _ones_mask(2, 1), lengths=lengths, beta=5.0, gamma=0.0)
    assert torch.equal(loss, other)
    loss.backward()
    torch.testing.assert_close(policy.grad, torch.full((2, 1), -1.0 / 6))  # d(−Σ logps / Σ tokens)/d logp
    torch.testing.assert_close(stats["logps/ref_per_token"], torch.tensor(-2.0 / 6))
    assert not METHODS["sft"].needs_reference


# --------------------------------------------------------------------------------------------------
# Peer cross-check: TRL's sigmoid DPO
# --------------------------------------------------------------------------------------------------


def _trl_sigmoid_dpo(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float
) -> torch.Tensor:
    """TRL's own loss code: `DPOTrainer._compute_loss` (trl 1.16, trl/trainer/dpo_trainer.py L1285-1612).

    The loss lives inline in that method, which needs a model, so it is called unbound on a minimal
    stand-in trainer. The stand-in model returns per-token log-probs for a 2-token sequence (one shifted
    completion token), so TRL's token sum equals the given summed log-probs; `precompute_ref_log_probs`
    supplies the reference log-probs, and only the `sigmoid` branch with `reverse_kl` runs (L1353, L1387).
    """
    from trl.trainer.dpo_trainer import DPOTrainer

    b = chosen.shape[0]
    log_probs = torch.cat([chosen, rejected])[:, None]  # [2B, 1]: rows are [chosen; rejected] as in TRL

    class _FixedLogProbs(torch.nn.Module):
        def forward(self, **_: object) -> SimpleNamespace:
            zeros = torch.zeros(2 * b, 1)
            return SimpleNamespace(
                log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(), aux_loss=None
            )

    model = _FixedLogProbs().eval()
    trainer = SimpleNamespace(
        model=model,
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        ref_model=None,
        f_divergence_type="reverse_kl",
        loss_types=["sigmoid"],
        loss_weights=[1.0],
        beta=beta,
        use_weighting=False,
        label_smoothing=0.0,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(2 * b, 2, dtype=torch.long),
        "attention_mask": torch.ones(2 * b, 2, dtype=torch.long),
        "completion_mask": torch.ones(2 * b, 2, dtype=torch.long),
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    return DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)


@pytest.mark.slow  # importing TRL pulls in transformers and torchvision: ~30 s on the 2-core CI machine
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_equals_trl_sigmoid_dpo(beta: float) -> None:
    generator = torch.Generator().manual_seed(1)
    b, n = 6, 5
    policy = -20 * torch.rand(b, n, generator=generator)
    ref = -20 * torch.rand(b, n, generator=generator)
    rewards = torch.rand(b, n, generator=generator)
    mask = _ones_mask(b, n)
    mask[0, 3:] = False
    ours, stats = dpo_loss(policy, ref, rewards, mask, beta=beta)

    best = rewards.masked_fill(~mask, -1.0).argmax(dim=1)
    worst = rewards.masked_fill(~mask, 2.0).argmin(dim=1)
    rows = torch.arange(b)
    theirs = _trl_sigmoid_dpo(policy[rows, best], policy[rows, worst], ref[rows, best], ref[rows, worst], beta)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(stats["logps/chosen"], policy[rows, best].mean())
