"""The demo's stages, each a public command called in-process: the base model, sampling, rewards and the margin
filter, training one method, evaluating with lmms-eval (`perpo.studies.demo` runs them in order; the online study
and the study scripts reuse them).

Each stage takes the demo's configuration (`DemoConfig`) and the folders of the stages before it.
"""

from __future__ import annotations

import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from perpo.config import ConfigError
from perpo.io import count_lines

if TYPE_CHECKING:
    from perpo.studies.demo import DemoConfig


def prepare_base(cfg: DemoConfig, out: Path) -> tuple[Path, Path]:
    """Stage 1: the synthetic benchmark (scenes or pages) and the base model, in `out/data` and `out/models/base`."""
    from perpo.embedded.warmup import WarmupConfig, run_warmup

    if cfg.track == "ocr":
        from perpo.embedded.synth_ocr import OCRSpec, build_synth_ocr

        counts = {"train": 60, "val": 24, "test": 12} if cfg.quick else {"train": 1000, "val": 200, "test": 200}
        data = build_synth_ocr(out / "data", seed=cfg.data_seed, spec=OCRSpec(counts=counts))
    else:
        from perpo.embedded.synth import SynthSpec, build_synth

        counts = {"train": 400, "val": 60, "test": 60} if cfg.quick else {"train": 4000, "val": 300, "test": 300}
        data = build_synth(out / "data", seed=cfg.data_seed, spec=SynthSpec(counts=counts))
    base = out / "models" / "base"
    if cfg.warmup_steps:
        steps = cfg.warmup_steps
        run_warmup(WarmupConfig(data=str(data), out=str(base), task=cfg.track, steps=steps, eval_every=steps))
        return data, base
    source = Path(cfg.base_model)
    if not (source / "config.json").is_file():
        warmup = "1000 (about 8 CPU minutes)" if cfg.track == "ocr" else "3000 (about 45 CPU minutes)"
        raise ConfigError(f"no model at {source}. Pass --base_model DIR, or warm one up with --warmup_steps {warmup}.")
    if base.exists():
        shutil.rmtree(base)
    shutil.copytree(source, base)
    return data, base


def page_records(data: Path, split: str) -> list[dict]:
    """OCR instruction records of one split of a `perpo data synth-ocr` folder, read through the Fox reader."""
    from perpo.data.sources import fox_instructions

    return fox_instructions(data / split / "en_page_ocr.json", data / split / "en_pdf_png")


def base_on_val(data: Path, base: Path, track: str = "grounding") -> dict:
    """The base model's greedy AP@50 (ocr: edit distance) on the val split, in-process (`perpo.model.quickeval`)."""
    from perpo.io import read_jsonl
    from perpo.model.modeling import load_model, load_processor
    from perpo.model.quickeval import evaluate_grounding, evaluate_ocr

    model = load_model(base, dtype="float32")
    if track == "ocr":
        metrics = evaluate_ocr(model, load_processor(base), page_records(data, "val"), batch_size=64)
        print(
            f"base model: edit distance {metrics['edit_dist']:.3f} on {int(metrics['n'])} val pages "
            f"(exact pages {100 * metrics['exact']:.1f}%)",
            flush=True,
        )
        return metrics
    rows = read_jsonl(data / "synth_val.jsonl")
    metrics = evaluate_grounding(model, load_processor(base), rows, data, frame="padded", batch_size=64)
    print(
        f"base model: AP@50 {100 * metrics['ap50']:.1f}% on {int(metrics['n'])} val expressions "
        f"(mean IoU {metrics['iou']:.3f}, parse failures {100 * metrics['parse_fail']:.1f}%)",
        flush=True,
    )
    return metrics


def sample_lists(cfg: DemoConfig, data: Path, base: Path, lists: Path) -> None:
    """Stage 2: N responses per train-split instruction from the base model (`perpo sample`)."""
    from perpo.data import sources
    from perpo.sampling.sample import SampleConfig, run_sample

    pool = page_records(data, "train") if cfg.track == "ocr" else sources.synth_instructions(data, "train")
    instructions = sources.equal_share_sample(pool, cfg.instructions, cfg.seed)
    sources.write_records(lists / "instructions.jsonl", instructions)
    run_sample(
        SampleConfig(
            model=str(base),
            instructions=str(lists / "instructions.jsonl"),
            out=str(lists / "samples.jsonl"),
            n=cfg.n,
            temperature=cfg.temperature,
            max_new_tokens=48 if cfg.track == "ocr" else 24,  # a page is at most 43 characters, a box 6 tokens
            batch_size=16,
            seed=cfg.seed,
            device="cpu",
            dtype="float32",
        )
    )


def build_lists(cfg: DemoConfig, lists: Path) -> dict:
    """Stage 3: rewards (IoU, or 1 - edit distance) and the margin filter (`perpo build-data`); returns statistics."""
    from perpo.data.build import BuildDataConfig, run_build_data

    stats = run_build_data(BuildDataConfig(samples=str(lists / "samples.jsonl"), out=str(lists), margin=cfg.margin))
    kept = stats["lists"]["kept"]
    reward = "1 - edit distance" if cfg.track == "ocr" else "IoU"
    print(f"kept {kept} of {stats['lists']['in']} lists with {reward} margin >= {cfg.margin}")
    if kept < 2:
        raise ConfigError(f"only {kept} lists passed margin {cfg.margin}: lower --margin or sample more")
    return stats


