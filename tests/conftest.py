"""Shared fixtures: every test session gets its own decoded-image cache folder.

Tests marked ``learn2learn`` are skipped, with the reason, where learn2learn is not installed
(``make test`` runs the suite a second time in ``.venv-np2``: numpy 2, no learn2learn).

``MAMLWrapper``'s default ``compile="auto"`` compiles at the first meta-batch (tens of
seconds per new graph on a 2-core CPU): the suite runs it eager (``METAKD_COMPILE=0``, also in
the processes the tests start) unless the environment says otherwise; the tests of the
compiled default itself (``tests/test_compile_default.py``) lift it for themselves.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import os
import pkgutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("METAKD_COMPILE", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``learn2learn`` when the extra is missing; nothing else."""
    if importlib.util.find_spec("learn2learn") is not None:
        return
    skip = pytest.mark.skip(
        reason="learn2learn is not installed (pip install metakd[learn2learn], or "
        "scripts/install_learn2learn.sh on Python >= 3.11)"
    )
    for item in items:
        if item.get_closest_marker("learn2learn") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["METAKD_CACHE"] = str(tmp_path_factory.mktemp("metakd-cache"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def drawing(rng: np.random.Generator, size: int = 105) -> np.ndarray:
    """A black-on-white 'drawing': white canvas with a few random black strokes."""
    img = np.full((size, size), 255, dtype=np.uint8)
    for _ in range(3):
        r, c = rng.integers(0, max(size - size // 4, 1), 2)
        img[r : r + 1 + size // 8, c : c + 1 + size // 4] = 0
    return img


def write_omniglot(
    root: Path,
    alphabets: dict[str, dict[str, int]],
    as_zip: bool = False,
    drawers: int = 20,
    size: int = 105,
    seed: int = 0,
) -> Path:
    """Write an Omniglot tree in the official layout.

    Args:
        alphabets: ``{"images_background": {"Latin": 3}, ...}``: characters per alphabet.
        as_zip: write ``images_background.zip`` instead of the extracted folder.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for part, alphas in alphabets.items():
        files = {}
        for alpha, nchar in alphas.items():
            for c in range(1, nchar + 1):
                for d in range(1, drawers + 1):
                    files[f"{part}/{alpha}/character{c:02d}/{c:04d}_{d:02d}.png"] = png_bytes(
                        drawing(rng, size)
                    )
        if as_zip:
            with zipfile.ZipFile(root / f"{part}.zip", "w") as zf:
                for name, data in files.items():
                    zf.writestr(name, data)
        else:
            for name, data in files.items():
                p = root / name
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
    return root


@pytest.fixture(scope="module")
def one_intra_op_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is as fast, and immune to OpenMP stalls on a busy CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def public_packages() -> list[ModuleType]:
    """``metakd`` and every sub-package that declares ``__all__`` (imported), in a fixed order."""
    import metakd

    packages = [metakd]
    for info in sorted(pkgutil.walk_packages(metakd.__path__, "metakd."), key=lambda i: i.name):
        if info.ispkg:
            module = importlib.import_module(info.name)
            if hasattr(module, "__all__"):
                packages.append(module)
    return packages


def public_objects() -> dict[str, Any]:
    """Every public name, as ``{first public path: object}``, each object once.

    The names are those of ``metakd.__all__`` and of each sub-package's ``__all__``; an object
    re-exported under several paths (``metakd.Omniglot``, ``metakd.data.Omniglot``) is listed
    under the first. Names missing from their package are left out (``test_package`` names them).
    """
    seen: set[int] = set()
    objects: dict[str, Any] = {}
    for package in public_packages():
        for name in package.__all__:
            if not hasattr(package, name):
                continue
            obj = getattr(package, name)
            if id(obj) not in seen:
                seen.add(id(obj))
                objects[f"{package.__name__}.{name}"] = obj
    return objects
