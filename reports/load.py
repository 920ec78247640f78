"""lmms-eval result folders → one tidy DataFrame: runs, their labels, tidy rows and the problems met.

`load_results` finds and reads each location's files (`reports.result_files`: the accepted layouts, and metadata
from the files' contents only), labels the runs and turns their results into the tidy table (`TIDY_COLUMNS`).
Per task it adds frame (`frame,none`, or the task config's `metadata.frame`), image mode (`metadata.image`), samples
per document (`metadata.samples` / `repeats`), documents scored (`record,none` or `n-samples`), dataset and split
(the first logged record of the samples file, else the task config).

Anything a table, figure or comparison cannot use is reported as a `Problem` (unknown metric, non-numeric, NaN or
infinite value, missing samples file or training record), never silently dropped. `RunSpec` lets a report config
name a run's label and method, or fill metadata its files do not hold.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from perpo.config import ConfigError
from perpo.io import jsonl_objects, read_jsonl
from perpo.objectives.losses import METHODS
from reports.catalog import direction, metric_info
from reports.result_files import discover, read_results, run_metadata

logger = logging.getLogger(__name__)

TIDY_COLUMNS = [
    "run",
    "model",
    "method",
    "adapter",
    "task",
    "dataset",
    "split",
    "image",
    "num_samples",
    "metric",
    "filter",
    "value",
    "stderr",
    "better",
    "n_docs",
    "seed",
    "frame",
    "loss",
    "n",
    "beta",
    "gamma",
    "margin",
    "lora_r",
    "lora_alpha",
    "is_group",
    "results_file",
]
"""Columns of the tidy table: one row per run x task x metric x filter. `n` is the training list size N (Table 3),
`num_samples` the evaluation samples per document (best-of-N), `n_docs` the documents scored."""

META_FIELDS = ("model", "adapter", "method", "seed", "loss", "n", "beta", "gamma", "margin", "lora_r", "lora_alpha")
"""Run-level metadata carried into every tidy row (plus `learning_rate`, `train_config` kept on the run only)."""


def method_label(method: str) -> str:
    """A method's display name (`perpo.objectives.losses.METHODS`: `perpo train --loss` names, `perpo grpo`, iterative
    PerPO); any other method string is shown as given."""
    entry = METHODS.get(method)
    return entry.label if entry else method


def method_colour(method: str) -> str | None:
    """A method's colour, the same in every figure (None for a method the registry does not know)."""
    entry = METHODS.get(method)
    return entry.colour if entry else None


def method_rank(method: str) -> float:
    """A method's row position in the tables: the registry's order (the paper's), unknown methods after PerPO's."""
    order = list(METHODS)
    return order.index(method) if method in order else len(order) - 0.5


NOT_METRICS = ("alias", "frame", "record", "samples", " ")
"""Keys of `results[task]` that are not metrics: labels and counts our tasks aggregate (`frame`, `record`)."""


@dataclass
class RunSpec:
    """One result location as a report config names it.

    Attributes:
        path: A `perpo eval` folder, a raw lmms-eval output folder, or a `*_results.json` file.
        label: Row label in tables and legends (default: from model and method).
        method: Overrides the method read from the training record (e.g. `sft` for a warm-up continuation).
        model_label: Display name of the (base) model, e.g. `LLaVA-v1.5-7B`.
        meta: Metadata the files do not hold (e.g. `{"n": 8}` for an external model), overriding what was read.
    """

    path: str
    label: str | None = None
    method: str | None = None
    model_label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        unknown = set(self.meta) - set(META_FIELDS) - {"learning_rate"}
        if unknown:
            raise ConfigError(f"run {self.path}: unknown meta key(s) {sorted(unknown)}; valid: {list(META_FIELDS)}")


@dataclass
class Problem:
    """Something a report could not use, kept for the report's "problems" section.

    Attributes:
        run: Run label. kind: `unknown_metric`, `non_numeric`, `non_finite` (NaN or ±inf), `missing_metric`,
            `missing_file`, `metadata`.
        task, metric: Where (empty when not about one metric). detail: A sentence for the user.
    """

    run: str
    kind: str
    task: str = ""
    metric: str = ""
    detail: str = ""


@dataclass
class Run:
    """One lmms-eval results file with its samples and metadata."""

    label: str
    path: Path
    results_file: Path
    results: dict[str, Any]
    samples_files: dict[str, Path]
    meta: dict[str, Any]
    model_label: str

    @property
    def method_label(self) -> str:
        return method_label(str(self.meta.get("method")))

    def samples(self, task: str) -> list[dict]:
        """The logged samples of `task` (one dict per document), or [] if the run has no samples file for it."""
        path = self.samples_files.get(task)
        return [] if path is None else read_jsonl(path)

    def first_sample(self, task: str) -> dict | None:
        path = self.samples_files.get(task)
        return None if path is None else next((row for _, row in jsonl_objects(path)), None)


