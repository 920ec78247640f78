"""How the demo's learning rates and β were chosen: the same small search for every method, scored on the val split.

    python scripts/demo_search.py --out runs/demo_search [--lrs 3e-5 1e-4] [--betas 0.1 0.5 2.0] [--seed 0] [--quick]

Runs the demo's own stages (`perpo.studies.demo`: the seed-0 synthetic benchmark, the committed base model, N = 20
samples at T = 0.5, the IoU margin filter), then trains every method once per learning rate with the demo's
budget (same lists, epochs, batch size, LoRA) and scores greedy AP@50 on the val split in-process
(`perpo.model.quickeval`). Every method gets the same number of trials: the preference losses (DPO, LiPO-λ, PerPO) one
per (learning rate, β) pair, SFT (which has no β) as many learning rates (`--sft_lrs`), and the online study's
methods (`--methods perpo_iter grpo`, trained as `perpo demo --study online` trains them) as many: iterative PerPO
per (learning rate, β), GRPO per (learning rate, KL β in `--kl_betas`). The test split is never looked at. A trial
whose adapter is already there (`trial.json` beside it) is scored, not trained again, so an interrupted search
picks up where it stopped. Writes `search.json` and `search.md`, prints the table and each
method's best setting; the demo's defaults (`perpo.objectives.losses.METHODS` settings) are those picks.

`--track ocr` searches the OCR track's demo (`perpo demo --track ocr`: seed-1 synthetic pages, the committed
tiny_llava_ocr, 1 − edit distance, margin 0.04; methods SFT, DPO, PerPO) and scores greedy edit distance (lower is
better) on the val pages and on the pages of the first 200 training lists. Each trial's scores are kept beside its
adapter (`ocr_scores.json`), so a search widened with more learning rates scores only the new trials.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from perpo.console import quiet_console
from perpo.io import read_jsonl, write_json
from perpo.model.modeling import load_model, load_processor
from perpo.model.quickeval import evaluate_grounding, evaluate_ocr
from perpo.studies.demo import DemoConfig, OCRDemoConfig
from perpo.studies.online_study import train_grpo, train_perpo_iter
from perpo.studies.stages import (
    build_lists,
    page_records,
    prepare_base,
    sample_lists,
    train_method,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo_search"))
    parser.add_argument("--track", choices=("grounding", "ocr"), default="grounding")
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-5, 1e-4, 3e-4])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.1, 0.5])
    parser.add_argument("--sft_lrs", type=float, nargs="+", default=[1e-4, 2e-4, 3e-4, 6e-4, 1e-3, 3e-3])
    parser.add_argument(
        "--kl_betas", type=float, nargs="+", default=[0.0, 0.04], help="GRPO's KL coefficients (with --lrs)"
    )
    parser.add_argument("--methods", nargs="+", default=None, help="default: the track's demo methods")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--instructions", type=int, default=DemoConfig.instructions)
    parser.add_argument(
        "--base_model",
        default=None,
        help="start every trial from this model folder instead of the track's committed base (the saturation "
        "study searches each warm-up level this way: scripts/demo_study_saturation.py)",
    )
    parser.add_argument("--quick", action="store_true", help="the demo's --quick scale (for tests)")
    args = parser.parse_args()
    with quiet_console(args.out / "logs", "search.log"):  # library logs and warnings to a file, bars on screen
        search(args)


def search(args: argparse.Namespace) -> None:
    """Prepare the lists as the demo does, train and score every trial, write search.json / search.md."""
    config = OCRDemoConfig if args.track == "ocr" else DemoConfig
    cfg = config(out=str(args.out), seed=args.seed, instructions=args.instructions, quick=args.quick)
    if args.base_model:
        cfg = dataclasses.replace(cfg, base_model=str(args.base_model))
    args.methods = args.methods or list(cfg.methods)
    data, base = prepare_base(cfg, args.out)
    lists = args.out / "lists"
    if not (lists / "train.jsonl").is_file():
        sample_lists(cfg, data, base, lists)
        build_lists(cfg, lists)
    if args.track == "ocr":
        search_ocr(args, cfg, base, page_records(data, "val"), read_jsonl(lists / "train.jsonl")[:200])
        return
    val = read_jsonl(data / "synth_val.jsonl")
    processor = load_processor(base)

    def val_ap50(adapter: Path | None) -> dict:
        model = load_model(base, dtype="float32", adapter=adapter)
        return evaluate_grounding(model, processor, val, data, batch_size=64)

    rows = [{"method": "base", "lr": None, "beta": None, **val_ap50(None), "train_s": 0.0}]
    print(f"base: val AP@50 {rows[0]['ap50']:.3f}", flush=True)
    for method, lr, beta, name, adapter, seconds in trials(args, cfg, base, lists):
        metrics = val_ap50(adapter) | {"train_lists_ap50": _train_lists_ap50(adapter)}
        rows.append({"method": method, "lr": lr, "beta": beta, **metrics, "train_s": round(seconds, 1)})
        print(f"{name}: val AP@50 {metrics['ap50']:.3f} (train {seconds:.0f} s)", flush=True)

    best = _best(rows, args.methods, lambda r: (-r["ap50"], -r["iou"]))
    lines = [
        "| method | lr | β | val AP@50 | val right object | val IoU | train-list AP@50 | train s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {_setting_cells(r, best)} | {100 * r['ap50']:.1f} | "
            f"{100 * r['acc10']:.1f} | {100 * r['iou']:.1f} | {_percent(r.get('train_lists_ap50'))} | "
            f"{r['train_s']:.0f} |"
        )
    table = "\n".join(lines) + (
        f"\n\n* = best setting per method ({len(val)} val expressions, seed {args.seed}). Right object: IoU >= 0.1, "
        "i.e. the box is on the referent, however loose. Train-list AP@50: the first lists' own instructions, "
        "scored by the trainer (`--eval_train_lists`).\n"
    )
    (args.out / "search.md").write_text(table)
    write_json(
        args.out / "search.json", {"rows": rows, "best_lr": best, "config": vars(args) | {"out": str(args.out)}}
    )
    print(table)
    print("best settings:", json.dumps(best))


ONLINE = {"perpo_iter": train_perpo_iter, "grpo": train_grpo}
"""The online study's methods (`--methods perpo_iter grpo`), trained as `perpo demo --study online` trains them."""


