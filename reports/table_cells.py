"""Table cells from loaded runs: one value per run and column (the first source a run has, scaled), row labels.

A cells frame (`CELL_COLUMNS`) is the input of the layout (`reports.tables.build_table`); the paper's own numbers
give one too (`reports.paper_numbers.cells_from_paper`).
"""

from __future__ import annotations

import math

import pandas as pd

from reports.load import Problem, ResultSet, method_label
from reports.table_specs import TableSpec

CELL_COLUMNS = ["block", "method", "row", "label", "column", "value", "run"]
"""Columns of a cells frame: block (base model), method, row (sweep key tuple or ()), label (row label), column
(spec key), value (scaled; NaN when missing), run (run label, or "paper")."""


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
            label = run.model_label if method == "base" else f"+ {method_label(method)}"
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
