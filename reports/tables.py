"""The paper's table layouts: cells → rows, formatted values, "–" where missing, best bold and second underlined.

Specs live in `reports/tables.yaml` (`reports.table_specs`). Building a table has two steps:

1. cells: a long DataFrame with one value per (row, column), from loaded runs (`reports.table_cells`) or from
   `paper_numbers.csv` (`reports.paper_numbers`);
2. layout: `build_table` orders rows (blocks per base model, methods in the paper's order; or one row per sweep
   value with a column group per method), formats values with the column's decimals, writes "–" where a row lacks
   a column, and marks the best value of each column bold and the second underlined (`highlight`). The `Table` it
   returns renders itself as Markdown, LaTeX and CSV (`reports.table_render`).

Marks follow the paper's captions ("Bolding indicates optimal performance, underlining indicates sub-optimal
performance"): per column, among the rows of one base-model block (base included), on the values as displayed
(so equal-looking numbers tie); every row holding the best value is bold, every row holding the next distinct
value underlined; `better: lower` columns (edit distance, hallucination rate) rank the other way; `better: none`
columns and columns with fewer than two values get no marks. An `optional: true` column (an ablation not every
evaluation runs, e.g. no image / blank image) is shown only when some row has it, and a run without it is not
reported as missing.

`comparison_with_paper` lays out runs beside the paper's matching rows, with the difference.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pandas as pd

from perpo.config import ConfigError
from reports.load import method_rank
from reports.table_cells import method_label
from reports.table_render import MISSING, Cell, Table
from reports.table_specs import Column, TableSpec

# ---------------------------------------------------------------------------------------------- layout


def _fmt(value: float, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    text = f"{value:.{digits}f}"
    return f"{0.0:.{digits}f}" if float(text) == 0 else text


def _mark(cells: list[Cell], better: str) -> None:
    """Bold the best displayed value(s), underline the second distinct one (in place)."""
    if better not in ("higher", "lower"):
        return
    values = sorted({float(c.text) for c in cells if c.value is not None}, reverse=better == "higher")
    if len([c for c in cells if c.value is not None]) < 2:
        return
    for cell in cells:
        if cell.value is None:
            continue
        if float(cell.text) == values[0]:
            cell.mark = "bold"
        elif len(values) > 1 and float(cell.text) == values[1]:
            cell.mark = "underline"


def _value_cell(value: float, column: Column) -> Cell:
    text = _fmt(value, column.digits)
    return Cell(text, None if text == MISSING else float(value))


def build_table(spec: TableSpec, cells: pd.DataFrame) -> Table:
    """Lay out cells per the spec (rows, "–" for missing, marks); see the module docstring.

    Raises:
        ConfigError: If two cells claim the same row and column (e.g. two runs of one method and sweep value).
    """
    present = set(cells.loc[cells["value"].notna(), "column"])
    shown = tuple(c for c in spec.columns if not c.optional or c.key in present)
    if len(shown) < len(spec.columns):
        spec = replace(spec, columns=shown)
    if spec.layout == "methods":
        return _methods_table(spec, cells)
    return _sweep_table(spec, cells)


def _methods_table(spec: TableSpec, cells: pd.DataFrame) -> Table:
    header = ["Methods", *[c.header for c in spec.columns]]
    groups = _groups([("", 1)], spec.columns)
    table = Table(spec, header, groups)
    blocks = list(dict.fromkeys(cells["block"]))
    column_cells: dict[tuple[str, str], list[Cell]] = {}
    for block in blocks:
        part = cells[cells["block"] == block]
        row_ids = list(dict.fromkeys(zip(part["run"], part["label"], part["method"], strict=True)))
        row_ids.sort(key=lambda r: method_rank(r[2]))
        shared = {label for label in [r[1] for r in row_ids] if [r[1] for r in row_ids].count(label) > 1}
        for run, label, _ in row_ids:
            by_key = part[part["run"] == run]
            if label in shared:
                label = run  # several runs of one method in a block: show their run labels
            if by_key["column"].duplicated().any():
                raise ConfigError(f"{spec.name}: run {run!r} has a column twice")
            lookup = dict(zip(by_key["column"], by_key["value"], strict=True))
            row = [Cell(label, is_label=True)]
            for column in spec.columns:
                cell = _value_cell(lookup.get(column.key, math.nan), column)
                row.append(cell)
                column_cells.setdefault((block if spec.highlight == "block" else "", column.key), []).append(cell)
            table.rows.append(row)
            table.blocks.append(block)
    if spec.highlight != "none":
        for (_, key), column_group in column_cells.items():
            _mark(column_group, next(c.better for c in spec.columns if c.key == key))
    return table


def _groups(prefix: list[tuple[str, int]], columns: tuple[Column, ...]) -> list[tuple[str, int]]:
    groups = list(prefix)
    for column in columns:
        if groups and column.group and groups[-1][0] == column.group and len(groups) > len(prefix):
            groups[-1] = (column.group, groups[-1][1] + 1)
        else:
            groups.append((column.group, 1))
    return groups


def _sweep_sort_key(row: tuple) -> tuple:
    return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in row)


def _sweep_table(spec: TableSpec, cells: pd.DataFrame) -> Table:
    header = [label for _, label in spec.row_keys]
    for _ in spec.methods:
        header += ["Methods", *[c.header for c in spec.columns]]
    groups = [("", len(spec.row_keys))]
    for method in spec.methods:
        groups.append((method_label(method), 1 + len(spec.columns)))
    table = Table(spec, header, groups)
    column_cells: dict[tuple[str, str], list[Cell]] = {}
    for row_key in sorted(set(cells["row"]), key=_sweep_sort_key):
        row = [Cell(str(v), is_label=True) for v in row_key]
        for method in spec.methods:
            part = cells[(cells["row"] == row_key) & (cells["method"] == method)]
            if part["column"].duplicated().any():
                raise ConfigError(
                    f"{spec.name}: several runs for {dict(zip([f for f, _ in spec.row_keys], row_key, strict=True))}"
                    f" and method {method}: {sorted(set(part['run']))}; pass only one (report config `runs`)"
                )
            lookup = dict(zip(part["column"], part["value"], strict=True))
            row.append(Cell(method_label(method), is_label=True))
            for column in spec.columns:
                cell = _value_cell(lookup.get(column.key, math.nan), column)
                row.append(cell)
                column_cells.setdefault((method, column.key), []).append(cell)
        table.rows.append(row)
        table.blocks.append("")
    if spec.highlight != "none":
        for (_, key), column_group in column_cells.items():
            _mark(column_group, next(c.better for c in spec.columns if c.key == key))
    return table


# ---------------------------------------------------------------------------------------------- vs the paper


def comparison_with_paper(
    spec: TableSpec, ours: pd.DataFrame, paper: pd.DataFrame, paper_model: str | None = None
) -> Table | None:
    """Our rows beside the paper's matching rows and their difference (ours − paper, in displayed units).

    Each run is matched by method within the paper's block `paper_model` (methods layout; default: the paper's
    first block), or by sweep value and method (sweep layout). Each match gives three rows: ours, paper, Δ.

    Returns:
        The side-by-side table, or None when no run matches a paper row.
    """
    if spec.layout == "methods":
        block = paper_model or (paper["block"].iloc[0] if not paper.empty else None)
        paper = paper[paper["block"] == block]
    header = ["", "Methods" if spec.layout == "methods" else "/".join(label for _, label in spec.row_keys)]
    header += [c.header for c in spec.columns]
    table = Table(spec, header, _groups([("", 2)], spec.columns))
    for run, part in ours.groupby("run", sort=False):
        first = part.iloc[0]
        chosen = paper["method"] == first["method"]
        if spec.layout == "sweep":
            chosen &= paper["row"] == first["row"]
        their = paper[chosen]
        if their.empty:
            continue
        mine = dict(zip(part["column"], part["value"], strict=True))
        theirs = dict(zip(their["column"], their["value"], strict=True))
        paper_label = their["label"].iloc[0]
        if spec.layout == "sweep":
            paper_label = f"{paper_label} {method_label(first['method'])}"
        for source, label, values in (
            ("ours", run, mine),
            ("paper", paper_label, theirs),
            ("Δ", "", {k: mine.get(k, math.nan) - theirs.get(k, math.nan) for k in mine}),
        ):
            row = [Cell(source, is_label=True), Cell(label, is_label=True)]
            for column in spec.columns:
                value = values.get(column.key, math.nan)
                text = _fmt(value, column.digits)
                if source == "Δ" and text != MISSING and not text.startswith("-"):
                    text = "+" + text
                row.append(Cell(text, None if text == MISSING else float(value)))
            table.rows.append(row)
            table.blocks.append(str(run))
    return table if table.rows else None
