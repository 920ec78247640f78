"""Batched generation for LLaVA-family models, with per-row reproducible sampling.

Sampling draws each response from its own random stream, seeded by (seed, instruction key, sample index), with
the Gumbel-max trick: argmax(logits / T + Gumbel noise) is an exact sample from softmax(logits / T). Because the
noise of a row never depends on the other rows, an instruction gets the same N samples whatever the batch size,
batch composition or restart point (up to float round-off in the model's own logits). Greedy decoding is the
T = 0 case without noise. This module is the `hf` generation backend behind `perpo sample` and `perpo_llava`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from perpo.model.families.base import family_of, unwrap

logger = logging.getLogger(__name__)


def row_seed(seed: int, key: str, index: int) -> int:
    """A 63-bit seed for sample `index` of the instruction `key` (stable across processes and platforms)."""
    digest = hashlib.sha256(f"{seed}\x1f{key}\x1f{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class GumbelSampler(LogitsProcessor):
    """Turns greedy decoding into exact temperature / top-p sampling with one generator per row.

    Args:
        seeds: one seed per row of the generation batch (after `num_return_sequences` expansion).
        temperature: > 0.
        top_p: nucleus mass kept before sampling (1.0 keeps all).
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float = 1.0):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
        self.seeds = list(seeds)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self._generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if self._generators is None:
            if scores.shape[0] != len(self.seeds):
                raise ValueError(f"{len(self.seeds)} seeds for a batch of {scores.shape[0]} rows")
            self._generators = []
            for seed in self.seeds:
                generator = torch.Generator(device=scores.device)
                generator.manual_seed(seed)
                self._generators.append(generator)
        logits = scores.float() / self.temperature  # [rows, V]
        if self.top_p < 1.0:
            logits = _top_p_filter(logits, self.top_p)
        uniform = torch.stack(
            [torch.rand(logits.shape[-1], generator=g, device=logits.device) for g in self._generators]
        )  # [rows, V], one draw per row and step from that row's own stream
        gumbel = -torch.log((-torch.log(uniform.clamp_min(1e-20))).clamp_min(1e-20))  # -log(-log u), u in (0, 1)
        return logits + gumbel


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the smallest set reaching top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


SAMPLING_DEFAULTS = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
                     "frequency_penalty": 0.0}  # fmt: skip
"""What both backends set beside temperature and top_p, whatever the checkpoint's generation_config says: no
top-k, min-p or repetition penalties (recorded with every sample's settings)."""


def stop_ids(tokenizer, generation_config) -> list[int]:
    """The tokens that end an answer: the tokenizer's EOS and the checkpoint's (Qwen's lists two)."""
    ids = generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    return list(dict.fromkeys([tokenizer.eos_token_id, *ids]))


@dataclass(frozen=True)
class GenerationRequest:
    """One instruction: the full prompt text (chat template applied), its image or None, and a stable key."""

    prompt: str
    image: object | None
    key: str


@torch.inference_mode()
def generate(
    model,
    processor,
    requests: Sequence[GenerationRequest],
    *,
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 32,
    seed: int = 0,
) -> list[list[str]]:
    """Generate `n` responses for each request in one batched `model.generate` call.

    Rows without an image are prompted without one (the prompt must then carry no image token); images go to the
    processor as the model's family prepares them (`Family.prepare_image`: LLaVA-1.5's padded square).

    Returns:
        For each request, its `n` decoded responses (special tokens removed, whitespace stripped).
    """
    if not requests:
        return []
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    own = family_of(model)
    images = [own.prepare_image(r.image) for r in requests if r.image is not None]
    inputs = processor(images=images or None, text=[r.prompt for r in requests], return_tensors="pt", padding=True).to(
        model.device
    )
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    # Greedy decoding has no num_return_sequences, so every sample is its own row: [B*n] rows, grouped per request.
    # The prompt (image included) is encoded once per request and its KV cache copied to the request's n rows.
    input_ids = inputs["input_ids"].repeat_interleave(n, 0)  # [B*n, P]
    attention_mask = inputs["attention_mask"].repeat_interleave(n, 0)
    prefill = {}
    if n > 1 and not own.copies_prompt_cache:  # every sample a full row: its images and text inputs repeated
        picks = [image for image in range(len(images)) for _ in range(n)]
        prefill = own.select_images({k: v for k, v in inputs.items() if k in own.image_inputs}, picks)
        text = set(inputs) - set(own.image_inputs) - {"input_ids", "attention_mask"}  # e.g. mm_token_type_ids
        prefill |= {k: inputs[k].repeat_interleave(n, 0) for k in text}
    elif n > 1:
        # Positions as `generate` computes them for left-padded rows, so the copied cache is the one it would build.
        positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp_min(0)
        prompt = {k: v[:, :-1] if k in ("input_ids", "attention_mask") else v for k, v in inputs.items()}
        cache = model(**prompt, position_ids=positions[:, :-1], use_cache=True).past_key_values
        cache.batch_repeat_interleave(n)
        prefill = {"past_key_values": cache}
    else:
        prefill = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    processors = LogitsProcessorList()
    if temperature > 0:
        seeds = [row_seed(seed, r.key, i) for r in requests for i in range(n)]
        processors.append(GumbelSampler(seeds, temperature, top_p))
    # generate() fills every option it is not given from the checkpoint's generation_config (Qwen2.5-VL's ships a
    # repetition penalty of 1.05): a neutral one stands in for the call, so the distribution is exactly
    # softmax(logits / T) [top-p], the one `SAMPLING_DEFAULTS` records and the vLLM backend samples.
    hf_model = unwrap(model)
    checkpoint_config = hf_model.generation_config
    hf_model.generation_config = GenerationConfig(
        bos_token_id=checkpoint_config.bos_token_id,
        eos_token_id=stop_ids(tokenizer, checkpoint_config),
        pad_token_id=tokenizer.pad_token_id,
    )
    # a family that repeats each image in its n rows still encodes it once (Qwen-VL: M-RoPE, no cache copy)
    once = own.images_encoded_once(model, n) if n > 1 and not own.copies_prompt_cache else nullcontext()
    try:
        with once:
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                **prefill,
                do_sample=False,
                num_beams=1,
                max_new_tokens=max_new_tokens,
                logits_processor=processors,
            )  # [B*n, prompt + new]
    finally:
        hf_model.generation_config = checkpoint_config
    new_tokens = output[:, input_ids.shape[1] :]
    texts = [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return [texts[i * n : (i + 1) * n] for i in range(len(requests))]
