"""Shared fixtures: every test session gets its own decoded-image cache folder."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch


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
