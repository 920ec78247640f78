"""The real `lmms-eval` CLI, as a subprocess and offline, on the tiny LLaVA with local fixtures.

Four CLI runs (each costs ~25 s of imports on the project's CPU, so every run carries many tasks):

1. `lmms-eval --model perpo_llava` on grounding in both frames, best-of-N, no-image, a RefCOCO group prepared by
   `perpo data refcoco`, and English/Chinese page OCR;
2. `lmms-eval --model llava_hf` (the stock wrapper: device_map=cpu, batch 1, no image-less documents) on the image
   tasks, whose greedy answers must equal perpo_llava's;
3. `lmms-eval --model qwen2_5_vl` (lmms-eval's own Qwen2.5-VL wrapper, through qwen-vl-utils) on the `_qwen` tasks,
   with a tiny Qwen2.5-VL taught the fixture's answers: every box is read in the frame it was written in;
4. `python -S -m lmms_eval --tasks list` against a non-editable install of a freshly built wheel: the plain CLI
   finds the perpo tasks through the entry point alone, with no --include_path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from qwen_helpers import QWEN_ENV, qwen_task_docs, teach_answers

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LMMS_EVAL = [sys.executable, "-m", "lmms_eval"]
GROUNDING = ("ap50", "iou", "parse_fail", "acc50", "center_acc")
OCR = ("edit_dist", "f1", "precision", "recall", "bleu", "meteor", "precision_textbook", "meteor_textbook")
PERPO_TASKS = [
    "perpo_synth_val", "perpo_synth_val_orig", "perpo_synth_val_bon4", "perpo_synth_val_noimg",
    "perpo_refcoco_plus", "perpo_refcoco_val", "perpo_refcoco_val_orig", "perpo_fox_en_page",
    "perpo_fox_cn_page_noimg", "perpo_synth_pope", "perpo_synth_pope_random_blankimg", "perpo_synth_describe",
]  # fmt: skip
POPE = ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1", "pope_yes_ratio")
DESCRIBE = ("describe_precision", "describe_recall", "describe_f1", "chair_i", "chair_s")
LLAVA_HF_TASKS = ["perpo_synth_val", "perpo_synth_val_bon4", "perpo_synth_val_blankimg", "perpo_refcoco_val_orig",
                  "perpo_fox_en_page"]  # fmt: skip
LIMIT = 3


def _fixtures():
    spec = importlib.util.spec_from_file_location("lmms_fixtures", ROOT / "tests" / "fixtures" / "lmms_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model(tiny_llava) -> Path:
    """The warmed-up asset when it is there (it answers boxes), else the random test-size model."""
    asset = ROOT / "perpo" / "assets" / "tiny_llava_base"
    return asset if (asset / "model.safetensors").is_file() else tiny_llava


@pytest.fixture(scope="module")
def env(tmp_path_factory, synth_data) -> dict[str, str]:
    from perpo.cli import main

    fixtures = _fixtures()
    root = tmp_path_factory.mktemp("lmms_cli_data")
    coco = fixtures.write_images(root / "coco")
    fixtures.write_refer_layout(root / "refer")
    assert main(["data", "refcoco", "--refer_root", str(root / "refer"), "--coco_images", str(coco),
                 "--out", str(root / "refcoco")]) == 0  # fmt: skip
    fixtures.write_fox(root / "fox")
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PERPO_SYNTH_DIR": str(synth_data),
        "PERPO_REFCOCO_DIR": str(root / "refcoco"),
        "PERPO_FOX_DIR": str(root / "fox"),
        "LMMS_EVAL_DATASETS_CACHE": str(root / "hf_datasets_cache"),
    }


def run_lmms_eval(args: list[str], env: dict, out: Path) -> tuple[dict, dict[str, list[dict]]]:
    """Run the CLI; lmms-eval exits 0 even when evaluation fails, so success = exactly one results file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([*LMMS_EVAL, *args, "--output_path", str(out), "--log_samples"], env=env,
                          cwd=out.parent, capture_output=True, text=True, timeout=900)  # fmt: skip
    found = list(out.glob("*/*_results.json"))
    assert proc.returncode == 0 and len(found) == 1, f"lmms-eval failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    results = json.loads(found[0].read_text())
    prefix = found[0].name[: -len("results.json")] + "samples_"
    samples = {
        p.name[len(prefix) : -len(".jsonl")]: [json.loads(line) for line in p.read_text().splitlines()]
        for p in found[0].parent.glob(f"{prefix}*.jsonl")
    }
    return results, samples


