"""perpo.studies.seeds: paired bootstrap intervals over test documents, the results JSON and the marked doc block."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from perpo.studies import seeds as demo_seeds

ROOT = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------- demo folders

N_DOCS = 20
HITS = {"base": 8, "sft": 8, "dpo": 10, "perpo": 14}  # right on the first k documents of each seed


def _eval_folder(folder: Path, seed: int, hits: int, blank: float | None = None) -> None:
    """A `perpo eval` folder as `perpo demo` writes it, reduced to what demo_seeds reads."""
    (folder / "samples").mkdir(parents=True)
    samples = [
        {"doc_id": i, "ap50": float(i < hits), "iou": 0.5, "record": {"id": f"synth_test_{i}", "gt_box": [0, 0, 1, 1]}}
        for i in range(N_DOCS)
    ]
    (folder / "samples" / "perpo_synth_test.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    results = {"perpo_synth_test": {"alias": "perpo_synth_test", "ap50,none": hits / N_DOCS}}
    if blank is not None:
        results["perpo_synth_test_blankimg"] = {"alias": "perpo_synth_test_blankimg", "ap50,none": blank}
        (folder / "samples" / "perpo_synth_test_blankimg.jsonl").write_text("")
    (folder / "results.json").write_text(json.dumps({"results": results, "config": {}}))
    (folder / "eval_config.json").write_text(
        json.dumps({"EvalConfig": {"model": "base", "adapter": None, "seed": seed}})
    )


@pytest.fixture
def demos(tmp_path) -> list[Path]:
    folders = []
    for seed in (0, 1):
        demo = tmp_path / f"demo_seed{seed}"
        demo.mkdir()
        (demo / "demo_config.json").write_text(json.dumps({"DemoConfig": {"seed": seed, "quick": False}}))
        for method, hits in HITS.items():
            hits = hits + seed if method == "perpo" else hits  # PerPO: 14 on seed 0, 15 on seed 1
            _eval_folder(demo / "eval" / method, seed, hits, blank=0.05 if method in ("base", "perpo") else None)
        folders.append(demo)
    return folders


def test_the_results_json_from_demo_folders(demos, tmp_path):
    summary = demo_seeds.summary_json(demo_seeds.load(demos), replicates=500)
    assert set(summary) == {"methods", "seeds", "track"} and summary["seeds"] == [0, 1]
    assert summary["track"] == "grounding"
    methods = summary["methods"]
    assert list(methods) == ["base", "sft", "dpo", "perpo"]
    for method, entry in methods.items():
        assert {"ap50_mean", "ap50_sd", "gain_vs_base_mean", "gain_vs_base_ci95"} <= set(entry)
        assert ("gain_vs_dpo_ci95" in entry) == (method == "perpo")
        assert entry["n_docs"] == [N_DOCS, N_DOCS] and entry["bootstrap_replicates"] == 500
    assert methods["base"]["ap50_mean"] == pytest.approx(40.0) and methods["base"]["ap50_sd"] == 0.0
    assert methods["base"]["gain_vs_base_mean"] is None and methods["base"]["gain_vs_base_ci95"] is None
    assert methods["sft"]["gain_vs_base_mean"] == 0.0 and methods["sft"]["gain_vs_base_ci95"] == [0.0, 0.0]
    perpo = methods["perpo"]
    assert perpo["ap50_mean"] == pytest.approx(72.5) and perpo["ap50_per_seed"] == [70.0, 75.0]
    assert perpo["ap50_sd"] == pytest.approx(np.std([70.0, 75.0], ddof=1), abs=1e-4)
    assert perpo["gain_vs_base_mean"] == pytest.approx(32.5)  # (30 + 35) / 2
    assert perpo["gain_vs_dpo_mean"] == pytest.approx(22.5)  # (20 + 25) / 2
    lo, hi = perpo["gain_vs_dpo_ci95"]
    assert 0 < lo < 22.5 < hi  # PerPO never loses a document to DPO here: no replicate goes below 0
    assert perpo["ap50_blankimg_mean"] == pytest.approx(5.0) and "ap50_blankimg_mean" not in methods["dpo"]


def test_the_command_writes_the_json_and_renders_the_readme_table(demos, tmp_path, capsys):
    path = tmp_path / "results" / "miniature_seeds.json"
    demo_seeds.main([*map(str, demos), "--json", str(path), "--replicates", "300"])
    printed = capsys.readouterr().out
    summary = json.loads(path.read_text())
    assert summary["methods"]["perpo"]["bootstrap_replicates"] == 300
    assert "| perpo |" in printed and "gain over base (paired)" in printed  # the per-seed detail table

    demo_seeds.main(["--table-from", str(path)])
    table = capsys.readouterr().out
    assert table == demo_seeds.results_table(summary) + "\n"
    rows = {
        line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ")
        for line in table.splitlines()
        if line.startswith("| ")
    }
    assert rows["method"] == ["method", "AP@50", "gain vs base [95% CI]", "gain vs DPO [95% CI]", "AP@50 blank image"]
    assert rows["base"][1:] == ["40.0 ± 0.0", "–", "–", "5.0 ± 0.0"]
    assert rows["+ SFT"][2:] == ["+0.0 [+0.0, +0.0]", "–", "–"]
    lo, hi = summary["methods"]["perpo"]["gain_vs_dpo_ci95"]
    assert rows["+ PerPO"][1] == "72.5 ± 3.5" and rows["+ PerPO"][3] == f"+22.5 [{lo:+.1f}, {hi:+.1f}]"
    assert "300 replicates" in table and "seeds 0, 1" in table


def test_a_quick_demo_does_not_replace_the_recorded_json(demos, tmp_path, monkeypatch, capsys):
    for demo in demos:
        (demo / "demo_config.json").write_text(json.dumps({"DemoConfig": {"seed": demos.index(demo), "quick": True}}))
    monkeypatch.chdir(tmp_path)
    demo_seeds.main([*map(str, demos), "--replicates", "50"])
    assert not (tmp_path / demo_seeds.DEFAULT_JSON).exists() and "--quick demo" in capsys.readouterr().out
    demo_seeds.main([*map(str, demos), "--replicates", "50", "--json", "q.json"])
    assert (tmp_path / "q.json").is_file()


def test_the_readme_block_is_replaced_in_place(demos, tmp_path, capsys):
    path = tmp_path / "s.json"
    demo_seeds.main([*map(str, demos), "--json", str(path), "--replicates", "50"])
    readme = tmp_path / "README.md"
    before, after = "# Title\n\nIntro.\n\n", "\n\nAfter the table.\n"
    readme.write_text(f"{before}{demo_seeds.BEGIN}\nold table\n{demo_seeds.END}{after}")
    demo_seeds.main(["--table-from", str(path), "--readme", str(readme)])
    table = demo_seeds.results_table(json.loads(path.read_text()))
    expected = f"{before}{demo_seeds.BEGIN}\n{table}{demo_seeds.END}{after}"
    assert readme.read_text() == expected
    demo_seeds.main(["--table-from", str(path), "--readme", str(readme)])  # idempotent
    assert readme.read_text() == expected
    assert "updated the results table" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text",
    ["# no markers\n", f"{demo_seeds.BEGIN}\nonly the begin\n", f"{demo_seeds.END}\n{demo_seeds.BEGIN}\n"],
)
def test_the_readme_without_its_markers_is_an_error_naming_the_file(demos, tmp_path, text):
    path = tmp_path / "s.json"
    demo_seeds.main([*map(str, demos), "--json", str(path), "--replicates", "50"])
    readme = tmp_path / "NOTES.md"
    readme.write_text(text)
    with pytest.raises(SystemExit, match=r"NOTES\.md.*miniature-seeds:begin"):
        demo_seeds.main(["--table-from", str(path), "--readme", str(readme)])
    assert readme.read_text() == text  # untouched


def test_demo_folders_or_a_json_but_not_both(tmp_path):
    with pytest.raises(SystemExit):
        demo_seeds.main([])
    with pytest.raises(SystemExit):
        demo_seeds.main([str(tmp_path), "--table-from", str(tmp_path / "s.json")])


def _ocr_demo(root: Path, seed: int, errors: dict[str, float]) -> Path:
    """An OCR-track demo folder (`perpo demo --track ocr`): per method, N_DOCS pages of the given edit distance."""
    demo = root / f"demo_ocr_seed{seed}"
    demo.mkdir()
    (demo / "demo_config.json").write_text(json.dumps({"OCRDemoConfig": {"seed": seed, "track": "ocr"}}))
    for method, distance in errors.items():
        folder = demo / "eval" / method
        (folder / "samples").mkdir(parents=True)
        samples = [
            {"doc_id": i, "edit_dist": distance, "f1": 1 - distance, "record": {"id": f"p{i}"}} for i in range(8)
        ]
        (folder / "samples" / "perpo_fox_en_page.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
        page = {"alias": "perpo_fox_en_page", "edit_dist,none": distance, "f1,none": 1 - distance}
        (folder / "results.json").write_text(json.dumps({"results": {"perpo_fox_en_page": page}, "config": {}}))
        (folder / "eval_config.json").write_text(json.dumps({"EvalConfig": {"model": "base", "seed": seed}}))
    return demo


def test_the_ocr_track_reads_edit_distances_and_fills_its_own_readme_block(tmp_path, capsys):
    demos = [
        _ocr_demo(tmp_path, 0, {"base": 0.4, "dpo": 0.45, "perpo": 0.3}),
        _ocr_demo(tmp_path, 1, {"base": 0.4, "dpo": 0.5, "perpo": 0.32}),
    ]
    path = tmp_path / "ocr.json"
    demo_seeds.main([*map(str, demos), "--json", str(path), "--replicates", "50"])
    summary = json.loads(path.read_text())
    perpo = summary["methods"]["perpo"]
    assert summary["track"] == "ocr" and perpo["edit_dist_per_seed"] == [0.3, 0.32]
    assert perpo["gain_vs_base_mean"] == pytest.approx(-0.09) and perpo["gain_vs_dpo_ci95"] == [-0.165, -0.165]
    assert "f1_mean" in perpo and "ap50_mean" not in perpo
    assert "over seeds [0, 1]" in capsys.readouterr().out

    begin, end = demo_seeds.TRACKS["ocr"].markers
    readme = tmp_path / "README.md"
    readme.write_text(f"{demo_seeds.BEGIN}\ngrounding\n{demo_seeds.END}\n{begin}\nold\n{end}\n")
    demo_seeds.main(["--table-from", str(path), "--readme", str(readme)])
    text = readme.read_text()
    assert "grounding\n" in text and "old" not in text  # only the OCR block is replaced
    assert "| method | edit distance | change vs base [95% CI] | change vs DPO [95% CI] | F1 |" in text
    assert "| + PerPO | 0.310 ± 0.014 | -0.090 [-0.090, -0.090] | -0.165 [-0.165, -0.165] | 0.690 ± 0.014 |" in text
    assert "lower is better" in text  # every page moves by the same amount: the intervals collapse

    with pytest.raises(SystemExit, match="compares grounding demos, not ocr"):
        demo_seeds.load(demos, "online")
    mixed = [demos[0], tmp_path / "g"]
    (tmp_path / "g" / "eval").mkdir(parents=True)
    (tmp_path / "g" / "demo_config.json").write_text(json.dumps({"DemoConfig": {"seed": 5}}))
    with pytest.raises(SystemExit, match="mix tracks"):
        demo_seeds.load(mixed)


def _add_online_study(demo: Path, seed: int, hits: dict[str, int]) -> None:
    """What `perpo demo --study online` adds to a demo folder: two more eval folders and online_study.json (with the
    time of the offline sampling pass SFT..PerPO share)."""
    for method, k in hits.items():
        folder = demo / "eval" / method
        _eval_folder(folder, seed, k)
        results = json.loads((folder / "results.json").read_text())
        curve = {f"ap50_bo{j},none": min(1.0, k / N_DOCS + 0.05 * (j - 1) + 0.01 * seed) for j in (1, 2, 3)}
        results["results"]["perpo_synth_test_bon20"] = {"alias": "perpo_synth_test_bon20", **curve}
        (folder / "results.json").write_text(json.dumps(results))
    rows = {"base": {"ap50": 40.0}}
    trained = [m for m in HITS if m != "base"]
    rows |= {m: {"generated": 20_000, "steps": 147, "seconds": 50.0 + seed, "includes": "+ 50 s"} for m in trained}
    rows |= {
        "perpo_iter": {"generated": 20_000, "steps": 147, "seconds": 90.0, "includes": "sampling"},
        "grpo": {"generated": 19_880, "steps": 142, "seconds": 700.0 + 10 * seed, "includes": "sampling"},
    }
    study = {"seed": seed, "rounds": 2, "shared_sampling_seconds": 48.0 + 4 * seed, "rows": rows}
    (demo / "online_study.json").write_text(json.dumps(study))


def test_the_online_study_pairs_the_online_methods_with_perpo_and_shows_their_budget(demos, tmp_path, capsys):
    for seed, demo in enumerate(demos):
        _add_online_study(demo, seed, {"perpo_iter": 12, "grpo": 16})
    # the default demo's table does not read the online methods' folders
    plain = demo_seeds.summary_json(demo_seeds.load(demos), replicates=50)
    assert list(plain["methods"]) == ["base", "sft", "dpo", "perpo"] and "shared_sampling_seconds_mean" not in plain

    path = tmp_path / "online.json"
    demo_seeds.main(["--study", "online", *map(str, demos), "--json", str(path), "--replicates", "200"])
    assert "| grpo |" in capsys.readouterr().out  # the per-seed detail
    summary = json.loads(path.read_text())
    methods = summary["methods"]
    assert summary["track"] == "online" and {"perpo_iter", "grpo"} <= set(methods)
    assert summary["shared_sampling_seconds_mean"] == 50.0
    # perpo: 14 and 15 of 20 right; iterative 12 and grpo 16 on both seeds
    assert methods["perpo_iter"]["gain_vs_perpo_mean"] == pytest.approx(-12.5)
    assert methods["grpo"]["gain_vs_perpo_mean"] == pytest.approx(7.5)
    assert "gain_vs_perpo_mean" not in methods["perpo"] and "gain_vs_dpo_mean" not in methods["perpo"]
    assert methods["grpo"]["train_seconds_mean"] == 705.0 and methods["grpo"]["generated_mean"] == 19_880
    assert methods["base"].get("steps_mean") is None  # the base is not trained: no budget
    # the best-of-k curve, mean ± sd over seeds, and its figure beside the JSON
    assert methods["grpo"]["best_of_k_mean"] == pytest.approx([80.5, 85.5, 90.5])
    assert methods["grpo"]["best_of_k_sd"] == pytest.approx([0.7071] * 3, abs=1e-4)
    assert "best_of_k_mean" not in methods["perpo"]  # evaluated greedy only in this fixture
    figure = demo_seeds.best_of_k_figure(summary)
    assert [line.get_label() for line in figure.axes[0].get_lines()] == ["PerPO (iterative)", "GRPO"]
    assert list(figure.axes[0].get_lines()[1].get_ydata()) == pytest.approx([80.5, 85.5, 90.5])
    assert path.with_suffix(".png").stat().st_size > 10_000

    demo_seeds.main(["--table-from", str(path)])
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    assert "gain vs PerPO [95% CI]" in header and header.endswith("| optimizer steps | train wall-clock (s) |")
    grpo = next(line for line in table.splitlines() if line.startswith("| + GRPO"))
    assert grpo.endswith("| 19,880 ± 0 | 142 ± 0 | 705 ± 7 |") and "+7.5 [" in grpo
    assert "offline sampling pass of 50 s" in table

    begin, end = demo_seeds.TRACKS["online"].markers
    readme = tmp_path / "README.md"
    readme.write_text(f"{demo_seeds.BEGIN}\nmain\n{demo_seeds.END}\n{begin}\nold\n{end}\n")
    demo_seeds.main(["--table-from", str(path), "--readme", str(readme)])
    assert "main\n" in readme.read_text() and "| + PerPO (iterative) |" in readme.read_text()


def test_the_online_study_needs_its_json_in_every_folder(demos):
    _add_online_study(demos[0], 0, {"perpo_iter": 12, "grpo": 16})
    with pytest.raises(SystemExit, match=r"demo_seed1/online_study\.json is missing.*--study online --out"):
        demo_seeds.load(demos, "online")
