"""Object-description metrics: which objects an answer names, against the objects an image holds. No torch.

An answer ("There is a red circle and two blue squares.") is read for object mentions in a closed vocabulary of
attribute and object words: an attribute followed by an object word ("red circle", plural "circles" too) names
that pair; an object word with no attribute before it ("a triangle") names the object word alone, which is right
when the image holds any object of that kind. Each answer's mentions are a set (naming the same object twice counts
once), as CHAIR counts them.

Over a set of answers, from the totals (micro-averaged):
- `describe_precision`: correct mentions / all mentions; `describe_recall`: the image's objects that were named /
  all its objects (distinct attribute-object pairs); `describe_f1` from the two;
- `chair_i` (CHAIR's instance rate, Rohrbach et al. 2018): hallucinated mentions / all mentions;
- `chair_s` (its sentence rate): answers with at least one hallucinated mention / all answers.
An empty denominator gives 0.0 (no mention at all: precision 0 and CHAIR_i 0).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

DESCRIBE_METRIC_KEYS: tuple[str, ...] = ("describe_precision", "describe_recall", "describe_f1", "chair_i", "chair_s")

Mention = tuple[str | None, str]
"""(attribute, object word), the attribute None for a bare object word."""


def mentions(answer: str, attributes: Collection[str], objects: Collection[str]) -> set[Mention]:
    """The objects `answer` names, as (attribute, object) pairs (module docstring); words match case-insensitively
    and an object word may take a plural "s"."""
    words = re.findall(r"[a-z]+", answer.lower())
    singular = {o + "s": o for o in objects} | {o: o for o in objects}
    found: set[Mention] = set()
    for i, word in enumerate(words):
        if word in singular:
            before = words[i - 1] if i else None
            found.add((before if before in attributes else None, singular[word]))
    return found


@dataclass(frozen=True)
class DescribeCounts:
    """One answer against its image: mentions, the correct ones, the image's objects and those named."""

    mentioned: int
    correct: int
    truth: int
    named: int

    @property
    def hallucinated(self) -> int:
        return self.mentioned - self.correct


def describe_counts(
    answer: str, truth: Iterable[tuple[str, str]], attributes: Collection[str], objects: Collection[str]
) -> DescribeCounts:
    """Count `answer`'s mentions against the image's objects `truth` ((attribute, object) pairs, repeats allowed)."""
    present = set(truth)
    said = mentions(answer, attributes, objects)
    kinds = {o for _, o in present}
    correct = sum(1 for a, o in said if ((a, o) in present if a is not None else o in kinds))
    named = sum(1 for a, o in present if (a, o) in said or (None, o) in said)
    return DescribeCounts(mentioned=len(said), correct=correct, truth=len(present), named=named)


def describe_scores(counts: Sequence[DescribeCounts]) -> dict[str, float]:
    """The metrics of the module docstring over the answers' `counts`.

    Raises:
        ValueError: no answers.
    """
    if not counts:
        raise ValueError("description metrics need at least one answer")
    mentioned = sum(c.mentioned for c in counts)
    correct = sum(c.correct for c in counts)
    truth = sum(c.truth for c in counts)
    named = sum(c.named for c in counts)
    precision = correct / mentioned if mentioned else 0.0
    recall = named / truth if truth else 0.0
    return {
        "describe_precision": precision,
        "describe_recall": recall,
        "describe_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "chair_i": (mentioned - correct) / mentioned if mentioned else 0.0,
        "chair_s": sum(1 for c in counts if c.hallucinated) / len(counts),
    }
