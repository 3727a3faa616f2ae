"""Meta-Transfer Learning's checkpoints (Sun, Liu, Chua, Schiele, CVPR 2019).

Two formats of ``yaoyao-liu/meta-transfer-learning`` (read at commit ``7f71fdd``):

``"mtl_pytorch"``: the PyTorch code's ``max_acc.pth`` (and ``epochN.pth``),
    ``{'params': state_dict}``. The pre-training phase saves its encoder's state dict
    (``conv1.*``, ``bn1.*``, ``layer1.0.conv1.weight`` ..., ``ResNetMtl(mtl=False)``; the
    pre-training classifier ``pre_fc`` is not saved, and is dropped if a file has it); the
    meta phase saves the whole learner: ``encoder.*`` with ``Conv2dMtl``'s ``mtl_weight``
    (→ ``scale``) and ``mtl_bias`` (→ ``shift``), and the base learner's ``fc1_w``/``fc1_b``
    (→ ``head``; the ``vars.0``/``vars.1`` copies are dropped). Read into ``mtl_resnet25``
    (:class:`metakd.nn.MTLResNet25`; a meta file with ``preset="mtl_pytorch"``); the number
    of blocks per stage is read from the file (3 before March 2020, 4 since).
``"mtl_tf"``: the TF code's NumPy files, ``np.save`` of a dict of arrays by variable name:
    ``weights.npy`` (``block{1-4}_conv{1-3}`` ``[3, 3, in, out]``, ``block*_bias*``,
    ``block*_conv_res`` ``[1, 1, in, out]``, and ``w5``/``b5``, a placeholder the code never
    trains), ``ss_weights.npy`` (``block*_conv*`` ``[1, 1, in, out]``: Φ_S1; ``block*_bias*``:
    the trained biases, which replace the pre-trained ones) and ``fc_weights.npy`` (``w5``
    ``[512, N]``, ``b5``). Read into ``mtl_resnet12`` (with ``preset="mtl_tf"`` when
    ``ss_weights`` are there): kernels HWIO → OIHW, ``w5`` transposed, the trained bias as the
    frozen ``bias`` with ``shift = 0`` (the same function and gradient). The files hold no
    batch-norm variables (the TF code never saves or trains β): β is 0.

A PyTorch file does not fit ``mtl_resnet12`` and a TF file does not fit ``mtl_resnet25`` (other
widths, depths, biases and batch norms): asking for it is refused in one line.

Example:
    >>> import metakd.nn as mnn
    >>> net = mnn.create("mtl_resnet25", layers=(1, 1, 1), channels=(8, 16, 32), num_classes=0)
    >>> got = read({"params": net.state_dict()})
    >>> got.format, got.arch, got.model_kwargs["layers"], got.extras["phase"]
    ('mtl_pytorch', 'mtl_resnet25', (1, 1, 1), 'pre')
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metakd.engine.errors import InputError
from metakd.interop import Converted, Format, read, register_format, state_of

__all__ = ["is_original", "load_npy_dict", "load_pretrained", "original_fields",
           "read_checkpoint", "read_tf_weights", "tf_weights_file"]

TF_FILES = ("weights", "ss_weights", "fc_weights")
_RESNET25_CHANNELS, _RESNET12_CHANNELS = (160, 320, 640), (64, 128, 256, 512)


# --- the PyTorch code ------------------------------------------------------------------------

def _params(obj: Any) -> Mapping[str, Tensor] | None:
    return state_of(obj.get("params")) if isinstance(obj, Mapping) else None


def _encoder(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The encoder's entries of a pre or meta file, without the ``encoder.`` prefix."""
    if any(k.startswith("encoder.") for k in state):
        return {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    return {k: v for k, v in state.items() if not k.startswith(("pre_fc.", "base_learner."))}


def _detect_pytorch(obj: Any) -> bool:
    state = _params(obj)
    if state is None:
        return False
    enc = _encoder(state)
    return {"conv1.weight", "conv1.bias", "layer1.0.conv1.weight"} <= set(enc) and \
        "layer4.0.conv1.weight" not in enc


def _convert_pytorch(obj: Any, arch: str | None = None, **options: Any) -> Converted:
    if arch not in (None, "mtl_resnet25"):
        raise InputError(f"a PyTorch MTL file holds the project's ResNet-25 (stem 3→80 with a "
                         f"bias, stages 160/320/640), not a {arch!r}: use arch='mtl_resnet25'")
    if options:
        raise InputError(f"the mtl_pytorch format takes no options, got {sorted(options)}")
    state = _params(obj)
    if state is None:
        raise InputError("not an MTL PyTorch file: no 'params' state dict")
    enc = _encoder(state)
    layers = []
    for s in (1, 2, 3):
        n = 0
        while f"layer{s}.{n}.conv1.weight" in enc:
            n += 1
        if n == 0:
            raise InputError(f"not the MTL ResNet: no layer{s}.0.conv1.weight")
        layers.append(n)
    channels = tuple(int(enc[f"layer{s}.0.conv1.weight"].shape[0]) for s in (1, 2, 3))
    meta = any(k.endswith(".mtl_weight") for k in enc)
    out: dict[str, Tensor] = {}
    for k, v in enc.items():
        k = re.sub(r"\.mtl_weight$", ".scale", re.sub(r"\.mtl_bias$", ".shift", k))
        out[k] = v
    kwargs: dict[str, Any] = {"in_channels": int(enc["conv1.weight"].shape[1]),
                              "num_classes": 0, "layers": tuple(layers)}
    if channels != _RESNET25_CHANNELS:
        kwargs["channels"] = channels
    dropped = sorted({k.split(".")[0] for k in state if k.startswith("pre_fc.")})
    w, b = state.get("base_learner.fc1_w"), state.get("base_learner.fc1_b")
    if w is not None and b is not None:
        for copy, orig in (("base_learner.vars.0", w), ("base_learner.vars.1", b)):
            if copy in state and not torch.equal(state[copy], orig):
                raise InputError(f"{copy} differs from the base learner's own weight")
        out["head.weight"], out["head.bias"] = w, b
        kwargs["num_classes"] = int(w.shape[0])
    if meta:
        kwargs["preset"] = "mtl_pytorch"
    extras = {"phase": "meta" if meta else "pre", "dropped": dropped}
    return Converted("mtl_resnet25", out, kwargs, "mtl_pytorch", extras)


# --- the TF code -----------------------------------------------------------------------------

def load_npy_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The dict of arrays that ``np.save(path, {name: array})`` wrote (the TF MTL weights).

    The pickle inside the ``.npy`` is read with a restricted unpickler: only numpy arrays,
    dicts, lists, numbers and strings; anything else is refused.

    Raises:
        InputError: not an ``.npy`` of a dict of arrays (one line, naming ``path``).

    Example:
        >>> np.save("w.npy", {"block1_bias1": np.zeros(4, np.float32)})
        >>> load_npy_dict("w.npy")["block1_bias1"].shape
        (4,)
    """
    import pickle

    from numpy.lib import format as npy

    from metakd.data._io import _RestrictedUnpickler

    try:
        with open(path, "rb") as f:
            version = npy.read_magic(f)
            header = npy.read_array_header_1_0(f) if version == (1, 0) \
                else npy.read_array_header_2_0(f)
            if not header[2].hasobject:
                raise InputError(f"{path} holds a plain {header[2]} array, not a dict of arrays")
            obj = _RestrictedUnpickler(f, encoding="latin1").load()
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{path}: not a NumPy file of weights ({e})") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.size == 1:
        obj = obj.reshape(()).item()
    if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()):
        raise InputError(f"{path} does not hold a dict of named arrays")
    return obj


def tf_weights_file(path: str | os.PathLike[str], pre_iter: int | None = None) -> Path:
    """The ``weights[_N].npy`` that ``path`` (a file or a folder, see :func:`read_tf_weights`)
    and ``pre_iter`` name.

    Raises:
        InputError: a folder without it, or with several snapshots and no ``pre_iter``.
    """
    p = Path(path)
    if not p.is_dir():
        return p
    suffix = "" if pre_iter is None else f"_{pre_iter}"
    if (p / f"weights{suffix}.npy").is_file():
        return p / f"weights{suffix}.npy"
    found = sorted(int(m.group(1)) for f in p.glob("weights_*.npy")
                   if (m := re.fullmatch(r"weights_(\d+)\.npy", f.name)))
    if pre_iter is not None or len(found) != 1:
        what = f"weights_{pre_iter}.npy" if pre_iter is not None else "weights.npy"
        raise InputError(f"{p} has no {what}" + (
            f"; its snapshots: {found[:8]} (pick one with PRE_ITER)" if found else ""))
    return p / f"weights_{found[0]}.npy"


def read_tf_weights(path: str | os.PathLike[str], pre_iter: int | None = None
                    ) -> dict[str, dict[str, np.ndarray]]:
    """The TF project's weights: ``{"weights": ..., "ss_weights": ..., "fc_weights": ...}``.

    Args:
        path: ``weights.npy`` / ``weights_N.npy`` (its ``ss_weights``/``fc_weights`` siblings
            of the same suffix are read too when present), or a folder holding them: the
            downloaded ``logs/download_weights`` (``weights.npy`` ...), a meta-training log
            folder or a pre-training folder (``weights_N.npy``).
        pre_iter: in a folder of ``weights_N.npy`` snapshots, ``N`` (the TF project's
            ``PRE_ITER`` / ``--test_iter``); needed when there are several.

    Raises:
        InputError: nothing to read, or several snapshots and no ``pre_iter`` (one line).
    """
    p = tf_weights_file(path, pre_iter)
    m = re.fullmatch(r"(ss_|fc_)?weights(_\d+)?\.npy", p.name)
    if not p.is_file() or m is None:
        raise InputError(f"{p} is not a TF MTL weights file (weights[_N].npy)")
    out = {}
    for name in TF_FILES:
        f = p.with_name(f"{name}{m.group(2) or ''}.npy")
        if f.is_file():
            out[name] = load_npy_dict(f)
    if "weights" not in out:
        raise InputError(f"{p.parent} has no weights{m.group(2) or ''}.npy")
    return out


def _detect_tf(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "block1_conv1" in (obj.get("weights") or {})


def _t(a: Any) -> Tensor:
    return torch.as_tensor(np.asarray(a)).clone()


def _convert_tf(obj: Any, arch: str | None = None, **options: Any) -> Converted:
    if arch not in (None, "mtl_resnet12"):
        raise InputError(f"TF MTL weights are the paper's ResNet-12, not a {arch!r}: use "
                         "arch='mtl_resnet12'")
    if options:
        raise InputError(f"the mtl_tf format takes no options, got {sorted(options)}")
    weights = obj["weights"]
    ss = obj.get("ss_weights") or {}
    fc = obj.get("fc_weights") or {}
    state: dict[str, Tensor] = {}
    channels = []
    try:
        for blk in range(1, 5):
            pre = f"layer{blk}"
            for k in (1, 2, 3):
                kernel = _t(weights[f"block{blk}_conv{k}"])
                if kernel.dim() != 4:
                    raise InputError(f"block{blk}_conv{k} is {list(kernel.shape)}, not HWIO")
                state[f"{pre}.conv{k}.weight"] = kernel.permute(3, 2, 0, 1).contiguous()
                bias = ss.get(f"block{blk}_bias{k}", weights[f"block{blk}_bias{k}"])
                state[f"{pre}.conv{k}.bias"] = _t(bias)
                state[f"{pre}.bn{k}.bias"] = torch.zeros(kernel.shape[3], dtype=kernel.dtype)
                if ss:
                    scale = _t(ss[f"block{blk}_conv{k}"])
                    state[f"{pre}.conv{k}.scale"] = scale.permute(3, 2, 0, 1).contiguous()
                    state[f"{pre}.conv{k}.shift"] = torch.zeros_like(state[f"{pre}.conv{k}.bias"])
            res = _t(weights[f"block{blk}_conv_res"])
            state[f"{pre}.shortcut.weight"] = res.permute(3, 2, 0, 1).contiguous()
            channels.append(int(res.shape[3]))
    except KeyError as e:
        raise InputError(f"the TF MTL weights lack {e.args[0]!r} (a ResNet-12 has block1..4 "
                         "conv1..3, bias1..3 and conv_res)") from None
    kwargs: dict[str, Any] = {"in_channels": int(state["layer1.shortcut.weight"].shape[1]),
                              "num_classes": 0}
    if tuple(channels) != _RESNET12_CHANNELS:
        kwargs["channels"] = tuple(channels)
    if fc:
        w5 = _t(fc["w5"])
        state["head.weight"], state["head.bias"] = w5.T.contiguous(), _t(fc["b5"])
        kwargs["num_classes"] = int(w5.shape[1])
    if ss:
        kwargs["preset"] = "mtl_tf"
    extras = {"phase": "meta" if ss else "pre", "files": sorted(obj),
              "dropped": ["weights: w5, b5 (never trained by the TF code)"]
              if "w5" in weights else []}
    return Converted("mtl_resnet12", state, kwargs, "mtl_tf", extras)


# --- reading a file of either project ---------------------------------------------------------

def is_original(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an MTL project's own checkpoint rather than a metakd run folder.

    Example:
        >>> is_original("runs/mtl-pre"), is_original("logs/download_weights/weights.npy")
        (False, True)
    """
    p = Path(path)
    if p.is_dir():
        return not (p / "config.json").is_file() and any(p.glob("weights*.npy"))
    return p.suffix in (".npy", ".pth", ".pt", ".tar")


def read_checkpoint(path: str | os.PathLike[str], arch: str | None = None,
                    pre_iter: int | None = None, body_only: bool = False) -> Converted:
    """An MTL checkpoint of either project, converted (see the module docstring).

    Args:
        path: a PyTorch ``.pth`` file, or TF weights (see :func:`read_tf_weights`).
        arch: the metakd architecture wanted (``None``: the file's).
        pre_iter: which TF snapshot of a folder (:func:`read_tf_weights`).
        body_only: the pre-trained network alone: a meta-phase file's scale, shift and
            classifier left out, and the TF pre-trained biases instead of the trained ones
            (what the TF code's ``META_LOAD`` starts from).

    Raises:
        InputError: unreadable, or not an MTL checkpoint of ``arch`` (one line).
    """
    p = Path(path)
    if p.is_dir() or p.suffix == ".npy":
        obj: Any = read_tf_weights(p, pre_iter)
        if body_only:
            obj = {"weights": obj["weights"]}
        fmt = "mtl_tf"
    else:
        from metakd.engine.checkpoint import load_checkpoint

        if not p.is_file():
            raise InputError(f"{p} does not exist")
        obj = load_checkpoint(p)  # weights only; one-line InputError otherwise
        fmt = "mtl_pytorch"
    if fmt == "mtl_pytorch" and not _detect_pytorch(obj):
        raise InputError(f"{p} is not an MTL PyTorch file ({{'params': state_dict}} of "
                         "ResNetMtl or MtlLearner)")
    converted = read(obj, arch, format=fmt, source=str(p))
    assert converted is not None
    if body_only and fmt == "mtl_pytorch":
        converted.state = {k: v for k, v in converted.state.items()
                           if not k.endswith((".scale", ".shift")) and not k.startswith("head.")}
        converted.model_kwargs = {k: v for k, v in converted.model_kwargs.items()
                                  if k != "preset"} | {"num_classes": 0}
    return converted


def original_fields(path: str | os.PathLike[str], pre_iter: int | None = None
                    ) -> dict[str, Any]:
    """The :class:`~metakd.recipes.MTLConfig` fields a checkpoint of either project needs.

    ``model`` and ``model_kwargs`` (the depth and widths the file has), ``variant`` (the
    project's), ``pretrained`` (the file itself, a TF snapshot of a folder resolved with
    ``pre_iter``) and, for the PyTorch project, ``image_size=80`` and ``backend="func"`` (its
    batch norm updates running statistics, which a vmap over tasks cannot).

    Raises:
        InputError: not an MTL checkpoint (one line).
    """
    got = read_checkpoint(path, None, pre_iter)
    p = tf_weights_file(path, pre_iter) if got.format == "mtl_tf" else Path(path)
    kwargs = {k: v for k, v in got.model_kwargs.items() if k in ("layers", "channels")}
    out: dict[str, Any] = {"model": got.arch, "model_kwargs": kwargs, "pretrained": str(p),
                           "variant": got.format}
    if got.format == "mtl_pytorch":  # 80-px input; running batch norm: tasks one by one
        out.update(image_size=80, backend="func")
    return out


def load_pretrained(model: torch.nn.Module, path: str | os.PathLike[str], arch: str,
                    body_only: bool = False) -> None:
    """Load an MTL checkpoint into ``model`` (already converted by ``mtl_preset``).

    The body always; the scale and shift parameters and the classifier when the file has them
    (a meta-phase file) and ``body_only`` is false, else they keep their initial values; a
    classifier of another number of classes is left out (the model's fresh one is kept, with a
    warning). A file no longer there is skipped with a warning (a run read back takes its
    weights from its checkpoint).

    Raises:
        InputError: the file's body does not fit ``model`` (one line naming the keys).
    """
    import logging

    from metakd.interop._common import few

    if not Path(path).exists():
        logging.getLogger(__name__).warning(
            "pretrained %s is not there any more: the weights come from a checkpoint", path)
        return
    got = read_checkpoint(path, arch, body_only=body_only)
    own = model.state_dict()
    state = dict(got.state)
    head = [k for k in state if k.startswith("head.")]
    if any(k not in own or own[k].shape != state[k].shape for k in head):
        logging.getLogger(__name__).warning(
            "%s: its classifier (%s) does not fit this run's; a fresh one is used", path,
            tuple(state["head.weight"].shape))
        state = {k: v for k, v in state.items() if k not in head}
    optional = (".scale", ".shift")
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    missing = sorted(k for k in set(own) - set(state)
                     if not k.endswith(optional) and not k.startswith("head."))
    if unexpected or shapes or missing:
        parts = [f"unexpected {few(unexpected)}" if unexpected else "",
                 f"shape mismatch {few(shapes)}" if shapes else "",
                 f"missing {few(missing)}" if missing else ""]
        raise InputError(f"{path} does not fit {arch} {dict(got.model_kwargs)}: "
                         + "; ".join(x for x in parts if x))
    model.load_state_dict(state, strict=False)


register_format(Format(
    "mtl_pytorch", "Meta-Transfer Learning, PyTorch code (yaoyao-liu/meta-transfer-learning, "
    "pytorch/): max_acc.pth", _detect_pytorch, _convert_pytorch, archs=("mtl_resnet25",),
    priority=10))
register_format(Format(
    "mtl_tf", "Meta-Transfer Learning, TF code (yaoyao-liu/meta-transfer-learning, "
    "tensorflow/): weights.npy, ss_weights.npy, fc_weights.npy", _detect_tf, _convert_tf,
    archs=("mtl_resnet12",), priority=10))
