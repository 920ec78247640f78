"""The Fox page-OCR hooks: the six metrics in both argument orders, best-of-N, and the image ablations."""

from __future__ import annotations

import pytest

from lmms_tasks.data import load_fox_docs
from lmms_tasks.images import CLIP_MEAN_FILL

OFFICIAL = ("edit_dist", "f1", "precision", "recall", "bleu", "meteor")


@pytest.fixture
def en_docs(fox_dir, monkeypatch):
    monkeypatch.setenv("PERPO_FOX_DIR", str(fox_dir))
    return list(load_fox_docs("en"))


def test_both_orders_with_named_keys(en_docs, fox_utils):
    """Prediction "The quick brown fox" against "The quick brown fox\\njumps over the lazy dog." (9 tokens):
    4 of the 4 predicted tokens are right (true precision 1), 4 of 9 reference tokens found (true recall 4/9).
    The official order swaps the two; F1 and edit distance are symmetric."""
    doc = en_docs[0]
    out = fox_utils.results_ocr(doc, ["The quick brown fox"])
    assert set(OFFICIAL) <= set(out)
    assert {f"{k}_textbook" for k in ("precision", "recall", "bleu", "meteor")} <= set(out)
    assert out["precision_textbook"] == pytest.approx(1.0) and out["recall_textbook"] == pytest.approx(4 / 9)
    assert out["precision"] == pytest.approx(4 / 9) and out["recall"] == pytest.approx(1.0)
    assert out["f1"] == pytest.approx(2 * (4 / 9) / (1 + 4 / 9))
    assert out["edit_dist"] == pytest.approx(1 - len("The quick brown fox") / len(doc["reference"]))
    assert out["bleu"] != out["bleu_textbook"] and out["meteor"] != out["meteor_textbook"]
    assert out["record"] == {"id": "fox_en_1", "language": "en", "image": "en_1.png", "reference_chars": 44,
                             "response_chars": 19, "not_text": False, "truncated": False}  # fmt: skip


def test_exact_and_empty_outputs(en_docs, fox_utils):
    doc = en_docs[1]
    exact = fox_utils.results_ocr(doc, [doc["reference"]])
    assert exact["edit_dist"] == 0.0 and exact["f1"] == 1.0 and exact["bleu"] == pytest.approx(1.0)
    empty = fox_utils.results_ocr(doc, [""])
    assert empty["edit_dist"] == 1.0 and all(empty[k] == 0.0 for k in OFFICIAL[1:])


def test_chinese_pages_use_jieba(fox_dir, monkeypatch, fox_utils):
    monkeypatch.setenv("PERPO_FOX_DIR", str(fox_dir))
    doc = list(load_fox_docs("cn"))[0]
    out = fox_utils.results_ocr(doc, ["狐狸跳过了"])
    assert 0.0 < out["f1"] < 1.0 and 0.0 < out["edit_dist"] < 1.0


def test_best_of_n(en_docs, fox_utils):
    doc = en_docs[1]
    out = fox_utils.results_ocr_bon(doc, ["Read all", doc["reference"], ""])
    assert out["edit_dist_best"] == 0.0 and out["edit_dist_first"] > 0.5 and out["edit_dist_bo3"] == 0.0
    assert out["f1_best"] == 1.0 and out["f1_first"] == pytest.approx(2 * 1 * (2 / 6) / (1 + 2 / 6))
    assert out["edit_dist_bo1"] == pytest.approx(out["edit_dist_mean"]) and out["n_samples"] == 3.0
    assert len(out["record"]["edit_dists"]) == 3


def test_visuals_and_prompt(en_docs, fox_utils):
    doc = en_docs[0]
    (page,) = fox_utils.visual_page(doc)
    assert page.size == (96, 64) and page.mode == "RGB"
    assert fox_utils.visual_none(doc) == []
    (blank,) = fox_utils.visual_blank(doc)
    assert blank.size == (96, 64) and blank.getcolors() == [(96 * 64, CLIP_MEAN_FILL)]
    assert fox_utils.text_fox(doc) == "OCR this image: "
    assert fox_utils.text_fox(doc, {"pre_prompt": "", "post_prompt": " Answer in text."}).endswith("Answer in text.")


def test_a_degenerate_or_non_text_output_is_scored_quickly_and_counted(fox_dir, monkeypatch, fox_utils):
    """300,000 copies of one CJK character took over a minute in jieba; it is scored on its first max(4 x the
    reference, 8,192) characters, flagged. A non-string answer scores as empty text instead of raising."""
    import time

    from perpo.objectives.metrics.ocr import ocr_metrics

    monkeypatch.setenv("PERPO_FOX_DIR", str(fox_dir))
    doc = list(load_fox_docs("cn"))[0]
    began = time.perf_counter()
    out = fox_utils.results_ocr(doc, ["狐" * 300_000])
    assert (
        time.perf_counter() - began < 10 and out["record"]["truncated"] and out["record"]["response_chars"] == 300_000
    )
    assert out["edit_dist"] == pytest.approx(ocr_metrics("狐" * 8192, doc["reference"])["edit_dist"])
    real = doc["reference"] * 3  # within the cap: exactly the official metrics
    assert {k: fox_utils.results_ocr(doc, [real])[k] for k in OFFICIAL} == ocr_metrics(real, doc["reference"])
    none = fox_utils.results_ocr(doc, [None])
    assert none["record"]["not_text"] and none["edit_dist"] == 1.0
