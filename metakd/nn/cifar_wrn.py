"""CIFAR Wide ResNets, teachers and students of the distillation literature.

Registered names: ``wrn_16_1``, ``wrn_16_2``, ``wrn_40_1``, ``wrn_40_2`` (depth 16 or 40,
widening factor 1 or 2), mdistiller's names.

Layout (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016; as in
``megvii-research/mdistiller : mdistiller/models/cifar/wrn.py`` at commit ``a08d46f``): a 3×3
stem conv (16 channels, no bias), three stages of ``n = (depth - 4) / 6`` pre-activation
:class:`WideBlock`\\ s of widths ``16k, 32k, 64k`` and strides 1, 2, 2, then BN → ReLU, the
mean over H×W (the reference's 8×8 average pool at 32 px) and a linear classifier.

The state-dict keys are mdistiller's (``block1.layer.0.bn1.weight``, ``...convShortcut.weight``)
but for the classifier: ``fc.*`` there, ``head.*`` here (:func:`metakd.nn.original_key_map`).
The initialisation is the reference's: convolutions normal with std ``sqrt(2 / (k·k·out))``,
BN γ=1, β=0, the classifier's bias 0.

Every factory takes the common arguments of :class:`~metakd.nn.Backbone`, with ``num_classes``
default 100 and BN ``mode="running"`` by default; also ``drop_rate`` (dropout inside the
blocks, default 0).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from metakd.nn.blocks import conv1x1, conv3x3, kaiming_init
from metakd.nn.heads import Backbone, HeadKind, make_head
from metakd.nn.norm import BatchNormConfig, pop_bn_kwargs
from metakd.nn.registry import register_model

__all__ = ["CifarWideResNet", "WideBlock", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]

_MDISTILLER = {"fc.": "head."}  # the classifier's name in mdistiller's code


class WideBlock(nn.Module):
    """The pre-activation basic block of a Wide ResNet.

    ``BN → ReLU → conv3x3 (stride) → BN → ReLU → [dropout] → conv3x3``, added to the
    shortcut: the input itself when the width is kept, else a 1×1 conv (``convShortcut``, with
    the stride) of the input *after* the first BN → ReLU.

    Args:
        in_channels: input channels.
        channels: output channels.
        stride: stride of the first conv and of the shortcut conv (an identity shortcut,
            ``in_channels == channels``, needs stride 1).
        bn: BatchNorm settings.
        drop_rate: dropout probability between the two convs.

    Shapes:
        ``[B, in, H, W]`` → ``[B, channels, H/stride, W/stride]``.

    Example:
        >>> WideBlock(16, 32, 2, BatchNormConfig())(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 32, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int,
        bn: BatchNormConfig,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if in_channels == channels and stride != 1:
            raise ValueError("an identity shortcut needs stride 1")
        self.bn1 = bn.build(in_channels)
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn2 = bn.build(channels)
        self.conv2 = conv3x3(channels, channels)
        self.drop_rate = drop_rate
        self.convShortcut: nn.Conv2d | None = (
            conv1x1(in_channels, channels, stride) if in_channels != channels else None
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        pre = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, self.drop_rate, self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        return shortcut + out


class _WideStage(nn.Module):
    """``blocks`` :class:`WideBlock`\\ s in ``self.layer`` (the reference's ``NetworkBlock``)."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        blocks: int,
        stride: int,
        bn: BatchNormConfig,
        drop_rate: float,
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBlock(in_channels if i == 0 else channels, channels,
                          stride if i == 0 else 1, bn, drop_rate)
                for i in range(blocks)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class CifarWideResNet(Backbone):
    """A CIFAR Wide ResNet WRN-``depth``-``widen_factor`` (``depth = 6n + 4``).

    Reference: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016; the layout,
    names and initialisation of ``mdistiller/models/cifar/wrn.py`` (commit ``a08d46f``).
    ``features`` is mdistiller's ``feats["pooled_feat"]``.

    Takes the common arguments ``num_classes`` (default 100), ``in_channels``, ``head`` and
    ``bn`` (default ``mode="running"``) of :class:`~metakd.nn.Backbone`.

    Args:
        depth: 16, 22, 28, 40 ... (``(depth - 4) % 6 == 0``).
        widen_factor: width multiplier k of the stages ``16k, 32k, 64k``.
        drop_rate: dropout probability inside each block.

    Shapes:
        ``[B, 3, 32, 32]`` → map ``[B, 64k, 8, 8]`` → features ``[B, 64k]`` → logits ``[B, N]``.

    Example:
        >>> net = CifarWideResNet(16, 2, num_classes=100)
        >>> net(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int = 1,
        *,
        num_classes: int = 100,
        in_channels: int = 3,
        head: HeadKind | None = "linear",
        drop_rate: float = 0.0,
        bn: BatchNormConfig | None = None,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"Wide ResNet depth must be 6n + 4 with n >= 1, got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        bn = bn or BatchNormConfig(mode="running")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.depth, self.widen_factor = depth, widen_factor
        self.conv1 = conv3x3(in_channels, widths[0])
        self.block1 = _WideStage(widths[0], widths[1], n, 1, bn, drop_rate)
        self.block2 = _WideStage(widths[1], widths[2], n, 2, bn, drop_rate)
        self.block3 = _WideStage(widths[2], widths[3], n, 2, bn, drop_rate)
        self.bn1 = bn.build(widths[3])
        self.feature_dim = widths[3]
        self.head = make_head(head, self.feature_dim, num_classes)
        kaiming_init(self)
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.bias)

    def feature_map(self, x: Tensor) -> Tensor:
        """The last feature map ``[B, 64k, H/4, W/4]``, after the final BN → ReLU."""
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return F.relu(self.bn1(x))

    def features(self, x: Tensor) -> Tensor:
        """Embedding ``[B, 64k]`` of images ``[B, C, H, W]``."""
        return self.feature_map(x).mean(dim=(-2, -1))


def _wrn(depth: int, widen_factor: int, kwargs: dict[str, Any]) -> CifarWideResNet:
    bn = pop_bn_kwargs(kwargs, BatchNormConfig(mode="running"))
    return CifarWideResNet(depth, widen_factor, bn=bn, **kwargs)


@register_model(family="cifar", original_keys=_MDISTILLER)
def wrn_16_1(**kwargs: Any) -> CifarWideResNet:
    """WRN-16-1 (n=2, widths 16-16-32-64); 180,916 params at 100 classes."""
    return _wrn(16, 1, kwargs)


@register_model(family="cifar", original_keys=_MDISTILLER)
def wrn_16_2(**kwargs: Any) -> CifarWideResNet:
    """WRN-16-2 (n=2, widths 16-32-64-128); 703,284 params at 100 classes."""
    return _wrn(16, 2, kwargs)


@register_model(family="cifar", original_keys=_MDISTILLER)
def wrn_40_1(**kwargs: Any) -> CifarWideResNet:
    """WRN-40-1 (n=6, widths 16-16-32-64); 569,780 params at 100 classes."""
    return _wrn(40, 1, kwargs)


@register_model(family="cifar", original_keys=_MDISTILLER)
def wrn_40_2(**kwargs: Any) -> CifarWideResNet:
    """WRN-40-2 (n=6, widths 16-32-64-128), mdistiller's WRN teacher; 2,255,156 params at
    100 classes.

    Example:
        >>> wrn_40_2()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """
    return _wrn(40, 2, kwargs)
