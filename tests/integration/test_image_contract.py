"""One image contract: a non-square photo reaches LLaVA-1.5 as the same padded square in every path.

The stand-in has llava-1.5-7b-hf's image processor (a `CLIPImageProcessor` that resizes the shortest edge and
centre-crops, scaled to the tiny side), so a path that handed the raw photo to the processor would show the model
the middle of the photo instead. Each path is run as the commands run it, and the pixel values that reach the
vision tower are recorded by a forward hook.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from perpo.data.collate import ListCollator
from perpo.data.schema import dump_record
from perpo.model.families import LLAVA
from perpo.model.modeling import load_model, load_processor
from perpo.model.prompts import grounding_question
from perpo.objectives.boxes import to_padded_frame

pytestmark = pytest.mark.slow

SIDE = 64
PHOTOS = {"wide": (64, 48), "tall": (48, 64)}  # 4:3 and 3:4, like COCO's landscape and portrait photos
OBJECT = (230, 40, 40)


def _photo(width: int, height: int) -> tuple[Image.Image, list[float]]:
    """A photo with a red object at one end of its long side (a centre crop cuts it off) and its pixel box."""
    image = Image.new("RGB", (width, height), (40, 120, 60))
    box = [2, 2, 12, 12] if width > height else [2, height - 12, 12, height - 2]
    ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=OBJECT)
    return image, [float(v) for v in box]


def _padded_by_hand(image: Image.Image) -> Image.Image:
    """LLaVA-1.5's square, written out here without the project's helper: CLIP-mean fill, centred paste."""
    width, height = image.size
    side = max(width, height)
    square = Image.new("RGB", (side, side), (122, 116, 104))
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("photos")
    out = {}
    for name, (width, height) in PHOTOS.items():
        image, box = _photo(width, height)
        image.save(root / f"{name}.png")
        _padded_by_hand(image).save(root / f"{name}_padded.png")
        out[name] = {"root": root, "box": box, "width": width, "height": height}
    return out


@pytest.fixture(scope="module")
def standin(tiny_llava):
    processor = load_processor(str(tiny_llava))
    assert type(processor.image_processor).__name__.startswith("CLIPImageProcessor")
    assert processor.image_processor.do_center_crop and not getattr(processor.image_processor, "do_pad", False)
    return tiny_llava, processor, load_model(str(tiny_llava), dtype="float32")


def _expected(processor, root: Path, name: str) -> torch.Tensor:
    return processor(images=[Image.open(root / f"{name}_padded.png")], text=["<image>"], return_tensors="pt")[
        "pixel_values"
    ]


@contextmanager
def seen_pixels():
    """Every `pixel_values` tensor a CLIP vision tower is called with, in call order."""
    seen: list[torch.Tensor] = []

    def hook(module, args):
        if type(module).__name__ == "CLIPVisionModel" and args:
            seen.append(args[0].detach().float().clone())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _record(name: str, photo: dict, image: str) -> dict:
    box = to_padded_frame(photo["box"], photo["width"], photo["height"])
    return {
        "id": name, "task": "grounding", "image": image, "question": grounding_question("the red square"),
        "answer": "[0.00, 0.00, 0.10, 0.10]", "target": list(box), "frame": "padded",
        "meta": {"width": photo["width"], "height": photo["height"], "bbox": photo["box"]},
    }  # fmt: skip


def test_the_centre_crop_would_show_another_image(standin, photos):
    """The premise: this processor on the raw photo gives other pixels than on the padded one."""
    _, processor, _ = standin
    for name, photo in photos.items():
        raw = processor(images=[Image.open(photo["root"] / f"{name}.png")], text=["<image>"], return_tensors="pt")
        assert not torch.equal(raw["pixel_values"], _expected(processor, photo["root"], name))


def test_the_target_box_frames_the_object_in_the_image_the_model_sees(photos):
    for name, photo in photos.items():
        seen = LLAVA.prepare_image(Image.open(photo["root"] / f"{name}.png").convert("RGB"))
        assert seen.size == (SIDE, SIDE)
        x1, y1, x2, y2 = (round(v * SIDE) for v in _record(name, photo, "")["target"])
        assert set(seen.crop((x1, y1, x2, y2)).getdata()) == {OBJECT}


def test_sampling_on_a_photo_equals_sampling_on_it_padded_by_hand(standin, photos, tmp_path):
    from perpo.sampling.sample import SampleConfig, run_sample

    model_dir, processor, _ = standin
    outputs = {}
    for variant in ("", "_padded"):
        instructions = tmp_path / f"instructions{variant}.jsonl"
        instructions.write_text(
            "".join(
                dump_record(_record(name, p, str(p["root"] / f"{name}{variant}.png"))) + "\n"
                for name, p in photos.items()
            )
        )
        out = tmp_path / f"samples{variant}.jsonl"
        cfg = SampleConfig(
            model=str(model_dir), instructions=str(instructions), out=str(out), n=8, temperature=0.5,
            max_new_tokens=8, device="cpu", dtype="float32", progress=False,
        )  # fmt: skip
        with seen_pixels() as seen:
            run_sample(cfg)
        from perpo.io import read_jsonl

        outputs[variant] = [r["responses"] for r in read_jsonl(out)]
        expected = torch.cat([_expected(processor, p["root"], name) for name, p in photos.items()])
        assert torch.equal(seen[0], expected)  # the prompt pass of the one batch
    assert outputs[""] == outputs["_padded"]
    assert all(len(set(r)) > 1 for r in outputs[""])  # real samples, not one answer repeated


def test_training_collator_heldout_vllm_grpo_and_the_task_see_the_padded_photo(standin, photos):
    from lmms_eval.api.instance import Instance

    from lmms_tasks.grounding import doc_to_visual
    from lmms_tasks.models.perpo_llava import PerpoLlava
    from perpo.model.quickeval import evaluate_grounding
    from perpo.sampling.backends import SampleRequest
    from perpo.sampling.vllm_backend import VLLMBackend
    from perpo.training.grpo import prompt_dataset

    model_dir, processor, model = standin
    names = list(photos)
    root = photos[names[0]]["root"]
    expected = torch.cat([_expected(processor, root, name) for name in names])
    records = [
        _record(name, photos[name], f"{name}.png") | {"responses": ["a", "b"], "rewards": [1.0, 0.0]} for name in names
    ]

    batch = ListCollator(processor, str(root), 2, family=LLAVA)(records)["batch"]
    assert torch.equal(batch.images["pixel_values"], expected)  # what the trainer's forward receives

    with seen_pixels() as seen:
        evaluate_grounding(model, processor, records, root, max_new_tokens=4)
    assert torch.equal(seen[0], expected)

    requests = [SampleRequest(r["id"], r["question"], str(root / r["image"])) for r in records]
    vllm_images = [
        p["multi_modal_data"]["image"] for p in VLLMBackend(None, processor, model.config, None).prompts(requests)
    ]
    assert torch.equal(
        processor(images=vllm_images, text=["<image>"] * 2, return_tensors="pt")["pixel_values"], expected
    )

    dataset = prompt_dataset(records, root, LLAVA)
    grpo_images = [dataset[i]["image"] for i in range(len(records))]
    assert torch.equal(
        processor(images=grpo_images, text=["<image>"] * 2, return_tensors="pt")["pixel_values"], expected
    )

    lm = PerpoLlava(pretrained=str(model_dir), device="cpu", max_new_tokens=4, batch_size=2)
    for frame in ("padded", "original"):
        docs = [{"image": str(root / f"{name}.png"), "question": "the red square"} for name in names]
        lm.task_dict = {"t": {"test": docs}}

        def messages(doc, frame=frame):
            content = [{"type": "image", "url": image} for image in doc_to_visual(doc, frame)]
            return [{"role": "user", "content": [*content, {"type": "text", "text": doc["question"]}]}]

        greedy = {"max_new_tokens": 4, "temperature": 0.0, "do_sample": False, "until": []}
        instances = [
            Instance("generate_until", ("ctx", messages, dict(greedy), i, "t", "test"), idx=0,
                     metadata={"task": "t", "doc_id": i, "repeats": 1})
            for i in range(len(docs))
        ]  # fmt: skip
        with seen_pixels() as seen:
            lm.generate_until(instances)
        assert torch.equal(seen[0], expected), frame
