"""Pieces of the fast training path (issue 14): the reference memo and fused LoRA give the numbers they replace."""

from __future__ import annotations

import torch

from perpo.model.logprobs import ListBatch, ReferenceMemo


def _batch(pixels: torch.Tensor, responses=None) -> ListBatch:
    responses = responses or [[[5, 6, 2], [5, 2]], [[7, 2]], [[8, 2], [9, 9, 2]]]
    return ListBatch([[1, 4, 4, 3], [1, 3], [1, 4, 4, 3]], responses, {"pixel_values": pixels}, [True, False, True])


def test_reference_memo_serves_known_lists_only():
    pixels = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    batch = _batch(pixels)
    memo = ReferenceMemo()
    assert memo.get(batch) is None
    logps = torch.tensor([[-1.0, -2.0], [-3.0, 99.0], [-4.0, -5.0]])  # list 1 has one response: slot 2 is padding
    memo.put(batch, logps)
    assert len(memo) == 3
    again = memo.get(_batch(pixels.clone()))
    assert torch.equal(again, torch.tensor([[-1.0, -2.0], [-3.0, 0.0], [-4.0, -5.0]]))

    # Another batch of the same lists in another order and N: rebuilt from the per-list entries.
    reordered = ListBatch(
        [[1, 4, 4, 3], [1, 3]], [[[8, 2], [9, 9, 2]], [[7, 2]]], {"pixel_values": pixels[1:]}, [True, False]
    )
    assert torch.equal(memo.get(reordered), torch.tensor([[-4.0, -5.0], [-3.0, 0.0]]))

    # Any change to what the log-probs depend on is a miss: an image, a response, a prompt.
    other_image = pixels.clone()
    other_image[1, 0, 0, 0] += 1e-3
    assert memo.get(_batch(other_image)) is None
    assert memo.get(_batch(pixels, [[[5, 6, 2], [5, 2]], [[7, 2]], [[8, 2], [9, 2]]])) is None
    shifted = _batch(pixels)
    shifted.prompt_ids[1] = [1, 1, 3]
    assert memo.get(shifted) is None


def _lora_model(seed: int = 0):
    from perpo.embedded.tiny import TinySpec, build_model
    from perpo.model.modeling import apply_lora, disable_dropout

    spec = TinySpec(
        image_size=16, patch_size=4, vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32, text_layers=2,
        text_heads=2, text_intermediate=64, max_positions=128,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = build_model(spec)
    disable_dropout(model)
    model.requires_grad_(False)
    model = apply_lora(model, r=4, alpha=8)
    with torch.no_grad():  # B starts at zero: move it so that the LoRA update is not trivially zero
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    return model


def test_fused_lora_gives_the_same_outputs_gradients_and_merge():
    from perpo.model.modeling import fuse_lora

    plain, fused = _lora_model(), _lora_model()
    assert fuse_lora(fused) == 14  # 7 linear layers x 2 layers
    input_ids = torch.randint(5, 60, (2, 12), generator=torch.Generator().manual_seed(2))

    def run(model):
        model.zero_grad()
        logits = model(input_ids=input_ids).logits
        logits.square().mean().backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        with torch.no_grad(), model.disable_adapter():
            base = model(input_ids=input_ids).logits
        return logits.detach(), grads, base

    logits_a, grads_a, base_a = run(plain)
    logits_b, grads_b, base_b = run(fused)
    torch.testing.assert_close(logits_b, logits_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(base_b, base_a, rtol=0, atol=0)  # adapters off: peft's path, untouched
    assert grads_a.keys() == grads_b.keys() and any("lora_A" in k for k in grads_a)
    for key, grad in grads_a.items():
        torch.testing.assert_close(grads_b[key], grad, rtol=1e-4, atol=1e-6, msg=key)
    merged_a = plain.merge_and_unload().state_dict()
    merged_b = fused.merge_and_unload().state_dict()
    for key, value in merged_a.items():
        torch.testing.assert_close(merged_b[key], value, rtol=0, atol=0, msg=key)


def test_fused_lora_leaves_other_variants_alone():
    from peft import LoraConfig, get_peft_model

    from perpo.embedded.tiny import TinySpec, build_model
    from perpo.model.families import LLAVA
    from perpo.model.modeling import fuse_lora

    model = build_model(TinySpec(image_size=16, patch_size=4, text_hidden=32, text_layers=1, text_heads=2))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=LLAVA.lora_target_regex(["q_proj"]), use_dora=True)
    assert fuse_lora(get_peft_model(model, config)) == 0  # DoRA keeps its own forward