def perpo_run(model: Path, env: dict, out: Path):
    args = ["--model", "perpo_llava", "--model_args", f"pretrained={model},device=cpu,seed=0",
            "--tasks", ",".join(PERPO_TASKS), "--limit", str(LIMIT), "--batch_size", "8",
            "--gen_kwargs", "max_new_tokens=12", "--process_docs_parallel", "2"]  # fmt: skip
    return run_lmms_eval(args, env, out)


def llava_hf_run(model: Path, env: dict, out: Path):
    args = ["--model", "llava_hf", "--model_args", f"pretrained={model},device=cpu,device_map=cpu,dtype=float32",
            "--tasks", ",".join(LLAVA_HF_TASKS), "--limit", str(LIMIT), "--batch_size", "1",
            "--gen_kwargs", "max_new_tokens=12", "--process_docs_parallel", "2"]  # fmt: skip
    return run_lmms_eval(args, env, out)


def answer(row: dict) -> str:
    """The scored answer of a samples row (lmms-eval logs one answer as a string, several as a list)."""
    resps = row["filtered_resps"]
    return (resps[0] if isinstance(resps, list) else resps).strip()


def check_grounding(values: dict, rows: list[dict], frame: str) -> None:
    for key in GROUNDING:
        assert 0.0 <= values[f"{key},none"] <= 1.0, key
    assert values["frame,none"] == frame and values["record,none"] == len(rows) == LIMIT
    assert values["ap50,none"] <= values["acc40,none"] and values["ap50,none"] == values["acc50,none"]
    for row in rows:
        record = row["record"]
        assert record["frame"] == frame and len(record["gt_box"]) == 4 and record["id"] and record["image"]
        assert record["response"] == answer(row) and "bbox_xywh" in record
        assert (record["pred_box"] is None) == (row["parse_fail"] == 1.0)


def check_best_of_n(values: dict, rows: list[dict], n: int) -> None:
    assert values["n_samples,none"] == n and values["frame,none"] == "padded"
    for metric in ("ap50", "iou"):
        curve = [values[f"{metric}_bo{k},none"] for k in range(1, n + 1)]
        assert all(a <= b + 1e-9 for a, b in zip(curve, curve[1:], strict=False)), curve
        assert curve[0] == pytest.approx(values[f"{metric}_mean,none"])
        assert curve[-1] == pytest.approx(values[f"{metric}_best,none"])
        assert values[f"{metric}_first,none"] <= values[f"{metric}_best,none"]
    for row in rows:
        assert len(row["filtered_resps"]) == n and len(row["record"]["responses"]) == n


def check_probes(results: dict, samples: dict) -> None:
    """The POPE group (three ways of choosing absent objects), a blank-image POPE task and the description task."""
    from perpo.objectives.metrics.pope import read_yes_no

    values = results["results"]
    assert set(results["group_subtasks"]["perpo_synth_pope"]) == {
        "perpo_synth_pope_random", "perpo_synth_pope_popular", "perpo_synth_pope_adversarial"
    }  # fmt: skip
    for task in ("perpo_synth_pope_random", "perpo_synth_pope_adversarial", "perpo_synth_pope_random_blankimg"):
        assert all(0.0 <= values[task][f"{key},none"] <= 1.0 for key in POPE), task
        assert values[task]["record,none"] == LIMIT
        for row in samples[task]:
            record = row["record"]
            assert record["read_as"] == read_yes_no(record["response"]) and record["answer"] in ("yes", "no")
    assert all(0.0 <= values["perpo_synth_describe"][f"{key},none"] <= 1.0 for key in DESCRIBE)
    assert [len(row["record"]["counts"]) for row in samples["perpo_synth_describe"]] == [4] * LIMIT


