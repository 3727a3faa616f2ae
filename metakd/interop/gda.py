"""GDA and Weak-to-Strong (W2S): the few-shot run files and the timm CIFAR checkpoints.

GDA (``zhiweihu1103/Logit-Distillation-GDA``, commit ``31d4153``: the code is
``GDA-code.zip``) descends from W2S (``ggjy/vision_weak_to_strong``, commit ``c020783``),
and both save the same files.

``gda_fewshot``
    ``Few-shot Learning/`` (W2S: ``few_shot_leaerning/``) keeps Meta-Baseline's
    ``{"model", "model_args", "model_sd", ...}`` (:mod:`metakd.interop._fewshot`) with its own
    encoders (:data:`ENCODERS`, ``models/resnet.py``): GDA's ``resnet12`` has **no
    max-pooling** (metakd ``resnet12_gda``) and the ``*_bottle`` networks are
    :class:`metakd.nn.BottleResNet`. Detected when the file shows it is GDA's/W2S's: a
    ``*_bottle`` encoder, a distillation config (``kd_loss_config``, ``teacher_load``...) or a
    training script under ``Few-shot Learning`` / ``few_shot_leaerning``; any other file of
    the layout is read as Meta-Baseline's (:mod:`metakd.interop.meta_baseline`).
``gda_cifar``
    ``Image Classification/train.py`` (W2S: ``classification/train.py``) saves through timm's
    ``CheckpointSaver``: ``{"epoch", "arch", "state_dict", "optimizer", "version", "args",
    "metric"}``, where ``args`` is the pickled ``argparse.Namespace`` of the command line
    (:func:`metakd.engine.load_checkpoint` lets exactly that class through) and
    ``args.model`` names the network. Also read with ``format="gda_cifar"``: a plain state
    dict and ``{"state_dict": sd}`` (released teachers), which name no network. timm names
    map to metakd's by :data:`CIFAR_MODELS`; the classifier (``fc``, ``linear``,
    ``classifier``) becomes ``head``.

:data:`ENCODERS` is also how ``--res_type`` / ``--teacher_res_type`` of GDA's scripts are read
(:func:`metakd.recipes.baseline_options.from_original`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from metakd.engine.errors import InputError
from metakd.interop import Converted, Format, register_format, state_of
from metakd.interop._fewshot import Encoder, encoder_name, is_saved_model
from metakd.interop._fewshot import convert as _convert

__all__ = ["CIFAR_MODELS", "ENCODERS", "convert_cifar", "convert_fewshot", "detect_cifar",
           "detect_fewshot", "encoder"]

PROJECT = "GDA/W2S"

ENCODERS: dict[str, Encoder] = {
    "resnet12": Encoder("resnet12_gda", {}, "ResNet-12 without max-pooling"),
    "resnet12-wide": Encoder("resnet12_gda", {"wide": True},
                             "ResNet-12 64-160-320-640 without max-pooling"),
    "resnet12_bottle": Encoder("resnet12_bottle", {}, "blocks [1,1,1,1], pooled"),
    "resnet18_bottle": Encoder("resnet18_bottle", {}, "blocks [1,2,2,1]"),
    "resnet36_bottle": Encoder("resnet36_bottle", {}, "blocks [2,3,5,2]"),
    "resnet50_bottle": Encoder("resnet50_bottle", {}, "blocks [3,4,6,3]"),
    "resnet18": Encoder("resnet18_bottle", {}, "README name; not registered in GDA's code"),
    "resnet36": Encoder("resnet36_bottle", {}, "README name; not registered in GDA's code"),
}
"""GDA's encoder names (``Few-shot Learning/models/resnet.py``) and what each builds in metakd.

``resnet18`` and ``resnet36`` are the names of GDA's README commands
(``train_meta.py --res_type resnet18``); its code registers no such encoder (the command
stops with a ``KeyError``), and the only networks of those depths in it are the ``_bottle``
ones, which its distillation commands and W2S's tables use."""

_UNSUPPORTED = {
    "convnet4": "(Conv-4 flattened to 1600-d) is not converted: metakd's conv4(head='flatten', "
                "bn_mode='running') is that network under other key names",
    "resnet50": "is not registered in GDA's code (its KD configs name it as a placeholder that "
                "--res_type replaces)",
}

