"""The `naive` layout, the reference implementation: N separate sequences [prompt][response_k] per list, the model's
own forward with full-vocabulary logits everywhere, the image encoded once per sequence (what the released code
does, and what the tests compare the other layouts against).
"""

from __future__ import annotations

import torch
from torch import Tensor

from perpo.model.families.base import family_of, unwrap
from perpo.model.logprobs.batch import ListBatch, _device, _image_rows, _maybe_checkpoint, _scatter, pad_right


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
