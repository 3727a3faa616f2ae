"""Meta-Baseline (yinboc/few-shot-meta-baseline): Classifier-Baseline and Meta-Baseline files.

The training scripts of ``yinboc/few-shot-meta-baseline`` (commit ``779fae3``) save
``{"file", "config", "model", "model_args", "model_sd", "training"}`` (``epoch-last.pth``,
``max-va.pth``, :mod:`metakd.interop._fewshot`). Two models are read:

- ``model: classifier`` (Classifier-Baseline): ``encoder.*`` and ``classifier.linear.*``
  (``linear-classifier``), or ``classifier.proto`` / ``classifier.temp``
  (``nn-classifier``, cosine): the encoder with metakd's ``head``;
- ``model: meta-baseline``: ``encoder.*`` and the learnt temperature ``temp``: the encoder
  alone (``num_classes=0``), the temperature in ``extras["temperature"]`` and the metric
  (``method``) in ``extras["metric"]``.

Encoders (:data:`ENCODERS`): ``resnet12`` is metakd's ``resnet12`` and ``resnet12-wide`` is
``resnet12(wide=True)``. GDA and W2S save the same layout and call a ResNet-12 *without*
max-pooling ``resnet12`` (:mod:`metakd.interop.gda`); a file that does not show which project
wrote it is read as Meta-Baseline's unless ``arch="resnet12_gda"`` or ``format="gda_fewshot"``
says otherwise.
"""

from __future__ import annotations

from typing import Any

from metakd.interop import Converted, Format, register_format
from metakd.interop._fewshot import Encoder, encoder_name, is_saved_model
from metakd.interop._fewshot import convert as _convert

__all__ = ["ENCODERS", "UNSUPPORTED", "convert", "detect"]

PROJECT = "Meta-Baseline"

ENCODERS: dict[str, Encoder] = {
    "resnet12": Encoder("resnet12", {}, "ResNet-12 with max-pooling"),
    "resnet12-wide": Encoder("resnet12", {"wide": True}, "ResNet-12 64-160-320-640"),
}
"""Meta-Baseline's encoder names (``models/resnet12.py``) and what each builds in metakd."""

UNSUPPORTED: dict[str, str] = {
    "convnet4": "(Conv-4 flattened to 1600-d) is not converted: metakd's conv4(head='flatten', "
                "bn_mode='running') is that network under other key names",
    "resnet18": "(torchvision ResNet-18, 7x7 stem and max-pool) has no metakd model; "
                "metakd's 'resnet18' is PMAML's",
    "resnet50": "(torchvision ResNet-50) has no metakd model",
}
"""Encoder names of Meta-Baseline that metakd cannot build, and why."""


def detect(obj: Any) -> bool:
    """The saved-model layout (``model``, ``model_args``, ``model_sd``).

    Example:
        >>> detect({"model": "meta-baseline", "model_args": {"encoder": "resnet12"},
        ...         "model_sd": {}})
        True
    """
    return is_saved_model(obj)


def convert(obj: Any, arch: str | None = None, **_: Any) -> Converted:
    """A Classifier-Baseline or Meta-Baseline file as metakd's encoder (and head).

    Args:
        obj: the loaded checkpoint.
        arch: the metakd model asked for; ``None``: the one ``model_args.encoder`` names.
        **_: other formats' options (ignored).

    Raises:
        InputError: the encoder is not one metakd builds, or ``arch`` differs from it (one
            line naming the right ``arch``).

    Example:
        >>> import metakd.nn as mnn
        >>> enc = mnn.create("resnet12", num_classes=0)
        >>> ckpt = {"model": "meta-baseline", "model_args": {"encoder": "resnet12"},
        ...         "model_sd": {**{"encoder." + k: v for k, v in enc.state_dict().items()},
        ...                      "temp": torch.tensor(12.5)}}
        >>> c = convert(ckpt)
        >>> c.arch, c.model_kwargs, c.extras["temperature"]
        ('resnet12', {'num_classes': 0}, 12.5)
    """
    from metakd.interop import gda

    name = encoder_name(obj)
    ours = ENCODERS.get(name) if name is not None else None
    theirs = gda.ENCODERS.get(name) if ours is not None and name is not None else None
    if theirs is not None and ours is not None and theirs.arch != ours.arch:
        if arch == theirs.arch:  # the file does not say which project wrote it; arch does
            return gda.convert_fewshot(obj, arch)
        hint = f" (or, for a GDA/W2S file of that name, arch={theirs.arch!r})"
    else:
        hint = ""
    return _convert(obj, arch, encoders=ENCODERS, unsupported=UNSUPPORTED, project=PROJECT,
                    fmt="meta_baseline", alternative=hint)


register_format(Format(
    "meta_baseline", "Meta-Baseline (yinboc/few-shot-meta-baseline) epoch-last.pth / max-va.pth",
    detect, convert, archs=("resnet12",), priority=5))
