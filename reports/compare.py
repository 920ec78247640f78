"""Before/after: two runs → every shared metric with its change, and per-sample wins and losses.

- metrics: every (task, metric, filter) both runs have, with base, after, change (after − base) and whether that
  is better, worse or equal by the metric's direction (the results file's `higher_is_better`, else the catalogue);
- per sample: the two samples files of each shared task joined on the logged record id (`record.id`, else
  `doc_id`). Grounding (records with `gt_box`): AP@50 wins (miss → hit) and losses (hit → miss), IoU up / down;
  OCR (samples with `edit_dist`): wins where the edit distance fell, losses where it rose. Best-of-N tasks are
  compared on their first sample (`ap50_first`, `iou_first`, `edit_dist_first`).

The gallery of changed answers is drawn by `reports.gallery`, the comparison folder written by
`reports.comparison_folder`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import pandas as pd

from reports.load import Problem, ResultSet, Run

logger = logging.getLogger(__name__)

SCORE_KEYS = {
    "grounding": (("iou", "ap50"), ("iou_first", "ap50_first")),
    "ocr": (("edit_dist", None), ("edit_dist_first", None)),
}
"""Per kind: (score, hit) keys of greedy tasks, then of best-of-N tasks (compared on their first sample)."""


@dataclass
class Comparison:
    """The outcome of `compare_runs`.

    Attributes:
        base, after: The two runs. metrics: shared metrics with change (`metrics_columns`).
        samples: one row per joined document (task, kind, id, base/after score and hit, delta, outcome, answers,
            record fields for the gallery). summary: wins and losses per task. problems: what could not be joined.
    """

    base: Run
    after: Run
    metrics: pd.DataFrame
    samples: pd.DataFrame
    summary: pd.DataFrame
    problems: list[Problem]


def shared_metrics(results: ResultSet, base: str, after: str) -> pd.DataFrame:
    """Every numeric (task, metric, filter) of both runs with base, after, change and verdict."""
    frame = results.frame.dropna(subset=["value"])
    keys = ["task", "metric", "filter"]
    left = frame[frame.run == base][[*keys, "value", "better"]].drop_duplicates(keys)
    right = frame[frame.run == after][[*keys, "value"]].drop_duplicates(keys)
    merged = left.merge(right, on=keys, suffixes=("_base", "_after"))
    merged = merged.rename(columns={"value_base": "base", "value_after": "after"})
    merged["change"] = merged["after"] - merged["base"]

    def verdict(row: pd.Series) -> str:
        if abs(row.change) <= 1e-12 or row.better == "none":
            return "same" if abs(row.change) <= 1e-12 else "changed"
        improved = row.change > 0 if row.better == "higher" else row.change < 0
        return "better" if improved else "worse"

    merged["verdict"] = merged.apply(verdict, axis=1) if not merged.empty else pd.Series(dtype=str)
    return merged[[*keys, "base", "after", "change", "verdict", "better"]].reset_index(drop=True)


def _answer(sample: dict) -> str:
    record = sample.get("record") if isinstance(sample.get("record"), dict) else {}
    if "response" in record:
        return str(record["response"])
    if "responses" in record:
        return str(record["responses"][0]) if record["responses"] else ""
    resps = sample.get("filtered_resps")
    return str(resps[0] if isinstance(resps, list) and resps else resps or "")


def _kind(sample: dict) -> str | None:
    record = sample.get("record") if isinstance(sample.get("record"), dict) else {}
    if "gt_box" in record:
        return "grounding"
    if "edit_dist" in sample or "edit_dist_first" in sample:
        return "ocr"
    return None


def _keys(sample: dict, kind: str) -> tuple[str, str | None] | None:
    for score, hit in SCORE_KEYS[kind]:
        if score in sample:
            return score, hit
    return None


def _sample_id(sample: dict) -> str:
    record = sample.get("record") if isinstance(sample.get("record"), dict) else {}
    return str(record.get("id", f"doc{sample.get('doc_id')}"))


def joined_samples(base: Run, after: Run, problems: list[Problem]) -> pd.DataFrame:
    """One row per document of every task both runs logged, joined on the record id (see the module docstring)."""
    rows = []
    for task in [t for t in base.samples_files if t in after.samples_files]:
        left = {_sample_id(s): s for s in base.samples(task)}
        right = {_sample_id(s): s for s in after.samples(task)}
        shared = [key for key in left if key in right]
        if len(shared) < max(len(left), len(right)):
            problems.append(
                Problem(
                    after.label,
                    "metadata",
                    task,
                    "",
                    f"{len(shared)} documents in both runs "
                    f"({len(left)} base, {len(right)} after): only those are compared",
                )
            )
        for key in shared:
            a, b = left[key], right[key]
            kind = _kind(a)
            keys = _keys(a, kind) if kind else None
            if keys is None or keys[0] not in b:
                continue
            score, hit = keys
            record = a.get("record") if isinstance(a.get("record"), dict) else {}
            after_record = b.get("record") if isinstance(b.get("record"), dict) else {}
            delta = float(b[score]) - float(a[score])
            better = delta < 0 if kind == "ocr" else delta > 0
            if hit is not None and a.get(hit) != b.get(hit):
                outcome = "win" if float(b[hit]) > float(a[hit]) else "loss"
            elif kind == "ocr" and abs(delta) > 1e-12:
                outcome = "win" if better else "loss"
            else:
                outcome = "same"
            rows.append(
                {
                    "task": task,
                    "kind": kind,
                    "id": key,
                    "score_name": score,
                    "base_score": float(a[score]),
                    "after_score": float(b[score]),
                    "delta": delta,
                    "base_hit": float(a[hit]) if hit else math.nan,
                    "after_hit": float(b[hit]) if hit else math.nan,
                    "outcome": outcome,
                    "score_moved": "up" if delta > 1e-12 else "down" if delta < -1e-12 else "same",
                    "base_answer": _answer(a),
                    "after_answer": _answer(b),
                    "changed": _answer(a) != _answer(b),
                    "reference": str(a.get("target", "")),
                    "expression": record.get("expression", ""),
                    "image": record.get("image", ""),
                    "input_media": (a.get("input_media") or [""])[0],
                    "frame": record.get("frame", ""),
                    "width": record.get("width"),
                    "height": record.get("height"),
                    "gt_box": record.get("gt_box"),
                    "base_box": _first_box(record),
                    "after_box": _first_box(after_record),
                }
            )
    return pd.DataFrame(rows)


def _first_box(record: dict) -> list[float] | None:
    if "pred_box" in record:
        return record["pred_box"]
    boxes = record.get("pred_boxes") or [None]
    return boxes[0]


def summarise(samples: pd.DataFrame) -> pd.DataFrame:
    """Wins, losses and score moves per task."""
    if samples.empty:
        return pd.DataFrame(
            columns=[
                "task",
                "kind",
                "score",
                "documents",
                "wins",
                "losses",
                "same",
                "score_up",
                "score_down",
                "mean_delta",
                "answers_changed",
            ]
        )
    rows = []
    for task, part in samples.groupby("task", sort=False):
        rows.append(
            {
                "task": task,
                "kind": part.kind.iloc[0],
                "score": part.score_name.iloc[0],
                "documents": len(part),
                "wins": int((part.outcome == "win").sum()),
                "losses": int((part.outcome == "loss").sum()),
                "same": int((part.outcome == "same").sum()),
                "score_up": int((part.score_moved == "up").sum()),
                "score_down": int((part.score_moved == "down").sum()),
                "mean_delta": float(part.delta.mean()),
                "answers_changed": int(part.changed.sum()),
            }
        )
    return pd.DataFrame(rows)


def compare_runs(results: ResultSet, base: str, after: str) -> Comparison:
    """Compare two loaded runs by label (see the module docstring)."""
    base_run, after_run = results.run(base), results.run(after)
    problems: list[Problem] = []
    metrics = shared_metrics(results, base, after)
    if metrics.empty:
        problems.append(Problem(after, "missing_metric", detail=f"{base} and {after} share no metric"))
    samples = joined_samples(base_run, after_run, problems)
    return Comparison(base_run, after_run, metrics, samples, summarise(samples), problems)
