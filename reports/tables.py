"""The paper's table layouts from tidy results (or from the paper's own numbers), as Markdown, LaTeX and CSV.

Specs live in `reports/tables.yaml` (see its header). Building a table has two steps:

1. cells: a long DataFrame with one value per (row, column), from loaded runs (`cells_from_results`) or from
   `paper_numbers.csv` (`cells_from_paper`);
2. layout: `build_table` orders rows (blocks per base model, methods in the paper's order; or one row per sweep
   value with a column group per method), formats values with the column's decimals, writes "–" where a row lacks
   a column, and marks the best value of each column bold and the second underlined (`highlight`).

Marks follow the paper's captions ("Bolding indicates optimal performance, underlining indicates sub-optimal
performance"): per column, among the rows of one base-model block (base included), on the values as displayed
(so equal-looking numbers tie); every row holding the best value is bold, every row holding the next distinct
value underlined; `better: lower` columns (edit distance, hallucination rate) rank the other way; `better: none`
columns and columns with fewer than two values get no marks. An `optional: true` column (an ablation not every
evaluation runs, e.g. no image / blank image) is shown only when some row has it, and a run without it is not
reported as missing.

Markdown marks are `**bold**` and `<u>underline</u>` (Markdown has no underline; `<u>` renders on GitHub and in
HTML), LaTeX `\\textbf{}` and `\\underline{}`. CSV holds the displayed numbers without marks, empty where missing.
The renderers are written here (no `tabulate` dependency) so the golden tests pin every character.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from perpo.config import ConfigError
from reports.catalog import load_spec
from reports.load import METHOD_LABELS, METHOD_ORDER, Problem, ResultSet, parse_number
from reports.markdown import markdown_table

MISSING = "–"
PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.csv")
LAYOUTS = ("methods", "sweep")
HIGHLIGHTS = ("block", "all", "none")
CELL_COLUMNS = ["block", "method", "row", "label", "column", "value", "run"]
"""Columns of a cells frame: block (base model), method, row (sweep key tuple or ()), label (row label), column
(spec key), value (scaled; NaN when missing), run (run label, or "paper")."""


@dataclass(frozen=True)
class Column:
    """One table column: where its value comes from and how it is shown."""

    key: str
    label: str
    sources: tuple[tuple[str, str, float], ...]
    group: str = ""
    latex: str = ""
    digits: int = 1
    better: str = "higher"
    optional: bool = False

    @property
    def header(self) -> str:
        return f"{self.group} {self.label}" if self.group else self.label


@dataclass(frozen=True)
class TableSpec:
    """One table of `tables.yaml`."""

    name: str
    title: str
    caption: str
    layout: str
    highlight: str
    columns: tuple[Column, ...]
    row_keys: tuple[tuple[str, str], ...] = ()
    methods: tuple[str, ...] = ()

    def tasks(self) -> set[str]:
        return {task for column in self.columns for task, _, _ in column.sources}


@dataclass
class Cell:
    """One rendered cell: its text, the number behind it (None for labels and missing values) and its mark."""

    text: str
    value: float | None = None
    mark: str = ""  # "", "bold" or "underline"
    is_label: bool = False


@dataclass
class Table:
    """A laid-out table: header cells and rows of cells, with the block each row belongs to."""

    spec: TableSpec
    header: list[str]
    groups: list[tuple[str, int]]  # LaTeX group header: (group label, span) over all columns
    rows: list[list[Cell]] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        """GitHub Markdown: one header row, labels left-aligned, numbers right-aligned, marks as ** and <u>."""
        right_aligned = [not cell.is_label for cell in self.rows[0]] if self.rows else []
        rows = [[_markdown_cell(cell) for cell in row] for row in self.rows]
        return markdown_table(self.header, right_aligned, rows)

    def to_latex(self) -> str:
        """A booktabs `tabular`: a grouped header row where columns have groups, a rule between blocks."""
        kinds = "".join("l" if cell.is_label else "r" for cell in self.rows[0]) if self.rows else ""
        lines = [f"\\begin{{tabular}}{{{kinds}}}", "\\toprule"]
        if any(label for label, _ in self.groups):
            parts, rules, start = [], [], 1
            for label, span in self.groups:
                parts.append(
                    f"\\multicolumn{{{span}}}{{c}}{{{latex_escape(label)}}}"
                    if label and span > 1
                    else latex_escape(label)
                )
                if label:
                    rules.append(f"\\cmidrule(lr){{{start}-{start + span - 1}}}")
                start += span
            lines.append(" & ".join(parts) + " \\\\")
            lines.append(" ".join(rules))
        lines.append(" & ".join(self._latex_header()) + " \\\\")
        lines.append("\\midrule")
        for index, row in enumerate(self.rows):
            if index and self.blocks[index] != self.blocks[index - 1]:
                lines.append("\\midrule")
            lines.append(" & ".join(_latex_cell(cell) for cell in row) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(lines) + "\n"

    def _latex_header(self) -> list[str]:
        grouped = any(label for label, _ in self.groups)
        names = []
        columns = self._header_columns()
        for text, column in zip(self.header, columns, strict=True):
            if column is None:
                names.append(latex_escape(text))
            else:
                label = column.latex or latex_escape(column.label if grouped else column.header)
                names.append(label)
        return names

    def _header_columns(self) -> list[Column | None]:
        """The spec column behind each header cell (None for label cells), from the right end of the header."""
        if self.spec.layout == "methods":
            values: list[Column | None] = list(self.spec.columns)
        else:
            values = [col for _ in self.spec.methods for col in (None, *self.spec.columns)]
            if len(self.header) != len(self.spec.row_keys) + len(values):  # the side-by-side with the paper
                values = list(self.spec.columns)
        return [None] * (len(self.header) - len(values)) + values

    def to_csv(self) -> str:
        """The header and the displayed values, without marks; an empty field where a value is missing."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.header)
        for row in self.rows:
            writer.writerow(["" if cell.text == MISSING else cell.text for cell in row])
        return buffer.getvalue()


