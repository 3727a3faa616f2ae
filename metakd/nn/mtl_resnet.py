"""The ResNets of Meta-Transfer Learning: the TF code's ResNet-12, the PyTorch code's ResNet-25.

Both are the backbones of Sun, Liu, Chua, Schiele, "Meta-Transfer Learning for Few-Shot
Learning", CVPR 2019 (``yaoyao-liu/meta-transfer-learning``). Both factories take a ``preset``
(``"mtl_tf"`` or ``"mtl_pytorch"``) that applies :func:`metakd.nn.mtl_preset`: the meta phase's
network, whose ``state_dict`` holds the scale and shift parameters. Both take the common
arguments of :class:`~metakd.nn.Backbone` (``num_classes`` default 5).

``mtl_resnet12``
    The TF ResNet-12 (``tensorflow/models/resnet12.py``): per block 3 × [conv3x3 SAME + bias →
    BN → LeakyReLU 0.1], a bare 1×1 conv shortcut added, maxpool 2×2, dropout; 84 px → 5×5 →
    512-d. BN as TF: β only, eps 1e-3, transductive. Xavier-uniform init, biases 0.
``mtl_resnet25``
    The PyTorch ResNet-25 (``pytorch/models/resnet_mtl.py``, commit ``7f71fdd``; the network
    last changed in ``a43f94a``, 2020-03, which raised the blocks per stage from 3 to 4), after
    FEAT: a 3×3 stem convolution 3 → 80 *with* a bias, BN, ReLU; three stages of BasicBlocks
    (conv3×3 → BN → ReLU → conv3×3 → BN, plus the shortcut, ReLU) of widths 160, 320 and 640,
    each starting with a stride-2 block whose shortcut is conv1×1 (no bias) + BN; then the mean
    over the last map (the original's ``AvgPool2d(10, stride=1)`` on the 10×10 map of its
    80-px input) → 640-d. ``layers=(4, 4, 4)`` gives 25 convolutions (the stem and 24 in the
    blocks); ``(3, 3, 3)``, the code before ``a43f94a``, gives 19. Kaiming-normal (fan_out)
    init, BN ``mode="running"``.

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

from metakd.nn.blocks import (
    GAPResNet,
    build_with_bn,
    conv1x1,
    conv3x3,
    kaiming_init,
    make_stage,
)
from metakd.nn.heads import Backbone, HeadKind, make_head
from metakd.nn.norm import BatchNormConfig, pop_bn_kwargs
from metakd.nn.pool import max_pool2d
from metakd.nn.registry import register_model
from metakd.nn.scale_shift import mtl_preset

__all__ = ["MTLResNet12", "MTLResNet25", "mtl_resnet12", "mtl_resnet25"]

#: TF's ``tf.contrib.layers.batch_norm`` as the TF code uses it: β only, eps 1e-3, batch statistics.
_TF_BN = BatchNormConfig(mode="transductive", affine=True, scale=False, eps=1e-3)


class _MTLBlock(nn.Module):
    """MTL TF block: 3 × [conv3x3 + bias → BN → LeakyReLU 0.1], + 1×1 conv, maxpool."""

    def __init__(self, in_channels: int, channels: int, bn: BatchNormConfig, drop: float) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, bias=True)
        self.bn1 = bn.build(channels)
        self.conv2 = conv3x3(channels, channels, bias=True)
        self.bn2 = bn.build(channels)
        self.conv3 = conv3x3(channels, channels, bias=True)
        self.bn3 = bn.build(channels)
        self.shortcut = conv1x1(in_channels, channels)
        self.drop = drop

    def forward(self, x: Tensor) -> Tensor:
        out = F.leaky_relu(self.bn1(self.conv1(x)), 0.1)
        out = F.leaky_relu(self.bn2(self.conv2(out)), 0.1)
        out = F.leaky_relu(self.bn3(self.conv3(out)), 0.1)
        out = max_pool2d(out + self.shortcut(x), 2)
        if self.drop > 0:
            out = F.dropout(out, self.drop, self.training)
        return out


class MTLResNet12(GAPResNet):
    """The TF ResNet-12 of Meta-Transfer Learning (the paper's backbone).

    Per block: 3 × [conv3x3 SAME + bias → BN → LeakyReLU(0.1)], a bias-free 1×1 conv shortcut
    (no BN, no activation) added, maxpool 2×2 (VALID), dropout. 84→42→21→10→5, mean over 5×5
    (TF's avgpool 5×5) → 512-d. 7,994,880 encoder params. Dropout needs
    ``vmap(..., randomness="different")``; it is off by default.

    Reference: Sun, Liu, Chua, Schiele, "Meta-Transfer Learning for Few-Shot Learning",
    CVPR 2019 (``yaoyao-liu/meta-transfer-learning : tensorflow/models/resnet12.py``). After
    pre-training, :func:`metakd.nn.mtl_preset` (``"mtl_tf"`` or ``"mtl_pytorch"``) adds the
    scale/shift parameters and freezes what each official variant freezes (the TF preset
    leaves the 1×1 shortcuts plain and frozen); :func:`metakd.nn.convert_to_scale_shift` is
    the conversion alone.

    Takes the common arguments ``num_classes``, ``in_channels``, ``head`` and ``bn`` of
    :class:`~metakd.nn.Backbone` (``bn`` default TF's: transductive, β only, eps 1e-3).

    Args:
        channels: block widths.
        drop_rate: dropout after each block (TF pre-training: 0.1).

    Example:
        >>> MTLResNet12(num_classes=0)(torch.randn(2, 3, 84, 84)).shape
        torch.Size([2, 512])
    """

    def __init__(
        self,
        channels: Sequence[int] = (64, 128, 256, 512),
        *,
        num_classes: int = 5,
        in_channels: int = 3,
        head: HeadKind | None = "linear",
        drop_rate: float = 0.0,
        bn: BatchNormConfig | None = None,
    ) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"MTLResNet12 needs 4 channel widths, got {list(channels)}")
        bn = bn or _TF_BN
        widths = [in_channels, *channels]
        self.layer1 = _MTLBlock(widths[0], widths[1], bn, drop_rate)
        self.layer2 = _MTLBlock(widths[1], widths[2], bn, drop_rate)
        self.layer3 = _MTLBlock(widths[2], widths[3], bn, drop_rate)
        self.layer4 = _MTLBlock(widths[3], widths[4], bn, drop_rate)
        self.feature_dim = channels[-1]
        self.head = make_head(head, self.feature_dim, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


class MTLResNet25(Backbone):
    """The PyTorch MTL project's ResNet-25 (``ResNetMtl``), 80 px → 640-d.

    Reference: Sun, Liu, Chua, Schiele, "Meta-Transfer Learning for Few-Shot Learning", CVPR
    2019; the network of ``yaoyao-liu/meta-transfer-learning : pytorch/models/resnet_mtl.py``
    (FEAT-style). The pre-training phase uses it as is (``mtl=False`` there); the meta phase
    has every convolution scale-shifted: :func:`metakd.nn.mtl_preset` with
    ``"mtl_pytorch"`` (or the factory's ``preset="mtl_pytorch"``) makes the same network with
    the same trainable parameters.

    Takes the common arguments ``num_classes``, ``in_channels``, ``head`` and ``bn`` of
    :class:`~metakd.nn.Backbone` (``bn`` default ``mode="running"``, as ``nn.BatchNorm2d``).

    Args:
        layers: BasicBlocks per stage ((4, 4, 4); the code before March 2020: (3, 3, 3)).
        channels: the stage widths; the stem has ``channels[0] // 2`` (80).

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


@register_model(family="few-shot")
def mtl_resnet12(*, preset: str | None = None, **kwargs: Any) -> MTLResNet12:
    """Meta-Transfer Learning's TF ResNet-12 (84 px, β-only transductive BN).

    ``preset`` (``"mtl_tf"`` or ``"mtl_pytorch"``) applies :func:`metakd.nn.mtl_preset`: the
    meta phase's network, whose ``state_dict`` holds the scale and shift parameters.
    """
    model = build_with_bn(MTLResNet12, (), kwargs, _TF_BN)
    if preset is not None:
        mtl_preset(model, preset)
    return model


@register_model(family="few-shot")
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
