"""Per-response summed log-probs of a batch of lists, in two layouts that give the same numbers.

A list is one prompt (image + question, P tokens after image-token expansion) with N responses. The trainer needs
`logps[b, k] = Σ_t log π(y_bkt | prompt_b, y_bk<t)` over the response tokens (the closing EOS included, as in the
released code) for the policy and the reference.

`naive` (the reference implementation): N separate sequences [prompt][response_k] per list, the model's own
forward with full-vocabulary logits everywhere, the image encoded once per sequence. This is what the released
code does, and what the tests compare against.

`shared` (the fast path): one row per list, [prompt][resp_1]…[resp_N]. Branch positions restart
after the prompt, and a 4-D mask lets each branch see the prompt and itself only, so every response token sees
exactly the context it would see alone. The image is encoded once per list, and hidden states are gathered at
the response positions before the LM head, so logits exist only where a log-prob is needed. Several lists may be
packed into one row (`pack`), each with its own positions and mask block. Works with SDPA or eager attention
(a dense additive 4-D mask) and with FlexAttention (a block-sparse `BlockMask`, for GPUs).

`tree` (the default of `perpo train`): the shared layout with the responses of a list merged into a token tree.
Responses that begin alike (sampled answers of one prompt mostly do: every box starts with the same "[", often
the same first coordinates) share their common prefix, which is computed once; identical responses cost nothing
extra. The leaves of the tree (each response's last token, EOS) are targets but not inputs: nothing is predicted
from them and nothing attends to them. The tree is laid out depth-first, so that a token's descendants are the
tokens right after it: a query sees a key of its list iff the key is in the prompt or is an ancestor of (or is)
the query, i.e. iff key <= query < end[key], with end[key] the end of the key's subtree (the end of the list for
prompt keys). Each tree token's log-prob is computed once and added to every response whose path runs through it,
so a response's sum runs over exactly its own tokens, each with exactly its own context, as in the other two
layouts.

All layouts accept `chunk_size` (rows per forward chunk, each chunk re-computed in the backward pass with
activation checkpointing), so a batch that does not fit in memory at once gives the same loss and gradients.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from perpo.model.families import LLAVA
from perpo.model.families.base import family_of, unwrap

LAYOUTS = ("naive", "shared", "tree")


@dataclass
class ListBatch:
    """Token ids of B lists (no padding), their images, and what the losses need.

    Attributes:
        prompt_ids: B lists of prompt token ids (image placeholders already expanded by the processor).
        response_ids: B lists of N response id lists (each ending with EOS).
        images: extra model inputs for the images, in list order: `pixel_values` [I, ...] and, for
            LLaVA-NeXT/OneVision, `image_sizes` [I, 2]; empty when no list has an image.
        has_image: B flags; list b owns the next image of `images` when True.
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[list[int]]]
    images: dict[str, Tensor]
    has_image: list[bool]
    # Layouts and masks built for this batch, reused by the second pass of a step (policy, then reference).
    memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.response_ids), max(len(r) for r in self.response_ids)


def language_core(model):
    """The language model's decoder stack as the model's family names it (None if the model has none there)."""
    return family_of(model).language_core(unwrap(model))


