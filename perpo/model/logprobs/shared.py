"""The `shared` layout: one row per list, [prompt][resp_1]...[resp_N], branch positions restarting after the prompt
and a 4-D mask (dense, or a FlexAttention `BlockMask`) so that each response sees the prompt and itself only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from perpo.model.families.base import unwrap
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
