"""The ResNet-25 of the PyTorch code of Meta-Transfer Learning.

``yaoyao-liu/meta-transfer-learning : pytorch/models/resnet_mtl.py`` (commit ``7f71fdd``;
the network last changed in ``a43f94a``, 2020-03, which raised the blocks per stage from 3 to
4), after FEAT: a 3×3 stem convolution 3 → 80 *with* a bias, BN, ReLU; three stages of
BasicBlocks (conv3×3 → BN → ReLU → conv3×3 → BN, plus the shortcut, ReLU) of widths 160, 320
and 640, each starting with a stride-2 block whose shortcut is conv1×1 (no bias) + BN; then
the mean over the last map (the original's ``AvgPool2d(10, stride=1)`` on the 10×10 map of its
80-px input) → 640-d. ``layers=(4, 4, 4)`` gives 25 convolutions (the stem and 24 in the
blocks); ``(3, 3, 3)``, the code before ``a43f94a``, gives 19.

Submodule names are the original's (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0`` ...), so its state dicts load after the renaming of
:mod:`metakd.interop.mtl` (``mtl_weight`` → ``scale``, ``mtl_bias`` → ``shift``, the base
learner's ``fc1_w``/``fc1_b`` → ``head``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from metakd.nn.heads import Backbone, HeadKind, make_head
from metakd.nn.norm import BatchNormConfig, pop_bn_kwargs
from metakd.nn.registry import register_model
from metakd.nn.resnet import kaiming_init, make_stage
from metakd.nn.scale_shift import mtl_preset

__all__ = ["MTLResNet25", "mtl_resnet25"]


class MTLResNet25(Backbone):
    """The PyTorch MTL project's ResNet-25 (``ResNetMtl``), 80 px → 640-d.

    Reference: Sun, Liu, Chua, Schiele, "Meta-Transfer Learning for Few-Shot Learning", CVPR
    2019; the network of ``yaoyao-liu/meta-transfer-learning : pytorch/models/resnet_mtl.py``
    (FEAT-style). The pre-training phase uses it as is (``mtl=False`` there); the meta phase
    has every convolution scale-shifted: :func:`metakd.nn.mtl_preset` with
    ``"mtl_pytorch"`` (or the factory's ``preset="mtl_pytorch"``) makes the same network with
    the same trainable parameters.

    Args:
        layers: BasicBlocks per stage ((4, 4, 4); the code before March 2020: (3, 3, 3)).
        channels: the stage widths; the stem has ``channels[0] // 2`` (80).
        num_classes: classes of the head (0: feature extractor).
        in_channels: image channels.
        head: ``"linear"``, ``"cosine"`` or ``None``.
        bn: BatchNorm settings (default ``mode="running"``, as ``nn.BatchNorm2d``).

    Shapes:
        ``[B, 3, 80, 80]`` → map ``[B, 640, 10, 10]`` → features ``[B, 640]`` → ``[B, N]``.

    Example:
        >>> import torch
        >>> net = MTLResNet25((1, 1, 1), channels=(8, 16, 32), num_classes=5)
        >>> net(torch.randn(2, 3, 20, 20)).shape, net.conv1.bias is not None
        (torch.Size([2, 5]), True)
    """

    def __init__(
        self,
        layers: Sequence[int] = (4, 4, 4),
        channels: Sequence[int] = (160, 320, 640),
        *,
        num_classes: int = 5,
        in_channels: int = 3,
        head: HeadKind | None = "linear",
        bn: BatchNormConfig | None = None,
    ) -> None:
        super().__init__()
        if len(layers) != 3 or len(channels) != 3 or min(layers) < 1:
            raise ValueError(f"MTLResNet25 needs 3 stages of >= 1 block, got layers="
                             f"{list(layers)}, channels={list(channels)}")
        bn = bn or BatchNormConfig(mode="running")
        stem = int(channels[0]) // 2
        self.layers = tuple(int(n) for n in layers)
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=True)
        self.bn1 = bn.build(stem)
        c_in = stem
        stages = []
        for n, c in zip(self.layers, channels):
            stages.append(make_stage(c_in, int(c), n, 2, bn))
            c_in = int(c)
        self.layer1, self.layer2, self.layer3 = stages
        self.feature_dim = int(channels[-1])
        self.head = make_head(head, self.feature_dim, num_classes)
        kaiming_init(self)

    def feature_map(self, x: Tensor) -> Tensor:
        """The last feature map ``[B, channels[-1], h, w]``."""
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def features(self, x: Tensor) -> Tensor:
        """Embedding ``[B, feature_dim]`` of images ``[B, C, H, W]``."""
        return self.feature_map(x).mean(dim=(-2, -1))


@register_model
def mtl_resnet25(
    *, layers: Sequence[int] = (4, 4, 4), preset: str | None = None, **kwargs: Any
) -> MTLResNet25:
    """The PyTorch MTL project's ResNet-25 (80 px, running batch norm).

    ``preset`` (``"mtl_pytorch"`` or ``"mtl_tf"``) applies :func:`metakd.nn.mtl_preset`: the
    meta phase's network, whose ``state_dict`` holds the scale and shift parameters.

    Example:
        >>> net = mtl_resnet25(layers=(1, 1, 1), channels=(8, 16, 32), preset="mtl_pytorch")
        >>> type(net.layer1[0].downsample[0]).__name__, net.conv1.shift.shape
        ('ScaleShiftConv2d', torch.Size([4]))
    """
    bn = pop_bn_kwargs(kwargs, BatchNormConfig(mode="running"))
    model = MTLResNet25(layers, bn=bn, **kwargs)
    if preset is not None:
        mtl_preset(model, preset)
    return model
