"""``metakd convert``: an original project's checkpoint to a metakd state dict or run folder."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from torch import nn

from metakd.engine.errors import InputError, UsageError

__all__ = ["STATE_DICT_SUFFIXES", "convert_file"]

STATE_DICT_SUFFIXES = (".pt", ".pth")


def _read(src: Path, arch: str | None, format: str | None,
          part: str | None) -> tuple[nn.Module, Any]:
    """The model with the file's weights (loaded strictly) and the ``Converted`` (or None)."""
    from metakd import interop
    from metakd.engine.checkpoint import load_checkpoint
    from metakd.interop._common import build_model

    if src.is_dir():
        raise InputError(f"{src} is a folder: give a checkpoint file (a run folder is already "
                         "metakd's; test it with `metakd eval`)")
    obj = load_checkpoint(src)  # weights only; FileNotFoundError / InputError in one line
    options = {"part": part} if part is not None else {}
    converted = interop.read(obj, arch, format=format, source=str(src), **options)
    if converted is not None:
        return build_model(converted), converted
    if arch is None:
        raise UsageError(f"{src} is in no known original format and does not name its "
                         "architecture: pass --arch (a metakd model name, e.g. conv4)")
    from metakd.distill import load_teacher

    try:  # metakd's names, or mdistiller's: the plain state-dict path of load_teacher
        model = load_teacher(src, arch, part=part)
    except InputError:
        raise
    except ValueError as e:
        raise InputError(str(e)) from None
    return model, None


def _run_folder(dest: Path, model: nn.Module, converted: Any) -> list[str]:
    """Write ``config.json`` and ``last.pt`` of a MAML run holding ``model``."""
    from metakd.engine.runfolder import atomic_write, checkpoint_bytes
    from metakd.meta import MAMLWrapper
    from metakd.recipes import get_method
    from metakd.recipes.preflight import versions
    from metakd.recipes.runs import VERSIONS_KEY, json_bytes

    run = (converted.extras.get("run") if converted is not None else None) or {}
    if run.get("method") != "maml":
        what = f"a {converted.format} file" if converted is not None else "a plain state dict"
        raise UsageError(f"{what} carries no training settings to make a run folder from: "
                         f"give DEST ending in {' or '.join(STATE_DICT_SUFFIXES)}")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"{dest} exists and is not an empty folder: give a new run folder")
    method = get_method("maml")
    cfg = method.config_cls(**{**run["config"], "out_dir": str(dest)})
    learner = MAMLWrapper(model.float(), inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps,
                          first_order=cfg.first_order, test_inner_steps=cfg.test_inner_steps,
                          inner_loss_reduction=cfg.inner_loss_reduction, backend="func",
                          compile=False)
    atomic_write(dest / "last.pt", checkpoint_bytes({"step": 0, "model": learner.state_dict()}))
    config = {"method": method.name, **dataclasses.asdict(cfg), VERSIONS_KEY: versions()}
    atomic_write(dest / "config.json", json_bytes(config))
    return ["config.json", "last.pt"]


def convert_file(src: str | os.PathLike[str], dest: str | os.PathLike[str],
                 arch: str | None = None, *, format: str | None = None,
                 part: str | None = None) -> dict[str, Any]:
    """Convert the checkpoint ``src`` into a metakd state dict or run folder at ``dest``.

    ``src`` is read weights-only, through :func:`metakd.interop.read` (a format detected or
    named), else as a plain state dict of ``arch`` (:func:`metakd.distill.load_teacher`); the
    model is built and the weights loaded strictly. ``dest`` ending in ``.pt``/``.pth`` gets
    ``{name: tensor}``; any other ``dest`` becomes a ``maml`` run folder (``config.json`` and
    ``last.pt``), for the formats that carry the original's training settings
    (MAML-Pytorch), which ``metakd eval DEST`` tests.

    Args:
        src: the original checkpoint file.
        dest: the state-dict file or the new run folder.
        arch: the metakd model name (``None``: the format's choice).
        format: the :mod:`metakd.interop` format name (``None``: detected).
        part: ``"student"`` or ``"teacher"`` of a file holding several networks.

    Returns:
        ``{"arch", "format", "model_kwargs", "dest", "kind", "files", "extras"}``.

    Raises:
        InputError: ``src`` is missing, unreadable or does not fit.
        UsageError: no ``arch`` for a plain state dict; a run folder from a format without
            training settings; ``dest`` is a non-empty folder.

    Example:
        >>> import tempfile, torch
        >>> from metakd.nn import create
        >>> with tempfile.TemporaryDirectory() as d:
        ...     torch.save(create("conv4", num_classes=5).state_dict(), f"{d}/mine.pt")
        ...     convert_file(f"{d}/mine.pt", f"{d}/copy.pt", "conv4")["kind"]
        'state dict'
    """
    from metakd.engine.checkpoint import save_checkpoint

    src, dest = Path(src), Path(dest)
    model, converted = _read(src, arch, format, part)
    if dest.suffix in STATE_DICT_SUFFIXES:
        save_checkpoint(dict(model.state_dict()), dest)
        kind, files = "state dict", [dest.name]
    else:
        files = _run_folder(dest, model, converted)
        kind = "run folder"
    return {"arch": converted.arch if converted is not None else arch,
            "format": converted.format if converted is not None else "state dict",
            "model_kwargs": dict(converted.model_kwargs) if converted is not None else {},
            "dest": str(dest), "kind": kind, "files": files,
            "extras": dict(converted.extras) if converted is not None else {}}
