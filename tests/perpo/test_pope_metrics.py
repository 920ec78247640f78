"""POPE's reading of yes/no answers and its metrics, on hand-computed cases (perpo.objectives.metrics.pope)."""

from __future__ import annotations

import pytest

from perpo.objectives.metrics.pope import POPE_METRIC_KEYS, pope_metrics, pope_scores, read_yes_no


@pytest.mark.parametrize(
    ("response", "read"),
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("no", "no"),
        ("No.", "no"),
        ("No, there is not.", "no"),
        ("Yes, but it is not red.", "no"),  # a negation word anywhere in the first sentence
        ("Yes. It is not blue.", "yes"),  # only the first sentence counts
        ("I do not see one", "no"),
        ("  no\n", "no"),  # stripped first, as the answers are stored
        ("Nope", "yes"),  # not one of POPE's words: read as yes
        ("NO", "yes"),  # POPE's words are case-sensitive
        ("Not at all", "yes"),  # "Not" is not among them either
        ("There is none", "yes"),
        ("", "yes"),  # an empty answer reads yes
        ("[0.1, 0.2, 0.3, 0.4]", "yes"),  # a box instead of an answer
    ],
)
def test_answers_are_read_as_popes_evaluation_reads_them(response, read):
    assert read_yes_no(response) == read


def test_the_metrics_of_a_hand_counted_set():
    # labels:      yes  yes  yes   no   no   no  no  no
    # predictions: yes  yes  no    yes  no   no  no  no    -> TP 2, FN 1, FP 1, TN 4
    labels = ["yes", "yes", "yes", "no", "no", "no", "no", "no"]
    responses = ["Yes", "Yes, there is.", "No", "yes", "No.", "no", "Not quite, no", "There is no red circle."]
    scores = pope_metrics(labels, responses)
    assert set(scores) == set(POPE_METRIC_KEYS)
    assert scores["pope_accuracy"] == pytest.approx(6 / 8)
    assert scores["pope_precision"] == pytest.approx(2 / 3)
    assert scores["pope_recall"] == pytest.approx(2 / 3)
    assert scores["pope_f1"] == pytest.approx(2 / 3)
    assert scores["pope_yes_ratio"] == pytest.approx(3 / 8)  # predicted yes, not true yes


def test_a_model_that_always_says_yes_has_recall_1_and_yes_ratio_1():
    scores = pope_scores([("yes", "yes"), ("no", "yes"), ("no", "yes"), ("yes", "yes")])
    assert scores == {
        "pope_accuracy": 0.5, "pope_precision": 0.5, "pope_recall": 1.0, "pope_f1": pytest.approx(2 / 3),
        "pope_yes_ratio": 1.0,
    }  # fmt: skip


def test_empty_denominators_give_0_and_bad_input_is_refused():
    assert pope_scores([("no", "no"), ("yes", "no")]) | {} == {
        "pope_accuracy": 0.5, "pope_precision": 0.0, "pope_recall": 0.0, "pope_f1": 0.0, "pope_yes_ratio": 0.0,
    }  # fmt: skip
    with pytest.raises(ValueError, match="at least one"):
        pope_scores([])
    with pytest.raises(ValueError, match="'maybe'"):
        pope_scores([("yes", "maybe")])
    with pytest.raises(ValueError, match="2 labels for 1 responses"):
        pope_metrics(["yes", "no"], ["yes"])
