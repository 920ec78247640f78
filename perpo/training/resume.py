"""Reruns and resumes of `perpo train`: a rerun in a used output folder continues the same run from its latest
complete checkpoint, or is refused when it would change what the run computes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from perpo.config import ConfigError

logger = logging.getLogger(__name__)

DONE_FILE = "train_summary.json"  # written last: its presence means the output folder holds a finished run


# TrainingArguments that change what a run computes: a rerun that resumes must not change them (see `check_rerun`).
TRAJECTORY_ARGS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "seed", "data_seed", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "weight_decay", "adam_beta1",
    "adam_beta2", "adam_epsilon", "max_grad_norm", "optim", "bf16", "fp16",
)  # fmt: skip


# PerPOArguments that only say what is scored on the side, never what is trained.
SIDE_ARGS = ("eval_data", "eval_image_root", "eval_limit", "eval_train_lists")


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` is not a complete Trainer checkpoint (None when it is): `trainer_state.json` is written last."""
    if not path.is_dir():
        return "not a folder"
    try:
        json.loads((path / "trainer_state.json").read_text())
    except FileNotFoundError:
        return "incomplete (no trainer_state.json: killed while saving?)"
    except (OSError, ValueError):
        return "incomplete (trainer_state.json is torn)"
    weights = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    if not any((path / name).is_file() for name in weights):
        return "incomplete (no model or adapter weights)"
    return None


def latest_checkpoint(out: Path, quiet: bool = False) -> Path | None:
    """The newest complete `checkpoint-N` in `out`; torn ones (a kill while saving) are skipped with a log line."""
    found = sorted(
        (p for p in out.glob("checkpoint-*") if p.name.removeprefix("checkpoint-").isdigit()),
        key=lambda p: int(p.name.removeprefix("checkpoint-")),
        reverse=True,
    )
    for path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        if not quiet:
            logger.warning("skipping %s: %s", path, problem)
    return None


def rerun_key(perpo_args: dict, training_args: dict, data_sha256: str | None) -> dict:
    """What a resumed run must share with the run it continues (paths of side evaluations may change)."""
    return {
        "perpo": {k: v for k, v in perpo_args.items() if k not in SIDE_ARGS},
        "training": {k: training_args.get(k) for k in TRAJECTORY_ARGS},
        "data_sha256": data_sha256,
    }


def check_rerun(out: Path, key: dict) -> None:
    """Refuse to continue a run in `out` that was made with other settings or data (when it left anything to
    continue: a checkpoint or a finished run; a run stopped before its first checkpoint is simply started again)."""
    if not (out / DONE_FILE).is_file() and not any(out.glob("checkpoint-*")):
        return
    try:
        stored = json.loads((out / "train_config.json").read_text())
        then = rerun_key(stored["PerPOArguments"], stored["TrainingArguments"], stored.get("data_sha256"))
    except (OSError, ValueError, KeyError, TypeError):
        return  # nothing readable to compare with (a kill before the config was written)
    if then == key:
        return
    changes = [
        f"{name}: {then[part].get(name)!r} -> {key[part].get(name)!r}"
        for part in ("perpo", "training")
        for name in sorted(set(then[part]) | set(key[part]))
        if then[part].get(name) != key[part].get(name)
    ]
    if then["data_sha256"] != key["data_sha256"]:
        changes.append("the data file's content")
    raise ConfigError(
        f"{out} holds a run made with other settings ({'; '.join(changes)}). Resuming would mix two runs: rerun "
        "with the original settings to resume, or pass a new --output_dir."
    )


def resume_point(out: Path, requested: str | None) -> Path | None:
    """The checkpoint to resume from: PATH if given, else the newest complete one in `out` (None: start fresh).

    `--resume_from_checkpoint true` asks for the newest and fails when there is none; without the flag a rerun
    of the same command resumes by itself, as `perpo sample` and `perpo warmup` do.
    """
    if requested is not None and str(requested).lower() not in ("true", "1"):
        path = Path(requested)
        problem = checkpoint_problem(path)
        if problem:
            raise ConfigError(f"--resume_from_checkpoint {path}: {problem}. Pass a complete checkpoint-N folder.")
        return path
    found = latest_checkpoint(out) if out.is_dir() else None
    if requested is not None and found is None:
        raise ConfigError(f"--resume_from_checkpoint {requested}: no complete checkpoint-N in {out}")
    return found
