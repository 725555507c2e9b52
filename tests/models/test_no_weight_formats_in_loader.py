"""The generic weights loader knows no model: conversions live in the model files, which import the
loader, so the loader importing any of them (or the registry) would make an import cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import models.weights


def _imports(path: Path) -> list[str]:
    """The modules the file's ``import`` statements name, lazy ones inside functions included."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))  # ".x": relative, so inside models
    return names


def test_weights_loader_imports_no_model_module() -> None:
    imported = _imports(Path(models.weights.__file__))
    assert "torch" in imported  # the parse found the imports at all
    own = [m for m in imported if m.startswith(".") or m.split(".")[0] == "models"]
    assert not own, f"models/weights.py imports {own}; model-specific conversions belong in the model files"
