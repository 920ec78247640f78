"""`perpo.model.families`: each family's facts hold on its tiny model built from config (CPU, random weights)."""

from __future__ import annotations

import pytest
import torch

from perpo.config import ConfigError
from perpo.data.collate import encode_prompts
from perpo.embedded.tiny import FAMILIES as TINY_FAMILIES
from perpo.embedded.tiny import build_family
from perpo.model.families import FAMILIES, family_for_type, family_of
from perpo.model.modeling import apply_lora
from perpo.model.prompts import chat_prompt


def test_every_registered_family_has_a_tiny_model_built_from_config():
    assert set(FAMILIES) == set(TINY_FAMILIES)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def built(request, tiny_spec):
    model, processor = build_family(request.param, tiny_spec)
    return request.param, model, processor


def test_the_family_names_the_model_class_and_the_language_model(built):
    name, model, _ = built
    family = family_of(model)
    assert family.model_type == name and type(model) is family.transformers_class()
    core = family.language_core(model)
    assert core is not None and len(core.layers) > 0


def test_lora_goes_to_the_language_model_only_and_the_projector_trains_fully(built):
    name, model, _ = built
    family = FAMILIES[name]
    peft_model = apply_lora(model, r=2, alpha=4)
    adapted = {n for n, _ in peft_model.named_modules() if n.endswith(".lora_A")}
    assert adapted and all(f".{family.language_model}." in n for n in adapted)
    trained = [n for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n]
    modules = family.trained_modules(model.config)
    assert trained and all(any(f"{m}.modules_to_save" in n for m in modules) for n in trained)
    assert all(any(f"{m}.modules_to_save" in n for n in trained) for m in modules)  # every projector trains
    peft_model.unload()


def test_image_inputs_are_what_the_processor_gives_and_caching_follows_the_pixels(built):
    from PIL import Image

    name, _, processor = built
    family = FAMILIES[name]
    images = [Image.new("RGB", (20, 20), (220, 40, 40)), Image.new("RGB", (17, 40), (40, 200, 40))]
    prompts = [chat_prompt(processor, "the red circle") for _ in images]
    encoded = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    assert set(family.image_inputs) <= set(encoded)  # NeXT / OneVision also give batch_num_images: not needed
    _, together = encode_prompts(processor, prompts, images, family)
    _, alone = encode_prompts(processor, prompts[:1], images[:1], family)
    # The collator caches a list as its own pixel row: only when an image is one [C, H, W] row whatever the batch.
    assert family.per_image_pixels == (
        together["pixel_values"].dim() == 4 and family.image_inputs == ("pixel_values",)
    )
    if family.per_image_pixels:
        assert torch.equal(together["pixel_values"][:1], alone["pixel_values"])


def test_an_unknown_model_type_names_the_supported_families():
    with pytest.raises(ConfigError, match=r"ckpt: model_type 'gpt2' is not a supported family \(llava, llava_next"):
        family_for_type("gpt2", "ckpt")


@pytest.mark.parametrize("size", [(20, 20), (17, 40), (40, 24), (300, 200), (1000, 30)])
def test_answer_pixels_is_the_size_of_the_image_the_processor_makes(built, size):
    """A pixel-box family's frame is the very image its processor hands the model (grid x patch size), a
    relative-box family's its fixed grid (Qwen3-VL: 0-1000); a normalised-box family has none."""
    from PIL import Image

    name, _, processor = built
    family = FAMILIES[name]
    pixels = family.answer_pixels(processor, *size)
    if not family.pixel_boxes:
        assert pixels is None
        return
    if name == "qwen3_vl":
        assert pixels == (1000, 1000)
        return
    grid = processor(images=[Image.new("RGB", size)], text=[chat_prompt(processor, "x")], return_tensors="pt")
    _, rows, cols = grid["image_grid_thw"][0].tolist()
    patch = processor.image_processor.patch_size
    assert pixels == (cols * patch, rows * patch)


def test_each_family_writes_boxes_its_parser_reads_back(built):
    from perpo.objectives.boxes import parse_box

    name, _, processor = built
    family = FAMILIES[name]
    pixels = family.answer_pixels(processor, 300, 200)
    box = (0.12, 0.25, 0.5, 0.75)
    if pixels:  # pixel coordinates are written as whole pixels, in Qwen's JSON
        box = (round(box[0] * pixels[0]), round(box[1] * pixels[1]), round(box[2] * pixels[0]), 150)
        assert family.write_box(box).startswith('[{"bbox_2d": [')
    assert parse_box(family.write_box(box)) == pytest.approx(box)
    assert "{expression}" in family.grounding_template


# The frame each family's answers are in for a 200 x 100 image (None: normalised to [0, 1]).
ANSWER_UNITS = {
    "llava": None,
    "llava_next": None,
    "llava_onevision": None,
    "qwen2_5_vl": (200, 100),
    "qwen3_vl": (1000, 1000),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_reads_back_the_box_it_writes(name):
    family, units = FAMILIES[name], ANSWER_UNITS[name]
    box = (0.25, 0.125, 0.75, 0.625)
    written = family.write_box(box if units is None else tuple(v * units[i % 2] for i, v in enumerate(box)))
    assert family.read_box(written, units) == pytest.approx(box, abs=0.01)  # answers round to 2 digits or 1 px
    assert family.read_box("no box here", units) is None