def pad_right(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """[len(rows), max row length] long tensor: each row left-aligned, the rest `value`."""
    width = max(len(row) for row in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def _image_rows(batch: ListBatch, owners: Sequence[int], model) -> dict[str, Tensor]:
    """Image inputs re-indexed so that row r gets the image of list owners[r] (lists without images skipped)."""
    if not batch.images:
        return {}
    index_of_list = {}
    for b, has in enumerate(batch.has_image):
        if has:
            index_of_list[b] = len(index_of_list)
    picks = [index_of_list[b] for b in owners if b in index_of_list]
    return family_of(model).select_images(batch.images, picks)


def _prompt_positions(model, batch: ListBatch):
    """Each prompt's [3, P] positions for a family with multimodal positions (M-RoPE), else None (kept in memo)."""
    if "positions" not in batch.memo:
        core = unwrap(model)
        batch.memo["positions"] = family_of(model).prompt_positions(
            core, batch.prompt_ids, batch.has_image, batch.images
        )
    return batch.memo["positions"]


def _layout_positions(
    positions: list[list[int]], segment: Tensor, row_lists: list[list[int]], prompt_positions: list[Tensor] | None
) -> Tensor:
    """A layout's right-padded positions: [R, T], or [R, T, 3] with `prompt_positions` (M-RoPE families)."""
    position_ids = pad_right(positions, 0)
    if prompt_positions is None:
        return position_ids
    lists = pad_right(row_lists, -1)  # [R, pack]: the list index of each segment of a row
    owner = torch.where(segment >= 0, lists.gather(1, segment.clamp_min(0)), -1)  # [R, T]
    return _mrope(position_ids, owner, prompt_positions)


def _mrope(position_ids: Tensor, owner: Tensor, prompt_positions: list[Tensor]) -> Tensor:
    """[R, T] layout positions (prompt 0 .. P-1, then P + d - 1) → [R, T, 3] multimodal positions.

    A prompt token takes its prompt's own position; a response token at depth d takes `max(prompt) + d` on all
    three axes, as the model places the text after its last image token (`owner`: [R, T] list of each slot).
    """
    out = position_ids[..., None].repeat(1, 1, 3)
    for b, prompt in enumerate(prompt_positions):
        slots = owner == b
        p = position_ids[slots]
        P = prompt.shape[1]
        after = (p + int(prompt.max()) + 1 - P)[:, None].expand(-1, 3)
        out[slots] = torch.where((p < P)[:, None], prompt.T[p.clamp(max=P - 1)], after)
    return out


def _model_positions(position_ids: Tensor) -> Tensor:
    """Layout positions as the model takes them: [R, T], or [3, R, T] for multimodal positions stored [R, T, 3]."""
    return position_ids.permute(2, 0, 1) if position_ids.dim() == 3 else position_ids


# ---------------------------------------------------------------------------------------------------- naive


def naive_rows(batch: ListBatch, pad_id: int) -> tuple[Tensor, Tensor, Tensor, list[tuple[int, int]]]:
    """Build the naive layout: one right-padded row per (list, response).

    Returns:
        input_ids [R, T], attention_mask [R, T], response_start [R] (index of the first response token),
        and (b, k) per row.
    """
    rows, starts, owners = [], [], []
    for b, (prompt, responses) in enumerate(zip(batch.prompt_ids, batch.response_ids, strict=True)):
        for k, response in enumerate(responses):
            rows.append(prompt + response)
            starts.append(len(prompt))
            owners.append((b, k))
    input_ids = pad_right(rows, pad_id)
    attention_mask = pad_right([[1] * len(row) for row in rows], 0)
    return input_ids, attention_mask, torch.tensor(starts), owners


def _naive_chunk(model, input_ids: Tensor, attention_mask: Tensor, starts: Tensor, images: dict) -> Tensor:
    text = family_of(model).text_inputs(unwrap(model).config, input_ids)  # e.g. what M-RoPE positions are built from
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **images, **text).logits  # [R, T, V]
    token_logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [R, T-1, V], position t predicts t+1
    targets = input_ids[:, 1:]
    picked = token_logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [R, T-1]
    positions = torch.arange(1, input_ids.shape[1], device=input_ids.device)
    keep = (positions[None, :] >= starts[:, None]) & attention_mask[:, 1:].bool()  # response tokens only
    return (picked * keep).sum(-1)  # [R]


def naive_logps(model, batch: ListBatch, *, pad_id: int, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Per-response summed log-probs with N full sequences per list (the reference implementation).

    Returns:
        logps [B, N] (padded entries 0) and lengths [B, N] (response token counts, 0 where padded).
    """
    device = _device(model)
    input_ids, attention_mask, starts, owners = naive_rows(batch, pad_id)
    chunk = chunk_size or len(owners)
    parts = []
    for begin in range(0, len(owners), chunk):
        end = min(begin + chunk, len(owners))
        chunk_images = {
            k: v.to(device) for k, v in _image_rows(batch, [b for b, _ in owners[begin:end]], model).items()
        }
        args = (input_ids[begin:end].to(device), attention_mask[begin:end].to(device), starts[begin:end].to(device))
        parts.append(_maybe_checkpoint(chunk_size, _naive_chunk, model, *args, chunk_images))
    flat = torch.cat(parts)  # [R]
    return _scatter(flat, owners, batch, device)


# ---------------------------------------------------------------------------------------------------- shared


@dataclass
class SharedRows:
    """The shared-prefix layout of a batch.

    Attributes:
        input_ids: [R, T] rows of packed lists, right-padded.
        position_ids: [R, T] restarting at 0 per list and at P per branch.
        segment: [R, T] list index within the row (-1 on padding).
        branch: [R, T] response index (-1 on the prompt, -2 on padding).
        predict_row, predict_pos: [M] where the hidden state predicting each response token sits.
        target_ids: [M] the response tokens.
        target_owner: [M] flat (b * N + k) index of the response each token belongs to.
        row_lists: the list indices packed into each row.
    """

    input_ids: Tensor
    position_ids: Tensor
    segment: Tensor
    branch: Tensor
    predict_row: Tensor
    predict_pos: Tensor
    target_ids: Tensor
    target_owner: Tensor
    row_lists: list[list[int]]


def shared_rows(batch: ListBatch, pad_id: int, pack: int = 1, prompt_positions=None) -> SharedRows:
    """Lay out each list as [prompt][resp_1]…[resp_N], `pack` consecutive lists per row.

    `prompt_positions` (one [3, P] tensor per prompt, for M-RoPE families) makes `position_ids` [R, T, 3].
    """
    B, N = batch.shape
    row_lists = [list(range(i, min(i + pack, B))) for i in range(0, B, pack)]
    rows, positions, segments, branches = [], [], [], []
    predict_row, predict_pos, target_ids, target_owner = [], [], [], []
    for r, lists in enumerate(row_lists):
        ids, pos, seg, br = [], [], [], []
        for s, b in enumerate(lists):
            prompt = batch.prompt_ids[b]
            P = len(prompt)
            prompt_start = len(ids)
            ids += prompt
            pos += range(P)
            seg += [s] * P
            br += [-1] * P
            for k, response in enumerate(batch.response_ids[b]):
                start = len(ids)
                ids += response
                pos += range(P, P + len(response))
                seg += [s] * len(response)
                br += [k] * len(response)
                # Token j of the branch is predicted at the previous token of the branch, or at the prompt's end.
                predict_pos += [prompt_start + P - 1] + list(range(start, start + len(response) - 1))
                predict_row += [r] * len(response)
                target_ids += response
                target_owner += [b * N + k] * len(response)
        rows.append(ids)
        positions.append(pos)
        segments.append(seg)
        branches.append(br)
    segment = pad_right(segments, -1)

    return SharedRows(
        input_ids=pad_right(rows, pad_id),
        position_ids=_layout_positions(positions, segment, row_lists, prompt_positions),
        segment=segment,
        branch=pad_right(branches, -2),
        predict_row=torch.tensor(predict_row),
        predict_pos=torch.tensor(predict_pos),
        target_ids=torch.tensor(target_ids),
        target_owner=torch.tensor(target_owner),
        row_lists=row_lists,
    )


def shared_mask(segment: Tensor, branch: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive 4-D attention mask [R, 1, T, T] of the shared-prefix layout (0 = attend, min = blocked).

    A query attends to an earlier-or-same key of its own list that is in the prompt or in its own branch.
    A padding query attends to itself only, so no softmax row is empty.
    """
    T = segment.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segment.device).tril()  # [T, T]
    same_list = segment[:, :, None] == segment[:, None, :]  # [R, T, T] query × key
    key_in_prompt = branch[:, None, :] == -1
    same_branch = branch[:, :, None] == branch[:, None, :]
    valid = (segment >= 0)[:, :, None] & (segment >= 0)[:, None, :]
    allowed = causal & same_list & valid & (key_in_prompt | same_branch)
    allowed |= torch.eye(T, dtype=torch.bool, device=segment.device)  # padding rows see themselves
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]  # [R, 1, T, T]


