"""The token-tree layout (`tree`): responses that share a prefix share its tokens, with the same numbers as the
separate sequences of the naive layout and the branches of the shared layout."""

from __future__ import annotations

import pytest
import torch
from layout_helpers import family_batch, loss_and_grads

from perpo.embedded.tiny import FAMILIES
from perpo.model.families import FAMILIES as FAMILY_OF
from perpo.model.logprobs import (
    ListBatch,
    naive_logps,
    response_tree,
    shared_logps,
    shared_mask,
    shared_rows,
    tree_logps,
    tree_mask,
    tree_rows,
)


def _batch(family: str, spec):
    """Three lists (image, no image, image of another aspect ratio), responses of unequal lengths, padded N; plus
    responses that repeat or extend the prefixes of the others, and an exact copy."""
    responses = [
        ["[0.10, 0.20, 0.30, 0.40]", "[0.5", "no", "[0.10, 0.20, 0.99, 0.40]", "[0.10, 0.77"],
        ["the blue square", "", "the blue square", "the red"],  # N = 5 with a padded slot
        ["[0.00, 1.00, 0.50, 0.25]", "x" * 9, "[0.11, 0.22, 0.33, 0.44]", "x" * 4, "[0.00"],
    ]
    return family_batch(family, spec, responses)


def test_tree_by_hand():
    """Responses [5, 6, 7], [5, 8], [9] and [5, 6, 7] again: "5" and "5 6 7" are computed once."""
    token, parent, depth, size, paths = response_tree([[5, 6, 7], [5, 8], [9], [5, 6, 7]])
    assert token == [5, 6, 7, 8, 9]  # depth first: 5 → 6 → 7, then 5 → 8, then 9
    assert parent == [-1, 0, 1, 0, -1]
    assert depth == [1, 2, 3, 2, 1]
    assert size == [4, 2, 1, 1, 1]
    assert paths == [[0, 1, 2], [0, 3], [4], [0, 1, 2]]

    batch = ListBatch([[1, 2], [3]], [[[5, 6, 7], [5, 8], [9], [5, 6, 7]], [[4], [4]]], {}, [False, False])
    rows = tree_rows(batch, pad_id=0, pack=2)
    # Inputs: the prompts and the inner nodes 5, 6 only; the leaves 7, 8, 9 and 4 are targets, not inputs.
    assert rows.input_ids.tolist() == [[1, 2, 5, 6, 3]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 0]]
    assert rows.segment.tolist() == [[0, 0, 0, 0, 1]]
    assert rows.end.tolist() == [[4, 4, 4, 4, 5]]
    assert rows.predict_pos.tolist() == [1, 2, 3, 2, 1, 4]  # 5 and 9 from the prompt's end, 6 and 8 from 5, 7 from 6
    assert rows.target_ids.tolist() == [5, 6, 7, 8, 9, 4]
    assert rows.path_token.tolist() == [0, 1, 2, 0, 3, 4, 0, 1, 2, 5, 5]
    assert rows.path_owner.tolist() == [0, 0, 0, 1, 1, 2, 3, 3, 3, 4, 5]  # b * N + k with N = 4
    allowed = tree_mask(rows.segment, rows.end, torch.float32)[0, 0] == 0
    assert allowed[3].tolist() == [True, True, True, True, False]  # 6 sees 1 2 5 6
    assert allowed[4].tolist() == [False] * 4 + [True]  # the packed list sees only itself

    deeper = ListBatch([[1]], [[[5, 6, 2], [5, 7, 8, 2], [9, 2]]], {}, [False])
    rows = tree_rows(deeper, pad_id=0)
    assert rows.input_ids.tolist() == [[1, 5, 6, 7, 8, 9]]  # 5 → (6, 7 → 8), 9: every inner node once
    allowed = tree_mask(rows.segment, rows.end, torch.float32)[0, 0] == 0
    assert allowed[4].tolist() == [True, True, False, True, True, False]  # 8 sees 1 5 7 8, not its uncle 6
    assert allowed[5].tolist() == [True, False, False, False, False, True]  # 9 sees the prompt and itself


def test_tree_without_shared_prefixes_is_the_shared_layout_without_last_tokens():
    """With no common prefix the tree's inputs are the shared layout's minus each response's last token."""
    responses = [[[20, 21], [30]], [[50], [60, 61, 62]]]
    batch = ListBatch([[10, 11, 12], [40]], responses, {}, [False, False])
    cut = ListBatch(batch.prompt_ids, [[r[:-1] for r in rs] for rs in responses], {}, [False, False])
    tree, shared = tree_rows(batch, pad_id=0, pack=2), shared_rows(cut, pad_id=0, pack=2)
    for name in ("input_ids", "position_ids", "segment"):
        assert torch.equal(getattr(tree, name), getattr(shared, name)), name
    assert torch.equal(
        tree_mask(tree.segment, tree.end, torch.float32), shared_mask(shared.segment, shared.branch, torch.float32)
    )
    assert tree.target_ids.tolist() == [20, 21, 30, 50, 60, 61, 62]


def test_padding_rows_never_see_real_tokens_and_vice_versa():
    batch = ListBatch([[1, 2], [3]], [[[4, 5, 6], [4, 5]], [[7]]], {}, [False, False])
    rows = tree_rows(batch, pad_id=0)
    allowed = tree_mask(rows.segment, rows.end, torch.float32)[:, 0] == 0  # [R, T, T]
    padding = rows.segment[1] < 0
    assert padding.any()
    assert not allowed[1][~padding][:, padding].any()
    assert allowed[1][padding][:, padding].diagonal().all()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("pack", "chunk_size"), [(1, None), (1, 2), (2, None), (2, 1)])
