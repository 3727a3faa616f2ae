"""Scaling-and-shifting convolutions of Meta-Transfer Learning.

Sun, Liu, Chua, Schiele, "Meta-Transfer Learning for Few-Shot Learning", CVPR 2019:

    SS(X; W, b; Φ_S1, Φ_S2) = (W ⊙ Φ_S1) * X + (b + Φ_S2),   Φ_S1 init 1, Φ_S2 init 0

W and b are the frozen pre-trained conv weights; Φ_S1 has one scalar per (out, in) kernel
slice, broadcast over k×k; Φ_S2 one per output channel (only when the conv has a bias), as in
``yaoyao-liu/meta-transfer-learning : pytorch/models/conv2d_mtl.py``.

The frozen ``weight``/``bias`` are registered as *buffers*, not parameters: they are in the
``state_dict`` under the names ``nn.Conv2d`` uses, but ``parameters()`` yields only ``scale``
and ``shift``, so optimizers, inner loops and ``torch.func`` transforms cannot touch them by
accident.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.common_types import _size_2_t
from torch.nn.modules.batchnorm import _BatchNorm as _TorchBatchNorm

from metakd.nn.norm import _BatchNorm

__all__ = ["ScaleShiftConv2d", "convert_to_scale_shift", "mtl_preset"]

#: The names :func:`mtl_preset` accepts.
MTL_PRESETS = ("mtl_tf", "mtl_pytorch")


class ScaleShiftConv2d(nn.Module):
    """A conv2d with a frozen kernel and learnable scale Φ_S1 and shift Φ_S2.

    ``forward(x) = conv2d(x, weight * scale, bias + shift)``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: kernel size.
        stride: as ``nn.Conv2d``.
        padding: as ``nn.Conv2d`` (an int, a pair, ``"same"`` or ``"valid"``; zero padding).
        dilation: as ``nn.Conv2d``.
        groups: as ``nn.Conv2d``.
        bias: whether the conv has a (frozen) bias, and hence a shift.

    Attributes:
        weight: frozen buffer ``[C_out, C_in/groups, k, k]``.
        bias: frozen buffer ``[C_out]`` or ``None``.
        scale: parameter Φ_S1 ``[C_out, C_in/groups, 1, 1]``, init 1.
        shift: parameter Φ_S2 ``[C_out]``, init 0, or ``None`` without bias.

    Shapes:
        ``[B, C_in, H, W]`` → ``[B, C_out, H', W']`` as ``nn.Conv2d``.

    Example:
        >>> conv = nn.Conv2d(3, 8, 3, padding=1)
        >>> ss = ScaleShiftConv2d.from_conv(conv)
        >>> x = torch.randn(2, 3, 5, 5)
        >>> torch.allclose(ss(x), conv(x))
        True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _size_2_t,
        stride: _size_2_t = 1,
        padding: _size_2_t | str = 0,
        dilation: _size_2_t = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        # Let nn.Conv2d validate the arguments and initialize the (to-be-frozen) kernel.
        template = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = template.kernel_size
        self.stride = template.stride
        self.padding = template.padding
        self.dilation = template.dilation
        self.groups = groups
        self.weight: Tensor
        self.bias: Tensor | None
        self.register_buffer("weight", template.weight.detach().clone())
        if template.bias is not None:
            self.register_buffer("bias", template.bias.detach().clone())
        else:
            self.register_buffer("bias", None)
        c_out, c_in_g = self.weight.shape[:2]
        self.scale = nn.Parameter(torch.ones(c_out, c_in_g, 1, 1))
        self.shift: nn.Parameter | None
        if bias:
            self.shift = nn.Parameter(torch.zeros(c_out))
        else:
            self.register_parameter("shift", None)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> ScaleShiftConv2d:
        """Wrap a (pre-trained) ``nn.Conv2d``: copy its weight and bias, scale 1, shift 0.

        The result has the dtype and device of ``conv`` and computes the same function.

        Raises:
            ValueError: ``conv`` uses a padding mode other than ``"zeros"``.
        """
        if conv.padding_mode != "zeros":
            raise ValueError(f"only zero padding is supported, got {conv.padding_mode!r}")
        pad = conv.padding
        padding: _size_2_t | str = pad if isinstance(pad, str) else (pad[0], pad[1])
        new = cls(
            conv.in_channels,
            conv.out_channels,
            (conv.kernel_size[0], conv.kernel_size[1]),
            (conv.stride[0], conv.stride[1]),
            padding,
            (conv.dilation[0], conv.dilation[1]),
            conv.groups,
            conv.bias is not None,
        )
        new.to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            if conv.bias is not None and new.bias is not None:
                new.bias.copy_(conv.bias)
        return new

    def effective_weight(self) -> Tensor:
        """``weight * scale`` ``[C_out, C_in/groups, k, k]``."""
        return self.weight * self.scale

    def forward(self, x: Tensor) -> Tensor:
        """Scaled-and-shifted convolution of ``x`` ``[B, C_in, H, W]``."""
        bias = self.bias
        if bias is not None and self.shift is not None:
            bias = bias + self.shift
        return F.conv2d(
            x, self.effective_weight(), bias, self.stride, self.padding, self.dilation, self.groups
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
            f"bias={self.bias is not None}"
        )


