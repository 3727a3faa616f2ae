"""The CIFAR bottleneck ResNet-50 of the distillation literature (mdistiller's ``ResNet50``).

Registered name: ``ResNet50``.

Layout (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, the ImageNet
bottleneck ResNet-50 with a CIFAR stem; as in ``megvii-research/mdistiller :
mdistiller/models/cifar/resnetv2.py`` at commit ``a08d46f``): a 3×3 stem conv (64 channels,
stride 1, no bias) → BN → ReLU with no stem pool, four stages of 3, 4, 6, 3
:class:`Bottleneck` blocks of widths 64, 128, 256, 512 (outputs ×4) and strides 1, 2, 2, 2,
the mean over H×W and a linear classifier 2048 → N. At 32 px the last map is 4×4.

This is not ``resnet50_bottle`` (:func:`metakd.nn.resnet.resnet50_bottle`), GDA's few-shot
network of Meta-Baseline blocks with [3, 4, 6, 3] blocks per stage, whose blocks are three
3×3 convs and not bottlenecks.

The state-dict keys are mdistiller's (``layer1.0.conv1.weight``, ``layer2.0.shortcut.0.weight``)
but for the classifier: ``linear.*`` there, ``head.*`` here
(:func:`metakd.nn.original_key_map`). The initialisation is the reference's: convolutions
Kaiming-normal (fan_out), BN γ=1, β=0, the classifier PyTorch's default.

The factory takes the common arguments of :class:`~metakd.nn.Backbone`, with ``num_classes``
default 100 and BN ``mode="running"`` by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from metakd.nn.blocks import conv1x1, conv3x3, kaiming_init
from metakd.nn.heads import Backbone, HeadKind, make_head
from metakd.nn.norm import BatchNormConfig, pop_bn_kwargs
from metakd.nn.registry import register_model

__all__ = ["Bottleneck", "CifarBottleneckResNet", "resnet50_cifar"]

_MDISTILLER = {"linear.": "head."}  # the classifier's name in mdistiller's code


class Bottleneck(nn.Module):
    """The ResNet bottleneck block: conv1x1 → BN → ReLU → conv3x3 (stride) → BN → ReLU →
    conv1x1 (×4 width) → BN, plus the shortcut, then ReLU.

    The shortcut (``shortcut``) is conv1x1 (stride) + BN when the stride or the width changes,
    else the input.

    Args:
        in_channels: input channels.
        planes: bottleneck width; the block outputs ``4 * planes`` channels.
        stride: stride of the 3×3 conv and of the shortcut.
        bn: BatchNorm settings.

    Shapes:
        ``[B, in, H, W]`` → ``[B, 4·planes, H/stride, W/stride]``.

    Example:
        >>> Bottleneck(64, 32, 2, BatchNormConfig())(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 128, 4, 4])
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, bn: BatchNormConfig) -> None:
        super().__init__()
        out = self.expansion * planes
        self.conv1 = conv1x1(in_channels, planes)
        self.bn1 = bn.build(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = bn.build(planes)
        self.conv3 = conv1x1(planes, out)
        self.bn3 = bn.build(out)
        self.shortcut = (
            nn.Sequential(conv1x1(in_channels, out, stride), bn.build(out))
            if stride != 1 or in_channels != out
            else nn.Sequential()
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarBottleneckResNet(Backbone):
    """A bottleneck ResNet with a CIFAR stem (3×3 conv, stride 1, no pool).

    Reference: He et al., CVPR 2016; the CIFAR layout, names and initialisation of
    ``mdistiller/models/cifar/resnetv2.py`` (commit ``a08d46f``), whose ``ResNet50`` is
    ``layers=(3, 4, 6, 3)``. ``features`` is mdistiller's ``feats["pooled_feat"]``.

    Takes the common arguments ``num_classes`` (default 100), ``in_channels``, ``head`` and
    ``bn`` (default ``mode="running"``) of :class:`~metakd.nn.Backbone`.

    Args:
        layers: blocks per stage (four stages of widths 64, 128, 256, 512, strides 1, 2, 2, 2).

    Shapes:
        ``[B, 3, 32, 32]`` → map ``[B, 2048, 4, 4]`` → features ``[B, 2048]`` → ``[B, N]``.

    Example:
        >>> net = CifarBottleneckResNet((1, 1, 1, 1), num_classes=100)
        >>> net(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        *,
        num_classes: int = 100,
        in_channels: int = 3,
        head: HeadKind | None = "linear",
        bn: BatchNormConfig | None = None,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"need 4 stages of >= 1 block, got {list(layers)}")
        bn = bn or BatchNormConfig(mode="running")
        self.conv1 = conv3x3(in_channels, 64)
        self.bn1 = bn.build(64)
        c_in, stages = 64, []
        for n, planes, stride in zip(layers, (64, 128, 256, 512), (1, 2, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(Bottleneck(c_in, planes, stride if i == 0 else 1, bn))
                c_in = Bottleneck.expansion * planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_dim = c_in
        self.head = make_head(head, self.feature_dim, num_classes)
        kaiming_init(self)

    def feature_map(self, x: Tensor) -> Tensor:
        """The last feature map ``[B, 2048, H/8, W/8]``."""
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def features(self, x: Tensor) -> Tensor:
        """Embedding ``[B, 2048]`` of images ``[B, C, H, W]``."""
        return self.feature_map(x).mean(dim=(-2, -1))


@register_model(family="cifar", name="ResNet50", original_keys=_MDISTILLER)
def resnet50_cifar(**kwargs: Any) -> CifarBottleneckResNet:
    """mdistiller's CIFAR ``ResNet50`` teacher: bottleneck blocks [3, 4, 6, 3], 3×3 stem;
    23,705,252 params at 100 classes.

    Example:
        >>> resnet50_cifar(num_classes=0)(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 2048])
    """
    bn = pop_bn_kwargs(kwargs, BatchNormConfig(mode="running"))
    return CifarBottleneckResNet(bn=bn, **kwargs)
