"""The demo's table over several seeds: mean ± sd of AP@50 per method, and paired gains with bootstrap intervals.

    perpo demo --seed 0 --out runs/demo_seed0     # and --seed 1, --seed 2
    python scripts/demo_seeds.py runs/demo_seed0 runs/demo_seed1 runs/demo_seed2 [--out runs/demo_seeds.md]
    python scripts/demo_seeds.py --table-from docs/results/miniature_seeds.json [--readme docs/demo.md]
    python scripts/demo_seeds.py --study online runs/demo_seed0 runs/demo_seed1 runs/demo_seed2 [--readme docs/demo.md]

The online study (`perpo demo --study online`, then `--study online` here) adds iterative PerPO and GRPO to the
table, pairs each against PerPO (`gain vs PerPO`), and shows each method's budget from the demo's online_study.json:
generated responses, optimizer steps and train wall-clock (docs/results/online_study_seeds.json, README block
`<!-- online-study:begin -->` ... `<!-- online-study:end -->`). Without it the table is the default demo's: the
online methods' eval folders are not read.

The OCR track (`perpo demo --track ocr`) works the same way on its folders: edit distance on the test pages in
place of AP@50 (lower is better, shown as it is, not in percent), docs/results/miniature_ocr_seeds.json, and the
README block between `<!-- miniature-ocr-seeds:begin -->` and `<!-- miniature-ocr-seeds:end -->`. The track is
read from each folder's demo_config.json (and from the JSON's `track` with --table-from).

Reads every `<demo>/eval/<method>/` folder through `reports.load` (the same loader `perpo report` uses) and
prints two tables: the per-seed detail (mean ± sd over seeds of every column, the gain over the base paired by
seed, AP@50 per seed) and the results table of the README, which it also saves as JSON (`--json`, default
docs/results/miniature_seeds.json; not written by default when a demo ran with `--quick`, so a smoke run never
replaces the record). Beside the JSON, a PNG of the same name draws the best-of-k curves (k = 1..20, mean ± sd
over seeds) of the methods evaluated best-of-N.

Gains and their 95% intervals. Per seed, every model is scored on the same test documents (lmms-eval samples of
`perpo_synth_test`, `ap50` 0/1 per document). The gain of a model over the base (and of PerPO over DPO) is the
per-document difference, averaged over the documents of a seed and then over seeds. Its interval is a paired
percentile bootstrap over test documents: each replicate resamples the test documents with replacement (the same
resampled documents for both models and for every comparison; seeds scored on the same documents, as the demo's
seeds are, share the draw, so a replicate without a document lacks it in every seed), computes the gain on them,
and averages over seeds; 2.5% and 97.5% quantiles of `--replicates` replicates (numpy, fixed
`--bootstrap_seed`). It measures how much the gain could move with other test expressions, given these trained
models; the sd over seeds shows how much it moves with other training runs. A single run's standard error on the
367 test expressions is about 2.6 points of AP@50.

`--table-from JSON` renders that README table from a saved JSON; `--readme FILE` also replaces the block between
`<!-- miniature-seeds:begin -->` and `<!-- miniature-seeds:end -->` in FILE with it (atomically).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from perpo.io import atomic_open, write_json
from perpo.objectives.losses import METHODS
from perpo.studies.demo import row_label
from perpo.studies.online_study import ONLINE_METHODS
from perpo.studies.stats import bootstrap_gain, seed_resamples
from reports.load import RunSpec, load_results, method_colour, method_label


@dataclass(frozen=True)
class Track:
    """What the table of one demo track reads and how it shows it."""

    name: str
    task: str  # the task whose per-document scores the gains and intervals use
    metric: str  # its per-document metric
    scale: float  # shown value = scale × metric (100: percent)
    digits: int
    higher_is_better: bool
    columns: dict[str, tuple[str, str]]  # column → (lmms-eval task, metric); a column no run has is left out
    json_keys: dict[str, str]  # column → key prefix in the JSON (`<prefix>_mean`, `<prefix>_sd`)
    readme_extra: tuple[str, ...]  # columns of the README table after the headline and the gains
    what: str  # the first words of the tables' captions
    default_json: Path
    markers: tuple[str, str]  # the README block this track's table replaces
    reference: str = "dpo"  # the second paired gain: these methods against this one
    against_reference: tuple[str, ...] = ("perpo",)
    skip: tuple[str, ...] = ()  # eval folders of these methods are not read
    budget: dict[str, str] = field(default_factory=dict)  # column → key of an `online_study.json` row
    integer_columns: tuple[str, ...] = ()  # shown without decimals
    curve: tuple[str, str] | None = None  # (best-of-N task, metric): its `<metric>_bo1`.. curve, mean over seeds

    def digits_of(self, column: str) -> int:
        return 0 if column in self.integer_columns else self.digits

    @property
    def headline(self) -> str:
        return next(iter(self.columns))


TRACKS = {
    "grounding": Track(
        name="grounding",
        task="perpo_synth_test",
        metric="ap50",
        scale=100.0,
        digits=1,
        higher_is_better=True,
        columns={
            "AP@50": ("perpo_synth_test", "ap50"),
            "AP@50 original frame": ("perpo_synth_test_orig", "ap50"),
            "AP@50 no image": ("perpo_synth_test_noimg", "ap50"),
            "AP@50 blank image": ("perpo_synth_test_blankimg", "ap50"),
            "best-of-20 first": ("perpo_synth_test_bon20", "ap50_first"),
            "best-of-20 oracle": ("perpo_synth_test_bon20", "ap50_best"),
        },
        json_keys={
            "AP@50": "ap50",
            "AP@50 original frame": "ap50_orig",
            "AP@50 no image": "ap50_noimg",
            "AP@50 blank image": "ap50_blankimg",
            "best-of-20 first": "bon20_first",
            "best-of-20 oracle": "bon20_oracle",
        },
        readme_extra=("AP@50 blank image", "best-of-20 first", "best-of-20 oracle"),
        what="AP@50 (%) on the synthetic test split",
        default_json=Path("docs/results/miniature_seeds.json"),
        markers=("<!-- miniature-seeds:begin -->", "<!-- miniature-seeds:end -->"),
        curve=("perpo_synth_test_bon20", "ap50"),
        skip=ONLINE_METHODS,  # the default demo's table; `--study online` has its own
    ),
    "ocr": Track(
        name="ocr",
        task="perpo_fox_en_page",
        metric="edit_dist",
        scale=1.0,
        digits=3,
        higher_is_better=False,
        columns={
            "edit distance": ("perpo_fox_en_page", "edit_dist"),
            "F1": ("perpo_fox_en_page", "f1"),
            "edit distance blank page": ("perpo_fox_en_page_blankimg", "edit_dist"),
            "best-of-20 first": ("perpo_fox_en_page_bon20", "edit_dist_first"),
            "best-of-20 oracle": ("perpo_fox_en_page_bon20", "edit_dist_best"),
        },
        json_keys={
            "edit distance": "edit_dist",
            "F1": "f1",
            "edit distance blank page": "edit_dist_blankimg",
            "best-of-20 first": "bon20_first",
            "best-of-20 oracle": "bon20_oracle",
        },
        readme_extra=("F1", "edit distance blank page", "best-of-20 first", "best-of-20 oracle"),
        what="Normalised edit distance (lower is better) on the synthetic test pages",
        default_json=Path("docs/results/miniature_ocr_seeds.json"),
        markers=("<!-- miniature-ocr-seeds:begin -->", "<!-- miniature-ocr-seeds:end -->"),
        curve=("perpo_fox_en_page_bon20", "edit_dist"),
    ),
}
GROUNDING = TRACKS["grounding"]
_BUDGET = {"generated responses": "generated", "optimizer steps": "steps", "train wall-clock (s)": "seconds"}
_BUDGET_JSON = _BUDGET | {"train wall-clock (s)": "train_seconds"}  # `seconds_mean` would not say which
TRACKS["online"] = replace(
    GROUNDING,
    name="online",
    json_keys=GROUNDING.json_keys | _BUDGET_JSON,
    readme_extra=("AP@50 blank image", "best-of-20 first", "best-of-20 oracle", *_BUDGET),
    what="The online study (`perpo demo --study online`): AP@50 (%) on the synthetic test split",
    default_json=Path("docs/results/online_study_seeds.json"),
    markers=("<!-- online-study:begin -->", "<!-- online-study:end -->"),
    reference="perpo",
    against_reference=ONLINE_METHODS,
    skip=(),
    budget=_BUDGET,
    integer_columns=tuple(_BUDGET),
)
DEFAULT_JSON = GROUNDING.default_json
BEGIN, END = GROUNDING.markers


@dataclass
class Loaded:
    """The demos' results: one row per (seed, method) with the track's columns as shown (AP@50 in percent, edit
    distance as it is), and the per-document scores of the track's task.

    `docs[seed][method]` maps each test document's id to its score (AP@50: 0 or 100)."""

    table: pd.DataFrame
    docs: dict[int, dict[str, dict[str, float]]]
    quick: bool
    track: Track = GROUNDING
    shared_sampling_s: list[float] = field(default_factory=list)  # per seed: the offline pass SFT..PerPO share
    curves: dict[str, dict[int, list[float]]] = field(default_factory=dict)  # method → seed → best-of-k, k = 1..N


