"""PMAML (Zhang, Wang, Gai, ECAI 2020) checkpoints: torchmeta ``MetaModule`` state dicts.

Facts read from ``remiMZ/PMAML-ECAI20`` at commit ``266d0670f3b664dc5d64448e5251b219b298c573``
(``meta_backbones/*.py``, ``models/*/model.py``, ``models/*/train.py``,
``models/global_utils.py``, ``torchmeta/modules/batchnorm.py``).

The teacher (``models/teacher``) and the students (``models/pmaml_every``, ``pmaml_last``) save
``<model-name>_<train>_<test>_<backbone>_max_acc.pt``: the ``state_dict()`` of one
``ConvolutionalNeuralNetwork`` (``encoder`` = the backbone, global average pooling,
``classifier`` = a linear layer), ``DataParallel``'s ``module.`` removed. Key layouts:

- ``conv1``/``conv2``/``conv4``/``conv6``/``conv8``: ``encoder.encoder.i.0.{weight,bias}``
  (3×3 conv, padding 1) and ``encoder.encoder.i.1.{weight,bias}`` (batch norm with
  ``track_running_stats=False``: batch statistics in train and eval, no running statistics in
  the file); max-pool 2 after the first four blocks. metakd's ``conv1``...``conv8`` (GAP head).
- ``resnet10``/``resnet18``: ``encoder.conv1`` / ``encoder.bn1`` (3×3 stem, no pooling),
  ``encoder.layer{1-4}.{b}.{conv1,bn1,conv2,bn2,downsample.0,downsample.1}``; their batch norms
  keep running statistics (used in eval). metakd's ``resnet10``/``resnet18`` (``stem.0``,
  ``stem.1``, ``layerS.b.*``).
- ``classifier.{weight,bias}`` → ``head.{weight,bias}``.

The ``*_max_acc_checkpoint.pt.tar`` files pickle the ``argparse`` namespace next to the
weights, so a weights-only load refuses them: use the ``*_max_acc.pt`` file of the same run.
The file names the backbone; the weights say it too, so ``arch`` may be left out.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from metakd.engine.errors import InputError
from metakd.interop import Converted, Format, register_format, state_of
from metakd.interop._common import check_fits, numbered, strip_prefix

__all__ = ["COMMIT", "REPOSITORY", "convert", "detect"]

REPOSITORY = "remiMZ/PMAML-ECAI20"
COMMIT = "266d0670f3b664dc5d64448e5251b219b298c573"

_CONVS = {1: "conv1", 2: "conv2", 4: "conv4", 6: "conv6", 8: "conv8"}
_RESNETS = {(1, 1, 1, 1): "resnet10", (2, 2, 2, 2): "resnet18"}
_ARCHS = (*_CONVS.values(), *_RESNETS.values())

_NO_RESNET12 = ("PMAML has no ResNet-12 at commit 266d067 (models/global_utils.py imports "
                "meta_backbones.resnet12, which the repository lacks), so no file has its layout")


def _state(obj: Any) -> dict[str, Tensor] | None:
    state = state_of(obj)
    if state is None:
        return None
    state = strip_prefix(state, "module.")
    if "classifier.weight" not in state:
        return None
    if not all(k.startswith(("encoder.", "classifier.")) for k in state):
        return None
    return state


def detect(obj: Any) -> bool:
    """Whether ``obj`` is a PMAML ``ConvolutionalNeuralNetwork`` state dict.

    Example:
        >>> import torch
        >>> detect({"encoder.encoder.0.0.weight": torch.zeros(1), "classifier.weight": torch.zeros(1)})
        True
        >>> detect({"encoder.block1.conv.weight": torch.zeros(1), "head.weight": torch.zeros(1)})
        False
    """
    state = _state(obj)
    return state is not None and (
        "encoder.encoder.0.0.weight" in state
        or ("encoder.conv1.weight" in state and "encoder.layer1.0.conv1.weight" in state))


def _conv(state: dict[str, Tensor]) -> tuple[str, dict[str, Tensor], dict[str, Any]]:
    blocks = numbered(state, r"encoder\.encoder\.(\d+)\.0\.weight")
    depth = len(blocks)
    if blocks != list(range(depth)) or depth not in _CONVS:
        raise InputError(f"holds a PMAML conv backbone of {depth} blocks; PMAML's are Conv-1, 2, "
                         "4, 6 and 8")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("classifier."):
            out["head." + key[len("classifier."):]] = value
            continue
        _, _, i, j, name = key.split(".", 4)
        out[f"encoder.block{int(i) + 1}.{'conv' if j == '0' else 'bn'}.{name}"] = value
    w0 = state["encoder.encoder.0.0.weight"]
    kwargs: dict[str, Any] = {"num_classes": int(state["classifier.weight"].shape[0]),
                              "in_channels": int(w0.shape[1]), "hidden": int(w0.shape[0])}
    if "encoder.encoder.0.1.running_mean" in state:  # a PMAML edited to track statistics
        kwargs.update(bn_mode="running", bn_momentum=1.0)  # PMAML's conv BN momentum
    return _CONVS[depth], out, kwargs


def _resnet(state: dict[str, Tensor]) -> tuple[str, dict[str, Tensor], dict[str, Any]]:
    if any(".conv3." in k for k in state):
        raise InputError("holds a PMAML ResNet of Bottleneck blocks (resnet50 and deeper); "
                         "metakd has PMAML's BasicBlock ResNet-10 and ResNet-18 only")
    layers = tuple(len(numbered(state, rf"encoder\.layer{s}\.(\d+)\.conv1\.weight"))
                   for s in range(1, 5))
    if layers not in _RESNETS:
        raise InputError(f"holds a PMAML ResNet of {list(layers)} BasicBlocks per stage; metakd "
                         "has [1, 1, 1, 1] (resnet10) and [2, 2, 2, 2] (resnet18)")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("classifier."):
            key = "head." + key[len("classifier."):]
        elif key.startswith("encoder.conv1."):
            key = "stem.0." + key[len("encoder.conv1."):]
        elif key.startswith("encoder.bn1."):
            key = "stem.1." + key[len("encoder.bn1."):]
        else:
            key = key[len("encoder."):]
        out[key] = value
    stem = state["encoder.conv1.weight"]
    kwargs: dict[str, Any] = {"num_classes": int(state["classifier.weight"].shape[0]),
                              "in_channels": int(stem.shape[1])}
    if int(stem.shape[0]) != 64:
        kwargs["width"] = int(stem.shape[0])
    if "encoder.bn1.running_mean" not in state:
        kwargs["bn_mode"] = "transductive"
    return _RESNETS[layers], out, kwargs


def convert(obj: Any, arch: str | None = None, *, part: str | None = None) -> Converted:
    """A PMAML teacher's or student's ``*_max_acc.pt`` in metakd's names.

    Args:
        obj: the loaded state dict.
        arch: the metakd model (``conv1``...``conv8``, ``resnet10``, ``resnet18``) or ``None``
            (the one the keys say).
        part: ignored: PMAML writes the teacher and the student to separate files, each read
            alike.

    Returns:
        The :class:`~metakd.interop.Converted`.

    Raises:
        InputError: the keys are another backbone than ``arch`` or one metakd lacks.

    Example:
        >>> import torch
        >>> sd = {f"encoder.encoder.{i}.{j}.{n}": torch.zeros((64, 3 if i == 0 else 64, 3, 3)
        ...       if j == 0 and n == "weight" else (64,)) for i in range(4) for j in (0, 1)
        ...       for n in ("weight", "bias")}
        >>> sd.update({"classifier.weight": torch.zeros(5, 64), "classifier.bias": torch.zeros(5)})
        >>> c = convert(sd)
        >>> c.arch, c.model_kwargs
        ('conv4', {'num_classes': 5, 'in_channels': 3, 'hidden': 64})
    """
    if arch == "resnet12":
        raise InputError(_NO_RESNET12)
    state = _state(obj)
    if state is None or not detect(state):
        raise InputError("is not a PMAML state dict (keys encoder.encoder.0.0.weight or "
                         "encoder.conv1.weight / encoder.layer1.0.conv1.weight, and "
                         "classifier.weight)")
    name, out, kwargs = _conv(state) if "encoder.encoder.0.0.weight" in state else _resnet(state)
    if arch is not None and arch != name:
        if arch in _ARCHS:
            raise InputError(f"holds PMAML's {name} (by its keys), not {arch!r}")
        raise InputError(f"PMAML checkpoints convert to {', '.join(_ARCHS)}, not {arch!r}")
    if name.startswith("conv") and int(state["classifier.weight"].shape[1]) != kwargs["hidden"]:
        raise InputError(f"the classifier takes {int(state['classifier.weight'].shape[1])} "
                         f"features where PMAML's average pooling gives {kwargs['hidden']}")
    check_fits(name, kwargs, out, f"the PMAML {name}")
    return Converted(name, out, kwargs, "pmaml",
                     {"source": f"{REPOSITORY}@{COMMIT[:7]}", "part": part})


register_format(Format(
    name="pmaml",
    project=f"{REPOSITORY} (commit {COMMIT[:7]})",
    detect=detect,
    convert=convert,
    archs=_ARCHS,
))
