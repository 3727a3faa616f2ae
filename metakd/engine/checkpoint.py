"""Atomic checkpoints that restore a run exactly: weights, optimiser, schedule, RNG, data stream."""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from metakd.engine.errors import InputError

__all__ = ["get_rng_state", "load_checkpoint", "save_checkpoint", "set_rng_state"]


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` with ``torch.save`` to a temporary file in the same folder, then rename.

    A reader (or a run killed mid-write, SIGKILL included) sees either the previous complete
    file or the new complete file, never a partial one (see
    :func:`metakd.engine.runfolder.atomic_write`).

    Raises:
        RunEnvironmentError: the disk is full or the folder is not writable; the previous file
            is unchanged.

    Example:
        >>> import tempfile, torch
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = save_checkpoint({"w": torch.ones(2)}, f"{d}/last.pt")
        ...     load_checkpoint(path)["w"]
        tensor([1., 1.])
    """
    from metakd.engine.runfolder import atomic_write, checkpoint_bytes

    return atomic_write(path, checkpoint_bytes(state))


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True`` (tensors, containers and numbers only).

    One class more is allowed: ``argparse.Namespace``, which timm's ``CheckpointSaver``
    pickles under ``args`` (the GDA and Weak-to-Strong CIFAR trainers save their command
    line there). A ``Namespace`` is an attribute holder: rebuilding it runs no code of the
    file, and its values must themselves be weights-only types (an object of any other class,
    inside it or anywhere in the file, is still refused). The loaded ``Namespace`` is data;
    :mod:`metakd.interop` reads only its ``model`` name.

    Raises:
        FileNotFoundError: there is no file at ``path``.
        InputError: the file is empty or not a PyTorch checkpoint (text, truncated, another
            format), or it pickles Python objects that weights-only loading refuses to run
            (one line naming the object; metakd never loads such a file with
            ``weights_only=False``).

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
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty, not a PyTorch checkpoint")
    try:
        with warnings.catch_warnings(), _allow_namespace():
            # a plain pickle's protocol: the error says enough
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise unreadable_checkpoint(path, e) from None


def _allow_namespace() -> contextlib.AbstractContextManager[Any]:
    """Let weights-only loading rebuild ``argparse.Namespace`` (torch >= 2.5), nothing else."""
    allow = getattr(torch.serialization, "safe_globals", None)
    return allow([argparse.Namespace]) if allow is not None else contextlib.nullcontext()


def _first_line(text: str, limit: int = 160) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # terminal colour codes
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def unreadable_checkpoint(path: Path, exc: BaseException) -> InputError:
    """The one-line :class:`InputError` for a file ``torch.load`` could not read safely.

    A file that pickles Python objects (refused by weights-only loading) is named as such,
    with the object; anything else is "not a PyTorch checkpoint" with the first line of the
    reason.

    Example:
        >>> str(unreadable_checkpoint(Path("t.pt"), KeyError(101)))
        't.pt is not a PyTorch checkpoint (torch.load failed: KeyError: 101)'
    """
    text = str(exc)
    refused = re.search(r"WeightsUnpickler error: (.*)", text, re.DOTALL)
    detail = _first_line(refused.group(1)) if refused else ""
    found = re.search(r"GLOBAL ([\w.<>]+)", text)
    if found or "reduce for unrecognized function" in detail or "new object" in detail:
        what = f" ({found.group(1)})" if found else f" ({detail})"
        return InputError(f"{path}: refused: the file pickles Python objects{what} that "
                          "weights-only loading does not run; save a state dict of tensors "
                          "instead")
    reason = detail or _first_line(text) or "unexpected end of file"
    return InputError(f"{path} is not a PyTorch checkpoint (torch.load failed: "
                      f"{type(exc).__name__}: {reason})")


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
