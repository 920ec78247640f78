"""What generation needs from a GPU, worked out from the checkpoint before its weights load.

    memory = weights + rows x (prompt + max_new_tokens) x KV per token
    KV per token = 2 (K and V) x layers x KV heads x head dim x bytes per value

Each row holds its own copy of its prompt's cache: `perpo sample` runs `batch_size x n` rows per `generate` call,
`perpo eval` `batch_size` sequences. LLaVA-1.5-7B (32 layers, 32 KV heads of 128, bf16): 0.5 MiB per token;
Qwen2.5-VL-7B (28 layers, 4 KV heads of 128: grouped-query attention): 56 KiB. Activations and the logits of
one step come on top (a few GiB at 7B), which is why a batch must leave `HEADROOM` of the device free.
docs/scale.md lists the figures of each 7B recipe.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from perpo.config import ConfigError

GIB = 1 << 30
HEADROOM = 0.85
"""The share of a device's memory the estimate may take (the rest: activations, logits, allocator slack)."""
DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def text_config(config):
    """The language model's config of a multimodal config (the config itself for a text-only model)."""
    return getattr(config, "text_config", None) or config


def kv_bytes_per_token(config, value_bytes: int = 2) -> int:
    """2 x layers x KV heads x head dim x `value_bytes`: the KV cache of one token of one sequence."""
    text = text_config(config)
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * value_bytes


def context_length(config) -> int:
    """The longest sequence the language model's positions allow."""
    return int(text_config(config).max_position_embeddings)


def parameter_count(model_dir: str | Path) -> int | None:
    """Parameters in the checkpoint's safetensors files, read from their headers (None when it has none)."""
    total, files = 0, sorted(Path(model_dir).glob("*.safetensors"))
    for path in files:
        with path.open("rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                total += count
    return total if files else None


@dataclass(frozen=True)
class MemoryEstimate:
    """The figures of one generation setting."""

    weights: int
    rows: int
    tokens_per_row: int
    kv_per_token: int

    @property
    def kv_cache(self) -> int:
        return self.rows * self.tokens_per_row * self.kv_per_token

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache

    def describe(self) -> str:
        return (
            f"memory estimate: weights {self.weights / GIB:.1f} GiB + KV cache {self.rows} rows x "
            f"{self.tokens_per_row} tokens x {self.kv_per_token / 1024:.0f} KiB = {self.kv_cache / GIB:.1f} GiB; "
            f"total {self.total / GIB:.1f} GiB"
        )


def generation_estimate(model_dir: str | Path, config, rows: int, tokens_per_row: int, value_bytes: int):
    """The `MemoryEstimate` of `rows` sequences of `tokens_per_row` tokens in a `value_bytes` dtype."""
    params = parameter_count(model_dir)
    if params is None:  # no weights to read (a config-only folder): the decoder's own matrices
        text = text_config(config)
        layer = 4 * text.hidden_size**2 + 3 * text.hidden_size * getattr(
            text, "intermediate_size", 4 * text.hidden_size
        )
        params = text.num_hidden_layers * layer + 2 * text.vocab_size * text.hidden_size
    return MemoryEstimate(params * value_bytes, rows, tokens_per_row, kv_bytes_per_token(config, value_bytes))


def device_memory(device: str) -> int | None:
    """Total memory of a CUDA device in bytes (None for a CPU: its memory is not checked)."""
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.device(device)).total_memory


def check_fits(estimate: MemoryEstimate, available: int | None, what: str, rows_per_batch: int = 1) -> None:
    """Refuse a setting whose estimate exceeds `HEADROOM` of the device's memory, naming the largest batch (in
    units of `rows_per_batch` rows: `n` for sampling) that would fit.

    Raises:
        ConfigError: with the estimate and the batch size that fits.
    """
    if available is None or estimate.total <= HEADROOM * available:
        return
    per_row = estimate.tokens_per_row * estimate.kv_per_token
    fitting = int((HEADROOM * available - estimate.weights) // per_row) // rows_per_batch
    fix = f"lower --batch_size to {fitting}" if fitting >= 1 else "the weights alone do not fit: use a larger device"
    raise ConfigError(
        f"{what}: {estimate.describe()}, more than {HEADROOM:.0%} of the device's {available / GIB:.0f} GiB; {fix} "
        "(the formula: perpo/model/memory.py, docs/scale.md)"
    )


def check_context(config, prompt_tokens: int, max_new_tokens: int, what: str) -> None:
    """Refuse a prompt plus `max_new_tokens` longer than the language model's context.

    Raises:
        ConfigError: naming the three numbers and the fix.
    """
    limit = context_length(config)
    if prompt_tokens >= limit:
        raise ConfigError(
            f"{what}: the prompt alone is {prompt_tokens} tokens (the image's included), and the model's context is "
            f"{limit}: shorten the question (or drop its instruction) to leave room for an answer"
        )
    if prompt_tokens + max_new_tokens > limit:
        raise ConfigError(
            f"{what}: a prompt of {prompt_tokens} tokens (the image's included) + max_new_tokens {max_new_tokens} "
            f"is longer than the model's context of {limit} tokens: lower max_new_tokens to at most "
            f"{max(limit - prompt_tokens, 0)}"
        )


def prompt_tokens(processor, family, question: str, image) -> int:
    """The length of the chat prompt of `question` with `image` (None: text only) as the model receives it."""
    from perpo.model.prompts import chat_prompt

    prompt = chat_prompt(processor, question, with_image=image is not None)
    images = None if image is None else [family.prepare_image(image)]
    return int(processor(images=images, text=[prompt], return_tensors="pt")["input_ids"].shape[1])
