"""Held-out diagnostics of `perpo train`: greedy AP@50 on held-out instructions, during and after training.

A falling training loss says nothing about whether the policy got better at the task. `perpo train --eval_data
FILE` scores greedy answers on held-out grounding instructions with the task's own metric (AP@50, through
`perpo.model.quickeval.evaluate_grounding`) at the end of training and, with `--eval_strategy steps`, every
`--eval_steps`; `--eval_train_lists K` scores the instructions of the first K training lists the same way, so
train and held-out sit side by side (a gap that opens is over-fitting; two flat curves are a policy that does not
move). The numbers go through the Trainer's log (`heldout/ap50`, `heldout/iou`, `heldout/parse_fail`,
`train_lists/...`), so they appear in the log history and tensorboard beside the loss, and step by step into
`<output_dir>/heldout.json` (rewritten atomically after every evaluation).

Held-out rows are either
    flat grounding rows     id, image, expression, bbox (pixel [x, y, w, h]), width, height — the rows of
                            `perpo data synth`'s synth_<split>.jsonl or `perpo data refcoco`; scored in the frame
                            of the training lists;
    listwise records        grounding records of perpo/data/schema.py at any stage (instructions.jsonl,
                            train.jsonl, ...): prompted with their own `question`, scored against their `target`.
The file is validated when training starts: a missing file, a bad line or a missing image is a ConfigError that
names the file and line.

`PerPOTrainer.evaluate` hands over to `HeldoutEvaluator.evaluate` (HF's own eval loop computes a loss on
teacher-forced batches; this generates). So HF schedules the evaluations (`--eval_strategy steps|epoch`,
`--eval_on_start`), and the returned `eval_heldout/ap50` works with `--metric_for_best_model heldout/ap50`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

from perpo.config import ConfigError
from perpo.data.schema import resolve_image, validate_record
from perpo.io import jsonl_objects

logger = logging.getLogger(__name__)

HELDOUT_FILE = "heldout.json"
METRICS = ("ap50", "iou", "parse_fail")
"""The metrics of `perpo.objectives.metrics.grounding` logged per evaluation set (`<set>/<metric>`)."""
FLAT_FIELDS = ("id", "image", "expression", "bbox", "width", "height")


def _is_number(value: Any) -> bool:
    """Whether `value` is a finite int or float (a bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _flat_row(obj: dict, root: Path, where: str) -> dict:
    def fail(field: str, problem: str) -> ConfigError:
        return ConfigError(f"{where}: field '{field}' {problem} (row id {obj.get('id')!r})")

    for field in FLAT_FIELDS:
        if field not in obj:
            raise fail(
                field,
                "is missing: a held-out row is a flat grounding row (id, image, expression, bbox, width, height) "
                "or a grounding record of perpo/data/schema.py (id, task, image, question, answer, target, frame)",
            )
    if not isinstance(obj["id"], (str, int)) or isinstance(obj["id"], bool):
        raise fail("id", f"must be a string or an integer, got {type(obj['id']).__name__}")
    for field in ("image", "expression"):
        if not isinstance(obj[field], str) or not obj[field].strip():
            raise fail(field, "must be a non-empty string")
    bbox = obj["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox) and min(bbox[2:]) >= 0):
        raise fail("bbox", f"must be a pixel box [x, y, w, h] of 4 finite numbers with w, h >= 0, got {bbox!r}")
    for field in ("width", "height"):
        if not _is_number(obj[field]) or obj[field] <= 0:
            raise fail(field, f"must be a positive number of pixels, got {obj[field]!r}")
    image = Path(obj["image"])
    return {
        "id": str(obj["id"]),
        "image": str(image if image.is_absolute() else root / image),
        "expression": obj["expression"],
        "bbox": list(bbox),
        "width": obj["width"],
        "height": obj["height"],
    }


def record_row(record: dict, image_root: str | Path) -> dict:
    """A validated grounding record as an evaluation row: its own question and target, its image resolved."""
    return {
        "id": record["id"],
        "image": str(resolve_image(record, image_root)),
        "question": record["question"],
        "target": list(record["target"]),
    }


def _record_row(obj: dict, root: Path, source: Path, line: int) -> dict:
    record = validate_record(obj, stage="instructions", source=str(source), line=line)
    if record["task"] != "grounding":
        raise ConfigError(
            f"{source}:{line}: task {record['task']!r}: only grounding instructions are scored (AP@50) "
            f"(record id {record['id']!r})"
        )
    if not record["image"]:
        raise ConfigError(f"{source}:{line}: field 'image' is empty: grounding needs an image (id {record['id']!r})")
    return record_row(record, root)


def load_eval_rows(path: str | Path, image_root: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """Read and validate held-out grounding rows (flat rows or listwise records, mixed freely).

    Args:
        path: the JSONL file.
        image_root: folder relative image paths resolve against (default: the file's folder).
        limit: keep the first `limit` rows only (later lines are not read).

    Returns:
        Rows for `perpo.model.quickeval.evaluate_grounding`, image paths resolved.

    Raises:
        ConfigError: the file is missing or empty, or a line is not JSON, not a valid row, or names a missing image;
            the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--eval_data {path} not found")
    root = Path(image_root) if image_root else path.parent
    rows: list[dict] = []
    for number, obj in jsonl_objects(path):
        if limit is not None and len(rows) >= limit:
            break
        where = f"{path}:{number}"
        is_record = "task" in obj or "question" in obj
        row = _record_row(obj, root, path, number) if is_record else _flat_row(obj, root, where)
        if not Path(row["image"]).is_file():
            raise ConfigError(
                f"{where}: image {row['image']} not found (relative paths resolve against {root}; "
                "see --eval_image_root)"
            )
        rows.append(row)
    if not rows:
        raise ConfigError(f"{path}: no held-out rows")
    return rows


def training_frame(records: list[dict]) -> str:
    """The box frame the model is trained to answer in: the most common frame of the grounding lists."""
    frames = Counter(r["frame"] for r in records if r["task"] == "grounding")
    if len(frames) > 1:
        logger.warning("training lists mix box frames %s; flat held-out rows are scored in the most common", frames)
    return frames.most_common(1)[0][0] if frames else "padded"


class HeldoutEvaluator:
    """Scores greedy AP@50 on named sets of rows ("heldout", "train_lists"), logs it and keeps `heldout.json`.

    Args:
        sets: set name → evaluation rows (`load_eval_rows`, `record_row`).
        frame: box frame of flat rows (rows with their own target ignore it).
        out_dir: where `heldout.json` goes.
        batch_size: generation batch size.
        info: what was evaluated (file, limits), stored in `heldout.json`.
        resume: keep the evaluations of an earlier run from `heldout.json` (resumed training).
    """

    def __init__(
        self,
        sets: dict[str, list[dict]],
        *,
        frame: str,
        out_dir: str | Path,
        batch_size: int = 8,
        info: dict | None = None,
        resume: bool = False,
    ):
        self.sets = sets
        self.frame = frame
        self.path = Path(out_dir) / HELDOUT_FILE
        self.batch_size = batch_size
        self.info = info or {}
        self.history: list[dict] = []
        self.last_step: int | None = None
        if resume and self.path.is_file():
            try:
                self.history = list(json.loads(self.path.read_text())["evals"])
            except (ValueError, KeyError, TypeError):
                logger.warning("%s unreadable: held-out history starts afresh", self.path)

    @classmethod
    def from_args(cls, args, training_args, records: list[dict]) -> HeldoutEvaluator | None:
        """The evaluator `perpo train` asks for (None without --eval_data and --eval_train_lists), validated now.

        Args:
            args: `perpo.training.trainer.PerPOArguments`.
            training_args: `transformers.TrainingArguments`.
            records: the training lists (validated train records).

        Raises:
            ConfigError: a bad --eval_data (file and line named), no grounding lists for --eval_train_lists, or an
                --eval_strategy without anything to evaluate.
        """
        sets: dict[str, list[dict]] = {}
        info: dict[str, Any] = {}
        if args.eval_data:
            sets["heldout"] = load_eval_rows(args.eval_data, args.eval_image_root, args.eval_limit)
            info["eval_data"] = str(args.eval_data)
        if args.eval_train_lists:
            image_root = args.image_root or str(Path(args.data).parent)
            chosen = records[: args.eval_train_lists]
            sets["train_lists"] = [
                record_row(r, image_root) for r in chosen if r["task"] == "grounding" and r["image"]
            ]
            if not sets["train_lists"]:
                raise ConfigError(
                    f"--eval_train_lists: the first {len(chosen)} lists of {args.data} hold no grounding"
                )
            info["train_lists_from"] = str(args.data)
        if not sets:
            strategy = training_args.eval_strategy
            if strategy != "no":
                raise ConfigError(
                    f"--eval_strategy {getattr(strategy, 'value', strategy)} needs something to evaluate: "
                    "--eval_data FILE and/or --eval_train_lists K"
                )
            return None
        info |= {name: len(rows) for name, rows in sets.items()}
        return cls(
            sets,
            frame=training_frame(records),
            out_dir=training_args.output_dir,
            batch_size=training_args.per_device_eval_batch_size,
            info=info,
            resume=bool(training_args.resume_from_checkpoint),
        )

    @property
    def dataset(self) -> list[dict]:
        """Rows handed to `Trainer(eval_dataset=...)` (which only checks that there is one)."""
        return [row for rows in self.sets.values() for row in rows]

    def score(self, model, processor) -> dict[str, float]:
        """`<set>/<metric>` of greedy answers for every set (the model is left in the mode it was in)."""
        from perpo.model.quickeval import evaluate_grounding

        tokenizer = processor.tokenizer
        side = tokenizer.padding_side  # generation pads on the left; training code may expect otherwise
        try:
            logs = {}
            for name, rows in self.sets.items():
                metrics = evaluate_grounding(model, processor, rows, ".", frame=self.frame, batch_size=self.batch_size)
                logs.update({f"{name}/{key}": metrics[key] for key in METRICS})
        finally:
            tokenizer.padding_side = side
        return logs

    def evaluate(self, trainer, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Score, log through `trainer.log`, rewrite `heldout.json`, tell the callbacks; returns prefixed metrics."""
        began = time.perf_counter()
        logs = self.score(trainer.model, trainer.processing_class)
        step = trainer.state.global_step
        seconds = time.perf_counter() - began
        trainer.log(dict(logs))
        entry = {"step": step, "epoch": trainer.state.epoch, **logs, "seconds": round(seconds, 3)}
        self.history = [e for e in self.history if e.get("step", -1) < step] + [entry]
        self.last_step = step
        if trainer.is_world_process_zero():
            from perpo.io import write_json

            write_json(self.path, {**self.info, "frame": self.frame, "metrics": list(METRICS), "evals": self.history})
        shown = ", ".join(f"{k} {v:.3f}" for k, v in logs.items())
        logger.info("step %d: %s (%.1f s)", step, shown, seconds)
        metrics = {f"{metric_key_prefix}_{key}": value for key, value in logs.items()}
        trainer.control = trainer.callback_handler.on_evaluate(trainer.args, trainer.state, trainer.control, metrics)
        return metrics

    def finish(self, trainer) -> None:
        """Evaluate the final model unless the last step was just evaluated (e.g. by --eval_strategy steps)."""
        if self.last_step != trainer.state.global_step:
            trainer.evaluate()
