"""The package's layout rules (issue 22): no import cycle among lsa_fast's modules,
counting imports inside functions (a lazy import hides a cycle, it does not remove it),
and no module over 600 lines. Read with `ast`, so nothing is imported or run."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parent.parent / "lsa_fast"
MAX_LINES = 600

# Known exceptions (none since the trainer's split, issue 22).
ALLOWED_LONG = set()
ALLOWED_CYCLE_EDGES = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: Set[str]) -> Set[str]:
    """The lsa_fast modules `name` imports anywhere in its file (relative imports resolved;
    `from . import x` counts x when x is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from . import x`: x when x is a module, else the module the name lives in
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                       for alias in node.names]
        else:
            continue
        for target in targets:
            # the deepest lsa_fast module the name lies in ("lsa_fast.attacks.pgd.pgd" -> lsa_fast.attacks.pgd)
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("lsa_fast"):
                found.add(target)
                # Importing lsa_fast.x.y runs lsa_fast/x/__init__.py first (the root package,
                # and the importer's own packages, are already being imported).
                parent = target.rpartition(".")[0]
                while parent != "lsa_fast" and parent in known and not (name + ".").startswith(parent + "."):
                    found.add(parent)
                    parent = parent.rpartition(".")[0]
    return found


def _graph() -> Dict[str, Set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_function_level_and_relative_imports():
    graph = _graph()
    assert "lsa_fast.checks" in graph["lsa_fast.data"]          # top level, relative
    assert "lsa_fast.devices" in graph["lsa_fast.report"]       # inside a function
    assert "lsa_fast.attacks.registry" in graph["lsa_fast.attacks"]  # a package's own module
    assert "lsa_fast.attacks" in graph["lsa_fast.evaluation"]  # lsa_fast.attacks._common runs attacks/__init__
    assert "lsa_fast.attacks" not in graph["lsa_fast.attacks.pgd"]  # its own package
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    graph = _graph()
    for source, target in ALLOWED_CYCLE_EDGES:
        graph.get(source, set()).discard(target)
    cycles = _cycles(graph)
    assert not cycles, "import cycles in lsa_fast (imports inside functions count): " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles)


def test_no_module_over_600_lines():
    long = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    long = {name: lines for name, lines in long.items() if lines > MAX_LINES and name not in ALLOWED_LONG}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
