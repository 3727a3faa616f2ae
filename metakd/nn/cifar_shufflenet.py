"""CIFAR ShuffleNets V1 and V2, students of the distillation literature.

Registered names: ``ShuffleV1`` and ``ShuffleV2`` (mdistiller's names).

``ShuffleV1`` (Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network
for Mobile Devices", CVPR 2018; as adapted to CIFAR in ``megvii-research/mdistiller :
mdistiller/models/cifar/ShuffleNetv1.py`` at commit ``a08d46f``): a 1×1 stem conv to 24
channels → BN → ReLU at full resolution, three stages of 4, 8, 4 :class:`ShuffleV1Block`\\ s
(3 groups) of widths 240, 480, 960, the first of each with stride 2 and an average-pooled
shortcut concatenated to the branch, then the mean over H×W (the reference's 4×4 average pool
at 32 px) and a linear classifier.

``ShuffleV2`` (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
Design", ECCV 2018; ``mdistiller/models/cifar/ShuffleNetv2.py``, net size 1): the same stem,
three stages of one :class:`ShuffleV2DownBlock` and 3, 7, 3 :class:`ShuffleV2Block`\\ s of
widths 116, 232, 464, a 1×1 conv to 1024 → BN → ReLU, the mean over H×W and a linear
classifier.

The state-dict keys are mdistiller's (``layer1.0.conv1.weight``, ``layer2.0.bn5.running_var``)
but for the classifier: ``linear.*`` there, ``head.*`` here
(:func:`metakd.nn.original_key_map`). As in the reference, the weights keep PyTorch's default
initialisation.

Both factories take the common arguments of :class:`~metakd.nn.Backbone`, with ``num_classes``
default 100 and BN ``mode="running"`` by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakd.nn.blocks import conv1x1
from metakd.nn.heads import Backbone, HeadKind, make_head
from metakd.nn.norm import BatchNormConfig, pop_bn_kwargs
from metakd.nn.registry import register_model

__all__ = [
    "CifarShuffleNetV1",
    "CifarShuffleNetV2",
    "ShuffleV1Block",
    "ShuffleV2Block",
    "ShuffleV2DownBlock",
    "channel_shuffle",
    "shufflev1",
    "shufflev2",
]

_MDISTILLER = {"linear.": "head."}  # the classifier's name in mdistiller's code
_STEM = 24


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` groups: ``[B, g·m, H, W]``, channel ``i·m + j``
    goes to ``j·g + i``.

    Example:
        >>> channel_shuffle(torch.arange(6.0).view(1, 6, 1, 1), 2).flatten().tolist()
        [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    """
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)


class ShuffleV1Block(nn.Module):
    """ShuffleNet's unit: grouped 1×1 conv → BN → ReLU → channel shuffle → depthwise 3×3
    (stride) → BN → grouped 1×1 conv → BN, then ReLU of the sum with the input (stride 1) or
    of the concatenation with the 3×3 average-pooled input (stride 2).

    The bottleneck width is ``channels // 4``. As in the reference, the first 1×1 conv is not
    grouped when the input is the 24-channel stem.

    Args:
        in_channels: input channels.
        channels: output channels of the branch (stride 2: the block outputs
            ``channels + in_channels``).
        stride: 1 or 2.
        groups: groups of the 1×1 convs.
        bn: BatchNorm settings.

    Example:
        >>> block = ShuffleV1Block(240, 240, 2, 3, BatchNormConfig())
        >>> block(torch.randn(2, 240, 8, 8)).shape
        torch.Size([2, 480, 4, 4])
    """

    def __init__(
        self, in_channels: int, channels: int, stride: int, groups: int, bn: BatchNormConfig
    ) -> None:
        super().__init__()
        if stride not in (1, 2) or (stride == 1 and in_channels != channels):
            raise ValueError("stride 1 needs in_channels == channels; stride must be 1 or 2")
        mid = channels // 4
        self.stride = stride
        self.first_groups = 1 if in_channels == _STEM else groups
        self.conv1 = nn.Conv2d(in_channels, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = bn.build(mid)
        self.conv2 = _depthwise(mid, stride)
        self.bn2 = bn.build(mid)
        self.conv3 = nn.Conv2d(mid, channels, 1, groups=groups, bias=False)
        self.bn3 = bn.build(channels)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1))
        return F.relu(out + x)


