"""Batched generation: exact per-row sampling (Gumbel-max), top-p, and batch-composition invariance."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from perpo.embedded.tiny import FAMILIES, build_family
from perpo.model.generation import GenerationRequest, GumbelSampler, _top_p_filter, generate, row_seed
from perpo.model.modeling import load_model, load_processor
from perpo.model.prompts import chat_prompt


def test_row_seeds_are_stable_and_distinct():
    assert row_seed(0, "doc-1", 0) == row_seed(0, "doc-1", 0)
    seeds = {row_seed(s, k, i) for s in (0, 1) for k in ("a", "b") for i in range(5)}
    assert len(seeds) == 20 and all(0 <= s < 2**63 for s in seeds)


def test_gumbel_max_samples_follow_the_tempered_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    temperature = 0.5
    rows = 20000
    sampler = GumbelSampler([row_seed(7, "x", i) for i in range(rows)], temperature)
    picks = sampler(None, logits.expand(rows, -1)).argmax(-1)
    frequencies = torch.bincount(picks, minlength=4).float() / rows
    expected = torch.softmax(logits / temperature, -1)
    # Binomial standard error at 20k draws is <= 0.0036; 5 sigma.
    torch.testing.assert_close(frequencies, expected, rtol=0, atol=0.018)
    again = GumbelSampler([row_seed(7, "x", i) for i in range(rows)], temperature)(None, logits.expand(rows, -1))
    assert torch.equal(again.argmax(-1), picks)  # same seeds, same samples


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(_top_p_filter(logits, 0.7))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7 <= 0.8
    assert torch.isfinite(_top_p_filter(logits, 0.5)).tolist() == [[True, False, False, False]]


def _requests(processor, keys):
    images = {"a": Image.new("RGB", (40, 30), (220, 30, 30)), "b": None, "c": Image.new("RGB", (16, 16), (0, 0, 250))}
    return [
        GenerationRequest(
            chat_prompt(processor, f"the red circle {k}", with_image=images[k] is not None), images[k], k
        )
        for k in keys
    ]


def test_samples_do_not_depend_on_batch_composition(tiny_llava):
    model, processor = load_model(tiny_llava, dtype="float32"), load_processor(tiny_llava)
    kwargs = dict(n=3, temperature=0.5, max_new_tokens=6, seed=11)
    together = generate(model, processor, _requests(processor, "abc"), **kwargs)
    alone = [generate(model, processor, _requests(processor, k), **kwargs)[0] for k in "cab"]
    assert together == [alone[1], alone[2], alone[0]]
    assert all(len(set(samples)) > 1 for samples in together)  # T = 0.5 on a random model: varied, not empty
    assert all(text for samples in together for text in samples)
    other_seed = generate(model, processor, _requests(processor, "abc"), **(kwargs | {"seed": 12}))
    assert other_seed != together


def test_prompt_cache_shared_by_n_samples_gives_what_one_sample_alone_gives(base_model_asset, synth_data):
    """n > 1 encodes each prompt once and copies its cache; sample 0 must equal the n = 1 path's (no sharing).

    Run on the warmed-up model (peaked logits, so a wrong position would change the answers) with expressions of
    different lengths, so rows are left-padded by different amounts and a text-only row joins the batch.
    """
    from perpo.io import load_image, read_jsonl
    from perpo.model.prompts import grounding_question

    model, processor = load_model(base_model_asset, dtype="float32"), load_processor(base_model_asset)
    rows = sorted(read_jsonl(synth_data / "synth_val.jsonl"), key=lambda r: len(r["expression"]))
    rows = [rows[0], rows[-1], rows[len(rows) // 2]]
    requests = [
        GenerationRequest(
            chat_prompt(processor, grounding_question(r["expression"])), load_image(synth_data / r["image"]), r["id"]
        )
        for r in rows
    ] + _requests(processor, "b")
    kwargs = dict(temperature=0.5, max_new_tokens=24, seed=3)
    shared = generate(model, processor, requests, n=4, **kwargs)
    single = generate(model, processor, requests, n=1, **kwargs)
    assert [samples[0] for samples in shared] == [samples[0] for samples in single]
    assert all(text.startswith("[") for samples in shared[:3] for text in samples)


def test_greedy_is_deterministic_and_handles_text_only_rows(tiny_llava):
    model, processor = load_model(tiny_llava, dtype="float32"), load_processor(tiny_llava)
    first = generate(model, processor, _requests(processor, "abc"), max_new_tokens=5)
    second = generate(model, processor, _requests(processor, "bca"), max_new_tokens=5)
    assert [r[0] for r in first] == [second[2][0], second[0][0], second[1][0]]
    assert all(len(r) == 1 for r in first)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_samples_per_row_and_its_greedy_rows_agree(family, tiny_spec):
    """Each family's tiny model: seeded samples do not depend on the batch, and n greedy rows equal one row."""
    model, processor = build_family(family, tiny_spec)
    model.eval()
    kwargs = dict(n=3, temperature=0.5, max_new_tokens=5, seed=11)
    together = generate(model, processor, _requests(processor, "abc"), **kwargs)
    alone = [generate(model, processor, _requests(processor, k), **kwargs)[0] for k in "ca"]
    assert [together[0], together[2]] == [alone[1], alone[0]]
    greedy = generate(model, processor, _requests(processor, "abc"), n=2, max_new_tokens=5)
    single = generate(model, processor, _requests(processor, "abc"), n=1, max_new_tokens=5)
    assert [rows[0] for rows in greedy] == [rows[0] for rows in single] and all(a == b for a, b in greedy)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_the_checkpoints_generation_config_does_not_shape_the_answers(tiny_llava, temperature):
    """A checkpoint may ship a repetition penalty (Qwen2.5-VL: 1.05) or a no-repeat rule; generate() would apply
    them to every option it is not given. Neither changes perpo's answers, and the config is left as it was."""
    model, processor = load_model(tiny_llava, dtype="float32"), load_processor(tiny_llava)
    requests = _requests(processor, "abc")
    plain = generate(model, processor, requests, n=2, temperature=temperature, max_new_tokens=12)
    model.generation_config.repetition_penalty = 50.0
    model.generation_config.no_repeat_ngram_size = 1
    shaped = generate(model, processor, requests, n=2, temperature=temperature, max_new_tokens=12)
    assert shaped == plain
    assert model.generation_config.repetition_penalty == 50.0
    # the premise: generate() left to the checkpoint's config would answer otherwise
    inputs = processor(images=[requests[0].image], text=[requests[0].prompt], return_tensors="pt")
    raw = model.generate(**inputs, do_sample=False, max_new_tokens=12)
    model.generation_config.repetition_penalty, model.generation_config.no_repeat_ngram_size = 1.0, 0
    neutral = model.generate(**inputs, do_sample=False, max_new_tokens=12)
    assert not torch.equal(raw, neutral)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_a_qwen_image_is_encoded_once_for_its_n_samples(family, tiny_spec, monkeypatch):
    """Qwen-VL's n rows of an instruction each carry the image (M-RoPE: no cache copy), but the vision tower sees
    each image once, and the samples are those of every copy encoded."""
    model, processor = build_family(family, tiny_spec)
    model.eval()
    seen = []
    model.model.visual.patch_embed.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    requests = _requests(processor, "ac")
    kwargs = dict(n=4, temperature=0.5, max_new_tokens=5, seed=2)
    samples = generate(model, processor, requests, **kwargs)
    images, prompts = [r.image for r in requests], [r.prompt for r in requests]
    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    assert seen == [inputs["pixel_values"].shape[0]]  # one copy of each image's patches, not four
    from perpo.model.families.base import Family
    from perpo.model.families.qwen2_5_vl import QwenVLFamily

    monkeypatch.setattr(QwenVLFamily, "images_encoded_once", Family.images_encoded_once)  # every copy encoded
    assert generate(model, processor, requests, **kwargs) == samples
    assert seen[1] == 4 * seen[0]
