"""The `tree` layout (the default of `perpo train`): the responses of a list merged into a token tree laid out
depth-first, each shared prefix computed once; a key is visible to a query iff key <= query < end[key].
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from perpo.model.families.base import unwrap
from perpo.model.logprobs.attention import _prune_last_layer, use_lists_attention
from perpo.model.logprobs.batch import (
    ListBatch,
    _device,
    _dtype,
    _image_rows,
    _layout_positions,
    _maybe_checkpoint,
    _model_positions,
    _prompt_positions,
    pad_right,
)
from perpo.model.logprobs.shared import _shared_chunk


@dataclass
class TreeRows:
    """The token-tree layout of a batch (`tree`, see the module docstring).

    Attributes:
        input_ids: [R, T] rows of packed lists, right-padded: [prompt][inner tree tokens, depth first] per list
            (the leaves, which nothing is predicted from, are left out).
        position_ids: [R, T] restarting at 0 per list; a tree token at depth d (1 = first response token) sits at
            P + d - 1, as it would in its response's own sequence.
        segment: [R, T] list index within the row (-1 on padding).
        end: [R, T] a key is visible to the queries of its list in [key, end): its subtree for a tree token, the
            rest of the list for a prompt token (0 on padding).
        predict_row, predict_pos: [M] where the hidden state predicting each tree token (leaves included) sits: its
            parent token, or the last prompt token.
        target_ids: [M] the tree tokens.
        path_token: [K] for every token of every response, the index (into the M tree tokens) of its tree token.
        path_owner: [K] flat (b * N + k) index of the response each `path_token` entry belongs to.
        row_lists: the list indices packed into each row.
    """

    input_ids: Tensor
    position_ids: Tensor
    segment: Tensor
    end: Tensor
    predict_row: Tensor
    predict_pos: Tensor
    target_ids: Tensor
    path_token: Tensor
    path_owner: Tensor
    row_lists: list[list[int]]


def response_tree(responses: Sequence[Sequence[int]]):
    """Merge responses into a token tree (a trie), its nodes numbered depth first.

    Responses are inserted in lexicographic order, so the nodes are created depth first: the subtree of node v
    is exactly the nodes v, v + 1, ..., v + size[v] - 1.

    Returns:
        (token, parent, depth, size, paths): per node its token, its parent node (-1 for a first token), its depth
        (1 for a first token) and its subtree size; per response (in the given order) its node indices.
    """
    children: dict[tuple[int, int], int] = {}
    token: list[int] = []
    parent: list[int] = []
    depth: list[int] = []
    paths: list[list[int]] = [[] for _ in responses]
    for k in sorted(range(len(responses)), key=lambda i: tuple(responses[i])):
        node = -1
        for t in responses[k]:
            child = children.get((node, t))
            if child is None:
                child = children[(node, t)] = len(token)
                token.append(t)
                parent.append(node)
                depth.append(1 if node < 0 else depth[node] + 1)
            paths[k].append(child)
            node = child
    size = [1] * len(token)
    for v in range(len(token) - 1, -1, -1):
        if parent[v] >= 0:
            size[parent[v]] += size[v]
    return token, parent, depth, size, paths


@functools.lru_cache(maxsize=4096)
def _response_tree(responses: tuple[tuple[int, ...], ...]):
    """`response_tree`, remembered: a list comes back every epoch, and its responses with it."""
    return response_tree(responses)


def tree_rows(batch: ListBatch, pad_id: int, pack: int = 1, prompt_positions=None) -> TreeRows:
    """Lay out each list as [prompt][its responses' token tree, depth first], `pack` consecutive lists per row.

    The tree's leaves (the last token of each distinct response, usually EOS) are targets but not inputs: their
    log-probs come from their parents' hidden states, and no token attends to them. `prompt_positions` (one
    [3, P] tensor per prompt, for M-RoPE families) makes `position_ids` [R, T, 3].
    """
    B, N = batch.shape
    row_lists = [list(range(i, min(i + pack, B))) for i in range(0, B, pack)]
    rows, positions, segments, ends = [], [], [], []
    predict_row, predict_pos, target_ids, path_token, path_owner = [], [], [], [], []
    for r, lists in enumerate(row_lists):
        ids, pos, seg, end = [], [], [], []
        for s, b in enumerate(lists):
            prompt = batch.prompt_ids[b]
            P = len(prompt)
            token, parent, depth, size, paths = _response_tree(tuple(map(tuple, batch.response_ids[b])))
            # Only inner nodes are inputs: a leaf (a response's last token) predicts nothing and nothing sees it.
            inner = [v for v in range(len(token)) if size[v] > 1]
            before = [0]  # before[v]: inner nodes among nodes 0 .. v-1
            for v in range(len(token)):
                before.append(before[-1] + (size[v] > 1))
            first = len(ids) + P  # row position of the first inner node
            ids += prompt
            pos += range(P)
            seg += [s] * P
            end += [first + len(inner)] * P
            ids += [token[v] for v in inner]
            pos += [P - 1 + depth[v] for v in inner]
            seg += [s] * len(inner)
            end += [first + before[v + size[v]] for v in inner]
            # Node v is predicted at its parent (an inner node), or at the prompt's last token.
            predict_pos += [first - 1 if u < 0 else first + before[u] for u in parent]
            predict_row += [r] * len(token)
            base = len(target_ids)
            target_ids += token
            for k, path in enumerate(paths):
                path_token += [base + v for v in path]
                path_owner += [b * N + k] * len(path)
        rows.append(ids)
        positions.append(pos)
        segments.append(seg)
        ends.append(end)
    segment = pad_right(segments, -1)

    return TreeRows(
        input_ids=pad_right(rows, pad_id),
        position_ids=_layout_positions(positions, segment, row_lists, prompt_positions),
        segment=segment,
        end=pad_right(ends, 0),
        predict_row=torch.tensor(predict_row, dtype=torch.long),
        predict_pos=torch.tensor(predict_pos, dtype=torch.long),
        target_ids=torch.tensor(target_ids, dtype=torch.long),
        path_token=torch.tensor(path_token, dtype=torch.long),
        path_owner=torch.tensor(path_owner, dtype=torch.long),
        row_lists=row_lists,
    )


def tree_mask(segment: Tensor, end: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive 4-D attention mask [R, 1, T, T] of the tree layout (0 = attend, min = blocked).

    A query attends to a key of its own list iff key <= query < end[key]: the prompt and the query's ancestors in
    the tree (itself included). A padding query attends to itself only, so no softmax row is empty.
    """
    T = segment.shape[1]
    index = torch.arange(T, device=segment.device)
    causal = index[None, :] <= index[:, None]  # [T, T] query × key
    inside = index[None, :, None] < end[:, None, :]  # [R, T, T]: query < end[key]
    valid = segment >= 0
    same_list = (segment[:, :, None] == segment[:, None, :]) & valid[:, None, :]
    allowed = causal & inside & same_list
    allowed |= torch.eye(T, dtype=torch.bool, device=segment.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def tree_block_mask(segment: Tensor, end: Tensor):
    """`tree_mask` as a FlexAttention `BlockMask` (see `shared_block_mask`)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, k):
        same_list = (segment[b, q] == segment[b, k]) & (segment[b, k] >= 0)
        return ((k <= q) & (q < end[b, k]) & same_list) | (k == q)

    rows, width = segment.shape
    return create_block_mask(mask_mod, rows, None, width, width, device=segment.device)


@dataclass
class _Unpadded:
    """The lists of rows [begin, end) of a `TreeRows` (one list per row) laid end to end in one unpadded row.

    The rows whose last-layer output is needed are the prediction positions (`keep`); a list's kept rows are
    `keep_rows[l, :keep_sizes[l]]`, counted from the list's start.
    """

    input_ids: Tensor  # [1, T]
    position_ids: Tensor  # [1, T]
    spans: tuple[tuple[int, int], ...]  # each list's [a, b) in the row
    predict_pos: Tensor  # [M] positions in the row
    keep: Tensor  # [K] sorted distinct prediction positions
    keep_sizes: list[int]  # per list, its number of kept rows
    keep_rows: Tensor  # [L, max keep_sizes] kept rows per list, from the list's start (0-padded)
    predict_kept: Tensor  # [M] index of each prediction position in `keep`


def _unpadded(layout: TreeRows, begin: int, end: int) -> _Unpadded:
    lengths = (layout.segment[begin:end] >= 0).sum(1).tolist()
    offsets = [0]
    for length in lengths:
        offsets.append(offsets[-1] + length)
    real = layout.segment[begin:end] >= 0
    select = (layout.predict_row >= begin) & (layout.predict_row < end)
    shift = torch.tensor(offsets[:-1], dtype=torch.long)[layout.predict_row[select] - begin]
    predict_pos = layout.predict_pos[select] + shift
    keep = torch.unique(predict_pos)  # sorted
    bounds = torch.searchsorted(keep, torch.tensor(offsets)).tolist()
    keep_sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    keep_rows = torch.zeros(len(lengths), max(keep_sizes), dtype=torch.long)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        keep_rows[i, : b - a] = keep[a:b] - offsets[i]
    return _Unpadded(
        input_ids=layout.input_ids[begin:end][real][None],
        position_ids=layout.position_ids[begin:end][real][None],
        spans=tuple(zip(offsets[:-1], offsets[1:], strict=True)),
        predict_pos=predict_pos,
        keep=keep,
        keep_sizes=keep_sizes,
        keep_rows=keep_rows,
        predict_kept=torch.searchsorted(keep, predict_pos),
    )


def _unpadded_chunk(
    model,
    input_ids: Tensor,
    position_ids: Tensor,
    masks: Tensor,
    spans,
    images: dict,
    pos: Tensor,
    targets: Tensor,
    keep: tuple | None = None,
) -> Tensor:
    """Log-probs of `targets` predicted at row positions `pos`; with `keep` (kept rows, their count per list, their
    masks) the last layer runs on the kept rows only and `pos` indexes them."""
    core = unwrap(model)
    extra = {"perpo_keep": keep} if keep is not None else {}
    hidden = core.model(
        input_ids=input_ids,
        attention_mask=masks,
        position_ids=_model_positions(position_ids),
        use_cache=False,
        perpo_spans=spans,
        **extra,
        **images,
    ).last_hidden_state  # [1, T or K, H]
    logits = core.lm_head(hidden[0, pos]).float()  # [M, V]: only the positions that predict a response token
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)  # [M]


def tree_logps(
    model, batch: ListBatch, *, pad_id: int, pack: int = 1, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Per-response summed log-probs with the responses of each list merged into a token tree.

    With SDPA attention and one list per row (`pack` 1, the default), the lists of a chunk run end to end in one
    row without padding, attention list by list (`use_lists_attention`); otherwise as padded rows with a 4-D mask
    (eager attention, `pack` > 1) or a FlexAttention `BlockMask`. The layout and the masks are kept in
    `batch.memo`, so the reference pass of a step reuses what the policy pass built.

    Args:
        chunk_size: rows per forward chunk (each row holds `pack` lists); None = all rows at once.

    Returns:
        logps [B, N] and lengths [B, N], as `naive_logps`.
    """
    device = _device(model)
    dtype = _dtype(model)
    flex = unwrap(model).config._attn_implementation == "flex_attention"
    unpadded = pack == 1 and not flex and use_lists_attention(model)
    prune = unpadded and _prune_last_layer(model)
    key = ("tree", pad_id, pack)
    if key not in batch.memo:
        batch.memo[key] = tree_rows(batch, pad_id, pack, _prompt_positions(model, batch))
    layout: TreeRows = batch.memo[key]
    B, N = batch.shape
    n_rows = len(layout.row_lists)
    chunk = chunk_size or n_rows
    parts = []
    for begin in range(0, n_rows, chunk):
        end = min(begin + chunk, n_rows)
        lists = [b for row in layout.row_lists[begin:end] for b in row]
        images = {k: v.to(device) for k, v in _image_rows(batch, lists, model).items()}
        select = (layout.predict_row >= begin) & (layout.predict_row < end)
        mask_key = ("tree-mask", pad_id, pack, begin, end, str(device), dtype, flex, unpadded)
        if mask_key not in batch.memo:
            width = int((layout.segment[begin:end] >= 0).sum(1).max()) if unpadded else layout.segment.shape[1]
            segment = layout.segment[begin:end, :width].to(device)
            ends = layout.end[begin:end, :width].to(device)
            batch.memo[mask_key] = tree_block_mask(segment, ends) if flex else tree_mask(segment, ends, dtype)
        targets = layout.target_ids[select].to(device)
        if unpadded:
            row_key = ("tree-unpadded", pad_id, begin, end)
            if row_key not in batch.memo:
                batch.memo[row_key] = _unpadded(layout, begin, end)
            row: _Unpadded = batch.memo[row_key]
            masks = batch.memo[mask_key]
            pos, keep = row.predict_pos.to(device), None
            if prune:
                keep_key = ("tree-keep", mask_key)
                if keep_key not in batch.memo:  # the kept rows of each list's mask
                    lists_index = torch.arange(masks.shape[0], device=device)[:, None]
                    batch.memo[keep_key] = masks[:, 0][lists_index, row.keep_rows.to(device)][:, None]
                keep = (row.keep.to(device), row.keep_sizes, batch.memo[keep_key])
                pos = row.predict_kept.to(device)
            args = (
                row.input_ids.to(device),
                row.position_ids.to(device),
                masks,
                row.spans,
                images,
                pos,
                targets,
                keep,
            )
            parts.append(_maybe_checkpoint(chunk_size, _unpadded_chunk, model, *args))
            continue
        args = (
            layout.input_ids[begin:end].to(device),
            layout.position_ids[begin:end].to(device),
            batch.memo[mask_key],
            images,
            (layout.predict_row[select] - begin).to(device),
            layout.predict_pos[select].to(device),
            targets,
        )
        parts.append(_maybe_checkpoint(chunk_size, _shared_chunk, model, *args))
    token_logps = torch.cat(parts)  # [M]; tree tokens are laid out row by row, so chunks concatenate in order
    owner = layout.path_owner.to(device)
    picked = token_logps.index_select(0, layout.path_token.to(device))  # [K]: a shared token counts once per path
    logps = torch.zeros(B * N, device=device, dtype=token_logps.dtype).index_add(0, owner, picked)
    lengths = torch.zeros(B * N, device=device).index_add(0, owner, torch.ones_like(picked))
    return logps.view(B, N), lengths.view(B, N)
