"""The before/after gallery: the most-changed answers as grounding PNGs and an OCR HTML page with word diffs.

The documents whose answer changed, most-changed score first (`gallery_size` of them per kind): grounding as PNGs
of the image (in the task's frame: LLaVA-1.5's padded square for `padded`) upscaled with the ground truth (green),
the base box (red) and the after box (blue) and a legend; OCR as one HTML page with the page image, the reference
and the two answers, the words only the base has struck through in red and those only the after answer has in blue
(difflib over words).
"""

from __future__ import annotations

import difflib
import functools
import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from perpo.io import atomic_open, load_image
from reports.compare import Comparison
from reports.load import Problem

if TYPE_CHECKING:
    from PIL import Image, ImageDraw

GT_COLOUR = (0, 170, 0)
BASE_COLOUR = (220, 30, 30)
AFTER_COLOUR = (30, 90, 255)


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

    from perpo.model.images import expand2square

    width, height = int(row.get("width") or 64), int(row.get("height") or 64)
    if path is not None:
        image = load_image(path)
    else:
        image = Image.new("RGB", (width, height), (200, 200, 200))
    if row.get("frame") == "padded":  # LLaVA-1.5's square, as the model saw it and as the boxes are normalised
        image = expand2square(image)
    return _viewable(image)


