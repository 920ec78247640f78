"""Loading models and processors, LoRA (peft), freezing, and the reference policy.

The checkpoint's `config.model_type` picks its family (`perpo.model.families`: LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision,
Qwen2.5-VL, Qwen3-VL),
which names the transformers class, the projector and the language model. What trains follows the released
PerPO recipe: LoRA on the language model's linear layers, the multimodal projector fully (as a peft
`modules_to_save`, so that disabling the adapter also restores the original projector), the vision tower frozen.
"""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# The language model's linear layers (LLaMA/Vicuna, Qwen2): the paper's LoRA targets.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_FINGERPRINT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".jinja", ".txt")
_FULL_HASH_BYTES = 256 << 20
_EDGE_BYTES = 1 << 20


DTYPES = ("auto", "float32", "bfloat16", "float16")


def checkpoint_family(name_or_path: str | Path, **hub_kwargs):
    """The family (`perpo.model.families`) of a checkpoint, by its `config.model_type`."""
    from transformers import AutoConfig

    from perpo.model.families import family_for_type

    config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
    return family_for_type(config.model_type, str(name_or_path))


def model_class(name_or_path: str | Path, **hub_kwargs):
    """The transformers class for a checkpoint, chosen by its family (`config.model_type`)."""
    return checkpoint_family(name_or_path, **hub_kwargs).transformers_class()


def resolve_device(device: str | None = "auto") -> str:
    """ "auto" (or None) → "cuda" when a GPU is visible, else "cpu"; anything else unchanged."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str | torch.dtype | None = "auto", device: str | None = "auto") -> torch.dtype:
    """ "auto" (or None) → bfloat16 on a GPU device, float32 on CPU; else the named dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if resolve_device(device).startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return getattr(torch, dtype)


def load_model(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = None,
    adapter: str | Path | None = None,
    merge_adapter: bool = False,
    attn_implementation: str | None = None,
    **hub_kwargs,
):
    """Load a LLaVA-family model for inference or as a training base, optionally with a LoRA adapter on top.

    Args:
        name_or_path: checkpoint folder or hub id.
        dtype: "auto" (bfloat16 on GPU, float32 on CPU), "float32", "bfloat16" or "float16".
        device: where to put the model ("cpu", "cuda", "cuda:1", "auto"); None leaves it on CPU.
        adapter: a peft adapter folder to apply (for inference: not trainable).
        merge_adapter: fold the adapter into the weights (one set of weights: faster generation, same model).
        attn_implementation: e.g. "sdpa", "eager", "flex_attention"; None lets transformers choose.
        hub_kwargs: `revision`, `trust_remote_code`, ... passed to `from_pretrained`.
    """
    cls = model_class(name_or_path, **hub_kwargs)
    kwargs = {"dtype": resolve_dtype(dtype, device), **hub_kwargs}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = cls.from_pretrained(name_or_path, **kwargs)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
        if merge_adapter:
            model = model.merge_and_unload()
    if device:
        model = model.to(resolve_device(device))
    return model.eval()


def checkpoint_fingerprint(folder: str | Path) -> str | None:
    """A short hash of a checkpoint folder's weights, configs and tokenizer files (None if it is not a folder).

    Files up to 256 MiB are hashed whole; larger ones by name, size and their first and last MiB, so a multi-GB
    checkpoint is identified in milliseconds. Moving or copying the folder keeps its fingerprint.
    """
    import hashlib

    folder = Path(folder)
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix not in _FINGERPRINT_SUFFIXES:
            continue
        size = path.stat().st_size
        digest.update(f"{path.name}\x1f{size}\x1f".encode())
        with path.open("rb") as handle:
            if size <= _FULL_HASH_BYTES:
                digest.update(handle.read())
            else:
                digest.update(handle.read(_EDGE_BYTES))
                handle.seek(size - _EDGE_BYTES)
                digest.update(handle.read(_EDGE_BYTES))
    return digest.hexdigest()[:16]


