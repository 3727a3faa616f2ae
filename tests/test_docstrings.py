"""Every docstring example of a public name runs and prints what it shows.

The public names are those of ``metakd.__all__`` and of each sub-package's ``__all__``; a class
brings its public methods and properties, a package its own docstring. Each object is one test
(named by its public path), its examples run with the stdlib ``doctest`` in the namespace of the
module that defines it (plus ``torch``, which examples may take as imported, as PyTorch's own
do), in a fresh temporary working directory, after ``torch.manual_seed(0)``. Lines marked
``# doctest: +SKIP`` (downloads, real data sets) are not run.
"""

from __future__ import annotations

import doctest
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import public_objects, public_packages

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _public(test: doctest.DocTest, owner: str) -> bool:
    """A method's or attribute's example is public unless a part of its name after the owner's
    starts with one underscore (dunders such as ``__call__`` are public)."""
    parts = test.name.removeprefix(owner).split(".")
    return not any(p.startswith("_") and not p.endswith("__") for p in parts)


def _doctests(obj: Any) -> list[doctest.DocTest]:
    if inspect.ismodule(obj):  # a package: its own docstring, not its members' (listed apart)
        tests = doctest.DocTestFinder(recurse=False).find(obj)
    else:
        module = inspect.getmodule(obj)
        if module is None or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            return []  # constants: nothing to run
        tests = doctest.DocTestFinder().find(obj, module=module)  # named Class.method
        tests = [t for t in tests if _public(t, obj.__name__)]
    return sorted((t for t in tests if t.examples), key=lambda t: t.name)


def _collect() -> dict[str, list[doctest.DocTest]]:
    objects = {p.__name__: p for p in public_packages()} | public_objects()
    found = {path: _doctests(obj) for path, obj in objects.items()}
    return {path: tests for path, tests in found.items() if tests}


DOCTESTS = _collect()


def test_examples_were_found() -> None:
    """Guards the collection itself: a finder that finds nothing would pass vacuously."""
    assert len(DOCTESTS) >= 10, sorted(DOCTESTS)


@pytest.fixture
def _torch_globals() -> Iterator[None]:
    """An example that changes torch's global settings or a registry does not leak them into
    other tests."""
    import metakd.nn.registry as models
    import metakd.recipes.registry as recipes

    dtype, grad = torch.get_default_dtype(), torch.is_grad_enabled()
    threads = torch.get_num_threads()
    # An example that registers a model or a method must not leave it for other tests.
    registries = [(models._MODELS, dict(models._MODELS)), (recipes._METHODS, dict(recipes._METHODS))]
    yield
    torch.set_default_dtype(dtype)
    torch.set_grad_enabled(grad)
    torch.set_num_threads(threads)
    for live, saved in registries:
        live.clear()
        live.update(saved)


@pytest.mark.usefixtures("_torch_globals")
@pytest.mark.parametrize("path", sorted(DOCTESTS))
def test_docstring_examples(path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    for found in DOCTESTS[path]:
        globs = {"torch": torch, **found.globs}  # fresh globals on every run
        test = doctest.DocTest(found.examples, globs, found.name, found.filename, found.lineno,
                               found.docstring)
        torch.manual_seed(0)
        runner.run(test, out=report.append)
    assert runner.failures == 0, (
        f"{path}: {runner.failures} of {runner.tries} examples failed\n" + "".join(report)
    )
