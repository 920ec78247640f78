"""The metric catalogue and table specs of `reports/tables.yaml`: which metrics reports know, and their direction.

A metric's direction (higher or lower is better) is read first from the results file itself (lmms-eval writes
`higher_is_better[task][metric]` for every metric of every task); the catalogue is the fallback, and names the
metrics reports know how to label. A metric found in a results file but not in the catalogue is kept in the tidy
table and listed as "unknown" in the report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from perpo.config import ConfigError

TABLES_YAML = Path(__file__).with_name("tables.yaml")
DIRECTIONS = ("higher", "lower", "none")


@dataclass(frozen=True)
class MetricInfo:
    """What reports know about one metric: a display label and the better direction (higher, lower or none)."""

    name: str
    label: str
    better: str


def load_spec(path: str | Path | None = None) -> dict[str, Any]:
    """The parsed tables YAML (`reports/tables.yaml` by default), with its top-level keys checked.

    Raises:
        ConfigError: If the file is missing, not a mapping, or lacks `metrics` / `tables`.
    """
    path = Path(path) if path is not None else TABLES_YAML
    if not path.is_file():
        raise ConfigError(f"tables spec {path} not found")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not {"metrics", "tables"} <= set(data):
        raise ConfigError(f"{path}: expected a mapping with 'metrics' and 'tables' (and optional 'patterns')")
    for name, entry in data["metrics"].items():
        if entry.get("better", "higher") not in DIRECTIONS:
            raise ConfigError(f"{path}: metric {name}: better must be one of {DIRECTIONS}")
    return data


@lru_cache(maxsize=4)
def _catalogue(path: str) -> tuple[dict[str, MetricInfo], tuple[tuple[re.Pattern, MetricInfo], ...]]:
    data = load_spec(path)
    exact = {
        name: MetricInfo(name, str(entry.get("label", name)), str(entry.get("better", "higher")))
        for name, entry in data["metrics"].items()
    }
    patterns = tuple(
        (re.compile(entry["regex"]), MetricInfo(entry["regex"], str(entry.get("label", "")), entry["better"]))
        for entry in data.get("patterns", [])
    )
    return exact, patterns


def metric_info(name: str, spec_path: str | Path | None = None) -> MetricInfo | None:
    """The catalogue entry of a metric (exact names first, then the regex patterns), or None if unknown."""
    exact, patterns = _catalogue(str(spec_path or TABLES_YAML))
    if name in exact:
        return exact[name]
    for regex, info in patterns:
        if regex.fullmatch(name):
            return MetricInfo(name, info.label or name, info.better)
    return None


def direction(name: str, declared: bool | None = None, spec_path: str | Path | None = None) -> str:
    """`higher`, `lower` or `none` for a metric: the results file's own `higher_is_better` when given, else the
    catalogue, else `higher` (lmms-eval's default)."""
    if declared is not None:
        return "higher" if declared else "lower"
    info = metric_info(name, spec_path)
    return info.better if info is not None else "higher"
