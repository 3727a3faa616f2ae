"""Teachers from weights files: state-dict files and mdistiller checkpoints.

:func:`load_teacher` returns a frozen model (eval mode, ``requires_grad=False``) from

- a **state-dict file** (``.pt``/``.pth``) holding ``{name: tensor}``, read with
  ``torch.load(weights_only=True)`` (no pickled code runs); ``arch`` names the model;
- an **mdistiller CIFAR teacher** (``download_ckpts/cifar_teachers/<name>_vanilla/
  ckpt_epoch_240.pth``: ``{"model": state_dict, ...}``), whose key names differ from
  metakd's only in the classifier (``fc.*`` there, ``head.*`` here); a ``module.`` prefix
  (saved from ``DataParallel``) is removed.

A **metakd run folder** (``config.json`` + ``best.pt``/``last.pt``) is read by the method
that wrote it: :func:`metakd.recipes.load_teacher` (also ``metakd.load_teacher``) takes run
folders and the files above alike. Models that distil take the result as a module, or take a
function that loads it at first use (:class:`metakd.distill.FrozenTeacher`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from metakd._frozen import freeze
from metakd.engine.errors import InputError

__all__ = ["from_mdistiller", "load_teacher"]

_EXPECTED = ("a state-dict file ({name: tensor}, .pt/.pth) or an mdistiller checkpoint "
             "({'model': state_dict}), with arch=..., or a metakd run folder")

_LAYOUTS = (
    "a metakd run folder (config.json with best.pt or last.pt; read by "
    "metakd.recipes.load_teacher), a state-dict file ({name: tensor} saved with torch.save, "
    ".pt/.pth, read weights-only) with arch=..., or an mdistiller checkpoint "
    "({'model': state_dict}, e.g. cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth) with "
    "arch=..."
)


def _strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def from_mdistiller(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an mdistiller CIFAR ResNet's keys to metakd's :class:`~metakd.nn.CifarResNet`.

    The convolution, batch-norm and shortcut (``downsample.0``/``.1``) names are the same in
    both; the classifier ``fc.weight``/``fc.bias`` becomes ``head.weight``/``head.bias``. A
    ``module.`` prefix of every key (``DataParallel``) is removed.

    Example:
        >>> sd = {"module.conv1.weight": torch.zeros(1), "module.fc.weight": torch.zeros(1)}
        >>> sorted(from_mdistiller(sd))
        ['conv1.weight', 'head.weight']
    """
    state = _strip_prefix(state_dict, "module.")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("fc."):
            key = "head." + key[len("fc."):]
        out[key] = value
    return out


