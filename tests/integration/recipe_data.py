"""Data with the shapes real data has, for the recipe tests: a `refer` layout over COCO-like JPEG photos (4:3 and
3:4, as COCO's landscape and portrait images), with refs pickled as Python 2 wrote them, and Fox-layout page sets
(portrait pages). The scenes are the embedded benchmark's coloured shapes, so the committed tiny LLaVA can ground
them; their canvases are not square.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

from perpo.embedded.synth import SHAPES, SynthSpec, expressions_for, render, sample_scene

_spec = importlib.util.spec_from_file_location("py2_pickle", Path(__file__).parents[1] / "fixtures" / "py2_pickle.py")
py2_pickle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(py2_pickle)

LANDSCAPE, PORTRAIT = (64, 48), (48, 64)
# image id -> the splits it is in, per refer dataset: train images, and the evaluation images of each standard
# split; image 5 is a RefCOCO train image and a RefCOCOg val image, as COCO images are across the real datasets.
UNC = {"train": [1, 2, 3, 4, 5, 6], "val": [7, 8], "testA": [9], "testB": [10]}
UMD = {"train": [1, 2, 3, 4, 6], "val": [5, 7], "test": [9, 10]}
DATASETS = {"refcoco": ("unc", UNC, 0), "refcoco+": ("unc", UNC, 2), "refcocog": ("umd", UMD, 2)}


def coco_name(image_id: int) -> str:
    return f"COCO_train2014_{image_id:012d}.jpg"


def write_refer(data: Path, seed: int = 0) -> Path:
    """`data/refer/<dataset>/{instances.json, refs(<split_by>).p}` and `data/coco/train2014/*.jpg`.

    Returns:
        `data`.
    """
    images_dir = data / "coco" / "train2014"
    images_dir.mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)]
    images, annotations, targets = [], [], {}
    for image_id in range(1, 11):
        width, height = LANDSCAPE if image_id % 2 else PORTRAIT
        spec = SynthSpec(width=width, height=height, min_size=12, max_size=20)
        rng = random.Random(f"{seed}/{image_id}")
        shapes, target = sample_scene(rng, spec)
        render(shapes, spec).save(images_dir / coco_name(image_id), format="JPEG", quality=95)
        images.append({"id": image_id, "file_name": coco_name(image_id), "width": width, "height": height})
        for index, shape in enumerate(shapes):
            x1, y1, x2, y2 = shape.box
            ann_id = 100 * image_id + index
            annotations.append(
                {"id": ann_id, "image_id": image_id, "category_id": SHAPES.index(shape.shape) + 1,
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float((x2 - x1) * (y2 - y1)), "iscrowd": 0,
                 "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]}
            )  # fmt: skip
            if index == target:
                targets[image_id] = (ann_id, shape, expressions_for(shapes, target, rng, 1.0))
    instances = {"images": images, "annotations": annotations, "categories": categories}
    for dataset, (split_by, splits, protocol) in DATASETS.items():
        folder = data / "refer" / dataset
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "instances.json").write_text(json.dumps(instances))
        refs, sent_id = [], 0
        for split, ids in splits.items():
            for image_id in ids:
                ann_id, shape, texts = targets[image_id]
                sentences = []
                for text in texts:
                    sent_id += 1
                    sentences.append({b"sent_id": sent_id, b"sent": text.encode(), b"raw": text, b"tokens":
                                      [t.encode() for t in text.split()]})  # fmt: skip
                refs.append(
                    {b"ref_id": py2_pickle.Long(len(refs) + 1), b"ann_id": ann_id, b"image_id": image_id,
                     b"category_id": SHAPES.index(shape.shape) + 1, b"split": split.encode(),
                     b"sent_ids": [s[b"sent_id"] for s in sentences], b"sentences": sentences,
                     b"file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg".encode()}
                )  # fmt: skip
        (folder / f"refs({split_by}).p").write_bytes(py2_pickle.dumps(refs, protocol))
    return data


PAGE_WORDS = ("the red page", "read all text", "a blue circle", "small big square", "next to the line")


def write_pages(folder: Path, language: str, count: int, seed: int) -> Path:
    """A Fox-layout page set: `folder/<language>_page_ocr.json` + `folder/<language>_pdf_png/` with `count`
    portrait pages (48 x 64, two or three lines of short words)."""
    from PIL import Image, ImageDraw

    image_dir = folder / f"{language}_pdf_png"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng, entries = random.Random(f"{seed}/pages"), []
    for index in range(1, count + 1):
        lines = [rng.choice(PAGE_WORDS) for _ in range(rng.randint(2, 3))]
        text = "\n".join(lines)
        page = Image.new("RGB", (48, 64), (255, 255, 255))
        draw = ImageDraw.Draw(page)
        draw.multiline_text((1, 2), text, fill=(0, 0, 0), spacing=6)
        draw.point((47, seed * 8 + index), fill=(0, 0, 0))  # a page-number mark: no two pages of any set are equal
        name = f"{language}_{index}.png"
        page.save(image_dir / name)
        entries.append(
            {"image": name, "len": len(text), "conversations": [
                {"from": "human", "value": "<image>\nOCR this image: "}, {"from": "gpt", "value": text}]}
        )  # fmt: skip
    (folder / f"{language}_page_ocr.json").write_text(json.dumps(entries), encoding="utf-8")
    return folder


# The language models of the public 7B checkpoints (their config.json on the hub), for estimates without weights.
PUBLIC_7B_TEXT = {
    "llava": dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, intermediate_size=11008, vocab_size=32064, max_position_embeddings=4096),
    "qwen2_5_vl": dict(model_type="qwen2", hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, intermediate_size=18944, vocab_size=152064,
                       max_position_embeddings=128000),
}  # fmt: skip


def write_config_only_7b(out: Path, family: str, tiny: Path) -> Path:
    """A checkpoint folder with a public 7B checkpoint's config and its processor at full size, and no weights:
    enough for `--dry_run` estimates. The tokenizer is the tiny stand-in's (`tiny`), which only changes the text
    part of a prompt by a few tokens."""
    import transformers

    from perpo.embedded.tiny import public_image_processor

    out.mkdir(parents=True)
    processor = transformers.AutoProcessor.from_pretrained(tiny)
    if family == "llava":
        config = transformers.LlavaConfig(
            text_config=PUBLIC_7B_TEXT["llava"],
            vision_config=dict(model_type="clip_vision_model", hidden_size=1024, num_hidden_layers=24,
                               num_attention_heads=16, intermediate_size=4096, image_size=336, patch_size=14),
            image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"),
        )  # fmt: skip
        processor.image_processor = public_image_processor("llava", 336)
        processor.patch_size = 14
    else:
        config = transformers.Qwen2_5_VLConfig(
            text_config=PUBLIC_7B_TEXT["qwen2_5_vl"],
            vision_config=dict(depth=32, hidden_size=1280, out_hidden_size=3584, patch_size=14),
        )
        processor.image_processor.min_pixels, processor.image_processor.max_pixels = 3136, 12845056
        processor.image_processor.size = {"shortest_edge": 3136, "longest_edge": 12845056}
    config.save_pretrained(out)
    processor.save_pretrained(out)
    return out
