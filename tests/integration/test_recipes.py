"""The documented real-model recipes, run as printed: README.md's LLaVA-1.5 + RefCOCO block and docs/recipes.md's
Qwen2.5-VL + RefCOCO and LLaVA-NeXT + Fox blocks, command by command, in an empty folder.

Only what a CPU test must change is substituted, each rule listed in `SUBSTITUTIONS`: the process count, the
device and dtype. The checkpoint folder the recipe names (`checkpoints/...`) holds a stand-in of that family with
the public checkpoint's processor (`perpo.embedded.tiny.PUBLIC_IMAGE_PROCESSORS`); `$DATA` is a fixture in the
real layouts with non-square images (`recipe_data.py`). The training line goes through the launcher it prints
(`deepspeed`, which starts on the CPU here). Every file a step reads that is not a packaged config or `$DATA` must
have been written by an earlier step, since the folder starts empty.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import recipe_data

from perpo.cli import main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent

# (pattern, replacement) applied to each command line, in order: what a two-core CPU cannot do as printed. A
# `deepspeed` line also gets a free --master_port, since tests run side by side.
SUBSTITUTIONS = [
    (r"--processes \d+", "--processes 1"),
    (r"--num_gpus \d+", "--num_gpus 1"),
    (r"^(perpo (?:sample|eval) .*)$", r"\1 --device cpu --dtype float32"),
    (r"^(deepspeed .* perpo\.cli train .*)$", r"\1 --bf16 false --dtype float32 --use_cpu true"),
]
CONFIG_FOLDERS = ("perpo/configs", "eval_configs", "reports/configs")


def recipe_commands(path: Path, heading: str) -> list[str]:
    """The commands of the first bash block after `heading` in `path`: continuation lines joined, comments and
    blank lines dropped."""
    text = path.read_text(encoding="utf-8")
    start = text.index(heading)
    block = text[text.index("```bash\n", start) + 8 : text.index("\n```", text.index("```bash\n", start))]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            commands.append(re.sub(r"\s+", " ", line))
    return commands


def substituted(command: str) -> str:
    for pattern, replacement in SUBSTITUTIONS:
        command = re.sub(pattern, replacement, command)
    return command


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_recipe(commands: list[str], work: Path, data: Path, extra: tuple = ()) -> list[str]:
    """Run each command in `work` as a shell would (with `DATA` set), after `SUBSTITUTIONS` and then `extra`
    (pattern, replacement) pairs; returns the lines run."""
    env = os.environ | {"DATA": str(data), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    ran = []
    for command in commands:
        began = time.perf_counter()
        line = substituted(command)
        for pattern, replacement in extra:
            line = re.sub(pattern, replacement, line)
        if line.startswith("deepspeed "):  # its launcher's default port 29500 may be taken by a test beside this one
            line = line.replace("deepspeed ", f"deepspeed --master_port {free_port()} ", 1)
        words = shlex.split(line.replace("$DATA", str(data)))
        if words[0] == "perpo":  # in this process: the same argv, without another interpreter's start-up
            cwd = os.getcwd()
            os.chdir(work)
            try:
                assert main(words[1:]) == 0, line
            finally:
                os.chdir(cwd)
        else:
            result = subprocess.run(words, cwd=work, env=env, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        ran.append(line)
        print(f"RECIPE-STEP {time.perf_counter() - began:6.1f} s  {line}")
    return ran


def workspace(tmp_path: Path, checkpoints: dict[str, Path]) -> Path:
    """An empty folder with the packaged configs (as in a clone) and the stand-in checkpoints."""
    work = tmp_path / "work"
    for folder in CONFIG_FOLDERS:
        (work / folder).parent.mkdir(parents=True, exist_ok=True)
        (work / folder).symlink_to(ROOT / folder, target_is_directory=True)
    for name, source in checkpoints.items():
        (work / "checkpoints").mkdir(exist_ok=True)
        shutil.copytree(source, work / "checkpoints" / name)
    return work


def test_the_llava15_refcoco_recipe_of_the_readme_runs_as_printed(tmp_path, base_model_asset):
    data = recipe_data.write_refer(tmp_path / "data")
    work = workspace(tmp_path, {"llava-1.5-7b-hf": base_model_asset})
    commands = recipe_commands(ROOT / "README.md", "## Pointing it at a real model")
    assert commands == recipe_commands(ROOT / "docs" / "recipes.md", "## LLaVA-1.5-7B on RefCOCO")
    run_recipe(commands, work, data)

    stats = json.loads((work / "runs/data/llava15_7b_refcoco_lists/stats.json").read_text())
    assert stats["eval_overlap"]["overlapping_lists"] >= 1  # image 5: RefCOCO train and RefCOCOg val
    assert (work / "runs/train/llava15_7b_perpo_refcoco/adapter_model.safetensors").is_file()
    for run in ("llava15_7b_refcoco", "llava15_7b_refcoco_bon20", "llava15_7b_perpo_refcoco"):
        results = json.loads((work / "runs/eval" / run / "results.json").read_text())
        assert results["results"], run
    assert (work / "runs/report/llava15_7b_refcoco/index.md").is_file()


def test_the_7b_configs_print_their_memory_and_a_batch_that_cannot_fit_is_refused(
    tmp_path, base_model_asset, tiny_model_of, monkeypatch, capsys
):
    """`--dry_run` on config-only stand-ins of the public 7B checkpoints (their config.json and processor, no
    weights), a 640 x 480 photo and an 80 GiB device: the figures docs/scale.md prints, and the paper's batch of
    16 x 20 rows refused before any weight loads."""
    from PIL import Image

    import perpo.model.memory

    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (640, 480), (90, 120, 30)).save(photo)
    instructions = tmp_path / "instructions.jsonl"
    record = {"id": "a", "task": "grounding", "image": str(photo), "answer": "[0.10, 0.10, 0.20, 0.20]",
              "question": "Please provide the bounding box coordinate of the region this sentence describes: the red "
              "circle.", "target": [0.1, 0.1, 0.2, 0.2], "frame": "padded"}  # fmt: skip
    instructions.write_text(json.dumps(record) + "\n")
    llava = recipe_data.write_config_only_7b(tmp_path / "llava-1.5-7b", "llava", base_model_asset)
    qwen = recipe_data.write_config_only_7b(tmp_path / "qwen2.5-vl-7b", "qwen2_5_vl", tiny_model_of("qwen2_5_vl"))
    monkeypatch.setattr(perpo.model.memory, "device_memory", lambda device: 80 * perpo.model.memory.GIB)
    monkeypatch.chdir(ROOT)
    scale = (ROOT / "docs" / "scale.md").read_text(encoding="utf-8")

    def dry_run(*argv: str) -> str:
        assert main([*argv, "--dry_run", "true"]) == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert line.split("memory estimate: ", 1)[1] in scale, line  # the figures docs/scale.md prints
        return line

    sample = ["--instructions", str(instructions), "--out", str(tmp_path / "s.jsonl")]
    dry_run("sample", "perpo/configs/sample_llava15_7b_refcoco.yaml", "--model", str(llava), *sample)
    dry_run("sample", "perpo/configs/sample_qwen2_5_vl_7b_refcoco.yaml", "--model", str(qwen), *sample)
    for config in ("llava15_7b_refcoco", "llava15_7b_refcoco_bon20", "llava15_7b_fox"):
        dry_run("eval", f"eval_configs/{config}.yaml", "--model", str(llava))
    argv = ["sample", "perpo/configs/sample_llava15_7b_refcoco.yaml", "--model", str(llava), *sample]
    assert main([*argv, "--batch_size", "16"]) == 2  # the paper's 16 instructions x 20, before any weight loads
    error = capsys.readouterr().err
    assert "KV cache 320 rows x 648 tokens x 512 KiB = 101.2 GiB" in error and "lower --batch_size to 8" in error
    assert not (tmp_path / "s.jsonl").exists()


def llava_next_standin(out: Path) -> Path:
    """LLaVA-NeXT built around the committed OCR tiny's trained weights (its projector, towers and language model;
    the anyres newline embedding at zero), with llava-v1.6-vicuna-7b-hf's processor and Vicuna's 4,096-token
    context: a NeXT checkpoint that can read the fixture's pages."""
    from transformers import LlavaForConditionalGeneration

    from perpo.embedded.tiny import TinySpec, build_family
    from perpo.studies.demo import OCR_ASSET

    spec = TinySpec(**(json.loads((OCR_ASSET / "perpo_tiny.json").read_text()) | {"max_positions": 4096}))
    model, processor = build_family("llava_next", spec)
    assert model.load_state_dict(LlavaForConditionalGeneration.from_pretrained(OCR_ASSET).state_dict(), strict=False)
    model.model.image_newline.data.zero_()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_the_llava_next_page_ocr_recipe_runs_as_printed_and_keeps_test_pages_out(tmp_path, monkeypatch):
    data = tmp_path / "data"
    recipe_data.write_pages(data / "ocr_train", "en", 4, seed=1)
    for language, seed in (("en", 2), ("cn", 3)):
        recipe_data.write_pages(data / "fox", language, 2, seed=seed)
    standin = llava_next_standin(tmp_path / "standin")
    work = workspace(tmp_path, {"llava-v1.6-vicuna-7b-hf": standin})
    run_recipe(recipe_commands(ROOT / "docs" / "recipes.md", "## LLaVA-NeXT-7B on page OCR"), work, data)

    assert (work / "runs/train/llava_next_7b_perpo_fox/adapter_model.safetensors").is_file()
    for run in ("llava_next_7b_fox", "llava_next_7b_perpo_fox"):
        results = json.loads((work / "runs/eval" / run / "results.json").read_text())["results"]
        assert {"perpo_fox_en_page", "perpo_fox_cn_page"} <= set(results), run
    assert (work / "runs/compare/llava_next_7b_fox").is_dir()
    # a training page that is a test page stops the build, naming both
    shutil.copy(data / "fox/en_pdf_png/en_1.png", data / "ocr_train/en_pdf_png/en_2.png")
    monkeypatch.chdir(work)
    argv = ["build-data", "perpo/configs/build_llava_next_fox_ocr.yaml", "--exclude_eval", str(data / "fox")]
    assert main([*argv, "--out", str(tmp_path / "again")]) == 2
    assert not (tmp_path / "again").exists()


