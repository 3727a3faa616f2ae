"""The CIFAR MobileNetV2 of the distillation literature (half width).

Registered name: ``MobileNetV2`` (mdistiller's name for its ``mobile_half``: expansion 6,
width multiplier 0.5).

Layout (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018;
as adapted to CIFAR in ``megvii-research/mdistiller : mdistiller/models/cifar/mobilenetv2.py``
at commit ``a08d46f``): a 3×3 stride-2 stem conv → BN → ReLU, seven stages of
:class:`InvertedResidual` blocks (expansion t, width c, n blocks, first stride s:
``(1,16,1,1) (t,24,2,1) (t,32,3,2) (t,64,4,2) (t,96,3,1) (t,160,3,2) (t,320,1,1)``, widths
times the multiplier), a 1×1 conv to 1280 → BN → ReLU, the mean over H×W (the reference's 2×2
average pool of the 2×2 map at 32 px) and a linear classifier. Unlike torchvision's, every
block has its 1×1 expansion conv, also at t = 1.

The state-dict keys are mdistiller's (``conv1.0.weight``, ``blocks.2.0.conv.3.weight``,
``conv2.1.running_var``) but for the classifier: ``classifier.0.*`` there, ``head.*`` here
(:func:`metakd.nn.original_key_map`). The initialisation is the reference's: convolutions
normal with std ``sqrt(2 / (k·k·out))``, BN γ=1, β=0, the classifier normal with std 0.01 and
bias 0.

The factory takes the common arguments of :class:`~metakd.nn.Backbone`, with ``num_classes``
default 100 and BN ``mode="running"`` by default; also ``expand_ratio`` (6) and
``width_mult`` (0.5).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from metakd.nn.blocks import conv1x1, kaiming_init
from metakd.nn.heads import Backbone, HeadKind, make_head
from metakd.nn.norm import BatchNormConfig, pop_bn_kwargs
from metakd.nn.registry import register_model

__all__ = ["CifarMobileNetV2", "InvertedResidual", "mobilenetv2"]

_MDISTILLER = {"classifier.0.": "head."}  # the classifier's name in mdistiller's code

# (expansion, width, blocks, stride of the first block); expansion None: the model's
_STAGES: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """MobileNetV2's inverted residual block, in ``self.conv`` (an ``nn.Sequential``).

    ``conv1x1 → BN → ReLU → depthwise conv3x3 (stride) → BN → ReLU → conv1x1 → BN`` (no
    activation at the end), plus the input when ``stride == 1`` and the width is kept.

    Args:
        in_channels: input channels.
        channels: output channels.
        stride: stride of the depthwise conv (1 or 2).
        expand_ratio: hidden width = ``in_channels * expand_ratio``.
        bn: BatchNorm settings.

    Shapes:
        ``[B, in, H, W]`` → ``[B, channels, H/stride, W/stride]``.

    Example:
        >>> block = InvertedResidual(16, 16, 1, 6, BatchNormConfig())
        >>> block(torch.randn(2, 16, 8, 8)).shape, block.use_residual
        (torch.Size([2, 16, 8, 8]), True)
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int,
        expand_ratio: int,
        bn: BatchNormConfig,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == channels
        self.conv = nn.Sequential(
            conv1x1(in_channels, hidden),
            bn.build(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            bn.build(hidden),
            nn.ReLU(),
            conv1x1(hidden, channels),
            bn.build(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        out = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(Backbone):
    """MobileNetV2 for 32-px images (stride-2 stem; 32 → 16 → 8 → 4 → 2).

    Reference: Sandler et al., CVPR 2018; the CIFAR layout, names and initialisation of
    ``mdistiller/models/cifar/mobilenetv2.py`` (commit ``a08d46f``), whose ``mobile_half``
    (``expand_ratio=6, width_mult=0.5``) is mdistiller's ``MobileNetV2`` student.
    ``features`` is mdistiller's ``feats["pooled_feat"]``.

    Takes the common arguments ``num_classes`` (default 100), ``in_channels``, ``head`` and
    ``bn`` (default ``mode="running"``) of :class:`~metakd.nn.Backbone`.

    Args:
        expand_ratio: expansion t of the blocks after the first stage.
        width_mult: multiplier of the stem and stage widths (the last conv keeps 1280
            channels unless ``width_mult > 1``).

    Shapes:
        ``[B, 3, 32, 32]`` → map ``[B, 1280, 2, 2]`` → features ``[B, 1280]`` → ``[B, N]``.

    Example:
        >>> net = CifarMobileNetV2(num_classes=100)
        >>> net(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """

    def __init__(
        self,
        expand_ratio: int = 6,
        width_mult: float = 0.5,
        *,
        num_classes: int = 100,
        in_channels: int = 3,
        head: HeadKind | None = "linear",
        bn: BatchNormConfig | None = None,
    ) -> None:
        super().__init__()
        if expand_ratio < 1 or width_mult <= 0:
            raise ValueError(f"need expand_ratio >= 1 and width_mult > 0, got {expand_ratio}, "
                             f"{width_mult}")
        bn = bn or BatchNormConfig(mode="running")
        width = int(32 * width_mult)
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 2, 1, bias=False), bn.build(width), nn.ReLU()
        )
        stages = []
        for t, c, n, s in _STAGES:
            channels = int(c * width_mult)
            blocks = []
            for i in range(n):
                ratio = expand_ratio if t is None else t
                blocks.append(InvertedResidual(width, channels, s if i == 0 else 1, ratio, bn))
                width = channels
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(stages)
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = nn.Sequential(conv1x1(width, last), bn.build(last), nn.ReLU())
        self.feature_dim = last
        self.head = make_head(head, self.feature_dim, num_classes)
        kaiming_init(self)
        if isinstance(self.head, nn.Linear):
            nn.init.normal_(self.head.weight, 0.0, 0.01)
            nn.init.zeros_(self.head.bias)

    def feature_map(self, x: Tensor) -> Tensor:
        """The last feature map ``[B, 1280, H/16, W/16]``, after the 1×1 conv → BN → ReLU."""
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return self.conv2(x)

    def features(self, x: Tensor) -> Tensor:
        """Embedding ``[B, 1280]`` of images ``[B, C, H, W]``."""
        return self.feature_map(x).mean(dim=(-2, -1))


@register_model(family="cifar", name="MobileNetV2", original_keys=_MDISTILLER)
def mobilenetv2(**kwargs: Any) -> CifarMobileNetV2:
    """mdistiller's ``MobileNetV2`` student (its ``mobile_half``: t=6, width 0.5); 812,836
    params at 100 classes.

    Example:
        >>> mobilenetv2(num_classes=100)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """
    bn = pop_bn_kwargs(kwargs, BatchNormConfig(mode="running"))
    return CifarMobileNetV2(bn=bn, **kwargs)
