"""`ListCollator(cache=True)` encodes each list once and gives the very batches the uncached collator gives."""

from __future__ import annotations

import random

import pytest
import torch

from perpo.data.collate import ListCollator
from perpo.io import read_jsonl
from perpo.model.families import LLAVA
from perpo.model.prompts import grounding_question
from perpo.objectives.boxes import format_box, gt_box_in_frame

N = 3


def _records(synth_data, count=10):
    rng = random.Random(0)
    records = []
    for i, row in enumerate(read_jsonl(synth_data / "synth_train.jsonl")[:count]):
        gt = gt_box_in_frame(row["bbox"], row["width"], row["height"], "padded")
        records.append(
            {
                "id": row["id"],
                "image": "" if i == 3 else str(synth_data / row["image"]),  # one text-only list
                "question": grounding_question(row["expression"]),
                "answer": format_box(gt),
                "responses": [format_box([min(max(v + rng.uniform(-0.2, 0.2), 0), 1) for v in gt]) for _ in range(N)],
                "rewards": [rng.random() for _ in range(N)],
            }
        )
    return records


def _same(a: dict, b: dict) -> None:
    assert a["batch"].prompt_ids == b["batch"].prompt_ids
    assert a["batch"].response_ids == b["batch"].response_ids
    assert a["batch"].has_image == b["batch"].has_image
    assert a["batch"].images.keys() == b["batch"].images.keys()
    for key, value in a["batch"].images.items():
        assert torch.equal(value, b["batch"].images[key]), key
    assert torch.equal(a["rewards"], b["rewards"]) and torch.equal(a["mask"], b["mask"]) and a["ids"] == b["ids"]


def _epochs(records, plain, cached, epochs=3):
    rng = random.Random(1)
    for _ in range(epochs):
        order = records[:]
        rng.shuffle(order)
        for start in range(0, len(order), 4):  # batches of 4, then 2: compositions change every epoch
            chunk = order[start : start + 4]
            _same(plain(chunk), cached(chunk))


@pytest.mark.parametrize("on_answers", [False, True])
def test_cached_batches_equal_fresh_ones_every_epoch(on_answers, tiny_llava, synth_data):
    from perpo.model.modeling import load_processor

    processor = load_processor(tiny_llava)
    records = _records(synth_data)
    plain = ListCollator(processor, synth_data, N, family=LLAVA, on_answers=on_answers)
    cached = ListCollator(processor, synth_data, N, family=LLAVA, on_answers=on_answers, cache=True)
    _epochs(records, plain, cached)
    assert cached.cache and len(cached._encoded) == len(records)  # every list encoded once, then reused


def test_on_answers_the_batch_is_each_lists_answer_alone_with_reward_0(tiny_llava, synth_data):
    """What the SFT loss trains on, decided by the collator alone: [prompt][answer EOS], N = 1, reward 0."""
    from perpo.data.collate import encode_responses
    from perpo.model.modeling import load_processor

    processor = load_processor(tiny_llava)
    records = _records(synth_data)[:3]
    answers = ListCollator(processor, synth_data, N, family=LLAVA, on_answers=True)(records)
    lists = ListCollator(processor, synth_data, N, family=LLAVA)(records)
    assert answers["batch"].prompt_ids == lists["batch"].prompt_ids
    expected = encode_responses(processor.tokenizer, [r["answer"] for r in records])
    assert answers["batch"].response_ids == [[a] for a in expected]
    assert answers["rewards"].tolist() == [[0.0]] * 3 and answers["mask"].all() and answers["mask"].shape == (3, 1)


def test_cache_stops_growing_at_its_memory_limit(tiny_llava, synth_data):
    from perpo.model.modeling import load_processor

    processor = load_processor(tiny_llava)
    records = _records(synth_data)
    plain = ListCollator(processor, synth_data, N, family=LLAVA)
    cached = ListCollator(
        processor, synth_data, N, family=LLAVA, cache=True, cache_bytes=1
    )  # full after the first image
    _epochs(records, plain, cached, epochs=2)
    assert 1 <= len(cached._encoded) <= 2  # the first list with an image (and a text-only one before it)


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_batch_dependent_image_inputs_switch_the_cache_off(family, tiny_spec, synth_data):
    """LLaVA-NeXT / OneVision pad image patches per batch: the collator then encodes whole batches as before."""
    from perpo.embedded.tiny import build_family

    _, processor = build_family(family, tiny_spec)
    records = _records(synth_data, count=6)
    plain = ListCollator(processor, synth_data, N, family=LLAVA)
    cached = ListCollator(processor, synth_data, N, family=LLAVA, cache=True)
    _epochs(records, plain, cached, epochs=2)
    assert not cached.cache
