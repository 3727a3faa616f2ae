"""Building blocks shared by the ResNet families: convolutions, the basic block, the GAP base.

:class:`BasicBlock` and :func:`make_stage` build the PMAML/FEAT ResNets
(:mod:`metakd.nn.resnet`), the CIFAR ResNets and the ResNet-25 of Meta-Transfer Learning;
:class:`GAPResNet` is the ``features`` of every model whose embedding is the mean of its last
feature map over H×W.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch.nn.functional as F
from torch import Tensor, nn

from metakd.nn.heads import Backbone
from metakd.nn.norm import BatchNormConfig, pop_bn_kwargs

__all__ = [
    "BasicBlock",
    "GAPResNet",
    "build_with_bn",
    "conv1x1",
    "conv3x3",
    "kaiming_init",
    "make_stage",
]

M = TypeVar("M", bound=nn.Module)

#: BN of the ResNets pre-trained as classifiers: running statistics (``nn.BatchNorm2d``).
RUNNING_BN = BatchNormConfig(mode="running")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """3×3 convolution with padding 1."""
    return nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=bias)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """1×1 convolution."""
    return nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=bias)


def build_with_bn(
    cls: type[M], args: tuple[Any, ...], kwargs: dict[str, Any], bn_default: BatchNormConfig
) -> M:
    """``cls(*args, bn=<the bn_* kwargs folded into bn_default>, **the other kwargs)``.

    How a factory turns its ``bn_*`` keyword arguments into the ``bn`` of a model class.
    """
    bn = pop_bn_kwargs(kwargs, bn_default)
    return cls(*args, bn=bn, **kwargs)


def kaiming_init(net: nn.Module) -> None:
    """Kaiming-normal (fan_out, gain √2) conv weights; BN γ=1, β=0 (already the default)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class BasicBlock(nn.Module):
    """The ResNet basic block: conv3x3 → BN → ReLU → conv3x3 → BN, + shortcut, ReLU.

    The shortcut is conv1x1 (stride) + BN when the stride or the width changes, else identity.

    Args:
        in_channels: input channels.
        channels: output channels.
        bn: BatchNorm settings.
        stride: stride of the first conv and of the shortcut.

    Shapes:
        ``[B, in, H, W]`` → ``[B, channels, ceil(H/stride), ceil(W/stride)]``.

    Example:
        >>> BasicBlock(16, 32, BatchNormConfig(), stride=2)(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 32, 4, 4])
    """

    def __init__(
        self, in_channels: int, channels: int, bn: BatchNormConfig, stride: int = 1
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = bn.build(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = bn.build(channels)
        self.downsample = (
            nn.Sequential(conv1x1(in_channels, channels, stride), bn.build(channels))
            if stride != 1 or in_channels != channels
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


def make_stage(
    in_channels: int, channels: int, blocks: int, stride: int, bn: BatchNormConfig
) -> nn.Sequential:
    """``blocks`` :class:`BasicBlock`\\ s, the first with ``stride``."""
    layers = [BasicBlock(in_channels, channels, bn, stride)]
    layers += [BasicBlock(channels, channels, bn) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class GAPResNet(Backbone):
    """A four-stage backbone whose ``features`` are ``layer1..4`` → mean over H×W."""

    layer1: nn.Module
    layer2: nn.Module
    layer3: nn.Module
    layer4: nn.Module

    def feature_map(self, x: Tensor) -> Tensor:
        """The last feature map ``[B, feature_dim, h, w]``."""
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def features(self, x: Tensor) -> Tensor:
        """Embedding ``[B, feature_dim]`` of images ``[B, C, H, W]``."""
        return self.feature_map(x).mean(dim=(-2, -1))
