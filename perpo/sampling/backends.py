"""Generation backends of `perpo sample`: the `GenerationBackend` interface, the `hf` backend (transformers
`generate` with per-row seeded sampling) and `BACKENDS`, the loader of each backend by name (`vllm` lives in
`perpo.sampling.vllm_backend`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from perpo.config import ConfigError
from perpo.model.modeling import (
    load_model,
    load_processor,
)

if TYPE_CHECKING:
    from perpo.sampling.sample import SampleConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleRequest:
    """One instruction as a backend sees it: a stable key (the record id), the question, the image file or None."""

    key: str
    question: str
    image: Path | None


class GenerationBackend(Protocol):
    """What `perpo sample` needs from a generation engine.

    Contract: the responses of a request depend only on the request, the arguments and `seed` (never on the other
    requests of the call), so sampling is reproducible whatever the batching or restart point.
    """

    def generate(
        self,
        requests: Sequence[SampleRequest],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[list[str]]:
        """For each request, its `n` responses (sample i drawn from the stream keyed by (seed, key, i))."""
        ...


BackendLoader = Callable[..., GenerationBackend]
"""`loader(cfg: SampleConfig, *, device, dtype) -> GenerationBackend` (device: this rank's, already resolved)."""


def load_model_and_processor(model: str, *, adapter: str = "", device: str = "cpu", dtype: str = "float32"):
    """A checkpoint of a supported family for sampling (`perpo.model.modeling`: class by `model_type`), with a LoRA
    adapter merged in (one set of weights: faster generation, the same model), and its processor.

    Raises:
        ConfigError: a folder is missing, or the checkpoint is not of a supported family.
    """
    if not Path(model).is_dir():
        raise ConfigError(f"model folder {model} not found (a local checkpoint saved with save_pretrained)")
    if adapter and not (Path(adapter) / "adapter_config.json").is_file():
        raise ConfigError(f"adapter folder {adapter} has no adapter_config.json (a peft LoRA adapter)")
    try:
        loaded = load_model(model, dtype=dtype, adapter=adapter or None, merge_adapter=True, device=device)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return loaded, load_processor(model)


class HFBackend:
    """The `hf` backend: batched `transformers` generation, Gumbel-max sampling per row (`perpo.model.generation`)."""

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor

    def generate(
        self,
        requests: Sequence[SampleRequest],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[list[str]]:
        from perpo.io import load_image
        from perpo.model.generation import GenerationRequest, generate
        from perpo.model.prompts import chat_prompt

        batch = [
            GenerationRequest(
                prompt=chat_prompt(self.processor, r.question, with_image=r.image is not None),
                image=load_image(r.image) if r.image is not None else None,
                key=r.key,
            )
            for r in requests
        ]
        return generate(
            self.model,
            self.processor,
            batch,
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
        )


def load_hf_backend(cfg: SampleConfig, *, device: str = "cpu", dtype: str = "float32") -> HFBackend:
    """The `hf` backend for `cfg.model` (+ optional LoRA adapter)."""
    return HFBackend(*load_model_and_processor(cfg.model, adapter=cfg.adapter, device=device, dtype=dtype))


def load_vllm_backend(cfg: SampleConfig, *, device: str = "cuda", dtype: str = "bfloat16"):
    """The `vllm` backend (perpo.sampling.vllm_backend; imported only when asked for)."""
    from perpo.sampling.vllm_backend import load_vllm_backend

    return load_vllm_backend(cfg, device=device, dtype=dtype)


BACKENDS: dict[str, BackendLoader] = {"hf": load_hf_backend, "vllm": load_vllm_backend}
"""Generation backends by name. A new engine registers a loader here; see docs/data.md."""
