"""Figure 5 in miniature: does PerPO pull ahead of SFT as the base approaches saturation? (the OCR track)

The paper (§5.4, Figure 5) trains bases on growing amounts of dense-OCR data and finds PerPO and SFT alike on
weak bases, and PerPO ahead as the base nears saturation. This measures the same on the OCR miniature, from bases
that differ only in how much page text their warm-up saw (docs/miniature_ocr.md §6 has the warm-up commands):

    python scripts/demo_study_saturation.py perpo/assets/tiny_llava_ocr runs/sat/ocr_l1b runs/sat/ocr_l1c \\
        runs/sat/ocr_l2 --out runs/saturation --seeds 0 1 [--results docs/results]

For every base ("level"), runs the OCR track's search from it (`scripts/demo_search.py --track ocr --base_model
LEVEL`, into `<out>/search_<level folder name>`): the demo's 1,000 seed-1 pages sampled 20 times at T = 0.5 from
that base, rewards 1 − edit distance, margin 0.04, then SFT and PerPO trained with the demo's budget and the same
number of trials each (default: three learning rates; PerPO at β 0.5), scored on the 200 val pages. That search
runs with the first of `--seeds`; every further seed re-samples and re-trains only each method's pick (into
`search_<level>_seed<S>`). The picked trials are scored page by page, and the paired differences (each method −
its base, PerPO − SFT) get 95% bootstrap intervals over the val pages, seeds pooled (averaged per replicate, as
scripts/demo_seeds.py does; every seed scores the same val pages, so one draw of pages serves them all). The test
split is never looked at.

Writes `saturation.json`, `saturation.md` and `saturation.png` into --out: per level the warm-up's pages (steps ×
batch size, summed over the chain of `perpo warmup --model` continuations), the base's val edit distance and its
first-sample and best-of-20 edit distance on the sampled pages (its headroom), each method's best setting and
val edit distance, and the differences. `--results DIR` copies the JSON and the figure there. Resumable: the
searches keep their trials and scores; a search folder is tied to its base, seed and --quick and refuses others.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from perpo.config import ConfigError
from perpo.console import quiet_console
from perpo.io import atomic_open, write_json
from perpo.studies.stats import bootstrap_gain, seed_resamples
from reports.load import method_colour, method_label

REPLICATES = 10_000


def warmup_pages(model: Path) -> int | None:
    """Pages the warm-up of `model` trained on: steps × batch size, summed over every `perpo warmup --model` it
    continued from (relative paths as the warm-up was run: from the project root); None when a link of that chain
    has no `warmup_log.json`."""
    total, seen = 0, set()
    current: Path | None = model
    while current is not None:
        log = current / "warmup_log.json"
        if not log.is_file() or current.resolve() in seen:
            return None
        seen.add(current.resolve())
        config = json.loads(log.read_text())["config"]
        total += int(config["steps"]) * int(config["batch_size"])
        current = Path(config["model"]) if config.get("model") else None
    return total


def trial_folder(folder: Path, method: str, pick: dict) -> Path:
    """Where demo_search.py keeps the trial of `method` at `pick` ({"lr", "beta"})."""
    name = f"{method}_lr{pick['lr']:g}" + (f"_beta{pick['beta']:g}" if pick["beta"] is not None else "")
    return folder / "models" / name


def run_search(level: Path, folder: Path, args: argparse.Namespace, seed: int, grid: dict | None = None) -> dict:
    """The OCR search from `level` into `folder` (resumed when it is there) with `seed`; its search.json.

    `grid` ({"methods", "sft_lrs", "lrs", "betas"}) overrides the study's trials (a later seed's picks)."""
    grid = grid or {key: getattr(args, key) for key in ("methods", "sft_lrs", "lrs", "betas")}
    tied, tie = folder / "level.json", {"model": str(level.resolve()), "seed": seed, "quick": args.quick}
    if tied.is_file() and (held := json.loads(tied.read_text())) != tie:  # its lists and trials belong to that
        raise ConfigError(
            f"{folder} holds the search of {held} (base, seed, quick), not of {tie}: give another --out, or "
            "remove that folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    write_json(tied, tie)
    command = [
        sys.executable, "-m", "perpo.studies.search", "--track", "ocr", "--out", str(folder),
        "--base_model", str(level),
        "--methods", *grid["methods"], "--sft_lrs", *map(str, grid["sft_lrs"]), "--lrs", *map(str, grid["lrs"]),
        "--betas", *map(str, grid["betas"]), "--seed", str(seed), *(["--quick"] if args.quick else []),
    ]  # fmt: skip
    subprocess.run(command, check=True)
    return json.loads((folder / "search.json").read_text())


def page_distances(folder: Path, adapter: Path | None) -> list[float]:
    """Greedy edit distance of every val page (in order) for the base of `folder` (+ `adapter`), as the search
    scored it (`ocr_scores.json` beside the trial)."""
    return json.loads(((adapter or folder / "models" / "base") / "ocr_scores.json").read_text())["val_distances"]


def run_level(level: Path, args: argparse.Namespace) -> dict[int, Path]:
    """The search from `level` with the first seed, then the picks again with every further seed; the folder of
    each seed. The picks run in one search when they fit one grid (SFT's learning rate, and every preference
    method at the same lr and β); otherwise one search per distinct preference pick (an lr × β grid would cross
    two picks), so such a folder's search.json lists only its last search."""
    first, *others = args.seeds
    folders = {first: args.out / f"search_{level.name}"}
    picks = run_search(level, folders[first], args, first)["best_lr"]
    groups: dict[tuple, list[str]] = {}  # (lr, β) of a preference method's pick -> those methods
    for method in args.methods:
        if method != "sft":
            groups.setdefault((picks[method]["lr"], picks[method]["beta"]), []).append(method)
    sft_lrs = [picks["sft"]["lr"]] if "sft" in args.methods else args.sft_lrs
    grids = [{"methods": m, "sft_lrs": sft_lrs, "lrs": [lr], "betas": [b]} for (lr, b), m in groups.items()]
    grids = grids or [{"methods": [], "sft_lrs": sft_lrs, "lrs": args.lrs, "betas": args.betas}]
    if "sft" in args.methods:
        grids[0]["methods"] = ["sft", *grids[0]["methods"]]
    for seed in others:
        folders[seed] = args.out / f"search_{level.name}_seed{seed}"
        for grid in grids:
            run_search(level, folders[seed], args, seed, grid)
    return folders


