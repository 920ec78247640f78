"""`perpo demo` / `make demo`: the embedded default end to end on a laptop CPU.

Stages: render the synthetic grounding benchmark → take the warmed-up tiny LLaVA (the committed asset, or a
fresh warm-up with `--warmup_steps N`) → greedy AP@50 on the synthetic val split. Everything lands in one output
folder with the resolved config.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from perpo.config import ConfigError, opt, save_resolved

logger = logging.getLogger(__name__)

ASSET = Path(__file__).parent / "assets" / "tiny_llava_base"


@dataclass
class DemoConfig:
    """Arguments of `perpo demo`."""

    out: str = opt("runs/demo", help="output folder")
    seed: int = opt(0, help="seed of the synthetic data (the committed base model was warmed up on seed 0)")
    quick: bool = opt(False, help="a minute-scale smoke run: tiny splits, fewer evaluation expressions")
    base_model: str = opt(str(ASSET), help="warmed-up base model folder (default: the committed asset)")
    warmup_steps: int = opt(0, help="if > 0, warm up a fresh tiny LLaVA for this many steps instead")
    threads: int = opt(0, help="torch CPU threads; 0 keeps torch's default")

    def __post_init__(self):
        if self.warmup_steps < 0:
            raise ConfigError("warmup_steps must be >= 0")


class Stages:
    """Prints which stage runs and the time so far."""

    def __init__(self, total: int):
        self.total, self.index, self.began = total, 0, time.perf_counter()

    def start(self, name: str) -> None:
        self.index += 1
        elapsed = time.perf_counter() - self.began
        print(f"[{self.index}/{self.total}] {name}  (elapsed {elapsed / 60:.1f} min)", flush=True)


def run_demo(cfg: DemoConfig) -> dict:
    import torch

    from perpo.data.synth import SynthSpec, build_synth
    from perpo.io import read_jsonl, write_json
    from perpo.modeling import load_model, load_processor
    from perpo.quickeval import evaluate_grounding
    from perpo.warmup import WarmupConfig, run_warmup

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(out, "demo_config", cfg)
    stages = Stages(3)

    stages.start("synthetic grounding benchmark")
    counts = {"train": 400, "val": 60, "test": 60} if cfg.quick else {"train": 4000, "val": 300, "test": 300}
    data = build_synth(out / "data", seed=cfg.seed, spec=SynthSpec(counts=counts))

    stages.start("base model (warmed-up tiny LLaVA)")
    base = out / "models" / "base"
    if cfg.warmup_steps:
        run_warmup(WarmupConfig(data=str(data), out=str(base), steps=cfg.warmup_steps, eval_every=cfg.warmup_steps))
    else:
        source = Path(cfg.base_model)
        if not (source / "config.json").is_file():
            raise ConfigError(
                f"no model at {source}. Pass --base_model DIR, or warm one up with --warmup_steps 3000 "
                "(about 45 CPU minutes)."
            )
        if base.exists():
            shutil.rmtree(base)
        shutil.copytree(source, base)

    stages.start("AP@50 on the synthetic val split (greedy)")
    model = load_model(base, dtype="float32")
    processor = load_processor(base)
    rows = read_jsonl(data / "synth_val.jsonl")
    metrics = evaluate_grounding(model, processor, rows, data, frame="padded", progress=True)
    summary = {"base": metrics, "seconds": round(time.perf_counter() - stages.began, 1)}
    write_json(out / "summary.json", summary)
    print(
        f"\nbase model: AP@50 {100 * metrics['ap50']:.1f}% on {int(metrics['n'])} val expressions "
        f"(mean IoU {metrics['iou']:.3f}, parse failures {100 * metrics['parse_fail']:.1f}%)"
    )
    print(f"done in {summary['seconds'] / 60:.1f} min; results in {out}")
    return summary
