"""The `vllm` sampling backend (`perpo sample --backend vllm`, extra `perpo[vllm]`, GPU machines).

One vLLM engine per process (`--tensor_parallel_size` GPUs each; `--processes K` starts K engines on one machine,
each on its own GPUs). Every instruction becomes one vLLM request: the prompt is the checkpoint's own chat template
(`perpo.model.prompts.chat_prompt`, the same text the `hf` backend feeds `generate`), the image goes in
`multi_modal_data`, and `SamplingParams(n=N, seed=...)` draws the N responses from a seed keyed by (seed, id), so
the responses of an instruction do not depend on which other instructions share its batch or its shard. What vLLM
does not promise is batch-invariant arithmetic: the same seed can give other tokens under another batching, so the
`hf` backend is the one whose sharded output is byte-identical to one process's.

A LoRA adapter is merged into a full checkpoint beside the output (`<out>.merged-<fingerprint>/`, made once):
perpo's adapters also train the projector, which vLLM's LoRA support cannot apply.

Everything around the engine call (request building, output mapping, the seeds) is tested on the CPU against a
fake engine; the real engine runs in the gpu-marked tests and `benchmarks/gpu_check.sh`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from perpo.config import ConfigError
from perpo.model.families import family_of
from perpo.model.generation import SAMPLING_DEFAULTS


def request_seed(seed: int, key: str) -> int:
    """The vLLM seed of an instruction's request: a 31-bit number keyed by (seed, id)."""
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class VLLMBackend:
    """`GenerationBackend` over a vLLM `LLM` (or anything with its `generate(prompts, sampling_params, use_tqdm)`).

    Args:
        engine: the engine.
        processor: the checkpoint's processor (chat template; the box frame check reads it too).
        config: the checkpoint's config (its `model_type` names the family for the box frame check).
        sampling_params: vLLM's `SamplingParams` class (a recording stand-in in tests).
    """

    def __init__(self, engine, processor, config, sampling_params):
        self.engine = engine
        self.processor = processor
        self.model = config
        self.family = family_of(config)
        self.sampling_params = sampling_params

    def prompts(self, requests: Sequence) -> list[dict[str, Any]]:
        """vLLM prompts: the chat-template text, and the image (RGB, as the family prepares it for its processor)
        when the instruction has one."""
        from perpo.io import load_image
        from perpo.model.prompts import chat_prompt

        prompts = []
        for request in requests:
            prompt: dict[str, Any] = {
                "prompt": chat_prompt(self.processor, request.question, with_image=request.image is not None)
            }
            if request.image is not None:
                prompt["multi_modal_data"] = {"image": self.family.prepare_image(load_image(request.image))}
            prompts.append(prompt)
        return prompts

    def generate(
        self, requests: Sequence, *, n: int, temperature: float, top_p: float, max_new_tokens: int, seed: int
    ) -> list[list[str]]:
        # Greedy decoding gives one answer; it is drawn once and repeated (vLLM refuses n > 1 without sampling).
        draws = 1 if temperature == 0 else n
        params = [
            self.sampling_params(
                n=draws,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_new_tokens,
                seed=request_seed(seed, r.key),
                **SAMPLING_DEFAULTS,  # explicit: vLLM, too, would take the checkpoint's generation_config
            )
            for r in requests
        ]
        outputs = self.engine.generate(self.prompts(requests), sampling_params=params, use_tqdm=False)
        texts = responses_of(outputs, [r.key for r in requests], draws)
        return [answers * (n // draws) for answers in texts]


def responses_of(outputs: Sequence, keys: Sequence[str], n: int) -> list[list[str]]:
    """Each request's `n` completion texts, in completion-index order, from vLLM's `RequestOutput`s (one per request,
    in request order).

    Raises:
        RuntimeError: the engine returned another number of outputs or completions than asked.
    """
    if len(outputs) != len(keys):
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(keys)} requests")
    texts = []
    for key, output in zip(keys, outputs, strict=True):
        completions = sorted(output.outputs, key=lambda c: c.index)
        if len(completions) != n:
            raise RuntimeError(f"vLLM returned {len(completions)} completions for {key!r}, {n} were asked")
        texts.append([c.text for c in completions])
    return texts


def engine_args(cfg, model: str, dtype: str) -> dict[str, Any]:
    """The arguments of `vllm.LLM`: the checkpoint, tensor parallel size, dtype, one image per prompt, then
    `--vllm_args` (JSON) on top."""
    args = {
        "model": model,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "dtype": dtype,
        "seed": cfg.seed,
        "limit_mm_per_prompt": {"image": 1},
    }
    return args | json.loads(cfg.vllm_args or "{}")


def merged_checkpoint(cfg) -> Path:
    """The folder vLLM loads: `cfg.model`, or with an adapter the merged checkpoint beside the output (made once)."""
    from perpo.model.modeling import checkpoint_fingerprint, export_merged

    if not cfg.adapter:
        return Path(cfg.model)
    out = Path(cfg.out)
    merged = out.with_name(f"{out.name}.merged-{checkpoint_fingerprint(cfg.adapter)}")
    if not (merged / "config.json").is_file():
        export_merged(cfg.adapter, merged, base=cfg.model)
    return merged


def load_vllm_backend(cfg, *, device: str = "cuda", dtype: Any = "bfloat16") -> VLLMBackend:
    """The `vllm` backend for `cfg` (the engine sees the GPUs of CUDA_VISIBLE_DEVICES; `device` is not used).

    Raises:
        ConfigError: vLLM is not installed.
    """
    try:
        import vllm
    except ImportError as err:
        raise ConfigError(
            "--backend vllm needs vLLM, which is not installed: pip install 'perpo[vllm]' on a GPU machine "
            "(or use --backend hf)"
        ) from err
    from transformers import AutoConfig

    from perpo.model.modeling import load_processor

    model = str(merged_checkpoint(cfg))
    engine = vllm.LLM(**engine_args(cfg, model, str(dtype).removeprefix("torch.")))
    return VLLMBackend(engine, load_processor(model), AutoConfig.from_pretrained(model), vllm.SamplingParams)