def level_summary(level: Path, folders: dict[int, Path], methods: list[str]) -> dict:
    """One level's row: warm-up pages, base, headroom, each method's pick (from the first seed's search) and the
    paired differences, seeds pooled."""
    seeds = list(folders)
    picks = json.loads((folders[seeds[0]] / "search.json").read_text())["best_lr"]
    scores = {"base": [np.asarray(page_distances(folders[s], None)) for s in seeds]}
    for method in methods:
        scores[method] = [
            np.asarray(page_distances(folder, trial_folder(folder, method, picks[method])))
            for folder in folders.values()
        ]
    pages = len(scores["base"][0])
    # every seed scores the same val pages (the data seed is fixed), so one draw of pages serves all seeds
    counts = seed_resamples([range(pages)] * len(seeds), REPLICATES, 0)

    def diff(a: str, b: str) -> dict:
        mean, ci = bootstrap_gain(scores[a], scores[b], counts)
        return {"mean": round(mean, 4), "ci95": [round(v, 4) for v in ci]}

    def mean(name: str) -> float:
        return round(float(np.mean([s.mean() for s in scores[name]])), 4)

    best_of = [json.loads((f / "lists" / "stats.json").read_text())["best_of_n"] for f in folders.values()]
    summary = {
        "level": level.name,
        "model": str(level),
        "warmup_pages": warmup_pages(level),
        "val_pages": pages,
        "seeds": seeds,
        "base": {"edit_dist": mean("base")},
        "sampling": {  # on the sampled training pages: mean edit distance of the first and of the best sample
            "first": round(float(np.mean([1 - b["mean_best"][0] for b in best_of])), 4),
            f"best_of_{best_of[0]['k'][-1]}": round(float(np.mean([1 - b["mean_best"][-1] for b in best_of])), 4),
        },
        "methods": {},
    }
    for method in methods:
        summary["methods"][method] = {
            **picks[method],
            "edit_dist": mean(method),
            "edit_dist_per_seed": [round(float(s.mean()), 4) for s in scores[method]],
            "vs_base": diff(method, "base"),
        }
    if {"sft", "perpo"} <= set(methods):
        summary["perpo_vs_sft"] = diff("perpo", "sft")
    return summary


