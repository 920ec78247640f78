"""The POPE and description probe tasks' hooks, as lmms-eval calls them from perpo_synth/utils.py."""

from __future__ import annotations

from collections import Counter

import pytest
from lmms_task_helpers import TASKS, load_module

utils = load_module(TASKS / "perpo_synth" / "utils.py", "perpo_synth_utils_probes")


@pytest.fixture
def synth_env(synth_data, monkeypatch):
    monkeypatch.setenv("PERPO_SYNTH_DIR", str(synth_data))
    return synth_data


@pytest.mark.parametrize("method", ["random", "popular", "adversarial"])
def test_the_pope_docs_are_balanced_and_carry_what_the_hooks_read(synth_env, method):
    docs = list(getattr(utils, f"pope_val_{method}")(None))
    assert len(docs) == 4 * 12 and Counter(d["answer"] for d in docs) == {"yes": 24, "no": 24}
    doc = docs[0]
    assert utils.text_probe(doc) == f"Is there a {doc['object']} in the image? Answer yes or no."
    assert utils.visual_scene(doc)[0].size == (64, 64) == utils.visual_blank(doc)[0].size
    assert doc["target"] == doc["answer"] and doc["method"] == method


def test_pope_results_aggregate_to_popes_metrics():
    docs = [
        {"id": "a", "image": "i", "question": "q", "answer": "yes", "object": "red circle", "method": "random"},
        {"id": "b", "image": "i", "question": "q", "answer": "no", "object": "red square", "method": "random"},
        {"id": "c", "image": "i", "question": "q", "answer": "no", "object": "blue square", "method": "random"},
    ]
    answers = ["Yes, there is.", "Yes", "No."]
    per_doc = [utils.results_pope(doc, [answer]) for doc, answer in zip(docs, answers, strict=True)]
    assert per_doc[0]["record"] | {} == {
        "id": "a", "image": "i", "question": "q", "response": "Yes, there is.", "answer": "yes", "read_as": "yes",
        "object": "red circle", "method": "random",
    }  # fmt: skip
    items = [d["pope_f1"] for d in per_doc]  # TP 1, FP 1, TN 1
    assert utils.pope_accuracy(items) == pytest.approx(2 / 3)
    assert utils.pope_precision(items) == 0.5 and utils.pope_recall(items) == 1.0
    assert utils.pope_f1(items) == pytest.approx(2 / 3) and utils.pope_yes_ratio(items) == pytest.approx(2 / 3)


def test_describe_results_aggregate_to_object_f1_and_chair(synth_env):
    docs = list(utils.describe_val(None))
    assert len(docs) == 12 and utils.text_probe(docs[0]) == "List the objects in the image."
    doc = {"id": "d", "image": "i", "question": "q", "objects": [["red", "circle"], ["blue", "square"]]}
    first = utils.results_describe(doc, ["A red circle and a green triangle."])  # 1 right, 1 hallucinated
    second = utils.results_describe(doc, ["a red circle, a blue square"])  # both right, both named
    items = [first["chair_i"], second["chair_i"]]
    assert items == [[2, 1, 2, 1], [2, 2, 2, 2]]
    assert utils.describe_precision(items) == pytest.approx(3 / 4) and utils.describe_recall(items) == pytest.approx(
        3 / 4
    )
    assert utils.chair_i(items) == pytest.approx(1 / 4) and utils.chair_s(items) == pytest.approx(1 / 2)
    assert utils.describe_f1(items) == pytest.approx(3 / 4)


def test_a_folder_without_annotations_ends_the_run_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "synth_val.jsonl").write_text("")
    monkeypatch.setenv("PERPO_SYNTH_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        utils.pope_val_random(None)
    assert exit_info.value.code == 2
    assert "synth/instances.json not found" in capsys.readouterr().err
