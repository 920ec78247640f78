"""Before/after: two runs → every shared metric with its change, per-sample wins and losses, and a small gallery.

- metrics: every (task, metric, filter) both runs have, with base, after, change (after − base) and whether that
  is better, worse or equal by the metric's direction (the results file's `higher_is_better`, else the catalogue);
- per sample: the two samples files of each shared task joined on the logged record id (`record.id`, else
  `doc_id`). Grounding (records with `gt_box`): AP@50 wins (miss → hit) and losses (hit → miss), IoU up / down;
  OCR (samples with `edit_dist`): wins where the edit distance fell, losses where it rose. Best-of-N tasks are
  compared on their first sample (`ap50_first`, `iou_first`, `edit_dist_first`);
- gallery: the documents whose answer changed, most-changed score first (`gallery_size` of them per kind):
  grounding as PNGs of the image (in the task's frame: LLaVA-1.5's padded square for `padded`) upscaled with the
  ground truth (green), the base box (red) and the after box (blue) and a legend; OCR as one HTML page with the
  reference and the two answers, the words only the base has struck through in red and those only the after
  answer has in blue (difflib over words).
"""

from __future__ import annotations

import difflib
import html
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from perpo.io import atomic_open, load_image
from reports.load import Problem, ResultSet, Run

if TYPE_CHECKING:
    from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

GT_COLOUR = (0, 170, 0)
BASE_COLOUR = (220, 30, 30)
AFTER_COLOUR = (30, 90, 255)
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


# ---------------------------------------------------------------------------------------------- gallery


def gallery_rows(samples: pd.DataFrame, kind: str, size: int) -> pd.DataFrame:
    """The `size` documents of `kind` whose answer changed, largest |score change| first (ties by task, id)."""
    if samples.empty:
        return samples
    part = samples[(samples.kind == kind) & samples.changed].copy()
    part["magnitude"] = part.delta.abs()
    part = part.sort_values(["magnitude", "task", "id"], ascending=[False, True, True], kind="stable")
    return part.head(size)


def resolve_image(row: pd.Series, image_roots: Sequence[str | Path]) -> Path | None:
    """The image of a logged document: the recorded path, the sample's `input_media`, else the same relative
    tail (file name, then parent/file name, ...) under each of `image_roots`."""
    for candidate in (row.get("image"), row.get("input_media")):
        if candidate and Path(str(candidate)).is_file():
            return Path(str(candidate))
    recorded = Path(str(row.get("image") or row.get("input_media") or ""))
    for root in image_roots:
        for depth in range(1, min(4, len(recorded.parts)) + 1):
            candidate = Path(root) / Path(*recorded.parts[-depth:])
            if candidate.is_file():
                return candidate
    return None


def _canvas(row: pd.Series, path: Path | None) -> Image.Image:
    from PIL import Image

    from lmms_tasks.images import expand2square

    width, height = int(row.get("width") or 64), int(row.get("height") or 64)
    if path is not None:
        image = load_image(path)
    else:
        image = Image.new("RGB", (width, height), (200, 200, 200))
    if row.get("frame") == "padded":  # LLaVA-1.5's square, as the model saw it and as the boxes are normalised
        image = expand2square(image)
    longest = max(image.size)
    if longest < 256:  # small synthetic scenes: nearest-neighbour upscale so boxes are visible
        factor = max(1, 256 // longest)
        image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    elif longest > 512:
        factor = 512 / longest
        image = image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.LANCZOS)
    return image


def _draw_box(
    draw: ImageDraw.ImageDraw,
    box: Sequence[float] | None,
    size: tuple[int, int],
    colour: tuple[int, int, int],
    width: int = 3,
) -> None:
    if box is None:
        return
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = size
    draw.rectangle([x1 * w, y1 * h, max(x1 * w, x2 * w), max(y1 * h, y2 * h)], outline=colour, width=width)


