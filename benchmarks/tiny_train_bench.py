"""Training throughput of `perpo train` on the embedded tiny LLaVA (issue 14): today's path vs the fast path.

The configuration is the demo's PerPO training: the committed base `perpo/assets/tiny_llava_base` (2 M parameters),
N = 20 responses per list, 8 lists per optimizer step, LoRA r 32 / alpha 64 on every linear layer of the language
model plus the projector as a peft `modules_to_save`, loss perpo (beta 0.5, gamma 0.5), reference = the policy
with its adapters disabled, fp32 on CPU, AdamW lr 1e-4 cosine, 3 epochs, `perpo.training.trainer.run_train` end to end
(HF Trainer, data loading, logging every 5 steps). Two paths, on the same lists, alternating in one process:

    today   layout shared (one row per list), every list re-encoded every epoch, a reference pass every step,
            peft's LoRA forward: `perpo train` as it was before issue 14 (--layout shared --cache_reference false
            --cache_inputs false --fuse_lora false);
    fast    the new defaults: layout tree (the responses of a list merged into a token tree: common prefixes
            computed once, the leaves (EOS) targets but not inputs, the lists of a batch end to end without
            padding with attention list by list, the last layer run only where a token is predicted), each list
            encoded once (`ListCollator(cache=True)`), each list's reference log-probs kept after its first pass
            (`ReferenceMemo`: no reference pass in epochs 2+), LoRA as one fused addmm (`fuse_lora`).

Lists: `--responses sampled` (default): the demo's recipe on a small scale, `perpo sample` from the base (N 20,
T 0.5, 24 new tokens) on synthetic-benchmark instructions, IoU rewards, margin 0.8 (`perpo build-data`);
`--responses jitter`: the ground-truth box with uniform +-0.3 jitter per coordinate, IoU rewards (no sampling;
fewer shared prefixes than real samples). Built once under --work and reused.

Equality: before timing, both paths compute the loss, the reference log-probs and every gradient on the same
batches, twice over (epoch 1, then epoch 2 where the fast path serves cached inputs and reference log-probs), with
LoRA B and the trained projector copy moved off their initial values so that policy and reference differ. The
largest differences are printed; above fp32 tolerance the script exits 1.

Timing: each optimizer step is timed from the end of the previous one (data loading, both passes, backward,
clipping, AdamW, logging); lists/s = 8 / median step time, per epoch 1 and epochs 2+, and for the whole run
(lists / training time). Runs alternate today/fast for --repeats rounds; medians over rounds; the ratio is
fast / today.

    python benchmarks/tiny_train_bench.py                      # 2 torch threads, sampled lists, 3 repeats
    python benchmarks/tiny_train_bench.py --threads 1 --responses jitter
    python benchmarks/tiny_train_bench.py --quick              # smoke test: 16 lists, N 6, one repeat
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from perpo.config import cpu_model  # noqa: E402  (the machine line every benchmark prints)

PATHS = {
    "today": dict(layout="shared", cache_reference=False, cache_inputs=False, fuse_lora=False),
    "fast": dict(layout="tree", cache_reference=True, cache_inputs=True, fuse_lora=True),
}
# The demo's PerPO training (perpo/studies/demo.py: DemoConfig, train_method).
DEMO = dict(loss="perpo", beta=0.5, gamma=0.5, lora_r=32, lora_alpha=64, lr=1e-4, batch_size=8, epochs=3)


# ---------------------------------------------------------------------------------------------------- data


def build_lists(work: Path, responses: str, n: int, instructions: int, seed: int = 0) -> Path:
    """`work/<responses>-n<n>/train.jsonl`: listwise train records (built once, reused)."""
    out = work / f"{responses}-n{n}-i{instructions}"
    lists = out / "train.jsonl"
    if lists.is_file():
        return lists
    from perpo.data import sources
    from perpo.embedded.synth import SynthSpec, build_synth

    data = build_synth(
        work / "synth", seed=0, spec=SynthSpec(counts={"train": 400, "val": 8, "test": 8}), progress=False
    )
    picked = sources.equal_share_sample(sources.synth_instructions(data, "train"), instructions, seed)
    out.mkdir(parents=True, exist_ok=True)
    if responses == "sampled":
        from perpo.data.build import BuildDataConfig, run_build_data
        from perpo.sampling.sample import SampleConfig, run_sample
        from perpo.studies.demo import ASSET

        sources.write_records(out / "instructions.jsonl", picked)
        run_sample(
            SampleConfig(
                model=str(ASSET), instructions=str(out / "instructions.jsonl"), out=str(out / "samples.jsonl"), n=n,
                temperature=0.5, max_new_tokens=24, batch_size=16, seed=seed, device="cpu", dtype="float32",
                progress=False,
            )
        )  # fmt: skip
        run_build_data(BuildDataConfig(samples=str(out / "samples.jsonl"), out=str(out), margin=0.8))
        return lists
    import random

    from perpo.data.schema import dump_record, rebase_image
    from perpo.objectives.boxes import format_box
    from perpo.objectives.rewards import iou_reward

    rng = random.Random(seed)
    rows = []
    for record in picked:
        target = record["target"]
        answers = [format_box([min(max(v + rng.uniform(-0.3, 0.3), 0.0), 1.0) for v in target]) for _ in range(n)]
        record = rebase_image(record, data, out)
        rows.append(
            {**record, "responses": answers, "rewards": [iou_reward(a, target) for a in answers], "reward": "iou"}
        )
    lists.write_text("".join(dump_record(r) for r in rows))
    return lists


# ------------------------------------------------------------------------------------------------ training


def perpo_args(path: str, lists: Path, n: int, max_lists: int):
    from perpo.studies.demo import ASSET
    from perpo.training.trainer import PerPOArguments

    return PerPOArguments(
        model_name_or_path=str(ASSET), data=str(lists), loss=DEMO["loss"], n=n, beta=DEMO["beta"],
        gamma=DEMO["gamma"], lora_r=DEMO["lora_r"], lora_alpha=DEMO["lora_alpha"], dtype="float32",
        max_lists=max_lists, **PATHS[path],
    )  # fmt: skip


def training_args(out: Path, epochs: float, **overrides):
    from transformers import TrainingArguments

    base = dict(
        output_dir=str(out), per_device_train_batch_size=DEMO["batch_size"], num_train_epochs=epochs,
        learning_rate=DEMO["lr"], lr_scheduler_type="cosine", warmup_steps=0.1, logging_steps=5, report_to=[],
        save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0, data_seed=0,
    )  # fmt: skip
    return TrainingArguments(**(base | overrides))


class StepTimer:
    """A TrainerCallback timing each optimizer step from the end of the previous one (or the start of training)."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def __init__(self):
                self.ends: list[float] = []
                self.start = None
                self.stop = None

            def on_train_begin(self, args, state, control, **kwargs):
                self.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                self.ends.append(time.perf_counter())

            def on_train_end(self, args, state, control, **kwargs):
                self.stop = time.perf_counter()

            def steps(self) -> list[float]:
                marks = [self.start, *self.ends]
                return [b - a for a, b in zip(marks, marks[1:], strict=False)]

        return _Timer()


