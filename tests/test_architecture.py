"""The import direction of docs/architecture.md: the library core never imports the reports, the tasks or the
embedded default."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The application layer: the `perpo` command (it dispatches `perpo report` / `perpo compare`) and the demo recipe,
# which builds a report at its end (and its online study, which labels its table as the reports do). The embedded
# default (tiny models, synthetic data, warm-up) sits beside the core and may use it; everything else in perpo/ is
# the library core.
APPLICATION = {"perpo/cli.py", "perpo/embedded/demo.py", "perpo/embedded/online_study.py"}
OUTSIDE = ("reports", "lmms_tasks", "lmms_eval", "perpo.embedded")


def _imports(path: Path) -> set[str]:
    """Every module `path` imports (absolute imports, at any depth in the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _outside(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == o or n.startswith(o + ".") for o in OUTSIDE))


def test_the_library_core_never_imports_reports_tasks_or_the_embedded_default():
    core = [
        p
        for p in sorted((ROOT / "perpo").rglob("*.py"))
        if str(p.relative_to(ROOT)) not in APPLICATION and "embedded" not in p.relative_to(ROOT).parts
    ]
    assert len(core) > 20
    offending = {str(p.relative_to(ROOT)): _outside(_imports(p)) for p in core}
    assert {k: v for k, v in offending.items() if v} == {}


def test_the_embedded_default_never_imports_reports_or_the_tasks():
    embedded = [
        p for p in sorted((ROOT / "perpo" / "embedded").glob("*.py")) if str(p.relative_to(ROOT)) not in APPLICATION
    ]
    assert len(embedded) >= 3
    offending = {str(p.relative_to(ROOT)): _outside(_imports(p)) for p in embedded}
    assert {k: v for k, v in offending.items() if any(not n.startswith("perpo.embedded") for n in v)} == {}


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from reports.cli import main\n    import lmms_tasks.images\n")
    assert _outside(_imports(module)) == ["lmms_tasks.images", "reports.cli"]
