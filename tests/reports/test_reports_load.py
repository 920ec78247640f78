"""reports.load: result folders → tidy table, metadata from file contents, problems reported."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from report_helpers import AFTER, BASE, RAW, trained_copy

from reports.load import TIDY_COLUMNS, RunSpec, load_results
from reports.result_files import discover, parse_model_args


def _value(results, run, task, metric):
    return results.value(run, task, metric)


def test_perpo_eval_folders_give_tidy_rows_and_metadata():
    results = load_results([BASE, AFTER])
    base, after = results.runs
    assert list(results.frame.columns) == TIDY_COLUMNS
    assert (base.label, after.label) == ("base200", "base200 + PerPO")
    assert base.meta == {"model": "/tmp/rep/base200", "adapter": None, "seed": 0, "method": "base"}
    # method and training settings from the adapter's train_config.json / adapter_config.json, the margin from the
    # build-data stats.json beside the training data
    for key, value in {"method": "perpo", "loss": "perpo", "n": 8, "beta": 0.1, "gamma": 0.5, "lora_r": 8,
                       "lora_alpha": 16, "margin": 0.5, "seed": 0}.items():  # fmt: skip
        assert after.meta[key] == value, key
    # values straight from results.json: 2 of 24 hits -> 4 of 24
    assert _value(results, base.label, "perpo_synth_test", "ap50") == pytest.approx(2 / 24)
    assert _value(results, after.label, "perpo_synth_test", "ap50") == pytest.approx(4 / 24)
    rows = results.frame.set_index(["run", "task", "metric"])
    row = rows.loc[(after.label, "perpo_synth_test_bon20", "ap50_bo20")]
    assert (row.num_samples, row.n_docs, row.frame, row.image) == (20, 24, "padded", "image")
    assert (row.dataset, row.split, row.n, row.gamma, row.margin) == ("synth", "test", 8, 0.5, 0.5)
    assert rows.loc[(base.label, "perpo_synth_test_orig", "ap50")].frame == "original"
    assert rows.loc[(base.label, "perpo_synth_test_noimg", "ap50")].image == "none"
    fox = rows.loc[(base.label, "perpo_fox_en_page", "edit_dist")]
    assert (fox.dataset, fox.split, fox.better, fox.n_docs) == ("fox", "en_page", "lower", 2)
    assert rows.loc[(base.label, "perpo_synth_test", "ap50")].stderr >= 0
    # labels and counts are not metrics
    assert not results.frame.metric.isin(["frame", "record", "alias"]).any()
    assert results.problems == []


def test_raw_lmms_eval_folder_reads_model_args_and_reports_missing_samples():
    results = load_results([RAW])
    (run,) = results.runs
    assert run.results_file.name.endswith("_results.json") and run.results_file.parent.parent == RAW
    assert run.meta["model"] == "/tmp/rep/base200"
    assert run.meta["adapter"] == "tests/fixtures/reports/adapters/synth_perpo"
    assert (run.meta["method"], run.meta["n"], run.meta["seed"]) == ("perpo", 8, 0)
    assert set(run.samples_files) == {"perpo_synth_test", "perpo_fox_en_page"}
    missing = {p.task for p in results.problems if p.kind == "missing_file"}
    assert missing == {"perpo_synth_test_bon20", "perpo_synth_test_noimg", "perpo_synth_test_orig"}
    # the same run as the perpo eval folder of the after model
    assert results.value(run.label, "perpo_synth_test", "ap50") == pytest.approx(4 / 24)
    # a results file, or the <model>/ folder, give the same run
    assert [r.results_file for r in load_results([run.results_file]).runs] == [run.results_file]
    assert [r.results_file for r in load_results([run.results_file.parent]).runs] == [run.results_file]


def test_metadata_never_comes_from_folder_names(tmp_path):
    misleading = tmp_path / "llava_perpo_n20_gamma0.9_margin0.8_seed3"
    shutil.copytree(BASE, misleading)
    (run,) = load_results([misleading]).runs
    assert run.meta == {"model": "/tmp/rep/base200", "adapter": None, "seed": 0, "method": "base"}


def test_unknown_and_non_numeric_metrics_are_reported_not_dropped(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(BASE, run)
    results = json.loads((run / "results.json").read_text())
    results["results"]["perpo_synth_test"]["mystery_score,none"] = 0.25
    results["results"]["llava_in_the_wild"] = {"alias": "llava_in_the_wild", "gpt_eval_llava_all,none": None}
    results["results"]["perpo_synth_test_orig"]["iou,none"] = -math.inf
    (run / "results.json").write_text(json.dumps(results))
    loaded = load_results([run])
    kinds = {(p.kind, p.task, p.metric) for p in loaded.problems}
    assert ("unknown_metric", "perpo_synth_test", "mystery_score") in kinds
    assert ("non_numeric", "llava_in_the_wild", "gpt_eval_llava_all") in kinds
    assert ("non_finite", "perpo_synth_test_orig", "iou") in kinds
    assert loaded.value(loaded.runs[0].label, "perpo_synth_test_orig", "iou") is None
    assert ("missing_file", "llava_in_the_wild", "") in kinds
    frame = loaded.frame
    assert frame[frame.metric == "mystery_score"].value.tolist() == [0.25]
    assert math.isnan(frame[frame.metric == "gpt_eval_llava_all"].value.iloc[0])


def test_missing_adapter_folder_is_a_problem_and_an_unknown_method(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(AFTER, run)
    config = json.loads((run / "eval_config.json").read_text())
    config["EvalConfig"]["adapter"] = str(tmp_path / "moved_adapter")
    (run / "eval_config.json").write_text(json.dumps(config))
    loaded = load_results([run])
    assert loaded.runs[0].meta["method"] == "adapter"
    assert any(p.kind == "metadata" and "moved_adapter" in p.detail for p in loaded.problems)
    # a report config can say what the files cannot
    fixed = load_results([RunSpec(str(run), label="mine", method="perpo", meta={"n": 20})])
    assert (fixed.runs[0].label, fixed.runs[0].meta["method"], fixed.runs[0].meta["n"]) == ("mine", "perpo", 20)


def test_the_training_record_perpo_eval_keeps_survives_a_moved_adapter(tmp_path):
    """`perpo eval` copies the adapter's train_config.json and the lists' stats.json into `training/`."""
    from perpo.evaluation import keep_training_record

    run = trained_copy(tmp_path, "swept", loss="dpo", n=8, gamma=0.0, margin=0.6)
    adapter = Path(json.loads((run / "eval_config.json").read_text())["EvalConfig"]["adapter"])
    keep_training_record(adapter, run / "training")
    assert sorted(p.name for p in (run / "training").iterdir()) == [
        "adapter_config.json", "stats.json", "train_config.json"
    ]  # fmt: skip
    shutil.rmtree(adapter)
    shutil.rmtree(tmp_path / "swept_data")
    meta = load_results([run]).runs[0].meta
    assert (meta["method"], meta["n"], meta["gamma"], meta["margin"]) == ("dpo", 8, 0.0, 0.6)


def test_run_labels_are_made_unique_by_what_differs(tmp_path):
    a, b = trained_copy(tmp_path, "a", n=4), trained_copy(tmp_path, "b", n=12)
    assert [r.label for r in load_results([a, b]).runs] == ["base200 + PerPO (n=4)", "base200 + PerPO (n=12)"]
    with pytest.raises(ValueError, match="labels must be unique"):
        load_results([RunSpec(str(a), label="x"), RunSpec(str(b), label="x")])


def test_mmvet_capabilities_are_recomputed_from_samples(tmp_path):
    """Two mmvet samples, capabilities rec,ocr (score 1.0) and rec (0.5): rec = 75, ocr = 100 (x 100)."""
    run = tmp_path / "mmvet"
    (run / "samples").mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({
        "results": {"mmvet": {"alias": "mmvet", "gpt_eval_score,none": 75.0, "gpt_eval_score_stderr,none": "N/A"}},
        "configs": {"mmvet": {"task": "mmvet", "dataset_path": "lmms-lab/MMVet", "test_split": "test"}},
        "higher_is_better": {"mmvet": {"gpt_eval_score": True}},
        "config": {"model": "llava_hf", "model_args": "pretrained=llava-hf/llava-1.5-7b-hf"},
    }))  # fmt: skip
    samples = [{"doc_id": 0, "gpt_eval_score": {"capabilities": "rec,ocr", "score": 1.0}},
               {"doc_id": 1, "gpt_eval_score": {"capabilities": "rec", "score": 0.5}}]  # fmt: skip
    (run / "samples" / "mmvet.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    loaded = load_results([run])
    label = loaded.runs[0].label
    assert label == "llava-1.5-7b-hf" and loaded.runs[0].meta["model"] == "llava-hf/llava-1.5-7b-hf"
    assert loaded.value(label, "mmvet", "mmvet_rec") == pytest.approx(75.0)
    assert loaded.value(label, "mmvet", "mmvet_ocr") == pytest.approx(100.0)
    assert loaded.value(label, "mmvet", "mmvet_math") is None
    assert loaded.value(label, "mmvet", "gpt_eval_score") == 75.0


def test_a_folder_without_results_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no lmms-eval results"):
        discover(tmp_path)


def test_model_args_parsing():
    assert parse_model_args("pretrained=a/b,adapter=c,seed=3") == {"pretrained": "a/b", "adapter": "c", "seed": "3"}
    assert parse_model_args(None) == {}