def _markdown_cell(cell: Cell) -> str:
    text = cell.text.replace("|", "\\|")
    if cell.mark == "bold":
        return f"**{text}**"
    if cell.mark == "underline":
        return f"<u>{text}</u>"
    return text


LATEX_SPECIAL = {
    "&": "\\&",
    "%": "\\%",
    "$": "\\$",
    "#": "\\#",
    "_": "\\_",
    "{": "\\{",
    "}": "\\}",
    "~": "\\textasciitilde{}",
    "^": "\\textasciicircum{}",
    "\\": "\\textbackslash{}",
    "–": "--",
    "λ": "$\\lambda$",
    "γ": "$\\gamma$",
    "α": "$\\alpha$",
    "β": "$\\beta$",
    "↑": "$\\uparrow$",
    "↓": "$\\downarrow$",
    "Δ": "$\\Delta$",
    "±": "$\\pm$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters and spell the Greek letters and arrows used in labels."""
    return "".join(LATEX_SPECIAL.get(char, char) for char in text)


def _latex_cell(cell: Cell) -> str:
    text = latex_escape(cell.text)
    if cell.mark == "bold":
        return f"\\textbf{{{text}}}"
    if cell.mark == "underline":
        return f"\\underline{{{text}}}"
    return text


# ---------------------------------------------------------------------------------------------- specs


def _column(entry: dict, table: str) -> Column:
    try:
        sources = tuple((s["task"], s["metric"], float(s.get("scale", 1.0))) for s in entry["sources"])
        return Column(
            key=entry["key"],
            label=str(entry["label"]),
            sources=sources,
            group=str(entry.get("group", "")),
            latex=str(entry.get("latex", "")),
            digits=int(entry.get("digits", 1)),
            better=str(entry.get("better", "higher")),
            optional=bool(entry.get("optional", False)),
        )
    except (KeyError, TypeError) as err:
        raise ConfigError(f"table {table}: column {entry!r} needs key, label and sources [{{task, metric}}]") from err


def table_specs(path: str | Path | None = None) -> dict[str, TableSpec]:
    """Every table of the spec file (`reports/tables.yaml` by default), in file order.

    Raises:
        ConfigError: For an unknown layout or highlight, or a column without key/label/sources.
    """
    specs = {}
    for name, entry in load_spec(path)["tables"].items():
        layout, highlight = entry.get("layout", "methods"), entry.get("highlight", "block")
        if layout not in LAYOUTS or highlight not in HIGHLIGHTS:
            raise ConfigError(f"table {name}: layout must be one of {LAYOUTS}, highlight one of {HIGHLIGHTS}")
        specs[name] = TableSpec(
            name=name,
            title=str(entry.get("title", name)),
            caption=str(entry.get("caption", "")),
            layout=layout,
            highlight=highlight,
            columns=tuple(_column(c, name) for c in entry["columns"]),
            row_keys=tuple((k["field"], str(k["label"])) for k in entry.get("row_keys", [])),
            methods=tuple(entry.get("methods", [])),
        )
        if layout == "sweep" and not (specs[name].row_keys and specs[name].methods):
            raise ConfigError(f"table {name}: a sweep needs row_keys and methods")
    return specs


# ---------------------------------------------------------------------------------------------- cells


def _method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def cells_from_results(results: ResultSet, spec: TableSpec) -> tuple[pd.DataFrame, list[Problem]]:
    """One cell per run and column: the first source the run has, scaled. Missing columns are reported.

    Returns:
        The cells (`CELL_COLUMNS`) and `missing_metric` problems (a run with some but not all of the table's
        columns; runs with none of them are left out of the table silently, as they ran other benchmarks).
    """
    frame = results.frame
    values = frame[frame["filter"] == "none"].set_index(["run", "task", "metric"])["value"]
    values = values[~values.index.duplicated()]
    rows, problems = [], []
    for run in results.runs:
        cells = {}
        for column in spec.columns:
            cells[column.key] = math.nan
            for task, metric, scale in column.sources:
                value = values.get((run.label, task, metric))
                if value is not None and not pd.isna(value):
                    cells[column.key] = float(value) * scale
                    break
        present = [k for k, v in cells.items() if not math.isnan(v)]
        if not present:
            continue
        for column in spec.columns:
            if math.isnan(cells[column.key]) and not column.optional:
                task, metric, _ = column.sources[0]
                problems.append(
                    Problem(run.label, "missing_metric", task, metric, f"{spec.name} column '{column.header}'")
                )
        method = str(run.meta.get("method"))
        if spec.layout == "methods":
            label = run.model_label if method == "base" else f"+ {_method_label(method)}"
            row: tuple = ()
        else:
            row = tuple(run.meta.get(field_name) for field_name, _ in spec.row_keys)
            label = run.label
            if method not in spec.methods or any(v is None for v in row):
                problems.append(
                    Problem(
                        run.label,
                        "metadata",
                        detail=f"{spec.name}: needs method in {list(spec.methods)} and "
                        f"{[f for f, _ in spec.row_keys]} in its training record; left out",
                    )
                )
                continue
        for key, value in cells.items():
            rows.append(
                {
                    "block": run.model_label,
                    "method": method,
                    "row": row,
                    "label": label,
                    "column": key,
                    "value": value,
                    "run": run.label,
                }
            )
    return pd.DataFrame(rows, columns=CELL_COLUMNS), problems


def load_paper_numbers(path: str | Path | None = None) -> pd.DataFrame:
    """`paper_numbers.csv`: table, model, method, row, column, value, source, note (one printed number a line)."""
    frame = pd.read_csv(path or PAPER_NUMBERS, dtype={"row": str, "note": str}, keep_default_na=False)
    frame["value"] = frame["value"].astype(float)
    return frame


def cells_from_paper(spec: TableSpec, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper's numbers of one table as cells (row labels as printed: the model, then "+ SFT", ...)."""
    paper = load_paper_numbers() if paper is None else paper
    part = paper[paper["table"] == spec.name]
    if part.empty:
        raise ConfigError(f"paper_numbers.csv has no numbers for {spec.name}")
    rows = []
    for record in part.itertuples(index=False):
        if spec.layout == "methods":
            label = record.model if record.method == "base" else f"+ {_method_label(record.method)}"
            row: tuple = ()
        else:
            row = tuple(parse_number(v) for v in str(record.row).split("/"))
            label = str(record.row)
        rows.append(
            {
                "block": record.model,
                "method": record.method,
                "row": row,
                "label": label,
                "column": record.column,
                "value": float(record.value),
                "run": f"paper: {record.model} {label}",
            }
        )
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


# ---------------------------------------------------------------------------------------------- layout


def _fmt(value: float, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    text = f"{value:.{digits}f}"
    return f"{0.0:.{digits}f}" if float(text) == 0 else text


def _method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER) - 0.5


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
        row_ids.sort(key=lambda r: _method_rank(r[2]))
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
        groups.append((_method_label(method), 1 + len(spec.columns)))
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
            row.append(Cell(_method_label(method), is_label=True))
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


def paper_table(name: str, spec_path: str | Path | None = None, paper: pd.DataFrame | None = None) -> Table:
    """The paper's own table `name` (table1, table2, ...) rebuilt from `paper_numbers.csv`."""
    spec = table_specs(spec_path)[name]
    return build_table(spec, cells_from_paper(spec, paper))


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
            paper_label = f"{paper_label} {_method_label(first['method'])}"
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
