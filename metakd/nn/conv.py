"""The MAML family of small convolutional backbones.

Registered names (all ``Backbone``s: ``forward(x) = head(features(x))``):

``conv1``, ``conv2``, ``conv4``, ``conv6``, ``conv8`` (this module)
    The PMAML / Torchmeta conv blocks (Zhang et al., "Knowledge Distillation for
    Model-Agnostic Meta-Learning", ECAI 2020): ``conv3x3(pad 1, bias) → BN → ReLU →
    MaxPool2d(2)``. Conv-6/Conv-8 add 2/4 blocks without pooling after the fourth.
    ``head="gap"`` (PMAML: mean over H×W, ``hidden``-d) or ``"flatten"`` (MAML literature:
    ``hidden·s·s``-d, needs ``image_size``). BN defaults to transductive with γ and β.
``maml_omniglot``, ``maml_miniimagenet``, ``maml_pytorch_omniglot``, ``maml_pytorch_miniimagenet``
    The reference networks of cbfinn's TF MAML and of dragen1860/MAML-Pytorch, defined in
    :mod:`metakd.nn.maml_conv` and importable from here.

Every factory takes the common arguments of :class:`~metakd.nn.Backbone` (``num_classes``
default 5); each states its BN default. :class:`ConvNet` and :class:`TFSamePad2d` are defined
in :mod:`metakd.nn.convnet`.
"""

from __future__ import annotations

from typing import Any

from metakd.nn.convnet import ConvNet, Embedding, TFSamePad2d, check_size, conv_block, stack_blocks
from metakd.nn.heads import make_head
from metakd.nn.maml_conv import (
    maml_miniimagenet,
    maml_omniglot,
    maml_pytorch_miniimagenet,
    maml_pytorch_omniglot,
)
from metakd.nn.norm import BatchNormConfig, pop_bn_kwargs
from metakd.nn.registry import register_model

__all__ = [
    "ConvNet",
    "TFSamePad2d",
    "conv1",
    "conv2",
    "conv4",
    "conv6",
    "conv8",
    "maml_miniimagenet",
    "maml_omniglot",
    "maml_pytorch_miniimagenet",
    "maml_pytorch_omniglot",
]


def _pmaml_convnet(
    depth: int,
    *,
    num_classes: int = 5,
    in_channels: int = 3,
    hidden: int = 64,
    head: Embedding | None = "gap",
    image_size: int | None = None,
    **kwargs: Any,
) -> ConvNet:
    bn = pop_bn_kwargs(kwargs, BatchNormConfig())
    if kwargs:
        raise TypeError(f"conv{depth}: unexpected arguments {sorted(kwargs)}")
    pooled = min(depth, 4)
    blocks = [
        conv_block(in_channels if i == 0 else hidden, hidden, bn, pool=2 if i < pooled else None)
        for i in range(depth)
    ]
    embedding: Embedding = "gap" if head is None else head
    if embedding == "gap":
        feature_dim = hidden
    elif embedding == "flatten":
        if image_size is None:
            raise ValueError(f'conv{depth}(head="flatten") needs image_size to size the head')
        side = image_size
        for _ in range(pooled):
            side //= 2
        feature_dim = hidden * check_size(side, f"conv{depth}") ** 2
    else:
        raise ValueError(f"conv{depth}: head must be 'gap', 'flatten' or None, got {head!r}")
    classifier = make_head(None if head is None else "linear", feature_dim, num_classes)
    return ConvNet(stack_blocks(blocks), feature_dim=feature_dim, embedding=embedding, head=classifier)


# One docstring for the five depths (``{depth}``, ``{layout}`` filled in below).
_CONV_DOC = """Conv-{depth} (PMAML/MAML conv blocks): {layout}.

    Takes the common arguments ``num_classes``, ``in_channels`` (3; 1 for Omniglot) and the BN
    options of :class:`~metakd.nn.Backbone`, BN default transductive with γ and β, eps 1e-5.
    ``head`` differs: it chooses the embedding, and the classifier is always linear.

    Args:
        hidden: filters per conv (64; MAML miniImageNet uses 32).
        head: ``"gap"`` (mean over H×W, PMAML), ``"flatten"`` (MAML literature; needs
            ``image_size``) or ``None`` (GAP features, no classifier).
        image_size: input side in pixels, for ``head="flatten"``.

    Shapes:
        ``[B, in_channels, H, W]`` → ``[B, N]``.

    Example:
        >>> net = conv{depth}(in_channels=3, head="flatten", image_size=84)
        >>> net(torch.randn(2, 3, 84, 84)).shape
        torch.Size([2, 5])
    """


@register_model(family="few-shot")
def conv1(**kwargs: Any) -> ConvNet:
    return _pmaml_convnet(1, **kwargs)


@register_model(family="few-shot")
def conv2(**kwargs: Any) -> ConvNet:
    return _pmaml_convnet(2, **kwargs)


@register_model(family="few-shot")
def conv4(**kwargs: Any) -> ConvNet:
    return _pmaml_convnet(4, **kwargs)


@register_model(family="few-shot")
def conv6(**kwargs: Any) -> ConvNet:
    return _pmaml_convnet(6, **kwargs)


@register_model(family="few-shot")
def conv8(**kwargs: Any) -> ConvNet:
    return _pmaml_convnet(8, **kwargs)


conv1.__doc__ = _CONV_DOC.format(depth=1, layout="one pooled block")
conv2.__doc__ = _CONV_DOC.format(depth=2, layout="two pooled blocks")
conv4.__doc__ = _CONV_DOC.format(depth=4, layout="four pooled blocks (84 px → 5×5, 28 px → 1×1)")
conv6.__doc__ = _CONV_DOC.format(depth=6, layout="four pooled blocks, then two without pooling")
conv8.__doc__ = _CONV_DOC.format(depth=8, layout="four pooled blocks, then four without pooling")
