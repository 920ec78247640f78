"""The synthetic page-OCR benchmark of the embedded default: short lines of words on small pages, in Fox's layout.

A page is a white canvas with a few lines of lowercase words drawn in PIL's built-in bitmap font (6 x 11 pixels a
character, the same glyphs on every machine), each line as wide as the page allows. The reference text is the
lines joined by newlines, exactly what was drawn.

Written in the Fox benchmark's own layout, one folder per split, so the very code that reads Fox reads it
(`perpo data instructions --source fox`, the `perpo_fox_*` tasks with `PERPO_FOX_DIR=<out>/<split>`):
    <out>/<split>/en_page_ocr.json     [{"image", "len", "conversations": [human prompt, gpt page text]}]
    <out>/<split>/en_pdf_png/<page>.png
    <out>/manifest.json                seed, spec, pages per split, sha256 of every JSON
Page k of split s is drawn from `random.Random(f"{seed}/{s}/{k}")`: the same seed gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from perpo.embedded.synth import SPLITS
from perpo.io import atomic_dir, write_json
from perpo.model.prompts import OCR_QUESTION

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
GLYPH_WIDTH, LINE_HEIGHT = 6, 12
"""PIL's bitmap font: every glyph is 6 pixels wide and 11 high; one blank row between lines."""
WORDS = (
    "a", "an", "and", "are", "as", "at", "be", "big", "blue", "box", "but", "by", "can", "cat", "day", "dog", "for",
    "from", "fox", "green", "had", "has", "he", "her", "his", "in", "is", "it", "its", "jump", "lazy", "left", "man",
    "map", "may", "new", "not", "now", "of", "old", "on", "one", "or", "our", "out", "page", "red", "run", "sat",
    "see", "she", "sun", "ten", "the", "this", "top", "two", "up", "was", "way", "we", "who", "word", "yes", "you",
)  # fmt: skip
"""Short lowercase words: a page is several of them per line, so reading it needs every letter."""


@dataclass(frozen=True)
class OCRSpec:
    """What pages look like and how many of each split to render."""

    width: int = 64
    height: int = 64
    margin: int = 2
    min_lines: int = 2
    max_lines: int = 4
    counts: dict[str, int] = field(default_factory=lambda: {"train": 2000, "val": 200, "test": 200})

    def __post_init__(self):
        if self.line_chars < max(len(w) for w in WORDS):
            raise ValueError(f"pages {self.width} px wide hold {self.line_chars} characters a line: too narrow")
        if not 1 <= self.min_lines <= self.max_lines <= self.page_lines:
            raise ValueError(
                f"need 1 <= min_lines <= max_lines <= {self.page_lines} (what {self.height} px hold), got "
                f"{self.min_lines}..{self.max_lines}"
            )

    @property
    def line_chars(self) -> int:
        return (self.width - 2 * self.margin) // GLYPH_WIDTH

    @property
    def page_lines(self) -> int:
        return (self.height - 2 * self.margin + 1) // LINE_HEIGHT


def page_text(rng: random.Random, spec: OCRSpec) -> str:
    """A page's text: `min_lines`..`max_lines` lines, each filled with random words up to the page's width."""
    lines = []
    for _ in range(rng.randint(spec.min_lines, spec.max_lines)):
        words = [rng.choice(WORDS)]
        while True:
            word = rng.choice(WORDS)
            if len(" ".join(words)) + 1 + len(word) > spec.line_chars:
                break
            words.append(word)
        lines.append(" ".join(words))
    return "\n".join(lines)


def render_page(text: str, spec: OCRSpec):
    """Draw the lines of `text` in the bitmap font, black on white, one line every `LINE_HEIGHT` pixels."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default_imagefont()
    page = Image.new("RGB", (spec.width, spec.height), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    for number, line in enumerate(text.split("\n")):
        draw.text((spec.margin, spec.margin + number * LINE_HEIGHT), line, fill=(0, 0, 0), font=font)
    return page


def fox_entry(image: str, text: str) -> dict:
    """One page as the Fox benchmark lists it."""
    return {
        "image": image,
        "len": len(text),
        "conversations": [{"from": "human", "value": f"<image>\n{OCR_QUESTION}"}, {"from": "gpt", "value": text}],
    }


def build_synth_ocr(out: str | Path, *, seed: int = 0, spec: OCRSpec = OCRSpec(), progress: bool = True) -> Path:
    """Render the benchmark into `out` (replaced atomically: an interrupted run leaves the old folder).

    Returns:
        `out`.
    """
    from tqdm import tqdm

    out = Path(out)
    manifest = {"seed": seed, "spec": asdict(spec), "format_version": FORMAT_VERSION, "splits": {}}
    total = sum(spec.counts.get(split, 0) for split in SPLITS)
    with atomic_dir(out) as tmp:
        bar = tqdm(total=total, desc="rendering synthetic pages", unit="page", disable=not progress)
        for split in SPLITS:
            count = spec.counts.get(split, 0)
            if not count:
                continue
            images = tmp / split / "en_pdf_png"
            images.mkdir(parents=True)
            entries = []
            for index in range(count):
                text = page_text(random.Random(f"{seed}/{split}/{index}"), spec)
                name = f"synthocr_{split}_{index:05d}.png"
                render_page(text, spec).save(images / name, format="PNG", optimize=False)
                entries.append(fox_entry(name, text))
                bar.update()
            path = tmp / split / "en_page_ocr.json"
            data = (json.dumps(entries, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
            path.write_bytes(data)
            manifest["splits"][split] = {
                "pages": count,
                "json": f"{split}/{path.name}",
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        bar.close()
        write_json(tmp / "manifest.json", manifest)
    logger.info("synthetic OCR pages (seed %d) written to %s", seed, out)
    return out
