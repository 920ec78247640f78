"""Trained weights of a bf16 model stay float32 where no DeepSpeed optimizer holds master weights, and a merged
export keeps the base checkpoint's dtype."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from perpo.embedded.tiny import build_family
from perpo.model.modeling import apply_lora, checkpoint_dtype, export_merged, master_dtype


@pytest.fixture
def bf16_model(tiny_spec):
    model, processor = build_family("llava", tiny_spec)
    return model.to(torch.bfloat16), processor


def _projector(model) -> torch.nn.Module:
    return next(m for n, m in model.named_modules() if n.endswith("modules_to_save.default"))


def _one_adamw_step(model, lr: float = 5e-6) -> float:
    """The share of the projector copy's weights that one AdamW step at `lr` changes."""
    projector = _projector(model)
    weight = next(projector.parameters())
    before = weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    optimizer.step()
    return (weight.detach() != before).float().mean().item()


def test_master_dtype_is_float32_for_a_half_model_outside_deepspeed(bf16_model):
    model, _ = bf16_model
    assert master_dtype(model, SimpleNamespace(deepspeed=None)) is torch.float32
    assert master_dtype(model, SimpleNamespace(deepspeed="zero3.json")) is None  # DeepSpeed keeps fp32 masters
    assert master_dtype(model.float(), SimpleNamespace(deepspeed=None)) is None


def test_float32_trained_weights_take_the_papers_learning_rate_where_bf16_ones_round_it_away(tiny_spec):
    kept, _ = build_family("llava", tiny_spec)
    kept = apply_lora(kept.to(torch.bfloat16), r=4, alpha=8, trainable_dtype=torch.float32)
    trained = {p.dtype for p in kept.parameters() if p.requires_grad}
    frozen = {p.dtype for p in kept.parameters() if not p.requires_grad}
    assert trained == {torch.float32} and frozen == {torch.bfloat16}
    assert _one_adamw_step(kept) > 0.99

    plain, _ = build_family("llava", tiny_spec)
    plain = apply_lora(plain.to(torch.bfloat16), r=4, alpha=8)
    assert _one_adamw_step(plain) < 0.2  # most 5e-6 steps are below half a bf16 spacing of the weight


def test_a_float32_projector_copy_runs_in_a_bf16_model_outside_autocast(bf16_model, tiny_spec):
    model, processor = bf16_model
    model = apply_lora(model, r=4, alpha=8, trainable_dtype=torch.float32)
    from PIL import Image

    inputs = processor(images=[Image.new("RGB", (40, 30), (200, 10, 10))], text=["<image> the"], return_tensors="pt")
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    logits = model(**inputs).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_export_writes_the_base_checkpoints_dtype(bf16_model, tmp_path):
    model, processor = bf16_model
    base = tmp_path / "base"
    model.save_pretrained(base)
    processor.save_pretrained(base)
    assert checkpoint_dtype(base) == "bfloat16"
    adapter = tmp_path / "adapter"
    apply_lora(model, r=4, alpha=8).save_pretrained(adapter)
    json_path = adapter / "adapter_config.json"
    json_path.write_text(json.dumps(json.loads(json_path.read_text()) | {"base_model_name_or_path": str(base)}))
    for dtype, expected in (("auto", "BF16"), ("float32", "F32")):
        out = export_merged(adapter, tmp_path / f"merged_{dtype}", dtype=dtype)
        with safe_open(out / "model.safetensors", "pt") as handle:
            dtypes = {str(handle.get_slice(k).get_dtype()) for k in handle.keys()}
        assert dtypes == {expected}, dtype
