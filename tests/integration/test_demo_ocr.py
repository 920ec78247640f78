"""`perpo demo --track ocr --quick`: the OCR half of the loop through the real CLI (synthetic pages, 1 - edit distance
rewards, margin 0.04, training, lmms-eval's perpo_fox_en_page in both argument orders, the Table 2 twin, the
transcription gallery), every artefact checked; and the OCR track of the hyper-parameter search."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PERPO = Path(sys.executable).with_name("perpo")  # the installed console script
COLUMNS = ("Edit Dist ↓", "F1 ↑", "Prec ↑", "Rec ↑", "BLEU ↑", "METEOR ↑")


def test_quick_ocr_demo_runs_every_stage_and_writes_every_artefact(tmp_path):
    out = tmp_path / "demo_ocr"
    command = [str(PERPO), "demo", "--track", "ocr", "--quick", "--methods", "perpo", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout

    config = json.loads((out / "demo_config.json").read_text())["OCRDemoConfig"]
    assert config["track"] == "ocr" and config["margin"] == 0.04 and config["quick"] is True
    assert config["base_model"].endswith("tiny_llava_ocr")
    # the pages in the Fox layout, read by the same Fox reader as the tasks and `perpo data instructions --source fox`
    for split in ("train", "val", "test"):
        assert (out / "data" / split / "en_page_ocr.json").is_file() and (out / "data" / split / "en_pdf_png").is_dir()
    assert re.search(r"^base model: edit distance 0\.\d{3} on 24 val pages", printed, re.M)

    # the lists: 1 - edit distance rewards of N samples per page, the paper's margin 0.04
    stats = json.loads((out / "lists" / "stats.json").read_text())
    kept = stats["lists"]["kept"]
    assert kept >= 2 and "fox_en_page_ocr" in stats["by_dataset"]
    assert f"kept {kept} of 24 lists with 1 - edit distance margin >= 0.04" in printed
    first = json.loads((out / "lists" / "train.jsonl").read_text().splitlines()[0])
    assert first["question"] == "OCR this image: " and len(first["responses"]) == len(first["rewards"]) == 6
    assert all(0 <= r <= 1 for r in first["rewards"])
    assert (out / "models" / "perpo" / "adapter_model.safetensors").is_file()
    assert re.search(rf"^  perpo +trained {kept} lists × 1 epoch in [\d.]+ s", printed, re.M)

    # lmms-eval on the test pages: official and corrected argument order, the blank page, best-of-20 for both
    for model in ("base", "perpo"):
        results = json.loads((out / "eval" / model / "results.json").read_text())["results"]
        page = results["perpo_fox_en_page"]
        for metric in ("edit_dist", "f1", "precision", "recall", "bleu", "meteor"):
            assert 0 <= page[f"{metric},none"] <= 1, (model, metric)
        for metric in ("precision", "recall", "bleu", "meteor"):
            assert 0 <= page[f"{metric}_textbook,none"] <= 1, (model, metric)
        # edit distance and F1 do not depend on the order; precision and recall trade places
        assert page["precision,none"] == pytest.approx(page["recall_textbook,none"])
        assert 0 <= results["perpo_fox_en_page_blankimg"]["edit_dist,none"] <= 1
        bon = results["perpo_fox_en_page_bon20"]
        assert bon["edit_dist_best,none"] <= bon["edit_dist_bo2,none"] <= bon["edit_dist_bo1,none"]
        assert re.search(
            rf"^  {model} +test edit distance [\d.]+, blank page [\d.]+, best-of-20 oracle [\d.]+$", printed, re.M
        )

    # the report: the Table 2 twin (printed too), Figures 1b and 1c for edit distance, the transcription gallery
    report = out / "report"
    index = (report / "index.md").read_text()
    table = (report / "tables" / "synth_ocr.md").read_text()
    assert table in printed and "| base |" in table and "| + PerPO |" in table
    for group in ("official order", "corrected order"):
        assert all(f"{group} {column}" in table for column in COLUMNS if column not in ("Edit Dist ↓", "F1 ↑")), group
    assert "official order Edit Dist ↓" in table and "blank image Edit Dist" in table and "best-of-20 oracle" in table
    figures = {p.stem for p in (report / "figures").glob("*.png")}
    assert {"best_of_n_edit_dist", "image_ablation_edit_dist"} <= figures
    for name in figures:
        Image.open(report / "figures" / f"{name}.png").verify()
        assert f"figures/{name}.png" in index
    gallery = report / "comparison" / "gallery"
    if (gallery / "ocr.html").is_file():  # only pages whose transcription changed are shown; each with its page
        ocr = (gallery / "ocr.html").read_text()
        assert "page image not found" not in ocr
        for name in re.findall(r"<img class='page' src='([^']+)'", ocr):
            Image.open(gallery / name).verify()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["track"] == "ocr" and summary["base_val"]["n"] == 24
    assert "[6/6] report" in printed and "{'loss'" not in printed


def test_the_saturation_study_searches_from_each_base_and_scores_every_trial_on_val_pages(tmp_path):
    """scripts/demo_study_saturation.py on one base level (a copy of the committed OCR base, so it runs the OCR
    search with --base_model); then the same search widened with one more learning rate scores only that trial."""
    level = tmp_path / "level_a"
    shutil.copytree(ROOT / "perpo" / "assets" / "tiny_llava_ocr", level)
    study = tmp_path / "study"
    command = [
        sys.executable, str(ROOT / "scripts" / "demo_study_saturation.py"), str(level), "--out", str(study),
        "--quick", "--methods", "sft", "--sft_lrs", "1e-3", "3e-3",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = study / "search_level_a"
    search = json.loads((out / "search.json").read_text())
    assert search["config"]["base_model"] == str(level)
    assert [(r["method"], r["lr"]) for r in search["rows"]] == [("base", None), ("sft", 1e-3), ("sft", 3e-3)]
    best = min(search["rows"][1:], key=lambda r: r["edit_dist"])
    assert search["best_lr"]["sft"] == {"lr": best["lr"], "beta": None}
    assert all(0 <= r["edit_dist"] <= 1 and 0 <= r["train_lists_edit_dist"] <= 1 for r in search["rows"])
    assert "val edit distance" in (out / "search.md").read_text()

    (summary,) = json.loads((study / "saturation.json").read_text())["levels"]
    assert summary["warmup_pages"] == 1000 * 32 and summary["val_pages"] == 24  # the asset's warm-up; quick val
    assert summary["seeds"] == [0]
    # page-by-page scores agree with the search's own means, and the paired difference with its interval
    assert summary["base"]["edit_dist"] == pytest.approx(search["rows"][0]["edit_dist"], abs=1e-4)
    sft = summary["methods"]["sft"]
    assert sft["edit_dist"] == pytest.approx(best["edit_dist"], abs=1e-4)
    assert sft["vs_base"]["ci95"][0] <= sft["vs_base"]["mean"] <= sft["vs_base"]["ci95"][1]
    assert "perpo_vs_sft" not in summary and "level_a" in (study / "saturation.md").read_text()
    Image.open(study / "saturation.png").verify()

    # a wider search scores only its new trial: the others' scores are kept beside their adapters
    cached = out / "models" / "sft_lr0.001" / "ocr_scores.json"
    written = cached.stat().st_mtime_ns
    search_command = [
        sys.executable, str(ROOT / "scripts" / "demo_search.py"), "--track", "ocr", "--out", str(out), "--quick",
        "--base_model", str(level), "--methods", "sft", "--sft_lrs", "1e-3", "3e-3", "1e-2",
    ]  # fmt: skip
    subprocess.run(search_command, capture_output=True, text=True, check=True)
    assert cached.stat().st_mtime_ns == written
    rows = json.loads((out / "search.json").read_text())["rows"]
    assert [r["lr"] for r in rows] == [None, 1e-3, 3e-3, 1e-2] and rows[:3] == search["rows"]

    # the search folder is tied to its base: another base with the same folder name is refused
    other = tmp_path / "other" / "level_a"
    shutil.copytree(level, other)
    refused = subprocess.run([*command[:2], str(other), *command[3:]], capture_output=True, text=True)
    assert refused.returncode != 0 and "holds the search of" in refused.stderr


def test_a_yaml_track_ocr_without_the_flag_is_refused(tmp_path):
    config = tmp_path / "demo.yaml"
    config.write_text("track: ocr\n")
    done = subprocess.run(
        [str(PERPO), "demo", str(config), "--out", str(tmp_path / "x")], capture_output=True, text=True
    )
    assert done.returncode != 0 and "pass `--track ocr` on the command line" in done.stderr
    assert not (tmp_path / "x").exists()