def check_perpo_llava_run(results: dict, samples: dict) -> None:
    values = results["results"]
    check_grounding(values["perpo_synth_val"], samples["perpo_synth_val"], "padded")
    check_grounding(values["perpo_synth_val_orig"], samples["perpo_synth_val_orig"], "original")
    check_grounding(values["perpo_synth_val_noimg"], samples["perpo_synth_val_noimg"], "padded")
    check_grounding(values["perpo_refcoco_val_orig"], samples["perpo_refcoco_val_orig"], "original")
    check_best_of_n(values["perpo_synth_val_bon4"], samples["perpo_synth_val_bon4"], 4)
    # the RefCOCO+ group, prepared by `perpo data refcoco`: three splits pooled by size
    assert set(results["group_subtasks"]["perpo_refcoco_plus"]) == {
        "perpo_refcoco_plus_val", "perpo_refcoco_plus_testA", "perpo_refcoco_plus_testB"
    }  # fmt: skip
    assert 0.0 <= results["groups"]["perpo_refcoco_plus"]["ap50,none"] <= 1.0
    assert [r["record"]["dataset"] for r in samples["perpo_refcoco_plus_testA"]] == ["refcoco+"]
    for task in ("perpo_fox_en_page", "perpo_fox_cn_page_noimg"):
        for key in OCR:
            assert 0.0 <= values[task][f"{key},none"] <= 1.0, (task, key)
        assert [r["record"]["language"] for r in samples[task]] == [task.split("_")[2]] * 2
    check_probes(results, samples)
    # the no-image documents really had no image; the image tasks did
    assert all("input_media" in row for row in samples["perpo_synth_val"])
    assert results["throughput"]["avg_docs_per_s"] > 0
    assert results["configs"]["perpo_synth_val_bon4"]["repeats"] == 4


def check_llava_hf_run(results: dict, samples: dict) -> None:
    values = results["results"]
    check_grounding(values["perpo_synth_val"], samples["perpo_synth_val"], "padded")
    check_grounding(values["perpo_synth_val_blankimg"], samples["perpo_synth_val_blankimg"], "padded")
    check_grounding(values["perpo_refcoco_val_orig"], samples["perpo_refcoco_val_orig"], "original")
    check_best_of_n(values["perpo_synth_val_bon4"], samples["perpo_synth_val_bon4"], 4)
    assert all(0.0 <= values["perpo_fox_en_page"][f"{key},none"] <= 1.0 for key in OCR)


def test_lmms_eval_cli_with_perpo_llava_and_llava_hf(model, env, tmp_path):
    """Both wrappers on the same tiny model; then the same checkpoint, prompt (the checkpoint's chat template),
    image and greedy decoding must give the same answers: perpo_llava's batching does not change them.

    The image is the same where the task hands over a square (the synthetic scenes, the padded frame). On a
    non-square image llava_hf hands the photo to llava-1.5-7b-hf's centre-cropping processor, while perpo_llava
    shows LLaVA-1.5 its padded square in every frame: its `_orig` answers are its padded-frame answers."""
    ours = perpo_run(model, env, tmp_path / "perpo_llava" / "out")
    check_perpo_llava_run(*ours)
    stock = llava_hf_run(model, env, tmp_path / "llava_hf" / "out")
    check_llava_hf_run(*stock)
    for task in ("perpo_synth_val",):
        assert [answer(row) for row in ours[1][task]] == [answer(row) for row in stock[1][task]], task
    for task in ("perpo_synth_val", "perpo_refcoco_val_orig", "perpo_fox_en_page"):
        assert [r["input"] for r in ours[1][task]] == [r["input"] for r in stock[1][task]]
    padded, original = ours[1]["perpo_refcoco_val"], ours[1]["perpo_refcoco_val_orig"]
    assert [answer(row) for row in padded] == [answer(row) for row in original]


