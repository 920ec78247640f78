"""The `perpo_llava` wrapper in-process on the test-size tiny LLaVA: batching, reproducible best-of-N samples,
documents without an image, stop strings, LoRA adapters."""

from __future__ import annotations

import pytest
from lmms_eval.api.instance import Instance
from PIL import Image

from lmms_tasks.models.perpo_llava import PerpoLlava, truncate_at_stops

GREEDY = {"max_new_tokens": 6, "temperature": 0.0, "do_sample": False, "until": []}
SAMPLED = {"max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0, "do_sample": True, "until": []}
QUESTIONS = ["the red circle", "the blue square left of the green triangle", "the yellow triangle", "page"]


def messages(doc: dict) -> list[dict]:
    content = [{"type": "image", "url": doc["image"]}] if doc["image"] is not None else []
    return [{"role": "user", "content": [*content, {"type": "text", "text": doc["question"]}]}]


def make(tiny_llava, **kwargs) -> PerpoLlava:
    lm = PerpoLlava(pretrained=str(tiny_llava), device="cpu", max_new_tokens=6, **kwargs)
    colours = [(200, 30, 30), (30, 30, 200), (220, 200, 20), (255, 255, 255)]
    docs = [
        {"question": q, "image": Image.new("RGB", (24 + 8 * i, 16), c)}
        for i, (q, c) in enumerate(zip(QUESTIONS, colours, strict=True))
    ]
    docs.append({"question": "the red circle", "image": None})  # a no-image document
    lm.task_dict = {"t": {"test": docs}}
    return lm


def request(doc_id: int, gen_kwargs: dict, repeats: int = 1) -> Instance:
    args = ("ctx", messages, dict(gen_kwargs), doc_id, "t", "test")
    return Instance("generate_until", args, idx=0, metadata={"task": "t", "doc_id": doc_id, "repeats": repeats})


@pytest.fixture(scope="module")
def lm(tiny_llava):
    return make(tiny_llava, batch_size=4)


def test_batched_greedy_equals_one_at_a_time(lm, tiny_llava):
    batched = lm.generate_until([request(i, GREEDY) for i in range(5)])
    single = make(tiny_llava, batch_size=1)
    assert batched == [single.generate_until([request(i, GREEDY)])[0] for i in range(5)]
    assert all(isinstance(a, str) for a in batched)


def test_repeats_give_distinct_reproducible_samples(lm, tiny_llava):
    """The evaluator passes the same Instance N times (repeats); each copy must get its own sample."""
    requests = [r for i in range(3) for r in [request(i, SAMPLED, 4)] * 4]
    first = lm.generate_until(requests)
    assert len(first) == 12 and len(set(first[:4])) > 1
    assert lm.generate_until(requests) == first
    other_batching = make(tiny_llava, batch_size=5).generate_until(list(reversed(requests)))
    assert sorted(other_batching) == sorted(first)
    assert other_batching[8:12] == first[:4]  # the i-th copy of doc 0 gets sample i in any batching
    reseeded = make(tiny_llava, batch_size=4, seed=1).generate_until(requests)
    assert reseeded != first


def test_greedy_repeats_are_identical(lm):
    answers = lm.generate_until([request(1, GREEDY, 3)] * 3)
    assert len(set(answers)) == 1


def test_documents_without_an_image_are_answered(lm):
    prompt, image = lm._prompt_and_image(messages(lm.task_dict["t"]["test"][4]))
    assert image is None and "<image>" not in prompt and prompt.startswith("USER: the red circle")
    with_image, _ = lm._prompt_and_image(messages(lm.task_dict["t"]["test"][0]))
    assert with_image.startswith("USER: <image>\n")
    mixed = lm.generate_until([request(4, GREEDY), request(0, GREEDY), request(4, SAMPLED)])
    assert len(mixed) == 3 and all(isinstance(a, str) for a in mixed)


def test_stop_strings():
    assert truncate_at_stops("[0.1, 0.2]\n\nmore", ["\n\n"]) == "[0.1, 0.2]"
    assert truncate_at_stops("a STOP b END", ["END", "STOP"]) == "a "
    assert truncate_at_stops("abc", []) == truncate_at_stops("abc", None) == truncate_at_stops("abc", [""]) == "abc"
    assert truncate_at_stops("abc", "b") == "a"


def test_bad_arguments(tiny_llava, lm):
    with pytest.raises(TypeError, match="unknown model_args \\['devcie'\\]"):
        PerpoLlava(pretrained=str(tiny_llava), devcie="cpu")
    with pytest.raises(ValueError, match="num_beams"):
        lm.generate_until([request(0, {**GREEDY, "num_beams": 3})])
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        PerpoLlava(pretrained=str(tiny_llava), device="cpu", batch_size="auto")
    image = lm.task_dict["t"]["test"][0]["image"]
    two = [{"role": "user", "content": [{"type": "image", "url": image}] * 2 + [{"type": "text", "text": "a"}]}]
    with pytest.raises(ValueError, match="at most one image per document, got 2"):
        lm._prompt_and_image(two)


def test_lora_adapter_loads_and_merges(tiny_llava, tmp_path):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import LlavaForConditionalGeneration

    base = LlavaForConditionalGeneration.from_pretrained(tiny_llava)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # a non-trivial adapter
    peft_model.save_pretrained(tmp_path / "adapter")
    plain = make(tiny_llava)
    adapted = make(tiny_llava, adapter=str(tmp_path / "adapter"))
    merged = make(tiny_llava, adapter=str(tmp_path / "adapter"), merge_adapter=True)
    assert isinstance(adapted.model, PeftModel) and not isinstance(merged.model, PeftModel)
    key = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.model.state_dict()[key], plain.model.state_dict()[key])
    requests = [request(i, GREEDY) for i in range(5)]
    assert adapted.generate_until(requests) == merged.generate_until(requests)
