"""The demo's table over several seeds: per-seed AP@50, mean ± sd, and each method's paired gain over the base.

    perpo demo --seed 0 --out runs/demo_seed0     # and --seed 1, --seed 2
    python scripts/demo_seeds.py runs/demo_seed0 runs/demo_seed1 runs/demo_seed2 --out runs/demo_seeds.md

Reads every `<demo>/eval/<method>/` folder through `reports.load` (the same loader `perpo report` uses). The gain
over the base is paired by seed (each seed's model minus that seed's base), so the spread of the base's own
evaluation does not hide or fake a difference. A single run's standard error on the 367 test expressions is about
2.6 points of AP@50.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from perpo.io import atomic_open
from reports.load import METHOD_ORDER, RunSpec, load_results

COLUMNS = {
    "AP@50": ("perpo_synth_test", "ap50"),
    "AP@50 original frame": ("perpo_synth_test_orig", "ap50"),
    "AP@50 no image": ("perpo_synth_test_noimg", "ap50"),
    "best-of-20 first": ("perpo_synth_test_bon20", "ap50_first"),
    "best-of-20 oracle": ("perpo_synth_test_bon20", "ap50_best"),
}


def load(demos: list[Path]) -> pd.DataFrame:
    """One row per (seed, method) with the COLUMNS in percent."""
    specs, seeds = [], {}
    for demo in demos:
        seed = json.loads((demo / "demo_config.json").read_text())["DemoConfig"]["seed"]
        if seed in seeds:
            raise SystemExit(f"{demo} and {seeds[seed]} both ran seed {seed}: give one demo folder per seed")
        seeds[seed] = demo
        for folder in sorted((demo / "eval").iterdir()):
            specs.append(RunSpec(path=str(folder), label=f"{folder.name} seed {seed}", method=folder.name))
    frame = load_results(specs).frame
    rows = []
    for (method, seed), part in frame.groupby(["method", "seed"]):
        values = {(t, m): v for t, m, v in zip(part["task"], part["metric"], part["value"], strict=True)}
        row = {"method": method, "seed": int(seed)}
        row |= {name: 100 * values[key] for name, key in COLUMNS.items() if key in values}
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_sd(values: pd.Series, sign: str = "") -> str:
    if values.empty:
        return "–"
    mean = f"{values.mean():{sign}.1f}"
    return mean if len(values) < 2 else f"{mean} ± {values.std(ddof=1):.1f}"


def summarise(table: pd.DataFrame) -> str:
    """Markdown: mean ± sd over seeds per method, the paired gain over the base, and the per-seed AP@50."""
    order = [m for m in METHOD_ORDER if m in set(table["method"])]
    base = table[table["method"] == "base"].set_index("seed")["AP@50"]
    lines = [
        f"AP@50 (%) on the synthetic test split over seeds {sorted(set(table['seed']))}: mean ± sd.",
        "",
        "| method | " + " | ".join(COLUMNS) + " | gain over base (paired) | AP@50 per seed |",
        "| :--- |" + " ---: |" * (len(COLUMNS) + 2),
    ]
    for method in order:
        part = table[table["method"] == method].set_index("seed").sort_index()
        cells = []
        for name in COLUMNS:
            values = part[name].dropna() if name in part else pd.Series(dtype=float)
            cells.append(_mean_sd(values))
        gain = (part["AP@50"] - base.reindex(part.index)).dropna()
        gain_text = "–" if method == "base" else _mean_sd(gain, "+")
        per_seed = ", ".join(f"{v:.1f}" for v in part["AP@50"])
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {gain_text} | {per_seed} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demos", type=Path, nargs="+", help="output folders of `perpo demo` runs (one per seed)")
    parser.add_argument("--out", type=Path, help="write the Markdown table here too")
    args = parser.parse_args()
    missing = [str(d) for d in args.demos if not (d / "eval").is_dir()]
    if missing:
        parser.error(f"no eval/ folder in {', '.join(missing)}: run `perpo demo --out DIR` there first")
    text = summarise(load(args.demos))
    print(text)
    if args.out:
        with atomic_open(args.out) as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
