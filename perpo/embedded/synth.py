"""The synthetic grounding benchmark of the embedded default: coloured shapes with referring expressions.

Each scene is a small canvas with 2–3 shapes (circle, square, triangle in four colours) that never overlap.
One shape per scene is the referent; its colour+shape pair is unique in the scene, and other shapes share its
colour or its shape often enough that both words matter. Expressions are "the red circle", or, in a share of
cases, a relational form such as "the red circle left of the blue square" (the relation is true and refers to
another, uniquely named shape of the scene). Boxes are exact: shape pixels cover precisely the integer box
[x1, x2) × [y1, y2).

Written twice, from one generator:
    <out>/images/synth_<image_id>.png
    <out>/synth/instances.json, <out>/synth/refs(unc).p     the RefCOCO `refer` layout (read by pycocotools)
    <out>/synth_<split>.jsonl                                flat rows, one per expression (lmms-eval, sampling)
    <out>/manifest.json                                      seed, spec, counts, sha256 of every JSONL
The JSONL rows are produced by reading the refer layout back through `perpo.data.refer`, the loader used for
real RefCOCO, so both formats agree by construction. The same seed gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pickle
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from perpo.io import atomic_dir, write_json, write_jsonl

logger = logging.getLogger(__name__)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (34, 160, 70),
    "blue": (37, 84, 220),
    "yellow": (230, 190, 20),
}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left of", "right of", "above", "below")
SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SynthSpec:
    """What scenes look like and how many of each split to render."""

    width: int = 64
    height: int = 64
    min_objects: int = 2
    max_objects: int = 3
    min_size: int = 12
    max_size: int = 26
    relation_prob: float = 0.3
    background: tuple[int, int, int] = (255, 255, 255)
    counts: dict[str, int] = field(default_factory=lambda: {"train": 4000, "val": 300, "test": 300})


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels; covered pixels are [x1, x2) × [y1, y2)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = 2) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def sample_scene(rng: random.Random, spec: SynthSpec) -> tuple[list[Shape], int]:
    """Shapes of one scene and the index of the referent (whose colour+shape is unique in the scene)."""
    colours, shapes = list(COLOURS), list(SHAPES)
    while True:
        n = rng.randint(spec.min_objects, spec.max_objects)
        target = (rng.choice(colours), rng.choice(shapes))
        kinds = [target]
        while len(kinds) < n:
            # Distractors share the referent's colour or shape half of the time, so both words matter.
            roll = rng.random()
            if roll < 0.25:
                kind = (target[0], rng.choice([s for s in shapes if s != target[1]]))
            elif roll < 0.5:
                kind = (rng.choice([c for c in colours if c != target[0]]), target[1])
            else:
                kind = (rng.choice(colours), rng.choice(shapes))
            if kind != target:
                kinds.append(kind)
        placed: list[Shape] = []
        for colour, shape in kinds:
            for _ in range(50):
                size = rng.randint(spec.min_size, spec.max_size)
                x1 = rng.randint(0, spec.width - size)
                y1 = rng.randint(0, spec.height - size)
                box = (x1, y1, x1 + size, y1 + size)
                if not any(_overlaps(box, other.box) for other in placed):
                    placed.append(Shape(colour, shape, box))
                    break
        if len(placed) == n:
            order = list(range(n))
            rng.shuffle(order)
            shuffled = [placed[i] for i in order]
            return shuffled, order.index(0)


def relation(a: Shape, b: Shape) -> str | None:
    """A spatial relation that clearly holds from a to b (centres apart by more than half their sizes)."""
    (ax, ay), (bx, by) = a.centre, b.centre
    dx, dy = bx - ax, by - ay
    horizontal = (a.box[2] - a.box[0] + b.box[2] - b.box[0]) / 4
    vertical = (a.box[3] - a.box[1] + b.box[3] - b.box[1]) / 4
    if abs(dx) >= abs(dy):
        if dx > horizontal:
            return "left of"
        if dx < -horizontal:
            return "right of"
    else:
        if dy > vertical:
            return "above"
        if dy < -vertical:
            return "below"
    return None


def expressions_for(shapes: list[Shape], target: int, rng: random.Random, relation_prob: float) -> list[str]:
    """One or two referring expressions for `shapes[target]`: the plain form and sometimes a relational one."""
    subject = shapes[target]
    plain = f"the {subject.name}"
    if rng.random() >= relation_prob:
        return [plain]
    names = [s.name for s in shapes]
    # An anchor must itself be unambiguous: "left of the blue square" needs exactly one blue square.
    anchors = [(other, relation(subject, other)) for i, other in enumerate(shapes) if i != target]
    anchors = [(other, rel) for other, rel in anchors if rel is not None and names.count(other.name) == 1]
    if not anchors:
        return [plain]
    other, rel = rng.choice(anchors)
    return [plain, f"the {subject.name} {rel} the {other.name}"]


def render(shapes: list[Shape], spec: SynthSpec):
    """Draw the scene; each shape covers exactly the pixels of its box (inclusive PIL coordinates)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (spec.width, spec.height), spec.background)
    draw = ImageDraw.Draw(image)
    for s in shapes:
        x1, y1, x2, y2 = s.box
        fill = COLOURS[s.colour]
        if s.shape == "circle":
            draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=fill)
        elif s.shape == "square":
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=fill)
        else:
            draw.polygon([(x1, y2 - 1), (x2 - 1, y2 - 1), ((x1 + x2 - 1) / 2, y1)], fill=fill)
    return image