@dataclass
class ResultSet:
    """Loaded runs, their tidy table (`TIDY_COLUMNS`) and the problems met while loading."""

    runs: list[Run]
    frame: pd.DataFrame
    problems: list[Problem]

    def run(self, label: str) -> Run:
        for run in self.runs:
            if run.label == label:
                return run
        raise ConfigError(f"no run labelled {label!r}; runs: {[r.label for r in self.runs]}")

    def value(self, run: str, task: str, metric: str, filter: str = "none") -> float | None:
        """One metric value, or None when the run lacks it."""
        rows = self.frame[
            (self.frame.run == run)
            & (self.frame.task == task)
            & (self.frame.metric == metric)
            & (self.frame["filter"] == filter)
        ]
        if rows.empty or pd.isna(rows.value.iloc[0]):
            return None
        return float(rows.value.iloc[0])


def model_display(model: str | None) -> str:
    """A short display name for a model id or folder (the last path component; display only)."""
    if not model:
        return "model"
    return Path(str(model).rstrip("/")).name or str(model)


# ---------------------------------------------------------------------------------------------- tidy rows


def _task_info(run: Run, task: str) -> dict[str, Any]:
    results = run.results
    values = results.get("results", {}).get(task, {})
    config = results.get("configs", {}).get(task, {})
    metadata = config.get("metadata") or {}
    if isinstance(metadata, list):  # some lmms-eval tasks write `metadata: [{version: ...}]`
        metadata = {k: v for item in metadata if isinstance(item, dict) for k, v in item.items()}
    first = run.first_sample(task) or {}
    record = first.get("record") if isinstance(first.get("record"), dict) else {}
    dataset = record.get("dataset") or ("fox" if "language" in record else None) or config.get("dataset_path")
    split = record.get("split") or (f"{record['language']}_page" if "language" in record else None)
    split = split or config.get("test_split")
    n_docs = values.get("record,none")
    if not isinstance(n_docs, (int, float)):
        n_docs = (results.get("n-samples", {}).get(task) or {}).get("effective")
    subtasks = results.get("group_subtasks", {}).get(task) or []
    return {
        "dataset": dataset,
        "split": split,
        "image": metadata.get("image", "image"),
        "num_samples": metadata.get("samples", config.get("repeats", 1)),
        "frame": values.get("frame,none", metadata.get("frame")),
        "n_docs": n_docs,
        "is_group": bool(subtasks),
    }


def _split_key(key: str) -> tuple[str, str] | None:
    metric, sep, filt = key.partition(",")
    if not sep:
        return None
    return metric, filt


def tidy_rows(run: Run, problems: list[Problem]) -> list[dict[str, Any]]:
    """The tidy rows of one run (`TIDY_COLUMNS`); unknown and non-numeric metrics are added to `problems`."""
    rows = []
    results = run.results
    declared = results.get("higher_is_better", {})
    tasks = dict(results.get("results", {}))
    for group, values in (results.get("groups") or {}).items():
        tasks.setdefault(group, values)
    for task, values in tasks.items():
        info = _task_info(run, task)
        if task not in run.samples_files and not info["is_group"]:
            problems.append(Problem(run.label, "missing_file", task, "", "no samples file (run with --log_samples)"))
        for key, value in values.items():
            parts = _split_key(key)
            if parts is None:
                continue
            metric, filt = parts
            if metric in NOT_METRICS or metric.endswith(("_stderr", "_stderr_clt", "_stderr_clustered")):
                continue
            number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
            if number is None:
                problems.append(Problem(run.label, "non_numeric", task, metric, f"value {value!r} is not a number"))
            elif not math.isfinite(number):
                problems.append(Problem(run.label, "non_finite", task, metric, f"value {value!r} is not finite"))
                number = None
            elif metric_info(metric) is None:
                problems.append(Problem(run.label, "unknown_metric", task, metric, "not in reports/tables.yaml"))
            stderr = values.get(f"{metric}_stderr,{filt}")
            rows.append(
                {
                    "run": run.label,
                    **{k: run.meta.get(k) for k in META_FIELDS},
                    **info,
                    "task": task,
                    "metric": metric,
                    "filter": filt,
                    "value": float(number) if number is not None else math.nan,
                    "stderr": float(stderr) if isinstance(stderr, (int, float)) else math.nan,
                    "better": direction(metric, (declared.get(task) or {}).get(metric)),
                    "results_file": str(run.results_file),
                }
            )
        if task == "mmvet" and task in run.samples_files:
            for derived in mmvet_capability_rows(run, task):
                rows.append(
                    {
                        "run": run.label,
                        **{k: run.meta.get(k) for k in META_FIELDS},
                        **info,
                        "task": task,
                        "filter": "none",
                        "stderr": math.nan,
                        "better": "higher",
                        "results_file": str(run.results_file),
                        **derived,
                    }
                )
    return rows


