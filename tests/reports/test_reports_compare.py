"""`perpo compare` and `perpo report` end to end (in-process, through perpo.cli.main) on the fixture runs: the tiny
LLaVA's base checkpoint and the same model with a PerPO adapter (tests/fixtures/reports/PROVENANCE.md)."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_helpers import AFTER, BASE, GOLDEN, IMAGES, RAW, trained_copy

from perpo.cli import main
from reports.cli import main as reports_main
from reports.gallery import BASE_COLOUR, GT_COLOUR, diff_html, ocr_gallery_html

LINK = re.compile(r"\]\(([^)#\s]+)\)")
HTML_LINK = re.compile(r"(?:src|href)='([^']+)'")


def _links_resolve(index: Path) -> list[Path]:
    """Every relative Markdown link of `index` points to an existing file; returns them."""
    targets = [index.parent / link for link in LINK.findall(index.read_text(encoding="utf-8"))]
    missing = [str(t) for t in targets if not t.is_file()]
    assert not missing, missing
    return targets


def _csv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _has_colour(pixels: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool(np.all(pixels == np.array(colour, dtype=pixels.dtype), axis=-1).any())


def test_perpo_compare_writes_the_table_the_gallery_and_the_index(tmp_path, capsys):
    out = tmp_path / "compare"
    code = main(["compare", str(BASE), str(AFTER), "--out", str(out), "--after_label", "PerPO",
                 "--image_roots", str(IMAGES)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "perpo_synth_test: 2 wins, 0 losses, 22 same of 24" in printed and str(out / "index.md") in printed

    # every shared metric with its change and verdict
    metrics = {(r["task"], r["metric"]): r for r in _csv(out / "metrics.csv")}
    ap50 = metrics["perpo_synth_test", "ap50"]
    assert (float(ap50["base"]), float(ap50["after"])) == pytest.approx((2 / 24, 4 / 24))
    assert float(ap50["change"]) == pytest.approx(2 / 24) and ap50["verdict"] == "better"
    assert metrics["perpo_synth_test_bon20", "ap50_best"]["verdict"] == "worse"  # 11/24 -> 10/24
    assert metrics["perpo_fox_en_page", "edit_dist"]["verdict"] == "same"
    assert metrics["perpo_synth_test_noimg", "parse_fail"]["better"] == "lower"

    # per-sample wins and losses, joined on the record id
    summary = {r["task"]: r for r in _csv(out / "wins_losses.csv")}
    assert {k: summary["perpo_synth_test"][k] for k in ("documents", "wins", "losses", "same")} == {
        "documents": "24", "wins": "2", "losses": "0", "same": "22"}  # fmt: skip
    assert (summary["perpo_synth_test_bon20"]["wins"], summary["perpo_synth_test_bon20"]["losses"]) == ("2", "1")
    assert summary["perpo_fox_en_page"]["kind"] == "ocr" and summary["perpo_fox_en_page"]["answers_changed"] == "2"
    per_sample = _csv(out / "per_sample.csv")
    assert len(per_sample) == 4 * 24 + 2 and len({(r["task"], r["id"]) for r in per_sample}) == len(per_sample)
    wins = [r for r in per_sample if r["task"] == "perpo_synth_test" and r["outcome"] == "win"]
    assert all(float(r["base_hit"]) == 0.0 and float(r["after_hit"]) == 1.0 for r in wins)

    # the gallery: 12 most-changed grounding answers as PNGs with the boxes drawn, OCR differences as HTML
    gallery = out / "gallery"
    pngs = sorted(gallery.glob("*.png"))
    assert len(pngs) == 12
    for png in pngs:
        with Image.open(png) as image:
            pixels = np.asarray(image.convert("RGB"))
        assert pixels.shape[1] >= 256  # the 64 px scene upscaled
        assert _has_colour(pixels, GT_COLOUR) and _has_colour(pixels, BASE_COLOUR)
    html = (gallery / "index.html").read_text(encoding="utf-8")
    assert sorted(HTML_LINK.findall(html)) == sorted(["ocr.html", *(p.name for p in pngs)])
    ocr = (gallery / "ocr.html").read_text(encoding="utf-8")
    assert ocr.count("class='example'") == 2 and "The quick brown fox" in ocr

    # index.md: the table, the summary, and links that all resolve
    index = (out / "index.md").read_text(encoding="utf-8")
    assert (
        "# base → PerPO" in index and "| perpo_synth_test | ap50 | none | 0.0833 | 0.1667 | 0.0833 | better |" in index
    )
    targets = {t.name for t in _links_resolve(out / "index.md")}
    assert {"metrics.md", "metrics.csv", "wins_losses.csv", "per_sample.csv", "index.html", "ocr.html"} <= targets
    assert {p.name for p in pngs} <= targets


def _grey_share(image: Image.Image) -> float:
    """The share of the drawn scene (the top square of a gallery PNG) painted in the missing-image grey."""
    pixels = np.asarray(image.convert("RGB"))[: image.width]
    return float(np.all(pixels == 200, axis=-1).mean())


def _moved_copy(tmp_path: Path) -> Path:
    """The base run as if its data folder had moved: every recorded image path points to a missing folder."""
    run = tmp_path / "moved_base"
    shutil.copytree(BASE, run)
    for path in (run / "samples").glob("*.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for row in rows:
            for key in ("image",):
                if "/" in str(row["record"].get(key, "")):
                    row["record"][key] = str(tmp_path / "moved" / "images" / Path(row["record"][key]).name)
            row["input_media"] = [str(tmp_path / "moved" / Path(m).name) for m in row.get("input_media", [])]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return run


def test_compare_from_a_yaml_and_a_raw_lmms_eval_folder(tmp_path):
    """The after model's raw lmms-eval output (two samples files kept) against the base's perpo eval folder whose
    images moved: without image roots the gallery draws on grey canvases and says so; with them it finds them."""
    base = _moved_copy(tmp_path)
    config = tmp_path / "compare.yaml"
    config.write_text(f"base: {base}\nafter: {RAW}\nout: {tmp_path / 'out'}\ngallery_size: 3\n")
    assert main(["compare", str(config)]) == 0
    out = tmp_path / "out"
    summary = {r["task"] for r in _csv(out / "wins_losses.csv")}
    assert summary == {"perpo_synth_test", "perpo_fox_en_page"}
    pngs = sorted((out / "gallery").glob("*.png"))
    assert len(pngs) == 3
    with Image.open(pngs[0]) as image:
        assert _grey_share(image) > 0.5  # the grey canvas
    index = (out / "index.md").read_text(encoding="utf-8")
    assert index.count("missing_file | perpo_synth_test |  | image of synth_test_") == 3
    assert "perpo_synth_test_bon20 |  | no samples file" in index
    _links_resolve(out / "index.md")
    assert main(["compare", str(config), "--image_roots", str(IMAGES)]) == 0
    assert "image of synth_test_" not in (out / "index.md").read_text(encoding="utf-8")
    with Image.open(sorted((out / "gallery").glob("*.png"))[0]) as image:
        assert _grey_share(image) < 0.05  # the scene itself


def test_compare_errors_are_clear(tmp_path, capsys):
    assert main(["compare", str(BASE), str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "no lmms-eval results" in capsys.readouterr().err
    assert main(["compare", str(BASE), str(AFTER), "--out", str(tmp_path / "o"), "--after_label", "base"]) == 2
    assert not (tmp_path / "o").exists()


TRUNCATED = json.dumps({"results": {"perpo_synth_test": {"ap50,none": 0.5}}}, indent=1)[:-9]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "results.json: empty"),
        (TRUNCATED, "results.json: not valid JSON (truncated?) at line 4: "),
        ("[1, 2]", "results.json: expected an object with a 'results' mapping of task: {metric: value}, got an array"),
        ('"x"', "results.json: expected an object with a 'results' mapping of task: {metric: value}, got a string"),
        ('{"config": {}}', "results.json: expected an object with a 'results' mapping of task: {metric: value}; it"),
        ('{"results": 5}', "results.json: expected an object with a 'results' mapping of task: {metric: value}; 'res"),
        ('{"results": {"t": [1]}}', "results.json: results['t'] is an array, expected a mapping of metric: value"),
    ],
)
def test_a_broken_results_file_is_one_line_naming_it(tmp_path, capsys, text, message):
    """compare and report stop before writing anything, with one line naming the file and its fault."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(text)
    assert main(["compare", str(BASE), str(run), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"perpo compare: error: {run}/{message}" in err and err.count("\n") == 1
    assert main(["report", "--runs", str(BASE), str(run), "--out", str(tmp_path / "o")]) == 2
    assert f"perpo report: error: {run}/{message}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no output, no temporary folder


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("samples/perpo_synth_test.jsonl", "samples/perpo_synth_test.jsonl:24: not valid JSON ("),
        ("eval_config.json", "eval_config.json: not valid JSON (truncated?) at line "),
    ],
)
def test_a_truncated_samples_or_metadata_file_is_one_line_naming_it(tmp_path, capsys, name, message):
    run = tmp_path / "run"
    shutil.copytree(AFTER, run)
    path = run / name
    path.write_text(path.read_text()[:-20])
    assert main(["compare", str(BASE), str(run), "--out", str(tmp_path / "o"), "--gallery_size", "0"]) == 2
    assert f"{run}/{message}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_nan_or_infinite_metric_is_a_problem_not_a_silent_gap(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(AFTER, run)
    results = json.loads((run / "results.json").read_text())
    results["results"]["perpo_synth_test"] |= {"ap50,none": math.nan, "iou,none": math.inf}
    (run / "results.json").write_text(json.dumps(results))  # NaN and Infinity, as Python's json writes them
    out = tmp_path / "o"
    argv = ["compare", str(BASE), str(run), "--out", str(out), "--after_label", "PerPO", "--gallery_size", "0"]
    assert main(argv) == 0
    index = (out / "index.md").read_text(encoding="utf-8")
    assert "| PerPO | non_finite | perpo_synth_test | ap50 | value nan is not finite |" in index
    assert "| PerPO | non_finite | perpo_synth_test | iou | value inf is not finite |" in index
    shared = {(r["task"], r["metric"]) for r in _csv(out / "metrics.csv")}
    assert ("perpo_synth_test", "ap50") not in shared and ("perpo_synth_test", "iou") not in shared
    assert ("perpo_synth_test_orig", "ap50") in shared


