"""POPE's yes/no object-probing metrics, read and scored as POPE's own evaluation does. Pure Python, no torch.

An answer is read the way POPE's `evaluate.py` reads it (and LLaVA, LLaVA-RLHF and others copied), after the
surrounding whitespace is stripped as their generation scripts store answers: keep the first sentence (up to the
first "."), drop commas, split on spaces; the answer is "no" when those words contain `No`, `no` or `not`, and
"yes" otherwise. So an answer that is neither a clean yes nor a clean no counts as "yes": an empty answer, "Nope",
"NO" and "There is none" all read "yes", while "Yes, but not red" reads "no".

Over a set of answers, with "yes" the positive class: accuracy, precision, recall and F1, and the yes-ratio, the
share of *predicted* "yes" (POPE's definition: a model that says yes to everything has a yes-ratio of 1 whatever the
questions). Where a ratio has an empty denominator (no predicted or no true "yes") it is 0.0.

Where lmms-eval 0.7.3's built-in `pope` task differs: it takes a prediction as "yes"/"no" only when the whole
answer, lower-cased and stripped, is exactly that word; any other answer ("Yes, there is.") is wrong for accuracy
and left out of precision and recall altogether; and its `pope_yes_ratio` counts the *ground-truth* "yes" (0.5 on
a balanced split, whatever the model says).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

POPE_METRIC_KEYS: tuple[str, ...] = ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1", "pope_yes_ratio")
NEGATION_WORDS = frozenset({"No", "no", "not"})


def read_yes_no(response: str) -> str:
    """ "yes" or "no", as POPE's evaluation reads `response` (module docstring)."""
    text = response.strip()
    text = text.split(".")[0] if "." in text else text
    words = text.replace(",", "").split(" ")
    return "no" if NEGATION_WORDS.intersection(words) else "yes"


def pope_scores(pairs: Iterable[tuple[str, str]]) -> dict[str, float]:
    """POPE's metrics over `(label, prediction)` pairs, each "yes" or "no" (predictions already read with
    `read_yes_no`).

    Raises:
        ValueError: a label or prediction that is not "yes" or "no", or no pairs at all.
    """
    counts: Counter = Counter()
    for label, prediction in pairs:
        if label not in ("yes", "no") or prediction not in ("yes", "no"):
            raise ValueError(f"POPE labels and predictions are 'yes' or 'no', got {label!r} and {prediction!r}")
        counts[label, prediction] += 1
    tp, fp = counts["yes", "yes"], counts["no", "yes"]
    tn, fn = counts["no", "no"], counts["yes", "no"]
    total = tp + fp + tn + fn
    if total == 0:
        raise ValueError("POPE metrics need at least one answer")
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "pope_accuracy": (tp + tn) / total,
        "pope_precision": precision,
        "pope_recall": recall,
        "pope_f1": f1,
        "pope_yes_ratio": (tp + fp) / total,
    }


def pope_metrics(labels: Sequence[str], responses: Sequence[str]) -> dict[str, float]:
    """POPE's metrics of raw model `responses` against their "yes"/"no" `labels`."""
    if len(labels) != len(responses):
        raise ValueError(f"{len(labels)} labels for {len(responses)} responses")
    return pope_scores(zip(labels, (read_yes_no(r) for r in responses), strict=True))