def _doc_id(sample: dict) -> str:
    record = sample.get("record") if isinstance(sample.get("record"), dict) else {}
    return str(record.get("id", f"doc{sample.get('doc_id')}"))


def load(demos: Sequence[Path], study: str = "") -> Loaded:
    """Read every `<demo>/eval/<method>/` of every demo folder (one folder per seed); with `study="online"`, also
    the methods of `perpo demo --study online` and the budget of each from `<demo>/online_study.json`."""
    specs, seeds, seed_of, quick, tracks = [], {}, {}, False, set()
    budgets: dict[int, dict] = {}
    sampling = []
    for demo in demos:
        saved = json.loads((demo / "demo_config.json").read_text())
        config = saved.get("DemoConfig") or saved["OCRDemoConfig"]
        tracks.add(config.get("track", "grounding"))
        seed = int(config["seed"])
        quick = quick or bool(config.get("quick"))
        if seed in seeds:
            raise SystemExit(f"{demo} and {seeds[seed]} both ran seed {seed}: give one demo folder per seed")
        seeds[seed] = demo
        if study:
            if config.get("track", "grounding") != "grounding":
                raise SystemExit(f"{demo}: --study {study} compares grounding demos, not {config['track']} ones")
            study_file = demo / "online_study.json"
            if not study_file.is_file():
                raise SystemExit(f"{study_file} is missing: run `perpo demo --study online --out {demo}` first")
            study_json = json.loads(study_file.read_text())
            budgets[seed] = study_json["rows"]
            sampling.append(float(study_json.get("shared_sampling_seconds", 0.0)))
        for folder in sorted(p for p in (demo / "eval").iterdir() if p.is_dir()):
            label = f"{folder.name} seed {seed}"
            specs.append(RunSpec(path=str(folder), label=label, method=folder.name))
            seed_of[label] = seed
    if len(tracks) != 1:
        raise SystemExit(f"the demo folders mix tracks ({', '.join(sorted(tracks))}): give one track's seeds")
    track = TRACKS[tracks.pop()]
    if study:
        track = TRACKS[study]
    specs = [spec for spec in specs if spec.method not in track.skip]
    results = load_results(specs)
    frame = results.frame
    rows, curves = [], {}
    for (method, label), part in frame.groupby(["method", "run"]):
        values = {(t, m): v for t, m, v in zip(part["task"], part["metric"], part["value"], strict=True)}
        row = {"method": method, "seed": seed_of[label]}
        row |= {name: track.scale * values[key] for name, key in track.columns.items() if key in values}
        if track.curve:
            task, metric = track.curve
            at = {
                int(found[1]): v
                for (t, m), v in values.items()
                if t == task and (found := re.fullmatch(rf"{metric}_bo(\d+)", m))
            }
            if at and sorted(at) == list(range(1, len(at) + 1)):  # the whole curve, k = 1..N
                curves.setdefault(method, {})[row["seed"]] = [track.scale * at[k] for k in sorted(at)]
        budget = budgets.get(row["seed"], {}).get(method, {})
        row |= {name: float(budget[key]) for name, key in track.budget.items() if budget.get(key) is not None}
        rows.append(row)
    docs: dict[int, dict[str, dict[str, float]]] = {}
    for run in results.runs:
        samples = run.samples(track.task)
        if samples:
            per_doc = {_doc_id(s): track.scale * float(s[track.metric]) for s in samples if track.metric in s}
            docs.setdefault(seed_of[run.label], {})[str(run.meta["method"])] = per_doc
    table = pd.DataFrame(rows).sort_values(["seed", "method"]).reset_index(drop=True)
    return Loaded(table, docs, quick, track, sampling, curves)


