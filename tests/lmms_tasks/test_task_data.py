"""Where the tasks' documents come from: `perpo data refcoco`, the env-var folders, the hub layout, and errors."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from lmms_tasks import data
from perpo.cli import main
from perpo.data.refcoco import build_refcoco


def test_perpo_data_refcoco_writes_the_standard_splits(tmp_path, refer_root, coco_images, capsys):
    out = tmp_path / "refcoco"
    assert main(["data", "refcoco", "--refer_root", str(refer_root), "--coco_images", str(coco_images),
                 "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert f"export PERPO_REFCOCO_DIR={out.resolve()}" in printed
    names = sorted(p.name for p in out.glob("*.jsonl"))
    assert names == sorted(
        ["refcoco_val.jsonl", "refcoco_testA.jsonl", "refcoco_testB.jsonl", "refcoco_plus_val.jsonl",
         "refcoco_plus_testA.jsonl", "refcoco_plus_testB.jsonl", "refcocog_val.jsonl", "refcocog_test.jsonl"]
    )  # fmt: skip
    assert (out / "images").is_symlink() and os.readlink(out / "images") == str(coco_images.resolve())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["datasets"]["refcocog"]["split_by"] == "umd"
    val = manifest["datasets"]["refcoco"]["splits"]["val"]
    assert (val["expressions"], val["objects"], val["images"]) == (3, 2, 2)  # one ref has two sentences
    assert manifest["datasets"]["refcocog"]["splits"]["test"]["expressions"] == 2  # testA + testB refs
    rows = [json.loads(line) for line in (out / "refcoco_plus_testA.jsonl").read_text().splitlines()]
    assert rows[0]["dataset"] == "refcoco+" and rows[0]["image"].startswith("images/")


def test_refcoco_builder_errors(tmp_path, refer_root, coco_images):
    with pytest.raises(ValueError, match="unknown dataset 'refclef'"):
        build_refcoco(refer_root, coco_images, tmp_path / "x", ["refclef"])
    partial = tmp_path / "partial_images"
    shutil.copytree(coco_images, partial)
    next(partial.iterdir()).unlink()
    with pytest.raises(FileNotFoundError, match="not in the COCO image folder"):
        build_refcoco(refer_root, partial, tmp_path / "y", ["refcoco"])
    assert not (tmp_path / "y").exists()  # nothing half-written


def test_refcoco_docs_carry_both_frames(refcoco_dir, monkeypatch):
    monkeypatch.setenv("PERPO_REFCOCO_DIR", str(refcoco_dir))
    monkeypatch.delenv("PERPO_REFCOCO_SOURCE", raising=False)
    docs = list(data.load_refcoco_docs("refcoco", "val"))
    assert [d["expression"] for d in docs] == ["the blue circle", "the big blue circle", "the green triangle"]
    first = docs[0]  # 40x24 image, bbox xywh [4, 4, 20, 12]; padded: side 40, dy = 8
    assert first["gt_original"] == pytest.approx([0.1, 4 / 24, 0.6, 16 / 24])
    assert first["gt_padded"] == pytest.approx([0.1, 0.3, 0.6, 0.6])
    assert os.path.isabs(first["image"]) and os.path.isfile(first["image"])
    assert first["file_name"] == "COCO_train2014_000000000001.png" and first["ref_id"] == 2


@pytest.mark.parametrize(
    ("loader", "variable", "command"),
    [
        (lambda: data.load_synth_docs("val"), "PERPO_SYNTH_DIR", "perpo data synth"),
        (lambda: data.load_refcoco_docs("refcoco", "val"), "PERPO_REFCOCO_DIR", "perpo data refcoco"),
        (lambda: data.load_fox_docs("en"), "PERPO_FOX_DIR", "Fox_benchmark_data"),
    ],
)
def test_missing_folder_names_the_variable_and_the_command(loader, variable, command, monkeypatch, tmp_path):
    monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("PERPO_REFCOCO_SOURCE", raising=False)
    with pytest.raises(data.DataNotFoundError, match=f"{variable} is not set.*{command}"):
        loader()
    monkeypatch.setenv(variable, str(tmp_path / "nowhere"))
    with pytest.raises(data.DataNotFoundError, match=f"{variable}=.*nowhere is not a folder"):
        loader()
    monkeypatch.setenv(variable, str(tmp_path))  # a folder, but without the files
    with pytest.raises(data.DataNotFoundError, match="not found"):
        loader()


def test_rows_follow_the_variable_no_stale_cache(synth_data, tmp_path, monkeypatch):
    from perpo.embedded.synth import SynthSpec, build_synth

    other = build_synth(tmp_path / "other", seed=7, spec=SynthSpec(counts={"val": 3}), progress=False)
    monkeypatch.setenv("PERPO_SYNTH_DIR", str(synth_data))
    first = list(data.load_synth_docs("val"))
    monkeypatch.setenv("PERPO_SYNTH_DIR", str(other))
    second = list(data.load_synth_docs("val"))
    assert all(d["image"].startswith(str(other.resolve())) for d in second)
    assert [d["expression"] for d in first] != [d["expression"] for d in second] or len(first) != len(second)


def test_bad_refcoco_source(monkeypatch):
    monkeypatch.setenv("PERPO_REFCOCO_SOURCE", "s3")
    with pytest.raises(data.TaskDataError, match="PERPO_REFCOCO_SOURCE='s3'; valid values: local, hub"):
        data.load_refcoco_docs("refcoco", "val")
    with pytest.raises(ValueError, match="unknown RefCOCO split"):
        data.load_refcoco_docs("refcocog", "testA")


def test_hub_rows_explode_to_one_document_per_expression(fixtures, coco_images):
    """Two objects in the hub's val layout, with 2 and 1 sentences -> 3 documents; sizes from the image header."""
    import datasets

    table = fixtures.hub_dataset(coco_images)
    assert len(table) == 2
    docs = data.explode_hub_rows(table, "refcoco", "val")
    assert len(docs) == 3 and isinstance(docs.features["image"], datasets.Image)
    assert [d["expression"] for d in docs] == ["the blue circle", "the big blue circle", "the green triangle"]
    first = docs[0]
    assert (first["width"], first["height"], first["ann_id"], first["image_id"]) == (40, 24, 102, 1)
    assert first["id"] == "refcoco_val_102_0" and docs[1]["sent_id"] == 1
    assert first["gt_padded"] == pytest.approx([0.1, 0.3, 0.6, 0.6])
    assert first["image"].size == (40, 24)  # decoded again for doc_to_visual


