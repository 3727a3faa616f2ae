"""CIFAR ResNets, the teacher/student pairs of the distillation literature.

Registered names: ``resnet8``, ``resnet14``, ``resnet20``, ``resnet32``, ``resnet44``,
``resnet56``, ``resnet80``, ``resnet110`` (filters [16, 16, 32, 64]) and ``resnet8x4``,
``resnet32x4`` (filters [32, 64, 128, 256]): mdistiller's CIFAR ResNets under their mdistiller
names (``resnet80`` is GDA's, the same family). Their
state-dict keys are mdistiller's but for the classifier (``fc.*`` there, ``head.*`` here;
:func:`metakd.nn.original_key_map`).

Layout (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2; as in
``megvii-research/mdistiller : mdistiller/models/cifar/resnet.py``): a 3×3 stem conv (no bias)
→ BN → ReLU at 32×32, then three stages of ``n = (depth - 2) / 6`` :class:`BasicBlock`\\ s
with widths f1, f2, f3 and strides 1, 2, 2 (conv1x1 + BN shortcut when the shape changes),
then the mean over H×W (the ``AvgPool2d(8)`` of the reference at 32 px) → linear.
Params at 100 classes: resnet20 278,324; resnet56 861,620.

Every factory takes the common arguments of :class:`~metakd.nn.Backbone`, with ``num_classes``
default 100 and BN ``mode="running"`` by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from metakd.nn.blocks import conv3x3, kaiming_init, make_stage
from metakd.nn.heads import Backbone, HeadKind, make_head
from metakd.nn.norm import BatchNormConfig, pop_bn_kwargs
from metakd.nn.registry import register_model

__all__ = [
    "CifarResNet",
    "resnet8",
    "resnet8x4",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet32x4",
    "resnet44",
    "resnet56",
    "resnet80",
    "resnet110",
]


class CifarResNet(Backbone):
    """A CIFAR ResNet of ``depth = 6n + 2`` layers.

    Takes the common arguments ``num_classes`` (default 100), ``in_channels``, ``head`` and
    ``bn`` (default ``mode="running"``) of :class:`~metakd.nn.Backbone`.

    Args:
        depth: 8, 20, 32, 56, 110 ... (``(depth - 2) % 6 == 0``).
        filters: [stem, stage1, stage2, stage3] widths.

    Shapes:
        ``[B, 3, 32, 32]`` → map ``[B, f3, 8, 8]`` → features ``[B, f3]`` → logits ``[B, N]``.

    Example:
        >>> net = CifarResNet(20, num_classes=100)
        >>> net(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """

    def __init__(
        self,
        depth: int,
        filters: Sequence[int] = (16, 16, 32, 64),
        *,
        num_classes: int = 100,
        in_channels: int = 3,
        head: HeadKind | None = "linear",
        bn: BatchNormConfig | None = None,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        if len(filters) != 4:
            raise ValueError(f"need 4 filter widths, got {list(filters)}")
        bn = bn or BatchNormConfig(mode="running")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = conv3x3(in_channels, filters[0])
        self.bn1 = bn.build(filters[0])
        self.layer1 = make_stage(filters[0], filters[1], n, 1, bn)
        self.layer2 = make_stage(filters[1], filters[2], n, 2, bn)
        self.layer3 = make_stage(filters[2], filters[3], n, 2, bn)
        self.feature_dim = filters[3]
        self.head = make_head(head, self.feature_dim, num_classes)
        kaiming_init(self)

    def feature_map(self, x: Tensor) -> Tensor:
        """The last feature map ``[B, f3, H/4, W/4]``."""
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def features(self, x: Tensor) -> Tensor:
        """Embedding ``[B, f3]`` of images ``[B, C, H, W]``."""
        return self.feature_map(x).mean(dim=(-2, -1))


def _cifar(depth: int, filters: Sequence[int], kwargs: dict[str, Any]) -> CifarResNet:
    bn = pop_bn_kwargs(kwargs, BatchNormConfig(mode="running"))
    return CifarResNet(depth, filters, bn=bn, **kwargs)


_SMALL = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)
_MDISTILLER = {"fc.": "head."}  # the classifier's name in mdistiller's code


@register_model(family="cifar", original_keys=_MDISTILLER)
def resnet8(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-8 (n=1, [16,16,32,64])."""
    return _cifar(8, _SMALL, kwargs)


@register_model(family="cifar", original_keys=_MDISTILLER)
def resnet14(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-14 (n=2, [16,16,32,64]); 181,108 params at 100 classes."""
    return _cifar(14, _SMALL, kwargs)


@register_model(family="cifar", original_keys=_MDISTILLER)
def resnet20(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-20 (n=3, [16,16,32,64]); 278,324 params at 100 classes.

    Example:
        >>> resnet20()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """
    return _cifar(20, _SMALL, kwargs)


@register_model(family="cifar", original_keys=_MDISTILLER)
def resnet32(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-32 (n=5, [16,16,32,64])."""
    return _cifar(32, _SMALL, kwargs)


@register_model(family="cifar", original_keys=_MDISTILLER)
def resnet44(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-44 (n=7, [16,16,32,64]); 667,188 params at 100 classes."""
    return _cifar(44, _SMALL, kwargs)


@register_model(family="cifar", original_keys=_MDISTILLER)
def resnet56(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-56 (n=9, [16,16,32,64]); 861,620 params at 100 classes."""
    return _cifar(56, _SMALL, kwargs)


@register_model(family="cifar", original_keys=_MDISTILLER)
def resnet80(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-80 (n=13, [16,16,32,64]); 1,250,484 params at 100 classes.

    Registered by GDA's and Weak-to-Strong's timm trainers (``custom_model/cifar/
    cifar_resnetv1.py``), not by mdistiller.
    """
    return _cifar(80, _SMALL, kwargs)


@register_model(family="cifar", original_keys=_MDISTILLER)
def resnet110(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-110 (n=18, [16,16,32,64])."""
    return _cifar(110, _SMALL, kwargs)


@register_model(family="cifar", original_keys=_MDISTILLER)
def resnet8x4(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-8x4 (n=1, [32,64,128,256])."""
    return _cifar(8, _X4, kwargs)


@register_model(family="cifar", original_keys=_MDISTILLER)
def resnet32x4(**kwargs: Any) -> CifarResNet:
    """CIFAR ResNet-32x4 (n=5, [32,64,128,256])."""
    return _cifar(32, _X4, kwargs)
