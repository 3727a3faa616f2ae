"""The package surface: a light import, public names that exist and are documented, version."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import json
import os
import statistics
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from conftest import public_objects, public_packages

import metakd

OPTIONAL_HEAVY = ("learn2learn", "higher", "gym")
# The primitives a user needs from `import metakd` alone, without naming a sub-package.
PRIMITIVES = ("MAMLWrapper", "few_shot", "Omniglot", "create", "fit", "evaluate")

IMPORT_TIMES = """
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import metakd
t2 = time.perf_counter()
heavy = sorted(m for m in sys.modules if m.split('.')[0] in
               ('learn2learn', 'higher', 'gym', 'torchvision', 'h5py', 'matplotlib'))
print(json.dumps({"torch": t1 - t0, "metakd": t2 - t1, "heavy": heavy}))
"""


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True).stdout


def test_import_is_light() -> None:
    """`import metakd` adds under a second to `import torch` and imports no optional package.

    Median of 3 fresh interpreters. Measured on the 2-core dev machine (torch 2.14.1 CUDA
    build on the CPU, 2026-11-29, load 3-6): ``import torch`` 2.1-4.4 s, then ``import metakd``
    0.05-0.10 s (0.11 s with every sub-package), on numpy 1.26 and 2.4 alike.
    """
    runs = [json.loads(_run(IMPORT_TIMES).strip().splitlines()[-1]) for _ in range(3)]
    torch_s = statistics.median(r["torch"] for r in runs)
    metakd_s = statistics.median(r["metakd"] for r in runs)
    print(f"import torch {torch_s:.3f} s, then import metakd {metakd_s:.3f} s (median of 3)")
    for r in runs:
        assert r["heavy"] == [], f"import metakd pulled in {r['heavy']}"
    assert metakd_s < 1.0, f"import metakd took {metakd_s:.2f} s beyond torch ({runs})"


def test_public_subpackages_import_no_optional_package() -> None:
    """Every sub-package with ``__all__`` imports without learn2learn, higher or gym."""
    names = [p.__name__ for p in public_packages()]
    out = _run(
        "import importlib, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {OPTIONAL_HEAVY!r}))\n"
    )
    assert out.strip() == "[]", f"importing {names} pulled in {out.strip()}"


def test_top_level_gives_the_primitives() -> None:
    missing = [name for name in PRIMITIVES if name not in metakd.__all__]
    assert not missing, f"metakd.__all__ lacks {missing}"


def test_every_public_name_exists() -> None:
    missing = [f"{p.__name__}.{name}" for p in public_packages() for name in p.__all__
               if not hasattr(p, name)]
    assert not missing, f"names in __all__ that do not exist: {missing}"
    assert metakd.__version__.count(".") == 2


@cache
def _module_level_docstrings() -> dict[str, str]:
    """``{name: docstring}`` of the module-level assignments that a string literal follows
    (the attribute docstrings that mkdocstrings shows), over every module of metakd."""
    docs: dict[str, str] = {}
    for path in sorted(Path(metakd.__file__).parent.rglob("*.py")):
        body = ast.parse(path.read_text(encoding="utf-8")).body
        for stmt, nxt in itertools.pairwise(body):
            if isinstance(stmt, ast.Assign):
                targets = stmt.targets
            elif isinstance(stmt, ast.AnnAssign):
                targets = [stmt.target]
            else:
                continue
            if (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                for target in targets:
                    if isinstance(target, ast.Name):
                        docs.setdefault(target.id, nxt.value.value)
    return docs


def _docstring(path: str, obj: Any) -> str | None:
    name = path.rsplit(".", 1)[-1]
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__")
        # dataclasses and NamedTuples without a docstring get their signature as one
        if doc and (dataclasses.is_dataclass(obj) or issubclass(obj, tuple)) \
                and doc.startswith(f"{obj.__name__}("):
            return None
        return doc
    if inspect.ismodule(obj) or inspect.isroutine(obj):
        return obj.__doc__
    if hasattr(obj, "__wrapped__") or (callable(obj) and type(obj).__doc__ != obj.__doc__):
        return obj.__doc__  # a decorated function, a functools.partial with its own doc
    return _module_level_docstrings().get(name)  # a constant: its attribute docstring


def test_every_public_name_has_a_docstring() -> None:
    undocumented = [path for path, obj in public_objects().items()
                    if not path.rsplit(".", 1)[-1].startswith("__")
                    and not (_docstring(path, obj) or "").strip()]
    assert not undocumented, f"public names without a docstring: {undocumented}"


@pytest.mark.skipif("METAKD_EXPECT_NUMPY" not in os.environ,
                    reason="METAKD_EXPECT_NUMPY is not set (make test sets it for .venv-np2)")
def test_numpy_is_the_expected_major_version() -> None:
    """`make test`'s second pass must really run on numpy 2, not silently on numpy 1."""
    import numpy

    assert numpy.__version__.split(".")[0] == os.environ["METAKD_EXPECT_NUMPY"], numpy.__version__