def test_perpo_report_builds_every_supported_part_and_links_it(tmp_path):
    out = tmp_path / "report"
    config = tmp_path / "report.yaml"
    config.write_text(
        f"out: {out}\nruns:\n  - {{path: {BASE}, label: base}}\n  - {{path: {AFTER}, label: PerPO}}\n"
        f"compare: {{base: base, after: PerPO}}\nimage_roots: [{IMAGES}]\ngallery_size: 4\n"
    )
    assert main(["report", str(config)]) == 0
    targets = {t.relative_to(out).as_posix() for t in _links_resolve(out / "index.md")}
    for name in ("synth", "table2"):
        assert {f"tables/{name}.md", f"tables/{name}.tex", f"tables/{name}.csv"} <= targets
    assert {f"tables/paper_table{i}.md" for i in (1, 2, 3, 4, 5, 7)} <= targets
    assert {"figures/best_of_n_ap50.png", "figures/best_of_n_iou.png", "figures/image_ablation.png"} <= targets
    assert {"comparison/index.md", "comparison/gallery/index.html", "data/tidy.csv", "data/problems.csv"} <= targets
    # the base row is named by its model (as in the paper), the others by their method
    assert (out / "tables" / "synth.md").read_text() == (GOLDEN / "fixture_synth.md").read_text()
    assert (out / "tables" / "paper_table1.md").read_text() == (GOLDEN / "paper_table1.md").read_text()
    assert len(list((out / "comparison" / "gallery").glob("*.png"))) == 4
    index = (out / "index.md").read_text(encoding="utf-8")
    assert "Not drawn (the runs hold no data for them): best_of_n_edit_dist, n_sweep, gamma_sweep" in index
    assert "| PerPO | missing_metric | pope | pope_f1_score | table2 column 'POPE' |" in index
    # a second build replaces the folder whole
    assert main(["report", str(config), "--gallery_size", "1"]) == 0
    assert len(list((out / "comparison" / "gallery").glob("*.png"))) == 1