def _polygon(s: Shape) -> list[float]:
    x1, y1, x2, y2 = s.box
    if s.shape == "square":
        points = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    elif s.shape == "triangle":
        points = [(x1, y2), (x2, y2), ((x1 + x2) / 2, y1)]
    else:
        cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
        points = [
            (cx + r * math.cos(2 * math.pi * k / 16), cy + r * math.sin(2 * math.pi * k / 16)) for k in range(16)
        ]
    return [round(v, 2) for point in points for v in point]


def _area(s: Shape) -> float:
    w, h = s.box[2] - s.box[0], s.box[3] - s.box[1]
    return {"square": w * h, "triangle": w * h / 2, "circle": math.pi * w * h / 4}[s.shape]


def build_synth(out: str | Path, *, seed: int = 0, spec: SynthSpec = SynthSpec(), progress: bool = True) -> Path:
    """Render the benchmark into `out` (replaced atomically). Returns `out`.

    The scene with global index k of split s is drawn from `random.Random(f"{seed}/{s}/{k}")`, so every scene
    depends only on (seed, split, index): the same seed gives byte-identical files.
    """
    from tqdm import tqdm

    from perpo.data.refer import load_refer_rows

    out = Path(out)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)]
    category_id = {c["name"]: c["id"] for c in categories}
    images, annotations, refs = [], [], []
    image_id = ann_id = ref_id = sent_id = 0
    total = sum(spec.counts.get(split, 0) for split in SPLITS)
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        (tmp / "synth").mkdir()
        bar = tqdm(total=total, desc="rendering synthetic scenes", unit="scene", disable=not progress)
        for split in SPLITS:
            for index in range(spec.counts.get(split, 0)):
                rng = random.Random(f"{seed}/{split}/{index}")
                shapes, target = sample_scene(rng, spec)
                image_id += 1
                file_name = f"synth_{image_id:06d}.png"
                render(shapes, spec).save(tmp / "images" / file_name, format="PNG", optimize=False)
                images.append({"id": image_id, "file_name": file_name, "width": spec.width, "height": spec.height})
                target_ann = None
                for s in shapes:
                    ann_id += 1
                    x1, y1, x2, y2 = s.box
                    annotations.append(
                        {
                            "id": ann_id,
                            "image_id": image_id,
                            "category_id": category_id[s.shape],
                            "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "area": round(_area(s), 4),
                            "iscrowd": 0,
                            "segmentation": [_polygon(s)],
                            "colour": s.colour,
                        }
                    )
                    if s is shapes[target]:
                        target_ann = ann_id
                ref_id += 1
                sentences = []
                for text in expressions_for(shapes, target, rng, spec.relation_prob):
                    sent_id += 1
                    sentences.append({"sent_id": sent_id, "sent": text, "raw": text, "tokens": text.split()})
                refs.append(
                    {
                        "ref_id": ref_id,
                        "ann_id": target_ann,
                        "image_id": image_id,
                        "category_id": category_id[shapes[target].shape],
                        "split": split,
                        "sent_ids": [s["sent_id"] for s in sentences],
                        "sentences": sentences,
                        "file_name": file_name,
                    }
                )
                bar.update()
        bar.close()
        instances = {
            "info": {"description": f"perpo synthetic grounding benchmark, seed {seed}", "version": FORMAT_VERSION},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        (tmp / "synth" / "instances.json").write_text(json.dumps(instances, sort_keys=True) + "\n")
        with (tmp / "synth" / "refs(unc).p").open("wb") as handle:
            pickle.dump(refs, handle, protocol=4)
        manifest = {"seed": seed, "spec": asdict(spec), "format_version": FORMAT_VERSION, "splits": {}}
        for split in SPLITS:
            if not spec.counts.get(split, 0):
                continue
            rows = load_refer_rows(tmp, "synth", split, image_dir=tmp / "images", image_prefix="images/")
            path = write_jsonl(tmp / f"synth_{split}.jsonl", rows)
            manifest["splits"][split] = {
                "scenes": spec.counts[split],
                "expressions": len(rows),
                "jsonl": path.name,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            }
        write_json(tmp / "manifest.json", manifest)
    logger.info("synthetic benchmark (seed %d) written to %s", seed, out)
    return out
