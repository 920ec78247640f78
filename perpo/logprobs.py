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

Both layouts accept `chunk_size` (rows per forward chunk, each chunk re-computed in the backward pass with
activation checkpointing), so a batch that does not fit in memory at once gives the same loss and gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

LAYOUTS = ("naive", "shared")


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

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.response_ids), max(len(r) for r in self.response_ids)


def unwrap(model):
    """The underlying `*ForConditionalGeneration` under DeepSpeed/DDP and peft wrappers."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def _image_rows(batch: ListBatch, owners: Sequence[int]) -> dict[str, Tensor]:
    """Image inputs re-indexed so that row r gets the image of list owners[r] (lists without images skipped)."""
    if not batch.images:
        return {}
    index_of_list = {}
    for b, has in enumerate(batch.has_image):
        if has:
            index_of_list[b] = len(index_of_list)
    picks = [index_of_list[b] for b in owners if b in index_of_list]
    if not picks:
        return {}
    index = torch.tensor(picks, device=next(iter(batch.images.values())).device)
    return {key: value.index_select(0, index) for key, value in batch.images.items()}


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
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        input_ids[r, : len(row)] = torch.tensor(row)
        attention_mask[r, : len(row)] = 1
    return input_ids, attention_mask, torch.tensor(starts), owners


def _naive_chunk(model, input_ids: Tensor, attention_mask: Tensor, starts: Tensor, images: dict) -> Tensor:
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **images).logits  # [R, T, V]
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
    images = _image_rows(batch, [b for b, _ in owners])
    has_image_row = torch.tensor([batch.has_image[b] for b, _ in owners])
    chunk = chunk_size or len(owners)
    parts = []
    for begin in range(0, len(owners), chunk):
        end = min(begin + chunk, len(owners))
        image_begin = int(has_image_row[:begin].sum())
        image_end = int(has_image_row[:end].sum())
        chunk_images = {key: value[image_begin:image_end].to(device) for key, value in images.items()}
        if image_begin == image_end:
            chunk_images = {}
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


def shared_rows(batch: ListBatch, pad_id: int, pack: int = 1) -> SharedRows:
    """Lay out each list as [prompt][resp_1]…[resp_N], `pack` consecutive lists per row."""
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
    width = max(len(r) for r in rows)

    def pad(seqs, value):
        out = torch.full((len(seqs), width), value, dtype=torch.long)
        for i, seq in enumerate(seqs):
            out[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return out

    return SharedRows(
        input_ids=pad(rows, pad_id),
        position_ids=pad(positions, 0),
        segment=pad(segments, -1),
        branch=pad(branches, -2),
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
        input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False, **images
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
    layout = shared_rows(batch, pad_id, pack)
    B, N = batch.shape
    n_rows = len(layout.row_lists)
    chunk = chunk_size or n_rows
    parts = []
    for begin in range(0, n_rows, chunk):
        end = min(begin + chunk, n_rows)
        lists = [b for row in layout.row_lists[begin:end] for b in row]
        images = {key: value.to(device) for key, value in _image_rows(batch, lists).items()}
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


# ---------------------------------------------------------------------------------------------------- helpers


def sequence_logps(
    model, batch: ListBatch, *, layout: str, pad_id: int, pack: int = 1, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Dispatch to `naive_logps` or `shared_logps` by name."""
    if layout == "naive":
        return naive_logps(model, batch, pad_id=pad_id, chunk_size=chunk_size)
    if layout == "shared":
        return shared_logps(model, batch, pad_id=pad_id, pack=pack, chunk_size=chunk_size)
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
