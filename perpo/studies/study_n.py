"""Table 3 in miniature: PerPO against DPO as the list size N grows, on the lists of an existing demo.

    perpo demo --out runs/demo                                  # first: the demo (its lists, base model, data)
    python scripts/demo_study_n.py runs/demo [--ns 2 4 8 20] [--methods dpo perpo] [--out runs/demo/study_n]
    python scripts/demo_study_n.py runs/demo --split test       # once, at the end of the study

For every N and method, trains from the demo's base model on the demo's kept lists (`<demo>/lists/train.jsonl`)
with the demo's own training function and settings (`perpo.studies.demo.train_method`, the DemoConfig saved in
`<demo>/demo_config.json`: learning rate and β per method, epochs, batch size, LoRA, seed), changing only N: each
list is cut to its first N responses (the sampling order, so a random subset of the N = 20 samples, not the best
ones). The lists are the same for every N, so every cell takes the same number of optimizer steps; they are not
re-filtered by margin at each N: a list whose first N responses all have the same reward has no ordered pair and
contributes exactly 0 to the loss of every ranking method (it still counts in the batch mean, see
perpo.objectives.losses), and how many lists still rank something at each N is reported beside the results ("lists
ranked"). An N larger than the demo's lists (e.g. 8 or 20 after a `--quick` demo, whose lists hold 6) is skipped.

Each trained model, and the base, is scored with greedy AP@50 in-process (`perpo.model.quickeval`) on the val split
(`<demo>/data/synth_val.jsonl`). `--split test` scores the test split instead: look at it once, when the study
is over, not to choose anything.

Writes into `--out` (default `<demo>/study_n`): `study_n.json` (every scored cell, per split), `study_n.md` (rows N,
columns AP@50 per method and PerPO − DPO) and `study_n.png` (AP@50 against N, one line per method, the base as a
dashed line); with `--split test`, `study_n_test.md` and `study_n_test.png`. Resumable: a (split, N, method) cell
already in study_n.json is not trained or scored again, and an adapter already trained (`trial.json` beside it)
is only scored. `--quick` is a smoke run (N in {2, 4}, 24 rows of the split) for tests.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np

from perpo.config import ConfigError
from perpo.io import atomic_open, read_jsonl, write_json
from perpo.objectives.losses import LOSSES, METHODS
from perpo.studies.demo import DemoConfig, train_method
from reports.load import method_label

NS = (2, 4, 8, 20)
QUICK_NS = (2, 4)


def demo_config(demo: Path) -> DemoConfig:
    """The DemoConfig the demo ran with (its resolved `demo_config.json`)."""
    path = demo / "demo_config.json"
    if not path.is_file():
        raise ConfigError(f"no {path}: give the output folder of a `perpo demo` run")
    fields = json.loads(path.read_text())["DemoConfig"]
    # a demo of an earlier version recorded `lr_<method>` / `beta_<method>` fields: the same settings, as overrides
    for old, new in (("lr_", "learning_rates"), ("beta_", "betas")):
        named = {k[len(old) :]: v for k, v in fields.items() if k.startswith(old) and k[len(old) :] in METHODS}
        fields.setdefault(new, [f"{method}={value}" for method, value in named.items()])
    known = set(DemoConfig.__dataclass_fields__)
    return DemoConfig(**{k: v for k, v in fields.items() if k in known})


def with_n(cfg: DemoConfig, n: int) -> DemoConfig:
    """A copy of `cfg` whose list size is `n` (set directly: a --quick DemoConfig would clamp n to 6 again)."""
    out = copy.copy(cfg)
    out.n = n
    return out


def list_stats(lists: list[dict], n: int) -> dict:
    """How the first `n` responses of the lists rank: lists with a reward spread, and the mean margin max − min."""
    margins = [max(r["rewards"][:n]) - min(r["rewards"][:n]) for r in lists]
    return {
        "lists": len(lists),
        "ranked": int(sum(m > 0 for m in margins)),
        "margin_mean": round(float(np.mean(margins)), 4) if margins else None,
    }


def load_study(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return {"cells": []}


def find(study: dict, split: str, n: int | None, method: str) -> dict | None:
    for cell in study["cells"]:
        if (cell["split"], cell["n"], cell["method"]) == (split, n, method):
            return cell
    return None


def drop_stale(study: dict, split: str, rows: int) -> list[dict]:
    """Remove the cells of `split` scored on another number of rows (a --quick or --limit run); return them."""
    stale = [c for c in study["cells"] if c["split"] == split and c.get("rows") != rows]
    study["cells"] = [c for c in study["cells"] if c not in stale]
    return stale


def table(study: dict, split: str, methods: list[str]) -> str:
    """Markdown: one row per N, AP@50 (%) per method, PerPO − DPO, and how many lists rank something."""
    cells = [c for c in study["cells"] if c["split"] == split]
    base = find(study, split, None, "base")
    ns = sorted({c["n"] for c in cells if c["n"] is not None})
    diff = "dpo" in methods and "perpo" in methods
    header = ["N", *(f"{method_label(m)} AP@50" for m in methods)] + (["PerPO − DPO"] if diff else [])
    header.append("lists ranked")
    caption = f"Greedy AP@50 (%) on the {split} split ({cells[0]['rows'] if cells else 0} expressions)"
    caption += f"; the base model: {100 * base['ap50']:.1f}." if base else "."
    lines = [caption, "", "| " + " | ".join(header) + " |", "| ---: |" + " ---: |" * (len(header) - 1)]
    for n in ns:
        scores = {m: find(study, split, n, m) for m in methods}
        row = [str(n)] + [f"{100 * s['ap50']:.1f}" if s else "–" for s in scores.values()]
        if diff:
            a, b = scores["perpo"], scores["dpo"]
            row.append(f"{100 * (a['ap50'] - b['ap50']):+.1f}" if a and b else "–")
        stats = next((c["lists"] for c in cells if c["n"] == n and "lists" in c), None)
        row.append(f"{stats['ranked']} of {stats['lists']}" if stats else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def figure(study: dict, split: str, methods: list[str], path: Path) -> Path:
    """AP@50 against N, one line per method, the base as a dashed horizontal line; written atomically."""
    from reports.figures import plt, save_figure  # matplotlib on the Agg backend

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ns = sorted({c["n"] for c in study["cells"] if c["split"] == split and c["n"] is not None})
    for method in methods:
        points = [(n, find(study, split, n, method)) for n in ns]
        points = [(n, 100 * c["ap50"]) for n, c in points if c]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=method_label(method))
    base = find(study, split, None, "base")
    if base:
        ax.axhline(100 * base["ap50"], linestyle="--", color="grey", label="base")
    if ns:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
    ax.set_xlabel("list size N")
    ax.set_ylabel(f"AP@50 (%), {split} split")
    ax.set_title("PerPO vs DPO as the list grows")
    ax.legend(frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo", type=Path, help="output folder of a `perpo demo` run (lists/, models/base, data/)")
    parser.add_argument("--out", type=Path, help="output folder (default: <demo>/study_n)")
    parser.add_argument("--ns", type=int, nargs="+", help=f"list sizes N (default {' '.join(map(str, NS))})")
    parser.add_argument("--methods", nargs="+", default=["dpo", "perpo"], choices=list(LOSSES))
    parser.add_argument("--split", choices=["val", "test"], default="val", help="split scored (default val)")
    parser.add_argument("--limit", type=int, help="score only the first LIMIT rows of the split (default all)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: N in {QUICK_NS}, 24 rows (for tests)")
    args = parser.parse_args(argv)

    import torch

    from perpo.model.modeling import load_model, load_processor
    from perpo.model.quickeval import evaluate_grounding

    demo = args.demo
    lists_dir, base, data = demo / "lists", demo / "models" / "base", demo / "data"
    missing = [str(p) for p in (lists_dir / "train.jsonl", base, data / f"synth_{args.split}.jsonl") if not p.exists()]
    if missing:
        parser.error(f"not a finished `perpo demo` folder, missing: {', '.join(missing)}")
    cfg = demo_config(demo)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = args.out or demo / "study_n"
    lists = read_jsonl(lists_dir / "train.jsonl")
    longest = min(len(r["responses"]) for r in lists)
    ns = args.ns or (QUICK_NS if args.quick else NS)
    skipped = [n for n in ns if n > longest or n < 2]
    ns = sorted({n for n in ns if n not in skipped})
    if skipped:
        print(f"skipping N = {skipped}: the demo's lists hold {longest} responses (and ranking needs N >= 2)")
    if not ns:
        parser.error("no list size left to study")
    limit = args.limit if args.limit is not None else (24 if args.quick else None)
    rows = read_jsonl(data / f"synth_{args.split}.jsonl")[:limit]
    if args.split == "test":
        print("scoring the TEST split: do this once, at the end of the study, and choose nothing by it")

    study_path = out / "study_n.json"
    study = load_study(study_path)
    stale = drop_stale(study, args.split, len(rows))
    if stale:
        print(f"scoring again: {len(stale)} {args.split} cell(s) in {study_path} were scored on other rows")
    processor = load_processor(base)

    def score(adapter: Path | None) -> dict:
        model = load_model(base, dtype="float32", adapter=adapter)
        metrics = evaluate_grounding(model, processor, rows, data, frame="padded", batch_size=64)
        return {key: value for key, value in metrics.items() if key != "n"}  # n is the list size here; see rows

    def save() -> None:
        study["demo"], study["methods"] = str(demo), sorted({c["method"] for c in study["cells"]} - {"base"})
        write_json(study_path, study)

    if find(study, args.split, None, "base") is None:
        metrics = score(None)
        study["cells"].append({"split": args.split, "n": None, "method": "base", **metrics, "rows": len(rows)})
        save()
        print(f"base: {args.split} AP@50 {100 * metrics['ap50']:.1f}", flush=True)
    for n in ns:
        stats = list_stats(lists, n)
        for method in args.methods:
            if find(study, args.split, n, method) is not None:
                print(f"N = {n} {method}: already scored, kept", flush=True)
                continue
            folder = out / "models" / f"n{n}_{method}"
            if (folder / "trial.json").is_file():  # trained by an earlier, interrupted study: only score it
                seconds = json.loads((folder / "trial.json").read_text())["train_s"]
            else:
                print(f"N = {n} {method}: training ({stats['ranked']} of {stats['lists']} lists ranked)", flush=True)
                began = time.perf_counter()
                train_method(with_n(cfg, n), method, base, lists_dir, folder)
                seconds = round(time.perf_counter() - began, 1)
                write_json(folder / "trial.json", {"train_s": seconds, "n": n, "method": method})
            metrics = score(folder)
            cell = {"split": args.split, "n": n, "method": method, **metrics, "rows": len(rows)}
            study["cells"].append(cell | {"lists": stats, "train_s": seconds, "adapter": str(folder)})
            save()
            print(f"N = {n} {method}: {args.split} AP@50 {100 * metrics['ap50']:.1f} (train {seconds:.0f} s)")

    suffix = "" if args.split == "val" else f"_{args.split}"
    methods = [m for m in LOSSES if any(c["method"] == m for c in study["cells"])]
    text = table(study, args.split, methods)
    with atomic_open(out / f"study_n{suffix}.md") as handle:
        handle.write(text)
    figure(study, args.split, methods, out / f"study_n{suffix}.png")
    print("\n" + text)
    print(f"wrote {study_path}, {out / f'study_n{suffix}.md'} and {out / f'study_n{suffix}.png'}")
    return study


if __name__ == "__main__":
    main()