def test_lmms_eval_own_qwen2_5_vl_reads_qwen_pixel_boxes_in_their_frame(tiny_model_of, env, tmp_path):
    """lmms-eval's `qwen2_5_vl` (bf16, qwen-vl-utils resizing, its own chat messages) on a tiny Qwen2.5-VL that
    answers the fixture exactly: AP@50 is 1 on landscape, portrait and square images, and the same answers read
    as pixels of the original image instead of the resized one would miss."""
    from perpo.objectives.boxes import box_iou, parse_box

    splits = [("refcoco", "val"), ("refcocog", "test")]
    docs = qwen_task_docs(Path(env["PERPO_REFCOCO_DIR"]), splits)
    model = teach_answers(tiny_model_of("qwen2_5_vl"), docs, tmp_path / "taught_qwen")
    bounds = f"min_pixels={QWEN_ENV['PERPO_QWEN_MIN_PIXELS']},max_pixels={QWEN_ENV['PERPO_QWEN_MAX_PIXELS']}"
    tasks = [f"perpo_{dataset}_{split}_qwen" for dataset, split in splits]
    args = ["--model", "qwen2_5_vl", "--model_args", f"pretrained={model},device=cpu,device_map=cpu,{bounds}",
            "--tasks", ",".join(tasks), "--limit", str(LIMIT), "--batch_size", "1",
            "--gen_kwargs", "max_new_tokens=40"]  # fmt: skip
    results, samples = run_lmms_eval(args, {**env, **QWEN_ENV}, tmp_path / "qwen2_5_vl" / "out")
    rows = [row for task in tasks for row in samples[task]]
    assert len(rows) == len(docs) == 5
    assert {(r["record"]["width"], r["record"]["height"]) for r in rows} == {(40, 24), (24, 40), (32, 32)}
    for task in tasks:
        values = results["results"][task]
        assert values["ap50,none"] == 1.0 and values["parse_fail,none"] == 0.0 and values["frame,none"] == "original"
    wrong_frame = [
        box_iou(parse_box(r["record"]["response"], fmt="pixel", size=(r["record"]["width"], r["record"]["height"])),
                r["record"]["gt_box"])
        for r in rows
    ]  # fmt: skip
    assert all(r["record"]["pixels"] != [r["record"]["width"], r["record"]["height"]] for r in rows)
    assert sum(iou >= 0.5 for iou in wrong_frame) < len(rows)