def convert_to_scale_shift(
    model: nn.Module, exclude: Callable[[str, nn.Conv2d], bool] | None = None
) -> nn.Module:
    """Replace every ``nn.Conv2d`` of ``model`` (in place) by a :class:`ScaleShiftConv2d`.

    The converted model computes the same function until ``scale``/``shift`` are trained.
    Other parameters (BN, the head) are left as they are; freeze them yourself if the
    recipe wants it (TF MTL trains only SS and the head; PyTorch MTL also trains BN).

    Args:
        model: the network; modified in place.
        exclude: ``exclude(qualified_name, conv) -> True`` keeps that conv as it is, e.g.
            ``lambda name, conv: conv.kernel_size == (1, 1)`` for TF MTL, whose 1×1
            shortcuts have no SS parameters.

    Returns:
        ``model``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1))
        >>> _ = convert_to_scale_shift(net, exclude=lambda n, c: c.kernel_size == (1, 1))
        >>> [type(m).__name__ for m in net]
        ['ScaleShiftConv2d', 'ReLU', 'Conv2d']
    """
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and not (exclude is not None and exclude(name, m))
    ]
    if isinstance(model, nn.Conv2d) and targets and targets[0][0] == "":
        raise ValueError("model is itself a Conv2d; use ScaleShiftConv2d.from_conv(model)")
    for name, conv in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, ScaleShiftConv2d.from_conv(conv))
    return model


def mtl_preset(model: nn.Module, preset: str) -> list[str]:
    """Convert a pre-trained ``model`` for Meta-Transfer Learning and freeze all but one preset.

    In place, following the two official implementations (``yaoyao-liu/meta-transfer-learning``;
    spec ``meta-learning-spec.md`` §2.2-2.3):

    | parameter | ``"mtl_tf"`` (paper, TF code) | ``"mtl_pytorch"`` (FEAT-style) |
    | --- | --- | --- |
    | k×k convs (k > 1) | scale-shift; ``scale`` trained | scale-shift; ``scale`` trained |
    | 1×1 convs (shortcuts) | plain ``nn.Conv2d``, frozen | scale-shift (scale per weight) |
    | conv weight / bias | frozen (buffers) | frozen (buffers) |
    | shift Φ_S2 | trained where the conv has a bias | trained where the conv has a bias |
    | batch-norm affine (γ, β) | frozen | trained |
    | ``model.head`` | trained | trained |
    | anything else | frozen | frozen |

    TF replaces each conv bias by a trainable tensor initialised from the pre-trained bias;
    here the pre-trained bias stays as a frozen buffer and the trainable ``shift`` starts at 0,
    which is the same function and the same gradient (``b + Φ_S2`` with ``Φ_S2 = 0``). A conv
    without a bias gets no shift in either preset (the TF ResNet-12 has a bias on every 3×3
    conv; :class:`metakd.nn.MTLResNet12` too). Scale-shift convolutions already in ``model``
    are kept and trained. "The head" is ``model.head`` (every :mod:`metakd.nn` model has
    one); a model without it trains only its scale-shift (and, for PyTorch, batch-norm)
    parameters. The converted model computes the same function as before.

    Args:
        model: a pre-trained network; modified in place (convs replaced, ``requires_grad``
            set on every parameter).
        preset: ``"mtl_tf"`` or ``"mtl_pytorch"``.

    Returns:
        The sorted names (as in ``model.named_parameters()``) of the trainable parameters;
        every other parameter has ``requires_grad=False``.

    Raises:
        ValueError: an unknown ``preset``.

    Example:
        >>> from metakd.nn import MTLResNet12
        >>> net = MTLResNet12((2, 2, 2, 2), in_channels=1, num_classes=5)
        >>> names = mtl_preset(net, "mtl_tf")
        >>> names[:3]
        ['head.bias', 'head.weight', 'layer1.conv1.scale']
        >>> net.layer1.shortcut.weight.requires_grad, net.layer1.bn1.bias.requires_grad
        (False, False)
    """
    if preset not in MTL_PRESETS:
        raise ValueError(f"unknown MTL preset {preset!r}; use one of {MTL_PRESETS}")
    if preset == "mtl_tf":
        convert_to_scale_shift(model, exclude=lambda _, conv: conv.kernel_size == (1, 1))
    else:
        convert_to_scale_shift(model)
    trained: set[int] = set()
    for m in model.modules():
        if isinstance(m, ScaleShiftConv2d) or (
            preset == "mtl_pytorch" and isinstance(m, (_BatchNorm, _TorchBatchNorm))
        ):
            trained.update(id(p) for p in m.parameters(recurse=False))
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module):
        trained.update(id(p) for p in head.parameters())
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(id(p) in trained)
        if id(p) in trained:
            names.append(name)
    return sorted(names)
