"""Shared fixtures. Every test runs offline, on CPU, with one torch thread per test process."""

from __future__ import annotations

import os

# Before torch is imported anywhere: offline hub, one thread per xdist worker (2 workers on 2 cores).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Sizes of the test-scale tiny LLaVA: 16x16 images, 16 image tokens, 2 text layers of width 32.
TEST_SPEC_KWARGS = dict(
    image_size=16,
    patch_size=4,
    vision_hidden=32,
    vision_layers=1,
    vision_heads=2,
    text_hidden=32,
    text_layers=2,
    text_heads=2,
    text_intermediate=64,
    max_positions=256,
)


def pytest_collection_modifyitems(config, items):
    """Skip `gpu`-marked tests when no CUDA device is present (CI); everything else always runs."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return  # no torch import for runs that need no GPU check
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_spec():
    from perpo.embedded.tiny import TinySpec

    return TinySpec(**TEST_SPEC_KWARGS)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory, tiny_spec) -> Path:
    """A randomly initialised test-size tiny LLaVA saved with save_pretrained (model + processor)."""
    from perpo.embedded.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny_llava", tiny_spec)


@pytest.fixture(scope="session")
def tiny_model_of(tmp_path_factory, tiny_spec):
    """`tiny_model_of(family)`: the test-size tiny model of a family (perpo.embedded.tiny.FAMILIES) saved with
    save_pretrained (model + processor), built once per session."""
    from perpo.embedded.tiny import build_family

    saved: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in saved:
            model, processor = build_family(family, tiny_spec)
            out = tmp_path_factory.mktemp("models") / f"tiny_{family}"
            model.save_pretrained(out)
            processor.save_pretrained(out)
            saved[family] = out
        return saved[family]

    return get


@pytest.fixture(scope="session")
def base_model_asset() -> Path:
    """The committed warmed-up tiny LLaVA (the demo's base model)."""
    from perpo.studies.demo import ASSET

    assert (ASSET / "model.safetensors").is_file(), f"missing asset {ASSET}"
    return ASSET


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small synthetic grounding benchmark (64x64 scenes; 40 train, 12 val, 12 test)."""
    from perpo.embedded.synth import SynthSpec, build_synth

    spec = SynthSpec(counts={"train": 40, "val": 12, "test": 12})
    return build_synth(tmp_path_factory.mktemp("data") / "synth", seed=0, spec=spec, progress=False)