CIFAR_MODELS: dict[str, str] = {
    **{n: n for n in ("resnet8", "resnet20", "resnet32", "resnet56", "resnet80", "resnet110",
                      "resnet8x4", "resnet32x4", "vgg8", "vgg13", "wrn_16_1", "wrn_16_2",
                      "wrn_40_1", "wrn_40_2")},
    "cifar_resnet50": "ResNet50",
    "mobilenetv2": "MobileNetV2",
    "shufflenetv1": "ShuffleV1",
    "shufflenetv2": "ShuffleV2",
}
"""The CIFAR networks GDA's / W2S's timm trainers register (``custom_model/cifar/*.py``) and
their metakd names; keys and outputs are the same up to the classifier's name."""

_DISTILL_KEYS = ("kd_loss_config", "teacher_load", "teacher_model", "teacher_model_args")
_SCRIPT_DIRS = ("Few-shot Learning", "few_shot_leaerning")


def encoder(name: str) -> Encoder:
    """What GDA's ``--res_type NAME`` (or ``model_args.encoder``) builds in metakd.

    Raises:
        ValueError: a name GDA's code does not build (the message lists the known ones).

    Example:
        >>> encoder("resnet12").arch, encoder("resnet36").arch
        ('resnet12_gda', 'resnet36_bottle')
    """
    try:
        return ENCODERS[name]
    except KeyError:
        raise ValueError(f"GDA encoder {name!r} is unknown; GDA's names: "
                         f"{', '.join(ENCODERS)}") from None


def detect_fewshot(obj: Any) -> bool:
    """A saved few-shot model that shows it is GDA's or W2S's.

    Example:
        >>> detect_fewshot({"model": "classifier", "model_sd": {},
        ...                 "model_args": {"encoder": "resnet36_bottle"}})
        True
        >>> detect_fewshot({"model": "classifier", "model_sd": {},
        ...                 "model_args": {"encoder": "resnet12"}})
        False
    """
    if not is_saved_model(obj):
        return False
    if str(encoder_name(obj)).endswith("_bottle"):
        return True
    config = obj.get("config")
    if isinstance(config, Mapping) and any(k in config for k in _DISTILL_KEYS):
        return True
    script = obj.get("file")
    return isinstance(script, str) and any(d in script for d in _SCRIPT_DIRS)


def convert_fewshot(obj: Any, arch: str | None = None, **_: Any) -> Converted:
    """A GDA/W2S Classifier-Baseline or Meta-Baseline file as metakd's encoder (and head).

    Args:
        obj: the loaded checkpoint.
        arch: the metakd model asked for; ``None``: the one ``model_args.encoder`` names.
        **_: other formats' options (ignored).

    Raises:
        InputError: the encoder is not one metakd builds, or ``arch`` differs from it (for
            GDA's ``resnet12``: ``arch="resnet12"``, Meta-Baseline's pooled network).

    Example:
        >>> import metakd.nn as mnn
        >>> enc = mnn.create("resnet12_gda", num_classes=0)
        >>> ckpt = {"model": "meta-baseline", "model_args": {"encoder": "resnet12"},
        ...         "model_sd": {"encoder." + k: v for k, v in enc.state_dict().items()}}
        >>> convert_fewshot(ckpt).arch
        'resnet12_gda'
        >>> convert_fewshot(ckpt, "resnet12")
        Traceback (most recent call last):
        ...
        metakd.engine.errors.InputError: holds GDA/W2S's encoder 'resnet12' (ResNet-12 without max-pooling): load it as arch='resnet12_gda', not 'resnet12'
    """
    return _convert(obj, arch, encoders=ENCODERS, unsupported=_UNSUPPORTED, project=PROJECT,
                    fmt="gda_fewshot")


def _saver_model(obj: Any) -> str | None:
    """The timm model name a CheckpointSaver file records (``args.model``, else ``arch``)."""
    import argparse

    if not isinstance(obj, Mapping):
        return None
    args = obj.get("args")
    name = getattr(args, "model", None) if isinstance(args, argparse.Namespace) else None
    if not isinstance(name, str):
        name = obj.get("arch")
    return name if isinstance(name, str) else None


def detect_cifar(obj: Any) -> bool:
    """A timm ``CheckpointSaver`` file: ``state_dict`` and the model's name (``arch``/``args``).

    Example:
        >>> import torch
        >>> detect_cifar({"epoch": 3, "arch": "resnet20", "version": 2,
        ...               "state_dict": {"fc.weight": torch.zeros(1)}})
        True
        >>> detect_cifar({"state_dict": {"fc.weight": torch.zeros(1)}})
        False
    """
    return (isinstance(obj, Mapping) and state_of(obj.get("state_dict")) is not None
            and _saver_model(obj) is not None)


