"""The POPE and description probes of the synthetic scenes (perpo.embedded.synth_probe)."""

from __future__ import annotations

from collections import Counter

import pytest

from perpo.embedded.synth_probe import (
    ALL_OBJECTS,
    POPE_METHODS,
    Scene,
    describe_rows,
    pope_rows,
    popularity,
    read_scenes,
)


@pytest.fixture(scope="module")
def scenes(synth_data):
    return read_scenes(synth_data)


def test_the_scenes_of_each_split_come_with_their_shapes(scenes, synth_data):
    assert {split: len(s) for split, s in scenes.items()} == {"train": 40, "val": 12, "test": 12}
    for scene in scenes["val"]:
        assert (synth_data / scene.image).is_file()
        assert 2 <= len(scene.objects) <= 3 and set(scene.objects) <= set(ALL_OBJECTS)


@pytest.mark.parametrize("method", POPE_METHODS)
def test_pope_is_balanced_and_its_answers_are_true(scenes, method):
    popular = popularity(scenes["train"])
    rows = pope_rows(scenes["val"], method, popular=popular, seed=0, split="val")
    assert len(rows) == 4 * len(scenes["val"]) and len({r["id"] for r in rows}) == len(rows)
    assert Counter(r["answer"] for r in rows) == {"yes": 2 * 12, "no": 2 * 12}
    by_image = {s.image: s for s in scenes["val"]}
    for row in rows:
        pair = tuple(row["object"].split())
        assert (pair in by_image[row["image"]].objects) == (row["answer"] == "yes")
        assert row["question"] == f"Is there a {row['object']} in the image? Answer yes or no."
    assert pope_rows(scenes["val"], method, popular=popular, seed=0, split="val") == rows  # seeded
    if method == "random":
        assert pope_rows(scenes["val"], method, popular=popular, seed=1, split="val") != rows


def test_popular_asks_the_most_frequent_absent_objects_and_adversarial_the_close_ones():
    scene = Scene(7, "images/x.png", (("red", "circle"), ("blue", "square")), 64, 64)
    popular = Counter({("green", "triangle"): 9, ("yellow", "triangle"): 8, ("red", "square"): 1})
    absent = [r["object"] for r in pope_rows([scene], "popular", popular=popular) if r["answer"] == "no"]
    assert absent == ["green triangle", "yellow triangle"]
    for seed in range(5):
        close = [
            r["object"] for r in pope_rows([scene], "adversarial", popular=popular, seed=seed) if r["answer"] == "no"
        ]
        for name in close:  # shares the colour or the shape of an object in the scene
            colour, shape = name.split()
            assert colour in ("red", "blue") or shape in ("circle", "square")


def test_unknown_methods_and_too_small_scenes_are_refused():
    scene = Scene(1, "images/x.png", (("red", "circle"), ("red", "circle")), 64, 64)
    with pytest.raises(ValueError, match="one of random, popular, adversarial"):
        pope_rows([scene], "frequent", popular=Counter())
    with pytest.raises(ValueError, match="scene 1 has 1 distinct objects"):
        pope_rows([scene], "random", popular=Counter())


def test_the_description_probe_keeps_each_scenes_objects(scenes):
    rows = describe_rows(scenes["test"], split="test")
    assert [r["objects"] for r in rows] == [[list(p) for p in s.objects] for s in scenes["test"]]
    assert rows[0]["question"] == "List the objects in the image." and rows[0]["id"].startswith("synth_describe_test_")
