"""Object mentions, object precision / recall / F1 and CHAIR on hand-counted answers
(perpo.objectives.metrics.describe)."""

from __future__ import annotations

import pytest

from perpo.objectives.metrics.describe import (
    DESCRIBE_METRIC_KEYS,
    DescribeCounts,
    describe_counts,
    describe_scores,
    mentions,
)

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")


@pytest.mark.parametrize(
    ("answer", "found"),
    [
        ("A red circle and a blue square.", {("red", "circle"), ("blue", "square")}),
        ("Two Blue SQUARES", {("blue", "square")}),  # case and plural
        ("a triangle", {(None, "triangle")}),  # a bare object word
        ("a red circle, another red circle", {("red", "circle")}),  # a set: once
        ("a big circle", {(None, "circle")}),  # "big" is no attribute of the vocabulary
        ("red and blue", set()),  # attributes alone name nothing
        ("", set()),
        ("circled squareness", set()),  # whole words only
    ],
)
def test_mentions_are_attribute_object_pairs_of_the_vocabulary(answer, found):
    assert mentions(answer, COLOURS, SHAPES) == found


def test_one_answer_is_counted_against_its_image():
    truth = [("red", "circle"), ("blue", "square"), ("blue", "square"), ("green", "triangle")]
    counts = describe_counts("A red circle, a yellow square and a triangle.", truth, COLOURS, SHAPES)
    # mentions: red circle (right), yellow square (hallucinated), triangle (right: there is a green one)
    # the image's 3 distinct objects: red circle named, green triangle named (bare "triangle"), blue square not
    assert counts == DescribeCounts(mentioned=3, correct=2, truth=3, named=2)
    assert counts.hallucinated == 1


def test_the_metrics_of_a_hand_counted_set():
    counts = [
        DescribeCounts(mentioned=3, correct=2, truth=3, named=2),
        DescribeCounts(mentioned=2, correct=2, truth=2, named=2),
        DescribeCounts(mentioned=0, correct=0, truth=2, named=0),  # said nothing
    ]
    scores = describe_scores(counts)
    assert set(scores) == set(DESCRIBE_METRIC_KEYS)
    assert scores["describe_precision"] == pytest.approx(4 / 5)
    assert scores["describe_recall"] == pytest.approx(4 / 7)
    assert scores["describe_f1"] == pytest.approx(2 * (4 / 5) * (4 / 7) / (4 / 5 + 4 / 7))
    assert scores["chair_i"] == pytest.approx(1 / 5)
    assert scores["chair_s"] == pytest.approx(1 / 3)


def test_no_mentions_at_all_score_0_and_no_answers_are_refused():
    assert describe_scores([DescribeCounts(0, 0, 2, 0)]) == dict.fromkeys(DESCRIBE_METRIC_KEYS, 0.0)
    with pytest.raises(ValueError, match="at least one answer"):
        describe_scores([])
