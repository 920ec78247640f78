"""The import direction of docs/architecture.md: the library core never imports the reports or the tasks."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The application layer: the `perpo` command (it dispatches `perpo report` / `perpo compare`) and the demo recipe,
# which builds a report at its end. Everything else in perpo/ is the library core.
APPLICATION = {"perpo/cli.py", "perpo/demo.py"}
OUTSIDE = ("reports", "lmms_tasks", "lmms_eval")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_library_core_never_imports_reports_or_lmms_tasks():
    core = [p for p in sorted((ROOT / "perpo").rglob("*.py")) if str(p.relative_to(ROOT)) not in APPLICATION]
    assert len(core) > 20
    offending = {str(p.relative_to(ROOT)): sorted(_imports(p) & set(OUTSIDE)) for p in core}
    assert {k: v for k, v in offending.items() if v} == {}


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from reports.cli import main\n    import lmms_tasks.images\n")
    assert _imports(module) == {"reports", "lmms_tasks"}