def trials(args, cfg, base: Path, lists: Path):
    """Train (or find, from an interrupted search) every trial; yield (method, lr, β, name, adapter, train seconds).

    The same number of trials per method: one per (lr, β) for the preference losses and iterative PerPO, one per
    (lr, KL β) for GRPO, one per `--sft_lrs` for SFT.
    """
    for method in args.methods:
        if method == "sft":
            settings = [(lr, None) for lr in args.sft_lrs]
        else:
            settings = [(lr, b) for lr in args.lrs for b in (args.kl_betas if method == "grpo" else args.betas)]
        for lr, beta in settings:
            name = f"{method}_lr{lr:g}" + (f"_beta{beta:g}" if beta is not None else "")
            folder = args.out / "models" / name
            if (folder / "trial.json").is_file():  # trained by an earlier, interrupted search: keep it
                seconds = json.loads((folder / "trial.json").read_text())["train_s"]
            else:
                began = time.perf_counter()
                if method in ONLINE:  # perpo demo --study online's trainings, with this trial's lr and β
                    chosen = dataclasses.replace(cfg, learning_rates=[f"{method}={lr}"], betas=[f"{method}={beta}"])
                    ONLINE[method](chosen, base, lists, folder)
                else:
                    train_method(cfg, method, base, lists, folder, lr=lr, beta=beta)
                seconds = round(time.perf_counter() - began, 1)
                write_json(folder / "trial.json", {"train_s": seconds})
            yield method, lr, beta, name, folder / "adapter" if method == "perpo_iter" else folder, seconds