def _oracle_key(level: dict) -> str:
    """The key of the best-of-N sampling score, `best_of_<N>` (N: the lists' size)."""
    return next(key for key in level["sampling"] if key.startswith("best_of_"))


def _best_of(levels: list[dict]) -> str:
    """The oracle column's name, "best of N"."""
    return _oracle_key(levels[0]).replace("_", " ") if levels else "best of N"


def _ci(d: dict) -> str:
    return f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


def table(levels: list[dict], methods: list[str]) -> str:
    """Markdown: one row per base level (val edit distance, lower is better; differences with 95% intervals)."""
    labels = [method_label(m) for m in methods]
    best_of = _best_of(levels)
    header = ["base", "warm-up pages", "base val", f"first / {best_of} (sampled pages)"]
    header += [f"{label} val (setting)" for label in labels] + [f"{label} − base" for label in labels]
    both = all("perpo_vs_sft" in level for level in levels)
    header += ["PerPO − SFT"] if both else []
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for level in levels:
        sampling = (level["sampling"]["first"], level["sampling"][_oracle_key(level)])
        row = [
            level["level"],
            f"{level['warmup_pages']:,}" if level["warmup_pages"] is not None else "?",
            f"{level['base']['edit_dist']:.3f}",
            f"{sampling[0]:.3f} / {sampling[1]:.3f}",
        ]
        for method in methods:
            m = level["methods"][method]
            setting = f"lr {m['lr']:g}" + (f", β {m['beta']:g}" if m["beta"] is not None else "")
            row.append(f"{m['edit_dist']:.3f} ({setting})")
        row += [_ci(level["methods"][method]["vs_base"]) for method in methods]
        row += [_ci(level["perpo_vs_sft"])] if both else []
        lines.append("| " + " | ".join(row) + " |")
    pages = levels[0]["val_pages"] if levels else 0
    seeds = ", ".join(map(str, levels[0]["seeds"])) if levels else ""
    return "\n".join(lines) + (
        f"\n\nGreedy normalised edit distance (lower is better) on {pages} val pages, mean over seeds {seeds} (the "
        "settings: the first seed's search); differences paired per page, seeds pooled, 95% intervals from "
        f"{REPLICATES:,} bootstrap replicates over pages (negative: the first model is better). "
        f"First / {best_of}: the base's mean edit distance of its first and of its best sample on the sampled "
        "training pages (T = 0.5).\n"
    )


