"""Rendering a laid-out table (`Table` of `Cell`s) as Markdown, LaTeX and CSV, marks included.

Markdown marks are `**bold**` and `<u>underline</u>` (Markdown has no underline; `<u>` renders on GitHub and in
HTML), LaTeX `\\textbf{}` and `\\underline{}`. CSV holds the displayed numbers without marks, empty where missing.
The renderers are written here (no `tabulate` dependency) so the golden tests pin every character.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from reports.markdown import markdown_table
from reports.table_specs import Column, TableSpec

MISSING = "–"


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
