"""lmms-eval hooks of the synthetic scenes' POPE and description probes (`perpo_synth_pope*`, `perpo_synth_describe*`).

POPE's answers are read as POPE's own evaluation reads them and scored over the whole task
(`perpo.objectives.metrics.pope`); descriptions are read for the objects they name and scored by object
precision, recall, F1 and CHAIR (`perpo.objectives.metrics.describe`). Each document returns the same item under
every metric key, and each metric's aggregation computes its value from all of them: these metrics are ratios of
totals, not means of per-document scores.
"""

from __future__ import annotations

from collections.abc import Sequence

from lmms_tasks import grounding
from perpo.embedded.synth import COLOURS, SHAPES
from perpo.objectives.metrics.describe import DESCRIBE_METRIC_KEYS, DescribeCounts, describe_counts, describe_scores
from perpo.objectives.metrics.pope import POPE_METRIC_KEYS, pope_scores, read_yes_no


def doc_to_visual(doc: dict) -> list:
    """The scene as it is (square: every frame is the same)."""
    return grounding.doc_to_visual(doc, "original")


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def _record(doc: dict, response: str, **read) -> dict:
    return {"id": doc["id"], "image": doc["image"], "question": doc["question"], "response": response, **read}


def process_pope(doc: dict, results: Sequence[str]) -> dict:
    """One probe: its (label, prediction) pair under every POPE metric, and its record for the samples file."""
    response = results[0]
    item = [doc["answer"], read_yes_no(response)]
    record = _record(doc, response, answer=doc["answer"], read_as=item[1], object=doc["object"], method=doc["method"])
    return dict.fromkeys(POPE_METRIC_KEYS, item) | {"record": record}


def pope_metric(key: str, items: Sequence[Sequence[str]]) -> float:
    return pope_scores(items)[key]  # each item is a [label, prediction] pair


def process_describe(doc: dict, results: Sequence[str]) -> dict:
    """One description: its counts (mentions, correct, the scene's objects, those named) under every metric."""
    response = results[0]
    counts = describe_counts(response, [tuple(pair) for pair in doc["objects"]], COLOURS, SHAPES)
    item = [counts.mentioned, counts.correct, counts.truth, counts.named]
    return dict.fromkeys(DESCRIBE_METRIC_KEYS, item) | {"record": _record(doc, response, counts=item)}


def describe_metric(key: str, items: Sequence[Sequence[int]]) -> float:
    return describe_scores([DescribeCounts(*item) for item in items])[key]
