"""The paper's figures from loaded runs, as matplotlib Figures (Agg backend) saved to PNG.

- `best_of_n_figure` (Figure 1b): the best-of-k curve `<metric>_bo1`..`<metric>_bo<N>` of every best-of-N task in
  the runs (one N-sample run gives the whole curve: lmms_tasks/bestofk.py's unbiased estimate), one line each;
- `image_ablation_figure` (Figure 1c): per run and benchmark, bars with and without the image: tasks of one run
  that share dataset, split and frame and differ in the task config's `metadata.image` (image / none / blank);
- `sweep_figure` (Table 3 / Figure 2a / Figure 4 as lines): a metric against a training setting (N, γ, margin) read
  from the runs' training records, one line per method, one panel per benchmark.

Each builder returns None when the runs hold nothing to draw, so a report draws only what its runs support.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from perpo.io import atomic_open  # noqa: E402
from reports.load import ResultSet, method_colour, method_label, method_rank  # noqa: E402

logger = logging.getLogger(__name__)

METRIC_LABELS = {"ap50": "AP@50 (%)", "iou": "IoU (%)", "edit_dist": "edit distance", "f1": "F1"}
PERCENT = {"ap50", "iou", "parse_fail", "pope_f1_score", "mmmu_acc", "exact_match"}
"""Metrics stored as fractions and shown as percentages."""
SWEEP_FIELDS = {"n": "training list size N", "gamma": "γ (pair-weight exponent)", "margin": "data margin m"}
IMAGE_MODES = {"image": "with image", "none": "without image", "blank": "blank image"}


def _scale(metric: str) -> float:
    base = re.sub(r"_(first|mean|best|bo\d+)$", "", metric)
    return 100.0 if base in PERCENT else 1.0


def best_of_n_figure(results: ResultSet, metric: str = "ap50") -> Figure | None:
    """Figure 1b: expected best-of-k `metric` against k, one line per (run, best-of-N task).

    Args:
        results: Loaded runs; tasks with `<metric>_bo1`.. keys are drawn.
        metric: `ap50`, `iou` (grounding) or `edit_dist`, `f1` (OCR best-of-N tasks).

    Returns:
        The figure (one axes: x "samples per prompt N", y the metric), or None if no run has the curve.
    """
    frame = results.frame
    curve = frame[frame.metric.str.fullmatch(rf"{metric}_bo\d+") & (frame["filter"] == "none")].copy()
    if curve.empty:
        return None
    curve["k"] = curve.metric.str.extract(rf"{metric}_bo(\d+)", expand=False).astype(int)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    scale = _scale(metric)
    lines = curve.groupby(["run", "task"], sort=False)
    # a method's colour where it names one line; several runs of one method keep matplotlib's cycle apart
    methods = [part.method.iloc[0] for _, part in lines]
    for ((run, task), part), method in zip(lines, methods, strict=True):
        part = part.sort_values("k")
        color = method_colour(method) if methods.count(method) == 1 else None
        ax.plot(part.k, part.value * scale, marker="o", markersize=3, label=f"{run} · {task}", color=color)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("samples per prompt N (best of N)")
    ax.set_ylabel(f"best-of-N {METRIC_LABELS.get(metric, metric)}")
    ax.set_title("Best-of-N (oracle reward selection)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def image_pairs(results: ResultSet, metric: str = "ap50") -> pd.DataFrame:
    """The values behind Figure 1c: one row per run x benchmark x image mode (`image`, `none`, `blank`)."""
    frame = results.frame
    part = frame[(frame.metric == metric) & (frame["filter"] == "none") & (frame.num_samples == 1)]
    part = part[part.image.isin(list(IMAGE_MODES)) & ~part.is_group]
    keys = ["run", "dataset", "split", "frame"]
    part = part.dropna(subset=["dataset", "split"])
    modes = part.groupby(keys, dropna=False)["image"].transform("nunique")
    part = part[(modes > 1)]
    return part[[*keys, "image", "task", "value"]].reset_index(drop=True)


def image_ablation_figure(results: ResultSet, metric: str = "ap50") -> Figure | None:
    """Figure 1c: bars of `metric` with and without the image, per run and benchmark.

    Returns:
        One axes with a group of bars per (run, benchmark) and one bar per image mode, or None when no run has
        both an image and an image-less variant of a benchmark.
    """
    pairs = image_pairs(results, metric)
    if pairs.empty:
        return None
    pairs["group"] = pairs.run + "\n" + pairs.dataset.astype(str) + " " + pairs.split.astype(str)
    groups = list(dict.fromkeys(pairs.group))
    modes = [m for m in IMAGE_MODES if m in set(pairs.image)]
    width = 0.8 / len(modes)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(groups)), 4))
    scale = _scale(metric)
    for index, mode in enumerate(modes):
        xs, heights = [], []
        for g, group in enumerate(groups):
            value = pairs[(pairs.group == group) & (pairs.image == mode)].value
            if not value.empty:
                xs.append(g + (index - (len(modes) - 1) / 2) * width)
                heights.append(float(value.iloc[0]) * scale)
        bars = ax.bar(xs, heights, width=width, label=IMAGE_MODES[mode])
        ax.bar_label(bars, fmt="%.1f" if scale != 1 else "%.3f", fontsize=7)
    top = float(pairs.value.max()) * scale
    ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title("The image ablation: " + " vs ".join(IMAGE_MODES[m] for m in modes))
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def sweep_frame(results: ResultSet, field: str, series: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """The values behind a sweep: trained runs with `field` set, for each (task, metric) of `series`."""
    frame = results.frame
    part = frame[(frame["filter"] == "none") & frame[field].notna() & (frame.method != "base")]
    wanted = pd.Series(list(zip(part.task, part.metric, strict=True)), index=part.index).isin(list(series))
    return part[wanted][["run", "method", field, "task", "metric", "value"]].reset_index(drop=True)


def sweep_figure(results: ResultSet, field: str, series: Sequence[tuple[str, str]]) -> Figure | None:
    """A metric against a training setting, one line per method, one panel per (task, metric) of `series`.

    Args:
        results: Loaded runs; trained runs whose training record sets `field` are used.
        field: `n`, `gamma` or `margin` (the tidy table's columns from train_config.json / stats.json).
        series: The (task, metric) pairs to draw, one panel each.

    Returns:
        The figure, or None when fewer than two distinct values of `field` have a value to draw.
    """
    data = sweep_frame(results, field, series)
    if data.empty or data[field].nunique() < 2:
        return None
    panels = [s for s in series if not data[(data.task == s[0]) & (data.metric == s[1])].empty]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    methods = sorted(set(data.method), key=method_rank)
    for ax, (task, metric) in zip(axes[0], panels, strict=True):
        scale = _scale(metric)
        for method in methods:
            part = data[(data.task == task) & (data.metric == metric) & (data.method == method)]
            part = part.groupby(field, as_index=False)["value"].mean().sort_values(field)
            if not part.empty:
                label, color = method_label(method), method_colour(method)
                ax.plot(part[field], part.value * scale, marker="o", label=label, color=color)
        if field == "n":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(SWEEP_FIELDS.get(field, field))
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.set_title(task, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Sweep over {SWEEP_FIELDS.get(field, field)}")
    fig.tight_layout()
    return fig


def default_series(results: ResultSet, field: str, limit: int = 4) -> list[tuple[str, str]]:
    """The panels of a sweep when the report config names none: greedy image tasks shared by the sweep's runs,
    with AP@50 for grounding and edit distance for OCR, then the first numeric metric of other tasks."""
    frame = results.frame
    part = frame[(frame["filter"] == "none") & frame[field].notna() & (frame.method != "base")]
    part = part[(part.num_samples == 1) & (part.image == "image") & ~part.is_group]
    series = []
    for task, metrics in part.groupby("task", sort=False)["metric"]:
        names = list(dict.fromkeys(metrics))
        pick = next((m for m in ("ap50", "edit_dist") if m in names), None) or (names[0] if names else None)
        if pick is not None:
            series.append((task, pick))
    return series[:limit]


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write the figure as PNG atomically and close it."""
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi)
    plt.close(fig)
    return path
