"""Writing a before/after comparison folder: `index.md`, metrics and wins/losses as Markdown and CSV, per-sample
CSV and the gallery; and the runs and problems tables that the report's `index.md` shares."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from reports.compare import Comparison
from reports.gallery import write_gallery
from reports.load import Problem, Run


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:g}" if isinstance(value, float) else str(value)


def runs_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run (as text): label, method, model, adapter, training settings, seed, results file."""
    fields = {"N": "n", "γ": "gamma", "β": "beta", "margin": "margin", "LoRA r": "lora_r", "seed": "seed"}
    rows = []
    for run in runs:
        row = {"run": run.label, "method": run.method_label, "model": _text(run.meta.get("model"))}
        row["adapter"] = _text(run.meta.get("adapter"))
        row.update({name: _text(run.meta.get(key)) for name, key in fields.items()})
        row["results"] = str(run.results_file)
        rows.append(row)
    return pd.DataFrame(rows, dtype=object)


def problems_markdown(problems: Sequence[Problem]) -> str:
    """The problems as a Markdown table (or a line saying there were none)."""
    from reports.load import problems_frame
    from reports.markdown import frame_to_markdown

    if not problems:
        return "None.\n"
    frame = problems_frame(problems).drop_duplicates()
    return frame_to_markdown(frame)


def write_comparison(
    comparison: Comparison, out: Path, gallery_size: int = 12, image_roots: Sequence[str | Path] = ()
) -> Path:
    """Write the comparison into the folder `out` and return its `index.md`.

    Files: `index.md` (everything, linked), `metrics.md/.csv` (shared metrics with change), `wins_losses.md/.csv`
    (per task), `per_sample.csv` (every joined document), `gallery/` (`index.html`, PNGs, `ocr.html`).
    """
    from reports.markdown import frame_to_markdown, write_text

    out.mkdir(parents=True, exist_ok=True)
    base, after = comparison.base.label, comparison.after.label
    metrics = comparison.metrics.rename(columns={"base": base, "after": after})
    write_text(out / "metrics.md", frame_to_markdown(metrics))
    write_text(out / "metrics.csv", comparison.metrics.to_csv(index=False))
    write_text(out / "wins_losses.md", frame_to_markdown(comparison.summary))
    write_text(out / "wins_losses.csv", comparison.summary.to_csv(index=False))
    per_sample = comparison.samples.drop(columns=["gt_box", "base_box", "after_box"], errors="ignore")
    write_text(out / "per_sample.csv", per_sample.to_csv(index=False))
    gallery = write_gallery(comparison, out / "gallery", gallery_size, image_roots)

    lines = [
        f"# {base} → {after}",
        "",
        "## Runs",
        "",
        frame_to_markdown(runs_frame([comparison.base, comparison.after])),
    ]
    lines += [
        "## Shared metrics",
        "",
        f"Change = {after} − {base}; verdict by each metric's direction. "
        "Files: [metrics.md](metrics.md), [metrics.csv](metrics.csv).",
        "",
        frame_to_markdown(metrics),
    ]
    lines += [
        "## Per-sample wins and losses",
        "",
        "Grounding: a win is a miss (IoU < 0.5) that became a hit, a loss the reverse; score_up/down count IoU "
        "moves. OCR: a win is a lower edit distance. Best-of-N tasks compare their first sample. Files: "
        "[wins_losses.csv](wins_losses.csv), [per_sample.csv](per_sample.csv).",
        "",
        frame_to_markdown(comparison.summary),
    ]
    lines += ["## Gallery", ""]
    if gallery["index"]:
        lines += [
            f"[gallery/index.html](gallery/index.html): the {gallery_size} most-changed answers per kind "
            "(ground truth green, base red, after blue)."
        ]
        if gallery["ocr"]:
            lines.append("OCR: [gallery/ocr.html](gallery/ocr.html) (differences highlighted).")
        lines.append("")
        lines += [f"![{png.stem}](gallery/{png.name})" for png in gallery["grounding"]]
    else:
        lines.append("No answer changed between the two runs.")
    lines += ["", "## Problems", "", problems_markdown(comparison.problems)]
    return write_text(out / "index.md", "\n".join(lines) + "\n")