def test_tree_logps_equal_separate_sequences(family, pack, chunk_size, tiny_spec):
    """pack 1: the lists run unpadded, end to end in one row (`_lists_attention`); pack 2: padded rows."""
    model, batch = _batch(family, tiny_spec)
    assert len(tree_rows(batch, 0).target_ids) < len(shared_rows(batch, 0).target_ids) - 10  # prefixes are shared
    with torch.no_grad():
        naive, naive_len = naive_logps(model, batch, pad_id=0)
        tree, tree_len = tree_logps(model, batch, pad_id=0, pack=pack, chunk_size=chunk_size)
    torch.testing.assert_close(tree, naive, rtol=0, atol=1e-4)
    assert torch.equal(tree_len, naive_len)
    assert tree[1, 4] == 0 and tree_len[1, 4] == 0  # the padded slot stays empty


@pytest.mark.parametrize("family", FAMILIES)
def test_tree_loss_and_gradients_equal_the_shared_layout(family, tiny_spec):
    model, batch = _batch(family, tiny_spec)
    B, N = batch.shape
    rewards = torch.rand(B, N, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[k < len(rs) for k in range(N)] for rs in batch.response_ids])

    loss_shared, grads_shared = loss_and_grads(model, batch, shared_logps, rewards, mask)
    loss_tree, grads_tree = loss_and_grads(model, batch, tree_logps, rewards, mask, pack=2, chunk_size=1)
    torch.testing.assert_close(loss_tree, loss_shared, rtol=0, atol=1e-5)
    assert grads_shared.keys() == grads_tree.keys() and grads_shared
    for name, grad in grads_shared.items():
        torch.testing.assert_close(grads_tree[name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_tree_flex_block_mask_attends_exactly_like_the_dense_mask():
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    from perpo.model.logprobs import tree_block_mask

    batch = ListBatch(
        [[1, 2, 3], [4, 5]], [[[6, 7], [6, 9, 10], [6, 7]], [[12], [13, 14], [12, 15]]], {}, [False, False]
    )
    rows = tree_rows(batch, pad_id=0, pack=2)
    dense = tree_mask(rows.segment, rows.end, torch.float32)
    block = tree_block_mask(rows.segment, rows.end)
    q, k, v = torch.randn(3, rows.input_ids.shape[0], 2, rows.input_ids.shape[1], 8).unbind(0)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = flex_attention(q, k, v, block_mask=block)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_lists_attention_changes_nothing_for_other_callers(family, tiny_spec):
    """After `use_lists_attention` and `_prune_last_layer`, a plain forward (padding mask, no spans, no kept rows)
    and generation give what they gave before."""
    from perpo.model.logprobs.attention import LISTS_ATTENTION, _prune_last_layer, use_lists_attention

    model, batch = _batch(family, tiny_spec)
    rows = [batch.prompt_ids[0], batch.prompt_ids[1] + batch.response_ids[1][0]]
    width = max(map(len, rows))
    input_ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])  # left-padded, as for generation
    attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    own = FAMILY_OF[family]
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **own.select_images(batch.images, [0])}
    inputs |= own.text_inputs(model.config, input_ids)
    llama = type(model.model.language_model.layers[-1]).__name__ == "LlamaDecoderLayer"  # the pruned layer type
    with torch.no_grad():
        before = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert use_lists_attention(model) and use_lists_attention(model)  # idempotent
        assert _prune_last_layer(model) == llama and _prune_last_layer(model) == llama
        assert model.model.language_model.config._attn_implementation == LISTS_ATTENTION
        after = model(**inputs).logits
        again = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    assert torch.equal(again, generated)


@pytest.mark.parametrize("name", ["qwen2_5_vl", "qwen3_vl"])
def test_multimodal_positions_of_the_shared_layout_are_the_models_own(name, tiny_spec):
    """Qwen-VL (M-RoPE): every token of the shared layout sits where the model's own `get_rope_index` puts it in
    the response's separate sequence [prompt][response]; image prompts really are off the 1-D positions."""
    from perpo.model.logprobs.batch import _prompt_positions

    model, batch = _batch(name, tiny_spec)
    family = FAMILY_OF[name]
    rows = shared_rows(batch, pad_id=0, prompt_positions=_prompt_positions(model, batch))
    assert rows.position_ids.shape[-1] == 3
    image = 0
    for b, (prompt, responses) in enumerate(zip(batch.prompt_ids, batch.response_ids, strict=True)):
        grid = family.select_images(batch.images, [image])["image_grid_thw"] if batch.has_image[b] else None
        image += batch.has_image[b]
        for k, response in enumerate(responses):
            ids = torch.tensor([prompt + response])
            if grid is None:
                expected = torch.arange(ids.shape[1]).expand(3, -1)
            else:
                mm = family.text_inputs(model.config, ids)["mm_token_type_ids"]
                expected = model.model.get_rope_index(ids, mm_token_type_ids=mm, image_grid_thw=grid)[0][:, 0]
                assert not torch.equal(expected, torch.arange(ids.shape[1]).expand(3, -1))
            slots = (rows.branch[b] == -1) | (rows.branch[b] == k)
            assert torch.equal(rows.position_ids[b][slots].T, expected), (b, k)
