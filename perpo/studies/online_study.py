"""`perpo demo --study online`: PerPO beside iterative PerPO and GRPO, on the demo's own instructions, base model and
IoU reward, with the same budget.

The demo trains SFT, DPO and PerPO from one offline sampling pass (the base's N = 20 responses to each of its
instructions). The study adds two methods that sample from the policy being trained:

    perpo_iter  `perpo iterate`: the same instructions in `rounds` shares; each round samples its share from the
                current policy, margin-filters, and trains the previous round's adapter further (reference: base);
    grpo        `perpo grpo`: TRL's GRPOTrainer, a group of N responses per instruction sampled at every step, one
                pass over the same instructions.

Budget. Every method generates N responses per instruction once (PerPO's offline pass, iterative PerPO's rounds,
GRPO's groups): the same number of generated responses. Optimizer steps: iterative PerPO trains each round for the
demo's epochs over its lists, with the demo's batch; GRPO puts instructions / (PerPO's steps) groups in each step,
so its step count matches PerPO's. Wall-clock is reported per method with what it includes (PerPO's sampling is
shared by SFT, DPO and PerPO; the online methods sample inside their own time).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from perpo.config import ConfigError
from perpo.io import count_lines, write_json

ONLINE_METHODS = ("perpo_iter", "grpo")
STUDY_ROWS = ("base", "sft", "dpo", "lipo", "perpo", "perpo_iter", "grpo")
# what the study must share with the demo beside it, or the budgets would not match
BUDGET_FIELDS = (
    "seed", "data_seed", "base_model", "instructions", "n", "temperature", "margin", "epochs", "batch_size",
)  # fmt: skip


def train_perpo_iter(cfg, base: Path, lists: Path, out: Path) -> Path:
    """Iterative PerPO on the demo's instructions (`perpo iterate`); returns the final adapter."""
    from perpo.training.iterative import IterateConfig, run_iterate

    train = (
        f"--loss perpo --learning_rate {cfg.lr('perpo_iter')} --beta {cfg.beta('perpo_iter')} --gamma {cfg.gamma} "
        f"--lora_r {cfg.lora_r} --lora_alpha {cfg.lora_alpha} --per_device_train_batch_size {cfg.batch_size} "
        f"--num_train_epochs {cfg.epochs} --lr_scheduler_type cosine --warmup_steps 0.1 --dtype float32 "
        f"--data_seed {cfg.seed} --use_cpu true --report_to none --save_strategy no --disable_tqdm true"
    )
    shutil.rmtree(out, ignore_errors=True)
    iterate = IterateConfig(
        model=str(base), instructions=str(lists / "instructions.jsonl"), out=str(out), rounds=cfg.rounds,
        reference=cfg.iter_reference, n=cfg.n,
        temperature=cfg.temperature, max_new_tokens=24, margin=cfg.margin, seed=cfg.seed, device="cpu",
        train_args=train,
    )  # fmt: skip
    from perpo.console import TrainLog

    label = f"perpo_iter (lr {cfg.lr('perpo_iter'):g}, β {cfg.beta('perpo_iter'):g}"
    run_iterate(iterate, lambda r, folder: [TrainLog(folder / "adapter" / "train_log.jsonl", f"{label}, round {r})")])
    return out / "adapter"


def train_grpo(cfg, base: Path, lists: Path, out: Path) -> Path:
    """GRPO on the demo's instructions (`perpo grpo`), as many optimizer steps as PerPO's; returns the adapter."""
    from trl import GRPOConfig

    from perpo.studies.stages import optimizer_steps
    from perpo.training.grpo import GRPOArguments, run_grpo

    groups = max(1, round(count_lines(lists / "instructions.jsonl") / optimizer_steps(cfg, lists)))
    shutil.rmtree(out, ignore_errors=True)
    config = GRPOConfig(
        output_dir=str(out), num_generations=cfg.n, per_device_train_batch_size=cfg.n,
        gradient_accumulation_steps=groups, num_train_epochs=1, learning_rate=cfg.lr("grpo"),
        beta=cfg.beta("grpo"), temperature=cfg.temperature, max_completion_length=24, lr_scheduler_type="cosine",
        warmup_steps=0.1, logging_steps=5, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
        seed=cfg.seed, data_seed=cfg.seed,
    )  # fmt: skip
    args = GRPOArguments(
        model_name_or_path=str(base), data=str(lists / "instructions.jsonl"), lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha, dtype="float32",
    )  # fmt: skip
    from perpo.console import TrainLog

    label = f"grpo (lr {cfg.lr('grpo'):g}, β {cfg.beta('grpo'):g}, {groups} groups of {cfg.n} per step)"
    return run_grpo(args, config, [TrainLog(out / "train_log.jsonl", label)])