def _metakd_name(name: str) -> str:
    return CIFAR_MODELS.get(name, name)


def convert_cifar(obj: Any, arch: str | None = None, *, ema: bool = False,
                  **_: Any) -> Converted:
    """A GDA/W2S CIFAR checkpoint (timm ``CheckpointSaver``, ``{"state_dict"}`` or plain).

    Args:
        obj: the loaded checkpoint.
        arch: the network, a metakd name or a GDA/timm name (``cifar_resnet50``); ``None``:
            the one ``args.model`` names (a file that names none needs ``arch``).
        ema: read timm's ``state_dict_ema`` (the model EMA) instead of ``state_dict``.
        **_: other formats' options (ignored).

    Raises:
        InputError: no network named anywhere, a network with no metakd model, an ``arch``
            other than the one the file names, or no state dict (one line).

    Example:
        >>> import argparse, metakd.nn as mnn
        >>> sd = mnn.create("resnet8", num_classes=10).state_dict()
        >>> sd = {("fc." + k[5:] if k.startswith("head.") else k): v for k, v in sd.items()}
        >>> ckpt = {"arch": "resnet8", "state_dict": sd, "args": argparse.Namespace(model="resnet8")}
        >>> c = convert_cifar(ckpt)
        >>> c.arch, c.model_kwargs, "head.weight" in c.state
        ('resnet8', {'num_classes': 10}, True)
        >>> convert_cifar(ckpt, "resnet20")
        Traceback (most recent call last):
        ...
        metakd.engine.errors.InputError: is a 'resnet8' (timm args.model), not arch='resnet20': load it as arch='resnet8'
    """
    import metakd.nn as mnn

    key = "state_dict_ema" if ema else "state_dict"
    saved = _saver_model(obj)
    state = state_of(obj.get(key)) if isinstance(obj, Mapping) else None
    if state is None and not ema:
        state = state_of(obj)
    if state is None:
        raise InputError(f"holds no {key} of tensors (a GDA/W2S CIFAR checkpoint is a timm "
                         "CheckpointSaver file, {'state_dict': sd} or a plain state dict)")
    wanted = _metakd_name(arch) if arch is not None else None
    if saved is not None:
        if saved not in CIFAR_MODELS:
            raise InputError(f"timm model {saved!r} (args.model) has no metakd model; GDA's "
                             f"CIFAR models: {', '.join(CIFAR_MODELS)}")
        if wanted is not None and wanted != _metakd_name(saved):
            raise InputError(f"is a {saved!r} (timm args.model), not arch={arch!r}: load it as "
                             f"arch={_metakd_name(saved)!r}")
        wanted = _metakd_name(saved)
    if wanted is None:
        raise InputError("the file does not name its network: pass arch=... (for example "
                         "'resnet56')")
    if not mnn.is_model(wanted):
        raise InputError(f"{arch!r} is neither a metakd model nor one of GDA's CIFAR models")
    strip = all(k.startswith("module.") for k in state)
    renamed = mnn.rename_original_keys(
        {(k[len("module."):] if strip else k): v for k, v in state.items()}, wanted)
    head = renamed.get("head.weight")
    kwargs = {"num_classes": int(head.shape[0])} if head is not None and head.dim() == 2 else {}
    extras = {k: obj[k] for k in ("epoch", "metric", "version")
              if isinstance(obj, Mapping) and isinstance(obj.get(k), (int, float))}
    if saved is not None:
        extras["model"] = saved
    return Converted(wanted, renamed, kwargs, "gda_cifar", extras)


register_format(Format(
    "gda_fewshot", "GDA (zhiweihu1103/Logit-Distillation-GDA) and W2S "
    "(ggjy/vision_weak_to_strong) few-shot epoch-last.pth / max-va.pth",
    detect_fewshot, convert_fewshot,
    archs=tuple(sorted({e.arch for e in ENCODERS.values()})), priority=8))
register_format(Format(
    "gda_cifar", "GDA and W2S CIFAR checkpoints (timm CheckpointSaver, state_dict, plain)",
    detect_cifar, convert_cifar, archs=tuple(sorted(set(CIFAR_MODELS.values()))),
    priority=6))
