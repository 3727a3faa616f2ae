"""Few-shot ResNets: ResNet-12 (Meta-Baseline), the GDA "bottle" family, ResNet-10/18
(PMAML/FEAT) and the TF ResNet-12 of Meta-Transfer Learning.

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
``resnet10``, ``resnet18``
    PMAML's ``meta_backbones/resnet18.py`` after FEAT: 3×3 stem conv (stride 1, no bias) +
    BN + ReLU, no stem pool, BasicBlocks [1,1,1,1] / [2,2,2,2], planes 64-128-256-512,
    strides 1/2/2/2, mean over H×W → 512-d. 84 px → 11×11.
``mtl_resnet12``
    The TF ResNet-12 of Meta-Transfer Learning (Sun et al., CVPR 2019;
    ``tensorflow/models/resnet12.py``): per block 3 × [conv3x3 SAME + bias → BN → LeakyReLU
    0.1], a bare 1×1 conv shortcut added, maxpool 2×2, dropout; 84 px → 5×5 → 512-d. BN as
    TF: β only, eps 1e-3, transductive.

All use Kaiming-normal (fan_out) conv init and BN γ=1, β=0, except ``mtl_resnet12``
(Xavier-uniform, TF). BN defaults to ``mode="running"`` (standard pre-training), except
``mtl_resnet12``. Every factory accepts ``num_classes`` (default 5; 0 = feature
extractor), ``in_channels``, ``head`` (``"linear"``, ``"cosine"`` or ``None``) and the BN
options ``bn_mode``, ``bn_affine``, ``bn_scale``, ``bn_eps``, ``bn_momentum``, ``bn_steps``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch.nn.functional as F
from torch import Tensor, nn

from metakd.nn.heads import Backbone, HeadKind, make_head
from metakd.nn.norm import BatchNormConfig, pop_bn_kwargs
from metakd.nn.registry import register_model

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

_RUNNING_BN = BatchNormConfig(mode="running")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """3×3 convolution with padding 1."""
    return nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=bias)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """1×1 convolution."""
    return nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=bias)


def kaiming_init(net: nn.Module) -> None:
    """Kaiming-normal (fan_out, gain √2) conv weights; BN γ=1, β=0 (already the default)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


# ---------------------------------------------------------------------------------------------
# Meta-Baseline ResNet-12 and the GDA "bottle" family


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
        return F.max_pool2d(out, 2) if self.pool else out


class _GAPResNet(Backbone):
    """Shared ``features``: ``layer1..4`` → mean over H×W."""

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


class ResNet12(_GAPResNet):
    """Meta-Baseline's ResNet-12: four :class:`ResNet12Block` with shortcut and pool.

    Reference: Chen et al., "Meta-Baseline: Exploring Simple Meta-Learning for Few-Shot
    Learning", ICCV 2021 (``yinboc/few-shot-meta-baseline : models/resnet12.py``).

    Args:
        channels: the four block widths (64-128-256-512; wide 64-160-320-640).
        num_classes: classes of the head (0: feature extractor).
        in_channels: image channels.
        head: ``"linear"``, ``"cosine"`` or ``None``.
        bn: BatchNorm settings (default ``mode="running"``).
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
        bn: BatchNormConfig = _RUNNING_BN,
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


class BottleResNet(_GAPResNet):
    """GDA/W2S ``ResNet(layers)``: Meta-Baseline blocks, ``layers[s]`` per stage.

    Stage s = one block (conv1x1+BN shortcut, MaxPool2d(2)) followed by ``layers[s] - 1``
    blocks with identity shortcut and no pool. "bottle" is GDA's name; the blocks are not
    bottlenecks. ``layers=(1, 1, 1, 1)`` computes the same function as :class:`ResNet12`.

    Reference: ``zhiweihu1103/Logit-Distillation-GDA : Few-shot Learning/models/resnet.py``
    (identical to ``ggjy/vision_weak_to_strong``).

    Args:
        layers: blocks per stage.
        channels: stage widths.
        num_classes: classes of the head (0: feature extractor).
        in_channels: image channels.
        head: ``"linear"``, ``"cosine"`` or ``None``.
        bn: BatchNorm settings (default ``mode="running"``).

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
        bn: BatchNormConfig = _RUNNING_BN,
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
# PMAML / FEAT ResNet-10 and ResNet-18


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


