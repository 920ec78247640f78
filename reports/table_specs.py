"""Table specs: the `Column` and `TableSpec` of each table in `reports/tables.yaml` (see its header), checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from perpo.config import ConfigError
from reports.catalog import load_spec

LAYOUTS = ("methods", "sweep")
HIGHLIGHTS = ("block", "all", "none")


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
