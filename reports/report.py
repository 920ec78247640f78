"""`perpo report`: tables, figures, the paper's numbers and a before/after comparison in one folder.

The config (`ReportConfig`, parsed like every perpo command: YAML first, then `--flag value`) names the runs and
what to build; flags alone are enough (`perpo report --runs path=A,label=base path=B,label=PerPO --compare
base=base,after=PerPO --out DIR`). Everything lands in `out`, replaced atomically:

    out/
      index.md                 links (and inlines) every table, figure and the comparison; lists problems
      tables/<name>.{md,tex,csv}            tables from the runs (only those some run has data for)
      tables/<name>_vs_paper.{md,tex,csv}   the runs beside the paper's matching rows, with the difference
      tables/paper_<name>.{md,tex,csv}      the paper's own tables, rebuilt from paper_numbers.csv
      figures/*.png            best-of-N curve, with/without image, N / γ / margin sweeps (those the runs support)
      comparison/              `perpo compare` of the two runs named by `compare` (index.md, gallery/, ...)
      data/tidy.csv, data/problems.csv      the tidy table behind everything, and what could not be used
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perpo.config import ConfigError, check_keys, check_numbers, check_spares_inputs, opt
from perpo.io import atomic_dir
from reports import figures as figs
from reports.compare import compare_runs
from reports.comparison_folder import problems_markdown, runs_frame, write_comparison
from reports.load import Problem, ResultSet, RunSpec, load_results, problems_frame
from reports.markdown import frame_to_markdown, write_text
from reports.paper_numbers import cells_from_paper, load_paper_numbers
from reports.table_cells import cells_from_results
from reports.table_render import Table
from reports.table_specs import table_specs
from reports.tables import build_table, comparison_with_paper

logger = logging.getLogger(__name__)

FIGURES = ("best_of_n", "image_ablation", "n_sweep", "gamma_sweep", "margin_sweep")
RUN_KEYS = ("path", "label", "method", "model_label", "meta")
TEXT_RUN_KEYS = ("path", "label", "method", "model_label")
"""Keys a run given as text (`path=...,label=...`) may set; `meta` is a mapping, so YAML only."""


def parse_pairs(text: str, valid: tuple[str, ...], source: str) -> dict[str, str]:
    """`key=value,key=value` (a mapping written on the command line) as a dict.

    Raises:
        ConfigError: a part without `=` or with an empty key or value, or a key not in `valid` (names `source`).
    """
    pairs = {}
    for part in text.split(","):
        key, sep, value = (s.strip() for s in part.partition("="))
        if not (sep and key and value):
            raise ConfigError(
                f"{source}: expected {','.join(f'{k}=...' for k in valid)}, got {text!r} ({part!r} is not key=value)"
            )
        pairs[key] = value
    check_keys(list(pairs), valid, source)
    return pairs


def parse_run(text: str, source: str) -> dict[str, str]:
    """One run as text: `PATH`, or `path=PATH,label=NAME,...` when any part starts with a key of `TEXT_RUN_KEYS`.

    Raises:
        ConfigError: key=value text that is malformed, has an unknown key or no `path`.
    """
    if not any(part.partition("=")[0].strip() in TEXT_RUN_KEYS and "=" in part for part in text.split(",")):
        return {"path": text}
    entry = parse_pairs(text, TEXT_RUN_KEYS, source)
    if "path" not in entry:
        raise ConfigError(f"{source}: {text!r} has no path=PATH")
    return entry


@dataclass
class ReportConfig:
    """Arguments of `perpo report` (flags alone, or a YAML file whose scalar keys flags override).

    `runs` and `compare` are text on the command line (`parse_run`, `parse_pairs`) and may be mappings in YAML;
    `__post_init__` turns them into `run_specs` (`RunSpec`s) and `compare` into `{"base": ..., "after": ...}`.
    """

    out: str = opt(help="output folder (replaced atomically); index.md links everything")
    runs: list[str] = dataclasses.field(
        default_factory=list,
        metadata={
            "action": "extend",
            "metavar": "RUN",
            "help": "result locations (perpo eval folder, lmms-eval output folder or *_results.json), each a PATH "
            "or path=PATH,label=NAME,method=NAME,model_label=NAME (no commas inside values); repeatable (--runs A B "
            "--runs C), adding to a config file's runs. In YAML: a list of PATHs or of {path, label, method, "
            "model_label, meta}",
        },
    )
    title: str = opt("PerPO report", help="heading of index.md")
    tables: list[str] | None = opt(None, help="tables to build (names in tables.yaml); default: all with data")
    paper_tables: bool = opt(True, help="also rebuild the paper's tables and put the runs beside them")
    paper_model: str = opt("LLaVA-v1.5-7B", help="the paper's base model whose rows the runs are compared with")
    figures: list[str] | None = opt(None, help=f"figures to draw ({', '.join(FIGURES)}); default: all with data")
    sweep_metrics: list[str] | None = opt(None, help="sweep panels as task:metric (default: greedy image tasks)")
    compare: str | None = opt(
        None, help="a before/after comparison of two runs: base=LABEL,after=LABEL (YAML: {base: LABEL, after: LABEL})"
    )
    gallery_size: int = opt(12, ge=0, help="most-changed examples in the comparison's gallery, per kind")
    image_roots: list[str] = opt([], help="folders searched for images whose recorded path moved")
    tables_yaml: str | None = opt(None, help="table spec file (default: reports/tables.yaml)")

    def __post_init__(self):
        check_numbers(self)
        if not self.runs:
            raise ConfigError("runs: name at least one result folder (--runs PATH, or in YAML runs: [{path: ...}])")
        specs = []
        for index, entry in enumerate(self.runs):
            entry = parse_run(entry, f"runs[{index}]") if isinstance(entry, str) else entry
            if not isinstance(entry, dict) or "path" not in entry:
                raise ConfigError(f"runs[{index}]: expected PATH or {{path: ..., label: ...}}, got {entry!r}")
            check_keys(list(entry), RUN_KEYS, f"runs[{index}]")
            specs.append(RunSpec(**entry))
        self.run_specs = specs
        unknown = [f for f in self.figures or [] if f not in FIGURES]
        if unknown:
            raise ConfigError(f"unknown figure(s) {unknown}; valid: {', '.join(FIGURES)}")
        if isinstance(self.compare, str):
            self.compare = parse_pairs(self.compare, ("base", "after"), "compare")
        if self.compare is not None:
            if not isinstance(self.compare, dict):
                raise ConfigError(f"compare: expected base=LABEL,after=LABEL, got {self.compare!r}")
            check_keys(list(self.compare), ("base", "after"), "compare")
            if set(self.compare) != {"base", "after"}:
                raise ConfigError("compare: needs both base and after (run labels)")
        for item in self.sweep_metrics or []:
            if item.count(":") != 1:
                raise ConfigError(f"sweep_metrics: expected task:metric, got {item!r}")


def _write_table(table: Table, folder: Path, name: str) -> dict[str, Path]:
    return {
        "md": write_text(folder / f"{name}.md", table.to_markdown()),
        "tex": write_text(folder / f"{name}.tex", table.to_latex()),
        "csv": write_text(folder / f"{name}.csv", table.to_csv()),
    }


def _links(paths: dict[str, Path], root: Path) -> str:
    return ", ".join(f"[{kind}]({p.relative_to(root).as_posix()})" for kind, p in paths.items())


def build_tables(
    results: ResultSet, cfg: ReportConfig, root: Path, problems: list[Problem]
) -> tuple[list[str], list[str]]:
    """Write the run tables, their comparison with the paper, and the paper's tables; return index.md lines for
    the runs' tables and for the paper's tables."""
    specs = table_specs(cfg.tables_yaml)
    names = cfg.tables or list(specs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ConfigError(f"unknown table(s) {unknown}; tables.yaml defines {list(specs)}")
    paper = load_paper_numbers() if cfg.paper_tables else None
    ours, theirs, skipped = [], [], []
    for name in names:
        spec = specs[name]
        cells, missing = cells_from_results(results, spec)
        if cells.empty:
            skipped.append(f"{name} ({', '.join(sorted(spec.tasks())[:4])}{', …' if len(spec.tasks()) > 4 else ''})")
            continue
        problems += missing
        table = build_table(spec, cells)
        paths = _write_table(table, root / "tables", name)
        ours += [f"### {spec.title}", "", spec.caption, "", table.to_markdown(), _links(paths, root), ""]
        if paper is not None and name in set(paper["table"]):
            side = comparison_with_paper(spec, cells, cells_from_paper(spec, paper), cfg.paper_model)
            if side is not None:
                side_paths = _write_table(side, root / "tables", f"{name}_vs_paper")
                ours += [
                    f"Beside the paper ({cfg.paper_model} rows; Δ = ours − paper):",
                    "",
                    side.to_markdown(),
                    _links(side_paths, root),
                    "",
                ]
    if skipped:
        ours += [f"Not built (no run has any of their tasks): {'; '.join(skipped)}.", ""]
    if paper is not None:
        for name in dict.fromkeys(paper["table"]):
            if name not in specs:
                continue
            spec = specs[name]
            table = build_table(spec, cells_from_paper(spec, paper))
            paths = _write_table(table, root / "tables", f"paper_{name}")
            sources = "; ".join(dict.fromkeys(paper[paper["table"] == name]["source"]))
            theirs += [
                f"### Paper, {spec.title}",
                "",
                f"Typed in from the paper ({sources}); marks by the rule of reports/tables.py.",
                "",
                table.to_markdown(),
                _links(paths, root),
                "",
            ]
    return ours, theirs


def _sweep_series(cfg: ReportConfig, results: ResultSet, field: str) -> list[tuple[str, str]]:
    if cfg.sweep_metrics:
        return [tuple(item.split(":")) for item in cfg.sweep_metrics]
    return figs.default_series(results, field)


def build_figures(results: ResultSet, cfg: ReportConfig, root: Path) -> list[str]:
    """Draw the requested (default: every supported) figure; return index.md lines."""
    wanted = cfg.figures or list(FIGURES)
    lines, absent = [], []
    made: list[tuple[str, str, Any]] = []
    if "best_of_n" in wanted:
        for metric in ("ap50", "iou", "edit_dist"):
            made.append(
                (f"best_of_n_{metric}", f"Best-of-N {metric} (Figure 1b)", figs.best_of_n_figure(results, metric))
            )
    if "image_ablation" in wanted:
        for metric, suffix in (("ap50", ""), ("edit_dist", "_edit_dist")):
            fig = figs.image_ablation_figure(results, metric)
            if fig is not None or not suffix:  # the grounding figure is named even when absent; OCR's only when drawn
                made.append((f"image_ablation{suffix}", f"With and without the image, {metric} (Figure 1c)", fig))
    for field in ("n", "gamma", "margin"):
        if f"{field}_sweep" in wanted:
            fig = figs.sweep_figure(results, field, _sweep_series(cfg, results, field))
            made.append((f"{field}_sweep", f"Sweep over {figs.SWEEP_FIELDS[field]}", fig))
    for name, title, fig in made:
        if fig is None:
            absent.append(name)
            continue
        path = figs.save_figure(fig, root / "figures" / f"{name}.png")
        lines += [f"### {title}", "", f"![{name}]({path.relative_to(root).as_posix()})", ""]
    if absent:
        lines += [f"Not drawn (the runs hold no data for them): {', '.join(absent)}.", ""]
    return lines


def run_report(cfg: ReportConfig) -> Path:
    """Build the report folder (see the module docstring); return the path of its `index.md`."""
    out = Path(cfg.out)
    check_spares_inputs("--out", out, [spec.path for spec in cfg.run_specs] + list(cfg.image_roots))
    results = load_results(cfg.run_specs)
    problems = list(results.problems)
    with atomic_dir(out) as tmp:
        table_lines, paper_lines = build_tables(results, cfg, tmp, problems)
        figure_lines = build_figures(results, cfg, tmp)
        compare_lines = []
        if cfg.compare:
            comparison = compare_runs(results, cfg.compare["base"], cfg.compare["after"])
            write_comparison(comparison, tmp / "comparison", cfg.gallery_size, cfg.image_roots)
            problems += comparison.problems
            gallery = "comparison/gallery/index.html"
            where = f", gallery: [{gallery}]({gallery})" if (tmp / gallery).is_file() else " (no answer changed)"
            compare_lines = [
                f"[comparison/index.md](comparison/index.md): {cfg.compare['base']} → {cfg.compare['after']}{where}.",
                "",
                frame_to_markdown(comparison.summary),
                "",
            ]
        write_text(tmp / "data" / "tidy.csv", results.frame.to_csv(index=False))
        write_text(tmp / "data" / "problems.csv", problems_frame(problems).drop_duplicates().to_csv(index=False))
        lines = [f"# {cfg.title}", "", "## Runs", "", frame_to_markdown(runs_frame(results.runs))]
        lines += ["Tidy table of every metric: [data/tidy.csv](data/tidy.csv).", ""]
        lines += ["## Tables", "", *table_lines]
        lines += ["## Figures", "", *figure_lines]
        if compare_lines:
            lines += ["## Before / after", "", *compare_lines]
        if paper_lines:
            lines += ["## The paper's tables", "", *paper_lines]
        lines += [
            "## Problems",
            "",
            "Unknown, missing or non-numeric metrics and metadata that could not be read "
            "([data/problems.csv](data/problems.csv)):",
            "",
            problems_markdown(problems),
        ]
        write_text(tmp / "index.md", "\n".join(lines) + "\n")
    return out / "index.md"
