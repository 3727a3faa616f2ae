"""The ResNet-10/18 of PMAML and FEAT; the other few-shot ResNets are re-exported here.

Registered names:

``resnet10``, ``resnet18``
    PMAML's ``meta_backbones/resnet18.py`` after FEAT: 3×3 stem conv (stride 1, no bias) +
    BN + ReLU, no stem pool, BasicBlocks [1,1,1,1] / [2,2,2,2], planes 64-128-256-512,
    strides 1/2/2/2, mean over H×W → 512-d. 84 px → 11×11. Kaiming-normal (fan_out) conv
    init, BN γ=1, β=0, BN ``mode="running"`` by default; the common arguments of
    :class:`~metakd.nn.Backbone` (``num_classes`` default 5).

The other few-shot ResNets live in their own modules and stay importable from here:
Meta-Baseline's ResNet-12 and GDA's ResNets in :mod:`metakd.nn.resnet12`, the ResNets of
Meta-Transfer Learning in :mod:`metakd.nn.mtl_resnet`, the shared blocks in
:mod:`metakd.nn.blocks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from metakd.nn.blocks import (
    RUNNING_BN,
    BasicBlock,
    GAPResNet,
    build_with_bn,
    conv3x3,
    kaiming_init,
    make_stage,
)
from metakd.nn.heads import HeadKind, make_head
from metakd.nn.mtl_resnet import MTLResNet12, mtl_resnet12
from metakd.nn.norm import BatchNormConfig
from metakd.nn.registry import register_model
from metakd.nn.resnet12 import (
    BottleResNet,
    ResNet12,
    ResNet12Block,
    resnet12,
    resnet12_bottle,
    resnet12_gda,
    resnet18_bottle,
    resnet36_bottle,
    resnet50_bottle,
)

__all__ = [
    "BasicBlock",
    "BottleResNet",
    "MTLResNet12",
    "ResNet",
    "ResNet12",
    "ResNet12Block",
    "mtl_resnet12",
    "resnet10",
    "resnet12",
    "resnet12_bottle",
    "resnet12_gda",
    "resnet18",
    "resnet18_bottle",
    "resnet36_bottle",
    "resnet50_bottle",
]

class ResNet(GAPResNet):
    """ResNet-10/18 of PMAML and FEAT (3×3 stem, no stem pool, BasicBlocks, GAP).

    Reference: ``remiMZ/PMAML-ECAI20 : meta_backbones/resnet18.py`` after FEAT's ``res18``
    (Ye et al., "Few-Shot Learning via Embedding Adaptation with Set-to-Set Functions", CVPR
    2020).

    Takes the common arguments ``num_classes``, ``in_channels``, ``head`` and ``bn`` of
    :class:`~metakd.nn.Backbone` (``bn`` default ``mode="running"``).

    Args:
        layers: BasicBlocks per stage ([1,1,1,1] ResNet-10, [2,2,2,2] ResNet-18).
        width: stem and first-stage width; the stages use ``width·(1, 2, 4, 8)``.

    Shapes:
        ``[B, 3, 84, 84]`` → map ``[B, 512, 11, 11]`` → features ``[B, 512]`` → ``[B, N]``.

    Example:
        >>> ResNet((1, 1, 1, 1), num_classes=5)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 5])
    """

    def __init__(
        self,
        layers: Sequence[int],
        *,
        width: int = 64,
        num_classes: int = 5,
        in_channels: int = 3,
        head: HeadKind | None = "linear",
        bn: BatchNormConfig = RUNNING_BN,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"need 4 stages of >= 1 block, got {list(layers)}")
        self.stem = nn.Sequential(conv3x3(in_channels, width), bn.build(width), nn.ReLU())
        planes, strides = tuple(width * m for m in (1, 2, 4, 8)), (1, 2, 2, 2)
        stages = []
        c_in = width
        for n, c, s in zip(layers, planes, strides):
            stages.append(make_stage(c_in, c, n, s, bn))
            c_in = c
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_dim = planes[-1]
        self.head = make_head(head, self.feature_dim, num_classes)
        kaiming_init(self)

    def feature_map(self, x: Tensor) -> Tensor:
        """The last feature map ``[B, 8·width, h, w]`` (after the stem and the four stages)."""
        return super().feature_map(self.stem(x))


@register_model(family="few-shot")
def resnet10(**kwargs: Any) -> ResNet:
    """PMAML/FEAT ResNet-10: BasicBlocks [1,1,1,1], 3×3 stem, GAP → 512."""
    return build_with_bn(ResNet, ((1, 1, 1, 1),), kwargs, RUNNING_BN)


@register_model(family="few-shot")
def resnet18(**kwargs: Any) -> ResNet:
    """PMAML/FEAT ResNet-18: BasicBlocks [2,2,2,2], 3×3 stem, GAP → 512.

    Example:
        >>> resnet18(num_classes=5)(torch.randn(2, 3, 84, 84)).shape
        torch.Size([2, 5])
    """
    return build_with_bn(ResNet, ((2, 2, 2, 2),), kwargs, RUNNING_BN)