def shared_block_mask(segment: Tensor, branch: Tensor):
    """The same mask as `shared_mask` as a FlexAttention `BlockMask`: blocks no query can see are skipped.

    Used when the model runs with `attn_implementation="flex_attention"` (block-sparse kernels on GPU, where the
    N branches of a list make most of the T×T score matrix empty).
    """
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, k):
        same_list = (segment[b, q] == segment[b, k]) & (segment[b, k] >= 0)
        visible = (branch[b, k] == -1) | (branch[b, k] == branch[b, q])
        return (k <= q) & ((same_list & visible) | (k == q))

    rows, width = segment.shape
    return create_block_mask(mask_mod, rows, None, width, width, device=segment.device)


def _shared_chunk(
    model,
    input_ids: Tensor,
    position_ids: Tensor,
    mask: Tensor,
    images: dict,
    rows: Tensor,
    pos: Tensor,
    targets: Tensor,
) -> Tensor:
    core = unwrap(model)
    hidden = core.model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=_model_positions(position_ids),
        use_cache=False,
        **images,
    ).last_hidden_state  # [R, T, H]
    picked = hidden[rows, pos]  # [M, H]: only the positions that predict a response token
    logits = core.lm_head(picked).float()  # [M, V]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)  # [M]


def shared_logps(
    model, batch: ListBatch, *, pad_id: int, pack: int = 1, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Per-response summed log-probs with one shared-prefix row per list (see the module docstring).

    Args:
        chunk_size: rows per forward chunk (each row holds `pack` lists); None = all rows at once.

    Returns:
        logps [B, N] and lengths [B, N], as `naive_logps`.
    """
    device = _device(model)
    dtype = _dtype(model)
    layout = shared_rows(batch, pad_id, pack, _prompt_positions(model, batch))
    B, N = batch.shape
    n_rows = len(layout.row_lists)
    chunk = chunk_size or n_rows
    parts = []
    for begin in range(0, n_rows, chunk):
        end = min(begin + chunk, n_rows)
        lists = [b for row in layout.row_lists[begin:end] for b in row]
        images = {key: value.to(device) for key, value in _image_rows(batch, lists, model).items()}
        select = (layout.predict_row >= begin) & (layout.predict_row < end)
        segment, branch = layout.segment[begin:end].to(device), layout.branch[begin:end].to(device)
        if unwrap(model).config._attn_implementation == "flex_attention":
            mask = shared_block_mask(segment, branch)
        else:
            mask = shared_mask(segment, branch, dtype)
        args = (
            layout.input_ids[begin:end].to(device),
            layout.position_ids[begin:end].to(device),
            mask,
            images,
            (layout.predict_row[select] - begin).to(device),
            layout.predict_pos[select].to(device),
            layout.target_ids[select].to(device),
        )
        parts.append(_maybe_checkpoint(chunk_size, _shared_chunk, model, *args))
    token_logps = torch.cat(parts)  # [M]; tokens are laid out row by row, so chunks concatenate in order
    owner = layout.target_owner.to(device)
    logps = torch.zeros(B * N, device=device, dtype=token_logps.dtype).index_add(0, owner, token_logps)
    lengths = torch.zeros(B * N, device=device).index_add(0, owner, torch.ones_like(token_logps))
    return logps.view(B, N), lengths.view(B, N)


# ---------------------------------------------------------------------------------------------------- tree


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


LISTS_ATTENTION = "perpo_lists_sdpa"


def _lists_attention(module, query, key, value, attention_mask, perpo_spans=None, perpo_keep=None, **kwargs):
    """SDPA, list by list when the lists of a batch are laid end to end in one unpadded row (`perpo_spans`).

    Without `perpo_spans` it is transformers' SDPA attention unchanged (generation, evaluation, other callers).
    With it, `attention_mask` holds one mask per list ([L, 1, T_l, T_l], right-padded to the longest list) and list
    l attends within its own span [a, b) of the row only: no padding tokens, and attention costs Σ T_l² instead of
    L × max T_l².
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if perpo_spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    sizes = [b - a for a, b in perpo_spans]  # the spans tile the row: split (one cat in backward), not slices
    outputs = [
        sdpa_attention_forward(module, q, k, v, attention_mask[i : i + 1, :, :size, :size], **kwargs)[0]
        for i, (q, k, v, size) in enumerate(
            zip(query.split(sizes, 2), key.split(sizes, 2), value.split(sizes, 2), sizes, strict=True)
        )
    ]
    return torch.cat(outputs, dim=1), None  # [1, T, heads, head_dim]


def use_lists_attention(model) -> bool:
    """Route the language model's SDPA attention through `_lists_attention` (idempotent); False if not SDPA.

    The switch is permanent (so that activation checkpointing, which re-runs layers during the backward pass,
    sees it too) and changes nothing for callers that do not pass `perpo_spans`: their masks are built and their
    attention computed by transformers' SDPA functions as before.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    language_model = language_core(model)
    if language_model is None:
        return False
    config = language_model.config
    if config._attn_implementation == LISTS_ATTENTION:
        return True
    if config._attn_implementation != "sdpa":
        return False
    if LISTS_ATTENTION not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(LISTS_ATTENTION, _lists_attention)
        AttentionMaskInterface.register(LISTS_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    config._attn_implementation = LISTS_ATTENTION
    return True


def _last_layer_forward(self, hidden_states, perpo_keep=None, **kwargs):
    """A Llama decoder layer that, given `perpo_keep`, computes its output at the kept positions only.

    Installed on the last layer by `_prune_last_layer`. The last layer's output is read only where a response token
    is predicted, so its queries, attention output, o_proj and MLP run on those rows; keys and values still cover
    every position (the kept queries attend to them). Same operations in the same order as
    `LlamaDecoderLayer.forward` on the kept rows. Without `perpo_keep`: the layer's own forward.
    """
    if perpo_keep is None:
        return type(self).forward(self, hidden_states, **kwargs)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    index, keep_sizes, masks = perpo_keep  # [K] kept rows, kept rows per list, [L, 1, K_l max, T_l max] their masks
    sizes = [b - a for a, b in kwargs["perpo_spans"]]
    cos, sin = kwargs["position_embeddings"]  # [1, T, head_dim]
    attention = self.self_attn
    rotate_half = sys.modules[type(attention).__module__].rotate_half
    T, K, head = hidden_states.shape[1], index.numel(), attention.head_dim
    x = self.input_layernorm(hidden_states)
    q = attention.q_proj(x[:, index]).view(1, K, -1, head).transpose(1, 2)
    k = attention.k_proj(x).view(1, T, -1, head).transpose(1, 2)
    v = attention.v_proj(x).view(1, T, -1, head).transpose(1, 2)
    cos_q, sin_q = cos[:, index].unsqueeze(1), sin[:, index].unsqueeze(1)
    q = (q * cos_q) + (rotate_half(q) * sin_q)
    k = (k * cos.unsqueeze(1)) + (rotate_half(k) * sin.unsqueeze(1))
    outputs = [
        sdpa_attention_forward(
            attention, q_l, k_l, v_l, masks[i : i + 1, :, :kept, :size], dropout=0.0, scaling=attention.scaling
        )[0]
        for i, (q_l, k_l, v_l, kept, size) in enumerate(
            zip(q.split(keep_sizes, 2), k.split(sizes, 2), v.split(sizes, 2), keep_sizes, sizes, strict=True)
        )
    ]
    attended = torch.cat(outputs, dim=1).reshape(1, K, -1).contiguous()
    hidden = hidden_states[:, index] + attention.o_proj(attended)
    return hidden + self.mlp(self.post_attention_layernorm(hidden))


def _prune_last_layer(model) -> bool:
    """Install `_last_layer_forward` on the language model's last layer (idempotent); False where it does not
    apply: not exactly a `LlamaDecoderLayer` (Llama / Vicuna: LLaVA-1.5 and the tiny model), or a layer whose
    forward something else (accelerate's offload hooks) already wraps."""
    import types

    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    layers = getattr(language_core(model), "layers", None)
    if not layers:
        return False
    last = layers[-1]
    if getattr(last, "_perpo_pruned", False):
        return True
    if type(last) is not LlamaDecoderLayer or "forward" in vars(last) or hasattr(last, "_hf_hook"):
        return False
    last.forward = types.MethodType(_last_layer_forward, last)
    last._perpo_pruned = True
    return True


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


# ------------------------------------------------------------------------------------------- reference memo


class ReferenceMemo:
    """Reference log-probs of the lists seen so far, by list content, for the epochs after the first.

    The reference policy never changes during a run, so a list's reference log-probs are the same every time it
    comes back; from the second epoch on, a batch whose lists are all known costs no reference pass. The key is a
    hash of everything the log-probs depend on: the prompt ids, the response ids and the list's image inputs; a
    changed list is a new key, never a stale hit.
    """

    def __init__(self, family=None):
        self.store: dict[bytes, Tensor] = {}
        self.family = family or LLAVA  # how a list's image inputs are cut out of the batch's

    def keys(self, batch: ListBatch) -> list[bytes]:
        import hashlib

        keys, image = [], 0
        for b, (prompt, responses) in enumerate(zip(batch.prompt_ids, batch.response_ids, strict=True)):
            digest = hashlib.blake2b(repr((prompt, responses)).encode(), digest_size=20)
            if batch.has_image[b]:
                own = self.family.select_images(batch.images, [image])
                for name in sorted(own):
                    row = own[name].detach().cpu().contiguous()
                    digest.update(f"{name}{tuple(row.shape)}{row.dtype}".encode())
                    digest.update(row.view(torch.uint8).numpy().tobytes() if row.numel() else b"")
                image += 1
            keys.append(digest.digest())
        return keys

    def get(self, batch: ListBatch, device=None) -> Tensor | None:
        """[B, N] stored log-probs (0 where padded) if every list of the batch is known, else None."""
        keys = self.keys(batch)
        if not all(key in self.store for key in keys):
            return None
        B, N = batch.shape
        out = torch.zeros(B, N)
        for b, key in enumerate(keys):
            row = self.store[key]
            out[b, : len(row)] = row
        return out.to(device) if device is not None else out

    def put(self, batch: ListBatch, logps: Tensor) -> None:
        for b, key in enumerate(self.keys(batch)):
            self.store[key] = logps[b, : len(batch.response_ids[b])].detach().float().cpu().clone()

    def __len__(self) -> int:
        return len(self.store)


# ---------------------------------------------------------------------------------------------------- helpers


def sequence_logps(
    model, batch: ListBatch, *, layout: str, pad_id: int, pack: int = 1, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Dispatch to `naive_logps`, `shared_logps` or `tree_logps` by name."""
    if layout == "naive":
        return naive_logps(model, batch, pad_id=pad_id, chunk_size=chunk_size)
    if layout == "shared":
        return shared_logps(model, batch, pad_id=pad_id, pack=pack, chunk_size=chunk_size)
    if layout == "tree":
        return tree_logps(model, batch, pad_id=pad_id, pack=pack, chunk_size=chunk_size)
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def _maybe_checkpoint(chunk_size: int | None, fn, *args):
    """Run `fn(*args)`; when chunking under autograd, recompute it in the backward pass instead of storing it."""
    if chunk_size and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def _scatter(flat: Tensor, owners: list[tuple[int, int]], batch: ListBatch, device) -> tuple[Tensor, Tensor]:
    B, N = batch.shape
    index = torch.tensor([b * N + k for b, k in owners], device=device)
    logps = torch.zeros(B * N, device=device, dtype=flat.dtype).index_add(0, index, flat)
    counts = torch.tensor([len(batch.response_ids[b][k]) for b, k in owners], device=device, dtype=torch.float32)
    lengths = torch.zeros(B * N, device=device).index_add(0, index, counts)
    return logps.view(B, N), lengths.view(B, N)


def _device(model) -> torch.device:
    return next(unwrap(model).parameters()).device


def _dtype(model) -> torch.dtype:
    return next(unwrap(model).parameters()).dtype