def load_processor(name_or_path: str | Path, **hub_kwargs):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(name_or_path, **hub_kwargs)


def apply_lora(
    model,
    *,
    r: int,
    alpha: int,
    dropout: float = 0.0,
    targets: tuple[str, ...] | list[str] = DEFAULT_LORA_TARGETS,
    train_projector: bool = True,
    trainable_dtype: torch.dtype | None = None,
):
    """Wrap `model` with LoRA adapters; the projector trains fully as a `modules_to_save` copy.

    Everything else (vision tower, embeddings, LM head, base weights) is frozen. Keeping the trained projector
    inside peft means `model.disable_adapter()` gives back the exact initial model: the reference policy.

    Args:
        trainable_dtype: keep the trained weights (LoRA, the projector copy) in this dtype, e.g. float32 for a
            bf16 model trained without DeepSpeed, whose optimizer would otherwise update bf16 weights directly
            (at lr 5e-6 most updates of a weight near 0.02 round away: bf16 keeps 8 bits of mantissa). The
            projector copy then casts its input to that dtype and its output back. None: the model's dtype (under
            DeepSpeed, whose optimizer holds fp32 master weights and expects one dtype).
    """
    from peft import LoraConfig, get_peft_model

    from perpo.model.families import family_of

    family = family_of(model)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=family.lora_target_regex(targets),
        modules_to_save=family.trained_modules(model.config) if train_projector else None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    # autocast_adapter_dtype=False keeps adapters in the model's dtype (a known ZeRO-3 pitfall otherwise).
    with warnings.catch_warnings():  # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        peft_model = get_peft_model(model, config, autocast_adapter_dtype=False)
    if trainable_dtype is not None:
        keep_trainable_in(peft_model, trainable_dtype)
    n_train = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in peft_model.parameters())
    logger.info("LoRA r=%d alpha=%d: %.2f M of %.2f M parameters train", r, alpha, n_train / 1e6, n_all / 1e6)
    return peft_model


def master_dtype(model, training_args) -> torch.dtype | None:
    """float32 for the trained weights of a half-precision model that no DeepSpeed optimizer holds fp32 master
    weights for (`apply_lora(trainable_dtype=...)`), else None (the model's own dtype)."""
    half = next(model.parameters()).dtype in (torch.bfloat16, torch.float16)
    return torch.float32 if half and not getattr(training_args, "deepspeed", None) else None


def keep_trainable_in(peft_model, dtype: torch.dtype) -> None:
    """Cast every trainable weight of a peft model to `dtype`; the trained projector copies compute in it (LoRA
    layers cast their input to their own dtype already)."""
    from peft.utils import ModulesToSaveWrapper

    for parameter in peft_model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.to(dtype)

    def cast_in(module, args):
        module._perpo_out_dtype = next((a.dtype for a in args if torch.is_tensor(a) and a.is_floating_point()), None)
        return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    def cast_out(module, args, output):
        out_dtype = module._perpo_out_dtype
        return output.to(out_dtype) if out_dtype is not None and torch.is_tensor(output) else output

    for wrapper in peft_model.modules():
        if isinstance(wrapper, ModulesToSaveWrapper):
            for copy in wrapper.modules_to_save.values():
                copy.register_forward_pre_hook(cast_in)
                copy.register_forward_hook(cast_out)


