"""`perpo train`: listwise preference training of LLaVA-family models (PerPO, LiPO-λ, listwise, DPO, SFT).

One `transformers.Trainer` subclass computes per-response summed log-probs for the policy and the reference
(`perpo.model.logprobs`, naive or shared-prefix layout) and calls the loss by name (`perpo.objectives.losses.LOSSES`).
peft LoRA trains the language model; the projector trains as a peft `modules_to_save` copy; DeepSpeed ZeRO-2/3 comes in
through `--deepspeed CONFIG.json` as in every HF recipe.

The reference policy never drifts:
    adapter      the policy with its adapters disabled (exact: everything trained lives in the adapter);
    copy         a frozen deep copy of the initial model;
    precomputed  log-probs computed once with the initial model and stored beside the data, keyed by model and
                 data fingerprints; a stored file that does not match is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import resource
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from perpo.config import ConfigError, check_numbers, check_spares_inputs, opt
from perpo.data.collate import ListCollator
from perpo.io import write_json
from perpo.model.families import family_of
from perpo.model.logprobs import LAYOUTS, ListBatch, ReferenceMemo, sequence_logps
from perpo.model.modeling import DEFAULT_LORA_TARGETS, keep_trainable_in, master_dtype
from perpo.objectives.losses import LOSSES, METHODS
from perpo.training.reference import load_or_compute_reference
from perpo.training.resume import DONE_FILE, check_rerun, latest_checkpoint, rerun_key, resume_point

logger = logging.getLogger(__name__)

REFERENCE_MODES = ("adapter", "copy", "precomputed")


class TrainingDiverged(ConfigError):
    """A non-finite loss or gradient norm: training stops before the optimizer step, nothing is saved from it."""


@dataclass
class PerPOArguments:
    """PerPO's own options of `perpo train` (the rest are `transformers.TrainingArguments`)."""

    model_name_or_path: str = opt(help="base model: a LLaVA / LLaVA-NeXT / LLaVA-OneVision folder or hub id")
    data: str = opt(help="listwise training file (train.jsonl from `perpo build-data`)")
    image_root: str | None = opt(
        None, help="folder that relative image paths resolve against (default: data's folder)"
    )
    loss: str = opt(
        "perpo", help="training objective: a name of perpo.objectives.losses.METHODS with a loss (listed above)"
    )
    beta: float = opt(0.1, gt=0, help="β: scale of the log-ratio scores")
    gamma: float = opt(0.5, ge=0, help="γ: PerPO pair-weight exponent |r_i - r_j|^γ (0 = uniform listwise)")
    n: int = opt(20, ge=1, help="responses per list used for training (the first N of each list; shorter lists fail)")
    use_lora: bool = opt(True, help="train LoRA adapters (else: full fine-tuning of the language model)")
    lora_r: int = opt(128, ge=1, help="LoRA rank")
    lora_alpha: int = opt(256, ge=1, help="LoRA alpha")
    lora_dropout: float = opt(0.0, ge=0, lt=1, help="LoRA dropout (the released code zeroes all dropout)")
    lora_targets: list[str] = opt(list(DEFAULT_LORA_TARGETS), help="language-model linear layers that get LoRA")
    train_projector: bool = opt(True, help="train the multimodal projector fully (as the released code does)")
    reference: str = opt("adapter", help=f"reference policy: {', '.join(REFERENCE_MODES)}")
    init_adapter: str | None = opt(
        None,
        help="start from this trained LoRA adapter (iterative PerPO: the previous round's) and train it further; "
        "the reference is then the base model (--reference adapter) or this starting policy (--reference copy)",
    )
    ref_logps_file: str | None = opt(None, help="precomputed reference log-probs file (default: beside the data)")
    layout: str = opt(
        "tree",
        help=f"log-prob layout: {', '.join(LAYOUTS)} (naive = N full sequences; shared = one row per list; tree = "
        "shared with common response prefixes computed once)",
    )
    pack: int = opt(1, ge=1, help="shared/tree layout: lists packed into one row")
    cache_reference: bool = opt(
        True, help="keep each list's reference log-probs after its first pass (no reference pass in later epochs)"
    )
    cache_inputs: bool = opt(True, help="keep each list's encoded prompt, image and responses after the first epoch")
    fuse_lora: bool = opt(
        True, help="compute each LoRA update as one fused matmul-add (same numbers, less memory traffic)"
    )
    chunk_size: int | None = opt(None, ge=1, help="rows per forward chunk (recomputed in backward) for lists too big")
    dtype: str = opt("auto", help="model dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    attn_implementation: str | None = opt(None, help="attention kernel: sdpa (default), eager")
    max_lists: int | None = opt(None, ge=1, help="train on the first N lists only (smoke tests)")
    eval_data: str | None = opt(
        None,
        help="held-out grounding instructions scored with greedy AP@50 at the end of training and every "
        "--eval_steps with --eval_strategy steps; logged as heldout/ap50, heldout/iou, heldout/parse_fail and "
        "written to <output_dir>/heldout.json. Flat rows (id, image, expression, bbox, width, height: e.g. "
        "synth_val.jsonl) or grounding records (instructions.jsonl / train.jsonl)",
    )
    eval_image_root: str | None = opt(
        None, help="folder relative image paths of --eval_data resolve against (default: its folder)"
    )
    eval_limit: int | None = opt(None, ge=1, help="score only the first N rows of --eval_data")
    eval_train_lists: int = opt(
        0, ge=0, help="also score greedy AP@50 on the instructions of the first K training lists (train_lists/*)"
    )

    def __post_init__(self):
        check_numbers(self)
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.reference not in REFERENCE_MODES:
            raise ConfigError(f"reference must be one of {', '.join(REFERENCE_MODES)}, got {self.reference!r}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.reference == "adapter" and not self.use_lora:
            raise ConfigError("reference=adapter needs use_lora=true; use reference=copy or precomputed instead")
        if self.init_adapter is not None:
            if not (Path(self.init_adapter) / "adapter_config.json").is_file():
                raise ConfigError(f"--init_adapter {self.init_adapter} has no adapter_config.json (a peft adapter)")
            if not self.use_lora or self.reference == "precomputed":
                raise ConfigError("--init_adapter needs use_lora=true and --reference adapter (the base) or copy")
        if not METHODS[self.loss].on_answers and self.n < 2:
            raise ConfigError(f"loss {self.loss} ranks responses: it needs n >= 2 responses per list")


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, records: list[dict]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return self.records[index]


class PerPOTrainer(Trainer):
    """`Trainer` whose loss is a listwise objective over per-response log-probs.

    Args:
        perpo_args: PerPO's options (loss, β, γ, reference mode, layout).
        ref_model: the frozen reference (reference=copy only).
    """

    def __init__(self, *args, perpo_args: PerPOArguments, ref_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.perpo_args = perpo_args
        self.ref_model = ref_model
        self.loss_fn = LOSSES[perpo_args.loss]
        self.model_accepts_loss_kwargs = False  # our loss is a mean over lists; Trainer divides by GA steps
        self._stats: dict[str, list[float]] = defaultdict(list)
        self._lists = 0
        self._tokens = 0
        self._last_log = time.perf_counter()
        # Reference log-probs by list content (never in multi-process runs: there a skipped pass could desync ranks).
        memo = perpo_args.cache_reference and self.args.world_size == 1
        self._reference_memo = ReferenceMemo(family_of(self.model)) if memo else None
        self.add_callback(_FiniteGradients(self))

    def diverged(self, what: str) -> TrainingDiverged:
        """The error that stops training at the current step, naming the checkpoint that is kept."""
        last = latest_checkpoint(Path(self.args.output_dir), quiet=True)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been saved yet"
        return TrainingDiverged(
            f"training stopped at step {self.state.global_step + 1}: {what}. Nothing was saved from this state; "
            f"{kept}. Lower --learning_rate or --beta, or check the rewards of the data."
        )

    def train(self, *args, **kwargs):
        self._last_log = time.perf_counter()  # throughput excludes set-up time
        return super().train(*args, **kwargs)

    heldout = None  # perpo.training.heldout.HeldoutEvaluator (--eval_data, --eval_train_lists), set by run_train

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """Greedy AP@50 of the held-out sets (`perpo.training.heldout`) instead of HF's teacher-forced eval loss."""
        if self.heldout is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        return self.heldout.evaluate(self, metric_key_prefix)

    def _logps(self, model, batch: ListBatch):
        a = self.perpo_args
        pad = self.processing_class.tokenizer.pad_token_id
        return sequence_logps(model, batch, layout=a.layout, pad_id=pad, pack=a.pack, chunk_size=a.chunk_size)

    def reference_logps(self, model, inputs: dict) -> torch.Tensor | None:
        """[B, N] reference log-probs: stored, from the frozen copy, or from the policy with adapters disabled."""
        if not METHODS[self.perpo_args.loss].needs_reference:
            return None
        if "ref_logps" in inputs:
            return inputs["ref_logps"]
        memo, batch = self._reference_memo, inputs["batch"]
        if memo is not None and (known := memo.get(batch, next(model.parameters()).device)) is not None:
            return known
        with torch.no_grad():
            if self.ref_model is not None:
                logps = self._logps(self.ref_model, batch)[0]
            else:
                with _peft_model(model).disable_adapter():
                    logps = self._logps(model, batch)[0]
        if memo is not None:
            memo.put(batch, logps)
        return logps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        a = self.perpo_args
        batch: ListBatch = inputs["batch"]  # the collator built what the loss trains on (Method.on_answers)
        policy_logps, lengths = self._logps(model, batch)  # [B, N]
        ref_logps = self.reference_logps(model, inputs)
        rewards, mask = inputs["rewards"], inputs["mask"]
        loss, stats = self.loss_fn(
            policy_logps, ref_logps, rewards.to(policy_logps.device), mask.to(policy_logps.device),
            lengths=lengths, beta=a.beta, gamma=a.gamma,
        )  # fmt: skip
        if not torch.isfinite(loss.detach()):
            raise self.diverged(f"the {a.loss} loss is {loss.item()}")
        for key, value in stats.items():
            self._stats[key].append(float(value))
        self._lists += len(batch.prompt_ids)
        self._tokens += sum(
            len(p) + sum(len(r) for r in rs) for p, rs in zip(batch.prompt_ids, batch.response_ids, strict=True)
        )
        return (loss, {"policy_logps": policy_logps}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the loss statistics (NaN-aware means since the last log), throughput and peak memory."""
        norm = logs.get("grad_norm")  # the check that also holds under DeepSpeed, whose gradients the callback misses
        if norm is not None and not math.isfinite(float(norm)):
            raise self.diverged(f"the gradient norm is {float(norm)}")
        if "loss" in logs:
            for key, values in self._stats.items():
                finite = [v for v in values if not math.isnan(v)]
                logs[key] = sum(finite) / len(finite) if finite else float("nan")
            elapsed = max(time.perf_counter() - self._last_log, 1e-9)
            logs["throughput/lists_per_s"] = self._lists / elapsed
            logs["throughput/tokens_per_s"] = self._tokens / elapsed
            logs["memory/peak_gb"] = peak_memory_gb()
            self._stats.clear()
            self._lists = self._tokens = 0
            self._last_log = time.perf_counter()
        super().log(logs, start_time)


class _FiniteGradients(TrainerCallback):
    """Stops training before an optimizer step on a non-finite gradient (the parameters keep their last values)."""

    def __init__(self, trainer: PerPOTrainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in (model or self.trainer.model).parameters() if p.grad is not None]
        if grads and not torch.stack([torch.isfinite(g).all() for g in grads]).all():
            raise self.trainer.diverged("a gradient is not finite")


def _peft_model(model):
    while hasattr(model, "module"):
        model = model.module
    if not hasattr(model, "disable_adapter"):
        raise ConfigError("reference=adapter needs a peft model (use_lora=true)")
    return model


def deepspeed_distributed_env(on_cpu: bool) -> None:
    """Prepare torch.distributed for DeepSpeed before `TrainingArguments` sets up its devices.

    Without a launcher: the environment of a one-process group. Under a launcher (deepspeed, torchrun,
    accelerate) on CPU with several processes: DeepSpeed's own communicator on gloo, which accelerate does not
    start on CPU (DeepSpeed would then see a world of 1 and refuse the global batch).
    """
    import os

    from perpo.distributed import free_port

    if "RANK" not in os.environ and "LOCAL_RANK" not in os.environ:
        port = str(free_port())
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    elif on_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from deepspeed import comm

        if not comm.is_initialized():
            comm.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)


def checked_records(
    data: Path, stage: str, image_root: str | None, *, limit: int | None = None, n: int | None = None
) -> tuple[list[dict], Path]:
    """The first `limit` records of a training file (all when None), validated for `stage`, with their images
    checked; and the folder relative image paths resolve against (`image_root`, default the file's folder).

    Raises:
        RecordError / ConfigError: a bad record or image (file and line named), or no records at all.
    """
    from perpo.data.schema import load_records

    records = load_records(data, stage=stage, n=n)
    records = records[:limit] if limit else records
    if not records:
        raise ConfigError(f"{data}: no {'training lists' if stage == 'train' else 'instructions'}")
    root = Path(image_root or data.parent)
    check_images(data, records, root)
    return records, root


def use_callbacks(trainer, callbacks: list | None) -> None:
    """Replace the trainer's console printer and progress bar by `callbacks` (None: keep them)."""
    if callbacks is None:
        return
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    for callback in callbacks:
        trainer.add_callback(callback)


def peak_memory_gb() -> float:
    """Peak accelerator memory if on GPU, else the process's peak resident memory (GB)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def check_training_args(training_args: TrainingArguments) -> None:
    """Every float option finite, and the ranges that matter: non-finite values would train to NaN silently
    (`perpo train` and `perpo grpo`, whose GRPOConfig is a TrainingArguments)."""
    for field in dataclasses.fields(training_args):
        value = getattr(training_args, field.name, None)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{field.name} must be a finite number, got {value!r}")
    if training_args.learning_rate <= 0:  # 0 would write an adapter no step ever moved
        raise ConfigError(f"--learning_rate must be > 0, got {training_args.learning_rate!r}")
    for name, low in (("weight_decay", 0.0), ("max_grad_norm", 0.0), ("adam_epsilon", 0.0)):
        if getattr(training_args, name) < low:
            raise ConfigError(f"--{name} must be >= {low:g}, got {getattr(training_args, name)!r}")
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(training_args, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(training_args, name)!r}")
    if training_args.max_steps <= 0 and training_args.num_train_epochs <= 0:
        raise ConfigError(f"--num_train_epochs must be > 0, got {training_args.num_train_epochs!r}")


def check_images(data: Path, records: list[dict], image_root: Path) -> None:
    """Every list's image exists and opens as an image (header check), before a model is loaded.

    Raises:
        RecordError: names the data file, the line and the record id, the image path and what is wrong.
    """
    from PIL import Image, UnidentifiedImageError

    from perpo.data.schema import RecordError, record_lines, resolve_image

    checked: set[Path] = set()
    for line, record in zip(record_lines(data), records, strict=False):
        path = resolve_image(record, image_root)
        if path is None or path in checked:
            continue
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, UnidentifiedImageError, SyntaxError) as err:
            problem = "not found" if isinstance(err, FileNotFoundError) else f"does not open as an image ({err})"
            raise RecordError(
                f"{data}:{line}: record {record['id']!r}: image {path} {problem}. Relative paths are read from "
                f"--image_root (here {image_root})."
            ) from err
        checked.add(path)


# ------------------------------------------------------------------------------------------------- run


def build_trainer(
    args: PerPOArguments,
    training_args: TrainingArguments,
    records: list[dict],
    image_root: Path,
    *,
    data_sha256: str,
    heldout=None,
    callbacks: list | None = None,
) -> PerPOTrainer:
    """The trainer of a run, ready to `.train()`: the model with LoRA (or the starting adapter), the reference its
    loss needs, the collator over `records` (already checked, images under `image_root`).

    Writes no file but the precomputed reference's cache (`--reference precomputed`); tests and benchmarks build a
    trainer with it and call `train()` or `compute_loss` themselves. `data_sha256` (the training file's SHA-256)
    keys that cache; `heldout` is a `HeldoutEvaluator` or None; `callbacks` as in `run_train`.
    """
    from transformers import set_seed

    from perpo.model.modeling import apply_lora, disable_dropout, frozen_copy, fuse_lora, load_model, load_processor

    set_seed(training_args.seed)  # before LoRA's random init, so a run is reproducible from its seed
    method = METHODS[args.loss]
    processor = load_processor(args.model_name_or_path)
    model = load_model(args.model_name_or_path, dtype=args.dtype, attn_implementation=args.attn_implementation)
    model.train()
    disable_dropout(model)
    model.requires_grad_(False)
    model_family = family_of(model)
    collator = ListCollator(
        processor, str(image_root), args.n, on_answers=method.on_answers,
        cache=args.cache_inputs and model_family.per_image_pixels, family=model_family,
    )  # fmt: skip

    ref_model = None
    if method.needs_reference and args.reference == "precomputed":
        collator.ref_logps = load_or_compute_reference(
            model, collator, records, args, training_args.per_device_train_batch_size, data_sha256
        )
    elif method.needs_reference and args.reference == "copy":
        if args.init_adapter:  # the reference is the starting policy: base + the adapter, merged
            ref_model = load_model(
                args.model_name_or_path, dtype=args.dtype, adapter=args.init_adapter, merge_adapter=True
            )
            ref_model.requires_grad_(False)
            ref_model.eval()
        else:
            ref_model = frozen_copy(model)

    if args.init_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.init_adapter, is_trainable=True)
        if (upcast := master_dtype(model, training_args)) is not None:
            keep_trainable_in(model, upcast)
        if args.fuse_lora and not training_args.deepspeed:
            fuse_lora(model)
    elif args.use_lora:
        model = apply_lora(
            model, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout, targets=args.lora_targets,
            train_projector=args.train_projector, trainable_dtype=master_dtype(model, training_args),
        )  # fmt: skip
        if args.fuse_lora and not training_args.deepspeed:  # ZeRO-3 gathers weights through module hooks
            fuse_lora(model)
    else:
        for name, parameter in model.named_parameters():
            parameter.requires_grad = "vision_tower" not in name and (args.train_projector or "projector" not in name)
    model.train()
    if training_args.gradient_checkpointing:
        training_args.gradient_checkpointing_kwargs = training_args.gradient_checkpointing_kwargs or {
            "use_reentrant": False
        }
    training_args.remove_unused_columns = False
    trainer = PerPOTrainer(
        model=model,
        args=training_args,
        train_dataset=ListDataset(records),
        eval_dataset=heldout.dataset if heldout else None,
        data_collator=collator,
        processing_class=processor,
        perpo_args=args,
        ref_model=ref_model,
    )
    trainer.heldout = heldout
    use_callbacks(trainer, callbacks)
    return trainer


def run_train(args: PerPOArguments, training_args: TrainingArguments, callbacks: list | None = None) -> Path:
    """`perpo train`: check everything, build the trainer (`build_trainer`), train or resume, save the adapters
    (+ processor) and `train_summary.json`. Returns the output folder.

    `callbacks` (transformers `TrainerCallback`s) replace the console's dict printer and progress bar when given:
    a caller that draws its own progress (the demo) passes them.
    """
    from perpo.config import jsonable
    from perpo.io import save_resolved
    from perpo.training.heldout import HeldoutEvaluator

    # Everything the user gave is checked before a model loads or anything is written.
    check_training_args(training_args)
    # the output folder gets adapter and processor files: it must not be the base model or the starting adapter
    given = [args.model_name_or_path, args.init_adapter]
    check_spares_inputs("--output_dir", training_args.output_dir, given)
    data = Path(args.data)
    # fails at start-up on short lists, bad fields or missing images
    records, image_root = checked_records(data, "train", args.image_root, limit=args.max_lists, n=args.n)
    heldout = HeldoutEvaluator.from_args(args, training_args, records)  # validates --eval_data at start-up
    out = Path(training_args.output_dir)
    data_sha256 = hashlib.sha256(data.read_bytes()).hexdigest()
    key = rerun_key(jsonable(dataclasses.asdict(args)), jsonable(training_args.to_dict()), data_sha256)
    check_rerun(out, key)
    if (out / DONE_FILE).is_file():
        logger.info("%s already holds this finished run (%s): nothing to do", out, DONE_FILE)
        return out
    resume = resume_point(out, training_args.resume_from_checkpoint)
    if resume is not None:
        logger.info("resuming from %s", resume)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(out, "train_config", args, training_args, extra={"data_sha256": data_sha256})

    trainer = build_trainer(
        args, training_args, records, image_root, data_sha256=data_sha256, heldout=heldout, callbacks=callbacks
    )
    began = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if heldout:
        heldout.finish(trainer)
    trainer.save_model(str(out))
    trainer.processing_class.save_pretrained(out)
    summary = {"global_step": result.global_step, "training_loss": result.training_loss, "resumed_from": resume}
    write_json(out / DONE_FILE, jsonable(summary | {"seconds": time.perf_counter() - began}))
    return out
