"""Meta-Baseline's ResNet-12 and the GDA/W2S ResNets built from its block.

Registered names:

``resnet12``
    Meta-Baseline's ResNet-12 (Chen et al., ICCV 2021; ``models/resnet12.py``): four
    :class:`ResNet12Block` (3 × conv3x3 no bias + BN, LeakyReLU 0.1, conv1x1+BN shortcut,
    LeakyReLU, MaxPool2d(2)), channels 64-128-256-512 (``wide=True``: 64-160-320-640), mean
    over H×W → 512-d. 80 px → 5×5. 7,996,800 encoder params. Submodule names follow
    Meta-Baseline (``layer1.conv1``, ``layer1.downsample.0`` ...) so its encoder weights load.
``resnet12_gda``
    GDA's/W2S's ``resnet12`` (``Few-shot Learning/models/resnet.py``, class ``ResNet12``): the
    same blocks, parameters and key names as ``resnet12`` but **no max-pooling**, so an
    80 px image stays 80×80 through the four blocks. A checkpoint of one loads into the other
    and computes a different function: :mod:`metakd.interop` refuses such loads where the
    file names its encoder.
``resnet12_bottle``, ``resnet18_bottle``, ``resnet36_bottle``, ``resnet50_bottle``
    GDA/W2S ``ResNet(layers)`` (``Few-shot Learning/models/resnet.py``): stage s is one
    Meta-Baseline block with shortcut and pool, then ``layers[s] - 1`` blocks with identity
    shortcut and no pool; layers [1,1,1,1] / [1,2,2,1] / [2,3,5,2] / [3,4,6,3]. Their blocks are
    not bottlenecks: ``resnet50_bottle`` is not mdistiller's CIFAR ``ResNet50`` (registered as
    ``ResNet50`` in :mod:`metakd.nn.cifar_bottleneck`).

All take the common arguments of :class:`~metakd.nn.Backbone` (``num_classes`` default 5), use
Kaiming-normal (fan_out) conv init, BN γ=1, β=0, and BN ``mode="running"`` by default
(standard pre-training).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from metakd.nn.blocks import (
    RUNNING_BN,
    GAPResNet,
    build_with_bn,
    conv1x1,
    conv3x3,
    kaiming_init,
)
from metakd.nn.heads import HeadKind, make_head
from metakd.nn.norm import BatchNormConfig
from metakd.nn.pool import max_pool2d
from metakd.nn.registry import register_model

__all__ = [
    "BottleResNet",
    "ResNet12",
    "ResNet12Block",
    "resnet12",
    "resnet12_bottle",
    "resnet12_gda",
    "resnet18_bottle",
    "resnet36_bottle",
    "resnet50_bottle",
]


class ResNet12Block(nn.Module):
    """The Meta-Baseline residual block.

    ``3 × [conv3x3 (no bias) → BN]`` with LeakyReLU(0.1) after the first two, plus the
    shortcut (``downsample``: conv1x1 + BN, or identity), then LeakyReLU(0.1) and an optional
    MaxPool2d(2).

    Args:
        in_channels: input channels.
        channels: output channels.
        bn: BatchNorm settings.
        downsample: use a conv1x1 + BN shortcut (else identity; needs equal channels).
        pool: end with MaxPool2d(2).

    Shapes:
        ``[B, in, H, W]`` → ``[B, channels, H/2, W/2]`` (``[.., H, W]`` without pool).

    Example:
        >>> ResNet12Block(3, 64, BatchNormConfig())(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 64, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        bn: BatchNormConfig,
        *,
        downsample: bool = True,
        pool: bool = True,
    ) -> None:
        super().__init__()
        if not downsample and in_channels != channels:
            raise ValueError("an identity shortcut needs in_channels == channels")
        self.conv1 = conv3x3(in_channels, channels)
        self.bn1 = bn.build(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = bn.build(channels)
        self.conv3 = conv3x3(channels, channels)
        self.bn3 = bn.build(channels)
        self.downsample = (
            nn.Sequential(conv1x1(in_channels, channels), bn.build(channels))
            if downsample
            else None
        )
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        out = F.leaky_relu(self.bn1(self.conv1(x)), 0.1)
        out = F.leaky_relu(self.bn2(self.conv2(out)), 0.1)
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        out = F.leaky_relu(out + identity, 0.1)
        return max_pool2d(out, 2) if self.pool else out


class ResNet12(GAPResNet):
    """Meta-Baseline's ResNet-12: four :class:`ResNet12Block` with shortcut and pool.

    Reference: Chen et al., "Meta-Baseline: Exploring Simple Meta-Learning for Few-Shot
    Learning", ICCV 2021 (``yinboc/few-shot-meta-baseline : models/resnet12.py``).

    Takes the common arguments ``num_classes``, ``in_channels``, ``head`` and ``bn`` of
    :class:`~metakd.nn.Backbone` (``bn`` default ``mode="running"``).

    Args:
        channels: the four block widths (64-128-256-512; wide 64-160-320-640).
        pool: end each block with MaxPool2d(2) (``False``: GDA's ``resnet12``).

    Shapes:
        ``[B, 3, 80, 80]`` → features ``[B, channels[-1]]`` → logits ``[B, N]``.

    Example:
        >>> net = ResNet12(num_classes=64)
        >>> net(torch.randn(2, 3, 80, 80)).shape
        torch.Size([2, 64])
    """

    def __init__(
        self,
        channels: Sequence[int] = (64, 128, 256, 512),
        *,
        num_classes: int = 5,
        in_channels: int = 3,
        head: HeadKind | None = "linear",
        bn: BatchNormConfig = RUNNING_BN,
        pool: bool = True,
    ) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"ResNet12 needs 4 channel widths, got {list(channels)}")
        widths = [in_channels, *channels]
        self.layer1 = ResNet12Block(widths[0], widths[1], bn, pool=pool)
        self.layer2 = ResNet12Block(widths[1], widths[2], bn, pool=pool)
        self.layer3 = ResNet12Block(widths[2], widths[3], bn, pool=pool)
        self.layer4 = ResNet12Block(widths[3], widths[4], bn, pool=pool)
        self.feature_dim = channels[-1]
        self.head = make_head(head, self.feature_dim, num_classes)
        kaiming_init(self)


