"""Shared by the layout tests: a batch of three lists on a family's tiny model, and the PerPO loss and gradients
one log-prob layout gives."""

from __future__ import annotations

import torch

from perpo.data.collate import encode_prompts
from perpo.embedded.tiny import build_family
from perpo.model.families import family_of
from perpo.model.logprobs import ListBatch
from perpo.model.prompts import chat_prompt
from perpo.objectives.losses import perpo_loss


def family_batch(family: str, spec, responses: list[list[str]]):
    """The tiny model of `family` (eval mode) and a batch of three lists (an image, no image, an image of another
    aspect ratio) whose responses are `responses` (one list of texts per list, each closed with EOS)."""
    from PIL import Image

    model, processor = build_family(family, spec)
    model.eval()
    images = [Image.new("RGB", (30, 17), (220, 40, 40)), None, Image.new("RGB", (17, 40), (40, 200, 40))]
    prompts = [chat_prompt(processor, f"the red circle {i}", with_image=im is not None) for i, im in enumerate(images)]
    prompt_ids, extra = encode_prompts(processor, prompts, images, family_of(model))
    tok = processor.tokenizer
    ids = [[tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts] for texts in responses]
    return model, ListBatch(prompt_ids, ids, extra, [im is not None for im in images])


def loss_and_grads(model, batch, logps_fn, rewards, mask, **layout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PerPO loss (zero reference, β 0.1, γ 0.5) of `logps_fn(model, batch, pad_id=0, **layout)` and every gradient."""
    model.zero_grad()
    logps, _ = logps_fn(model, batch, pad_id=0, **layout)
    loss, _ = perpo_loss(logps, torch.zeros_like(logps), rewards, mask, beta=0.1, gamma=0.5)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
