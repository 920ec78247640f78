"""Reference log-probs kept by list content, so that the epochs after the first cost no reference pass."""

from __future__ import annotations

import torch
from torch import Tensor

from perpo.model.families import LLAVA
from perpo.model.logprobs.batch import ListBatch


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