class BottleResNet(GAPResNet):
    """GDA/W2S ``ResNet(layers)``: Meta-Baseline blocks, ``layers[s]`` per stage.

    Stage s = one block (conv1x1+BN shortcut, MaxPool2d(2)) followed by ``layers[s] - 1``
    blocks with identity shortcut and no pool. "bottle" is GDA's name; the blocks are not
    bottlenecks. ``layers=(1, 1, 1, 1)`` computes the same function as :class:`ResNet12`.

    Reference: ``zhiweihu1103/Logit-Distillation-GDA : Few-shot Learning/models/resnet.py``
    (identical to ``ggjy/vision_weak_to_strong``).

    Takes the common arguments ``num_classes``, ``in_channels``, ``head`` and ``bn`` of
    :class:`~metakd.nn.Backbone` (``bn`` default ``mode="running"``).

    Args:
        layers: blocks per stage.
        channels: stage widths.

    Shapes:
        ``[B, 3, 80, 80]`` → features ``[B, 512]`` → logits ``[B, N]``.

    Example:
        >>> BottleResNet((1, 2, 2, 1), num_classes=0)(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 512])
    """

    def __init__(
        self,
        layers: Sequence[int],
        channels: Sequence[int] = (64, 128, 256, 512),
        *,
        num_classes: int = 5,
        in_channels: int = 3,
        head: HeadKind | None = "linear",
        bn: BatchNormConfig = RUNNING_BN,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(channels) != 4 or min(layers) < 1:
            raise ValueError(f"need 4 stages of >= 1 block, got {list(layers)}, {list(channels)}")
        self.layers = tuple(layers)
        stages = []
        c_in = in_channels
        for n, c in zip(layers, channels):
            blocks = [ResNet12Block(c_in, c, bn)]
            blocks += [ResNet12Block(c, c, bn, downsample=False, pool=False) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = c
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_dim = channels[-1]
        self.head = make_head(head, self.feature_dim, num_classes)
        kaiming_init(self)


# ---------------------------------------------------------------------------------------------
# Factories


@register_model(family="few-shot")
def resnet12(
    *, wide: bool = False, channels: Sequence[int] | None = None, **kwargs: Any
) -> ResNet12:
    """Meta-Baseline ResNet-12 (64-128-256-512, or 64-160-320-640 with ``wide=True``).

    ``channels`` sets the four widths explicitly (overrides ``wide``).

    Example:
        >>> resnet12(num_classes=0)(torch.randn(2, 3, 80, 80)).shape
        torch.Size([2, 512])
    """
    if channels is None:
        channels = (64, 160, 320, 640) if wide else (64, 128, 256, 512)
    return build_with_bn(ResNet12, (channels,), kwargs, RUNNING_BN)


@register_model(family="few-shot")
def resnet12_gda(
    *, wide: bool = False, channels: Sequence[int] | None = None, **kwargs: Any
) -> ResNet12:
    """GDA's/W2S's ``resnet12`` (``wide=True``: ``resnet12-wide``): ``resnet12`` without pooling.

    Reference: ``zhiweihu1103/Logit-Distillation-GDA`` (commit ``31d4153``), ``GDA-code.zip :
    Few-shot Learning/models/resnet.py``, whose ``Block`` pools only when given a
    ``maxpool``, which its ``ResNet12`` never passes.

    Example:
        >>> resnet12_gda(num_classes=0).feature_map(torch.randn(1, 3, 10, 10)).shape
        torch.Size([1, 512, 10, 10])
    """
    if channels is None:
        channels = (64, 160, 320, 640) if wide else (64, 128, 256, 512)
    return build_with_bn(ResNet12, (channels,), {**kwargs, "pool": False}, RUNNING_BN)


@register_model(family="few-shot")
def resnet12_bottle(**kwargs: Any) -> BottleResNet:
    """GDA ``resnet12_bottle``: blocks [1,1,1,1] (same function as ``resnet12``)."""
    return build_with_bn(BottleResNet, ((1, 1, 1, 1),), kwargs, RUNNING_BN)


@register_model(family="few-shot")
def resnet18_bottle(**kwargs: Any) -> BottleResNet:
    """GDA ``resnet18_bottle``: blocks [1,2,2,1] (18 3×3 convs)."""
    return build_with_bn(BottleResNet, ((1, 2, 2, 1),), kwargs, RUNNING_BN)


@register_model(family="few-shot")
def resnet36_bottle(**kwargs: Any) -> BottleResNet:
    """GDA ``resnet36_bottle``: blocks [2,3,5,2] (36 3×3 convs)."""
    return build_with_bn(BottleResNet, ((2, 3, 5, 2),), kwargs, RUNNING_BN)


@register_model(family="few-shot")
def resnet50_bottle(**kwargs: Any) -> BottleResNet:
    """GDA ``resnet50_bottle``: blocks [3,4,6,3] (48 3×3 convs despite the name).

    Not mdistiller's CIFAR ``ResNet50`` (registered as ``ResNet50``, a bottleneck ResNet-50 of
    23.7M parameters, :class:`metakd.nn.CifarBottleneckResNet`).
    """
    return build_with_bn(BottleResNet, ((3, 4, 6, 3),), kwargs, RUNNING_BN)