class CifarShuffleNetV1(Backbone):
    """ShuffleNet V1 for 32-px images (1×1 stem, no stem stride or pool; 32 → 16 → 8 → 4).

    Reference: Zhang et al., CVPR 2018; the CIFAR layout and names of
    ``mdistiller/models/cifar/ShuffleNetv1.py`` (commit ``a08d46f``). ``features`` is
    mdistiller's ``feats["pooled_feat"]``.

    Takes the common arguments ``num_classes`` (default 100), ``in_channels``, ``head`` and
    ``bn`` (default ``mode="running"``) of :class:`~metakd.nn.Backbone`.

    Args:
        widths: output widths of the three stages.
        blocks: blocks per stage.
        groups: groups of the 1×1 convs.

    Shapes:
        ``[B, 3, 32, 32]`` → map ``[B, 960, 4, 4]`` → features ``[B, 960]`` → logits ``[B, N]``.

    Example:
        >>> CifarShuffleNetV1(num_classes=100)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """

    def __init__(
        self,
        widths: Sequence[int] = (240, 480, 960),
        blocks: Sequence[int] = (4, 8, 4),
        groups: int = 3,
        *,
        num_classes: int = 100,
        in_channels: int = 3,
        head: HeadKind | None = "linear",
        bn: BatchNormConfig | None = None,
    ) -> None:
        super().__init__()
        if len(widths) != 3 or len(blocks) != 3 or min(blocks) < 1:
            raise ValueError(f"need 3 stages of >= 1 block, got {list(widths)}, {list(blocks)}")
        bn = bn or BatchNormConfig(mode="running")
        self.conv1 = conv1x1(in_channels, _STEM)
        self.bn1 = bn.build(_STEM)
        c_in, stages = _STEM, []
        for width, n in zip(widths, blocks):
            layers = [ShuffleV1Block(c_in, width - c_in, 2, groups, bn)]
            layers += [ShuffleV1Block(width, width, 1, groups, bn) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            c_in = width
        self.layer1, self.layer2, self.layer3 = stages
        self.feature_dim = widths[-1]
        self.head = make_head(head, self.feature_dim, num_classes)

    def feature_map(self, x: Tensor) -> Tensor:
        """The last feature map ``[B, 960, H/8, W/8]``."""
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def features(self, x: Tensor) -> Tensor:
        """Embedding ``[B, 960]`` of images ``[B, C, H, W]``."""
        return self.feature_map(x).mean(dim=(-2, -1))


class ShuffleV2Block(nn.Module):
    """ShuffleNet V2's basic unit: split the channels in halves, keep the first, pass the
    second through 1×1 conv → BN → ReLU → depthwise 3×3 → BN → 1×1 conv → BN → ReLU,
    concatenate and shuffle (2 groups).

    Args:
        channels: input and output channels (even).
        bn: BatchNorm settings.

    Example:
        >>> ShuffleV2Block(116, BatchNormConfig())(torch.randn(2, 116, 8, 8)).shape
        torch.Size([2, 116, 8, 8])
    """

    def __init__(self, channels: int, bn: BatchNormConfig) -> None:
        super().__init__()
        half = channels // 2
        self.split = half
        self.conv1 = conv1x1(half, half)
        self.bn1 = bn.build(half)
        self.conv2 = _depthwise(half, 1)
        self.bn2 = bn.build(half)
        self.conv3 = conv1x1(half, half)
        self.bn3 = bn.build(half)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        kept, x = x[:, : self.split], x[:, self.split :]
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([kept, out], 1), 2)


