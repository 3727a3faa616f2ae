"""dragen1860/MAML-Pytorch checkpoints: the positional ``Meta.state_dict()``.

Facts read from ``dragen1860/MAML-Pytorch`` at commit
``98a00d41724c133bd29619a2fb2cc46dd128a368`` (``learner.py``, ``meta.py``,
``omniglot_train.py``, ``miniimagenet_train.py``).

The port's ``Learner`` is built from a config list and keeps its tensors in two
``nn.ParameterList``\\ s, so a checkpoint names them by position only:

- ``net.vars.i``: for every ``conv2d`` entry its weight ``[c_out, c_in, k, k]`` and bias
  ``[c_out]``; for every ``bn`` entry its γ and β ``[c]``; for the ``linear`` entry its weight
  ``[N, F]`` and bias ``[N]``; in the order of the config list (``relu``, ``max_pool2d`` and
  ``flatten`` hold nothing).
- ``net.vars_bn.j``: each ``bn`` entry's running mean and running variance (parameters with
  ``requires_grad=False``), updated by every forward with momentum 0.1 and used only by a
  forward with ``bn_training=False``, which the port never calls.

The two config lists of the training scripts give 18 ``vars`` and 8 ``vars_bn``: four blocks
``conv → ReLU → BN`` (Omniglot: 3×3 stride 2 three times, then 2×2 stride 1, no padding;
miniImageNet: 3×3 stride 1 and a max-pool, the last with stride 1) and a linear layer. They
are metakd's ``maml_pytorch_omniglot`` and ``maml_pytorch_miniimagenet``, told apart by the
kernel of the fourth convolution. ``Learner.state_dict()`` (no ``net.`` prefix) is read too.

Options of :func:`convert`: ``bn_mode="transductive"`` (default: batch statistics always, as
the port's ``Meta`` computes in training and fine-tuning; the running statistics are
dropped) or ``"running"`` (they are kept: ``eval()`` then computes the port's
``bn_training=False`` forward); ``image_size`` (default 28 / 84, the only sizes the port's
hard-coded linear layers take).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from metakd.engine.errors import InputError
from metakd.interop import Converted, Format, register_format, state_of
from metakd.interop._common import check_fits, numbered, strip_prefix

__all__ = ["COMMIT", "REPOSITORY", "convert", "detect"]

REPOSITORY = "dragen1860/MAML-Pytorch"
COMMIT = "98a00d41724c133bd29619a2fb2cc46dd128a368"

_BLOCKS = 4
_VARS = 4 * _BLOCKS + 2  # per block conv W, b and BN γ, β; then linear W, b
_VARS_BN = 2 * _BLOCKS  # per block running mean and variance

# What the port's training scripts do, as MAMLConfig fields: their argparse defaults, first
# order (autograd.grad without create_graph), mean support loss, no rotations.
_PORT_RUN: dict[str, Any] = dict(shots=1, queries=15, test_queries=15, meta_lr=1e-3,
                                 first_order=True, inner_loss_reduction="mean",
                                 rotations=False)


@dataclass(frozen=True)
class _Net:
    arch: str
    dataset: str
    kernels: tuple[int, ...]
    image_size: int
    hidden: int
    run: dict[str, Any] = field(default_factory=dict)


_NETS = (
    _Net("maml_pytorch_omniglot", "omniglot", (3, 3, 3, 2), 28, 64,
         dict(meta_batch_size=32, inner_lr=0.4, inner_steps=5, test_inner_steps=10,
              steps=40_000)),
    # --epoch 60000 counts episodes: 6 passes over 10,000 episodes in meta-batches of 4.
    _Net("maml_pytorch_miniimagenet", "miniimagenet", (3, 3, 3, 3), 84, 32,
         dict(meta_batch_size=4, inner_lr=0.01, inner_steps=5, test_inner_steps=10,
              steps=15_000)),
)
_ARCHS = tuple(n.arch for n in _NETS)


def _positional(obj: Any) -> tuple[list[Tensor], list[Tensor]] | None:
    """``(vars, vars_bn)`` in order, or ``None`` if ``obj`` is not a positional state dict."""
    state = state_of(obj)
    if state is None:
        return None
    state = strip_prefix(state, "net.")
    vars_ = numbered(state, r"vars\.(\d+)")
    vars_bn = numbered(state, r"vars_bn\.(\d+)")
    if not vars_ or len(vars_) + len(vars_bn) != len(state):
        return None
    if vars_ != list(range(len(vars_))) or vars_bn != list(range(len(vars_bn))):
        return None
    return ([state[f"vars.{i}"] for i in vars_], [state[f"vars_bn.{j}"] for j in vars_bn])


def detect(obj: Any) -> bool:
    """Whether ``obj`` is a ``Meta``/``Learner`` state dict (``net.vars.i``, ``net.vars_bn.j``).

    Example:
        >>> detect({"net.vars.0": torch.zeros(64, 1, 3, 3), "net.vars_bn.0": torch.zeros(64)})
        True
        >>> detect({"encoder.block1.conv.weight": torch.zeros(1)})
        False
    """
    return _positional(obj) is not None


def _which(vars_: list[Tensor], vars_bn: list[Tensor]) -> _Net:
    if len(vars_) != _VARS or len(vars_bn) != _VARS_BN:
        raise InputError(
            f"holds a MAML-Pytorch Learner of {len(vars_)} tensors and {len(vars_bn)} batch-norm "
            f"statistics; the Omniglot and miniImageNet config lists of its training scripts "
            f"have {_VARS} and {_VARS_BN} (4 conv/bn blocks and a linear layer), and another "
            "config list has no metakd model")
    dims = [vars_[4 * i].dim() for i in range(_BLOCKS)] + [vars_[-2].dim()]
    if dims != [4] * _BLOCKS + [2]:
        raise InputError(f"MAML-Pytorch tensors of {dims} dimensions where the config lists "
                         "have 4 conv weights (4-d) and a linear weight (2-d)")
    kernels = tuple(int(vars_[4 * i].shape[-1]) for i in range(_BLOCKS))
    for net in _NETS:
        if kernels == net.kernels:
            return net
    raise InputError(f"MAML-Pytorch conv kernels {kernels}: the Omniglot net has "
                     f"{_NETS[0].kernels}, the miniImageNet net {_NETS[1].kernels}")


def convert(obj: Any, arch: str | None = None, *, bn_mode: str = "transductive",
            image_size: int | None = None, part: str | None = None) -> Converted:
    """A MAML-Pytorch ``Meta.state_dict()`` in the names of ``maml_pytorch_*``.

    Args:
        obj: the loaded state dict (``net.vars.i`` / ``net.vars_bn.j``, or without ``net.``).
        arch: ``"maml_pytorch_omniglot"``, ``"maml_pytorch_miniimagenet"`` or ``None`` (the
            one the conv kernels say).
        bn_mode: ``"transductive"`` (the port's ``Meta``: batch statistics in train and
            test; running statistics dropped) or ``"running"`` (kept, used in ``eval()``).
        image_size: input side the linear layer was sized for (default 28 / 84).
        part: ignored (a MAML-Pytorch file holds one network).

    Returns:
        The :class:`~metakd.interop.Converted`; ``extras["run"]`` holds the ``maml`` run
        config of the port's training script (``metakd convert`` writes it).

    Raises:
        InputError: the file is not one of the two nets, or not ``arch`` (one line).

    Example:
        >>> convs = [(64, 1, 3, 3), (64, 64, 3, 3), (64, 64, 3, 3), (64, 64, 2, 2)]
        >>> shapes = [s for w in convs for s in (w, (64,), (64,), (64,))] + [(5, 64), (5,)]
        >>> sd = {f"net.vars.{i}": torch.zeros(s) for i, s in enumerate(shapes)}
        >>> sd.update({f"net.vars_bn.{j}": torch.ones(64) for j in range(8)})
        >>> c = convert(sd)
        >>> c.arch, c.model_kwargs["num_classes"], "encoder.block4.bn.weight" in c.state
        ('maml_pytorch_omniglot', 5, True)
    """
    del part
    found = _positional(obj)
    if found is None:
        raise InputError("is not a MAML-Pytorch state dict (keys net.vars.0, net.vars.1, ..., "
                         "net.vars_bn.0, ...)")
    vars_, vars_bn = found
    net = _which(vars_, vars_bn)
    if arch is not None and arch != net.arch:
        if arch in _ARCHS:
            raise InputError(f"holds MAML-Pytorch's {net.dataset} net (conv kernels "
                             f"{net.kernels}), which is {net.arch!r}, not {arch!r}")
        raise InputError(f"MAML-Pytorch checkpoints convert to {' or '.join(_ARCHS)}, "
                         f"not {arch!r}")
    if bn_mode not in ("transductive", "running"):
        raise InputError(f"bn_mode={bn_mode!r}: use 'transductive' or 'running'")
    state: dict[str, Tensor] = {}
    for i in range(_BLOCKS):
        block = f"encoder.block{i + 1}."
        w, b, gamma, beta = vars_[4 * i: 4 * i + 4]
        state.update({block + "conv.weight": w, block + "conv.bias": b,
                      block + "bn.weight": gamma, block + "bn.bias": beta})
        if bn_mode == "running":
            state[block + "bn.running_mean"] = vars_bn[2 * i]
            state[block + "bn.running_var"] = vars_bn[2 * i + 1]
            state[block + "bn.num_batches_tracked"] = torch.tensor(0)  # not recorded
    state["head.weight"], state["head.bias"] = vars_[-2], vars_[-1]
    hidden, in_channels = int(vars_[0].shape[0]), int(vars_[0].shape[1])
    size = net.image_size if image_size is None else int(image_size)
    kwargs: dict[str, Any] = {"num_classes": int(vars_[-2].shape[0]),
                              "in_channels": in_channels, "hidden": hidden, "image_size": size}
    if bn_mode == "running":
        kwargs["bn_mode"] = "running"
    check_fits(net.arch, kwargs, state,
               f"the MAML-Pytorch {net.dataset} net at image_size={size}")
    return Converted(net.arch, state, kwargs, "maml_pytorch",
                     {"source": f"{REPOSITORY}@{COMMIT[:7]}", "dataset": net.dataset,
                      "bn_running_stats": "kept" if bn_mode == "running" else "dropped",
                      "run": {"method": "maml", "config": _run_config(net, kwargs)}})


def _run_config(net: _Net, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The port's training settings for this net as ``MAMLConfig`` fields."""
    model_kwargs = {k: kwargs[k] for k in ("bn_mode",) if k in kwargs}
    if kwargs["hidden"] != net.hidden:
        model_kwargs["hidden"] = kwargs["hidden"]
    if kwargs["image_size"] != net.image_size:
        model_kwargs["image_size"] = kwargs["image_size"]
    return {"dataset": net.dataset, "ways": kwargs["num_classes"],
            "image_size": kwargs["image_size"], "model": net.arch, "model_kwargs": model_kwargs,
            **_PORT_RUN, **net.run}


register_format(Format(
    name="maml_pytorch",
    project=f"{REPOSITORY} (commit {COMMIT[:7]})",
    detect=detect,
    convert=convert,
    archs=_ARCHS,
))