def test_plain_lmms_eval_finds_the_tasks_from_a_non_editable_install(tmp_path):
    """Build a wheel, install it with --target, and run `python -S` (so the editable install's .pth finder is
    not loaded) with PYTHONPATH=<target>:<site-packages>, from a folder outside the checkout."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "out", "runs")
    for name in ("perpo", "lmms_tasks", "reports"):  # the packages pyproject.toml installs
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
    wheels, target = tmp_path / "wheels", tmp_path / "target"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-build-isolation", "--no-deps", str(source), "-w", str(wheels)],
                   check=True, cwd=tmp_path, capture_output=True, timeout=600)  # fmt: skip
    (wheel,) = wheels.glob("perpo-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                   check=True, cwd=tmp_path, capture_output=True, timeout=600)  # fmt: skip
    installed = target / "lmms_tasks" / "tasks" / "perpo_refcoco"
    assert (installed / "_default_template_yaml").is_file() and (installed / "utils.py").is_file()
    assert (target / "lmms_tasks" / "tasks" / "_placeholder.jsonl").is_file()
    site_packages = sysconfig.get_paths()["purelib"]
    assert not (Path(site_packages) / "lmms_tasks").exists()  # the editable install is only a .pth finder
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{site_packages}", "HF_HUB_OFFLINE": "1"}
    where = subprocess.run([sys.executable, "-S", "-c", "import lmms_tasks; print(lmms_tasks.TASKS_DIR)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, check=True)  # fmt: skip
    assert where.stdout.strip() == str(target / "lmms_tasks" / "tasks")
    listed = subprocess.run([sys.executable, "-S", "-m", "lmms_eval", "--tasks", "list"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    output = listed.stdout + listed.stderr
    for name in ("perpo_refcoco", "perpo_refcoco_all", "perpo_synth_val_bon4", "perpo_fox_en_page",
                 "perpo_refcocog_test_noimg", "refcoco_bbox_rec_val"):  # fmt: skip
        assert f" - {name}\n" in output, f"{name} not listed:\n{output[-3000:]}"


def test_perpo_eval_collects_results_and_samples(model, env, tmp_path, monkeypatch, capsys):
    """`perpo eval CONFIG` end to end: lmms-eval in a subprocess, outputs gathered into one folder."""
    from perpo.cli import main

    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "OMP_NUM_THREADS"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("PERPO_SYNTH_DIR", raising=False)  # the config names the folder
    config = tmp_path / "synth_eval.yaml"
    lines = [
        f"model: {model}",
        "tasks: [perpo_synth_test_bon4, perpo_synth_test_noimg]",
        f"synth_dir: {env['PERPO_SYNTH_DIR']}",
        f"output_dir: {tmp_path / 'eval'}",
        "device: cpu",
        "batch_size: 8",
        "limit: 2",
        "max_new_tokens: 8",
        "seed: 5",
    ]
    config.write_text("\n".join(lines) + "\n")
    assert main(["eval", str(config)]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "eval"
    assert f"results: {out / 'results.json'}" in printed and "perpo_synth_test_bon4: ap50_first" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["results"]["perpo_synth_test_bon4"]["n_samples,none"] == 4
    assert results["config"]["model_args"].endswith("seed=5")
    rows = [json.loads(line) for line in (out / "samples" / "perpo_synth_test_noimg.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["record"]["frame"] == "padded" for row in rows)
    resolved = json.loads((out / "eval_config.json").read_text())
    assert resolved["EvalConfig"]["tasks"] == ["perpo_synth_test_bon4", "perpo_synth_test_noimg"]
    assert "git_sha" in resolved["meta"] and (out / "lmms_eval.log").stat().st_size > 0
    command = json.loads((out / "command.json").read_text())
    assert command["data_environment"] == {"PERPO_SYNTH_DIR": str(Path(env["PERPO_SYNTH_DIR"]).resolve())}

    # Data-parallel: two lmms-eval processes under accelerate launch, each scoring a share of the documents
    # (sampling included: a sample's random stream is keyed by its document); the same scores and answers.
    split = tmp_path / "eval_2"
    assert main(["eval", str(config), "--processes", "2", "--output_dir", str(split)]) == 0
    launched = json.loads((split / "command.json").read_text())["command"]
    assert launched[1:5] == ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes"]
    assert "Running on rank 1 (local rank 1)" in (split / "lmms_eval.log").read_text()
    one, two = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("eval", "eval_2"))
    assert two["results"] == one["results"]
    for task in one["results"]:
        rows = [
            {
                r["doc_id"]: r["filtered_resps"]
                for r in map(json.loads, (tmp_path / n / "samples" / f"{task}.jsonl").open())
            }
            for n in ("eval", "eval_2")
        ]
        assert rows[0] == rows[1] and len(rows[0]) == 2


def test_perpo_eval_on_a_refer_root_is_one_line_and_leaves_nothing(model, env, tmp_path, monkeypatch, capsys):
    """PERPO_REFCOCO_DIR set to the refer root: lmms-eval (a subprocess) ends at the task's data in one line, exit 2,
    where it used to retry five times with tracebacks and exit 0; perpo eval repeats the line as its error."""
    from perpo.cli import main

    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "OMP_NUM_THREADS"):
        monkeypatch.setenv(key, env[key])
    refer = _fixtures().write_refer_layout(tmp_path / "refer")
    config = tmp_path / "refcoco_eval.yaml"
    lines = [f"model: {model}", "tasks: [perpo_refcoco_val]", f"refcoco_dir: {refer}", "device: cpu", "limit: 1",
             f"output_dir: {tmp_path / 'eval'}"]  # fmt: skip
    config.write_text("\n".join(lines) + "\n")
    assert main(["eval", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Retrying" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"perpo eval: error: {refer / 'refcoco_val.jsonl'} not found"), err[-3000:]
    assert f"{refer} is a refer root" in last
    assert not (tmp_path / "eval").exists() and (refer / "refcoco" / "refs(unc).p").is_file()
