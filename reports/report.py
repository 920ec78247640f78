"""`perpo report CONFIG.yaml`: tables, figures, the paper's numbers and a before/after comparison in one folder.

The config (`ReportConfig`, parsed like every perpo command: YAML first, then `--flag value`) names the runs and
what to build; everything lands in `out`, replaced atomically:

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

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perpo.config import ConfigError, check_keys, opt
from perpo.io import atomic_dir
from reports import figures as figs
from reports.compare import compare_runs, problems_markdown, runs_frame, write_comparison
from reports.load import Problem, ResultSet, RunSpec, load_results, problems_frame
from reports.markdown import frame_to_markdown, write_text
from reports.tables import (
    Table,
    build_table,
    cells_from_paper,
    cells_from_results,
    comparison_with_paper,
    load_paper_numbers,
    table_specs,
)

logger = logging.getLogger(__name__)

FIGURES = ("best_of_n", "image_ablation", "n_sweep", "gamma_sweep", "margin_sweep")
RUN_KEYS = ("path", "label", "method", "model_label", "meta")


@dataclass
class ReportConfig:
    """Arguments of `perpo report` (a YAML file; flags override its scalar keys)."""

    out: str = opt(help="output folder (replaced atomically); index.md links everything")
    runs: list[dict] = opt([], help="runs: [{path, label, method, model_label, meta}] (YAML); path alone is enough")
    title: str = opt("PerPO report", help="heading of index.md")
    tables: list[str] | None = opt(None, help="tables to build (names in tables.yaml); default: all with data")
    paper_tables: bool = opt(True, help="also rebuild the paper's tables and put the runs beside them")
    paper_model: str = opt("LLaVA-v1.5-7B", help="the paper's base model whose rows the runs are compared with")
    figures: list[str] | None = opt(None, help=f"figures to draw ({', '.join(FIGURES)}); default: all with data")
    sweep_metrics: list[str] | None = opt(None, help="sweep panels as task:metric (default: greedy image tasks)")
    compare: dict | None = opt(None, help="{base: LABEL, after: LABEL}: a before/after comparison of two runs")
    gallery_size: int = opt(12, help="most-changed examples in the comparison's gallery, per kind")
    image_roots: list[str] = opt([], help="folders searched for images whose recorded path moved")
    tables_yaml: str | None = opt(None, help="table spec file (default: reports/tables.yaml)")

    def __post_init__(self):
        if not self.runs:
            raise ConfigError("runs: name at least one result folder ({path: ...})")
        specs = []
        for index, entry in enumerate(self.runs):
            entry = {"path": entry} if isinstance(entry, str) else entry
            if not isinstance(entry, dict) or "path" not in entry:
                raise ConfigError(f"runs[{index}]: expected {{path: ..., label: ...}}, got {entry!r}")
            check_keys(list(entry), RUN_KEYS, f"runs[{index}]")
            specs.append(RunSpec(**entry))
        self.run_specs = specs
        unknown = [f for f in self.figures or [] if f not in FIGURES]
        if unknown:
            raise ConfigError(f"unknown figure(s) {unknown}; valid: {', '.join(FIGURES)}")
        if self.compare is not None:
            check_keys(list(self.compare), ("base", "after"), "compare")
            if set(self.compare) != {"base", "after"}:
                raise ConfigError("compare: needs both base and after (run labels)")
        if self.gallery_size < 0:
            raise ConfigError("gallery_size must be >= 0")
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
        made.append(("image_ablation", "With and without the image (Figure 1c)", figs.image_ablation_figure(results)))
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
