"""The layout rules of the package (issue 11): no import cycle among vitrieval's modules, counting imports inside
functions and the lazy name maps of package ``__init__`` files, and no module over 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "vitrieval"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The deepest known module ``name`` refers to (``a.b.c`` -> ``a.b`` when ``c`` is an attribute)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the vitrieval modules it imports anywhere in its body (top level, functions, TYPE_CHECKING
    blocks excluded, and module-path strings in a package's lazy map)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        type_checking = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                         and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                         for n in ast.walk(node)}
        edges: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in type_checking:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                names = [f"{base}.{a.name}" for a in node.names]
            elif is_package and isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.startswith("vitrieval.") and " " not in node.value:
                names = [node.value]
            else:
                continue
            for imported in names:
                if imported.startswith("vitrieval"):
                    target = _target(imported, modules)
                    if target and target != name:
                        edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _parent_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Importing ``a.b.c`` runs ``a.b``'s ``__init__`` first: an edge to a module is also one to its packages."""
    out: dict[str, set[str]] = {}
    for name, edges in graph.items():
        full = set(edges)
        for e in edges:
            parts = e.split(".")
            full.update(".".join(parts[:i]) for i in range(2, len(parts)))
        full.discard(name)
        # a module inside a package does not count its own ancestors (they are already being imported)
        out[name] = {e for e in full if not name.startswith(e + ".")}
    return out


def test_the_checker_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_inside_vitrieval() -> None:
    graph = _parent_edges(import_graph(all_modules()))
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


@pytest.mark.parametrize("name", sorted(all_modules()))
def test_no_module_over_500_lines(name: str) -> None:
    lines = len(all_modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES}: split it by idea)"
