"""The grounding tasks' hooks, called the way lmms-eval calls them (the task folder's utils.py loaded by path).

Hand-made documents with known boxes on non-square images, where the two frames disagree:

    A  300x100, GT xywh [30, 0, 90, 100]: original [0.1, 0, 0.4, 1];  padded (dy = 100) [0.1, 1/3, 0.4, 2/3]
    B  same document as A
    C  same document as A
    D  100x300, GT xywh [0, 30, 100, 60]: original [0, 0.1, 1, 0.3];  padded (dx = 100) [1/3, 0.1, 2/3, 0.3]
    E  64x64,   GT xywh [16, 16, 16, 16]: both frames [0.25, 0.25, 0.5, 0.5]

Answers: A "[0.10, 0.33, 0.40, 0.67]" (padded IoU 0.99, original 0.34), B "[0.10, 0.00, 0.40, 1.00]" (original
IoU 1, padded 1/3), C no box (parse failure), D "[0.33, 0.10, 0.67, 0.30]" (padded 0.99, original 0.34),
E "[0.25, 0.25, 0.50, 0.50]" (1 in both). So AP@50 = 3/5 in the padded frame (A, D, E) and 2/5 in the original
frame (B, E), with parse_fail = 1/5 in both.
"""

from __future__ import annotations

import pytest
from PIL import Image

from lmms_tasks.data import grounding_doc
from lmms_tasks.images import CLIP_MEAN_FILL

ANSWERS = ["[0.10, 0.33, 0.40, 0.67]", "[0.10, 0.00, 0.40, 1.00]", "I cannot tell.", "[0.33, 0.10, 0.67, 0.30]"]
ANSWERS.append("[0.25, 0.25, 0.50, 0.50]")


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    specs = [((300, 100), [30, 0, 90, 100])] * 3 + [((100, 300), [0, 30, 100, 60]), ((64, 64), [16, 16, 16, 16])]
    out = []
    for i, ((width, height), bbox) in enumerate(specs):
        path = folder / f"img{i}.png"
        Image.new("RGB", (width, height), (10, 200, 30)).save(path)
        row = {"id": f"t_{i}", "dataset": "hand", "split": "val", "image": str(path), "width": width}
        row.update({"height": height, "bbox": bbox, "expression": "the red circle", "sent_id": i})
        out.append(grounding_doc(row))
    return out


def mean(rows, key):
    return sum(r[key] for r in rows) / len(rows)


def test_ap50_on_known_boxes_in_both_frames(docs, refcoco_utils):
    padded = [refcoco_utils.results_padded(doc, [answer]) for doc, answer in zip(docs, ANSWERS, strict=True)]
    original = [refcoco_utils.results_original(doc, [answer]) for doc, answer in zip(docs, ANSWERS, strict=True)]
    assert [r["ap50"] for r in padded] == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert [r["ap50"] for r in original] == [0.0, 1.0, 0.0, 0.0, 1.0]
    assert mean(padded, "ap50") == pytest.approx(0.6, abs=1e-15)
    assert mean(original, "ap50") == pytest.approx(0.4, abs=1e-15)
    assert mean(padded, "parse_fail") == mean(original, "parse_fail") == pytest.approx(0.2)
    assert padded[0]["iou"] == pytest.approx(0.1 / 0.102, rel=1e-6)
    assert padded[1]["iou"] == pytest.approx(1 / 3) and original[0]["iou"] == pytest.approx(0.34)
    assert {r["frame"] for r in padded} == {"padded"} and {r["frame"] for r in original} == {"original"}
    for key in ("acc10", "acc90", "center_acc", "iou"):
        assert all(0.0 <= r[key] <= 1.0 for r in padded + original)


def test_every_result_carries_identifying_fields(docs, synth_utils):
    result = synth_utils.results_padded(docs[0], [ANSWERS[0]])
    record = result["record"]
    assert record["id"] == "t_0" and record["frame"] == "padded" and record["response"] == ANSWERS[0]
    assert record["gt_box"] == pytest.approx([0.1, 1 / 3, 0.4, 2 / 3])
    assert record["pred_box"] == [0.1, 0.33, 0.4, 0.67] and record["bbox_xywh"] == [30.0, 0.0, 90.0, 100.0]
    assert (record["width"], record["height"], record["sent_id"]) == (300, 100, 0)
    assert synth_utils.results_original(docs[0], ["nothing"])["record"]["pred_box"] is None


def test_best_of_n_scores_first_mean_best_and_the_curve(docs, refcoco_utils):
    """Doc A, three samples: padded IoUs [0.99, 1/3, 0 (no box)] -> AP@50 hits [1, 0, 0]."""
    out = refcoco_utils.results_bon_padded(docs[0], [ANSWERS[0], ANSWERS[1], "no box"])
    assert (out["ap50_first"], out["ap50_best"]) == (1.0, 1.0)
    assert out["ap50_mean"] == pytest.approx(1 / 3) and out["ap50_bo1"] == pytest.approx(1 / 3)
    assert out["ap50_bo2"] == pytest.approx(2 / 3)  # 1 - C(2, 2) / C(3, 2)
    assert out["ap50_bo3"] == 1.0 and "ap50_bo4" not in out
    assert out["iou_best"] == pytest.approx(0.1 / 0.102) and out["iou_first"] == out["iou_best"]
    assert out["parse_fail_first"] == 0.0 and out["parse_fail_mean"] == pytest.approx(1 / 3)
    assert out["n_samples"] == 3.0 and out["frame"] == "padded"
    assert out["record"]["pred_boxes"][2] is None and len(out["record"]["responses"]) == 3
    original = refcoco_utils.results_bon_original(docs[0], [ANSWERS[0], ANSWERS[1], "no box"])
    assert (original["ap50_first"], original["ap50_best"], original["frame"]) == (0.0, 1.0, "original")


