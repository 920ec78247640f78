"""Aggregations of the non-numeric per-document fields the tasks return (lmms-eval averages only numbers).

- `frame` (a label): aggregated to the task's single frame, so `results[task]["frame,none"]` names it.
- `record` (a dict of identifying fields per document, written verbatim to the samples JSONL): aggregated to the
  number of records, so `results[task]["record,none"]` is the number of scored documents.
"""

from __future__ import annotations

from collections.abc import Sequence


def same_value(items: Sequence[str]) -> str:
    """The label shared by every document, or the sorted distinct labels joined with "+"."""
    return "+".join(sorted(set(items)))


def count(items: Sequence[object]) -> int:
    """The number of per-document records."""
    return len(items)
