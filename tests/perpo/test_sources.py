"""Instruction sources: refer layout (RefCOCO/+/g), Fox-style OCR, the synthetic benchmark, the released data.json."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perpo.cli import main
from perpo.data.refer import UnsafePickleError
from perpo.data.schema import RecordError, load_records, resolve_image, validate_record
from perpo.data.sources import (
    equal_share_counts,
    equal_share_sample,
    fox_instructions,
    import_perpo_data,
    refer_instructions,
    released_refer_rows,
    synth_instructions,
    write_records,
)
from perpo.objectives.boxes import gt_box_in_frame

FIXTURES = Path(__file__).parents[1] / "fixtures"
RELEASED = FIXTURES / "perpo_data_json_example.json"
IMAGES = [
    {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 640, "height": 480},
    {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "width": 300, "height": 500},
]
ANNOTATIONS = [
    {"id": 11, "image_id": 1, "category_id": 1, "bbox": [100, 50, 200, 100]},
    {"id": 12, "image_id": 1, "category_id": 2, "bbox": [400.5, 300.25, 100, 100]},
    {"id": 21, "image_id": 2, "category_id": 1, "bbox": [10, 20, 30, 40]},
]
# Train sentences per dataset: refcoco 6, refcoco+ 2, refcocog 10 (plus one val ref each, never read for train).
SENTENCES = {
    "refcoco": [["glass behind burger", "the glass"], ["left glass"], ["tall glass"], ["cup"], ["mug"]],
    "refcoco+": [["glass behind burger"], ["round thing"]],
    "refcocog": [[f"object number {i}"] for i in range(10)],
}
SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}


def write_refer(root: Path) -> Path:
    """A tiny refer layout for the three datasets (instances.json + refs pickle) and a COCO image folder."""
    from PIL import Image

    images = root / "train2014"
    images.mkdir(parents=True)
    for image in IMAGES:
        Image.new("RGB", (8, 6), (120, 10, 10)).save(images / image["file_name"])
    instances = {
        "images": IMAGES,
        "annotations": [
            a | {"area": a["bbox"][2] * a["bbox"][3], "iscrowd": 0, "segmentation": []} for a in ANNOTATIONS
        ],
        "categories": [
            {"id": 1, "name": "cup", "supercategory": "x"},
            {"id": 2, "name": "glass", "supercategory": "x"},
        ],
    }
    sent_id = 100
    for dataset, groups in SENTENCES.items():
        folder = root / dataset
        folder.mkdir()
        (folder / "instances.json").write_text(json.dumps(instances))
        refs = []
        for ref_id, texts in enumerate(groups + [["a val sentence"]], start=1):
            # refcoco+'s first ref points at the other glass of image 1 with the same words as refcoco's first ref.
            ann = ANNOTATIONS[1] if (dataset == "refcoco+" and ref_id == 1) else ANNOTATIONS[(ref_id - 1) % 3]
            sentences = []
            for text in texts:
                sent_id += 1
                sentences.append({"sent_id": sent_id, "sent": text, "raw": text, "tokens": text.split()})
            refs.append(
                {
                    "ref_id": ref_id,
                    "ann_id": ann["id"],
                    "image_id": ann["image_id"],
                    "category_id": ann["category_id"],
                    "split": "val" if ref_id == len(groups) + 1 else "train",
                    "sent_ids": [s["sent_id"] for s in sentences],
                    "sentences": sentences,
                    "file_name": "ignored.jpg",
                }
            )
        (folder / f"refs({SPLIT_BY[dataset]}).p").write_bytes(pickle.dumps(refs, protocol=2))
    return images


@pytest.fixture
def refer_root(tmp_path) -> Path:
    write_refer(tmp_path / "refer")
    return tmp_path / "refer"


# ---------------------------------------------------------------------------------------------------------- refer


def test_refer_records_follow_the_schema_with_exact_targets(refer_root):
    records = refer_instructions(refer_root, refer_root / "train2014")
    assert [sum(r["meta"]["dataset"] == d for r in records) for d in SENTENCES] == [6, 2, 10]
    for record in records:
        validate_record(record, stage="instructions")
        assert record["meta"]["split"] == "train" and Path(record["image"]).is_file()
    first = records[0]
    # 640x480 padded to 640x640 with the image pasted 80 px down: y = (50 + 80) / 640, (150 + 80) / 640.
    assert first["target"] == [0.15625, 0.203125, 0.46875, 0.359375]
    assert first["answer"] == "[0.16, 0.20, 0.47, 0.36]"
    assert first["question"].endswith("describes: glass behind burger.")
    assert first["meta"] | {} == first["meta"] and first["meta"]["bbox"] == [100.0, 50.0, 200.0, 100.0]
    assert first["meta"]["width"] == 640 and first["meta"]["category"] == "cup"
    original = refer_instructions(refer_root, refer_root / "train2014", datasets=["refcoco"], frame="original")
    assert original[0]["target"] == pytest.approx([0.15625, 50 / 480, 0.46875, 150 / 480])
    assert original[0]["frame"] == "original"
    assert len({r["id"] for r in records}) == len(records)


def test_equal_share_per_dataset_as_in_the_paper(refer_root):
    records = refer_instructions(refer_root, refer_root / "train2014")
    chosen = equal_share_sample(records, 9, seed=3)
    by_dataset = {d: sum(r["meta"]["dataset"] == d for r in chosen) for d in SENTENCES}
    # refcoco+ has only 2: it gives both, the other 7 are split 4/3 (remainder to "refcoco", first by name).
    assert by_dataset == {"refcoco": 4, "refcoco+": 2, "refcocog": 3}
    assert chosen == equal_share_sample(records, 9, seed=3)
    assert [records.index(r) for r in chosen] == sorted(records.index(r) for r in chosen)  # input order kept
    assert any(equal_share_sample(records, 9, seed=s) != chosen for s in range(4, 10))
    assert equal_share_sample(records, 100, seed=0) == records


@given(st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 30)), st.integers(0, 200))
def test_equal_share_counts_properties(available, total):
    counts = equal_share_counts(available, total)
    assert set(counts) == set(available)
    assert sum(counts.values()) == min(total, sum(available.values()))
    assert all(0 <= counts[g] <= available[g] for g in available)
    # A group that did not give all it has never gets fewer than another group's count minus one.
    open_counts = [counts[g] for g in available if counts[g] < available[g]]
    if open_counts:
        assert max(counts.values()) <= min(open_counts) + 1


def test_equal_share_counts_rejects_negative_total():
    with pytest.raises(ValueError, match="total must be >= 0"):
        equal_share_counts({"a": 1}, -1)


def test_malicious_refs_pickle_is_refused_through_the_source(refer_root, tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (refer_root / "refcoco+" / "refs(unc).p").write_bytes(pickle.dumps([{"ref_id": 1, "payload": Boom()}]))
    with pytest.raises(UnsafePickleError, match="refused to load"):
        refer_instructions(refer_root, refer_root / "train2014")
    assert not (tmp_path / "pwned").exists()


def test_malicious_pickle_through_the_cli_is_a_clear_error(refer_root, tmp_path, capsys):
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (refer_root / "refcocog" / "refs(umd).p").write_bytes(pickle.dumps([Boom()]))
    out = tmp_path / "inst.jsonl"
    argv = ["data", "instructions", "--source", "refcoco", "--refer_root", str(refer_root)]
    assert main(argv + ["--coco_images", str(refer_root / "train2014"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "refused to load" in err and "refs(umd).p" in err
    assert not out.exists() and not (tmp_path / "pwned").exists()


def test_truncated_refs_pickle_through_the_cli_is_a_clear_error(refer_root, tmp_path, capsys):
    refs = refer_root / "refcocog" / "refs(umd).p"
    refs.write_bytes(refs.read_bytes()[:-10])
    out = tmp_path / "inst.jsonl"
    argv = ["data", "instructions", "--source", "refcoco", "--refer_root", str(refer_root)]
    assert main(argv + ["--coco_images", str(refer_root / "train2014"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"perpo data: error: {refs}: refs pickle is truncated or corrupt" in err and err.count("\n") == 1
    assert not out.exists()


def test_refcoco_cli_writes_an_equal_share_instruction_file(refer_root, tmp_path, capsys):
    out = tmp_path / "inst" / "refcoco_train.jsonl"
    argv = ["data", "instructions", "--source", "refcoco", "--refer_root", str(refer_root), "--total", "9"]
    assert main(argv + ["--coco_images", str(refer_root / "train2014"), "--out", str(out)]) == 0
    assert "9 instructions (refcoco: 4, refcoco+: 2, refcocog: 3)" in capsys.readouterr().out
    records = load_records(out, stage="instructions")
    assert all(Path(r["image"]).is_absolute() for r in records)  # images lie outside the output folder


def test_cli_names_missing_source_flags(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["data", "instructions", "--source", "fox", "--out", str(tmp_path / "x.jsonl")])
    assert "--source fox needs --fox_json and --fox_images" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------ fox


def write_fox(root: Path, entries: list) -> tuple[Path, Path]:
    from PIL import Image

    images = root / "en_pdf_png"
    images.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("image"), str):
            Image.new("RGB", (20, 30), (255, 255, 255)).save(images / entry["image"])
    path = root / "en_page_ocr.json"
    path.write_text(json.dumps(entries))
    return path, images


def page(image: str, text: str, prompt: str = "<image>\nOCR this image: ") -> dict:
    return {
        "image": image,
        "len": len(text),
        "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": text}],
    }


def test_fox_records(tmp_path):
    path, images = write_fox(tmp_path / "fox", [page("en_1.png", "Hello page\nline 2"), page("en_2.png", "Zwei", "")])
    records = fox_instructions(path, images)
    assert [r["id"] for r in records] == ["fox_en_page_ocr_en_1", "fox_en_page_ocr_en_2"]
    first = records[0]
    validate_record(first, stage="instructions")
    assert first["task"] == "ocr" and first["question"] == "OCR this image: "
    assert first["answer"] == first["target"] == "Hello page\nline 2"
    assert records[1]["question"] == "OCR this image: "  # empty prompt -> the benchmark's own
    assert first["meta"] == {"dataset": "fox_en_page_ocr", "source": "en_page_ocr.json", "index": 0}
    assert "frame" not in first


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"image": "x"}, "expected a JSON list of pages"),
        (["en_1.png"], "entry 0: expected an object"),
        ([{"conversations": []}], "entry 0: field 'image'"),
        (
            [{"image": "en_1.png", "conversations": [{"from": "human", "value": "q"}]}],
            "entry 0: field 'conversations'",
        ),
        ([page("en_1.png", "a"), {"image": "en_2.png", "conversations": "text"}], "entry 1: field 'conversations'"),
        (
            [{"image": "en_1.png", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}],
            "must start with a 'human' turn",
        ),
        ([page("en_1.png", "a"), page("en_1.png", "b")], "entry 1: field 'image' 'en_1.png' repeats entry 0"),
    ],
)
def test_fox_errors_name_entry_and_field(tmp_path, entries, message):
    path, images = write_fox(tmp_path / "fox", entries)
    with pytest.raises(RecordError, match=message) as info:
        fox_instructions(path, images)
    assert str(path) in str(info.value)


def test_fox_missing_files(tmp_path):
    path, images = write_fox(tmp_path / "fox", [page("en_1.png", "a")])
    (images / "en_1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"entry 0: page image .*en_1.png not found"):
        fox_instructions(path, images)
    with pytest.raises(FileNotFoundError, match="image folder"):
        fox_instructions(path, tmp_path / "nowhere")
    path.write_text("[{,")
    with pytest.raises(RecordError, match=r"en_page_ocr.json:1: not valid JSON"):
        fox_instructions(path, images)


def test_fox_cli(tmp_path, capsys):
    path, images = write_fox(tmp_path / "fox", [page("en_1.png", "a"), page("en_2.png", "b")])
    out = tmp_path / "fox" / "inst.jsonl"
    argv = ["data", "instructions", "--source", "fox", "--fox_json", str(path), "--fox_images", str(images)]
    assert main(argv + ["--out", str(out)]) == 0
    records = load_records(out, stage="instructions")
    assert [r["image"] for r in records] == [
        "en_pdf_png/en_1.png",
        "en_pdf_png/en_2.png",
    ]  # relative: under out's folder


# ---------------------------------------------------------------------------------------------------------- synth


def test_synth_records_and_portable_paths(synth_data, tmp_path):
    rows = [json.loads(line) for line in (synth_data / "synth_train.jsonl").read_text().splitlines()]
    records = synth_instructions(synth_data, "train")
    assert [r["id"] for r in records] == [row["id"] for row in rows]
    for record, row in zip(records, rows, strict=True):
        assert record["target"] == list(gt_box_in_frame(row["bbox"], row["width"], row["height"], "padded"))
        assert record["meta"]["dataset"] == "synth"
    inside = write_records(synth_data / "inst_test.jsonl", records)
    loaded = load_records(inside, stage="instructions")
    assert loaded[0]["image"] == rows[0]["image"]  # relative to the data folder, as the flat rows
    assert all(resolve_image(r, synth_data).is_file() for r in loaded)
    outside = load_records(write_records(tmp_path / "elsewhere.jsonl", records), stage="instructions")
    assert Path(outside[0]["image"]).is_absolute() and Path(outside[0]["image"]).is_file()
    (synth_data / "inst_test.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="perpo data synth"):
        synth_instructions(synth_data, "dev")


def test_write_records_refuses_bad_records_and_writes_nothing(tmp_path):
    good = {"id": "a", "task": "ocr", "image": "", "question": "q", "answer": "t", "target": "t"}
    out = tmp_path / "inst.jsonl"
    with pytest.raises(RecordError, match=r"record 2\): field 'target'"):
        write_records(out, [good, good | {"id": "b", "target": None}])
    with pytest.raises(RecordError, match="id 'a' appears twice"):
        write_records(out, [good, good])
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- released data.json


def test_import_released_format_without_refer(tmp_path):
    entries = json.loads(RELEASED.read_text())
    records = import_perpo_data(RELEASED)
    assert [r["id"] for r in records] == ["perpo_0", "perpo_1"]
    for record, entry in zip(records, entries, strict=True):
        validate_record(record, stage="train")
        assert record["responses"] == entry["answers_gen"] and record["rewards"] == entry["iou_scores"]
        assert record["reward"] == "iou" and record["frame"] == "padded"
        assert record["image"] == entry["image_path"]  # kept as released (relative to the authors' folder)
        assert record["meta"]["target_source"] == "parsed_answer"
        assert record["meta"]["released_order"] == "best-first"
    # The released answer is rounded: the parsed target reproduces the stored IoUs only approximately.
    assert records[0]["target"] == [0.16, 0.2, 0.47, 0.36]
    assert 1e-3 < records[0]["meta"]["rewards_recomputed_max_diff"] < 0.1
    assert records[1]["meta"]["rewards_recomputed_max_diff"] == pytest.approx(0.0, abs=1e-12)
    assert records[1]["question"].endswith("cat on the left")  # </s> removed


def test_import_recovers_exact_targets_from_refer(refer_root, tmp_path):
    rows = released_refer_rows(refer_root)
    records = import_perpo_data(RELEASED, refer_rows=rows, image_folder=tmp_path / "coco")
    first = records[0]
    # Two refer objects share image and words (refcoco's and refcoco+'s "glass behind burger"): the released
    # answer picks the one it rounds from.
    assert first["meta"]["target_source"] == "refer" and first["meta"]["dataset"] == "refcoco"
    assert first["target"] == [0.15625, 0.203125, 0.46875, 0.359375]
    assert first["meta"]["rewards_recomputed_max_diff"] == pytest.approx(0.0, abs=1e-12)
    assert first["image"] == str(tmp_path / "coco" / "COCO" / "train2014" / "COCO_train2014_000000000001.jpg")
    assert records[1]["meta"]["target_source"] == "parsed_answer" and records[1]["meta"]["refer_match"] == "none"
    # In the wrong frame the answer disagrees with the exact box, and the meta says so.
    original = import_perpo_data(RELEASED, refer_rows=rows, frame="original")
    assert original[0]["meta"]["refer_match"] == "ambiguous"
    single = import_perpo_data(RELEASED, refer_rows=[r for r in rows if r["dataset"] == "refcoco"], frame="original")
    assert single[0]["meta"]["answer_disagrees_with_target"] is True
    assert single[0]["meta"]["rewards_recomputed_max_diff"] > 0.1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"answers_gen": "[0.1, 0.1, 0.2, 0.2]"}, "entry 0: field 'answers_gen' must be list"),
        ({"iou_scores": [0.5]}, "entry 0: field 'iou_scores' has 1 values for 6 answers_gen"),
        ({"iou_scores": [0.5, 0.4, 0.3, 0.2, 0.1, "x"]}, "entry 0: field 'iou_scores' must be a list of finite"),
        ({"question": None}, "entry 0: field 'question' must be str"),
        ({"answer": "no box here"}, "entry 0: field 'answer' 'no box here' holds no box"),
    ],
)
def test_import_errors_name_entry_and_field(tmp_path, change, message):
    entries = json.loads(RELEASED.read_text())
    entries[0].update(change)
    path = tmp_path / "data.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(RecordError, match=message):
        import_perpo_data(path)


def test_import_cli(tmp_path, refer_root, capsys):
    out = tmp_path / "train.jsonl"
    assert main(["data", "import-perpo", str(RELEASED), "--out", str(out), "--refer_root", str(refer_root)]) == 0
    assert "2 lists (1 with exact targets from refer)" in capsys.readouterr().out
    records = load_records(out, stage="train", n=3)
    assert records[0]["target"] == [0.15625, 0.203125, 0.46875, 0.359375]


def test_records_for_a_qwen_model_write_json_pixel_boxes_of_its_resized_image(refer_root, tiny_model_of, tmp_path):
    """`--model` of a Qwen2.5-VL checkpoint: its question, boxes in pixels of the image its processor makes
    (`pixels`), the frame original; the answer's IoU with the target is the rounding's only."""
    from perpo.model.families import QWEN2_5_VL
    from perpo.model.modeling import load_processor
    from perpo.objectives.rewards import iou_reward

    qwen = tiny_model_of("qwen2_5_vl")
    out = tmp_path / "qwen.jsonl"
    argv = ["data", "instructions", "--source", "refcoco", "--refer_root", str(refer_root), "--datasets", "refcoco"]
    argv += ["--coco_images", str(refer_root / "train2014"), "--model", str(qwen)]
    assert main([*argv, "--out", str(out)]) == 0
    records = load_records(out, stage="instructions")
    first = records[0]
    pixels = QWEN2_5_VL.answer_pixels(load_processor(qwen), 640, 480)
    assert first["pixels"] == list(pixels) == [112, 84] and first["frame"] == "original"
    # the pixel box of the 640x480 image's [100, 50, 200, 100] (xywh) scaled to 112x84
    assert first["target"] == pytest.approx([100 / 640 * 112, 50 / 480 * 84, 300 / 640 * 112, 150 / 480 * 84])
    assert first["answer"] == '[{"bbox_2d": [18, 9, 52, 26]}]'
    assert (
        first["question"] == "Locate glass behind burger in the image, and output its bbox coordinates in JSON format."
    )
    assert iou_reward(first["answer"], first["target"]) > 0.9
    with pytest.raises(SystemExit):
        main([*argv, "--frame", "padded", "--out", str(tmp_path / "padded.jsonl")])
    assert not (tmp_path / "padded.jsonl").exists()


def test_records_for_a_qwen3_model_write_boxes_on_its_relative_grid(refer_root, tiny_model_of, tmp_path):
    """Qwen3-VL writes boxes on a 0-1000 grid of the image: the records' frame is that grid, whatever the size."""
    out = tmp_path / "qwen3.jsonl"
    argv = ["data", "instructions", "--source", "refcoco", "--refer_root", str(refer_root), "--datasets", "refcoco"]
    argv += ["--coco_images", str(refer_root / "train2014"), "--model", str(tiny_model_of("qwen3_vl"))]
    assert main([*argv, "--out", str(out)]) == 0
    first = load_records(out, stage="instructions")[0]
    assert first["pixels"] == [1000, 1000] and first["frame"] == "original"
    assert first["target"] == pytest.approx([156.25, 104.1667, 468.75, 312.5], abs=1e-3)
    assert first["answer"] == '[{"bbox_2d": [156, 104, 469, 312]}]'
