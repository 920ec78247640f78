"""The tiny LLaVA: tokenizer, processor, from-config model, save/load round trip, generation."""

from __future__ import annotations

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from perpo.embedded.tiny import COORDINATE_TOKENS, EOS, IMAGE, UNK, build_tokenizer, build_vocab
from perpo.model.prompts import chat_prompt, grounding_question


def test_vocab_layout_is_stable():
    vocab = build_vocab()
    assert [vocab[t] for t in ("<pad>", "<s>", "</s>", "<unk>", "<image>")] == [0, 1, 2, 3, 4]
    assert len(set(vocab.values())) == len(vocab)


def test_each_coordinate_is_one_token_and_box_text_round_trips():
    tokenizer = build_tokenizer()
    text = "[0.00, 0.05, 0.99, 1.00]"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens == ["[", "0.00", ",", " ", "0.05", ",", " ", "0.99", ",", " ", "1.00", "]"]
    assert tokenizer.decode(ids) == text
    assert len(COORDINATE_TOKENS) == 101


def test_any_ascii_text_round_trips_exactly():
    tokenizer = build_tokenizer()
    text = "Th~ 10.00 0.5 theres the  RED circle!\n{[(0.123)]}"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    # Outside printable ASCII + newline (accents, tabs, CJK) a character becomes <unk>.
    assert tokenizer.decode(tokenizer("é\t汉", add_special_tokens=False)["input_ids"]) == UNK * 3
    # Words of the prompt vocabulary are single tokens; glued words are spelled out.
    assert "the" in tokenizer.convert_ids_to_tokens(ids)
    assert "theres" not in tokenizer.get_vocab()


def test_prompts_and_expressions_have_no_unknown_tokens(synth_data):
    from perpo.io import read_jsonl

    tokenizer = build_tokenizer()
    for row in read_jsonl(synth_data / "synth_train.jsonl"):
        ids = tokenizer(grounding_question(row["expression"]), add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids, row["expression"]


def test_chat_template_matches_llava_15_layout(tiny_llava):
    processor = AutoProcessor.from_pretrained(tiny_llava)
    prompt = chat_prompt(processor, "Q?")
    assert prompt == f"USER: {IMAGE}\nQ? ASSISTANT: "
    assert chat_prompt(processor, "Q?", with_image=False) == "USER: Q? ASSISTANT: "
    full = processor.apply_chat_template(
        [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "[0.10, 0.20, 0.30, 0.40]"}]},
        ],
        tokenize=False,
    )
    assert full == f"USER: {IMAGE}\nQ? ASSISTANT: [0.10, 0.20, 0.30, 0.40]{EOS}"


def test_saved_model_loads_with_from_pretrained_and_expands_image_tokens(tiny_llava, tiny_spec):
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava)
    processor = AutoProcessor.from_pretrained(tiny_llava)
    image = Image.new("RGB", (40, 24), (255, 0, 0))
    inputs = processor(images=[image], text=[chat_prompt(processor, "Q?")], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, tiny_spec.image_size, tiny_spec.image_size)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == tiny_spec.image_tokens
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[-1] == len(build_vocab())
    assert torch.isfinite(logits).all()


def test_warmed_up_asset_answers_a_synthetic_image_with_a_box(base_model_asset, synth_data):
    from perpo.io import read_jsonl
    from perpo.model.generation import GenerationRequest, generate
    from perpo.objectives.boxes import box_iou, gt_box_in_frame, parse_box

    model = LlavaForConditionalGeneration.from_pretrained(base_model_asset, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(base_model_asset)
    rows = read_jsonl(synth_data / "synth_val.jsonl")
    requests = [
        GenerationRequest(
            chat_prompt(processor, grounding_question(r["expression"])), Image.open(synth_data / r["image"]), r["id"]
        )
        for r in rows
    ]
    answers = [a for (a,) in generate(model, processor, requests, max_new_tokens=24)]
    boxes = [parse_box(a) for a in answers]
    assert all(b is not None for b in boxes), answers
    ious = [
        box_iou(b, gt_box_in_frame(r["bbox"], r["width"], r["height"], "padded"))
        for b, r in zip(boxes, rows, strict=True)
    ]
    assert sum(iou >= 0.5 for iou in ious) >= 2, ious  # the warm-up did teach it: far above chance