# The Qwen2.5-VL stand-in is untrained (no Qwen weights are committed), so none of its lists spans the recipe's
# IoU margin of 0.8; this one extra substitution keeps them, so that training, evaluation and the comparison run.
UNTRAINED_MARGIN = [(r"^(perpo build-data .*)$", r"\1 --margin 0")]


def test_the_qwen2_5_vl_refcoco_recipe_runs_as_printed(tmp_path, tiny_model_of):
    data = recipe_data.write_refer(tmp_path / "data")
    work = workspace(tmp_path, {"Qwen2.5-VL-7B-Instruct": tiny_model_of("qwen2_5_vl")})
    commands = recipe_commands(ROOT / "docs" / "recipes.md", "## Qwen2.5-VL-7B on RefCOCO")
    run_recipe(commands, work, data, extra=UNTRAINED_MARGIN)

    first = json.loads((work / "runs/data/refcoco_train_qwen/instructions.jsonl").read_text().splitlines()[0])
    assert '"bbox_2d"' in first["answer"] and first["pixels"] and first["frame"] == "original"
    assert (work / "runs/train/qwen2_5_vl_7b_perpo_refcoco/adapter_model.safetensors").is_file()
    for run in ("qwen2_5_vl_7b_refcoco", "qwen2_5_vl_7b_perpo_refcoco"):
        results = json.loads((work / "runs/eval" / run / "results.json").read_text())["results"]
        assert any(task.endswith("_qwen") for task in results), run
    assert (work / "runs/compare/qwen2_5_vl_7b").is_dir()