def _viewable(image: Image.Image) -> Image.Image:
    """Small synthetic images upscaled (nearest neighbour, so pixels stay sharp), large ones shrunk to 512 px."""
    from PIL import Image

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
.texts { display: grid; grid-template-columns: auto 1fr 1fr 1fr; gap: 1em; }
img.page { image-rendering: pixelated; max-width: 320px; }
pre { white-space: pre-wrap; background: #f7f7f7; padding: .5em; margin: 0; }
del { color: #dc1e1e; background: #fde8e8; }
ins { color: #1e5aff; background: #e8eefd; text-decoration: none; }
</style>"""


# The two pages, as jinja2 templates (autoescaped: labels, ids and texts are data, never markup).
OCR_PAGE = """\
<!DOCTYPE html><html><head><meta charset='utf-8'><title>{{ title }}</title>{{ style }}
</head><body><h1>{{ title }}</h1>
<p><del>red, struck</del>: only in {{ labels[0] }}; <ins>blue</ins>: only in {{ labels[1] }}. \
Edit distance: lower is better.</p>
{% for e in examples -%}
<div class='example'><h3>{{ e.task }} · {{ e.id }}: edit distance {{ e.scores }} ({{ e.outcome }})</h3>\
<div class='texts'><div><b>page</b><br>\
{% if e.page %}<img class='page' src='{{ e.page }}' alt='page {{ e.id }}'>\
{% else %}<i>page image not found</i>{% endif %}\
</div><div><b>reference</b><pre>{{ e.reference }}</pre></div>\
<div><b>{{ labels[0] }}</b><pre>{{ e.left }}</pre></div>\
<div><b>{{ labels[1] }}</b><pre>{{ e.right }}</pre></div></div></div>
{% endfor -%}
</body></html>"""

INDEX_PAGE = """\
<!DOCTYPE html><html><head><meta charset='utf-8'><title>gallery</title><style>figure{display:inline-block;\
margin:.5em;vertical-align:top}</style></head><body><h1>Answers that changed: {{ labels[0] }} → {{ labels[1] }}</h1>\
<p>ground truth <b style='color:rgb{{ colours.gt }}'>green</b>, {{ labels[0] }} \
<b style='color:rgb{{ colours.base }}'>red</b>, {{ labels[1] }} <b style='color:rgb{{ colours.after }}'>blue</b></p>\
{% if ocr %}<p><a href='ocr.html'>OCR answers that changed</a></p>{% endif %}\
{% for c in cards %}<figure><img src='{{ c.png }}' alt='{{ c.id }}'><figcaption>{{ c.task }} · {{ c.id }}: \
{{ c.outcome }}, IoU {{ c.scores }}</figcaption></figure>{% endfor %}</body></html>
"""


@functools.cache
def _template(source: str):
    import jinja2

    return jinja2.Environment(autoescape=True, keep_trailing_newline=True).from_string(source)


def ocr_gallery_html(
    rows: pd.DataFrame, labels: tuple[str, str], title: str, pages: Sequence[str | None] | None = None
) -> str:
    """An HTML page: per page id the page image (`pages`: one file name per row beside the page, None when it was
    not found), the reference, the base answer and the after answer, differences highlighted."""
    from markupsafe import Markup

    pages = list(pages) if pages is not None else [None] * len(rows)
    examples = []
    for row, page in zip(rows.itertuples(index=False), pages, strict=True):
        left, right = diff_html(row.base_answer, row.after_answer)
        examples.append(
            {
                "task": row.task, "id": str(row.id), "outcome": row.outcome, "page": page,
                "reference": row.reference, "scores": f"{row.base_score:.3f} → {row.after_score:.3f}",
                "left": Markup(left), "right": Markup(right),
            }
        )  # fmt: skip
    return _template(OCR_PAGE).render(title=title, style=Markup(OCR_STYLE), labels=labels, examples=examples)


def _find_image(
    comparison: Comparison, row: pd.Series, image_roots: Sequence[str | Path], what: str, fallback: str
) -> Path | None:
    """`resolve_image`; when it finds nothing, a `missing_file` problem saying what the gallery does instead."""
    path = resolve_image(row, image_roots)
    if path is None:
        message = f"{what} of {row['id']} not found ({row.get('image')}); {fallback}"
        comparison.problems.append(Problem(comparison.after.label, "missing_file", row["task"], "", message))
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def write_gallery(
    comparison: Comparison, out: Path, size: int = 12, image_roots: Sequence[str | Path] = ()
) -> dict[str, list[Path]]:
    """Draw the gallery into `out` (PNG per grounding example, `index.html`, `ocr.html`).

    Returns:
        `{"grounding": [png paths], "ocr": [html path, page pngs], "index": [index.html]}` (lists may be empty).
    """
    labels = (comparison.base.label, comparison.after.label)
    written: dict[str, list[Path]] = {"grounding": [], "ocr": [], "index": []}
    cards = []
    for row in gallery_rows(comparison.samples, "grounding", size).itertuples(index=False):
        series = pd.Series(row._asdict())
        path = _find_image(comparison, series, image_roots, "image", "drawn on a grey canvas (pass --image_root)")
        png = draw_grounding_example(series, path, out / f"{_safe(row.task)}__{_safe(str(row.id))}.png", labels)
        written["grounding"].append(png)
        scores = f"{row.base_score:.2f} → {row.after_score:.2f}"
        cards.append({"png": png.name, "id": str(row.id), "task": row.task, "outcome": row.outcome, "scores": scores})
    ocr_rows = gallery_rows(comparison.samples, "ocr", size)
    if not ocr_rows.empty:
        pages = []
        for row in ocr_rows.itertuples(index=False):
            series = pd.Series(row._asdict())
            path = _find_image(comparison, series, image_roots, "page image", "pass --image_root")
            if path is None:
                pages.append(None)
                continue
            png = out / f"{_safe(row.task)}__{_safe(str(row.id))}.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            _viewable(load_image(path)).save(png)
            written["ocr"].append(png)
            pages.append(png.name)
        page = out / "ocr.html"
        title = f"OCR answers that changed: {labels[0]} → {labels[1]}"
        with atomic_open(page, "w", encoding="utf-8") as handle:
            handle.write(ocr_gallery_html(ocr_rows, labels, title, pages))
        written["ocr"].insert(0, page)
    if cards or written["ocr"]:
        index = out / "index.html"
        colours = {"gt": str(GT_COLOUR), "base": str(BASE_COLOUR), "after": str(AFTER_COLOUR)}
        page = _template(INDEX_PAGE).render(labels=labels, colours=colours, ocr=bool(written["ocr"]), cards=cards)
        with atomic_open(index, "w", encoding="utf-8") as handle:
            handle.write(page)
        written["index"].append(index)
    return written
