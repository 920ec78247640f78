"""PerPO beside online methods, through the real CLI on the tiny model: `perpo grpo` (TRL's GRPOTrainer on the IoU
reward) and `perpo iterate` (iterative PerPO), a few steps each from the committed base (a random model writes no
box, so every reward would be 0 and nothing would move); their adapters load where every method's do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from perpo.cli import main
from perpo.data.sources import synth_instructions, write_records

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def instructions(synth_data, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("online") / "instructions.jsonl"
    write_records(path, synth_instructions(synth_data, "train")[:8])
    return path


def test_grpo_trains_on_the_iou_reward(base_model_asset, instructions, tmp_path):
    from reports.result_files import training_metadata

    out = tmp_path / "grpo"
    argv = ["grpo", "--model_name_or_path", str(base_model_asset), "--data", str(instructions)]
    argv += ["--max_instructions", "4"]
    argv += ["--num_generations", "4", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2"]
    argv += ["--max_completion_length", "12", "--temperature", "1.0", "--learning_rate", "1e-3", "--lora_r", "4"]
    argv += ["--lora_alpha", "8", "--beta", "0.04", "--use_cpu", "true", "--report_to", "none", "--logging_steps", "1"]
    argv += ["--num_train_epochs", "1", "--save_strategy", "no", "--disable_tqdm", "true", "--output_dir", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["loss"] == "grpo" and summary["reward"] == "iou"
    assert summary["generated_responses"] == 4 * 4 and summary["optimizer_steps"] == 2  # 2 groups per step
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())
    assert any("multi_modal_projector" in k for k in weights)  # trained fully, as in `perpo train`
    meta, _ = training_metadata(out)
    assert (meta["method"], meta["n"], meta["beta"], meta["lora_r"]) == ("grpo", 4, 0.04, 4)
    assert main(argv) == 0  # a finished run is not trained again

    # `perpo eval` loads it: tests/integration/test_demo.py evaluates GRPO's adapter in the quick online study


def test_iterative_perpo_samples_each_round_from_the_last_policy(base_model_asset, instructions, tmp_path):
    from lmms_tasks.models.perpo_llava import PerpoLlava
    from reports.result_files import training_metadata

    out = tmp_path / "iter"
    train = "--loss perpo --learning_rate 5e-3 --beta 0.5 --lora_r 4 --lora_alpha 8 --per_device_train_batch_size 2 "
    train += "--num_train_epochs 1 --use_cpu true --report_to none --save_strategy no --disable_tqdm true"
    argv = ["iterate", "--model", str(base_model_asset), "--instructions", str(instructions), "--out", str(out)]
    argv += ["--rounds", "2", "--n", "4", "--max_new_tokens", "12", "--temperature", "1.0", "--margin", "0"]
    argv += ["--device", "cpu", "--train_args", train]
    assert main(argv) == 0
    summary = json.loads((out / "iterate.json").read_text())
    assert [r["instructions"] for r in summary["rounds"]] == [4, 4] and summary["generated_responses"] == 32
    first, second = out / "round_1" / "adapter", out / "round_2" / "adapter"
    sampled = json.loads((out / "round_2" / "samples.jsonl").read_text().splitlines()[0])
    assert sampled["sampler"]["adapter"] == str(first)  # round 2 sampled from round 1's policy
    config = json.loads((second / "train_config.json").read_text())
    assert config["PerPOArguments"]["init_adapter"] == str(first) and config["method"] == "perpo_iter"
    one, two = (load_file(str(folder / "adapter_model.safetensors")) for folder in (first, second))
    assert one.keys() == two.keys() and any((one[k] - two[k]).abs().sum() > 0 for k in one)
    assert (out / "adapter").resolve() == second
    assert training_metadata(out / "adapter")[0]["method"] == "perpo_iter"
    assert main(argv) == 0  # rerun: every round is found finished
    lm = PerpoLlava(pretrained=str(base_model_asset), adapter=str(out / "adapter"), device="cpu", max_new_tokens=4)
    assert lm.adapter == str(out / "adapter")
