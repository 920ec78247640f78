"""perpo.studies.saturation's bookkeeping without training: the warm-up chain, the paired differences,
the table and the figure (the whole study on one quick level runs in tests/integration/test_demo_ocr.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from PIL import Image

from perpo.io import write_json
from perpo.studies import saturation

ROOT = Path(__file__).resolve().parents[2]


def _warmed(folder: Path, steps: int, batch: int, parent: Path | None) -> Path:
    folder.mkdir(parents=True)
    config = {"steps": steps, "batch_size": batch, "model": str(parent) if parent else None}
    write_json(folder / "warmup_log.json", {"config": config})
    return folder


def test_warmup_pages_follow_the_chain_of_continued_warmups(tmp_path):
    first = _warmed(tmp_path / "a", 1000, 32, None)
    second = _warmed(tmp_path / "b", 500, 16, first)
    third = _warmed(tmp_path / "c", 10, 4, second)
    assert saturation.warmup_pages(first) == 32_000
    assert saturation.warmup_pages(third) == 32_000 + 8_000 + 40
    orphan = _warmed(tmp_path / "d", 10, 4, tmp_path / "missing")  # a link without its log: unknown, not a guess
    assert saturation.warmup_pages(orphan) is None
    assert saturation.warmup_pages(ROOT / "perpo" / "assets" / "tiny_llava_ocr") == 1000 * 32


def _search_folder(folder: Path, picks: dict) -> Path:
    (folder / "lists").mkdir(parents=True)
    write_json(folder / "lists" / "stats.json", {"best_of_n": {"k": [1, 4, 20], "mean_best": [0.6, 0.7, 0.8]}})
    write_json(folder / "search.json", {"best_lr": picks})
    return folder


PICKS = {"sft": {"lr": 3e-3, "beta": None}, "perpo": {"lr": 1e-4, "beta": 0.5}}


def test_level_summary_pairs_each_method_with_its_base_and_perpo_with_sft(tmp_path, monkeypatch):
    folders = {0: _search_folder(tmp_path / "search_x", PICKS), 1: _search_folder(tmp_path / "search_x_seed1", PICKS)}
    pages = {  # per seed and val page; PerPO better than SFT on every page, SFT better than the base
        "base": [[0.5, 0.4, 0.6, 0.3]] * 2,
        "sft_lr0.003": [[0.4, 0.3, 0.5, 0.2], [0.45, 0.35, 0.55, 0.25]],
        "perpo_lr0.0001_beta0.5": [[0.3, 0.25, 0.45, 0.1], [0.3, 0.25, 0.45, 0.1]],
    }

    def distances(folder: Path, adapter: Path | None) -> list[float]:
        return pages[(adapter or folder / "base").name][0 if folder.name == "search_x" else 1]

    monkeypatch.setattr(saturation, "page_distances", distances)
    level = _warmed(tmp_path / "lvl", 100, 8, None)
    summary = saturation.level_summary(level, folders, ["sft", "perpo"])
    assert summary["warmup_pages"] == 800 and summary["val_pages"] == 4 and summary["seeds"] == [0, 1]
    assert summary["base"]["edit_dist"] == pytest.approx(0.45)
    assert summary["sampling"] == {"first": pytest.approx(0.4), "best_of_20": pytest.approx(0.2)}
    sft, perpo = summary["methods"]["sft"], summary["methods"]["perpo"]
    assert sft["lr"] == 3e-3 and sft["beta"] is None and perpo["beta"] == 0.5
    assert sft["edit_dist_per_seed"] == pytest.approx([0.35, 0.4]) and sft["edit_dist"] == pytest.approx(0.375)
    assert sft["vs_base"]["mean"] == pytest.approx(-0.075)
    assert sft["vs_base"]["ci95"] == pytest.approx([-0.075, -0.075])  # the same change on every page: no spread
    gap = summary["perpo_vs_sft"]
    assert gap["mean"] == pytest.approx(-0.1) and gap["ci95"][1] < 0 and gap["ci95"][0] <= gap["mean"]


def test_later_seeds_rerun_only_the_picks(tmp_path, monkeypatch):
    calls = []
    picks = PICKS | {"dpo": {"lr": 3e-5, "beta": 0.5}}

    def search(level, folder, args, seed, grid=None):
        calls.append((folder.name, seed, grid))
        return {"best_lr": picks}

    monkeypatch.setattr(saturation, "run_search", search)
    args = argparse.Namespace(
        seeds=[0, 2], out=tmp_path, methods=["sft", "perpo"], sft_lrs=[1e-3, 3e-3], lrs=[1e-4], betas=[0.5, 2.0]
    )
    folders = saturation.run_level(tmp_path / "lvl", args)
    assert folders == {0: tmp_path / "search_lvl", 2: tmp_path / "search_lvl_seed2"}
    pick_grid = {"methods": ["sft", "perpo"], "sft_lrs": [3e-3], "lrs": [1e-4], "betas": [0.5]}
    assert calls == [("search_lvl", 0, None), ("search_lvl_seed2", 2, pick_grid)]  # the whole grid, then the picks

    calls.clear()  # two preference methods picked at other (lr, β): one search each, or the grid would cross them
    saturation.run_level(tmp_path / "lvl", argparse.Namespace(**{**vars(args), "methods": ["sft", "dpo", "perpo"]}))
    assert calls[1:] == [
        ("search_lvl_seed2", 2, {"methods": ["sft", "dpo"], "sft_lrs": [3e-3], "lrs": [3e-5], "betas": [0.5]}),
        ("search_lvl_seed2", 2, {"methods": ["perpo"], "sft_lrs": [3e-3], "lrs": [1e-4], "betas": [0.5]}),
    ]


def _level(name: str, pages: int | None, base: float, sft: float, perpo: float) -> dict:
    def d(mean: float) -> dict:
        return {"mean": mean, "ci95": [mean - 0.01, mean + 0.02]}

    return {
        "level": name,
        "seeds": [0, 1],
        "warmup_pages": pages,
        "val_pages": 200,
        "base": {"edit_dist": base},
        "sampling": {"best_of_20": base - 0.1, "first": base + 0.02},  # key-sorted, as read back from the JSON
        "methods": {
            "sft": {"lr": 3e-3, "beta": None, "edit_dist": sft, "vs_base": d(sft - base)},
            "perpo": {"lr": 1e-4, "beta": 0.5, "edit_dist": perpo, "vs_base": d(perpo - base)},
        },
        "perpo_vs_sft": d(perpo - sft),
    }


def test_table_and_figure(tmp_path):
    levels = [_level("weak", 32_000, 0.35, 0.27, 0.34), _level("strong", None, 0.10, 0.09, 0.07)]
    text = saturation.table(levels, ["sft", "perpo"])
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert "PerPO − SFT" in rows[0] and "SFT val (setting)" in rows[0] and "first / best of 20" in rows[0]
    assert rows[2].startswith("| weak | 32,000 | 0.350 | 0.370 / 0.250 | 0.270 (lr 0.003) | 0.340 (lr 0.0001, β 0.5)")
    assert rows[2].endswith("| -0.080 [-0.090, -0.060] | -0.010 [-0.020, +0.010] | +0.070 [+0.060, +0.090] |")
    assert rows[3].startswith("| strong | ? |") and rows[3].endswith("| -0.020 [-0.030, +0.000] |")
    path = saturation.figure(levels, ["sft", "perpo"], tmp_path / "sat.png")
    with Image.open(path) as image:
        assert image.size[0] > image.size[1] > 200


def test_main_refuses_folders_without_a_model_and_duplicate_names(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        saturation.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "out")])
    assert refused.value.code == 2 and "no model in" in capsys.readouterr().err
    for name in ("a/base", "b/base"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "config.json").write_text("{}")
    with pytest.raises(SystemExit):
        saturation.main([str(tmp_path / "a/base"), str(tmp_path / "b/base"), "--out", str(tmp_path / "out")])
    assert "distinct names" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        saturation.main([str(tmp_path / "a/base"), "--seeds", "0", "0", "--out", str(tmp_path / "out")])
    assert "repeats a seed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
