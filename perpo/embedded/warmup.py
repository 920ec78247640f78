"""Warm-up: supervised training of the tiny LLaVA on a synthetic train split, to a "moderately capable" base.

The paper starts PerPO from models that already answer in the task's format and get a fair share right
(LLaVA-1.5-7B: about 50% AP@50 on RefCOCO val). `perpo warmup` brings the tiny model into that regime: plain
next-token cross-entropy on the ground-truth answers, AdamW with warm-up and cosine decay, a greedy check on the
val split every `eval_every` steps (AP@50 for grounding, edit distance for page OCR), and a resumable checkpoint
so an interrupted run loses at most `save_every` steps. The final model (with its processor) is written
atomically to `out`.

Tasks: `grounding` reads a `perpo data synth` folder (boxes, optionally written loose); `ocr` reads a `perpo data
synth-ocr` folder through the Fox reader (`perpo.data.sources.fox_instructions`), so the warm-up asks exactly
the question the perpo_fox tasks and `perpo sample` ask.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from perpo.config import ConfigError, check_numbers, opt
from perpo.data.collate import sft_batch
from perpo.io import atomic_dir, load_image, read_jsonl, write_json
from perpo.model.families import LLAVA
from perpo.model.prompts import chat_prompt
from perpo.model.quickeval import evaluate_grounding, evaluate_ocr, row_question
from perpo.objectives.boxes import FRAMES, format_box, gt_box_in_frame

logger = logging.getLogger(__name__)
TASKS = ("grounding", "ocr")


@dataclass
class WarmupConfig:
    """Arguments of `perpo warmup`."""

    data: str = opt(
        help="folder written by `perpo data synth` (grounding: synth_train.jsonl, synth_val.jsonl) or `perpo data "
        "synth-ocr` (ocr: train/ and val/ in the Fox layout)"
    )
    out: str = opt(help="where the warmed-up model (+ processor, warmup_log.json) is written")
    task: str = opt("grounding", help="grounding (boxes) or ocr (page transcription)")
    model: str | None = opt(None, help="start from this checkpoint folder; default: a fresh tiny LLaVA")
    steps: int = opt(3000, ge=1, help="optimizer steps")
    batch_size: int = opt(48, ge=1, help="expressions per step")
    lr: float = opt(1e-3, gt=0, help="peak learning rate (AdamW; linear warm-up then cosine to 5%%)")
    weight_decay: float = opt(0.0, ge=0, help="AdamW weight decay")
    warmup_steps: int = opt(50, ge=0, help="linear learning-rate warm-up steps")
    frame: str = opt("padded", help="box frame of the answers: padded (LLaVA-1.5 square) or original")
    loose_share: float = opt(
        0.0,
        ge=0,
        le=1,
        help="share of answers written in a loose annotation convention (each side pushed out by --loose_margin "
        "of the box size); > 0 builds a base that knows the exact box but is misaligned in what it writes "
        "(docs/miniature.md)",
    )
    loose_margin: float = opt(
        0.3, ge=0, le=1, help="how far a loose answer's sides move out, as a fraction of the box size"
    )
    eval_every: int = opt(250, ge=1, help="greedy AP@50 (ocr: edit distance) on val every this many steps")
    eval_size: int = opt(200, ge=1, help="val expressions (ocr: pages) used by that check")
    save_every: int = opt(250, ge=1, help="resumable checkpoint every this many steps (<out>.checkpoint)")
    seed: int = opt(0, help="seed of the initial weights and the batch order")
    threads: int = opt(0, ge=0, help="torch CPU threads; 0 keeps torch's default")
    fp16: bool = opt(False, help="store the final weights in float16 (halves the size; used for the asset)")

    def __post_init__(self):
        check_numbers(self)
        if self.frame not in FRAMES:
            raise ConfigError(f"frame must be one of {FRAMES}, got {self.frame!r}")
        if self.task not in TASKS:
            raise ConfigError(f"--task must be one of {TASKS}, got {self.task!r}")
        if self.task == "ocr" and self.loose_share:
            raise ConfigError("--loose_share writes loose boxes: it applies to --task grounding only")


def loosen_box(box: tuple[float, ...], margin: float) -> tuple[float, ...]:
    """A normalised xyxy box with each side pushed out by `margin` × its width or height, clipped to [0, 1]."""
    x1, y1, x2, y2 = box
    dx, dy = margin * (x2 - x1), margin * (y2 - y1)
    return max(0.0, x1 - dx), max(0.0, y1 - dy), min(1.0, x2 + dx), min(1.0, y2 + dy)


def _split_rows(cfg: WarmupConfig, data: Path, split: str) -> list[dict]:
    """Grounding: the flat rows of `synth_<split>.jsonl`; ocr: the Fox-layout pages of `<split>/` as instruction
    records (absolute image paths, the Fox question, the page text as answer)."""
    if cfg.task == "ocr":
        from perpo.data.sources import fox_instructions

        folder = data / split
        if not (folder / "en_page_ocr.json").is_file():
            raise ConfigError(
                f"{folder / 'en_page_ocr.json'} not found: render pages with `perpo data synth-ocr --out {data}`"
            )
        return fox_instructions(folder / "en_page_ocr.json", folder / "en_pdf_png")
    path = data / f"synth_{split}.jsonl"
    if not path.is_file():
        raise ConfigError(f"{path} not found: render the benchmark with `perpo data synth --out {data}`")
    return read_jsonl(path)


def _lr_lambda(warmup: int, total: int):
    def scale(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return scale


def run_warmup(cfg: WarmupConfig) -> dict:
    """Train, evaluate periodically, write the model to `cfg.out`; return the training log."""
    from tqdm import tqdm
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from perpo.embedded.tiny import TinySpec, build_model, build_processor

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = Path(cfg.data)
    train_rows, val_rows = _split_rows(cfg, data, "train"), _split_rows(cfg, data, "val")[: cfg.eval_size]
    out = Path(cfg.out)
    ckpt = out.with_name(out.name + ".checkpoint")

    torch.manual_seed(cfg.seed)
    if (ckpt / "state.pt").is_file():
        model = LlavaForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(ckpt)
        logger.info("resuming the warm-up from %s", ckpt)
    elif cfg.model:
        model = LlavaForConditionalGeneration.from_pretrained(cfg.model, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(cfg.model)
    else:
        model, processor = build_model(TinySpec(seed=cfg.seed)), build_processor(TinySpec())
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.warmup_steps, cfg.steps))
    log = {"config": asdict(cfg), "steps": [], "evals": [], "seconds": 0.0}
    start_step = 0
    if (ckpt / "state.pt").is_file():
        state = torch.load(ckpt / "state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        log, start_step = state["log"], state["step"]
        log.setdefault("resumed", []).append({"step": start_step, "config": asdict(cfg)})

    prompts = {}  # question → prompt text, memoised (few distinct expressions)
    rng = random.Random(cfg.seed)  # the batch order; restored on resume so it continues the same sequence
    if start_step:
        rng.setstate(state["python_rng"])
    began = time.perf_counter() - log["seconds"]
    bar = tqdm(range(start_step, cfg.steps), desc="warm-up", unit="step", initial=start_step, total=cfg.steps)
    for step in bar:
        batch_rows = [train_rows[rng.randrange(len(train_rows))] for _ in range(cfg.batch_size)]
        texts = []
        for row in batch_rows:
            question = row_question(row)  # a record's own (ocr), else the grounding question of the expression
            if question not in prompts:
                prompts[question] = chat_prompt(processor, question)
            texts.append(prompts[question])
        if cfg.task == "ocr":
            answers = [r["answer"] for r in batch_rows]
        else:
            boxes = [gt_box_in_frame(r["bbox"], r["width"], r["height"], cfg.frame) for r in batch_rows]
            if cfg.loose_share:  # drawn only when asked, so the batch order of a plain warm-up is unchanged
                boxes = [loosen_box(b, cfg.loose_margin) if rng.random() < cfg.loose_share else b for b in boxes]
            answers = [format_box(b) for b in boxes]
        images = [load_image(data / r["image"]) for r in batch_rows]
        batch = sft_batch(processor, texts, images, answers, LLAVA)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        log["steps"].append({"step": step + 1, "loss": round(loss.item(), 5)})
        bar.set_postfix(loss=f"{loss.item():.3f}")
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            if cfg.task == "ocr":
                metrics = evaluate_ocr(model, processor, val_rows)
                logger.info(
                    "step %d: val edit distance %.3f, exact pages %.3f", done, metrics["edit_dist"], metrics["exact"]
                )
            else:
                metrics = evaluate_grounding(model, processor, val_rows, data, frame=cfg.frame)
                logger.info(
                    "step %d: val AP@50 %.3f, parse failures %.3f", done, metrics["ap50"], metrics["parse_fail"]
                )
            metrics.update(step=done, seconds=round(time.perf_counter() - began, 1))
            log["evals"].append(metrics)
        log["seconds"] = time.perf_counter() - began
        if done % cfg.save_every == 0 and done < cfg.steps:
            with atomic_dir(ckpt) as tmp:
                model.save_pretrained(tmp)
                processor.save_pretrained(tmp)
                torch.save(
                    {
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "log": log,
                        "step": done,
                        "python_rng": rng.getstate(),
                    },
                    tmp / "state.pt",
                )
    with atomic_dir(out) as tmp:
        if cfg.fp16:
            model = model.to(torch.float16)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        spec_file = Path(cfg.model or "") / "perpo_tiny.json"
        spec = json.loads(spec_file.read_text()) if cfg.model and spec_file.is_file() else asdict(TinySpec())
        (tmp / "perpo_tiny.json").write_text(json.dumps(spec, indent=2) + "\n")
        write_json(tmp / "warmup_log.json", log)
    if ckpt.exists():
        import shutil

        shutil.rmtree(ckpt)
    return log
