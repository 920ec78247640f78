"""Shared by the layout tests: the PerPO loss and the gradients one log-prob layout gives."""

from __future__ import annotations

import torch

from perpo.losses import perpo_loss


def loss_and_grads(model, batch, logps_fn, rewards, mask, **layout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PerPO loss (zero reference, β 0.1, γ 0.5) of `logps_fn(model, batch, pad_id=0, **layout)` and every gradient."""
    model.zero_grad()
    logps, _ = logps_fn(model, batch, pad_id=0, **layout)
    loss, _ = perpo_loss(logps, torch.zeros_like(logps), rewards, mask, beta=0.1, gamma=0.5)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
