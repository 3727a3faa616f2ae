"""The kit of the small convolutional backbones: :class:`ConvNet`, its blocks, TF padding.

:mod:`metakd.nn.conv` (PMAML's conv-N) and :mod:`metakd.nn.maml_conv` (the MAML reference
networks) build their models from these pieces.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from metakd.nn.heads import Backbone
from metakd.nn.norm import BatchNormConfig
from metakd.nn.pool import MaxPool2d

__all__ = ["ConvNet", "Embedding", "TFSamePad2d", "conv_block", "stack_blocks"]

Embedding = Literal["gap", "flatten"]


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) along one axis: output ``ceil(size / stride)``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class TFSamePad2d(nn.Module):
    """Zero padding that makes the next ``kernel``/``stride`` conv behave like TF "SAME".

    TF puts the odd pixel at the bottom/right, so a 3×3 stride-2 conv on 28 px pads (0, 1),
    which ``nn.Conv2d(padding=1)`` does not reproduce. The padding depends only on the input
    shape.

    Shapes:
        ``[B, C, H, W]`` → ``[B, C, H + ph, W + pw]``.

    Example:
        >>> TFSamePad2d(3, 2)(torch.zeros(1, 1, 28, 28)).shape
        torch.Size([1, 1, 29, 29])
    """

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """Pad the last two dimensions of ``x``."""
        top, bottom = tf_same_padding(x.shape[-2], self.kernel_size, self.stride)
        left, right = tf_same_padding(x.shape[-1], self.kernel_size, self.stride)
        if top == bottom == left == right == 0:
            return x
        return F.pad(x, (left, right, top, bottom))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class ConvNet(Backbone):
    """A conv encoder, an embedding (mean over H×W or flatten) and a classifier head.

    The factories of :mod:`metakd.nn.conv` and :mod:`metakd.nn.maml_conv` build it; use them
    rather than this class.

    Args:
        encoder: maps ``[B, C, H, W]`` to a feature map ``[B, C', H', W']``.
        feature_dim: ``C'`` for ``"gap"``, ``C'·H'·W'`` for ``"flatten"``.
        embedding: ``"gap"`` or ``"flatten"``.
        head: the classifier, ``[B, feature_dim]`` → ``[B, N]`` (``nn.Identity`` for none).

    Example:
        >>> from metakd.nn.conv import conv4
        >>> net = conv4(num_classes=5, in_channels=1)
        >>> net(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 5])
    """

    def __init__(
        self, encoder: nn.Module, *, feature_dim: int, embedding: Embedding, head: nn.Module
    ) -> None:
        super().__init__()
        if embedding not in ("gap", "flatten"):
            raise ValueError(f"embedding must be 'gap' or 'flatten', got {embedding!r}")
        self.encoder = encoder
        self.embedding = embedding
        self.feature_dim = feature_dim
        self.head = head

    def features(self, x: Tensor) -> Tensor:
        """Embedding ``[B, feature_dim]`` of images ``[B, C, H, W]``."""
        h = self.encoder(x)
        if self.embedding == "gap":
            return h.mean(dim=(-2, -1))
        return h.flatten(1)


def conv_block(
    in_channels: int,
    out_channels: int,
    bn: BatchNormConfig,
    *,
    kernel: int = 3,
    stride: int = 1,
    padding: int | Literal["tf_same"] = 1,
    pool: int | None = 2,
    pool_stride: int = 2,
    relu_first: bool = False,
) -> nn.Sequential:
    """conv → BN → ReLU (or conv → ReLU → BN) → optional max-pool, as named submodules."""
    layers: list[tuple[str, nn.Module]] = []
    if padding == "tf_same":
        layers.append(("pad", TFSamePad2d(kernel, stride)))
        padding = 0
    layers.append(("conv", nn.Conv2d(in_channels, out_channels, kernel, stride, padding)))
    act: tuple[str, nn.Module] = ("relu", nn.ReLU())
    norm: tuple[str, nn.Module] = ("bn", bn.build(out_channels))
    layers.extend([act, norm] if relu_first else [norm, act])
    if pool is not None:
        layers.append(("pool", MaxPool2d(pool, pool_stride)))
    return nn.Sequential(OrderedDict(layers))


def stack_blocks(blocks: Sequence[nn.Module]) -> nn.Sequential:
    """The encoder: ``blocks`` as ``block1``, ``block2`` ... of an ``nn.Sequential``."""
    return nn.Sequential(OrderedDict((f"block{i + 1}", b) for i, b in enumerate(blocks)))


def out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output side of a conv or pool: ``(size + 2·padding - kernel) // stride + 1``."""
    return (size + 2 * padding - kernel) // stride + 1


def check_size(size: int, name: str) -> int:
    """``size``, or ``ValueError`` if the feature map of model ``name`` would be empty."""
    if size < 1:
        raise ValueError(f"image too small for {name}: the feature map would be empty")
    return size
