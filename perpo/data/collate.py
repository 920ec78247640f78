"""Records → model tensors: prompt encoding (image tokens expanded by the processor), responses, padding.

Prompts and responses are tokenised separately and concatenated, so the prompt ids are identical for every
response of a list (what the shared-prefix forward relies on) and the response/prompt boundary is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from perpo.io import load_image
from perpo.model.families.base import Family
from perpo.model.logprobs import ListBatch, pad_right

IGNORE_INDEX = -100


def encode_prompts(
    processor, prompts: Sequence[str], images: Sequence[object | None], family: Family
) -> tuple[list[list[int]], dict]:
    """Tokenise prompts with the processor, which expands each image placeholder to the model's image tokens.

    Args:
        family: the model's family: it prepares each image before the processor (`Family.prepare_image`) and
            names the processor outputs kept as image inputs.

    Returns:
        (prompt ids per prompt without padding, extra model inputs such as `pixel_values` [n_images, C, H, W]
        and, for LLaVA-NeXT/OneVision, `image_sizes`).
    """
    present = [family.prepare_image(image) for image in images if image is not None]
    encoded = processor(images=present or None, text=list(prompts), padding=True, return_tensors="pt")
    ids = [
        row[mask.bool()].tolist() for row, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)
    ]
    extra = {key: encoded[key] for key in family.image_inputs if key in encoded and present}
    return ids, extra


def encode_responses(tokenizer, responses: Sequence[str]) -> list[list[int]]:
    """Response token ids, each closed with the end-of-turn (EOS) token, as in the released code."""
    ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    return [list(row) + [tokenizer.eos_token_id] for row in ids]


def sft_batch(
    processor, prompts: Sequence[str], images: Sequence[object | None], answers: Sequence[str], family: Family
) -> dict:
    """A supervised batch: [prompt][answer</s>] per row, labels only on the answer (right-padded).

    Returns:
        input_ids, attention_mask, labels: [B, T]; plus pixel_values (and image_sizes when the model needs them).
    """
    prompt_ids, extra = encode_prompts(processor, prompts, images, family)
    answer_ids = encode_responses(processor.tokenizer, answers)
    sequences = [p + a for p, a in zip(prompt_ids, answer_ids, strict=True)]
    labels = [[IGNORE_INDEX] * len(p) + a for p, a in zip(prompt_ids, answer_ids, strict=True)]
    pad_id = processor.tokenizer.pad_token_id
    input_ids = pad_right(sequences, pad_id)
    attention_mask = pad_right([[1] * len(s) for s in sequences], 0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": pad_right(labels, IGNORE_INDEX),
        **extra,
    }


class ListCollator:
    """Listwise records → a `ListBatch` of token ids plus rewards and mask, for `perpo.model.logprobs`.

    Args:
        processor: the model's processor (its chat template formats the prompt).
        image_root: folder that relative `image` paths are resolved against.
        n: responses per list used for training (the first `n` of each record's responses).
        on_answers: the batch holds each list's ground-truth answer as its only response, reward 0, instead of its
            N responses (losses in `perpo.objectives.losses.Method.on_answers`: SFT).
        ref_logps: optional precomputed reference log-probs, id → N floats.
        cache: encode each list once and keep it (prompt ids, image tensor, response ids) for later epochs.
        cache_bytes: stop adding lists to the cache once their image tensors take this much memory.
        family: the model's family: how an image is prepared for the processor and which of the processor's
            outputs carry it (`perpo.model.families.Family`).
    """

    def __init__(
        self,
        processor,
        image_root,
        n: int,
        *,
        family: Family,
        on_answers: bool = False,
        ref_logps: dict | None = None,
        cache: bool = False,
        cache_bytes: int = 1 << 30,
    ):
        self.processor = processor
        self.image_root = image_root
        self.n = n
        self.on_answers = on_answers
        self.ref_logps = ref_logps
        self.cache = cache
        self.cache_bytes = cache_bytes
        self.family = family
        self._encoded: dict[tuple, tuple] = {}
        self._cached_bytes = 0

    def encode(self, records: Sequence[dict]) -> tuple[list[list[int]], dict, list[bool], list[list[list[int]]]]:
        """Prompt ids, image inputs, image flags and response ids of `records`, as the processor makes them."""
        from perpo.data.schema import resolve_image
        from perpo.model.prompts import chat_prompt

        images = [None if not r["image"] else load_image(resolve_image(r, self.image_root)) for r in records]
        prompts = [
            chat_prompt(self.processor, r["question"], with_image=image is not None)
            for r, image in zip(records, images, strict=True)
        ]
        prompt_ids, extra = encode_prompts(self.processor, prompts, images, self.family)
        has_image = [image is not None for image in images]
        tokenizer = self.processor.tokenizer
        responses = [encode_responses(tokenizer, self._texts(r)) for r in records]
        return prompt_ids, extra, has_image, responses

    def _texts(self, record: dict) -> list[str]:
        """The responses a list trains on: its first N, or its answer alone."""
        return [record["answer"]] if self.on_answers else record["responses"][: self.n]

    def _key(self, record: dict) -> tuple:
        return str(record["image"] or ""), record["question"], tuple(self._texts(record))

    def encode_cached(self, records: Sequence[dict]):
        """`encode`, from a per-list cache: each list is encoded once, later epochs only assemble the batch.

        Exact when the processor encodes each image on its own into a fixed-size `pixel_values` row (LLaVA-1.5); for
        processors whose batch output depends on the batch (LLaVA-NeXT / OneVision patch padding, `image_sizes`)
        the cache switches itself off. Lists stop being added once the cached pixels reach `cache_bytes`.
        """
        keys = [self._key(r) for r in records]
        missing = [i for i, key in enumerate(keys) if key not in self._encoded]
        fresh = {}
        if missing:
            prompt_ids, extra, has_image, responses = self.encode([records[i] for i in missing])
            pixels = extra.get("pixel_values")
            if set(extra) - {"pixel_values"} or (pixels is not None and pixels.dim() != 4):
                self.cache = False  # batch-dependent image inputs: encode whole batches from now on
                if len(missing) == len(records):
                    return prompt_ids, extra, has_image, responses
                return self.encode(records)
            image = 0
            for j, i in enumerate(missing):
                row = None
                if has_image[j]:
                    row = pixels[image : image + 1].clone()
                    image += 1
                fresh[i] = (prompt_ids[j], row, responses[j])
                if self._cached_bytes < self.cache_bytes:
                    self._encoded[keys[i]] = fresh[i]
                    self._cached_bytes += 0 if row is None else row.numel() * row.element_size()
        entries = [fresh[i] if i in fresh else self._encoded[key] for i, key in enumerate(keys)]
        rows = [row for _, row, _ in entries if row is not None]
        extra = {"pixel_values": torch.cat(rows)} if rows else {}
        return (
            [list(p) for p, _, _ in entries],
            extra,
            [row is not None for _, row, _ in entries],
            [[list(r) for r in rs] for _, _, rs in entries],
        )

    def __call__(self, records: Sequence[dict]) -> dict:

        encode = self.encode_cached if self.cache else self.encode
        prompt_ids, extra, has_image, responses = encode(records)
        batch = ListBatch(prompt_ids=prompt_ids, response_ids=responses, images=extra, has_image=has_image)
        rewards = [[0.0] if self.on_answers else r["rewards"][: self.n] for r in records]
        out = {
            "batch": batch,
            "rewards": torch.tensor(rewards, dtype=torch.float32),  # [B, N] (N = 1 on answers)
            "mask": torch.ones(len(rewards), len(rewards[0]), dtype=torch.bool),  # lists hold >= n (validated)
            "ids": [r["id"] for r in records],
        }
        if self.ref_logps is not None:
            out["ref_logps"] = torch.tensor([self.ref_logps[r["id"]] for r in records], dtype=torch.float32)
        return out
