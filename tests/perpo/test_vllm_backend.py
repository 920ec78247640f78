"""The `vllm` sampling backend around the engine call, on the CPU: a fake engine records what it is asked and answers
like `vllm.LLM.generate` (one output per request, completions in any index order). The real engine: test_gpu.py."""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from perpo.config import ConfigError
from perpo.data.schema import dump_record, load_records
from perpo.sampling.backends import SampleRequest
from perpo.sampling.resume import settings_path
from perpo.sampling.sample import SampleConfig, run_sample
from perpo.sampling.shards import part_path
from perpo.sampling.vllm_backend import VLLMBackend, engine_args, merged_checkpoint, request_seed, responses_of


@dataclass
class Params:
    """Stands in for vllm.SamplingParams: keeps its arguments."""

    n: int
    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    top_k: int
    min_p: float
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float


@dataclass
class Completion:
    index: int
    text: str


@dataclass
class Output:
    outputs: list[Completion]


class FakeEngine:
    """Answers every request with texts derived from its prompt and seed, completions shuffled (vLLM does not promise
    index order); `drop` removes a completion to test the count check."""

    def __init__(self, drop: bool = False):
        self.calls: list[tuple[list[dict], list[Params]]] = []
        self.drop = drop

    def generate(self, prompts, sampling_params, use_tqdm):
        assert use_tqdm is False and len(prompts) == len(sampling_params)
        self.calls.append((prompts, sampling_params))
        outputs = []
        for prompt, params in zip(prompts, sampling_params, strict=True):
            image = "img" if "multi_modal_data" in prompt else "noimg"
            texts = [Completion(i, f"{params.seed}|{i}|{image}|{params.temperature}") for i in range(params.n)]
            random.Random(params.seed).shuffle(texts)
            outputs.append(Output(texts[1:] if self.drop else texts))
        return outputs


@pytest.fixture(scope="module")
def backend_parts(tiny_llava):
    from transformers import AutoConfig

    from perpo.model.modeling import load_processor

    return load_processor(str(tiny_llava)), AutoConfig.from_pretrained(str(tiny_llava))


def backend(parts, engine=None) -> VLLMBackend:
    return VLLMBackend(engine or FakeEngine(), *parts, Params)


@pytest.fixture
def instructions(tmp_path, synth_data) -> Path:
    rows = [json.loads(line) for line in (synth_data / "synth_train.jsonl").read_text().splitlines()[:5]]
    records = [
        {"id": r["id"], "task": "grounding", "image": str(synth_data / r["image"]),
         "question": f"Where is {r['expression']}?", "answer": "[0.1, 0.1, 0.2, 0.2]",
         "target": [0.1, 0.1, 0.2, 0.2], "frame": "padded"}
        for r in rows
    ]  # fmt: skip
    records[4]["image"] = ""  # a text-only instruction
    path = tmp_path / "inst.jsonl"
    path.write_text("".join(dump_record(r) for r in records))
    return path


def config(tiny_llava, instructions, out, **kwargs) -> SampleConfig:
    values = dict(n=3, batch_size=2, progress=False, device="cpu", backend="vllm")
    return SampleConfig(model=str(tiny_llava), instructions=str(instructions), out=str(out), **(values | kwargs))


def test_requests_carry_the_chat_prompt_the_image_and_a_seed_per_instruction(backend_parts, synth_data):
    from perpo.model.prompts import chat_prompt

    processor, _ = backend_parts
    engine = FakeEngine()
    image = next((synth_data / "images").rglob("*.png"))
    requests = [SampleRequest("a", "Where is the red circle?", image), SampleRequest("b", "Read it.", None)]
    texts = backend(backend_parts, engine).generate(
        requests, n=4, temperature=0.5, top_p=0.9, max_new_tokens=7, seed=3
    )
    prompts, params = engine.calls[0]
    assert prompts[0]["prompt"] == chat_prompt(processor, "Where is the red circle?", with_image=True)
    assert prompts[1] == {"prompt": chat_prompt(processor, "Read it.", with_image=False)}
    picture = prompts[0]["multi_modal_data"]["image"]
    assert picture.mode == "RGB" and picture.size == (64, 64)
    # every shaping parameter explicit: vLLM would otherwise take the checkpoint's generation_config
    neutral = dict(top_k=0, min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0)
    assert params[0] == Params(n=4, temperature=0.5, top_p=0.9, max_tokens=7, seed=request_seed(3, "a"), **neutral)
    assert params[1].seed == request_seed(3, "b") != params[0].seed
    # completions come back in index order, whatever order the engine gave them in
    assert texts[0] == [f"{request_seed(3, 'a')}|{i}|img|0.5" for i in range(4)]
    assert texts[1] == [f"{request_seed(3, 'b')}|{i}|noimg|0.5" for i in range(4)]


def test_request_seeds_are_keyed_by_seed_and_id_only():
    assert request_seed(0, "x") == request_seed(0, "x") != request_seed(1, "x") != request_seed(0, "y")
    assert 0 <= request_seed(123, "some/id") < 2**31


def test_greedy_draws_once_and_repeats(backend_parts):
    engine = FakeEngine()
    texts = backend(backend_parts, engine).generate(
        [SampleRequest("a", "q", None)], n=3, temperature=0.0, top_p=1.0, max_new_tokens=5, seed=0
    )
    assert engine.calls[0][1][0].n == 1 and len(texts[0]) == 3 and len(set(texts[0])) == 1