class ShuffleV2DownBlock(nn.Module):
    """ShuffleNet V2's stride-2 unit: two branches of ``channels // 2`` each, concatenated and
    shuffled (2 groups).

    Left: depthwise 3×3 (stride 2) → BN → 1×1 conv → BN → ReLU (``conv1, bn1, conv2, bn2``).
    Right: 1×1 conv → BN → ReLU → depthwise 3×3 (stride 2) → BN → 1×1 conv → BN → ReLU
    (``conv3`` … ``bn5``).

    Args:
        in_channels: input channels.
        channels: output channels (even).
        bn: BatchNorm settings.

    Example:
        >>> ShuffleV2DownBlock(24, 116, BatchNormConfig())(torch.randn(2, 24, 8, 8)).shape
        torch.Size([2, 116, 4, 4])
    """

    def __init__(self, in_channels: int, channels: int, bn: BatchNormConfig) -> None:
        super().__init__()
        mid = channels // 2
        self.conv1 = _depthwise(in_channels, 2)
        self.bn1 = bn.build(in_channels)
        self.conv2 = conv1x1(in_channels, mid)
        self.bn2 = bn.build(mid)
        self.conv3 = conv1x1(in_channels, mid)
        self.bn3 = bn.build(mid)
        self.conv4 = _depthwise(mid, 2)
        self.bn4 = bn.build(mid)
        self.conv5 = conv1x1(mid, mid)
        self.bn5 = bn.build(mid)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class CifarShuffleNetV2(Backbone):
    """ShuffleNet V2 for 32-px images (1×1 stem, no stem stride or pool; 32 → 16 → 8 → 4).

    Reference: Ma et al., ECCV 2018; the CIFAR layout and names of
    ``mdistiller/models/cifar/ShuffleNetv2.py`` (commit ``a08d46f``, net size 1).
    ``features`` is mdistiller's ``feats["pooled_feat"]``.

    Takes the common arguments ``num_classes`` (default 100), ``in_channels``, ``head`` and
    ``bn`` (default ``mode="running"``) of :class:`~metakd.nn.Backbone`.

    Args:
        widths: widths of the three stages and of the last 1×1 conv.
        blocks: basic blocks per stage (after its down-sampling block).

    Shapes:
        ``[B, 3, 32, 32]`` → map ``[B, 1024, 4, 4]`` → features ``[B, 1024]`` → ``[B, N]``.

    Example:
        >>> CifarShuffleNetV2(num_classes=100)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """

    def __init__(
        self,
        widths: Sequence[int] = (116, 232, 464, 1024),
        blocks: Sequence[int] = (3, 7, 3),
        *,
        num_classes: int = 100,
        in_channels: int = 3,
        head: HeadKind | None = "linear",
        bn: BatchNormConfig | None = None,
    ) -> None:
        super().__init__()
        if len(widths) != 4 or len(blocks) != 3:
            raise ValueError(f"need 4 widths and 3 stages, got {list(widths)}, {list(blocks)}")
        bn = bn or BatchNormConfig(mode="running")
        self.conv1 = conv1x1(in_channels, _STEM)
        self.bn1 = bn.build(_STEM)
        c_in, stages = _STEM, []
        for width, n in zip(widths[:3], blocks):
            layers: list[nn.Module] = [ShuffleV2DownBlock(c_in, width, bn)]
            layers += [ShuffleV2Block(width, bn) for _ in range(n)]
            stages.append(nn.Sequential(*layers))
            c_in = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = conv1x1(c_in, widths[3])
        self.bn2 = bn.build(widths[3])
        self.feature_dim = widths[3]
        self.head = make_head(head, self.feature_dim, num_classes)

    def feature_map(self, x: Tensor) -> Tensor:
        """The last feature map ``[B, 1024, H/8, W/8]``, after the 1×1 conv → BN → ReLU."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return F.relu(self.bn2(self.conv2(x)))

    def features(self, x: Tensor) -> Tensor:
        """Embedding ``[B, 1024]`` of images ``[B, C, H, W]``."""
        return self.feature_map(x).mean(dim=(-2, -1))


@register_model(family="cifar", name="ShuffleV1", original_keys=_MDISTILLER)
def shufflev1(**kwargs: Any) -> CifarShuffleNetV1:
    """mdistiller's ``ShuffleV1`` student (widths 240-480-960, blocks 4-8-4, 3 groups);
    949,258 params at 100 classes.

    Example:
        >>> shufflev1()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """
    bn = pop_bn_kwargs(kwargs, BatchNormConfig(mode="running"))
    return CifarShuffleNetV1(bn=bn, **kwargs)


@register_model(family="cifar", name="ShuffleV2", original_keys=_MDISTILLER)
def shufflev2(**kwargs: Any) -> CifarShuffleNetV2:
    """mdistiller's ``ShuffleV2`` student (net size 1: widths 116-232-464, 1024; blocks
    3-7-3); 1,355,528 params at 100 classes.

    Example:
        >>> shufflev2()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """
    bn = pop_bn_kwargs(kwargs, BatchNormConfig(mode="running"))
    return CifarShuffleNetV2(bn=bn, **kwargs)