MMVET_CAPABILITIES = ("rec", "ocr", "know", "gen", "spat", "math")


def mmvet_capability_rows(run: Run, task: str = "mmvet") -> list[dict[str, Any]]:
    """Table 5's per-capability MM-Vet scores (0-100), from the logged samples of lmms-eval's `mmvet` task.

    lmms-eval's mmvet aggregation computes them (mean score of the questions that need a capability, x 100) but
    only logs them; each sample's `gpt_eval_score` holds `capabilities` and `score`, so they are recomputed here
    the same way, as metrics `mmvet_<capability>` of the task.
    """
    scores = [s.get("gpt_eval_score") for s in run.samples(task)]
    scores = [s for s in scores if isinstance(s, dict) and "score" in s and "capabilities" in s]
    if not scores:
        return []
    rows = []
    for cap in MMVET_CAPABILITIES:
        chosen = [float(s["score"]) for s in scores if cap in str(s["capabilities"]).split(",")]
        if chosen:
            rows.append({"metric": f"mmvet_{cap}", "value": 100.0 * sum(chosen) / len(chosen), "n_docs": len(chosen)})
    return rows


# ---------------------------------------------------------------------------------------------- entry point


def _unique_labels(runs: list[Run], explicit: list[bool]) -> None:
    """Make default labels unique by the first metadata field that differs among runs sharing a label."""
    by_label: dict[str, list[int]] = {}
    for index, run in enumerate(runs):
        by_label.setdefault(run.label, []).append(index)
    for label, indices in by_label.items():
        if len(indices) < 2:
            continue
        if all(explicit[i] for i in indices):
            raise ConfigError(f"two runs are labelled {label!r}; labels must be unique")
        for name in ("n", "gamma", "margin", "lora_r", "beta", "seed", "adapter"):
            values = [runs[i].meta.get(name) for i in indices]
            if len(set(map(str, values))) == len(values):
                for i, value in zip(indices, values, strict=True):
                    if not explicit[i]:
                        runs[i].label = f"{label} ({'γ' if name == 'gamma' else name}={value})"
                break
        else:
            for k, i in enumerate(indices, start=1):
                if not explicit[i]:
                    runs[i].label = f"{label} #{k}"


def load_results(specs: Sequence[RunSpec | str | Path]) -> ResultSet:
    """Load result locations into one tidy table.

    Args:
        specs: `RunSpec`s or plain paths. A raw lmms-eval folder with several results files gives several runs.

    Returns:
        The runs (in the order given), the tidy DataFrame (`TIDY_COLUMNS`) and the problems found.

    Raises:
        FileNotFoundError: If a location holds no results file.
        ConfigError: If two runs are given the same explicit label, or a results or metadata file is not valid
            JSON of the expected shape (the message names the file).
    """
    runs: list[Run] = []
    explicit: list[bool] = []
    problems: list[Problem] = []
    notes_by_run: list[list[str]] = []
    for spec in specs:
        spec = spec if isinstance(spec, RunSpec) else RunSpec(path=str(spec))
        for folder, results_file, samples in discover(spec.path):
            results = read_results(results_file)
            meta, notes = run_metadata(folder, results)
            if spec.method:
                meta["method"] = spec.method
            meta.update(spec.meta)
            model_label = spec.model_label or model_display(meta.get("model"))
            method = method_label(str(meta["method"]))
            label = spec.label or (model_label if meta["method"] == "base" else f"{model_label} + {method}")
            runs.append(Run(label, folder, results_file, results, samples, meta, model_label))
            explicit.append(spec.label is not None)
            notes_by_run.append(notes)
    _unique_labels(runs, explicit)
    rows: list[dict[str, Any]] = []
    for run, notes in zip(runs, notes_by_run, strict=True):
        problems += [Problem(run.label, "metadata", detail=note) for note in notes]
        rows += tidy_rows(run, problems)
    frame = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    for problem in problems:
        logger.info("%s: %s %s %s %s", problem.run, problem.kind, problem.task, problem.metric, problem.detail)
    return ResultSet(runs, frame, problems)


def problems_frame(problems: Iterable[Problem]) -> pd.DataFrame:
    """The problems as a DataFrame (run, kind, task, metric, detail)."""
    return pd.DataFrame([vars(p) for p in problems], columns=["run", "kind", "task", "metric", "detail"])
