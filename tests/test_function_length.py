"""No function in bench/ or models/ is longer than 60 lines (docstring included): a step is a hook,
not a paragraph. Functions that must stay longer are listed here with the reason."""
from __future__ import annotations

import ast

from helpers import ROOT

LIMIT = 60
EXCEPTIONS: dict[str, str] = {}  # "path::function": why it stays longer


def _long_functions() -> list[str]:
    out = []
    for package in ("bench", "models"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    name = f"{path.relative_to(ROOT)}::{node.name}"
                    if lines > LIMIT and name not in EXCEPTIONS:
                        out.append(f"{name} ({lines} lines)")
    return out


def test_no_function_is_longer_than_the_limit():
    assert _long_functions() == []


def test_the_check_sees_a_long_function(tmp_path, monkeypatch):
    import helpers

    (tmp_path / "bench").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "bench" / "long.py").write_text("def f():\n" + "    x = 1\n" * LIMIT)
    monkeypatch.setattr(helpers, "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert _long_functions() == ["bench/long.py::f (61 lines)"]
