"""`perpo sample` with the real `hf` backend: batch-size invariance, adapters, SIGKILL resume, spread end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perpo.cli import main
from perpo.config import ConfigError
from perpo.data.schema import dump_record, load_records
from perpo.data.sources import synth_instructions, write_records
from perpo.distributed import Launch
from perpo.sampling.backends import HFBackend, load_model_and_processor
from perpo.sampling.sample import SampleConfig, run_sample, sample_shard
from perpo.sampling.shards import find_parts, part_path

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def hf_backend(tiny_llava):
    return HFBackend(*load_model_and_processor(str(tiny_llava)))


@pytest.fixture(scope="module")
def instructions(synth_data) -> Path:
    path = synth_data / "instructions_train.jsonl"
    if not path.exists():
        write_records(path, synth_instructions(synth_data, "train"))
    return path


def sample(tiny_llava, instructions, out, backend, **kwargs) -> bytes:
    values = dict(n=4, temperature=0.5, max_new_tokens=12, batch_size=1, limit=9, device="cpu", progress=False)
    cfg = SampleConfig(model=str(tiny_llava), instructions=str(instructions), out=str(out), **(values | kwargs))
    run_sample(cfg, backend=backend)
    return Path(out).read_bytes()


def test_same_samples_whatever_the_batch_size(tiny_llava, instructions, hf_backend, tmp_path):
    one = sample(tiny_llava, instructions, tmp_path / "bs1.jsonl", hf_backend, batch_size=1)
    three = sample(tiny_llava, instructions, tmp_path / "bs3.jsonl", hf_backend, batch_size=3)
    assert one == three
    records = [json.loads(line) for line in one.splitlines()]
    assert len(records) == 9 and all(len(r["responses"]) == 4 for r in records)
    # Real sampling: the responses of a list differ (a broken sampler gives empty or identical strings).
    assert all(len(set(r["responses"])) > 1 and all(r["responses"]) for r in records)
    other_seed = sample(tiny_llava, instructions, tmp_path / "seed1.jsonl", hf_backend, seed=1)
    assert other_seed != one


def test_lora_adapter_is_applied(tiny_llava, instructions, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    base = LlavaForConditionalGeneration.from_pretrained(tiny_llava)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.5)  # a trained-looking adapter (B = 0 at init would change nothing)
    peft_model.save_pretrained(tmp_path / "adapter")
    plain = sample(tiny_llava, instructions, tmp_path / "plain.jsonl", None, limit=3, n=2)
    adapted_out = tmp_path / "adapted.jsonl"
    adapted = sample(tiny_llava, instructions, adapted_out, None, limit=3, n=2, adapter=str(tmp_path / "adapter"))
    assert plain != adapted
    record = load_records(adapted_out, stage="samples")[0]
    assert record["sampler"]["adapter"] == str(tmp_path / "adapter")
    assert record["sampler"]["adapter_fingerprint"]


def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny_llava, synth_data, instructions, hf_backend, tmp_path):
    # ~200 instructions (the train split four times under new ids), so the run lasts several seconds.
    records = load_records(instructions, stage="instructions")
    many = synth_data / "instructions_many.jsonl"
    many.write_text("".join(dump_record(r | {"id": f"{r['id']}_copy{k}"}) for k in range(4) for r in records))
    settings = ["--n", "8", "--temperature", "0.5", "--max_new_tokens", "16", "--seed", "3", "--device", "cpu"]
    killed = tmp_path / "killed" / "samples.jsonl"
    command = [sys.executable, "-m", "perpo.cli", "sample", "--model", str(tiny_llava), "--instructions", str(many)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        command + ["--out", str(killed), "--batch_size", "4", *settings],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if killed.exists() and killed.read_bytes().count(b"\n") >= 12:
            break
        time.sleep(0.02)
    assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read().decode()[-2000:]}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    written = killed.read_bytes().count(b"\n")
    assert 12 <= written < len(records) * 4, written

    resumed = subprocess.run(
        command + ["--out", str(killed), "--batch_size", "7", *settings], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"({written} already done" in resumed.stdout

    whole = tmp_path / "whole" / "samples.jsonl"
    cfg = SampleConfig(
        model=str(tiny_llava),
        instructions=str(many),
        out=str(whole),
        n=8,
        temperature=0.5,
        max_new_tokens=16,
        seed=3,
        batch_size=16,
        device="cpu",
        progress=False,
    )
    run_sample(cfg, backend=hf_backend)
    assert killed.read_bytes() == whole.read_bytes()
    assert len(load_records(killed, stage="samples", n=8)) == len(records) * 4


def test_two_processes_give_the_one_process_bytes(tiny_llava, instructions, hf_backend, tmp_path):
    """Data-parallel sampling: `torchrun` with 2 ranks (rank 1 resuming a shard it had half written alone), then
    `--processes 2`; each merged file is byte-identical to one process's."""
    one = sample(tiny_llava, instructions, tmp_path / "one" / "samples.jsonl", hf_backend, batch_size=2)
    settings = ["--n", "4", "--temperature", "0.5", "--max_new_tokens", "12", "--limit", "9", "--device", "cpu"]
    settings += ["--model", str(tiny_llava), "--instructions", str(instructions), "--progress", "false"]

    launched = tmp_path / "torchrun" / "samples.jsonl"
    half = SampleConfig(model=str(tiny_llava), instructions=str(instructions), out=str(launched), limit=3, n=4,
                        temperature=0.5, max_new_tokens=12, device="cpu", progress=False)  # fmt: skip
    sample_shard(half, hf_backend, Launch(rank=1, world=2))  # rank 1's shard of the first 3: only p1
    assert [json.loads(line)["id"] for line in part_path(launched, 1, 2).read_text().splitlines()] == [
        json.loads(line)["id"] for line in one.splitlines()[1:2]
    ]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    command = [*torchrun, "-m", "perpo.cli", "--", "sample", *settings, "--out", str(launched), "--batch_size", "3"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert launched.read_bytes() == one and find_parts(launched) == []
    assert "(1 already done, 4 in all)" in result.stdout + result.stderr  # rank 1 resumed its part

    local = tmp_path / "local" / "samples.jsonl"
    assert main(["sample", *settings, "--out", str(local), "--processes", "2"]) == 0
    assert local.read_bytes() == one and find_parts(local) == []


def test_end_to_end_spread_on_the_warmed_up_model(base_model_asset, tmp_path, capsys):
    """Sample N=8 at T=0.5 for 200 synthetic train instructions, build data with the margin filter: real spread."""
    from perpo.embedded.synth import SynthSpec, build_synth

    data = build_synth(tmp_path / "synth", seed=1, spec=SynthSpec(counts={"train": 180}), progress=False)
    inst = tmp_path / "synth" / "instructions.jsonl"
    assert main(["data", "instructions", "--source", "synth", "--data", str(data), "--out", str(inst)]) == 0
    began = time.perf_counter()
    argv = ["sample", "--model", str(base_model_asset), "--instructions", str(inst), "--limit", "200", "--n", "8"]
    out = tmp_path / "samples" / "samples.jsonl"
    argv += ["--temperature", "0.5", "--batch_size", "32", "--max_new_tokens", "24", "--out", str(out)]
    assert main(argv + ["--device", "cpu", "--progress", "false"]) == 0
    seconds = time.perf_counter() - began
    assert main(["build-data", "--samples", str(out), "--out", str(tmp_path / "built")]) == 0
    stats = json.loads((tmp_path / "built" / "stats.json").read_text())
    with capsys.disabled():
        print(
            f"\n[spread] sampling 200 x 8 took {seconds:.1f} s; lists kept {stats['lists']['kept']}/"
            f"{stats['lists']['in']}; mean margin {stats['list_margin']['mean']:.3f}; parse failures "
            f"{stats['responses']['parse_fail_rate']:.3f}; best-of-k AP@50 "
            f"{dict(zip(stats['best_of_n']['k'], [round(v, 3) for v in stats['best_of_n']['hit_rate']], strict=True))}"
        )
    assert stats["lists"]["in"] == 200
    assert 0 < stats["lists"]["kept"] < stats["lists"]["in"]
    assert stats["list_margin"]["mean"] > 0.2
    assert stats["responses"]["parse_fail_rate"] < 0.5
    hits = stats["best_of_n"]["hit_rate"]
    assert stats["best_of_n"]["k"] == [1, 2, 4, 8] and hits[-1] > hits[0]
    train = load_records(tmp_path / "built" / "train.jsonl", stage="train", n=8)
    assert all(max(r["rewards"]) - min(r["rewards"]) >= 0.8 - 1e-9 for r in train)


def test_a_qwen_model_samples_its_own_instructions_and_refuses_normalised_ones(tiny_model_of, synth_data, tmp_path):
    """Instructions built for the Qwen2.5-VL checkpoint (`--model`) sample and score; instructions with
    normalised boxes are refused before anything is written, since its answers are pixels of its resized image."""
    qwen = str(tiny_model_of("qwen2_5_vl"))
    inst = tmp_path / "qwen_instructions.jsonl"
    argv = ["data", "instructions", "--source", "synth", "--data", str(synth_data), "--split", "val"]
    assert main([*argv, "--model", qwen, "--out", str(inst)]) == 0
    out = tmp_path / "qwen" / "samples.jsonl"
    sample_argv = ["sample", "--model", qwen, "--n", "2", "--limit", "3", "--max_new_tokens", "8", "--device", "cpu"]
    assert main([*sample_argv, "--instructions", str(inst), "--out", str(out), "--progress", "false"]) == 0
    records = load_records(out, stage="samples", n=2)
    assert len(records) == 3 and all(r["pixels"] and r["frame"] == "original" for r in records)
    assert main(["build-data", "--samples", str(out), "--margin", "0", "--out", str(tmp_path / "built")]) == 0
    assert len(load_records(tmp_path / "built" / "train.jsonl", stage="train", n=2)) == 3

    llava_inst = tmp_path / "llava_instructions.jsonl"
    assert main([*argv, "--out", str(llava_inst)]) == 0
    refused = tmp_path / "refused" / "samples.jsonl"
    with pytest.raises(
        ConfigError, match="writes normalised boxes, but this qwen2_5_vl model answers in a 56x56 frame"
    ):
        run_sample(
            SampleConfig(model=qwen, instructions=str(llava_inst), out=str(refused), n=2, limit=1, device="cpu")
        )
    assert not refused.exists()