def _tensors(obj: Any, path: Path) -> dict[str, Tensor]:
    """The state dict inside a loaded checkpoint file, in metakd's key names."""
    state = _raw_tensors(obj, path)
    if any(k.startswith("student.") for k in state):  # a Distiller's checkpoint: its student
        return {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
    return state


def _raw_tensors(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        return from_mdistiller(obj["model"])  # mdistiller {"model": sd, ...}; metakd best.pt
    for key in ("state_dict", "model_sd"):  # other common wrappers
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            return _strip_prefix(obj[key], "module.")
    if isinstance(obj, Mapping) and obj and all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        return _strip_prefix(obj, "module.")
    raise InputError(f"{path} holds no state dict; a teacher is {_EXPECTED}")


def _read(path: Path) -> Any:
    """``load_checkpoint(path)`` (weights only), its failures one line saying what to give."""
    from metakd.engine.checkpoint import load_checkpoint

    try:
        return load_checkpoint(path)
    except InputError as e:
        raise InputError(f"{e}; a teacher is {_EXPECTED}") from None


def _num_classes(state: Mapping[str, Tensor]) -> int | None:
    for key in ("head.weight", "head.fc.weight", "classifier.weight"):
        if key in state and state[key].dim() == 2:
            return int(state[key].shape[0])
    return None


def load_teacher(
    source: str | os.PathLike[str] | nn.Module,
    arch: str | None = None,
    *,
    num_classes: int | None = None,
    format: str | None = None,
    part: str | None = None,
    **model_kwargs: Any,
) -> nn.Module:
    """A frozen teacher model from a state-dict file or an original project's checkpoint.

    A file in a format of :mod:`metakd.interop` (the original projects' own checkpoints) is
    converted by it, and may name its architecture itself; any other file is read as a state
    dict (plain, or under ``model`` / ``state_dict`` / ``model_sd``, mdistiller's classifier
    names renamed).

    Run folders are read by :func:`metakd.recipes.load_teacher` (also
    ``metakd.load_teacher``), which passes weights files on to this function.

    Args:
        source: the file (or an ``nn.Module``, returned frozen).
        arch: the model's registered name (:func:`metakd.nn.create`).
        num_classes: classes of the teacher's head; default: read from the weights.
        format: the :mod:`metakd.interop` format to read the file as; default: detected.
        part: which network of a file holding several (``"student"`` or ``"teacher"`` of a
            distiller's checkpoint); passed to the format.
        **model_kwargs: further arguments of the model factory (``in_channels``, BN options).

    Returns:
        The model, eval mode, ``requires_grad=False``.

    Raises:
        FileNotFoundError: ``source`` does not exist (the message lists the layouts).
        ValueError: in one line naming the file: ``source`` is a run folder; no ``arch``;
            the file is not a PyTorch checkpoint (text, truncated, another format); it
            pickles Python objects, which weights-only loading refuses to run (the file is
            never loaded otherwise); it holds no state dict; or it does not fit ``arch``
            (missing, unexpected or mis-shaped keys are named).

    Example:
        >>> import metakd.nn as mnn
        >>> net = mnn.create("resnet8", num_classes=10)
        >>> torch.save({"model": {("fc." + k[5:] if k.startswith("head.") else k): v
        ...                       for k, v in net.state_dict().items()}}, "ckpt_epoch_240.pth")
        >>> teacher = load_teacher("ckpt_epoch_240.pth", arch="resnet8")   # mdistiller layout
        >>> teacher.training, teacher.head.out_features
        (False, 10)
        >>> torch.equal(teacher.conv1.weight, net.conv1.weight)
        True
    """
    if isinstance(source, nn.Module):
        return freeze(source)
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"teacher {path} is a folder without config.json; a teacher "
                                    f"is {_LAYOUTS}")
        raise ValueError(f"teacher {path} is a run folder: read it with "
                         "metakd.recipes.load_teacher (or metakd.load_teacher); "
                         "metakd.distill.load_teacher reads weights files")
    if not path.is_file():
        raise FileNotFoundError(f"teacher {path} does not exist; a teacher is {_LAYOUTS}")
    obj = _read(path)
    import metakd.nn as mnn
    from metakd import interop

    options = {"part": part} if part is not None else {}
    converted = interop.read(obj, arch, format=format, source=str(path), **options)
    if converted is not None:
        arch, state = converted.arch, converted.state
        model_kwargs = {**converted.model_kwargs, **model_kwargs}
    else:
        if arch is None:
            raise ValueError(f"teacher {path} is a weights file, which does not say its "
                             "architecture: pass arch=... (for example 'resnet56')")
        state = _tensors(obj, path)
        state = mnn.rename_original_keys(state, arch)  # e.g. mdistiller's classifier names
    classes = num_classes if num_classes is not None else _num_classes(state)
    if classes is not None:
        model_kwargs["num_classes"] = classes
    model = mnn.create(arch, **model_kwargs)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
        parts = [f"missing {few(missing)}" if missing else "",
                 f"unexpected {few(unexpected)}" if unexpected else "",
                 f"shape mismatch {few(shapes)}" if shapes else ""]
        raise InputError(f"{path} does not fit a {arch!r}: "
                         + "; ".join(p for p in parts if p))
    model.load_state_dict(state)
    return freeze(model)
