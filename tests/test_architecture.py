"""The layers of docs/architecture.md, checked on the source: each perpo module imports only its own layer and the
layers below it, no two modules import each other (directly or around a loop), and only the application imports
the reports or the lmms-eval tasks. Imports inside functions count; imports under `if TYPE_CHECKING:` (never run)
do not."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top: a module may import its own layer and the layers listed before it.
LAYERS = {
    "foundation": ("perpo.config", "perpo.io", "perpo.console", "perpo.distributed"),
    "objectives": ("perpo.objectives",),
    "model": ("perpo.model",),
    "data": ("perpo.data",),
    "sampling": ("perpo.sampling",),
    "training": ("perpo.training",),
    "embedded": ("perpo.embedded",),
    "application": ("perpo.studies", "perpo.cli", "perpo.evaluation", "perpo.setup_env", "perpo.configs", "perpo"),
}
OUTSIDE = ("reports", "lmms_tasks", "lmms_eval")  # what only the application layer may import


def modules(root: Path, package: str = "perpo") -> dict[str, Path]:
    """Dotted module name → file, for every module of `package` under `root`."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and ast.unparse(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def imported_names(path: Path) -> set[str]:
    """Every module `path` imports at run time (absolute imports, at any depth: functions, methods, branches)."""
    names: set[str] = set()
    todo = [ast.parse(path.read_text(encoding="utf-8"))]
    while todo:
        node = todo.pop()
        if _type_checking(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
        todo.extend(ast.iter_child_nodes(node))
    return names


def import_graph(root: Path, package: str = "perpo") -> dict[str, set[str]]:
    """Module → the package's modules its imports run (a module imported from a package counts as that module)."""
    known = modules(root, package)
    graph = {}
    for name, path in known.items():
        deps = set()
        for imported in imported_names(path):
            while imported and imported not in known:
                imported = imported.rpartition(".")[0]
            # Importing a.b.c runs the `__init__` of a and a.b too; one's own packages are already under way.
            while imported:
                if imported != name and not name.startswith(imported + "."):
                    deps.add(imported)
                imported = imported.rpartition(".")[0]
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop of `graph` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (loop := visit(dep)):
                return loop
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (loop := visit(node)):
            return loop
    return None


def layer_of(module: str) -> int:
    """Index of `module`'s layer in LAYERS (the longest matching prefix wins)."""
    best, rank = "", -1
    for index, prefixes in enumerate(LAYERS.values()):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, rank = prefix, index
    assert rank >= 0, f"{module} is in no layer of tests/test_architecture.py LAYERS (and docs/architecture.md)"
    return rank


def test_perpo_has_no_import_cycle():
    graph = import_graph(ROOT)
    assert len(graph) > 40
    assert find_cycle(graph) is None


def test_every_module_imports_only_its_layer_and_the_layers_below():
    names = list(LAYERS)
    upward = {
        f"{module} ({names[layer_of(module)]})": sorted(
            f"{d} ({names[layer_of(d)]})" for d in deps if layer_of(d) > layer_of(module)
        )
        for module, deps in import_graph(ROOT).items()
    }
    assert {k: v for k, v in upward.items() if v} == {}


def test_only_the_application_imports_the_reports_or_the_tasks():
    application = list(LAYERS).index("application")
    offending = {}
    for module, path in modules(ROOT).items():
        if layer_of(module) < application:
            outside = sorted(n for n in imported_names(path) if n.split(".")[0] in OUTSIDE)
            if outside:
                offending[module] = outside
    assert offending == {}


def test_the_top_level_holds_at_most_eight_modules_and_docs_map_every_module():
    top = sorted(p.name for p in (ROOT / "perpo").glob("*.py"))
    assert len(top) <= 8, top
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    unmapped = [
        name
        for name, path in modules(ROOT).items()
        if path.name != "__init__.py" and str(path.relative_to(ROOT / "perpo")) not in page
    ]
    assert unmapped == []


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "perpo" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_checks_see_a_loop_closed_by_an_import_inside_a_function(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from perpo.b import g\n",
            "b.py": "def g():\n    from perpo.c import h\n",
            "c.py": "class C:\n    def m(self):\n        if True:\n            import perpo.a\n",
            "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from perpo.a import x\n",
        },
    )
    graph = import_graph(root)
    assert graph["perpo.d"] == set()  # typing-only imports never run
    assert find_cycle(graph) == ["perpo.a", "perpo.b", "perpo.c", "perpo.a"]
    del graph["perpo.c"]
    assert find_cycle(graph) is None


def test_a_name_imported_from_a_package_counts_as_its_module(tmp_path):
    root = _package(
        tmp_path, {"__init__.py": "", "p/__init__.py": "", "p/m.py": "", "q.py": "from perpo.p import m\n"}
    )
    assert import_graph(root)["perpo.q"] == {"perpo.p", "perpo.p.m"}  # the package's __init__ runs first
    assert layer_of("perpo.model.logprobs") < layer_of("perpo.training.trainer") < layer_of("perpo.studies.demo")
