"""The attention that the tree layout runs list by list (`perpo_lists_sdpa`, registered with transformers), and
the last decoder layer cut down to the positions whose log-probs are needed.
"""

from __future__ import annotations

import sys

import torch

from perpo.model.logprobs.batch import language_core

LISTS_ATTENTION = "perpo_lists_sdpa"


def _lists_attention(module, query, key, value, attention_mask, perpo_spans=None, perpo_keep=None, **kwargs):
    """SDPA, list by list when the lists of a batch are laid end to end in one unpadded row (`perpo_spans`).

    Without `perpo_spans` it is transformers' SDPA attention unchanged (generation, evaluation, other callers).
    With it, `attention_mask` holds one mask per list ([L, 1, T_l, T_l], right-padded to the longest list) and list
    l attends within its own span [a, b) of the row only: no padding tokens, and attention costs Σ T_l² instead of
    L × max T_l².
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if perpo_spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    sizes = [b - a for a, b in perpo_spans]  # the spans tile the row: split (one cat in backward), not slices
    outputs = [
        sdpa_attention_forward(module, q, k, v, attention_mask[i : i + 1, :, :size, :size], **kwargs)[0]
        for i, (q, k, v, size) in enumerate(
            zip(query.split(sizes, 2), key.split(sizes, 2), value.split(sizes, 2), sizes, strict=True)
        )
    ]
    return torch.cat(outputs, dim=1), None  # [1, T, heads, head_dim]


def use_lists_attention(model) -> bool:
    """Route the language model's SDPA attention through `_lists_attention` (idempotent); False if not SDPA.

    The switch is permanent (so that activation checkpointing, which re-runs layers during the backward pass,
    sees it too) and changes nothing for callers that do not pass `perpo_spans`: their masks are built and their
    attention computed by transformers' SDPA functions as before.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    language_model = language_core(model)
    if language_model is None:
        return False
    config = language_model.config
    if config._attn_implementation == LISTS_ATTENTION:
        return True
    if config._attn_implementation != "sdpa":
        return False
    if LISTS_ATTENTION not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(LISTS_ATTENTION, _lists_attention)
        AttentionMaskInterface.register(LISTS_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    config._attn_implementation = LISTS_ATTENTION
    return True


def _last_layer_forward(self, hidden_states, perpo_keep=None, **kwargs):
    """A Llama decoder layer that, given `perpo_keep`, computes its output at the kept positions only.

    Installed on the last layer by `_prune_last_layer`. The last layer's output is read only where a response token
    is predicted, so its queries, attention output, o_proj and MLP run on those rows; keys and values still cover
    every position (the kept queries attend to them). Same operations in the same order as
    `LlamaDecoderLayer.forward` on the kept rows. Without `perpo_keep`: the layer's own forward.
    """
    if perpo_keep is None:
        return type(self).forward(self, hidden_states, **kwargs)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    index, keep_sizes, masks = perpo_keep  # [K] kept rows, kept rows per list, [L, 1, K_l max, T_l max] their masks
    sizes = [b - a for a, b in kwargs["perpo_spans"]]
    cos, sin = kwargs["position_embeddings"]  # [1, T, head_dim]
    attention = self.self_attn
    rotate_half = sys.modules[type(attention).__module__].rotate_half
    T, K, head = hidden_states.shape[1], index.numel(), attention.head_dim
    x = self.input_layernorm(hidden_states)
    q = attention.q_proj(x[:, index]).view(1, K, -1, head).transpose(1, 2)
    k = attention.k_proj(x).view(1, T, -1, head).transpose(1, 2)
    v = attention.v_proj(x).view(1, T, -1, head).transpose(1, 2)
    cos_q, sin_q = cos[:, index].unsqueeze(1), sin[:, index].unsqueeze(1)
    q = (q * cos_q) + (rotate_half(q) * sin_q)
    k = (k * cos.unsqueeze(1)) + (rotate_half(k) * sin.unsqueeze(1))
    outputs = [
        sdpa_attention_forward(
            attention, q_l, k_l, v_l, masks[i : i + 1, :, :kept, :size], dropout=0.0, scaling=attention.scaling
        )[0]
        for i, (q_l, k_l, v_l, kept, size) in enumerate(
            zip(q.split(keep_sizes, 2), k.split(sizes, 2), v.split(sizes, 2), keep_sizes, sizes, strict=True)
        )
    ]
    attended = torch.cat(outputs, dim=1).reshape(1, K, -1).contiguous()
    hidden = hidden_states[:, index] + attention.o_proj(attended)
    return hidden + self.mlp(self.post_attention_layernorm(hidden))


def _prune_last_layer(model) -> bool:
    """Install `_last_layer_forward` on the language model's last layer (idempotent); False where it does not
    apply: not exactly a `LlamaDecoderLayer` (Llama / Vicuna: LLaVA-1.5 and the tiny model), or a layer whose
    forward something else (accelerate's offload hooks) already wraps."""
    import types

    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    layers = getattr(language_core(model), "layers", None)
    if not layers:
        return False
    last = layers[-1]
    if getattr(last, "_perpo_pruned", False):
        return True
    if type(last) is not LlamaDecoderLayer or "forward" in vars(last) or hasattr(last, "_hf_hook"):
        return False
    last.forward = types.MethodType(_last_layer_forward, last)
    last._perpo_pruned = True
    return True