def run_once(path: str, lists: Path, n: int, max_lists: int, epochs: float, work: Path) -> dict:
    from perpo.training.trainer import run_train

    timer = StepTimer()
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        log = io.StringIO()
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            run_train(perpo_args(path, lists, n, max_lists), training_args(Path(tmp), epochs), [timer])
    steps = timer.steps()
    per_epoch = math.ceil(max_lists / DEMO["batch_size"])
    first, later = steps[:per_epoch], steps[per_epoch:]
    return {
        "path": path,
        "step_s": steps,
        "epoch1_lists_per_s": DEMO["batch_size"] / statistics.median(first),
        "later_lists_per_s": DEMO["batch_size"] / statistics.median(later) if later else float("nan"),
        "run_lists_per_s": max_lists * epochs / (timer.stop - timer.start),
        "train_s": timer.stop - timer.start,
    }


# ------------------------------------------------------------------------------------------------ equality


def check_equal(lists: Path, n: int, batches: int = 2) -> dict:
    """Loss, reference log-probs and every gradient of both paths on the same batches, epoch 1 then epoch 2."""
    import torch
    from transformers import TrainingArguments

    from perpo.data.collate import ListCollator
    from perpo.data.schema import load_records
    from perpo.model.families import LLAVA
    from perpo.model.modeling import apply_lora, disable_dropout, fuse_lora, load_model, load_processor
    from perpo.studies.demo import ASSET
    from perpo.training.trainer import ListDataset, PerPOTrainer

    records = load_records(lists, stage="train", n=n)[: batches * DEMO["batch_size"]]
    processor = load_processor(ASSET)

    def setup(path: str):
        torch.manual_seed(0)
        model = load_model(ASSET, dtype="float32")
        disable_dropout(model)
        model.requires_grad_(False)
        model = apply_lora(model, r=DEMO["lora_r"], alpha=DEMO["lora_alpha"])
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():  # move the trained weights off their start, so that policy != reference
            for name, parameter in model.named_parameters():
                if "lora_B" in name or "modules_to_save" in name:
                    parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
        model.train()
        if PATHS[path]["fuse_lora"]:
            fuse_lora(model)
        args = perpo_args(path, lists, n, len(records))
        collator = ListCollator(processor, lists.parent, n, family=LLAVA, cache=args.cache_inputs)
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()):
            trainer = PerPOTrainer(
                model=model, args=TrainingArguments(output_dir=tmp, use_cpu=True, report_to=[]),
                train_dataset=ListDataset(records), data_collator=collator, processing_class=processor,
                perpo_args=args,
            )  # fmt: skip
        return trainer, model, collator

    def step(trainer, model, collator, chunk):
        inputs = collator(chunk)
        with torch.no_grad():
            ref = trainer.reference_logps(model, inputs)
        model.zero_grad()
        loss = trainer.compute_loss(model, inputs)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), ref, grads

    today, fast = setup("today"), setup("fast")
    worst = {"loss": 0.0, "ref_logps": 0.0, "grad": 0.0}
    for _epoch in range(2):
        for start in range(0, len(records), DEMO["batch_size"]):
            chunk = records[start : start + DEMO["batch_size"]]
            loss_a, ref_a, grads_a = step(*today, chunk)
            loss_b, ref_b, grads_b = step(*fast, chunk)
            assert grads_a.keys() == grads_b.keys() and grads_a
            worst["loss"] = max(worst["loss"], abs(float(loss_a - loss_b)) / max(abs(float(loss_a)), 1e-12))
            worst["ref_logps"] = max(worst["ref_logps"], float(((ref_a - ref_b).abs() / ref_a.abs()).max()))
            for key, grad in grads_a.items():
                scale = float(grad.abs().max())
                if scale > 0:
                    worst["grad"] = max(worst["grad"], float((grad - grads_b[key]).abs().max()) / scale)
    memo = fast[0]._reference_memo
    return {
        "max_rel_diff": worst,
        "memo_lists": len(memo) if memo is not None else 0,
        "cached_lists": len(fast[2]._encoded),
        "ok": worst["loss"] < 1e-5 and worst["ref_logps"] < 1e-5 and worst["grad"] < 1e-4,
    }