def figure(levels: list[dict], methods: list[str], path: Path) -> Path:
    """Left: val edit distance against warm-up pages (base, best of 20, each method). Right: each method's gain
    over its base with 95% intervals, the area between PerPO and SFT shaded (Figure 5's light region)."""
    import matplotlib.ticker

    from reports.figures import plt, save_figure  # matplotlib on the Agg backend

    known = all(level["warmup_pages"] is not None for level in levels)
    x = [level["warmup_pages"] if known else index for index, level in enumerate(levels)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.plot(x, [lv["base"]["edit_dist"] for lv in levels], "o--", color="grey", label="base")
    best = [lv["sampling"][_oracle_key(lv)] for lv in levels]
    left.plot(x, best, ":", color="grey", label=f"base, {_best_of(levels)} (sampled train pages)")
    gains = {}
    for method in methods:
        color = method_colour(method)
        label = method_label(method)
        left.plot(x, [lv["methods"][method]["edit_dist"] for lv in levels], "o-", color=color, label=label)
        diffs = [lv["methods"][method]["vs_base"] for lv in levels]
        gains[method] = np.array([-d["mean"] for d in diffs])
        errors = np.array([[d["mean"] - d["ci95"][0], d["ci95"][1] - d["mean"]] for d in diffs]).T
        right.errorbar(x, gains[method], yerr=errors[::-1], fmt="o-", color=color, capsize=3, label=label)
    if {"sft", "perpo"} <= set(gains):
        ahead = gains["perpo"] >= gains["sft"]
        right.fill_between(x, gains["sft"], gains["perpo"], where=ahead, color="#9ecae1", alpha=0.5, interpolate=True)
        right.fill_between(x, gains["sft"], gains["perpo"], where=~ahead, color="#dddddd", alpha=0.7, interpolate=True)
    right.axhline(0, color="grey", linewidth=0.8)
    for ax in (left, right):
        if known:
            ax.set_xlabel("pages seen in the base's warm-up (repeats counted)")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:g}k"))
        else:  # a base without its warm-up log: the bases in the order given
            ax.set_xticks(x, [level["level"] for level in levels])
            ax.set_xlabel("base, least to most trained")
    left.set_ylabel("val edit distance ↓")
    right.set_ylabel("val edit distance gained over the base ↑")
    left.set_title("bases warmed up on more pages")
    right.set_title("gain over the base (blue: PerPO ahead, grey: SFT)", fontsize=10)
    left.legend(frameon=False, fontsize=8)
    right.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("levels", type=Path, nargs="+", help="base model folders, from the least to the most trained")
    parser.add_argument("--out", type=Path, default=Path("runs/saturation"))
    parser.add_argument("--methods", nargs="+", default=["sft", "perpo"], choices=["sft", "dpo", "perpo"])
    parser.add_argument("--sft_lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3])
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-5, 1e-4, 3e-4], help="preference losses")
    parser.add_argument("--betas", type=float, nargs="+", default=[0.5], help="preference losses")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="seeds of sampling and training: the first runs the search, the others re-run its picks",
    )
    parser.add_argument("--results", type=Path, help="also copy saturation.json and saturation.png here")
    parser.add_argument("--quick", action="store_true", help="the demo's --quick scale (for tests)")
    args = parser.parse_args(argv)
    missing = [str(level) for level in args.levels if not (level / "config.json").is_file()]
    if missing:
        parser.error(f"no model in {', '.join(missing)} (give folders written by `perpo warmup`)")
    names = [level.name for level in args.levels]
    if len(set(names)) != len(names):
        parser.error(f"the base folders need distinct names (they name the search folders): {names}")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds repeats a seed: {args.seeds}")

    levels = []
    with quiet_console(args.out / "logs", "saturation.log"):  # library logs to a file; each search logs its own
        for level in args.levels:
            print(f"== base {level} (seeds {', '.join(map(str, args.seeds))})", flush=True)
            try:
                folders = run_level(level, args)
            except ConfigError as error:
                parser.exit(2, f"error: {error}\n")
            levels.append(level_summary(level, folders, args.methods))
    result = {"levels": levels, "methods": args.methods, "seeds": args.seeds, "quick": args.quick}
    write_json(args.out / "saturation.json", result)
    text = table(levels, args.methods)
    with atomic_open(args.out / "saturation.md") as handle:
        handle.write(text)
    figure(levels, args.methods, args.out / "saturation.png")
    if args.results:
        args.results.mkdir(parents=True, exist_ok=True)
        for name in ("saturation.json", "saturation.png"):
            with atomic_open(args.results / name.replace("saturation", "saturation_ocr"), "wb") as handle:
                handle.write((args.out / name).read_bytes())
    print("\n" + text)
    print(f"wrote {args.out / 'saturation.json'}, saturation.md and saturation.png")
    return result


if __name__ == "__main__":
    main()
