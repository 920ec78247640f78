"""lmms-eval hooks of the Fox page-OCR tasks.

Scoring is `perpo.objectives.metrics.ocr`. Per page, greedy tasks return the six official metrics under their
plain names, computed in the official script's argument order (its "precision" is the true recall, its BLEU and
METEOR score the ground truth against the output: the order the published numbers use), and the textbook order
of the four order-dependent metrics as `precision_textbook`, `recall_textbook`, `bleu_textbook`,
`meteor_textbook` (edit distance and F1 are symmetric). `edit_dist` is lower-is-better. `record` holds the
identifying fields. Best-of-N tasks return `edit_dist_*` (best = lowest) and `f1_*` first/mean/best and the
best-of-k curves (`lmms_tasks.bestofk`).
"""

from __future__ import annotations

from collections.abc import Sequence

from lmms_tasks.bestofk import best_of_n_summary
from lmms_tasks.images import blank_like, open_image
from perpo.objectives.metrics.ocr import normalized_edit_distance, ocr_metrics, set_precision_recall_f1, tokenize_pair

ORDER_DEPENDENT = ("precision", "recall", "bleu", "meteor")


def doc_to_visual(doc: dict) -> list:
    """The page image as is (the model's processor resizes or pads it as the model was trained)."""
    return [open_image(doc["image"])]


def doc_to_blank_visual(doc: dict) -> list:
    """The `blankimg` ablation: a uniform CLIP-mean image of the page's size."""
    with open_image(doc["image"]) as page:
        return [blank_like(*page.size)]


def doc_to_no_visual(doc: dict) -> list:
    """The `noimg` ablation: the OCR question without the page."""
    return []


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The benchmark's own question ("OCR this image: "), with optional model-specific pre/post prompts."""
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


MAX_RESPONSE_RATIO, MIN_RESPONSE_CAP = 4, 8192
"""A response is scored on at most max(4 x the reference's length, 8,192) characters: a real transcription is far
shorter, and a degenerate one (one character repeated 300,000 times) would otherwise stall jieba for minutes."""


def scored_response(response: object, reference: str) -> tuple[str, dict]:
    """The text a response is scored as, and what was done to it: a non-string (a wrapper's None) is empty text,
    a response beyond the cap is cut there. Both are counted in the page's record."""
    flags = {"not_text": not isinstance(response, str), "truncated": False}
    text = response if isinstance(response, str) else ""
    cap = max(MAX_RESPONSE_RATIO * len(reference), MIN_RESPONSE_CAP)
    if len(text) > cap:
        text, flags["truncated"] = text[:cap], True
    return text, flags


def _record(doc: dict, response: str, flags: dict) -> dict:
    return {
        "id": doc["id"],
        "language": doc["language"],
        "image": doc.get("file_name", ""),
        "reference_chars": len(doc["reference"]),
        "response_chars": len(response),
        **flags,
    }


def process_results(doc: dict, results: Sequence[str]) -> dict:
    """The Fox metrics of the first response of a page, both argument orders, plus `record`."""
    raw = results[0] if results else ""
    response, flags = scored_response(raw, doc["reference"])
    official = ocr_metrics(response, doc["reference"], official_order=True)
    textbook = ocr_metrics(response, doc["reference"], official_order=False)
    out: dict = dict(official)
    out.update({f"{key}_textbook": textbook[key] for key in ORDER_DEPENDENT})
    out["record"] = _record(doc, raw if isinstance(raw, str) else "", flags)
    return out


def _f1(response: str, reference: str) -> float:
    hyp, ref = tokenize_pair(response, reference)
    return set_precision_recall_f1(hyp, ref)[2] or 0.0


def process_results_bon(doc: dict, results: Sequence[str]) -> dict:
    """Edit distance and F1 (both symmetric) of all N sampled responses: first/mean/best and best-of-k curves."""
    scored = [scored_response(r, doc["reference"]) for r in list(results) or [""]]
    responses = [text for text, _ in scored]
    distances = [normalized_edit_distance(r, doc["reference"]) for r in responses]
    f1s = [_f1(r, doc["reference"]) for r in responses]
    out: dict = {}
    out.update(best_of_n_summary("edit_dist", distances, higher_is_better=False))
    out.update(best_of_n_summary("f1", f1s))
    out["n_samples"] = float(len(responses))
    flags = {key: sum(f[key] for _, f in scored) for key in ("not_text", "truncated")}  # counts over the N
    record = _record(doc, responses[0], flags)
    record.update({"edit_dists": distances, "f1s": f1s})
    out["record"] = record
    return out
