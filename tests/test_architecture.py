"""The layout's promises, checked on the source: no import cycles, and imports point one way.

Stages, lowest first: leaf modules (paths, errors, files, env, names, urls, protocol) and ``models``; then
``bench.data``; ``bench.engine``; ``bench.report`` (it reads what the engine wrote); then
``bench.experiments``; then ``bench.cli`` (a package: one module per group of commands). A module may import
its own stage or a lower one. Imports inside functions count too: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

PACKAGES = ("bench", "models")
STAGES = [("bench.paths", "bench.errors", "bench.files", "bench.env", "bench.names", "bench.urls", "bench.protocol",
           "models"),
          ("bench.data",), ("bench.engine",), ("bench.report",), ("bench.experiments",),
          ("bench.cli", "bench.__main__")]


def _module_name(path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, set[str]]:
    """Every project module and the project modules it imports (resolved to existing modules)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # "from bench.data import layout" imports the module bench.data.layout; names that
                # are not modules come from node.module itself
                subs = [f"{node.module}.{a.name}" for a in node.names]
                targets = [s if s in files else node.module for s in subs]
            else:
                continue
            for t in targets:
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t and t != name and t.split(".")[0] in PACKAGES:
                    deps.add(t)
        graph[name] = deps
    return graph


def _stage(module: str) -> int:
    for i, prefixes in enumerate(STAGES):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} belongs to no stage: add it to STAGES in this test")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component larger than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read():
    graph = _modules()
    assert "bench.data.layout" in graph["bench.data.folders2d"]  # "from bench.data import layout"
    assert "bench.engine.train" in graph["bench.engine.runner"]


def test_no_import_cycles():
    assert _cycles(_modules()) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_point_one_way():
    wrong = [f"{m} imports {d}" for m, deps in _modules().items() for d in deps if _stage(d) > _stage(m)]
    assert wrong == []


def test_models_know_nothing_of_the_harness():
    assert [f"{m} imports {d}" for m, deps in _modules().items() if m.startswith("models")
            for d in deps if d.startswith("bench")] == []


def test_test_files_have_unique_names():
    """pytest imports test modules by file name (rootdir insertion): two test_x.py in two folders
    stop the whole collection, so CI would run nothing."""
    names = sorted(p.name for p in Path(__file__).parent.rglob("test_*.py"))
    assert sorted({n for n in names if names.count(n) > 1}) == []
