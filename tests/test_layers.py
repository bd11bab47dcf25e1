"""The package's layers, as docs/architecture.md ("The package") draws them: each layer of
``stream/`` imports only the layers below it (a module's own package aside), and no two
modules import each other, directly or around a longer circle. Read from every import
statement of every module, those inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import stream

ROOT = Path(stream.__file__).parent
RANK = {  # low to high; two packages of one rank may not import each other
    "core": 0, "log": 1, "settings": 2, "kafka": 3, "worker": 4, "audit": 4,
    "backtest": 5, "harness": 5, "cli": 6, "__main__": 7,
}


def _modules() -> dict[str, Path]:
    """Every module by its dotted name (a package by its own name, for its ``__init__``)."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(name: str, path: Path) -> set[str]:
    """The ``stream`` modules (or packages) ``name`` imports."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.update(f"{base}.{alias.name}" for alias in node.names)  # a module, or a name in one
            found.add(base)
    modules = _modules()
    return {m for m in found if m in modules and m != name}


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def test_each_layer_imports_only_the_layers_below_it():
    wrong = []
    for name, path in _modules().items():
        if name == "stream":
            continue
        layer = _layer(name)
        for imported in _imports(name, path):
            other = _layer(imported)
            if other != layer and (other not in RANK or RANK[other] >= RANK[layer]) and other != "stream":
                wrong.append(f"{name} imports {imported}")
    assert not wrong, "\n".join(sorted(wrong))
    assert set(_layer(m) for m in _modules() if m != "stream") <= set(RANK), "a new folder: give it a rank here"


def test_no_import_cycles():
    graph = {name: _imports(name, path) for name, path in _modules().items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif state.get(nxt) is None:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if state.get(name) is None:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def test_no_module_is_longer_than_500_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 500}
    assert not long, long
