"""Command-line entry points: `perpo report` / `perpo compare` and `python -m reports {report,compare,tables}`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from perpo.config import ConfigError, check_numbers, check_spares_inputs, opt, parse_command


@dataclass
class CompareConfig:
    """Arguments of `perpo compare BASE AFTER --out DIR` (or a YAML file with the same keys)."""

    base: str = opt(help="results of the model before: a perpo eval folder, an lmms-eval output folder or file")
    after: str = opt(help="results of the model after, same kinds")
    out: str = opt(help="output folder (replaced atomically): index.md, metrics, wins/losses, gallery/")
    base_label: str = opt("base", help="name of the first run in tables and the gallery")
    after_label: str = opt("after", help="name of the second run")
    gallery_size: int = opt(12, ge=0, help="most-changed examples drawn, per kind (grounding PNGs, OCR HTML)")
    image_roots: list[str] = opt([], help="folders searched for images whose recorded path moved")

    def __post_init__(self):
        if self.base_label == self.after_label:
            raise ConfigError("base_label and after_label must differ")
        check_numbers(self)


def _positional_pair(argv: list[str]) -> list[str]:
    """`BASE AFTER [flags]` → `--base BASE --after AFTER [flags]` (a YAML first argument is left as is)."""
    positional = []
    while argv and not argv[0].startswith("-") and len(positional) < 2:
        if not positional and argv[0].endswith((".yaml", ".yml")):
            return argv
        positional.append(argv.pop(0))
    if len(positional) == 1:
        raise ConfigError("give two result locations (BASE AFTER) or a YAML config")
    return (["--base", positional[0], "--after", positional[1]] if positional else []) + argv


def compare_command(argv: Sequence[str], prog: str = "perpo compare") -> int:
    """Run a comparison and print where its index is."""
    from perpo.io import atomic_dir
    from reports.compare import compare_runs
    from reports.comparison_folder import write_comparison
    from reports.load import RunSpec, load_results

    argv = list(argv)
    if argv and argv[0] in ("-h", "--help"):
        argv = ["--help"]
    (cfg,) = parse_command(
        [CompareConfig],
        _positional_pair(argv),
        prog=prog,
        usage=f"{prog} BASE AFTER --out DIR [--option VALUE ...], or {prog} CONFIG.yaml [--option VALUE ...]",
        description="Compare two evaluation runs of the same tasks (e.g. a base model and its PerPO adapter): every "
        "shared metric with its change, per-sample wins and losses for grounding and OCR joined on the document id, "
        "and a gallery of the most-changed answers (boxes drawn on the images; OCR differences highlighted). "
        "Usage: perpo compare BASE AFTER --out DIR, or perpo compare CONFIG.yaml.",
    )
    check_spares_inputs("--out", cfg.out, [cfg.base, cfg.after, *cfg.image_roots])
    results = load_results([RunSpec(cfg.base, label=cfg.base_label), RunSpec(cfg.after, label=cfg.after_label)])
    comparison = compare_runs(results, cfg.base_label, cfg.after_label)
    comparison.problems[:0] = results.problems
    with atomic_dir(cfg.out) as tmp:
        write_comparison(comparison, tmp, cfg.gallery_size, cfg.image_roots)
    summary = comparison.summary
    for row in summary.itertuples(index=False):
        print(
            f"{row.task}: {row.wins} wins, {row.losses} losses, {row.same} same of {row.documents} "
            f"(mean {row.score} change {row.mean_delta:+.4f})"
        )
    better = int((comparison.metrics.verdict == "better").sum())
    worse = int((comparison.metrics.verdict == "worse").sum())
    print(f"{len(comparison.metrics)} shared metrics: {better} better, {worse} worse")
    print(f"comparison: {Path(cfg.out) / 'index.md'}")
    return 0


def report_command(argv: Sequence[str], prog: str = "perpo report") -> int:
    """Build a report folder from a report config and print where its index is."""
    from reports.report import ReportConfig, run_report

    (cfg,) = parse_command(
        [ReportConfig],
        list(argv),
        prog=prog,
        description="Build paper-style tables (Markdown, LaTeX, CSV; best bold, second underlined), the paper's "
        "own tables beside yours, figures (best-of-N, with/without image, N/γ/margin sweeps) and a before/after "
        "comparison from lmms-eval result folders. Usage: perpo report --runs RUN [RUN ...] --out DIR [--flag "
        "value ...], or perpo report CONFIG.yaml [--flag value ...] (see reports/configs/). Everything goes into one "
        "folder with an index.md.",
    )
    index = run_report(cfg)
    print(f"report: {index}")
    return 0


def tables_command(argv: Sequence[str], prog: str = "python -m reports tables") -> int:
    """Print (or write) tables from result folders, or the paper's own tables."""
    from reports.paper_numbers import paper_table
    from reports.table_cells import cells_from_results
    from reports.table_specs import table_specs
    from reports.tables import build_table

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Render tables of reports/tables.yaml: from result folders (runs), or with --paper the paper's "
        "own numbers (reports/paper_numbers.csv).",
    )
    parser.add_argument("runs", nargs="*", help="result folders (perpo eval or lmms-eval output)")
    parser.add_argument("--tables", default="", help="comma-separated table names (default: all with data)")
    parser.add_argument("--paper", action="store_true", help="the paper's tables instead of runs")
    parser.add_argument("--format", default="md", choices=("md", "tex", "csv"), help="output format (default md)")
    parser.add_argument("--spec", default=None, help="table spec file (default reports/tables.yaml)")
    args = parser.parse_args(list(argv))
    specs = table_specs(args.spec)
    names = [n for n in args.tables.split(",") if n] or list(specs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ConfigError(f"unknown table(s) {unknown}; valid: {list(specs)}")
    if not args.paper and not args.runs:
        parser.error("give result folders, or --paper for the paper's tables")
    render = {"md": "to_markdown", "tex": "to_latex", "csv": "to_csv"}[args.format]
    if args.paper:
        from reports.paper_numbers import load_paper_numbers

        available = set(load_paper_numbers()["table"])
        for name in names:
            if name in available:
                print(f"{specs[name].title}\n\n{getattr(paper_table(name, args.spec), render)()}")
        return 0
    from reports.load import load_results

    results = load_results(args.runs)
    for name in names:
        cells, _ = cells_from_results(results, specs[name])
        if not cells.empty:
            print(f"{specs[name].title}\n\n{getattr(build_table(specs[name], cells), render)()}")
    for problem in results.problems:
        print(f"note: {problem.run}: {problem.kind} {problem.task} {problem.metric} {problem.detail}", file=sys.stderr)
    return 0


COMMANDS = {"report": report_command, "compare": compare_command, "tables": tables_command}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m reports {report,compare,tables} ...`."""
    import logging

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print("usage: python -m reports {report,compare,tables} [ARGS ...]  (each has --help)", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        return COMMANDS[argv[0]](argv[1:], prog=f"python -m reports {argv[0]}")
    except (ConfigError, FileNotFoundError) as err:
        print(f"reports {argv[0]}: error: {err}", file=sys.stderr)
        return 2
