"""The package's layers: each subpackage imports only from the layers below it.

Every ``import metakd.X`` / ``from metakd.X import ...`` counts, the ones inside functions
(imported lazily) too: a lazy import upwards is still a circle in the design, and it is the
kind that turns into an import-time circle with the next top-level import someone adds.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "metakd"

# Lower number: lower layer. A module may import from its own package and from lower layers.
LAYERS = {
    "_version": 0, "_quiet": 0, "_progress": 0, "_frozen": 0,
    "data": 1, "nn": 1,
    "engine": 2,
    "interop": 3, "meta": 3,
    "distill": 4,
    "recipes": 5,
    "cli": 6, "__main__": 6, "__init__": 6,
}


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported metakd module) for every metakd import in ``path``, lazy ones too."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "metakd"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "metakd":  # from metakd import interop -> metakd.interop
                out += [(node.lineno, f"metakd.{a.name}") for a in node.names]
            elif node.module.split(".")[0] == "metakd":
                out.append((node.lineno, node.module))
    return out


def _upward_imports() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        own = rel.parts[0].removesuffix(".py")
        for line, target in _imports(path):
            other = _package_of(target)
            if other == own or other not in LAYERS:
                continue
            if LAYERS[other] >= LAYERS[own]:
                found.append(f"metakd/{rel}:{line} ({own}, layer {LAYERS[own]}) imports "
                             f"{target} ({other}, layer {LAYERS[other]})")
    return found


def test_every_subpackage_has_a_layer() -> None:
    names = {p.name.removesuffix(".py") for p in PACKAGE.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    assert names <= set(LAYERS), f"give these a layer in LAYERS: {sorted(names - set(LAYERS))}"


def test_no_import_goes_up_or_sideways() -> None:
    assert _upward_imports() == []


@pytest.mark.parametrize("source, expected", [
    ("from metakd.recipes import run\n", ["metakd.recipes"]),
    ("def f():\n    from metakd import interop\n", ["metakd.interop"]),
    ("import metakd.nn as mnn\nimport os\n", ["metakd.nn"]),
    ("from . import sibling\nfrom torch import nn\n", []),
])
def test_imports_are_all_seen(tmp_path: Path, source: str, expected: list[str]) -> None:
    path = tmp_path / "m.py"
    path.write_text(source)
    assert [m for _, m in _imports(path)] == expected
