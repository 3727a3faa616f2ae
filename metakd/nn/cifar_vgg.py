"""CIFAR VGGs with batch norm, teachers and students of the distillation literature.

Registered names: ``vgg8``, ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19`` (mdistiller's names for
its ``vgg*_bn`` models; there is no BN-free variant here).

Layout (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015, configurations A, B, D, E and the 8-layer "S"; as adapted to CIFAR in
``megvii-research/mdistiller : mdistiller/models/cifar/vgg.py`` at commit ``a08d46f``): five
blocks of 3×3 convs (with bias) → BN → ReLU of widths 64, 128, 256, 512, 512; a 2×2 max pool
after each of the first three blocks (and after the fourth only for 64-px inputs, as in the
reference, for Tiny-ImageNet); the mean over H×W (the reference's adaptive average pool) and
one linear classifier 512 → N. At 32 px the last two blocks run at 4×4.

The state-dict keys are mdistiller's (``block0.0.weight`` conv, ``block0.1.*`` BN; the ReLUs
keep their places in each block's ``nn.Sequential``) but for the classifier:
``classifier.*`` there, ``head.*`` here (:func:`metakd.nn.original_key_map`). The
initialisation is the reference's: convolutions normal with std ``sqrt(2 / (k·k·out))`` and
bias 0, BN γ=1, β=0, the classifier normal with std 0.01 and bias 0.

Every factory takes the common arguments of :class:`~metakd.nn.Backbone`, with ``num_classes``
default 100 and BN ``mode="running"`` by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from metakd.nn.blocks import kaiming_init
from metakd.nn.heads import Backbone, HeadKind, make_head
from metakd.nn.norm import BatchNormConfig, pop_bn_kwargs
from metakd.nn.pool import max_pool2d
from metakd.nn.registry import register_model

__all__ = ["VGG_CONFIGS", "CifarVGG", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]

_MDISTILLER = {"classifier.": "head."}  # the classifier's name in mdistiller's code

#: Conv widths of the five blocks, by depth (8: "S", 11: "A", 13: "B", 16: "D", 19: "E").
VGG_CONFIGS: dict[int, tuple[tuple[int, ...], ...]] = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _block(in_channels: int, widths: Sequence[int], bn: BatchNormConfig) -> nn.Sequential:
    """``[conv3x3 + bias, BN, ReLU] × len(widths)`` without the last ReLU."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), bn.build(width), nn.ReLU()]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class CifarVGG(Backbone):
    """A CIFAR VGG with batch norm: five conv blocks, three (four at 64 px) max pools, GAP.

    Reference: Simonyan & Zisserman, ICLR 2015; the CIFAR layout, names and initialisation of
    ``mdistiller/models/cifar/vgg.py`` (commit ``a08d46f``). ``features`` is mdistiller's
    ``feats["pooled_feat"]``.

    Takes the common arguments ``num_classes`` (default 100), ``in_channels``, ``head`` and
    ``bn`` (default ``mode="running"``) of :class:`~metakd.nn.Backbone`.

    Args:
        widths: conv widths of each of the five blocks (a value of :data:`VGG_CONFIGS`).

    Shapes:
        ``[B, 3, 32, 32]`` → map ``[B, 512, 4, 4]`` → features ``[B, 512]`` → logits ``[B, N]``.

    Example:
        >>> net = CifarVGG(VGG_CONFIGS[8], num_classes=100)
        >>> net(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """

    def __init__(
        self,
        widths: Sequence[Sequence[int]],
        *,
        num_classes: int = 100,
        in_channels: int = 3,
        head: HeadKind | None = "linear",
        bn: BatchNormConfig | None = None,
    ) -> None:
        super().__init__()
        if len(widths) != 5 or not all(widths):
            raise ValueError(f"a VGG needs 5 non-empty blocks of widths, got {widths}")
        bn = bn or BatchNormConfig(mode="running")
        ins = [in_channels] + [w[-1] for w in widths[:-1]]
        self.block0 = _block(ins[0], widths[0], bn)
        self.block1 = _block(ins[1], widths[1], bn)
        self.block2 = _block(ins[2], widths[2], bn)
        self.block3 = _block(ins[3], widths[3], bn)
        self.block4 = _block(ins[4], widths[4], bn)
        self.feature_dim = widths[-1][-1]
        self.head = make_head(head, self.feature_dim, num_classes)
        kaiming_init(self)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                nn.init.zeros_(m.bias)
        if isinstance(self.head, nn.Linear):
            nn.init.normal_(self.head.weight, 0.0, 0.01)
            nn.init.zeros_(self.head.bias)

    def feature_map(self, x: Tensor) -> Tensor:
        """The last feature map ``[B, 512, H/8, W/8]`` (``H/16`` for 64-px inputs)."""
        pool4 = x.shape[-2] == 64  # the reference pools a fourth time for Tiny-ImageNet only
        x = max_pool2d(F.relu(self.block0(x)), 2)
        x = max_pool2d(F.relu(self.block1(x)), 2)
        x = max_pool2d(F.relu(self.block2(x)), 2)
        x = F.relu(self.block3(x))
        if pool4:
            x = max_pool2d(x, 2)
        return F.relu(self.block4(x))

    def features(self, x: Tensor) -> Tensor:
        """Embedding ``[B, 512]`` of images ``[B, C, H, W]``."""
        return self.feature_map(x).mean(dim=(-2, -1))


def _vgg(depth: int, kwargs: dict[str, Any]) -> CifarVGG:
    bn = pop_bn_kwargs(kwargs, BatchNormConfig(mode="running"))
    return CifarVGG(VGG_CONFIGS[depth], bn=bn, **kwargs)


@register_model(family="cifar", original_keys=_MDISTILLER)
def vgg8(**kwargs: Any) -> CifarVGG:
    """VGG-8 with BN (configuration "S": one conv per block), mdistiller's ``vgg8_bn``;
    3,965,028 params at 100 classes."""
    return _vgg(8, kwargs)


@register_model(family="cifar", original_keys=_MDISTILLER)
def vgg11(**kwargs: Any) -> CifarVGG:
    """VGG-11 with BN (configuration "A"), mdistiller's ``vgg11_bn``; 9,277,284 params."""
    return _vgg(11, kwargs)


@register_model(family="cifar", original_keys=_MDISTILLER)
def vgg13(**kwargs: Any) -> CifarVGG:
    """VGG-13 with BN (configuration "B"), mdistiller's ``vgg13_bn`` teacher; 9,462,180
    params at 100 classes.

    Example:
        >>> vgg13()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """
    return _vgg(13, kwargs)


@register_model(family="cifar", original_keys=_MDISTILLER)
def vgg16(**kwargs: Any) -> CifarVGG:
    """VGG-16 with BN (configuration "D"), mdistiller's ``vgg16_bn``; 14,774,436 params."""
    return _vgg(16, kwargs)


@register_model(family="cifar", original_keys=_MDISTILLER)
def vgg19(**kwargs: Any) -> CifarVGG:
    """VGG-19 with BN (configuration "E"), mdistiller's ``vgg19_bn``; 20,086,692 params."""
    return _vgg(19, kwargs)
