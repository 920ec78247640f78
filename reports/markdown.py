"""Small Markdown helpers for DataFrames and index pages (no `tabulate` dependency)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from perpo.io import atomic_open


def _cell(value: object, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], right_aligned: Sequence[bool], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub Markdown table of already formatted (and escaped) cell texts.

    Args:
        header: The column names.
        right_aligned: Per column, True for a right-aligned (number) column, False for a left-aligned one.
        rows: The cell texts, row by row.
    """
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---:" if right else ":---" for right in right_aligned) + " |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def frame_to_markdown(frame: pd.DataFrame, digits: Mapping[str, int] | int = 4) -> str:
    """A DataFrame as a GitHub Markdown table: numbers right-aligned with `digits` decimals, "–" for NaN/None.

    Args:
        frame: The table (its index is dropped).
        digits: Decimals for float columns: one number for all, or per column name (default 4).
    """
    columns = list(frame.columns)
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]) for c in columns]
    rows = []
    for row in frame.itertuples(index=False):
        cells = []
        for column, value in zip(columns, row, strict=True):
            d = digits.get(column, 4) if isinstance(digits, Mapping) else digits
            cells.append(_cell(value, d))
        rows.append(cells)
    return markdown_table([str(c) for c in columns], numeric, rows)


def write_text(path: str | Path, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)
