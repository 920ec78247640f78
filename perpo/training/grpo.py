"""`perpo grpo`: GRPO, online RL on perpo's discriminative rewards, through TRL's `GRPOTrainer`.

The reviewers' comparison: the same instructions `perpo sample` reads, the same reward functions
(`perpo.objectives.rewards`: IoU for grounding, 1 − edit distance for page OCR), LoRA on the same layers with the
projector trained fully as in `perpo train`, and a group of N responses per instruction where PerPO ranks a list of N.
The RL loop is TRL's (a maintained implementation): each step samples N completions per instruction from the current
policy, scores them, and takes a clipped policy-gradient step on the group-normalised advantages, with a KL penalty to
the base (the policy with its adapters disabled) when `--beta` > 0.

A format reward (1 when the answer parses: a box for grounding, non-empty text for OCR) is computed and logged as
`rewards/format/mean` beside the task reward; it enters the advantage only with `--format_weight` > 0.

The output folder has the layout of `perpo train`'s (adapter_model.safetensors, adapter_config.json, the processor,
train_config.json, train_summary.json, heldout.json with --eval_data), so `perpo eval`, `perpo sample --adapter`
and the reports take a GRPO run like any other method.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from perpo.config import ConfigError, check_numbers, check_spares_inputs, opt
from perpo.model.families import Family, family_of
from perpo.model.modeling import DEFAULT_LORA_TARGETS
from perpo.objectives.rewards import TASK_REWARDS

logger = logging.getLogger(__name__)


@dataclass
class GRPOArguments:
    """perpo's options of `perpo grpo` (the rest are `trl.GRPOConfig`: --num_generations, --beta, ...)."""

    model_name_or_path: str = opt(help="base model: a local checkpoint folder of a perpo.model.families family")
    data: str = opt(help="instruction JSONL (`perpo data instructions`): the prompts sampled online")
    image_root: str | None = opt(None, help="folder relative image paths resolve against (default: data's folder)")
    reward: str = opt(
        "auto", help="task reward: iou, ocr, a dotted path to a function, or auto (iou for grounding, ocr for OCR)"
    )
    format_weight: float = opt(
        0.0, ge=0, help="weight of the format reward in the advantage (it is logged as rewards/format either way)"
    )
    lora_r: int = opt(128, ge=1, help="LoRA rank")
    lora_alpha: int = opt(256, ge=1, help="LoRA alpha")
    lora_dropout: float = opt(0.0, ge=0, lt=1, help="LoRA dropout")
    lora_targets: list[str] = opt(list(DEFAULT_LORA_TARGETS), help="language-model linear layers that get LoRA")
    train_projector: bool = opt(True, help="train the multimodal projector fully (as `perpo train` does)")
    dtype: str = opt("auto", help="model dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    max_instructions: int | None = opt(None, ge=1, help="train on the first N instructions only")
    eval_data: str | None = opt(
        None, help="held-out grounding rows scored with greedy AP@50 at the end (as `perpo train --eval_data`)"
    )
    eval_image_root: str | None = opt(None, help="folder relative image paths of --eval_data resolve against")
    eval_limit: int | None = opt(None, ge=1, help="score only the first N rows of --eval_data")
    eval_train_lists: int = opt(0, ge=0, help="also score greedy AP@50 on the first K training instructions")

    def __post_init__(self):
        check_numbers(self)


def prompt_dataset(records: list[dict], image_root: Path, family: Family):
    """Instruction records as TRL's GRPO reads them (a `datasets.Dataset`): a conversational prompt, the image
    (decoded when read and prepared as the family's checkpoints see it, `Family.prepare_image`; TRL puts it before
    the text, as `perpo.model.prompts.user_messages` does), the reward's target and the task."""
    from datasets import Dataset, Image

    from perpo.data.schema import resolve_image

    rows = []
    for record in records:
        image = resolve_image(record, image_root)
        rows.append(
            {
                "prompt": [{"role": "user", "content": record["question"]}],
                "image": str(image) if image is not None else None,
                "target": record["target"],
                "task": record["task"],
            }
        )
    dataset = Dataset.from_list(rows).cast_column("image", Image())
    return dataset.with_transform(partial(_prepared_images, family))


def _prepared_images(family: Family, batch: dict) -> dict:
    """A dataset batch with each decoded image as the family prepares it for its processor."""
    batch["image"] = [
        None if image is None else family.prepare_image(image.convert("RGB")) for image in batch["image"]
    ]
    return batch


def check_finite_run(trainer) -> None:
    """Refuse to finish a GRPO run whose logged loss or trained weights are not finite (TRL's trainer has no stop
    of its own; `perpo train` stops before the step, `TrainingDiverged`): called before the adapter and the
    summary are written, so a diverged run leaves no result.

    Raises:
        TrainingDiverged: naming the first step whose logged loss is not finite and how many trained tensors are not.
    """
    import math

    import torch

    from perpo.training.trainer import TrainingDiverged

    losses = [(e.get("step"), e["loss"]) for e in trainer.state.log_history if isinstance(e.get("loss"), (int, float))]
    first = next((step for step, loss in losses if not math.isfinite(loss)), None)
    trained = [p for p in trainer.model.parameters() if p.requires_grad and p.numel()]
    broken = sum(not torch.isfinite(p).all().item() for p in trained)
    if first is not None or broken:
        where = f"the loss is not finite from step {first}" if first is not None else "the loss stayed finite"
        raise TrainingDiverged(
            f"training diverged: {where}, and {broken} of {len(trained)} trained tensors are not finite; no adapter "
            "was written (lower --learning_rate, or raise --beta)"
        )


def completion_text(completion: Any) -> str:
    """The text of one TRL completion (a string, or the assistant message list of a conversational prompt)."""
    if isinstance(completion, str):
        return completion
    return "".join(
        m["content"] if isinstance(m["content"], str) else "".join(p.get("text", "") for p in m["content"])
        for m in completion
    )


def task_reward(name: str):
    """A TRL reward function over `perpo.objectives.rewards.get_reward(name)`; malformed answers score 0, as in
    build-data."""
    from perpo.objectives.rewards import get_reward

    fn = get_reward(name)

    def reward(completions, target, **_) -> list[float]:
        return [float(fn(completion_text(c), t)) for c, t in zip(completions, target, strict=True)]

    reward.__name__ = name.rsplit(".", 1)[-1].rsplit(":", 1)[-1]
    return reward


def format_reward(completions, task, **_) -> list[float]:
    """1 when the answer has the task's form (a parseable box for grounding, non-empty text for OCR), else 0."""
    from perpo.objectives.boxes import parse_box

    def ok(text: str, kind: str) -> bool:
        return parse_box(text, fmt="norm") is not None if kind == "grounding" else bool(text.strip())

    return [float(ok(completion_text(c), k)) for c, k in zip(completions, task, strict=True)]


format_reward.__name__ = "format"


def resolve_reward(args: GRPOArguments, records: list[dict]) -> str:
    """The task reward's name: --reward, or for auto the one of the records' task (one task per run).

    Raises:
        ConfigError: auto on a file that mixes tasks.
    """
    if args.reward != "auto":
        return args.reward
    tasks = sorted({r["task"] for r in records})
    if len(tasks) != 1 or tasks[0] not in TASK_REWARDS:
        raise ConfigError(f"{args.data}: --reward auto needs one task of {sorted(TASK_REWARDS)}, found {tasks}")
    return TASK_REWARDS[tasks[0]]


def run_grpo(args: GRPOArguments, config, callbacks: list | None = None) -> Path:
    """Train with GRPO as the module docstring says; returns the output folder.

    Args:
        args: perpo's options.
        config: `trl.GRPOConfig` (output_dir, num_generations, learning rate, ...).
        callbacks: replace the console's dict printer and progress bar (as in `perpo.training.trainer.run_train`).

    Raises:
        ConfigError: bad data, reward or batch settings (before a model loads).
    """
    from transformers import set_seed
    from trl import GRPOTrainer

    from perpo.io import save_resolved, write_json
    from perpo.model.modeling import apply_lora, disable_dropout, load_model, load_processor, master_dtype
    from perpo.training.heldout import HeldoutEvaluator
    from perpo.training.resume import DONE_FILE
    from perpo.training.trainer import check_training_args, checked_records, use_callbacks

    check_training_args(config)  # the checks of `perpo train`: finite options, a learning rate > 0, ...
    if config.beta < 0 or config.temperature <= 0 or not 0 < config.top_p <= 1:
        raise ConfigError(
            f"--beta must be >= 0, --temperature > 0 and --top_p in (0, 1]; got {config.beta!r}, "
            f"{config.temperature!r}, {config.top_p!r}"
        )
    records, image_root = checked_records(
        Path(args.data), "instructions", args.image_root, limit=args.max_instructions
    )
    reward = resolve_reward(args, records)
    try:
        reward_fn = task_reward(reward)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if config.num_generations < 2:
        raise ConfigError("--num_generations must be >= 2: GRPO's advantage compares responses within a group")
    config.reward_weights = [1.0, args.format_weight]
    config.remove_unused_columns = False
    check_spares_inputs("--output_dir", config.output_dir, [args.model_name_or_path])
    heldout = HeldoutEvaluator.from_args(args, config, records)
    out = Path(config.output_dir)
    if (out / DONE_FILE).is_file():
        logger.info("%s already holds a finished run (%s): nothing to do", out, DONE_FILE)
        return out
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(out, "train_config", args, config, extra={"loss": "grpo", "reward": reward})

    set_seed(config.seed)
    processor = load_processor(args.model_name_or_path)
    model = load_model(args.model_name_or_path, dtype=args.dtype)
    disable_dropout(model)
    model.requires_grad_(False)
    model = apply_lora(
        model, r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout, targets=args.lora_targets,
        train_projector=args.train_projector, trainable_dtype=master_dtype(model, config),
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward_fn, format_reward],
        args=config,
        train_dataset=prompt_dataset(records, image_root, family_of(model)),
        processing_class=processor,
    )
    use_callbacks(trainer, callbacks)
    began = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    seconds = time.perf_counter() - began
    check_finite_run(trainer)
    trainer.save_model(str(out))
    processor.save_pretrained(out)
    if heldout:
        heldout.evaluate(trainer)
    history = [entry for entry in trainer.state.log_history if "reward" in entry]
    summary = {
        "loss": "grpo",
        "reward": reward,
        "instructions": len(records),
        "num_generations": config.num_generations,
        # each generation batch serves num_iterations optimizer passes (TRL's μ)
        "generated_responses": trainer.state.global_step
        * config.per_device_train_batch_size
        * config.gradient_accumulation_steps
        * config.world_size
        // config.num_iterations,
        "optimizer_steps": trainer.state.global_step,
        "train_seconds": round(seconds, 2),
        "train_loss": result.training_loss,
        "final_reward": history[-1]["reward"] if history else None,
        "args": dataclasses.asdict(args),
    }
    write_json(out / DONE_FILE, summary)
    return out
