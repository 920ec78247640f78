"""The batch of lists every layout reads (`ListBatch`), and what the layouts share: padding, positions (1-D or
M-RoPE), image rows, checkpointed chunks and the scatter of per-token log-probs back to [B, N].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from perpo.model.families.base import family_of, unwrap


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
