"""`perpo data synth-ocr`: deterministic pages in the Fox layout, read back exactly by the Fox code paths."""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from perpo.cli import main
from perpo.data.schema import load_records
from perpo.embedded.synth_ocr import GLYPH_WIDTH, LINE_HEIGHT, WORDS, OCRSpec, page_text

COUNTS = ["--train", "6", "--val", "4", "--test", "3"]


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_ocr") / "pages"
    assert main(["data", "synth-ocr", "--out", str(out), *COUNTS]) == 0
    return out


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_pages(pages, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    assert main(["data", "synth-ocr", "--out", str(again), *COUNTS]) == 0
    assert main(["data", "synth-ocr", "--out", str(other), "--seed", "1", *COUNTS]) == 0
    assert _files(again) == _files(pages)
    texts = [json.loads((root / "val" / "en_page_ocr.json").read_text()) for root in (pages, other)]
    assert [e["conversations"][1]["value"] for e in texts[0]] != [e["conversations"][1]["value"] for e in texts[1]]
    manifest = json.loads((pages / "manifest.json").read_text())
    assert {split: info["pages"] for split, info in manifest["splits"].items()} == {"train": 6, "val": 4, "test": 3}


def test_every_line_fits_the_page_and_is_drawn_where_the_text_says(pages):
    spec = OCRSpec()
    for entry in json.loads((pages / "train" / "en_page_ocr.json").read_text()):
        text = entry["conversations"][1]["value"]
        lines = text.split("\n")
        assert spec.min_lines <= len(lines) <= spec.max_lines and entry["len"] == len(text)
        assert all(0 < len(line) <= spec.line_chars and set(line.split(" ")) <= set(WORDS) for line in lines)
        ink = Image.open(pages / "train" / "en_pdf_png" / entry["image"]).convert("L").point(lambda v: v < 128)
        box = ink.getbbox()  # ink stays inside the margins and spans exactly the drawn lines
        assert box[0] >= spec.margin and box[2] <= spec.margin + spec.line_chars * GLYPH_WIDTH
        assert box[1] >= spec.margin and box[3] <= spec.margin + len(lines) * LINE_HEIGHT
        assert box[3] > spec.margin + (len(lines) - 1) * LINE_HEIGHT


def test_lines_use_the_page_width():
    spec = OCRSpec()
    rng = random.Random(0)
    widths = [len(line) for _ in range(200) for line in page_text(rng, spec).split("\n")]
    assert max(widths) == spec.line_chars and sum(widths) / len(widths) > spec.line_chars - 3


def test_pages_read_back_exactly_through_fox_instructions_and_the_fox_tasks(pages, fox_utils, monkeypatch, tmp_path):
    split = pages / "val"
    entries = json.loads((split / "en_page_ocr.json").read_text())
    out = tmp_path / "instructions.jsonl"
    argv = ["data", "instructions", "--source", "fox", "--fox_json", str(split / "en_page_ocr.json")]
    assert main([*argv, "--fox_images", str(split / "en_pdf_png"), "--out", str(out)]) == 0
    records = load_records(out, stage="instructions")
    assert [r["target"] for r in records] == [e["conversations"][1]["value"] for e in entries]
    assert {r["question"] for r in records} == {"OCR this image: "}

    monkeypatch.setenv("PERPO_FOX_DIR", str(split))
    docs = list(fox_utils.fox_en(None))
    assert [d["reference"] for d in docs] == [r["target"] for r in records]
    exact = [fox_utils.results_ocr(doc, [doc["reference"]]) for doc in docs]
    assert all(r["edit_dist"] == 0.0 and r["f1"] == 1.0 and r["precision"] == 1.0 for r in exact)
    assert fox_utils.visual_page(docs[0])[0].size == (64, 64)
    first = fox_utils.results_ocr(docs[0], [docs[1]["reference"]])
    assert first["edit_dist"] > 0.3  # another page's text is far from this one's


def test_impossible_pages_are_refused_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["data", "synth-ocr", "--out", str(tmp_path / "tall"), "--size", "40", "--max_lines", "5"])
    assert "max_lines <= 3" in capsys.readouterr().err and not (tmp_path / "tall").exists()
    with pytest.raises(ValueError, match="too narrow"):
        OCRSpec(width=30)
