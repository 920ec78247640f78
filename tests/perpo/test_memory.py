"""`perpo.model.memory`: the KV-cache formula on the public 7B configs, and the refusals it drives."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, Qwen2Config

from perpo.config import ConfigError
from perpo.model.memory import GIB, MemoryEstimate, check_context, check_fits, kv_bytes_per_token

VICUNA_7B = LlamaConfig(num_hidden_layers=32, num_attention_heads=32, hidden_size=4096, max_position_embeddings=4096)
QWEN2_5_7B = Qwen2Config(num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, hidden_size=3584)


def test_kv_per_token_of_the_public_7b_language_models():
    assert kv_bytes_per_token(VICUNA_7B) == 512 * 1024  # 2 x 32 x 32 x 128 x 2 bytes: LLaVA-1.5-7B, LLaVA-NeXT-7B
    assert kv_bytes_per_token(QWEN2_5_7B) == 56 * 1024  # 2 x 28 x 4 x 128 x 2: grouped-query attention
    assert kv_bytes_per_token(VICUNA_7B, value_bytes=4) == 1024 * 1024


def test_a_batch_that_does_not_fit_is_refused_with_the_batch_that_would():
    # the paper's sampling setting on LLaVA-1.5-7B: 16 instructions x N = 20, 616 + 32 tokens per row
    estimate = MemoryEstimate(weights=int(12.6 * GIB), rows=320, tokens_per_row=648, kv_per_token=512 * 1024)
    assert estimate.kv_cache / GIB == pytest.approx(101.25)
    with pytest.raises(
        ConfigError, match=r"KV cache 320 rows x 648 tokens x 512 KiB = 101.2 GiB.*lower --batch_size to 8"
    ):
        check_fits(estimate, 80 * GIB, "perpo sample", rows_per_batch=20)
    check_fits(estimate, None, "perpo sample")  # a CPU: nothing to compare with
    half = MemoryEstimate(estimate.weights, 160, 648, 512 * 1024)
    check_fits(half, 80 * GIB, "perpo sample", rows_per_batch=20)


def test_a_prompt_beyond_the_context_is_refused():
    check_context(VICUNA_7B, 622, 3474, "perpo eval")
    with pytest.raises(
        ConfigError,
        match="622 tokens .* max_new_tokens 4096 .* context of 4096 tokens: lower max_new_tokens to at most 3474",
    ):
        check_context(VICUNA_7B, 622, 4096, "perpo eval")


def test_a_prompt_that_fills_the_context_alone_asks_for_a_shorter_question():
    with pytest.raises(ConfigError, match="the prompt alone is 5000 tokens .* context is 4096: shorten the question"):
        check_context(VICUNA_7B, 5000, 64, "perpo sample")