def search_ocr(args, cfg, base: Path, val: list[dict], train_lists: list[dict]) -> None:
    """The OCR track's search: greedy edit distance (lower is better) on the val pages, and on the first 200
    training lists' own pages (does the method fit its training data?); writes search.json / search.md."""
    processor = load_processor(base)

    def score(adapter: Path | None) -> dict:
        """Greedy edit distances of a trial; kept in `<trial>/ocr_scores.json` with each val page's distance
        (`val_distances`, which the saturation study pairs), so a widened search scores only its new trials."""
        cache = (adapter or args.out / "models" / "base") / "ocr_scores.json"
        if cache.is_file():
            saved = json.loads(cache.read_text())
            fresh = saved.get("n") == len(val) and saved.get("train_lists") == len(train_lists)
            if fresh and len(saved.get("val_distances", ())) == len(val):
                return saved["scores"]
        model = load_model(base, dtype="float32", adapter=adapter)
        on_val = evaluate_ocr(model, processor, val, batch_size=64, per_page=True)
        distances = on_val.pop("distances")
        on_train = evaluate_ocr(model, processor, train_lists, batch_size=64)
        scores = {**on_val, "train_lists_edit_dist": on_train["edit_dist"]}
        saved = {"n": len(val), "train_lists": len(train_lists), "scores": scores, "val_distances": distances}
        write_json(cache, saved)
        return scores

    rows = [{"method": "base", "lr": None, "beta": None, **score(None), "train_s": 0.0}]
    print(f"base: val edit distance {rows[0]['edit_dist']:.3f}", flush=True)
    for method, lr, beta, name, adapter, seconds in trials(args, cfg, base, args.out / "lists"):
        rows.append({"method": method, "lr": lr, "beta": beta, **score(adapter), "train_s": seconds})
        print(f"{name}: val edit distance {rows[-1]['edit_dist']:.3f} (train {seconds:.0f} s)", flush=True)
    best = _best(rows, args.methods, lambda r: r["edit_dist"])
    lines = [
        "| method | lr | β | val edit distance ↓ | val exact pages | train-list edit distance ↓ | train s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {_setting_cells(r, best)} | {r['edit_dist']:.3f} | "
            f"{100 * r['exact']:.1f} | {r['train_lists_edit_dist']:.3f} | {r['train_s']:.0f} |"
        )
    table = "\n".join(lines) + (
        f"\n\n* = best setting per method ({len(val)} val pages, seed {args.seed}). Train-list edit distance: the "
        f"pages of the first {len(train_lists)} training lists, greedy, as on val.\n"
    )
    (args.out / "search.md").write_text(table)
    write_json(
        args.out / "search.json", {"rows": rows, "best_lr": best, "config": vars(args) | {"out": str(args.out)}}
    )
    print(table)
    print("best settings:", json.dumps(best))


def _best(rows: list[dict], methods: list[str], rank) -> dict:
    """Each method's best trial by `rank` (lowest first; ties: the first trial): {method: {"lr", "beta"}}."""
    picks = {m: min((r for r in rows if r["method"] == m), key=rank) for m in methods}
    return {m: {"lr": r["lr"], "beta": r["beta"]} for m, r in picks.items()}


def _setting_cells(row: dict, best: dict) -> str:
    """`method[ *] | lr | β` of a search-table row (* marks the method's best trial; – where a setting is none)."""
    chosen = row["lr"] is not None and best.get(row["method"]) == {"lr": row["lr"], "beta": row["beta"]}
    lr = "–" if row["lr"] is None else f"{row['lr']:g}"
    beta = "–" if row["beta"] is None else f"{row['beta']:g}"
    return f"{row['method']}{' *' if chosen else ''} | {lr} | {beta}"


def _train_lists_ap50(adapter: Path) -> float | None:
    """Greedy AP@50 on the trial's own training lists, as the trainer recorded it in heldout.json (if it did)."""
    path = adapter / "heldout.json"
    if not path.is_file():
        return None
    evals = json.loads(path.read_text()).get("evals") or [{}]
    return evals[-1].get("train_lists/ap50")


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


if __name__ == "__main__":
    main()