def test_fox_docs(fox_dir, monkeypatch):
    monkeypatch.setenv("PERPO_FOX_DIR", str(fox_dir))
    docs = list(data.load_fox_docs("cn"))
    assert [d["id"] for d in docs] == ["fox_cn_1", "fox_cn_2"]
    assert docs[0]["question"] == "OCR this image: " and docs[0]["reference"] == "狐狸跳过了懒狗。"
    assert os.path.isfile(docs[0]["image"])
    with pytest.raises(ValueError, match="unknown Fox language"):
        data.load_fox_docs("de")


def test_hub_source_reads_the_lmms_lab_copy(fixtures, coco_images, monkeypatch, caplog):
    """The hub path offline: `datasets.load_dataset` is replaced by the hand-made table (its call is checked)."""
    import datasets

    calls = []

    def fake_load_dataset(path, split):
        calls.append((path, split))
        return fixtures.hub_dataset(coco_images)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setenv("PERPO_REFCOCO_SOURCE", "hub")
    monkeypatch.delenv("PERPO_REFCOCO_DIR", raising=False)
    with caplog.at_level("WARNING", logger="lmms_tasks.data"):
        docs = data.load_refcoco_docs("refcocog", "val")
    assert calls == [("lmms-lab/RefCOCOg", "val")] and len(docs) == 3 and docs[0]["dataset"] == "refcocog"
    assert "not the standard refcocog val" in caplog.text
    monkeypatch.setenv("PERPO_REFCOCO_HUB_ORG", "lmms-lab-encoder")
    data.load_refcoco_docs("refcoco_plus", "testA")
    assert calls[-1] == ("lmms-lab-encoder/RefCOCOplus", "testA")


def test_a_hook_whose_data_is_missing_ends_the_run_in_one_line(refcoco_utils, refer_root, monkeypatch, capsys):
    """lmms-eval retries a failing load five times with tracebacks, then exits 0: the hooks exit 2 in one line."""
    monkeypatch.delenv("PERPO_REFCOCO_SOURCE", raising=False)
    monkeypatch.setenv("PERPO_REFCOCO_DIR", str(refer_root))  # the refer root instead of the built splits
    with pytest.raises(SystemExit) as exited:
        refcoco_utils.refcoco_val(None)
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("lmms-eval: error: ") and "refcoco_val.jsonl not found" in line
    assert f"{refer_root} is a refer root" in line and f"perpo data refcoco --refer_root {refer_root}" in line
    monkeypatch.setenv("PERPO_REFCOCO_SOURCE", "s3")
    with pytest.raises(SystemExit):
        refcoco_utils.refcoco_testA(None)
    assert "PERPO_REFCOCO_SOURCE='s3'" in capsys.readouterr().err


def test_a_fox_json_of_the_wrong_shape_ends_the_run_in_one_line(fox_utils, tmp_path, monkeypatch, capsys):
    (tmp_path / "en_page_ocr.json").write_text('{"not": "a list"}')
    monkeypatch.setenv("PERPO_FOX_DIR", str(tmp_path))
    with pytest.raises(SystemExit):
        fox_utils.fox_en(None)
    expected = f"lmms-eval: error: {tmp_path / 'en_page_ocr.json'}: expected a JSON list of pages"
    assert capsys.readouterr().err.strip() == expected