def test_python_m_reports_tables_prints_the_paper_table(capsys):
    assert reports_main(["tables", "--paper", "--tables", "table1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Table 1: object grounding and image understanding\n\n| Methods | RefCOCO val |")
    assert "| + PerPO | **63.8** | **70.6** |" in out
    assert reports_main(["tables", "--tables", "tableX", "--paper"]) == 2


def test_diff_highlights_words_only_in_one_text():
    left, right = diff_html("the quick brown fox", "the quick red fox <b>")
    assert left == "the quick <del>brown</del> fox"
    assert right == "the quick <ins>red</ins> fox<ins> &lt;b&gt;</ins>"


def test_report_sweep_table_beside_the_paper_with_a_custom_spec(tmp_path):
    """A spec file whose `table3` reads the synthetic task: PerPO runs with N = 2 and 8 (from their training
    records) fill the sweep, and the N = 8 run is laid beside the paper's Table 3 row N = 8."""
    spec = tmp_path / "tables.yaml"
    spec.write_text(
        "metrics: {ap50: {better: higher}}\ntables:\n  table3:\n    title: sweep\n    layout: sweep\n"
        "    highlight: none\n    row_keys: [{field: n, label: N}]\n    methods: [dpo, perpo]\n    columns:\n"
        "      - {key: refcoco_plus, label: RefCOCO+, sources: [{task: perpo_synth_test, metric: ap50, scale: 100}]}\n"
    )
    runs = [trained_copy(tmp_path, "n2", n=2), trained_copy(tmp_path, "n8", n=8)]
    config = tmp_path / "report.yaml"
    config.write_text(
        f"out: {tmp_path / 'out'}\ntables_yaml: {spec}\nfigures: [n_sweep]\n"
        f"runs: [{{path: {BASE}}}, {{path: {runs[0]}}}, {{path: {runs[1]}}}]\n"
    )
    assert main(["report", str(config)]) == 0
    out = tmp_path / "out"
    assert (out / "tables" / "table3.md").read_text() == (
        "| N | Methods | RefCOCO+ | Methods | RefCOCO+ |\n| :--- | :--- | ---: | :--- | ---: |\n"
        "| 2 | DPO | – | PerPO | 16.7 |\n| 8 | DPO | – | PerPO | 16.7 |\n"
    )
    side = (out / "tables" / "table3_vs_paper.md").read_text().splitlines()
    assert side[2:] == [
        "| ours | base200 + PerPO (n=2) | 16.7 |",
        "| paper | 2 PerPO | 55.4 |",
        "| Δ |  | -38.7 |",
        "| ours | base200 + PerPO (n=8) | 16.7 |",
        "| paper | 8 PerPO | 57.0 |",
        "| Δ |  | -40.3 |",
    ]
    assert "\\begin{tabular}{llr}" in (out / "tables" / "table3_vs_paper.tex").read_text()
    targets = {t.relative_to(out).as_posix() for t in _links_resolve(out / "index.md")}
    assert {"tables/table3_vs_paper.md", "figures/n_sweep.png", "tables/paper_table3.md"} <= targets
    assert "tables/paper_table1.md" not in targets  # the custom spec has only table3


def test_the_ocr_gallery_shows_each_page_beside_the_transcriptions(tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    for name, shade in (("en_1.png", 0), ("en_2.png", 90)):
        Image.new("RGB", (64, 48), (shade, shade, shade)).save(pages / name)
    out = tmp_path / "compare"
    assert main(["compare", str(BASE), str(AFTER), "--out", str(out), "--image_roots", str(IMAGES), str(pages)]) == 0
    ocr = (out / "gallery" / "ocr.html").read_text(encoding="utf-8")
    shown = re.findall(r"<img class='page' src='([^']+)'", ocr)
    assert len(shown) == 2 and "page image not found" not in ocr
    for name in shown:
        with Image.open(out / "gallery" / name) as image:
            assert image.width >= 256 and image.width / image.height == pytest.approx(64 / 48)  # upscaled, not padded

    bare = tmp_path / "bare"  # no folder holds the pages: the page cell says so, the answers are still shown
    assert main(["compare", str(BASE), str(AFTER), "--out", str(bare), "--image_roots", str(IMAGES)]) == 0
    ocr = (bare / "gallery" / "ocr.html").read_text(encoding="utf-8")
    assert ocr.count("page image not found") == 2 and ocr.count("class='example'") == 2


def test_the_ocr_page_escapes_labels_ids_and_texts_and_keeps_the_diff_markup():
    import pandas as pd

    rows = pd.DataFrame(
        [{"task": "fox<en>", "id": "p&1", "outcome": "win", "reference": "a <b> c", "base_answer": "a <x> c",
          "after_answer": "a <b> c", "base_score": 0.5, "after_score": 0.0}]
    )  # fmt: skip
    page = ocr_gallery_html(rows, ("base & co", "<PerPO>"), "t<i>tle", [None])
    assert "<title>t&lt;i&gt;tle</title>" in page and "only in base &amp; co;" in page
    assert "fox&lt;en&gt; · p&amp;1: edit distance 0.500 → 0.000 (win)" in page
    assert "<pre>a &lt;b&gt; c</pre>" in page  # the reference
    assert "<pre>a <del>&lt;x&gt;</del> c</pre>" in page and "<pre>a <ins>&lt;b&gt;</ins> c</pre>" in page
    assert "<b>&lt;PerPO&gt;</b>" in page and "<i>page image not found</i>" in page