# ---------------------------------------------------------------------------------------------- statistics


def _r(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 4)


def summary_json(loaded: Loaded, replicates: int = 10_000, bootstrap_seed: int = 0) -> dict:
    """The results JSON: `{"methods": {method: {...}}, "seeds": [...]}` (percent points; see the module docstring).

    Per method: `ap50_mean`, `ap50_sd` (over seeds; null with one seed), `ap50_per_seed`, `gain_vs_base_mean`,
    `gain_vs_base_ci95` (null for the base itself), for PerPO `gain_vs_dpo_mean` and `gain_vs_dpo_ci95`,
    `<column>_mean` / `<column>_sd` of every other column the runs have, `n_docs` per seed and
    `bootstrap_replicates` (the OCR track: `edit_dist_*` in place of `ap50_*`; a gain there is a change in edit
    distance, negative when the model got better).
    """
    table, docs, track = loaded.table, loaded.docs, loaded.track
    task, headline = track.task, track.headline
    seeds = sorted(int(s) for s in set(table["seed"]))
    missing = [s for s in seeds if "base" not in docs.get(s, {})]
    if missing:
        raise SystemExit(f"no base run with {task} samples for seed(s) {missing}: the gains are paired with the base")
    order = {s: sorted(docs[s]["base"]) for s in seeds}  # the documents of each seed, in a fixed order
    counts = dict(zip(seeds, seed_resamples([order[s] for s in seeds], replicates, bootstrap_seed), strict=True))

    def scores(method: str) -> list[np.ndarray]:
        out = []
        for s in seeds:
            per_doc = docs[s].get(method)
            if per_doc is None:
                raise SystemExit(f"seed {s}: no {task} samples for {method} (every seed needs every method)")
            absent = [d for d in order[s] if d not in per_doc]
            if absent:
                raise SystemExit(
                    f"seed {s}: {method} lacks {len(absent)} of the base's {len(order[s])} {task} documents "
                    f"(e.g. {absent[0]}): evaluate every method on the same documents"
                )
            out.append(np.array([per_doc[d] for d in order[s]]))
        return out

    methods = {}
    present = [m for m in METHODS if m in set(table["method"])]
    present += sorted(set(table["method"]) - set(present))
    base_scores = scores("base")
    for method in present:
        part = table[table["method"] == method].set_index("seed").sort_index()
        entry: dict = {}
        for name, key in track.json_keys.items():
            if name not in part or part[name].isna().all():
                continue
            values = part[name].dropna()
            entry[f"{key}_mean"] = _r(values.mean())
            entry[f"{key}_sd"] = _r(values.std(ddof=1)) if len(values) > 1 else None
        entry[f"{track.json_keys[headline]}_per_seed"] = [_r(v) for v in part[headline]]
        own = scores(method)
        entry["n_docs"] = [int(len(x)) for x in own]
        if method == "base":
            entry["gain_vs_base_mean"], entry["gain_vs_base_ci95"] = None, None
        else:
            mean, ci = bootstrap_gain(own, base_scores, [counts[s] for s in seeds])
            entry["gain_vs_base_mean"], entry["gain_vs_base_ci95"] = _r(mean), [_r(ci[0]), _r(ci[1])]
        if method in track.against_reference and track.reference in present:
            mean, ci = bootstrap_gain(own, scores(track.reference), [counts[s] for s in seeds])
            key = f"gain_vs_{track.reference}"
            entry[f"{key}_mean"], entry[f"{key}_ci95"] = _r(mean), [_r(ci[0]), _r(ci[1])]
        curve = loaded.curves.get(method, {})
        if sorted(curve) == seeds and len({len(c) for c in curve.values()}) == 1:  # every seed, one N
            stacked = np.array([curve[s] for s in seeds])
            entry["best_of_k_mean"] = [_r(v) for v in stacked.mean(axis=0)]
            entry["best_of_k_sd"] = [_r(v) for v in stacked.std(axis=0, ddof=1)] if len(seeds) > 1 else None
        entry["bootstrap_replicates"] = replicates
        methods[method] = entry
    summary = {"methods": methods, "seeds": seeds, "track": track.name}
    if loaded.shared_sampling_s:
        summary["shared_sampling_seconds_mean"] = _r(float(np.mean(loaded.shared_sampling_s)))
    return summary


