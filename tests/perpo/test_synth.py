"""The synthetic grounding benchmark: exact boxes, refer layout via pycocotools, determinism."""

from __future__ import annotations

import hashlib
import importlib.util
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from perpo.config import ConfigError
from perpo.data.refer import UnsafePickleError, load_refer_rows, load_refs, split_matches
from perpo.embedded.synth import COLOURS, SynthSpec, build_synth, expressions_for, render, sample_scene
from perpo.io import read_jsonl


def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_gives_byte_identical_data_and_another_seed_does_not(tmp_path):
    spec = SynthSpec(counts={"train": 15, "val": 5, "test": 5})
    a = build_synth(tmp_path / "a", seed=3, spec=spec, progress=False)
    b = build_synth(tmp_path / "b", seed=3, spec=spec, progress=False)
    c = build_synth(tmp_path / "c", seed=4, spec=spec, progress=False)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    assert (a / "synth_val.jsonl").read_bytes() != (c / "synth_val.jsonl").read_bytes()


def test_shapes_cover_exactly_their_boxes():
    spec = SynthSpec()
    for index in range(30):
        rng = random.Random(f"0/train/{index}")
        shapes, _ = sample_scene(rng, spec)
        pixels = np.asarray(render(shapes, spec))
        for shape in shapes:
            ys, xs = np.nonzero((pixels == COLOURS[shape.colour]).all(-1))
            x1, y1, x2, y2 = shape.box
            inside = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
            # Pixels of this colour inside the box are this shape's; its tight extent is the box.
            assert (xs[inside].min(), ys[inside].min(), xs[inside].max() + 1, ys[inside].max() + 1) == shape.box


def test_referent_is_unique_and_relations_hold():
    spec = SynthSpec(relation_prob=1.0)
    for index in range(200):
        rng = random.Random(f"7/val/{index}")
        shapes, target = sample_scene(rng, spec)
        names = [s.name for s in shapes]
        assert names.count(names[target]) == 1
        for text in expressions_for(shapes, target, rng, spec.relation_prob):
            assert text.startswith(f"the {names[target]}")
            if " of the " in text or "above" in text or "below" in text:
                relation, other = text[len(f"the {names[target]} ") :].split(" the ")
                anchor = next(s for s in shapes if s.name == other)
                (tx, ty), (ax, ay) = shapes[target].centre, anchor.centre
                assert {"left of": tx < ax, "right of": tx > ax, "above": ty < ay, "below": ty > ay}[relation]


def test_refer_layout_round_trips_through_pycocotools(synth_data):
    from pycocotools.coco import COCO

    coco = COCO(str(synth_data / "synth" / "instances.json"))
    refs = load_refs(synth_data / "synth" / "refs(unc).p")
    rows = read_jsonl(synth_data / "synth_val.jsonl")
    assert rows == load_refer_rows(synth_data, "synth", "val", image_dir=synth_data / "images", image_prefix="images/")
    by_sent = {s["sent_id"]: (ref, s) for ref in refs for s in ref["sentences"]}
    for row in rows:
        ref, sentence = by_sent[row["sent_id"]]
        assert ref["split"] == "val" and sentence["sent"] == row["expression"]
        assert coco.anns[ref["ann_id"]]["bbox"] == row["bbox"]
        image = Image.open(synth_data / row["image"])
        assert image.size == (row["width"], row["height"]) == (64, 64)
    # The JSONL rows regenerate from the seed: boxes and expressions equal the generator's.
    first = rows[0]
    index = first["image_id"] - 41  # 40 train scenes precede val; image ids start at 1
    rng = random.Random(f"0/val/{index}")
    shapes, target = sample_scene(rng, SynthSpec())
    x1, y1, x2, y2 = shapes[target].box
    assert first["bbox"] == [x1, y1, x2 - x1, y2 - y1]
    assert first["expression"] == expressions_for(shapes, target, rng, SynthSpec().relation_prob)[0]


def test_split_rules_follow_the_refer_api():
    assert split_matches("testA", "testA") and not split_matches("testB", "testA")
    assert split_matches("testB", "test") and split_matches("test", "test")
    assert split_matches("val", "val") and not split_matches("val", "train")


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_refs_pickle_is_refused(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "payload": _Boom()}]))
    with pytest.raises(UnsafePickleError, match="refused to load 'posix.system'"):
        load_refs(path)


REFS = pickle.dumps([{"ref_id": 1, "sentences": [], "split": "val"}], protocol=2)


@pytest.mark.parametrize(
    ("data", "state"),
    [
        (b"", "empty"),
        (REFS[:-4], "truncated or corrupt (UnpicklingError: "),
        (b"not a pickle", "truncated or corrupt"),
    ],
)
def test_truncated_or_empty_refs_pickle_names_the_file_and_the_fix(tmp_path, data, state):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as err:
        load_refs(path)
    assert str(err.value).startswith(f"{path}: refs pickle is {state}")
    assert "re-download the refs file" in str(err.value) and not isinstance(err.value, UnsafePickleError)


def _py2_pickle():
    spec = importlib.util.spec_from_file_location(
        "py2_pickle", Path(__file__).parents[1] / "fixtures" / "py2_pickle.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("protocol", [0, 2])
def test_python2_refs_pickle_loads_with_its_text_decoded(tmp_path, protocol):
    """As the refer toolkit wrote them under Python 2: `str` keys and values (bytes, here one in UTF-8), `unicode`,
    `long` ids, protocol 0 (its default) or 2."""
    py2 = _py2_pickle()
    ref = {
        b"ref_id": py2.Long(5), b"ann_id": 1099511627776, b"image_id": 581857, b"split": b"val",
        b"sentences": [{b"sent": b"caf\xc3\xa9 on the left", b"raw": "Café on the left", b"sent_id": 0,
                        b"tokens": [b"cafe", b"on"]}],
        b"file_name": b"COCO_train2014_000000581857_16.jpg", b"area": 120.5, b"note": None,
    }  # fmt: skip
    path = tmp_path / "refs(unc).p"
    path.write_bytes(py2.dumps([ref, ref], protocol))
    loaded = load_refs(path)
    assert loaded[0] == loaded[1] == {
        "ref_id": 5, "ann_id": 1099511627776, "image_id": 581857, "split": "val",
        "sentences": [{"sent": "café on the left", "raw": "Café on the left", "sent_id": 0, "tokens": ["cafe", "on"]}],
        "file_name": "COCO_train2014_000000581857_16.jpg", "area": 120.5, "note": None,
    }  # fmt: skip


def test_a_python2_pickle_that_imports_code_is_refused(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")  # protocol 0: os.system('echo pwned')
    with pytest.raises(UnsafePickleError, match="refused to load 'os.system'"):
        load_refs(path)


def test_missing_refer_files_name_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"refcoco/instances.json"):
        load_refer_rows(tmp_path, "refcoco", "val", image_dir=tmp_path)
