"""The `perpo_llava` wrapper in-process on the test-size tiny LLaVA: batching, reproducible best-of-N samples,
documents without an image, stop strings, LoRA adapters."""

from __future__ import annotations

import pytest
from lmms_eval.api.instance import Instance
from PIL import Image

from lmms_tasks.models.perpo_llava import PerpoLlava, truncate_at_stops
from perpo.embedded.tiny import FAMILIES

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


def loglikelihood_request(doc_id: int, continuation) -> Instance:
    def doc_to_visual(doc):
        return [doc["image"]] if doc["image"] is not None else []

    question = QUESTIONS[0] if doc_id == 4 else QUESTIONS[doc_id]
    args = (question, continuation, doc_to_visual, doc_id, "t", "test")
    return Instance("loglikelihood", args, idx=0, metadata={"task": "t", "doc_id": doc_id, "repeats": 1})


@pytest.mark.parametrize("doc_id", [0, 4])  # with and without an image
def test_loglikelihood_ranks_the_greedy_token_first(lm, doc_id):
    """One token: the greedy answer's token is the argmax, so it is greedy and no other token is more likely."""
    first = lm.generate_until([request(doc_id, {**GREEDY, "max_new_tokens": 1})])[0]
    tokenizer = lm.processor.tokenizer
    assert len(tokenizer(first, add_special_tokens=False).input_ids) == 1
    others = [w for w in ("red", "circle", "page", "[", "0.50") if w != first]
    scored = lm.loglikelihood(
        [loglikelihood_request(doc_id, first)] + [loglikelihood_request(doc_id, w) for w in others]
    )
    (best, greedy), rest = scored[0], scored[1:]
    assert greedy and best <= 0.0
    assert all(not g and lp < best for lp, g in rest)
    # the continuation may also be lmms-eval's doc_to_target function
    by_function = lm.loglikelihood([loglikelihood_request(doc_id, lambda doc: first)])
    assert by_function[0][0] == pytest.approx(best)


def test_loglikelihood_of_a_longer_continuation_adds_its_tokens(lm):
    (one, _), (two, greedy) = lm.loglikelihood(
        [loglikelihood_request(0, "red"), loglikelihood_request(0, "red circle")]
    )
    assert two < one <= 0.0 and isinstance(greedy, bool)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_batches_exactly_and_scores_continuations(family, tiny_model_of):
    """The wrapper on each family's tiny model: batched greedy answers equal one-at-a-time ones (images of
    different sizes and a document without one), and a longer continuation adds its tokens' log-probs."""
    path = tiny_model_of(family)
    batched = make(path, batch_size=4).generate_until([request(i, GREEDY) for i in range(5)])
    single = make(path, batch_size=1)
    assert batched == [single.generate_until([request(i, GREEDY)])[0] for i in range(5)]
    for doc_id in (0, 4):
        (one, _), (two, _) = single.loglikelihood(
            [loglikelihood_request(doc_id, "red"), loglikelihood_request(doc_id, "red circle")]
        )
        assert two < one <= 0.0


def test_multi_round_follows_the_task_protocol(lm):
    """Round 0 answers doc_to_messages(doc); later rounds get the answers so far; a terminal payload stops."""
    calls = []

    def doc_to_messages(doc, round_idx=None, previous_output=None, previous_round_info=None):
        calls.append((round_idx, list(previous_output or []), previous_round_info))
        if round_idx is None:
            return messages(doc)
        follow = messages(doc) + [
            {"role": "assistant", "content": [{"type": "text", "text": previous_output[-1]}]},
            {"role": "user", "content": [{"type": "text", "text": "again"}]},
        ]
        return follow, round_idx >= 2, previous_output, {"round": round_idx}

    args = ("ctx", doc_to_messages, dict(GREEDY), 0, "t", "test")
    metadata = {"task": "t", "doc_id": 0, "repeats": 1}
    [answers] = lm.generate_until_multi_round([Instance("generate_until_multi_round", args, idx=0, metadata=metadata)])
    assert len(answers) == 2 and answers[0] == lm.generate_until([request(0, GREEDY)])[0]
    assert [c[0] for c in calls] == [None, 1, 2]
    assert calls[1][1] == answers[:1] and calls[2][1] == answers and calls[2][2] == {"round": 1}
