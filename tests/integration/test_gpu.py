"""LLaVA-1.5-7B-size training on one GPU (random weights built from config, bf16). Skipped where CUDA is absent.

Run with `pytest -m gpu -s tests/integration/test_gpu.py` to see the numbers (lists/s, peak memory) they print.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]

# CLIP ViT-L/14-336 + Vicuna-7B (LLaMA-2-7B shape), as in LLaVA-1.5-7B.
LLAVA15_7B = dict(
    image_size=336, patch_size=14, vision_hidden=1024, vision_layers=24, vision_heads=16,
    text_hidden=4096, text_layers=32, text_heads=32, text_intermediate=11008, max_positions=4096, vocab_size=32000,
)  # fmt: skip


def test_train_bench_7b_reports_speed_and_memory(tmp_path):
    """Issue 8: the benchmark at LLaVA-1.5-7B size in bf16 (N = 20, every layout, a few steps)."""
    out = tmp_path / "train_bench_7b.json"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "train_bench.py"), "--size", "7b", "--device", "cuda",
        "--n", "20", "--steps", "3", "--no-pairs", "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=3000)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["machine"]["gpu"]
    assert {r["layout"] for r in data["results"]} == {"naive", "shared-online", "shared-precomputed"}
    for r in data["results"]:
        assert "error" not in r, r
        assert r["n"] == 20 and r["P"] == 616 and r["R"] == 20
        assert r["lists_per_s"] > 0 and r["peak_mb"] > 0 and r["total_mb"] > r["peak_mb"]
        assert r["method"] == "torch.cuda.max_memory_allocated"
        assert math.isfinite(r["losses"][-1])
    assert {(t["layout"], t["target"]) for t in data["targets"]} >= {("shared-online", ">= 5 lists/s")}


def test_llava15_7b_lora_r128_trains_in_bf16():
    """Issue 7: the LLaVA-1.5-7B architecture trains a few steps in bf16 with LoRA r 128 on one GPU.

    The trainer's pieces, called directly (a 7B checkpoint folder for `run_train` would be 14 GB): shared-prefix
    log-probs (`sequence_logps`), the reference = adapters disabled, the PerPO loss, AdamW; N = 20 responses of 20
    tokens to a 576 + 40 token prompt. Prints lists/s and peak memory.
    """
    import numpy as np
    import torch
    from PIL import Image
    from transformers import LlavaForConditionalGeneration

    from perpo.embedded.tiny import TinySpec, build_config, build_processor
    from perpo.model.logprobs import ListBatch, sequence_logps
    from perpo.model.modeling import apply_lora, disable_dropout
    from perpo.objectives.losses import LOSSES

    n, length, device = 20, 20, "cuda"
    spec = TinySpec(**LLAVA15_7B)
    processor = build_processor(spec)
    tokenizer = processor.tokenizer
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (336, 336, 3), dtype=np.uint8))
    question = "Please provide the bounding box coordinate of the region this sentence describes: the red circle."
    inputs = processor(images=[image], text=[f"USER: <image>\n{question} ASSISTANT: "], return_tensors="pt")
    prompt_ids = inputs["input_ids"][0].tolist()
    assert prompt_ids.count(build_config(spec).image_token_index) == 576
    generator = torch.Generator().manual_seed(0)
    responses = [
        row + [tokenizer.eos_token_id]
        for row in torch.randint(5, 32000, (n, length - 1), generator=generator).tolist()
    ]
    batch = ListBatch(
        prompt_ids=[prompt_ids], response_ids=[responses],
        images={"pixel_values": inputs["pixel_values"].to(device, torch.bfloat16)}, has_image=[True],
    )  # fmt: skip
    rewards = torch.linspace(1.0, 0.0, n, device=device)[None]  # [1, N]
    mask = torch.ones(1, n, dtype=torch.bool, device=device)

    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(build_config(spec), dtype=torch.bfloat16)
    model.requires_grad_(False)
    disable_dropout(model)
    model = apply_lora(model, r=128, alpha=256).train()
    params = [p for p in model.parameters() if p.requires_grad]
    lora_b = next(p for name, p in model.named_parameters() if "lora_B" in name)
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    pad = tokenizer.pad_token_id

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(3):
        began = time.perf_counter()
        policy_logps, lengths = sequence_logps(model, batch, layout="shared", pad_id=pad)  # [1, N]
        with torch.no_grad(), model.disable_adapter():
            ref_logps, _ = sequence_logps(model, batch, layout="shared", pad_id=pad)
        loss, _ = LOSSES["perpo"](policy_logps, ref_logps, rewards, mask, lengths=lengths, beta=0.1, gamma=0.5)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
        losses.append(loss.item())
    peak_gb = torch.cuda.max_memory_allocated() / 2**30
    lists_per_s = 1 / statistics.median(times[1:])  # the first step warms up kernels and allocates AdamW state
    n_train = sum(p.numel() for p in params)
    print(
        f"\nLLaVA-1.5-7B (random, bf16) LoRA r128 + projector ({n_train / 1e6:.0f} M trainable), N={n}, "
        f"shared prefix, "
        f"online reference, {torch.cuda.get_device_name(0)}: {lists_per_s:.2f} lists/s "
        f"(step times {', '.join(f'{t:.2f}' for t in times)} s), peak memory {peak_gb:.1f} GB, losses {losses}"
    )
    assert all(math.isfinite(v) for v in losses)
    assert losses[0] == pytest.approx(math.log(2), rel=1e-2)  # policy = reference before the first update
    assert lora_b.abs().max() > 0  # the adapters trained
    assert peak_gb < torch.cuda.get_device_properties(0).total_memory / 2**30
    assert lists_per_s > 0


def test_vllm_backend_samples_the_tiny_model(tmp_path):
    """Issue 18: `perpo sample --backend vllm` on the committed tiny base (needs `perpo[vllm]`): every instruction
    gets N non-empty responses, the settings name the engine, and a rerun has nothing left to do."""
    pytest.importorskip("vllm", reason="vLLM is an optional extra: pip install 'perpo[vllm]'")
    from perpo.cli import main
    from perpo.data.schema import load_records

    data, instructions, out = tmp_path / "data", tmp_path / "instructions.jsonl", tmp_path / "samples.jsonl"
    assert main(["data", "synth", "--out", str(data), "--train", "20", "--val", "2", "--test", "2"]) == 0
    argv = ["data", "instructions", "--source", "synth", "--data", str(data), "--split", "train"]
    assert main([*argv, "--out", str(instructions)]) == 0
    model = ROOT / "perpo" / "assets" / "tiny_llava_misaligned"
    argv = ["sample", "--model", str(model), "--instructions", str(instructions), "--out", str(out), "--n", "8"]
    argv += ["--backend", "vllm", "--max_new_tokens", "24", "--vllm_args", '{"gpu_memory_utilization": 0.3}']
    assert main(argv) == 0
    records = load_records(out, stage="samples", n=8)
    assert len(records) == len(load_records(instructions, stage="instructions"))
    assert all(len(r["responses"]) == 8 and all(r["responses"]) for r in records)
    assert records[0]["sampler"]["engine"]["gpu_memory_utilization"] == 0.3
    assert main(argv) == 0 and len(load_records(out, stage="samples", n=8)) == len(records)
