"""The paper's own numbers (`reports/paper_numbers.csv`, one printed number a line) as cells and as tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from perpo.config import ConfigError
from reports.load import method_label
from reports.result_files import parse_number
from reports.table_cells import CELL_COLUMNS
from reports.table_render import Table
from reports.table_specs import TableSpec, table_specs
from reports.tables import build_table

PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.csv")


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
            label = record.model if record.method == "base" else f"+ {method_label(record.method)}"
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


def paper_table(name: str, spec_path: str | Path | None = None, paper: pd.DataFrame | None = None) -> Table:
    """The paper's own table `name` (table1, table2, ...) rebuilt from `paper_numbers.csv`."""
    spec = table_specs(spec_path)[name]
    return build_table(spec, cells_from_paper(spec, paper))
