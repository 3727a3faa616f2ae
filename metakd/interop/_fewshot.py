"""The checkpoint layout of Meta-Baseline's training scripts, which W2S and GDA kept.

``yinboc/few-shot-meta-baseline`` (commit ``779fae3``) ``train_classifier.py`` and
``train_meta.py`` save, as ``epoch-last.pth``, ``max-va.pth``, ``epoch-<N>.pth`` and
``epoch-ex.pth``::

    {"file": __file__, "config": {...the YAML...}, "model": "classifier" | "meta-baseline",
     "model_args": {"encoder": NAME, "encoder_args": {}, ...}, "model_sd": state_dict,
     "training": {"epoch": ..., "optimizer": ..., "optimizer_args": ..., "optimizer_sd": ...}}

``ggjy/vision_weak_to_strong`` (``few_shot_leaerning/``) and GDA (``Few-shot Learning/``)
save the same dict. The projects differ in what an encoder name means, so each format
passes its own table of names (:class:`Encoder`) to :func:`convert`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from metakd.engine.errors import InputError
from metakd.interop import Converted

__all__ = ["Encoder", "convert", "encoder_name", "is_saved_model"]

_KINDS = ("classifier", "meta-baseline")


@dataclass(frozen=True)
class Encoder:
    """What an original encoder name builds in metakd.

    Attributes:
        arch: the metakd model name (:func:`metakd.nn.create`).
        kwargs: the model's arguments for that name (``{"wide": True}``).
        note: a few words for messages and docs ("no max-pooling").

    Example:
        >>> Encoder("resnet12", {"wide": True}).kwargs
        {'wide': True}
    """

    arch: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""


def is_saved_model(obj: Any) -> bool:
    """Whether ``obj`` has the layout: ``model`` (a name), ``model_args``, ``model_sd``.

    Example:
        >>> is_saved_model({"model": "classifier", "model_args": {}, "model_sd": {}})
        True
        >>> is_saved_model({"model": {"fc.weight": 0}})
        False
    """
    return (isinstance(obj, Mapping) and isinstance(obj.get("model"), str)
            and isinstance(obj.get("model_args"), Mapping)
            and isinstance(obj.get("model_sd"), Mapping))


def encoder_name(obj: Any) -> str | None:
    """``model_args["encoder"]`` of a saved model, or ``None``.

    Example:
        >>> encoder_name({"model_args": {"encoder": "resnet12"}})
        'resnet12'
    """
    args = obj.get("model_args") if isinstance(obj, Mapping) else None
    name = args.get("encoder") if isinstance(args, Mapping) else None
    return name if isinstance(name, str) else None


def _float(value: Any) -> float | None:
    if torch.is_tensor(value) and value.numel() == 1:
        return float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _sub(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _head(kind: str, args: Mapping[str, Any], state: Mapping[str, Tensor]
          ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The classifier of a Classifier-Baseline as metakd's ``head`` (state, model kwargs)."""
    if kind == "linear-classifier":
        head = _sub(state, "classifier.linear.")
        if "weight" not in head:
            raise InputError("a 'linear-classifier' without classifier.linear.weight")
        return {f"head.{k}": v for k, v in head.items()}, {
            "num_classes": int(head["weight"].shape[0])}
    if kind == "nn-classifier":
        cargs = args.get("classifier_args") or {}
        if cargs.get("metric", "cos") != "cos" or cargs.get("temp") is not None:
            raise InputError("an 'nn-classifier' other than the cosine one with a learnt "
                             "temperature has no metakd head")
        proto, temp = state.get("classifier.proto"), state.get("classifier.temp")
        if proto is None or temp is None:
            raise InputError("an 'nn-classifier' without classifier.proto/classifier.temp")
        return {"head.weight": proto, "head.temperature": temp}, {
            "num_classes": int(proto.shape[0]), "head": "cosine"}
    raise InputError(f"classifier {kind!r} has no metakd head (known: linear-classifier, "
                     "nn-classifier)")


def convert(obj: Any, arch: str | None, *, encoders: Mapping[str, Encoder],
            unsupported: Mapping[str, str], project: str, fmt: str,
            alternative: str = "") -> Converted:
    """Read a saved Classifier-Baseline or Meta-Baseline as metakd's encoder ``arch``.

    Args:
        obj: the loaded checkpoint (:func:`is_saved_model`).
        arch: the metakd model asked for; ``None``: the one the encoder name means.
        encoders: the project's encoder names and what each builds in metakd.
        unsupported: encoder names of the project that metakd cannot build, with why.
        project: the project's name, for messages.
        fmt: the format's name, recorded in the result.
        alternative: appended to the message refusing a different ``arch``.

    Returns:
        A classifier: the encoder's state and ``head.*``; a Meta-Baseline: the encoder alone
        (``num_classes=0``) and ``extras["temperature"]`` / ``extras["metric"]``.

    Raises:
        InputError: an unknown model or encoder, encoder arguments the original does not
            take, or an ``arch`` other than the one the file names (one line).
    """
    kind, args = obj["model"], obj["model_args"]
    if kind not in _KINDS:
        raise InputError(f"{project} model {kind!r} is not a network metakd reads (known: "
                         f"{', '.join(_KINDS)})")
    name = encoder_name(obj)
    if name is None:
        raise InputError(f"{project} {kind!r} without model_args.encoder")
    if name in unsupported:
        raise InputError(f"{project} encoder {name!r} {unsupported[name]}")
    enc = encoders.get(name)
    if enc is None:
        raise InputError(f"{project} encoder {name!r} is unknown (known: "
                         f"{', '.join(sorted(encoders))})")
    if arch is not None and arch != enc.arch:
        what = f" ({enc.note})" if enc.note else ""
        raise InputError(f"holds {project}'s encoder {name!r}{what}: load it as "
                         f"arch={enc.arch!r}, not {arch!r}{alternative}")
    if args.get("encoder_args"):
        raise InputError(f"{project} encoder {name!r} takes no encoder_args, the file has "
                         f"{dict(args['encoder_args'])}")
    state = {(k[len("module."):] if k.startswith("module.") else k): v
             for k, v in obj["model_sd"].items()}
    encoder = _sub(state, "encoder.")
    if not encoder:
        raise InputError(f"{project} {kind!r} without encoder.* weights")
    kwargs: dict[str, Any] = dict(enc.kwargs)
    extras: dict[str, Any] = {"model": kind, "encoder": name}
    training = obj.get("training")
    if isinstance(training, Mapping) and isinstance(training.get("epoch"), int):
        extras["epoch"] = training["epoch"]
    if kind == "classifier":
        head, head_kwargs = _head(str(args.get("classifier")), args, state)
        encoder.update(head)
        kwargs.update(head_kwargs)
    else:
        temp = _float(state.get("temp"))
        extras["temperature"] = temp if temp is not None else _float(args.get("temp", 10.0))
        extras["metric"] = str(args.get("method", "cos"))
        kwargs["num_classes"] = 0
    return Converted(enc.arch, encoder, kwargs, fmt, extras)
