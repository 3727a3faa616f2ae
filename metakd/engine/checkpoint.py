"""Atomic checkpoints that restore a run exactly: weights, optimiser, schedule, RNG, data stream."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["get_rng_state", "load_checkpoint", "save_checkpoint", "set_rng_state"]


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` with ``torch.save`` to a temporary file in the same folder, then rename.

    A reader (or a run killed mid-write, SIGKILL included) sees either the previous complete
    file or the new complete file, never a partial one.

    Example:
        >>> import tempfile, torch
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = save_checkpoint({"w": torch.ones(2)}, f"{d}/last.pt")
        ...     load_checkpoint(path)["w"]
        tensor([1., 1.])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True`` (tensors, containers and numbers only).

    Raises:
        FileNotFoundError: there is no file at ``path``.

    Example:
        >>> import tempfile, torch
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_checkpoint({"step": 3}, f"{d}/c.pt")
        ...     load_checkpoint(f"{d}/c.pt")
        {'step': 3}
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def get_rng_state() -> dict[str, Any]:
    """The global RNG states a run depends on (torch CPU and CUDA, Python's ``random``).

    Example:
        >>> import torch
        >>> state = get_rng_state()
        >>> a = torch.rand(1)
        >>> set_rng_state(state)
        >>> torch.equal(a, torch.rand(1))
        True
    """
    py = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned.

    Example:
        >>> import random
        >>> state = get_rng_state()
        >>> a = random.random()
        >>> set_rng_state(state)
        >>> random.random() == a
        True
    """
    torch.set_rng_state(state["torch"])
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
