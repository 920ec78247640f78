"""A quiet console for long runs (`perpo demo`): progress bars and one-line summaries on screen, the rest in files.

- `quiet_console(logs)`: while active, Python logging (perpo, transformers, peft, DeepSpeed, ...) and Python
  warnings go to `<logs>/demo.log`; the console keeps errors, and perpo's own warnings. transformers' own
  progress bars (loading weights) are switched off.
- `TrainLog`: a `transformers.TrainerCallback` that draws one progress bar per training run and writes each entry of
  the trainer's log history (`trainer.state.log_history`) as a JSON line; `perpo.training.trainer.run_train(...,
  callbacks=[...])` uses it in place of the dict-printing console callback.
- `training_summary` / `eval_summary`: the one-line summaries of a training run (from its log history) and of an
  evaluation run (from its results).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

OWN_LOGGERS = ("perpo", "reports", "lmms_tasks", "scripts", "__main__")
"""Loggers whose warnings stay on the console (errors of every logger do)."""
SELF_HANDLED = ("DeepSpeed",)
"""Library loggers with their own console handler and no propagation (DeepSpeed prints to stdout)."""


class _ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name.split(".")[0] in OWN_LOGGERS
        return record.levelno >= logging.ERROR or (own and record.levelno >= logging.WARNING)


class _ToFile(logging.Filter):
    """On a logger with its own console handler: copy each record to `handler`, let only errors through."""

    def __init__(self, handler: logging.Handler):
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.handler.level:
            self.handler.handle(record)
        return record.levelno >= logging.ERROR


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


@contextmanager
def quiet_console(logs: Path, name: str = "demo.log") -> Iterator[Path]:
    """Send logging and warnings to `logs/name` (INFO and up); keep errors and perpo's warnings on the console.

    Everything is restored on exit. Yields the log file's path.
    """
    import transformers.utils.logging as hf_logging

    logs.mkdir(parents=True, exist_ok=True)
    path = logs / name
    file_handler = logging.FileHandler(path, mode="w", encoding="utf-8")  # one run, one log
    file_handler.setLevel(min(logging.INFO, logging.getLogger().getEffectiveLevel()))
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    saved_level = root.level
    root.setLevel(min(saved_level, logging.INFO) if saved_level else saved_level)
    root.addHandler(file_handler)
    console_filter = _ConsoleFilter()
    consoles = [h for h in root.handlers if _is_console(h)]
    added_console = None
    if not consoles:  # nothing configured logging: errors still need a way to the screen
        added_console = logging.StreamHandler(sys.stderr)
        root.addHandler(added_console)
        consoles = [added_console]
    for handler in consoles:
        handler.addFilter(console_filter)
    to_file = _ToFile(file_handler)
    for library in SELF_HANDLED:
        logging.getLogger(library).addFilter(to_file)
    # transformers logs through its own handler and does not propagate: route it to the root handlers instead
    hf_logging.get_verbosity()  # configures transformers' root logger (its console handler) if not yet done
    hf_propagates = logging.getLogger("transformers").propagate
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    hf_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    logging.captureWarnings(True)
    try:
        yield path
    finally:
        logging.captureWarnings(False)
        if hf_bars:
            hf_logging.enable_progress_bar()
        if not hf_propagates:
            hf_logging.disable_propagation()
        hf_logging.enable_default_handler()
        for library in SELF_HANDLED:
            logging.getLogger(library).removeFilter(to_file)
        for handler in consoles:
            handler.removeFilter(console_filter)
        if added_console is not None:
            root.removeHandler(added_console)
        root.removeHandler(file_handler)
        root.setLevel(saved_level)
        file_handler.close()


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class TrainLog(TrainerCallback):
    """One progress bar for a training run, and its log history as JSON lines in `path` (replaced at the start).

    Entries logged after training (the held-out evaluation of the final model) are appended too.
    """

    def __init__(self, path: Path, desc: str):
        self.path = Path(path)
        self.desc = desc
        self.bar = None
        self.history: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm import tqdm

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("", encoding="utf-8")
        self.bar = tqdm(total=state.max_steps, desc=self.desc, unit="step", leave=True, dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        entry = dict(state.log_history[-1]) if state.log_history else {**(logs or {}), "step": state.global_step}
        self.history.append(entry)
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in entry.items()}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(clean) + "\n")
        if self.bar is not None and "loss" in entry:
            shown = {"loss": entry["loss"], "acc": entry.get("rewards/accuracy")}
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items() if _finite(v)}, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            self.bar.close()
            self.bar = None


def _last(history: Sequence[dict], key: str):
    for entry in reversed(history):
        if _finite(entry.get(key)):
            return float(entry[key])
    return None


def training_summary(name: str, history: Sequence[dict], lists: int, width: int = 8) -> str:
    """`perpo  trained 508 lists × 3 epochs in 62 s (24.6 lists/s), final reward accuracy 0.91, ...`.

    From a trainer's log history: time, epochs and (without interval throughput) the rate from the final entry
    (`train_runtime`, `epoch`, `train_samples_per_second`), the rate from `throughput/lists_per_s`, then the last
    logged `rewards/accuracy` (else the loss), `logratio/chosen` / `logratio/rejected`, `train_lists/ap50` and
    `heldout/ap50`, each only when logged.
    """
    seconds = _last(history, "train_runtime")
    epochs = _last(history, "epoch")
    rates = [e["throughput/lists_per_s"] for e in history if _finite(e.get("throughput/lists_per_s"))]
    rate = sum(rates) / len(rates) if rates else _last(history, "train_samples_per_second")
    text = f"{name:<{width}} trained {lists} lists"
    if epochs is not None:
        text += f" × {epochs:g} epoch{'' if epochs == 1 else 's'}"
    if seconds is not None:
        text += f" in {seconds:.0f} s" if seconds >= 9.5 else f" in {seconds:.1f} s"
    if rate is not None:
        text += f" ({rate:.1f} lists/s)"
    parts = []
    accuracy = _last(history, "rewards/accuracy")
    if accuracy is not None:
        parts.append(f"final reward accuracy {accuracy:.2f}")
    else:
        loss = _last(history, "loss")
        loss = _last(history, "train_loss") if loss is None else loss
        if loss is not None:
            parts.append(f"final loss {loss:.3g}")
    chosen, rejected = _last(history, "logratio/chosen"), _last(history, "logratio/rejected")
    if chosen is not None and rejected is not None:
        parts.append(f"log-ratio chosen {chosen:+.2f} / rejected {rejected:+.2f}")
    heldout, fitted = _last(history, "heldout/ap50"), _last(history, "train_lists/ap50")
    if fitted is not None:  # train-list beside held-out accuracy: a gap between them is over-fitting
        parts.append(f"AP@50 on its lists {100 * fitted:.1f}%")
    if heldout is not None:
        parts.append(f"held-out AP@50 {100 * heldout:.1f}%")
    return ", ".join([text, *parts])


EVAL_COLUMNS = (
    ("perpo_synth_test", "ap50", "test AP@50"),
    ("perpo_synth_test_blankimg", "ap50", "blank image"),
    ("perpo_synth_test_noimg", "ap50", "no image"),
    ("perpo_synth_test_bon20", "ap50_best", "best-of-20 oracle"),
    ("perpo_synth_test_bon4", "ap50_best", "best-of-4 oracle"),
    ("perpo_fox_en_page", "edit_dist", "test edit distance"),  # the OCR track (`perpo demo --track ocr`)
    ("perpo_fox_en_page_blankimg", "edit_dist", "blank page"),
    ("perpo_fox_en_page_bon20", "edit_dist_best", "best-of-20 oracle"),
)


def eval_summary(name: str, summary: dict[str, dict[str, float]], width: int = 8) -> str:
    """`perpo    test AP@50 61.2%, blank image 1.9% (no box in 40%), best-of-20 oracle 80.1%` (`run_eval` summary)."""
    parts = []
    for task, metric, label in EVAL_COLUMNS:
        value = summary.get(task, {}).get(metric)
        if _finite(value):
            parts.append(f"{label} {value:.3f}" if "edit_dist" in metric else f"{label} {100 * value:.1f}%")
            failed = summary[task].get("parse_fail")
            if task != "perpo_synth_test" and _finite(failed) and failed > 0:  # an image ablation: boxes written?
                parts[-1] += f" (no box in {100 * failed:.0f}%)"
    return f"{name:<{width}} " + (", ".join(parts) if parts else "no synthetic test results")