def optimizer_steps(cfg: DemoConfig, lists: Path) -> int:
    """Optimizer steps of one demo method: its epochs over the kept lists (`lists/train.jsonl`) at its batch."""
    return math.ceil(math.ceil(count_lines(lists / "train.jsonl") / cfg.batch_size) * cfg.epochs)


def train_method(
    cfg: DemoConfig,
    method: str,
    base: Path,
    lists: Path,
    out: Path,
    *,
    lr: float | None = None,
    beta: float | None = None,
) -> Path:
    """Stage 4, one method: LoRA training from the base on the kept lists (`perpo train`).

    `lr` and `beta` override the configuration's choice for `method` (the hyper-parameter search uses them).
    """
    from transformers import TrainingArguments
    from transformers.integrations import is_tensorboard_available

    from perpo.console import TrainLog
    from perpo.training.trainer import PerPOArguments, run_train

    steps = optimizer_steps(cfg, lists)
    lr = cfg.lr(method) if lr is None else lr
    beta = cfg.beta(method) if beta is None else beta
    val = lists.parent / "data" / "synth_val.jsonl"  # the demo's layout: <out>/data beside <out>/lists
    args = PerPOArguments(
        model_name_or_path=str(base),
        data=str(lists / "train.jsonl"),
        loss=method,
        n=cfg.n,
        beta=beta,
        gamma=cfg.gamma,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        dtype="float32",
        eval_data=str(val) if cfg.heldout and val.is_file() else None,
        eval_limit=cfg.heldout or None,
        eval_train_lists=cfg.heldout,
    )
    training = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=cfg.batch_size,
        num_train_epochs=cfg.epochs,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,
        logging_steps=max(1, min(5, steps)),  # a short run still logs its statistics
        report_to=["tensorboard"] if is_tensorboard_available() else [],  # <out>/runs/
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
    )
    settings = f"lr {lr:g}" + ("" if method == "sft" else f", β {beta:g}")
    shutil.rmtree(out, ignore_errors=True)  # the demo trains afresh (a rerun in a used folder would be refused)
    return run_train(args, training, callbacks=[TrainLog(Path(out) / "train_log.jsonl", f"{method} ({settings})")])


def resolve_threads(threads: int) -> int:
    """torch threads of the stages that run alone: `threads`; 0: OMP_NUM_THREADS when set, else every usable core."""
    if threads > 0:
        return threads
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        pass
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may run on (containers, taskset)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def evaluate_models(
    cfg: DemoConfig,
    data: Path,
    base: Path,
    adapters: dict[str, Path],
    out: Path,
    threads: int = 2,
    include_base: bool = True,
) -> dict[str, Path]:
    """Stage 5: lmms-eval on the base and every trained model, two runs at a time (`threads // 2` torch threads each).

    Every model gets AP@50 on the test split (padded and original frames) and with a blank image in place of the
    scene (`_blankimg`: the same prompt with a uniform image, so the gap to the real image is what the model reads
    from the picture; the tiny model writes no box at all without an image, so `_noimg` would score 0 for every
    model); the base and PerPO also get the best-of-20 run at T = 0.5 (Figure 1b: the accuracy that sampling could
    reach, and how much PerPO harvests); `--quick` runs best-of-4 on 24 expressions. Prints one progress bar over
    the models, then one summary line per model.
    """
    from concurrent.futures import as_completed

    from tqdm import tqdm

    from perpo.console import eval_summary
    from perpo.evaluation import EvalConfig, run_eval

    runs = {}
    for name, adapter in (({"base": None} if include_base else {}) | adapters).items():
        if cfg.track == "ocr":
            # The test pages; their answers are at most 43 characters (the Fox tasks allow 4,096 new tokens, past
            # the tiny model's 512 positions).
            tasks = ["perpo_fox_en_page", "perpo_fox_en_page_blankimg"]
            best_of = "perpo_fox_en_page_bon20"
            data_dirs = {"fox_dir": str(data / "test"), "max_new_tokens": 48}
        else:
            tasks = ["perpo_synth_test", "perpo_synth_test_orig", "perpo_synth_test_blankimg"]
            best_of = "perpo_synth_test_bon4" if cfg.quick else "perpo_synth_test_bon20"
            data_dirs = {"synth_dir": str(data)}
        if name in ("base", "perpo", "perpo_iter", "grpo"):
            tasks.append(best_of)
        runs[name] = EvalConfig(
            model=str(base),
            adapter=str(adapter) if adapter else None,
            tasks=tasks,
            output_dir=str(out / name),
            seed=cfg.seed,
            batch_size=64,
            device="cpu",
            limit=24 if cfg.quick else None,
            **data_dirs,
        )
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(max(1, threads // 2))  # the evaluation processes share the cores
    summaries = {}
    try:
        with (
            ThreadPoolExecutor(max_workers=2) as pool,
            tqdm(total=len(runs), desc="lmms-eval", unit="model", dynamic_ncols=True) as bar,
        ):
            futures = {pool.submit(run_eval, run, None): name for name, run in runs.items()}
            for future in as_completed(futures):
                summaries[futures[future]] = future.result()["summary"]
                bar.update(1)
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    logs = out.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for name, run in runs.items():
        print("  " + eval_summary(name, summaries[name]), flush=True)
        _link(logs / f"lmms_eval_{name}.log", Path(run.output_dir) / "lmms_eval.log")
    return {name: Path(run.output_dir) for name, run in runs.items()}


def _link(link: Path, target: Path) -> None:
    """`link` → `target` (relative symlink), or a copy where links cannot be made."""
    link.unlink(missing_ok=True)
    try:
        link.symlink_to(os.path.relpath(target, link.parent))
    except OSError:
        shutil.copyfile(target, link)
