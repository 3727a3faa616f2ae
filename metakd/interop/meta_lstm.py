"""The Meta-LSTM checkpoints of ``markdtw/meta-learning-lstm-pytorch`` (commit ``fcc68ba``).

Its ``save_ckpt`` writes ``meta-learner-<episode>.pth.tar``: ``{'episode': int, 'metalearner':
state_dict, 'optim': Adam's state}``. The meta-learner's state dict holds

- ``lstm.weight_ih`` ``[4H, 4]``, ``lstm.weight_hh`` ``[4H, H]``, ``lstm.bias_ih``,
  ``lstm.bias_hh`` ``[4H]``: the first layer, an ``nn.LSTMCell`` (gate rows in the order
  input, forget, cell, output; two biases);
- ``metalstm.WF``, ``metalstm.WI`` ``[H + 2, 1]``, ``metalstm.bF``, ``metalstm.bI`` ``[1, 1]``:
  the meta-learner cell's gates over ``[h, c_{t-1}, gate_{t-1}]``;
- ``metalstm.cI`` ``[P, 1]``: the learner's initial parameters, flattened in the order of the
  learner's ``parameters()`` (``conv1`` weight and bias, ``norm1`` weight and bias, ... ``cls``
  weight and bias of its Conv-4 with 32 filters).

:func:`convert` turns it into metakd's terms: the learner (``conv4``, 32 filters, ``head=
"flatten"``) with ``cI`` as its weights, and, in ``extras["rule"]``, the state of a
:class:`metakd.meta.MetaLSTMOptimizer`: ``lstm_weight = [W_ih | W_hh]^T`` with the gate columns
reordered to metakd's (input, forget, output, cell), ``lstm_bias = b_ih + b_hh`` (same order),
``forget_weight = WF[:, 0]``, ``forget_bias = bF``, ``input_weight = WI[:, 0]``,
``input_bias = bI``. The learner's classes and image size are not in the file: they are read
from ``learner_w_grad`` when the file has it, else solved from ``P`` (default 84 px; pass
``ways`` or ``image_size`` when the count is ambiguous). The Adam state is not used.

MLAL's files (``wflrz123/MLAL``, the same layout plus ``value``/``key``/``query`` attention
weights hard-coded for its 288,429-parameter learner with a cross-attention front end) are
refused: metakd's attention learner is sized differently and adapts without reading query
labels, so the original's weights would not compute the original's function.

Example:
    >>> import torch
    >>> from metakd import interop
    >>> lstm = torch.nn.LSTMCell(4, 20)
    >>> meta = {f"lstm.{k}": v for k, v in lstm.state_dict().items()}
    >>> meta.update({"metalstm.WF": torch.zeros(22, 1), "metalstm.WI": torch.zeros(22, 1),
    ...              "metalstm.bF": torch.ones(1, 1), "metalstm.bI": torch.ones(1, 1),
    ...              "metalstm.cI": torch.zeros(32_901, 1)})
    >>> got = interop.read({"episode": 42000, "metalearner": meta})
    >>> got.arch, got.model_kwargs["num_classes"], got.extras["episode"]
    ('conv4', 5, 42000)
    >>> got.extras["rule"]["lstm_weight"].shape
    torch.Size([24, 80])
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from metakd.engine.errors import InputError
from metakd.interop import Converted, Format, read, register_format, state_of

__all__ = ["convert", "learner_shapes", "load_meta_learner", "rule_state"]

HIDDEN = 32
_RULE_KEYS = ("lstm.weight_ih", "lstm.weight_hh", "lstm.bias_ih", "lstm.bias_hh", "metalstm.WF",
              "metalstm.WI", "metalstm.bF", "metalstm.bI", "metalstm.cI")


def _meta(obj: Any) -> Mapping[str, Tensor] | None:
    return state_of(obj.get("metalearner")) if isinstance(obj, Mapping) else None


def _detect(obj: Any) -> bool:
    meta = _meta(obj)
    return meta is not None and "metalstm.cI" in meta and "lstm.weight_ih" in meta


def learner_shapes(ways: int, image_size: int = 84, in_channels: int = 3, hidden: int = HIDDEN
                   ) -> dict[str, tuple[int, ...]]:
    """The markdtw learner's parameters in ``cI`` order, under metakd's ``conv4`` names.

    Example:
        >>> sum(math.prod(s) for s in learner_shapes(5).values())
        32901
    """
    out: dict[str, tuple[int, ...]] = {}
    c = in_channels
    for b in range(1, 5):
        out[f"encoder.block{b}.conv.weight"] = (hidden, c, 3, 3)
        out[f"encoder.block{b}.conv.bias"] = (hidden,)
        out[f"encoder.block{b}.bn.weight"] = (hidden,)
        out[f"encoder.block{b}.bn.bias"] = (hidden,)
        c = hidden
    side = image_size // 16
    out["head.weight"] = (ways, hidden * side * side)
    out["head.bias"] = (ways,)
    return out


def _solve(p: int, ways: int | None, image_size: int | None, in_channels: int, hidden: int,
           learner: Mapping[str, Tensor] | None) -> tuple[int, int]:
    """The learner's ``(ways, image_size)`` from ``P`` (and ``learner_w_grad`` if given)."""
    if learner is not None and "model.cls.weight" in learner:
        w = learner["model.cls.weight"]
        side = math.isqrt(int(w.shape[1]) // hidden)
        ways, image_size = ways or int(w.shape[0]), image_size or side * 16
    body = sum(math.prod(s) for k, s in learner_shapes(1, 16, in_channels, hidden).items()
               if not k.startswith("head."))
    rest = p - body
    sizes = [image_size] if image_size else [84] + [s for s in range(16, 257) if s != 84]
    for size in sizes:
        per_class = hidden * (size // 16) ** 2 + 1
        n = ways or (rest // per_class if rest > 0 and rest % per_class == 0 else 0)
        if n > 0 and n * per_class == rest:
            return n, size
        if ways is None and image_size is None:
            break
    raise InputError(
        f"cI has {p} values, which is not the markdtw learner (Conv-4, {hidden} filters, "
        f"{in_channels} channels: {body} + N * ({hidden} * (image_size // 16)^2 + 1)) at "
        f"ways={ways or '?'}, image_size={image_size or 84}: pass the run's ways and image_size")


def rule_state(meta: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The :class:`metakd.meta.MetaLSTMOptimizer` state of a markdtw ``metalearner`` dict.

    Example:
        >>> lstm = nn.LSTMCell(4, 3)
        >>> meta = {f"lstm.{k}": v for k, v in lstm.state_dict().items()}
        >>> meta.update({"metalstm.WF": torch.ones(5, 1), "metalstm.WI": torch.ones(5, 1),
        ...              "metalstm.bF": torch.ones(1, 1), "metalstm.bI": torch.ones(1, 1)})
        >>> {k: tuple(v.shape) for k, v in rule_state(meta).items()}["lstm_weight"]
        (7, 12)
    """
    missing = [k for k in _RULE_KEYS[:-1] if k not in meta]
    if missing:
        raise InputError(f"the meta-learner lacks {missing[:3]}")
    w_ih, w_hh = meta["lstm.weight_ih"], meta["lstm.weight_hh"]
    h = int(w_hh.shape[1])
    if w_ih.shape != (4 * h, 4) or w_hh.shape != (4 * h, h):
        raise InputError(f"lstm.weight_ih is {list(w_ih.shape)} and lstm.weight_hh "
                         f"{list(w_hh.shape)}: not an LSTMCell(4, {h})")
    order = torch.cat([torch.arange(0, 2 * h), torch.arange(3 * h, 4 * h),
                       torch.arange(2 * h, 3 * h)])  # (i, f, g, o) -> (i, f, o, g)
    weight = torch.cat([w_ih, w_hh], 1)[order].T.contiguous()
    bias = (meta["lstm.bias_ih"] + meta["lstm.bias_hh"])[order]
    out = {"lstm_weight": weight, "lstm_bias": bias}
    for ours, theirs in (("forget", "F"), ("input", "I")):
        w, b = meta[f"metalstm.W{theirs}"], meta[f"metalstm.b{theirs}"]
        if w.shape != (h + 2, 1) or b.numel() != 1:
            raise InputError(f"metalstm.W{theirs} is {list(w.shape)}, b{theirs} "
                             f"{list(b.shape)}: not the cell of a {h}-unit LSTM")
        out[f"{ours}_weight"], out[f"{ours}_bias"] = w[:, 0].clone(), b.reshape(()).clone()
    return out


def convert(obj: Any, arch: str | None = None, *, ways: int | None = None,
            image_size: int | None = None, in_channels: int = 3, hidden: int = HIDDEN,
            **options: Any) -> Converted:
    """A markdtw checkpoint in metakd's terms (see the module docstring).

    Args:
        obj: the loaded ``meta-learner-*.pth.tar``.
        arch: ``"conv4"`` or ``None``.
        ways: the learner's classes (default: from ``learner_w_grad`` or ``cI``).
        image_size: the learner's input side (default: likewise, 84 when ambiguous).
        in_channels: the learner's input channels.
        hidden: the learner's filters.
        **options: none other is accepted.

    Raises:
        InputError: not such a file, an MLAL file, or ``cI`` does not fit (one line).
    """
    if arch not in (None, "conv4"):
        raise InputError(f"a Meta-LSTM file's learner is markdtw's Conv-4, not a {arch!r}")
    if options:
        raise InputError(f"the meta_lstm_pytorch format takes ways, image_size, in_channels "
                         f"and hidden, not {sorted(options)}")
    meta = _meta(obj)
    if meta is None or "metalstm.cI" not in meta:
        raise InputError("not a Meta-LSTM checkpoint: no 'metalearner' with metalstm.cI")
    if any(k.startswith(("value.", "key.", "query.")) for k in meta):
        raise InputError("an MLAL meta-learner (attention weights hard-coded for its "
                         "288,429-parameter learner and label-reading front end) is not "
                         "supported; train MLAL in metakd with --attention")
    unknown = sorted(set(meta) - set(_RULE_KEYS))
    if unknown:
        raise InputError(f"unexpected meta-learner entries {unknown[:3]}")
    c_i = meta["metalstm.cI"].reshape(-1)
    learner = obj.get("learner_w_grad")
    learner = state_of(learner) if learner is not None else None
    n, size = _solve(c_i.numel(), ways, image_size, in_channels, hidden, learner)
    state: dict[str, Tensor] = {}
    start = 0
    for k, shape in learner_shapes(n, size, in_channels, hidden).items():
        end = start + math.prod(shape)
        state[k] = c_i[start:end].reshape(shape).clone()
        start = end
    if start != c_i.numel():
        raise InputError(f"cI has {c_i.numel()} values, the learner {start}")
    for b in range(1, 5):  # reset running statistics, as at the start of every episode
        state[f"encoder.block{b}.bn.running_mean"] = torch.zeros(hidden, dtype=c_i.dtype)
        state[f"encoder.block{b}.bn.running_var"] = torch.ones(hidden, dtype=c_i.dtype)
        state[f"encoder.block{b}.bn.num_batches_tracked"] = torch.tensor(0)
    rule = rule_state(meta)
    kwargs = {"num_classes": n, "in_channels": in_channels, "hidden": hidden, "head": "flatten",
              "image_size": size, "bn_mode": "running", "bn_eps": 1e-3}
    extras = {"rule": rule, "episode": obj.get("episode"), "hidden_size": int(
        rule["lstm_bias"].numel() // 4), "ways": n, "image_size": size}
    return Converted("conv4", state, kwargs, "meta_lstm_pytorch", extras)


def load_meta_learner(learner: nn.Module, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Put a markdtw ``meta-learner-*.pth.tar`` into a :class:`metakd.meta.MetaLSTM`.

    The learner's initial weights (``c_0``) and the rule's weights are replaced; the learner's
    batch-norm statistics are reset (as at every episode). The file is read with
    ``torch.load(weights_only=True)``.

    Args:
        learner: a ``MetaLSTM`` with a ``conv4`` learner and a ``MetaLSTMOptimizer`` rule.
        path: the file.

    Returns:
        ``Converted.extras`` (``episode``, ``hidden_size``, ``ways``, ``image_size``).

    Raises:
        InputError: the file cannot be read, or does not fit ``learner`` (one line).
    """
    from metakd.engine.checkpoint import load_checkpoint

    try:
        obj = load_checkpoint(path)  # weights only; one-line InputError otherwise
    except FileNotFoundError:
        raise InputError(f"meta-learner {path} does not exist") from None
    own = learner.state_dict()
    head = own.get("model.head.weight")
    kernel = own.get("model.encoder.block1.conv.weight")
    if head is None or kernel is None:
        raise InputError(f"{path}: markdtw's meta-learner fits a MetaLSTM of a conv4 learner "
                         "with a flatten head only")
    hidden, channels = int(kernel.shape[0]), int(kernel.shape[1])
    side = math.isqrt(int(head.shape[1]) // hidden)
    converted = read(obj, "conv4", format="meta_lstm_pytorch", source=str(path),
                     ways=int(head.shape[0]), image_size=16 * side, in_channels=channels,
                     hidden=hidden)
    assert converted is not None
    new = {f"model.{k}": v for k, v in converted.state.items()}
    new.update({f"rule.{k}": v for k, v in converted.extras["rule"].items()})
    for k, v in new.items():
        if k not in own or own[k].shape != v.shape:
            there = list(own[k].shape) if k in own else "absent"
            raise InputError(f"{path}: {k} is {list(v.shape)} in the file but {there} here "
                             "(hidden size, ways or image size differ)")
    missing = sorted(set(own) - set(new))
    if missing:
        raise InputError(f"{path}: the file has nothing for {missing[:3]}")
    learner.load_state_dict(new)
    return {k: v for k, v in converted.extras.items() if k != "rule"}


register_format(Format(
    "meta_lstm_pytorch", "Meta-LSTM, PyTorch port (markdtw/meta-learning-lstm-pytorch): "
    "meta-learner-*.pth.tar", _detect, convert, archs=("conv4",), priority=10))