def test_wrong_output_counts_are_errors(backend_parts):
    with pytest.raises(RuntimeError, match=r"returned 2 completions for 'a', 3 were asked"):
        backend(backend_parts, FakeEngine(drop=True)).generate(
            [SampleRequest("a", "q", None)], n=3, temperature=0.5, top_p=1.0, max_new_tokens=5, seed=0
        )
    with pytest.raises(RuntimeError, match="returned 0 outputs for 1 requests"):
        responses_of([], ["a"], 3)


def test_sampling_through_the_vllm_backend_resumes_like_hf(tiny_llava, instructions, backend_parts, tmp_path):
    """The output schema, the settings (engine arguments included) and resume after a kill are the hf backend's."""
    whole = tmp_path / "whole" / "samples.jsonl"
    run_sample(config(tiny_llava, instructions, whole, vllm_args='{"max_model_len": 512}'), backend(backend_parts))
    records = load_records(whole, stage="samples", n=3)
    assert [r["id"] for r in records] == [json.loads(line)["id"] for line in instructions.read_text().splitlines()]
    sampler = records[0]["sampler"]
    assert sampler["backend"] == "vllm" and sampler["engine"] == {"tensor_parallel_size": 1, "max_model_len": 512}
    assert records[4]["responses"][0].endswith("|noimg|0.5")

    cut = tmp_path / "cut" / "samples.jsonl"
    cfg = config(tiny_llava, instructions, cut, vllm_args='{"max_model_len": 512}')
    run_sample(
        config(tiny_llava, instructions, cut, vllm_args='{"max_model_len": 512}', limit=2), backend(backend_parts)
    )
    engine = FakeEngine()
    summary = run_sample(cfg, backend(backend_parts, engine))
    assert summary["resumed"] == 2 and [len(p) for p, _ in engine.calls] == [2, 1]
    assert cut.read_bytes() == whole.read_bytes()
    with pytest.raises(ConfigError, match=r"other settings \(engine: "):
        run_sample(config(tiny_llava, instructions, cut, vllm_args='{"max_model_len": 1024}'), backend(backend_parts))
    assert json.loads(settings_path(cut).read_text())["sampler"]["engine"]["max_model_len"] == 512


def test_vllm_settings_are_checked():
    with pytest.raises(ConfigError, match="settings of --backend vllm"):
        SampleConfig(model="m", instructions="i", out="o", tensor_parallel_size=2)
    with pytest.raises(ConfigError, match="--vllm_args must be a JSON object, got '\\[1\\]'"):
        SampleConfig(model="m", instructions="i", out="o", backend="vllm", vllm_args="[1]")
    with pytest.raises(ConfigError, match="--vllm_args must be a JSON object, got '\\{bad'"):
        SampleConfig(model="m", instructions="i", out="o", backend="vllm", vllm_args="{bad")
    cfg = SampleConfig(model="m", instructions="i", out="o", backend="vllm", tensor_parallel_size=4, seed=2,
                       vllm_args='{"gpu_memory_utilization": 0.8, "limit_mm_per_prompt": {"image": 2}}')  # fmt: skip
    assert engine_args(cfg, "ckpt", "bfloat16") == {
        "model": "ckpt", "tensor_parallel_size": 4, "dtype": "bfloat16", "seed": 2,
        "limit_mm_per_prompt": {"image": 2}, "gpu_memory_utilization": 0.8,
    }  # fmt: skip


def test_without_vllm_installed_the_error_says_how_to_get_it(tiny_llava, instructions, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    out = tmp_path / "o" / "samples.jsonl"
    with pytest.raises(ConfigError, match=r"needs vLLM, which is not installed: pip install 'perpo\[vllm\]'"):
        run_sample(config(tiny_llava, instructions, out))
    assert not out.exists()


def test_an_adapter_is_merged_once_beside_the_output(tmp_path, monkeypatch):
    import perpo.model.modeling

    made = []

    def export(adapter, out, *, base):
        made.append((adapter, base))
        Path(out).mkdir(parents=True)
        (Path(out) / "config.json").write_text("{}")
        return Path(out)

    monkeypatch.setattr(perpo.model.modeling, "export_merged", export)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"lora")
    cfg = SampleConfig(
        model="base", instructions="i", out=str(tmp_path / "s.jsonl"), adapter=str(adapter), backend="vllm"
    )
    first, again = merged_checkpoint(cfg), merged_checkpoint(cfg)
    assert first == again and first.parent == tmp_path and first.name.startswith("s.jsonl.merged-")
    assert made == [(str(adapter), "base")]
    assert merged_checkpoint(SampleConfig(model="base", instructions="i", out="o", backend="vllm")) == Path("base")


def test_vllm_processes_get_their_own_gpus_and_refuse_torchrun(tiny_llava, instructions, tmp_path, monkeypatch):
    from perpo.sampling.sample import _engine_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    cfg = config(tiny_llava, instructions, tmp_path / "s.jsonl", processes=2, tensor_parallel_size=2)
    assert _engine_gpus(cfg) == ["4,5", "6,7"]
    with pytest.raises(ConfigError, match="--processes 3 x --tensor_parallel_size 2 needs 6 GPUs, 4 are visible"):
        _engine_gpus(config(tiny_llava, instructions, tmp_path / "s.jsonl", processes=3, tensor_parallel_size=2))
    assert (
        _engine_gpus(config(tiny_llava, instructions, tmp_path / "s.jsonl", backend="hf", processes=2)) == [None] * 2
    )
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="does not run under torchrun"):
        run_sample(config(tiny_llava, instructions, tmp_path / "s.jsonl"))
    assert not part_path(tmp_path / "s.jsonl", 0, 2).exists()