def _clip(text: str, limit: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def draw_grounding_example(row: pd.Series, path: Path | None, out: Path, labels: tuple[str, str]) -> Path:
    """One gallery PNG: the image (frame-aware, upscaled) with GT (green), base (red) and after (blue) boxes, and
    a legend with the expression, both answers and their scores. Boxes are normalised xyxy in the task's frame."""
    from PIL import Image, ImageDraw, ImageFont

    image = _canvas(row, path)
    draw = ImageDraw.Draw(image)
    _draw_box(draw, row.gt_box, image.size, GT_COLOUR)
    _draw_box(draw, row.base_box, image.size, BASE_COLOUR)
    _draw_box(draw, row.after_box, image.size, AFTER_COLOUR, width=2)
    font = ImageFont.load_default()
    name = "IoU" if row.score_name.startswith("iou") else row.score_name
    lines = [
        ((0, 0, 0), f"{row.task} · {row.id}" + ("" if path is not None else " (image not found)")),
        ((0, 0, 0), f'"{_clip(row.expression)}"'),
        (GT_COLOUR, f"ground truth {_fmt_box(row.gt_box)}"),
        (BASE_COLOUR, f"{labels[0]}: {_clip(row.base_answer, 40)}  {name} {row.base_score:.2f}"),
        (AFTER_COLOUR, f"{labels[1]}: {_clip(row.after_answer, 40)}  {name} {row.after_score:.2f}"),
    ]
    line_height = 14
    width = max(image.width, 8 + max(int(draw.textlength(text, font=font)) for _, text in lines))
    sheet = Image.new("RGB", (width, image.height + line_height * len(lines) + 8), (255, 255, 255))
    sheet.paste(image, (0, 0))
    text_draw = ImageDraw.Draw(sheet)
    for index, (colour, text) in enumerate(lines):
        text_draw.text((4, image.height + 4 + index * line_height), text, fill=colour, font=font)
    with atomic_open(out, "wb") as handle:
        sheet.save(handle, format="PNG")
    return out


def _fmt_box(box: Sequence[float] | None) -> str:
    return "none" if box is None else "[" + ", ".join(f"{float(v):.2f}" for v in box) + "]"


def _words(text: str) -> list[str]:
    return re.findall(r"\s+|[^\s]+", text)


def diff_html(base: str, after: str) -> tuple[str, str]:
    """The two texts as HTML, words only in `base` wrapped in `<del>`, words only in `after` in `<ins>`."""
    left, right = _words(base), _words(after)
    matcher = difflib.SequenceMatcher(None, left, right, autojunk=False)
    out_left, out_right = [], []
    for op, a1, a2, b1, b2 in matcher.get_opcodes():
        old, new = html.escape("".join(left[a1:a2])), html.escape("".join(right[b1:b2]))
        if op == "equal":
            out_left.append(old)
            out_right.append(new)
            continue
        if old:
            out_left.append(f"<del>{old}</del>")
        if new:
            out_right.append(f"<ins>{new}</ins>")
    return "".join(out_left), "".join(out_right)


OCR_STYLE = """<style>
body { font-family: sans-serif; margin: 1.5em; }
.example { border-top: 1px solid #ccc; padding: .8em 0; }
.texts { display: grid; grid-template-columns: 1fr 1fr 1fr; gap: 1em; }
pre { white-space: pre-wrap; background: #f7f7f7; padding: .5em; margin: 0; }
del { color: #dc1e1e; background: #fde8e8; }
ins { color: #1e5aff; background: #e8eefd; text-decoration: none; }
</style>"""


def ocr_gallery_html(rows: pd.DataFrame, labels: tuple[str, str], title: str) -> str:
    """An HTML page: per page id the reference, the base answer and the after answer, differences highlighted."""
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{OCR_STYLE}",
        f"</head><body><h1>{html.escape(title)}</h1>",
        f"<p><del>red, struck</del>: only in {html.escape(labels[0])}; <ins>blue</ins>: only in "
        f"{html.escape(labels[1])}. Edit distance: lower is better.</p>",
    ]
    for row in rows.itertuples(index=False):
        left, right = diff_html(row.base_answer, row.after_answer)
        parts.append(
            f"<div class='example'><h3>{html.escape(row.task)} · {html.escape(str(row.id))}: edit distance "
            f"{row.base_score:.3f} → {row.after_score:.3f} ({row.outcome})</h3><div class='texts'>"
            f"<div><b>reference</b><pre>{html.escape(row.reference)}</pre></div>"
            f"<div><b>{html.escape(labels[0])}</b><pre>{left}</pre></div>"
            f"<div><b>{html.escape(labels[1])}</b><pre>{right}</pre></div></div></div>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def write_gallery(
    comparison: Comparison, out: Path, size: int = 12, image_roots: Sequence[str | Path] = ()
) -> dict[str, list[Path]]:
    """Draw the gallery into `out` (PNG per grounding example, `index.html`, `ocr.html`).

    Returns:
        `{"grounding": [png paths], "ocr": [html path], "index": [index.html]}` (lists may be empty).
    """
    labels = (comparison.base.label, comparison.after.label)
    written: dict[str, list[Path]] = {"grounding": [], "ocr": [], "index": []}
    cards = []
    for row in gallery_rows(comparison.samples, "grounding", size).itertuples(index=False):
        series = pd.Series(row._asdict())
        path = resolve_image(series, image_roots)
        if path is None:
            comparison.problems.append(
                Problem(
                    comparison.after.label,
                    "missing_file",
                    row.task,
                    "",
                    f"image of {row.id} not found ({row.image}); drawn on a grey canvas (pass --image_root)",
                )
            )
        png = draw_grounding_example(series, path, out / f"{_safe(row.task)}__{_safe(str(row.id))}.png", labels)
        written["grounding"].append(png)
        cards.append(
            f"<figure><img src='{html.escape(png.name)}' alt='{html.escape(str(row.id))}'><figcaption>"
            f"{html.escape(row.task)} · {html.escape(str(row.id))}: {row.outcome}, IoU {row.base_score:.2f} → "
            f"{row.after_score:.2f}</figcaption></figure>"
        )
    ocr_rows = gallery_rows(comparison.samples, "ocr", size)
    if not ocr_rows.empty:
        page = out / "ocr.html"
        with atomic_open(page, "w", encoding="utf-8") as handle:
            handle.write(ocr_gallery_html(ocr_rows, labels, f"OCR answers that changed: {labels[0]} → {labels[1]}"))
        written["ocr"].append(page)
    if cards or written["ocr"]:
        index = out / "index.html"
        ocr_link = "<p><a href='ocr.html'>OCR answers that changed</a></p>" if written["ocr"] else ""
        legend = (
            f"<p>ground truth <b style='color:rgb{GT_COLOUR}'>green</b>, {html.escape(labels[0])} "
            f"<b style='color:rgb{BASE_COLOUR}'>red</b>, {html.escape(labels[1])} "
            f"<b style='color:rgb{AFTER_COLOUR}'>blue</b></p>"
        )
        with atomic_open(index, "w", encoding="utf-8") as handle:
            handle.write(
                "<!DOCTYPE html><html><head><meta charset='utf-8'><title>gallery</title><style>figure{display:"
                "inline-block;margin:.5em;vertical-align:top}</style></head><body>"
                f"<h1>Answers that changed: {html.escape(labels[0])} → {html.escape(labels[1])}</h1>{legend}"
                f"{ocr_link}{''.join(cards)}</body></html>\n"
            )
        written["index"].append(index)
    return written


# ---------------------------------------------------------------------------------------------- output


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