# ---------------------------------------------------------------------------------------------------- main


def layout_stats(lists: Path, n: int, max_lists: int) -> dict:
    """Tokens per step of both layouts (the tree's share of response tokens)."""
    from perpo.data.collate import ListCollator
    from perpo.data.schema import load_records
    from perpo.model.families import LLAVA
    from perpo.model.logprobs import shared_rows, tree_rows
    from perpo.model.modeling import load_processor
    from perpo.studies.demo import ASSET

    records = load_records(lists, stage="train", n=n)[:max_lists]
    batch = ListCollator(load_processor(ASSET), lists.parent, n, family=LLAVA)(records)["batch"]
    shared, tree = shared_rows(batch, pad_id=0), tree_rows(batch, pad_id=0)
    return {
        "lists": len(records),
        "response_tokens": len(shared.target_ids),
        "tree_tokens": len(tree.target_ids),
        "shared_tokens": int((shared.segment >= 0).sum()),
        "tree_total_tokens": int((tree.segment >= 0).sum()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the issue's 2 cores)")
    parser.add_argument("--responses", choices=["sampled", "jitter"], default="sampled")
    parser.add_argument("--lists", type=int, default=64, help="lists per epoch (default 64: 8 steps of 8)")
    parser.add_argument("--epochs", type=float, default=DEMO["epochs"], help="epochs per run (default 3, the demo's)")
    parser.add_argument("--n", type=int, default=20, help="responses per list (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (today, fast) runs (default 3)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "perpo_tiny_train_bench")
    parser.add_argument("--quick", action="store_true", help="smoke test: 16 lists, N 6, one round, 2 epochs")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write all numbers to OUT")
    args = parser.parse_args(argv)
    if args.quick:
        args.lists, args.n, args.repeats, args.epochs = 16, 6, 1, 2.0

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    instructions = max(24, math.ceil(args.lists * 2.5)) if args.responses == "sampled" else args.lists
    with contextlib.redirect_stderr(io.StringIO()):
        lists = build_lists(args.work, args.responses, args.n, instructions)
    from perpo.data.schema import load_records

    available = len(load_records(lists, stage="train", n=args.n))
    if available < args.lists:
        print(f"only {available} lists passed the margin; using them all", file=sys.stderr)
        args.lists = available - available % DEMO["batch_size"] or available

    import peft
    import transformers

    print(f"tiny_train_bench: {platform.platform()}")
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start"
    )
    print(
        f"software: python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, peft {peft.__version__}"
    )
    stats = layout_stats(lists, args.n, args.lists)
    print(
        f"config: tiny_llava_base, {args.responses} lists ({lists}), {args.lists} lists x {args.epochs:g} epochs, "
        f"N {args.n}, {DEMO['batch_size']} lists/step, LoRA r {DEMO['lora_r']} + projector, perpo "
        f"beta {DEMO['beta']} gamma {DEMO['gamma']}, reference = adapters off, fp32"
    )
    print(
        f"tokens: {stats['response_tokens']} response tokens over {stats['lists']} lists, {stats['tree_tokens']} in "
        f"the trees ({100 * stats['tree_tokens'] / stats['response_tokens']:.0f}%); prompt + responses per list "
        f"{stats['shared_tokens'] / stats['lists']:.0f} (shared) vs {stats['tree_total_tokens'] / stats['lists']:.0f} "
        "(tree)"
    )

    with contextlib.redirect_stderr(io.StringIO()):
        check = check_equal(lists, args.n)
    diff = check["max_rel_diff"]
    print(
        f"equality (2 batches x 2 epochs, policy != reference): max relative difference fast vs today: loss "
        f"{diff['loss']:.1e}, reference log-probs {diff['ref_logps']:.1e}, gradients {diff['grad']:.1e} "
        f"(per tensor, over its largest entry) -> {'OK' if check['ok'] else 'MISMATCH'}"
    )

    runs = []
    for repeat in range(args.repeats):
        for path in ("today", "fast") if repeat % 2 == 0 else ("fast", "today"):
            result = run_once(path, lists, args.n, args.lists, args.epochs, args.work)
            result["repeat"] = repeat
            runs.append(result)
            print(
                f"[tiny_train_bench] round {repeat + 1} {path:<5}: epoch 1 {result['epoch1_lists_per_s']:6.1f} "
                f"lists/s, epochs 2+ {result['later_lists_per_s']:6.1f}, run {result['run_lists_per_s']:6.1f} "
                f"({result['train_s']:.1f} s)",
                file=sys.stderr,
                flush=True,
            )

    def med(path, key):
        return statistics.median(r[key] for r in runs if r["path"] == path)

    print()
    header = f"{'path':<6} {'epoch 1':>9} {'epochs 2+':>10} {'whole run':>10}   (lists/s, median of {args.repeats})"
    print(header)
    print("-" * len(header))
    keys = ("epoch1_lists_per_s", "later_lists_per_s", "run_lists_per_s")
    for path in ("today", "fast"):
        print(f"{path:<6} " + " ".join(f"{med(path, k):>{w}.1f}" for k, w in zip(keys, (9, 10, 10), strict=True)))
    ratios = {k: med("fast", k) / med("today", k) for k in keys}
    print(f"{'ratio':<6} " + " ".join(f"{ratios[k]:>{w - 1}.2f}x" for k, w in zip(keys, (9, 10, 10), strict=True)))
    paired = [
        next(r for r in runs if r["repeat"] == i and r["path"] == "fast")["run_lists_per_s"]
        / next(r for r in runs if r["repeat"] == i and r["path"] == "today")["run_lists_per_s"]
        for i in range(args.repeats)
    ]
    print(
        f"whole run, fast / today within each round: {', '.join(f'{x:.2f}x' for x in paired)} "
        f"(median {statistics.median(paired):.2f}x)"
    )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        payload = {
            "config": vars(args) | {"work": str(args.work), "json": str(args.json), "lists_file": str(lists)},
            "tokens": stats,
            "equality": check,
            "runs": runs,
            "ratios": ratios,
            "paired_run_ratios": paired,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0 if check["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