@functools.cache
def _fused_lora_variant():
    """A peft `LoraVariant` that computes vanilla LoRA as one `addmm` (built on first use: peft imports slowly)."""
    from peft.tuners.lora.layer import LoraVariant

    class FusedLoraVariant(LoraVariant):
        """`result + B(A(x)) * s` as `addmm(result, A(x), Bᵀ, alpha=s)`: the same sum, without the two passes over
        the [tokens, out] output (scale, add) and their backward; the weights and merges are vanilla LoRA's."""

        @staticmethod
        def init(module, adapter_name, **kwargs) -> None:
            pass

        @staticmethod
        def forward(module, active_adapter, x, result, **kwargs):
            h = module.lora_A[active_adapter](module.lora_dropout[active_adapter](x))
            weight = module.lora_B[active_adapter].weight  # [out, r]
            flat = torch.addmm(
                result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), weight.t(),
                alpha=module.scaling[active_adapter],
            )  # fmt: skip
            return flat.view(result.shape)

        @staticmethod
        def merge_safe(module, active_adapter, orig_weight):
            return orig_weight + module.get_delta_weight(active_adapter).to(orig_weight.dtype)

        @staticmethod
        def merge_unsafe(module, active_adapter, orig_weight) -> None:
            orig_weight.data += module.get_delta_weight(active_adapter).to(orig_weight.dtype)

        @staticmethod
        def unmerge(module, active_adapter, orig_weight):
            return orig_weight.data - module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    return FusedLoraVariant


def fuse_lora(model) -> int:
    """Compute the vanilla LoRA updates of a peft `model` as fused matmul-adds (`addmm`); returns how many layers.

    Same parameters, same numbers up to float rounding, fewer passes over memory: on a CPU, where the tiny model's
    step is bound by elementwise passes, that is ~10% of a training step. Layers with a bias on B, another variant
    (DoRA, ...), a dtype mismatch or transposed weights keep peft's own forward. Not for DeepSpeed ZeRO-3, whose
    partitioned weights are gathered by module hooks that a direct `lora_B.weight` read would bypass.
    """
    from peft.tuners.lora.layer import Linear

    variant = _fused_lora_variant()()
    fused = 0
    for module in model.modules():
        if type(module) is not Linear or module.fan_in_fan_out:
            continue
        weight = module.get_base_layer().weight
        for name, lora_B in module.lora_B.items():
            if name in module.lora_variant or lora_B.bias is not None or lora_B.weight.dtype != weight.dtype:
                continue
            module.lora_variant[name] = variant
            fused += 1
    return fused


def disable_dropout(model) -> None:
    """Set every `nn.Dropout` to p=0, as the released code does, so log-probs are deterministic in training.

    (LLaVA-1.5/NeXT/OneVision configs already have attention dropout 0.)
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def frozen_copy(model):
    """A detached, frozen deep copy (the `reference: copy` mode)."""
    import copy

    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()


def checkpoint_dtype(model: str | Path) -> str:
    """The dtype a checkpoint's config records (`dtype`, or the older `torch_dtype`); float32 when it records none."""
    import json

    config = Path(model) / "config.json"
    recorded = json.loads(config.read_text()) if config.is_file() else {}
    dtype = recorded.get("dtype") or recorded.get("torch_dtype") or "float32"
    return dtype if dtype in DTYPES else "float32"


def export_merged(adapter: str | Path, out: str | Path, *, base: str | None = None, dtype: str = "auto") -> Path:
    """Merge a trained LoRA adapter (and its `modules_to_save` projector) into the base model and save it.

    The result is a plain checkpoint (model + processor) that `from_pretrained` and every lmms-eval LLaVA wrapper load.
    `dtype` "auto" writes the base checkpoint's own dtype (bf16 for the public 7B checkpoints: 14 GB, not 28); the
    merge itself is computed in float32 and then cast.
    """
    import json

    from peft import PeftModel

    from perpo.io import atomic_dir

    adapter = Path(adapter)
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: is {adapter} a `perpo train` output folder?")
    base = base or json.loads(config_file.read_text())["base_model_name_or_path"]
    saved = checkpoint_dtype(base) if dtype == "auto" else dtype
    model = load_model(base, dtype="float32")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().to(getattr(torch, saved))
    processor_source = adapter if (adapter / "processor_config.json").is_file() else base
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp)
        load_processor(processor_source).save_pretrained(tmp)
    logger.info("merged %s into %s -> %s", adapter, base, out)
    return Path(out)