class ResNet(_GAPResNet):
    """ResNet-10/18 of PMAML and FEAT (3×3 stem, no stem pool, BasicBlocks, GAP).

    Reference: ``remiMZ/PMAML-ECAI20 : meta_backbones/resnet18.py`` after FEAT's ``res18``
    (Ye et al., "Few-Shot Learning via Embedding Adaptation with Set-to-Set Functions", CVPR
    2020).

    Args:
        layers: BasicBlocks per stage ([1,1,1,1] ResNet-10, [2,2,2,2] ResNet-18).
        width: stem and first-stage width; the stages use ``width·(1, 2, 4, 8)``.
        num_classes: classes of the head (0: feature extractor).
        in_channels: image channels.
        head: ``"linear"``, ``"cosine"`` or ``None``.
        bn: BatchNorm settings (default ``mode="running"``).

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
        bn: BatchNormConfig = _RUNNING_BN,
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


# ---------------------------------------------------------------------------------------------
# Meta-Transfer Learning TF ResNet-12


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
        out = F.max_pool2d(out + self.shortcut(x), 2)
        if self.drop > 0:
            out = F.dropout(out, self.drop, self.training)
        return out


class MTLResNet12(_GAPResNet):
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

    Args:
        channels: block widths.
        num_classes: classes of the head (0: feature extractor).
        in_channels: image channels.
        head: ``"linear"``, ``"cosine"`` or ``None``.
        drop_rate: dropout after each block (TF pre-training: 0.1).
        bn: BatchNorm settings (default TF: transductive, β only, eps 1e-3).

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
        bn = bn or BatchNormConfig(mode="transductive", affine=True, scale=False, eps=1e-3)
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


# ---------------------------------------------------------------------------------------------
# Factories


M = TypeVar("M", bound=nn.Module)


def _build(
    cls: type[M], args: tuple[Any, ...], kwargs: dict[str, Any], bn_default: BatchNormConfig
) -> M:
    """``cls(*args, bn=<bn_* kwargs folded into a config>, **other kwargs)``."""
    bn = pop_bn_kwargs(kwargs, bn_default)
    return cls(*args, bn=bn, **kwargs)


@register_model
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
    return _build(ResNet12, (channels,), kwargs, _RUNNING_BN)


@register_model
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
    return _build(ResNet12, (channels,), {**kwargs, "pool": False}, _RUNNING_BN)


@register_model
def resnet12_bottle(**kwargs: Any) -> BottleResNet:
    """GDA ``resnet12_bottle``: blocks [1,1,1,1] (same function as ``resnet12``)."""
    return _build(BottleResNet, ((1, 1, 1, 1),), kwargs, _RUNNING_BN)


@register_model
def resnet18_bottle(**kwargs: Any) -> BottleResNet:
    """GDA ``resnet18_bottle``: blocks [1,2,2,1] (18 3×3 convs)."""
    return _build(BottleResNet, ((1, 2, 2, 1),), kwargs, _RUNNING_BN)


@register_model
def resnet36_bottle(**kwargs: Any) -> BottleResNet:
    """GDA ``resnet36_bottle``: blocks [2,3,5,2] (36 3×3 convs)."""
    return _build(BottleResNet, ((2, 3, 5, 2),), kwargs, _RUNNING_BN)


@register_model
def resnet50_bottle(**kwargs: Any) -> BottleResNet:
    """GDA ``resnet50_bottle``: blocks [3,4,6,3] (48 3×3 convs despite the name).

    Not mdistiller's CIFAR ``ResNet50`` (registered as ``ResNet50``, a bottleneck ResNet-50 of
    23.7M parameters, :class:`metakd.nn.CifarBottleneckResNet`).
    """
    return _build(BottleResNet, ((3, 4, 6, 3),), kwargs, _RUNNING_BN)


@register_model
def resnet10(**kwargs: Any) -> ResNet:
    """PMAML/FEAT ResNet-10: BasicBlocks [1,1,1,1], 3×3 stem, GAP → 512."""
    return _build(ResNet, ((1, 1, 1, 1),), kwargs, _RUNNING_BN)


@register_model
def resnet18(**kwargs: Any) -> ResNet:
    """PMAML/FEAT ResNet-18: BasicBlocks [2,2,2,2], 3×3 stem, GAP → 512.

    Example:
        >>> resnet18(num_classes=5)(torch.randn(2, 3, 84, 84)).shape
        torch.Size([2, 5])
    """
    return _build(ResNet, ((2, 2, 2, 2),), kwargs, _RUNNING_BN)


@register_model
def mtl_resnet12(*, preset: str | None = None, **kwargs: Any) -> MTLResNet12:
    """Meta-Transfer Learning's TF ResNet-12 (84 px, β-only transductive BN).

    ``preset`` (``"mtl_tf"`` or ``"mtl_pytorch"``) applies :func:`metakd.nn.mtl_preset`: the
    meta phase's network, whose ``state_dict`` holds the scale and shift parameters.
    """
    from metakd.nn.scale_shift import mtl_preset

    default = BatchNormConfig(mode="transductive", affine=True, scale=False, eps=1e-3)
    model = _build(MTLResNet12, (), kwargs, default)
    if preset is not None:
        mtl_preset(model, preset)
    return model