# ---------------------------------------------------------------------------------------------- tables


def _mean_sd(values: pd.Series, sign: str = "", digits: int = 1) -> str:
    if values.empty:
        return "–"
    mean = f"{values.mean():{sign},.{digits}f}"
    return mean if len(values) < 2 else f"{mean} ± {values.std(ddof=1):,.{digits}f}"


def summarise(table: pd.DataFrame, track: Track = GROUNDING) -> str:
    """Markdown: mean ± sd over seeds per method, the gain over the base paired by seed, and the per-seed headline."""
    order = [m for m in METHODS if m in set(table["method"])]
    headline, digits = track.headline, track.digits
    columns = [name for name in (*track.columns, *track.budget) if name in table and table[name].notna().any()]
    base = table[table["method"] == "base"].set_index("seed")[headline]
    lines = [
        f"{track.what} over seeds {sorted(set(table['seed']))}: mean ± sd.",
        "",
        "| method | " + " | ".join(columns) + f" | gain over base (paired) | {headline} per seed |",
        "| :--- |" + " ---: |" * (len(columns) + 2),
    ]
    for method in order:
        part = table[table["method"] == method].set_index("seed").sort_index()
        cells = [
            _mean_sd(part[name].dropna() if name in part else pd.Series(dtype=float), digits=track.digits_of(name))
            for name in columns
        ]
        gain = (part[headline] - base.reindex(part.index)).dropna()
        gain_text = "–" if method == "base" else _mean_sd(gain, "+", digits)
        per_seed = ", ".join(f"{v:.{digits}f}" for v in part[headline])
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {gain_text} | {per_seed} |")
    return "\n".join(lines) + "\n"


