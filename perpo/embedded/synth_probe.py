"""Two more ways to ask about the synthetic scenes, beside grounding: POPE's yes/no object probes and object
descriptions (the miniature's twins of the paper's POPE and generative columns).

Both are read from a `perpo data synth` folder (its `synth/instances.json`: every scene's shapes with their colours,
and `synth_<split>.jsonl` for which scenes are in a split), so they need nothing beyond the grounding benchmark.

POPE (Li et al. 2023) asks "Is there a {colour} {shape} in the image?" of objects that are there (answer "yes") and
as many that are not ("no"), per scene. Its three ways of choosing the absent objects become, with colour-shape
pairs for objects:
- `random`: any absent pair;
- `popular`: the absent pairs most frequent in the train scenes (the objects a model expects to see anyway);
- `adversarial`: absent pairs that share a colour or a shape with an object of the scene, the synthetic analogue of
  POPE's frequent co-occurrence (a red circle and a red square, a red circle and a blue circle).
The description probe asks "List the objects in the image." and keeps the scene's pairs to score the answer with
`perpo.objectives.metrics.describe`.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from perpo.embedded.synth import COLOURS, SHAPES
from perpo.io import read_jsonl, utf8_text

POPE_METHODS = ("random", "popular", "adversarial")
POPE_QUESTION = "Is there a {object} in the image? Answer yes or no."
DESCRIBE_QUESTION = "List the objects in the image."
ALL_OBJECTS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)


@dataclass(frozen=True)
class Scene:
    """One synthetic scene: its image (relative to the benchmark folder), its shapes as (colour, shape) pairs and
    the image's size."""

    image_id: int
    image: str
    objects: tuple[tuple[str, str], ...]
    width: int
    height: int


def read_scenes(data: str | Path) -> dict[str, list[Scene]]:
    """Every scene of a `perpo data synth` folder, by split (the splits of `synth_<split>.jsonl`), in image order."""
    data = Path(data)
    instances = json.loads(utf8_text(data / "synth" / "instances.json"))
    names = {c["id"]: c["name"] for c in instances["categories"]}
    images = {i["id"]: i for i in instances["images"]}
    objects: dict[int, list[tuple[str, str]]] = {}
    for a in instances["annotations"]:
        objects.setdefault(a["image_id"], []).append((a["colour"], names[a["category_id"]]))
    scenes = {}
    for path in sorted(data.glob("synth_*.jsonl")):
        split = path.stem.removeprefix("synth_")
        ids = sorted({row["image_id"] for row in read_jsonl(path)})
        scenes[split] = [
            Scene(i, f"images/{images[i]['file_name']}", tuple(objects[i]), images[i]["width"], images[i]["height"])
            for i in ids
        ]
    return scenes


def popularity(scenes: Sequence[Scene]) -> Counter:
    """In how many of `scenes` each (colour, shape) pair appears."""
    return Counter(pair for scene in scenes for pair in set(scene.objects))


def _absent(scene: Scene, method: str, k: int, popular: Counter, rng: random.Random) -> list[tuple[str, str]]:
    absent = [pair for pair in ALL_OBJECTS if pair not in scene.objects]
    if method == "random":
        return rng.sample(absent, k)
    if method == "popular":
        return sorted(absent, key=lambda pair: (-popular[pair], pair))[:k]
    colours = {c for c, _ in scene.objects}
    shapes = {s for _, s in scene.objects}
    close = [pair for pair in absent if pair[0] in colours or pair[1] in shapes]
    picks = rng.sample(close, min(k, len(close)))
    return picks + rng.sample([p for p in absent if p not in picks], k - len(picks))


def pope_rows(
    scenes: Sequence[Scene], method: str, *, popular: Counter, seed: int = 0, per_answer: int = 2, split: str = ""
) -> list[dict]:
    """POPE's questions on `scenes`: per scene `per_answer` objects that are there and as many that are not
    (chosen by `method`, with `popular` the train-scene counts for "popular"), yes and no alternating.

    Raises:
        ValueError: an unknown method, or a scene with fewer than `per_answer` distinct objects.
    """
    if method not in POPE_METHODS:
        raise ValueError(f"POPE method must be one of {', '.join(POPE_METHODS)}, got {method!r}")
    rows = []
    prefix = "_".join(filter(None, ("synth_pope", method, split)))
    for scene in scenes:
        rng = random.Random(f"{seed}/pope/{method}/{scene.image_id}")
        present = sorted(set(scene.objects))
        if len(present) < per_answer:
            raise ValueError(f"scene {scene.image_id} has {len(present)} distinct objects, fewer than {per_answer}")
        yes = rng.sample(present, per_answer)
        no = _absent(scene, method, per_answer, popular, rng)
        asked = [q for there, absent in zip(yes, no, strict=True) for q in ((there, "yes"), (absent, "no"))]
        for index, (pair, answer) in enumerate(asked):
            name = " ".join(pair)
            rows.append(
                {
                    "id": f"{prefix}_{scene.image_id}_{index}",
                    "image": scene.image,
                    "question": POPE_QUESTION.format(object=name),
                    "answer": answer,
                    "target": answer,
                    "object": name,
                    "method": method,
                }
            )
    return rows


def describe_rows(scenes: Sequence[Scene], split: str = "") -> list[dict]:
    """The description probe on `scenes`: one question per scene, with the scene's objects to score against."""
    prefix = "_".join(filter(None, ("synth_describe", split)))
    return [
        {
            "id": f"{prefix}_{scene.image_id}",
            "image": scene.image,
            "question": DESCRIBE_QUESTION,
            "objects": [list(pair) for pair in scene.objects],
            "target": ", ".join(" ".join(pair) for pair in scene.objects),
        }
        for scene in scenes
    ]
