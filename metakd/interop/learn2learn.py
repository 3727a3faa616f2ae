"""learn2learn's vision models: ``state_dict()`` of ``CNN4``/``MiniImagenetCNN``, ``ResNet12``.

Facts read from learn2learn 0.2.0 (``learn2learn/vision/models/cnn4.py``, ``resnet12.py``;
repository ``learnables/learn2learn``). ``learn2learn.algorithms.MAML(model).state_dict()``
(every key under ``module.``) is read too. Nothing of learn2learn is imported.

``CNN4`` (``MiniImagenetCNN`` is the same class), 4 layers
    ``features.i.conv`` (3×3, padding 1, bias) → ``features.i.normalize`` (``BatchNorm2d``:
    γ, β, running statistics, eps 1e-5) → ReLU → max-pool 2; flatten; ``classifier``. metakd's
    ``conv4(head="flatten")`` with ``bn_mode="running"`` computes the same function; width,
    channels and the flattened size come from the shapes (``image_size`` 84 for a 5×5 map).
``ResNet12``
    ``features.layerS.0.{conv1,bn1,conv2,bn2,conv3,bn3,downsample.0,downsample.1}``: the
    MetaOptNet/Meta-Baseline block (LeakyReLU 0.1, 1×1 conv + BN shortcut, max-pool 2), widths
    64-160-320-640 (``wider=True``) or 64-128-256-512; ``AvgPool2d(5)``; ``classifier``. metakd's
    ``resnet12(channels=...)`` (mean over the map) computes the same function where the last map
    is 5×5 (inputs of 80 to 95 pixels), in ``eval()``; in ``train()`` learn2learn also applies
    DropBlock and dropout (``dropblock_dropout``, 0.1 by default), which metakd does not.

Refused, with the difference: ``OmniglotCNN`` (see :data:`OMNIGLOT_CNN`); ``CNN4`` of other
than 4 layers (max-pool ``4 // layers``); ``ResNet12(avg_pool=False)`` (flattened map).
``CNN4(max_pool=False)`` has the keys of ``CNN4`` and cannot be told apart by them: it is read
as max-pooled, which it is not (its convolutions have stride 2 instead).

Option of :func:`convert`: ``bn_mode="running"`` (default, learn2learn's ``BatchNorm2d``) or
``"transductive"`` (batch statistics in eval too, as learn2learn's MAML examples, which never
call ``eval()``; the running statistics are dropped).
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from metakd.engine.errors import InputError
from metakd.interop import Converted, Format, register_format, state_of
from metakd.interop._common import check_fits, numbered, strip_prefix

__all__ = ["OMNIGLOT_CNN", "convert", "detect"]

OMNIGLOT_CNN = (
    "learn2learn's OmniglotCNN pads its 3x3 stride-2 convolutions by 1 pixel on every side "
    "(nn.Conv2d(padding=1)); metakd's maml_omniglot pads them as TF 'SAME' (0 before and 1 "
    "after at 28, 14 and 4 pixels), so no metakd model computes the same function")

_RUNNING = ("running_mean", "running_var", "num_batches_tracked")


def _state(obj: Any) -> dict[str, Tensor] | None:
    state = state_of(obj)
    return None if state is None else strip_prefix(state, "module.")


def _kind(state: dict[str, Tensor]) -> str | None:
    if "base.0.conv.weight" in state and "features.1.0.conv.weight" in state:
        return "omniglot_cnn"
    if "classifier.weight" not in state:
        return None
    if "features.0.conv.weight" in state and "features.0.normalize.weight" in state:
        return "cnn4"
    if "features.layer1.0.conv1.weight" in state and "features.layer1.0.conv3.weight" in state:
        return "resnet12"
    return None


def detect(obj: Any) -> bool:
    """Whether ``obj`` is the state dict of one of learn2learn's vision models.

    Example:
        >>> import torch
        >>> detect({"features.0.conv.weight": torch.zeros(1),
        ...         "features.0.normalize.weight": torch.zeros(1),
        ...         "classifier.weight": torch.zeros(1)})
        True
    """
    state = _state(obj)
    return state is not None and _kind(state) is not None


def _bn(out: dict[str, Tensor], key: str, value: Tensor, bn_mode: str) -> None:
    if bn_mode == "transductive" and key.rsplit(".", 1)[-1] in _RUNNING:
        return
    out[key] = value


def _cnn4(state: dict[str, Tensor], bn_mode: str) -> tuple[str, dict[str, Tensor],
                                                            dict[str, Any]]:
    layers = numbered(state, r"features\.(\d+)\.conv\.weight")
    if len(layers) != 4 or layers != list(range(4)):
        n, pool = len(layers), 2 * (4 // max(len(layers), 1))
        if n in (1, 2):
            raise InputError(f"learn2learn's CNN4 with {n} layers max-pools by {pool}x{pool} "
                             f"(2 * (4 // layers)); metakd's conv{n} pools by 2x2")
        raise InputError(f"learn2learn's CNN4 with {n} layers: metakd reads the 4-layer CNN4 "
                         "only (as conv4)")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("classifier."):
            out["head." + key[len("classifier."):]] = value
            continue
        _, i, module, name = key.split(".", 3)
        _bn(out, f"encoder.block{int(i) + 1}.{'conv' if module == 'conv' else 'bn'}.{name}",
            value, bn_mode)
    w0 = state["features.0.conv.weight"]
    hidden, features = int(w0.shape[0]), int(state["classifier.weight"].shape[1])
    side = math.isqrt(features // hidden)
    if side < 1 or hidden * side * side != features:
        raise InputError(f"learn2learn's CNN4 classifier takes {features} features, not "
                         f"{hidden} x side x side of a flattened map")
    kwargs = {"num_classes": int(state["classifier.weight"].shape[0]),
              "in_channels": int(w0.shape[1]), "hidden": hidden, "head": "flatten",
              "image_size": 84 if side == 5 else 16 * side, "bn_mode": bn_mode}
    return "conv4", out, kwargs


def _resnet12(state: dict[str, Tensor], bn_mode: str) -> tuple[str, dict[str, Tensor],
                                                                dict[str, Any]]:
    if any(k.startswith(f"features.layer{s}.1.") for s in range(1, 5) for k in state):
        raise InputError("learn2learn ResNet12 with more than one block per stage: metakd's "
                         "resnet12 has one")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("classifier."):
            out["head." + key[len("classifier."):]] = value
        else:  # features.layerS.0.rest -> layerS.rest
            _, layer, _, rest = key.split(".", 3)
            _bn(out, f"{layer}.{rest}", value, bn_mode)
    channels = [int(state[f"features.layer{s}.0.conv1.weight"].shape[0]) for s in range(1, 5)]
    features = int(state["classifier.weight"].shape[1])
    if features != channels[-1]:
        raise InputError(f"learn2learn's ResNet12 classifier takes {features} features: "
                         f"avg_pool=False flattens the {channels[-1]}-channel map, and metakd's "
                         "resnet12 averages it")
    kwargs = {"num_classes": int(state["classifier.weight"].shape[0]),
              "in_channels": int(state["features.layer1.0.conv1.weight"].shape[1]),
              "channels": channels, "bn_mode": bn_mode}
    return "resnet12", out, kwargs


def convert(obj: Any, arch: str | None = None, *, bn_mode: str = "running",
            part: str | None = None) -> Converted:
    """A learn2learn ``CNN4``/``MiniImagenetCNN`` or ``ResNet12`` state dict in metakd's names.

    Args:
        obj: the loaded state dict (optionally under ``module.``, as ``l2l.algorithms.MAML``).
        arch: ``"conv4"``, ``"resnet12"`` or ``None`` (the one the keys say).
        bn_mode: ``"running"`` (learn2learn's ``BatchNorm2d``) or ``"transductive"``.
        part: ignored (the file holds one network).

    Returns:
        The :class:`~metakd.interop.Converted`.

    Raises:
        InputError: an ``OmniglotCNN``, or another variant no metakd model computes (the
            message says what differs), or not ``arch``.

    Example:
        >>> import torch
        >>> sd = {"base.0.conv.weight": torch.zeros(1), "features.1.0.conv.weight": torch.zeros(1)}
        >>> convert(sd)
        Traceback (most recent call last):
        ...
        metakd.engine.errors.InputError: learn2learn's OmniglotCNN pads ...
    """
    del part
    state = _state(obj)
    kind = None if state is None else _kind(state)
    if state is None or kind is None:
        raise InputError("is not a learn2learn vision model's state dict (CNN4: "
                         "features.0.conv.weight; ResNet12: features.layer1.0.conv1.weight; "
                         "and classifier.weight)")
    if kind == "omniglot_cnn":
        raise InputError(OMNIGLOT_CNN)
    if bn_mode not in ("running", "transductive"):
        raise InputError(f"bn_mode={bn_mode!r}: use 'running' or 'transductive'")
    name, out, kwargs = _cnn4(state, bn_mode) if kind == "cnn4" else _resnet12(state, bn_mode)
    if arch is not None and arch != name:
        raise InputError(f"holds learn2learn's {'CNN4' if kind == 'cnn4' else 'ResNet12'}, "
                         f"which is metakd's {name!r}, not {arch!r}")
    check_fits(name, kwargs, out, f"the learn2learn {kind}")
    return Converted(name, out, kwargs, "learn2learn",
                     {"source": "learn2learn 0.2.0 vision.models",
                      "bn_running_stats": "kept" if bn_mode == "running" else "dropped"})


register_format(Format(
    name="learn2learn",
    project="learnables/learn2learn 0.2.0 (learn2learn.vision.models)",
    detect=detect,
    convert=convert,
    archs=("conv4", "resnet12"),
))