def _value(entry: dict, key: str, digits: int = 1) -> str:
    mean, sd = entry.get(f"{key}_mean"), entry.get(f"{key}_sd")
    if mean is None:
        return "–"
    return f"{mean:,.{digits}f}" if sd is None else f"{mean:,.{digits}f} ± {sd:,.{digits}f}"


def _gain(entry: dict, name: str, digits: int = 1) -> str:
    mean, ci = entry.get(f"{name}_mean"), entry.get(f"{name}_ci95")
    if mean is None or ci is None:
        return "–"
    return f"{mean:+.{digits}f} [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def results_table(summary: dict) -> str:
    """The README's Markdown table from the results JSON (`summary_json`)."""
    track = TRACKS[summary.get("track", "grounding")]
    methods, keys, digits = summary["methods"], track.json_keys, track.digits
    extra = [
        (name, keys[name])
        for name in track.readme_extra
        if any(entry.get(f"{keys[name]}_mean") is not None for entry in methods.values())
    ]
    gain = "gain" if track.higher_is_better else "change"  # an edit distance that falls is the good direction
    versus = f"{gain} vs {method_label(track.reference)} [95% CI]"
    header = ["method", track.headline, f"{gain} vs base [95% CI]", versus, *(n for n, _ in extra)]
    replicates = {e.get("bootstrap_replicates") for e in methods.values()} - {None}
    bootstrap = f"{replicates.pop():,} replicates" if len(replicates) == 1 else "bootstrap"
    seeds = ("seed " if len(summary["seeds"]) == 1 else "seeds ") + ", ".join(str(s) for s in summary["seeds"])
    units = "Gains in points" if track.higher_is_better else "Changes in edit distance (negative: fewer errors)"
    caption = (
        f"{track.what}, {seeds}: mean ± sd over seeds. {units}, paired per test document, averaged over "
        f"seeds, with 95% intervals from a bootstrap over test documents ({bootstrap})."
    )
    if summary.get("shared_sampling_seconds_mean") is not None:
        caption += (
            " Train wall-clock: the online methods' times include their sampling; SFT, DPO, LiPO-λ and PerPO share "
            f"one offline sampling pass of {summary['shared_sampling_seconds_mean']:.0f} s, not included."
        )
    lines = [
        caption,
        "",
        "| " + " | ".join(header) + " |",
        "| :--- |" + " ---: |" * (len(header) - 1),
    ]
    order = [m for m in METHODS if m in methods] + sorted(set(methods) - set(METHODS))
    for method in order:
        entry = methods[method]
        cells = [row_label(method), _value(entry, keys[track.headline], digits)]
        cells += [_gain(entry, "gain_vs_base", digits), _gain(entry, f"gain_vs_{track.reference}", digits)]
        cells += [_value(entry, key, track.digits_of(name)) for name, key in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def best_of_k_figure(summary: dict):
    """The best-of-k curves of the methods that were evaluated best-of-N: mean over seeds, a band of ± sd (one
    line per method in its report colour); None when no method has a curve."""
    from matplotlib.ticker import MaxNLocator

    from reports.figures import METRIC_LABELS, plt

    track = TRACKS[summary.get("track", "grounding")]
    methods = {m: e for m, e in summary["methods"].items() if e.get("best_of_k_mean")}
    if not methods or track.curve is None:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method in [m for m in METHODS if m in methods] + sorted(set(methods) - set(METHODS)):
        entry, color = methods[method], method_colour(method)
        mean = np.array(entry["best_of_k_mean"], dtype=float)
        ks = np.arange(1, len(mean) + 1)
        ax.plot(ks, mean, marker="o", markersize=3, color=color, label=method_label(method))
        if entry.get("best_of_k_sd"):
            sd = np.array(entry["best_of_k_sd"], dtype=float)
            ax.fill_between(ks, mean - sd, mean + sd, color=color, alpha=0.15, linewidth=0)
    seeds = ("seed " if len(summary["seeds"]) == 1 else "seeds ") + ", ".join(str(s) for s in summary["seeds"])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("samples per prompt k (best of k, oracle reward)")
    ax.set_ylabel(f"best-of-k {METRIC_LABELS.get(track.curve[1], track.curve[1])}")
    ax.set_title(f"Best-of-k on the test split ({seeds}: mean ± sd)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def replace_block(text: str, block: str, name: str, markers: tuple[str, str] = (BEGIN, END)) -> str:
    """`text` with everything between the `markers` lines (default: the grounding table's) replaced by `block`.

    Raises:
        ValueError: naming `name` when the markers are missing, repeated or out of order.
    """
    begin_mark, end_mark = markers
    begin, end = text.count(begin_mark), text.count(end_mark)
    if begin != 1 or end != 1 or text.index(begin_mark) > text.index(end_mark):
        raise ValueError(
            f"{name}: needs exactly one {begin_mark} line followed by one {end_mark} line around the results table "
            f"(found {begin} begin and {end} end marker(s))"
        )
    head, rest = text.split(begin_mark)
    _, tail = rest.split(end_mark)
    return f"{head}{begin_mark}\n{block.rstrip()}\n{end_mark}{tail}"


def update_readme(path: Path, table: str, markers: tuple[str, str] = (BEGIN, END)) -> None:
    """Replace the marked block of `path` with `table`, atomically (the file is unchanged on any error)."""
    text = path.read_text(encoding="utf-8")
    new = replace_block(text, table, str(path), markers)
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(new)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demos", type=Path, nargs="*", help="output folders of `perpo demo` runs (one per seed)")
    parser.add_argument("--out", type=Path, help="write the per-seed detail table (Markdown) here too")
    parser.add_argument(
        "--json",
        type=Path,
        help=f"write the results JSON here (default: {DEFAULT_JSON}, the OCR track's {TRACKS['ocr'].default_json})",
    )
    parser.add_argument(
        "--study",
        choices=["online"],
        help="the online study's table (demos run with `perpo demo --study online`): every method with its budget, "
        f"iterative PerPO and GRPO paired against PerPO; JSON {TRACKS['online'].default_json}",
    )
    parser.add_argument("--replicates", type=int, default=10_000, help="bootstrap replicates (default 10000)")
    parser.add_argument("--bootstrap_seed", type=int, default=0, help="seed of the bootstrap draws (default 0)")
    parser.add_argument("--table-from", dest="table_from", type=Path, help="render the README table from this JSON")
    parser.add_argument("--readme", type=Path, help="replace the marked miniature-seeds block of this file")
    args = parser.parse_args(argv)
    if bool(args.demos) == bool(args.table_from):
        parser.error("give either demo folders or --table-from JSON")
    if args.replicates < 1:
        parser.error("--replicates must be >= 1")

    if args.table_from:
        summary = json.loads(args.table_from.read_text(encoding="utf-8"))
    else:
        missing = [str(d) for d in args.demos if not (d / "eval").is_dir()]
        if missing:
            parser.error(f"no eval/ folder in {', '.join(missing)}: run `perpo demo --out DIR` there first")
        loaded = load(args.demos, args.study or "")
        text = summarise(loaded.table, loaded.track)
        print(text)
        if args.out:
            with atomic_open(args.out) as handle:
                handle.write(text)
        summary = summary_json(loaded, args.replicates, args.bootstrap_seed)
        default = loaded.track.default_json
        if args.json is None and loaded.quick:
            print(f"(--quick demo: {default} left as it is; pass --json PATH to save these results)\n")
        else:
            path = write_json(args.json or default, summary)
            figure = best_of_k_figure(summary)
            if figure is not None:
                from reports.figures import save_figure

                print(f"wrote {save_figure(figure, path.with_suffix('.png'))}")
            print(f"wrote {path}\n")
    table = results_table(summary)
    print(table)
    if args.readme:
        try:
            update_readme(args.readme, table, TRACKS[summary.get("track", "grounding")].markers)
        except (ValueError, OSError) as err:
            raise SystemExit(f"error: {err}") from err
        print(f"updated the results table in {args.readme}")


if __name__ == "__main__":
    main()