def budget_row(method: str, out: Path, cfg, sample_seconds: float, instructions: int) -> dict:
    """Generated responses, optimizer steps and wall-clock of one method's training (what each includes)."""
    models = out / "models"
    if method == "base":
        return {}
    if method == "grpo":
        summary = json.loads((models / "grpo" / "train_summary.json").read_text())
        return {"generated": summary["generated_responses"], "steps": summary["optimizer_steps"],
                "seconds": summary["train_seconds"], "includes": "sampling"}  # fmt: skip
    if method == "perpo_iter":
        folder = models / "perpo_iter"
        rounds = json.loads((folder / "iterate.json").read_text())["rounds"]
        steps = sum(
            json.loads((folder / f"round_{r['round']}" / "adapter" / "train_summary.json").read_text())["global_step"]
            for r in rounds
        )
        seconds = round(sum(r["sample_seconds"] + r["train_seconds"] for r in rounds), 1)
        return {"generated": instructions * cfg.n, "steps": steps, "seconds": seconds, "includes": "sampling"}
    summary = json.loads((models / method / "train_summary.json").read_text())
    seconds = round(summary["seconds"], 1)
    return {"generated": instructions * cfg.n, "steps": summary["global_step"], "seconds": seconds,
            "includes": f"+ {sample_seconds:.0f} s shared sampling"}  # fmt: skip


def scores(eval_dir: Path) -> dict:
    """Test AP@50, the blank-image AP@50 and the best-of-20 first / oracle of one evaluated model (None if absent)."""
    results = json.loads((eval_dir / "results.json").read_text())["results"]

    def get(task: str, metric: str):
        value = results.get(task, {}).get(f"{metric},none")
        return None if value is None else round(100 * value, 1)

    bon = next((t for t in results if "_bon" in t), "")
    return {"ap50": get("perpo_synth_test", "ap50"), "blank": get("perpo_synth_test_blankimg", "ap50"),
            "first": get(bon, "ap50_first"), "best": get(bon, "ap50_best")}  # fmt: skip


def online_table(rows: dict[str, dict]) -> str:
    """The study's markdown table."""
    from reports.load import method_label

    def cell(value, fmt="{:.1f}"):
        return "–" if value is None else fmt.format(value)

    lines = [
        "| method | test AP@50 | blank image | best-of-20: first / best | generated responses | optimizer steps "
        "| train wall-clock (s) |",
        "| :--- | ---: | ---: | ---: | ---: | ---: | :--- |",
    ]
    for method, row in rows.items():
        pair = f"{cell(row.get('first'))} / {cell(row.get('best'))}" if row.get("best") is not None else "–"
        clock = f"{row['seconds']:.0f} ({row['includes']})" if "seconds" in row else "–"
        lines.append(
            f"| {method_label(method)} | {cell(row.get('ap50'))} | {cell(row.get('blank'))} | {pair} "
            f"| {cell(row.get('generated'), '{:,}')} | {cell(row.get('steps'), '{:d}')} | {clock} |"
        )
    return "\n".join(lines) + "\n"


def run_online_study(cfg, out: Path, threads: int) -> dict:
    """Train the online methods beside a finished demo in `out`, evaluate them as the demo evaluates, write
    `out/online_study.json` and `out/report/online.md`, print the table; returns the study's rows."""
    from perpo.studies.stages import evaluate_models

    data, lists, base = out / "data", out / "lists", Path(cfg.base_model)
    if not (lists / "stats.json").is_file() or not (out / "eval" / "base" / "results.json").is_file():
        raise ConfigError(f"{out} holds no finished demo (lists/stats.json, eval/base): run the demo there first")
    demo = json.loads((out / "demo_config.json").read_text())["DemoConfig"]
    differ = [k for k in BUDGET_FIELDS if demo.get(k) != getattr(cfg, k)]
    if differ:
        shown = ", ".join(f"{k} {demo.get(k)!r} there, {getattr(cfg, k)!r} now" for k in differ)
        raise ConfigError(f"{out} was made with other settings ({shown}): give the study the demo's settings")
    adapters, seconds = {}, {}
    for method, train in (("perpo_iter", train_perpo_iter), ("grpo", train_grpo)):
        began = time.perf_counter()
        adapters[method] = train(cfg, base, lists, out / "models" / method)
        seconds[method] = round(time.perf_counter() - began, 1)
        print(f"  {method}: trained in {seconds[method]:.0f} s", flush=True)
    evaluate_models(cfg, data, base, adapters, out / "eval", threads, include_base=False)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    sample_seconds = summary.get("timings_s", {}).get("sample", 0.0)
    instructions = count_lines(lists / "instructions.jsonl")
    rows = {}
    for method in STUDY_ROWS:
        if (out / "eval" / method / "results.json").is_file():
            budget = budget_row(method, out, cfg, sample_seconds, instructions)
            rows[method] = scores(out / "eval" / method) | budget
    table = online_table(rows)
    (out / "report").mkdir(parents=True, exist_ok=True)
    (out / "report" / "online.md").write_text(table)
    study = {"seed": cfg.seed, "rounds": cfg.rounds, "shared_sampling_seconds": sample_seconds, "rows": rows}
    write_json(out / "online_study.json", study)
    print("\n" + table)
    return rows
