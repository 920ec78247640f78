"""Documents per second of `perpo_llava` (batched) against lmms-eval's stock `llava_hf` (one document at a time).

Same model, same task, same documents, in one process: each wrapper runs lmms-eval's own evaluation loop
(`lmms_eval.evaluator.simple_evaluate` on `perpo_synth_val`, greedy) several times; the time inside the wrapper's
`generate_until` (preprocessing + generation, what batching changes) gives docs/s, and the medians give the ratio.
The greedy answers of the two wrappers are compared as well (they should be identical).

    python benchmarks/eval_bench.py                      # the warmed-up asset if present, else a fresh tiny LLaVA
    python benchmarks/eval_bench.py --docs 96 --repeats 5 --threads 2 --device cpu

Prints one table and the ratio with the machine name; `--out FILE` also writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from perpo.config import cpu_model

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "perpo" / "assets" / "tiny_llava_base"
TASK = "perpo_synth_val"

logger = logging.getLogger("eval_bench")


def machine(device: str, threads: int) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)} ({platform.node()})"
    cpu = cpu_model()
    return f"{cpu}, {os.cpu_count()} cores, torch threads {threads} ({platform.node()})"


def prepare(work: Path, docs: int, model: Path | None) -> Path:
    """Write the synthetic data (and point PERPO_SYNTH_DIR at it); return the model to benchmark: `model`, else the
    warmed-up asset when present, else a freshly built tiny LLaVA (the embedded default's size)."""
    from perpo.embedded.synth import SynthSpec, build_synth
    from perpo.embedded.tiny import TinySpec, save_tiny_model

    build_synth(work / "synth", seed=0, spec=SynthSpec(counts={"val": docs}), progress=False)
    os.environ["PERPO_SYNTH_DIR"] = str(work / "synth")
    if model is not None:
        return model
    if (ASSET / "model.safetensors").is_file():
        return ASSET
    return save_tiny_model(work / "tiny_llava", TinySpec())


def timed_runs(lm, manager, docs: int, repeats: int) -> tuple[list[float], list[str]]:
    """Run the task `repeats` times; return docs/s per run (time inside generate_until) and the last answers."""
    from lmms_eval.evaluator import simple_evaluate

    inner = lm.generate_until
    spent: list[float] = []

    def generate_until(requests):
        began = time.perf_counter()
        answers = inner(requests)
        spent.append(time.perf_counter() - began)
        return answers

    lm.generate_until = generate_until
    lm.clean = lambda: None  # lmms-eval frees the model after each evaluation; keep it for the next run
    rates, answers = [], []
    for _ in range(repeats):
        out = simple_evaluate(model=lm, tasks=[TASK], limit=docs, task_manager=manager, log_samples=True,
                              verbosity="WARNING", bootstrap_iters=0)  # fmt: skip
        rates.append(docs / spent[-1])
        answers = [str(s["filtered_resps"][0]).strip() for s in out["samples"][TASK]]
    return rates, answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=64, help="documents of perpo_synth_val (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per wrapper; the median is reported (default 3)")
    parser.add_argument("--batch_size", type=int, default=16, help="perpo_llava batch size (default 16)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: asset, else a tiny LLaVA)")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch
    from loguru import logger as lmms_logger

    torch.set_num_threads(args.threads)
    lmms_logger.remove()
    lmms_logger.add(sys.stderr, level="WARNING")
    import lmms_eval.models  # noqa: F401  (runs the perpo entry point: tasks + perpo_llava)
    from lmms_eval.models.chat.llava_hf import LlavaHf
    from lmms_eval.tasks import TaskManager

    from lmms_tasks.models.perpo_llava import PerpoLlava

    with tempfile.TemporaryDirectory(prefix="eval_bench_") as tmp:
        model = prepare(Path(tmp), args.docs, args.model)
        manager = TaskManager(include_defaults=False)
        dtype = "float32" if args.device == "cpu" else "bfloat16"
        wrappers = {
            f"perpo_llava (batch {args.batch_size})": PerpoLlava(
                pretrained=str(model), device=args.device, dtype=dtype, batch_size=args.batch_size
            ),
            "llava_hf (batch 1)": LlavaHf(
                pretrained=str(model), device=args.device, device_map=args.device, dtype=dtype
            ),
        }
        rates, answers = {}, {}
        for name, lm in wrappers.items():
            logger.info("timing %s on %d docs of %s, %d runs", name, args.docs, TASK, args.repeats)
            rates[name], answers[name] = timed_runs(lm, manager, args.docs, args.repeats)
    (ours, stock) = (statistics.median(r) for r in rates.values())
    where = machine(args.device, args.threads)
    print(f"\neval_bench: {TASK}, {args.docs} docs, greedy, model {model.name}, {args.repeats} runs each, median")
    print(f"machine: {where}")
    for name, values in rates.items():
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(f"  {name:<24} {statistics.median(values):8.1f} docs/s   (runs: {shown})")
    same = len(set(map(tuple, answers.values()))) == 1
    print(f"  speed-up perpo_llava / llava_hf: {ours / stock:.2f}x   (identical greedy answers: {same})")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "task": TASK,
                    "docs": args.docs,
                    "machine": where,
                    "model": str(model),
                    "docs_per_s": rates,
                    "ratio": ours / stock,
                    "identical": same,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