def test_padded_visual_is_llava_expand2square(docs, refcoco_utils):
    (image,) = refcoco_utils.visual_padded(docs[0])
    assert image.size == (300, 300)
    assert image.getpixel((150, 50)) == CLIP_MEAN_FILL == (122, 116, 104)  # top band: padding
    assert image.getpixel((150, 150)) == (10, 200, 30)  # the image sits at dy = 100
    assert image.getpixel((150, 250)) == CLIP_MEAN_FILL
    (portrait,) = refcoco_utils.visual_padded(docs[3])
    assert portrait.size == (300, 300) and portrait.getpixel((50, 150)) == CLIP_MEAN_FILL
    assert portrait.getpixel((150, 150)) == (10, 200, 30)
    (original,) = refcoco_utils.visual_original(docs[0])
    assert original.size == (300, 100) and original.mode == "RGB"


def test_no_image_and_blank_image_ablations(docs, refcoco_utils, synth_utils):
    assert refcoco_utils.visual_none(docs[0]) == [] and synth_utils.visual_none(docs[4]) == []
    (blank,) = refcoco_utils.visual_blank(docs[0])
    assert blank.size == (300, 100) and blank.getcolors() == [(300 * 100, CLIP_MEAN_FILL)]


def test_prompts(docs, refcoco_utils):
    assert refcoco_utils.text_llava15(docs[0]) == (
        "Please provide the bounding box coordinate of the region this sentence describes: the red circle."
    )
    assert refcoco_utils.text_lmms_eval(docs[0], {"pre_prompt": "", "post_prompt": ""}).startswith(
        "Bounding box coordinates are specified in the format (top-left x, top-left y,"
    )
    assert refcoco_utils.text_llava15(docs[0], {"pre_prompt": "<", "post_prompt": ">"}).startswith("<Please")
    assert refcoco_utils.text_llava15(docs[0], {"post_prompt": ">"}).endswith("circle.>")


def test_aggregations(refcoco_utils):
    assert refcoco_utils.same_value(["padded", "padded"]) == "padded"
    assert refcoco_utils.same_value(["padded", "original"]) == "original+padded"
    assert refcoco_utils.count([{}, {}, {}]) == 3


def test_qwen_variant_reads_json_pixel_boxes_of_the_image_it_hands_over(docs, refcoco_utils, monkeypatch):
    """`_qwen`: the image is resized to Qwen2.5-VL's grid (lmms-eval's qwen2_5_vl bounds, or the environment's),
    and the answer's pixels are read in that image, so the same box scores 1 whatever the bounds."""
    doc = docs[0]  # 300x100, GT original [0.1, 0, 0.4, 1]
    [image] = refcoco_utils.visual_qwen(doc)
    # 300x100 rounds to 308x112 (28-multiples), 34,496 px: below lmms-eval's min 200,704, so scaled up by
    # sqrt(200704 / 30000) = 2.587 and rounded up to 28-multiples
    assert image.size == (784, 280)
    width, height = image.size
    answer = f'```json\n[{{"bbox_2d": [{0.1 * width:.0f}, 0, {0.4 * width:.0f}, {height}], "label": "x"}}]\n```'
    scored = refcoco_utils.results_qwen(doc, [answer])
    assert scored["iou"] == pytest.approx(1.0, abs=0.01) and scored["frame"] == "original"
    assert scored["record"]["pixels"] == [width, height]
    monkeypatch.setenv("PERPO_QWEN_MIN_PIXELS", str(56 * 56))
    monkeypatch.setenv("PERPO_QWEN_MAX_PIXELS", str(112 * 112))
    small = refcoco_utils.results_qwen(doc, [""])["record"]["pixels"]
    assert refcoco_utils.visual_qwen(doc)[0].size == tuple(small) == (168, 56)  # above 12,544 px: scaled down
    assert refcoco_utils.results_qwen(doc, ['[{"bbox_2d": [17, 0, 67, 56]}]'])["iou"] == pytest.approx(1.0, abs=0.01)
    assert refcoco_utils.results_qwen(doc, ["[0.1, 0, 0.4, 1]"])["ap50"] == 0.0  # normalised numbers are not pixels
    assert "Locate the red circle in the image" in refcoco_utils.text_qwen(doc)
    monkeypatch.setenv("PERPO_QWEN_MAX_PIXELS", "12k")
    with pytest.raises(ValueError, match="PERPO_QWEN_MAX_PIXELS must be a positive whole number"):
        refcoco_utils.visual_qwen(doc)


def test_qwen3_variant_reads_relative_boxes_on_the_original_image(docs, refcoco_utils):
    """`_qwen3`: the image as it is, the box on Qwen3-VL's 0-1000 grid of it (the same answer on every size)."""
    doc = docs[3]  # 100x300, GT original [0, 0.1, 1, 0.3]
    assert refcoco_utils.visual_original(doc)[0].size == (100, 300)
    scored = refcoco_utils.results_qwen3(doc, ['```json\n[{"bbox_2d": [0, 100, 1000, 300], "label": "x"}]\n```'])
    assert scored["iou"] == pytest.approx(1.0) and scored["frame"] == "original" and "pixels" not in scored["record"]
    assert refcoco_utils.results_qwen3(doc, ['[{"bbox_2d": [0, 30, 100, 90]}]'])["ap50"] == 0.0  # pixels are not
