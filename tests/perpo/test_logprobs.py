"""Shared-prefix log-probs equal separate sequences, for LLaVA-1.5-, NeXT- and OneVision-style tiny models."""

from __future__ import annotations

import pytest
import torch
from layout_helpers import family_batch, loss_and_grads

from perpo.embedded.tiny import FAMILIES
from perpo.model.logprobs import ListBatch, naive_logps, shared_logps, shared_mask, shared_rows


def test_layout_positions_targets_and_mask_by_hand():
    """One list: prompt [10, 11, 12], responses [20, 21] and [30]; a second list packed into the same row."""
    batch = ListBatch([[10, 11, 12], [40]], [[[20, 21], [30]], [[50], [60, 61]]], {}, [False, False])
    rows = shared_rows(batch, pad_id=0, pack=2)
    assert rows.input_ids.tolist() == [[10, 11, 12, 20, 21, 30, 40, 50, 60, 61]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 0, 1, 1, 2]]
    assert rows.branch.tolist() == [[-1, -1, -1, 0, 0, 1, -1, 0, 1, 1]]
    # Each response token is predicted at the previous token of its branch, or at the end of its own prompt.
    assert rows.predict_pos.tolist() == [2, 3, 2, 6, 6, 8]
    assert rows.target_ids.tolist() == [20, 21, 30, 50, 60, 61]
    assert rows.target_owner.tolist() == [0, 0, 1, 2, 3, 3]  # b * N + k with N = 2
    allowed = shared_mask(rows.segment, rows.branch, torch.float32)[0, 0] == 0
    assert allowed[5].tolist() == [True, True, True, False, False, True, False, False, False, False]  # 30 skips 20, 21
    assert allowed[9].tolist() == [False] * 6 + [True, False, True, True]  # 61 sees its prompt and own branch only


def test_padding_rows_never_see_real_tokens_and_vice_versa():
    batch = ListBatch([[1, 2], [3]], [[[4, 5, 6]], [[7]]], {}, [False, False])
    rows = shared_rows(batch, pad_id=0)
    allowed = shared_mask(rows.segment, rows.branch, torch.float32)[:, 0] == 0  # [R, T, T]
    padding = rows.segment[1] < 0
    assert padding.any()
    assert not allowed[1][~padding][:, padding].any()  # real queries never attend to padding
    assert allowed[1][padding][:, padding].diagonal().all()  # padding queries attend to themselves (no NaN)


def _batch(family: str, spec):
    """Three lists: image, no image, image of another aspect ratio; responses of unequal lengths, padded N."""
    responses = [
        ["[0.10, 0.20, 0.30, 0.40]", "[0.5", "no"],
        ["the blue square", ""],  # a shorter list: N = 3 with one padded slot
        ["[0.00, 1.00, 0.50, 0.25]", "x" * 9, "[0.11, 0.22, 0.33, 0.44]"],
    ]
    return family_batch(family, spec, responses)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("pack", "chunk_size"), [(1, None), (2, None), (2, 1)])
def test_shared_prefix_logps_equal_separate_sequences(family, pack, chunk_size, tiny_spec):
    model, batch = _batch(family, tiny_spec)
    with torch.no_grad():
        naive, naive_len = naive_logps(model, batch, pad_id=0)
        shared, shared_len = shared_logps(model, batch, pad_id=0, pack=pack, chunk_size=chunk_size)
    torch.testing.assert_close(shared, naive, rtol=0, atol=1e-4)
    assert torch.equal(shared_len, naive_len)
    assert naive_len[1, 2] == 0 and naive[1, 2] == 0  # the padded slot stays empty


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_and_gradients_match_between_layouts(family, tiny_spec):
    model, batch = _batch(family, tiny_spec)
    rewards = torch.tensor([[1.0, 0.2, 0.0], [0.5, 0.1, 0.0], [0.0, 0.9, 0.4]])
    mask = torch.tensor([[True, True, True], [True, True, False], [True, True, True]])

    loss_naive, grads_naive = loss_and_grads(model, batch, naive_logps, rewards, mask)
    loss_shared, grads_shared = loss_and_grads(model, batch, shared_logps, rewards, mask, pack=2, chunk_size=1)
    torch.testing.assert_close(loss_shared, loss_naive, rtol=0, atol=1e-5)
    assert grads_naive.keys() == grads_shared.keys() and grads_naive
    for name, grad in grads_naive.items():
        torch.testing.assert_close(grads_shared[name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_flex_block_mask_attends_exactly_like_the_dense_mask():
    """The BlockMask of the FlexAttention path (GPU) allows exactly what the dense SDPA mask allows.

    Checked through attention outputs on random q/k/v with FlexAttention's eager form; compiling it, as
    transformers does for `attn_implementation="flex_attention"`, costs minutes on this CPU (the end-to-end
    model path runs in the GPU test).
    """
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    from perpo.model.logprobs import shared_block_mask

    batch = ListBatch([[1, 2, 3], [4, 5]], [[[6, 7], [8, 9, 10], [11]], [[12], [13, 14]]], {}, [False, False])
    rows = shared_rows(batch, pad_id=0, pack=2)
    dense = shared_mask(rows.segment, rows.branch, torch.float32)  # [R, 1, T, T]
    block = shared_block_mask(rows.segment, rows.branch)
    q, k, v = torch.randn(3, rows.input_ids.shape[0], 2, rows.input_ids.shape[1], 8).unbind(0)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile": intended here
        got = flex_attention(q, k, v, block_mask=block)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
