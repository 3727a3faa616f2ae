"""The MAML reference networks: cbfinn's TF MAML and dragen1860/MAML-Pytorch, layer for layer.

Registered names (:class:`~metakd.nn.ConvNet`\\ s; also importable from :mod:`metakd.nn.conv`):

``maml_omniglot``
    cbfinn's TF MAML Omniglot net (Finn et al., ICML 2017): 4 × [conv3x3 64, stride 2, TF
    "SAME" padding → BN → ReLU], 28→14→7→4→2, mean over H×W, linear 64→N. BN as TF: β
    only, eps 1e-3, transductive. Init as TF: Xavier-uniform convs, head N(0, 1), biases 0.
``maml_miniimagenet``
    cbfinn's TF miniImageNet net: 4 × [conv3x3 32 SAME → BN → ReLU → maxpool 2], 84→5,
    flatten 800 → N (Xavier init). BN as TF (β only, eps 1e-3, transductive).
``maml_pytorch_omniglot``, ``maml_pytorch_miniimagenet``
    dragen1860/MAML-Pytorch exactly: conv → ReLU → BN order, no padding, Kaiming-normal
    init; Omniglot convs stride 2 and a last 2×2 conv (91,781 params at N=5), miniImageNet
    with a stride-1 last pool (32,901 params at N=5). BN transductive with γ and β.

Every factory takes the common arguments of :class:`~metakd.nn.Backbone` (``num_classes``
default 5), with the BN default each one states; ``hidden`` sets the filters per conv and
``image_size`` (the input side) sizes a flattened head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from metakd.nn.convnet import ConvNet, check_size, conv_block, out_size, stack_blocks
from metakd.nn.heads import HeadKind, make_head
from metakd.nn.norm import BatchNormConfig, pop_bn_kwargs
from metakd.nn.registry import register_model

__all__ = [
    "maml_miniimagenet",
    "maml_omniglot",
    "maml_pytorch_miniimagenet",
    "maml_pytorch_omniglot",
]


def _bn_config(name: str, kwargs: dict[str, Any], default: BatchNormConfig) -> BatchNormConfig:
    """The BN options of ``kwargs`` (``default`` where not given); ``TypeError`` if anything
    else is left in them."""
    bn = pop_bn_kwargs(kwargs, default)
    if kwargs:
        raise TypeError(f"{name}: unexpected arguments {sorted(kwargs)}")
    return bn


def _side_after(side: int, kernel: int = 3, stride: int = 1, padding: int | str = 1,
                pool: int | None = 2, pool_stride: int = 2, relu_first: bool = False) -> int:
    """The feature-map side after one :func:`conv_block` of these keywords."""
    if padding == "tf_same":
        side = -(-side // stride)
    else:
        side = out_size(side, kernel, stride, int(padding))
    return side if pool is None else out_size(side, pool, pool_stride, 0)


def _conv_net(
    name: str,
    layout: Sequence[dict[str, Any]],
    *,
    in_channels: int,
    hidden: int,
    bn: BatchNormConfig,
    head: HeadKind | None,
    num_classes: int,
    image_size: int | None = None,
) -> ConvNet:
    """A :class:`ConvNet` of one :func:`conv_block` of ``hidden`` filters per entry of
    ``layout`` (its keywords; the first block takes ``in_channels``), named ``block1``...

    ``image_size=None``: mean over H×W, ``hidden`` features; else the map is flattened and the
    head sized from ``image_size`` (``ValueError`` from model ``name`` if the map is empty).
    """
    blocks = [
        conv_block(in_channels if i == 0 else hidden, hidden, bn, **spec)
        for i, spec in enumerate(layout)
    ]
    feature_dim = hidden
    if image_size is not None:
        side = image_size
        for spec in layout:
            side = _side_after(side, **spec)
        feature_dim = hidden * check_size(side, name) ** 2
    return ConvNet(
        stack_blocks(blocks),
        feature_dim=feature_dim,
        embedding="gap" if image_size is None else "flatten",
        head=make_head(head, feature_dim, num_classes),
    )


# ---------------------------------------------------------------------------------------------
# cbfinn/maml (TF reference)

_TF_BN = BatchNormConfig(mode="transductive", affine=True, scale=False, eps=1e-3)


def _tf_init(net: nn.Module, head_std: float | None) -> None:
    """Xavier-uniform weights and zero biases (TF ``xavier_initializer``); ``head_std`` for
    a ``tf.random_normal`` head."""
    for name, m in net.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if head_std is not None and name == "head":
                nn.init.normal_(m.weight, 0.0, head_std)
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@register_model(family="few-shot")
def maml_omniglot(
    *,
    num_classes: int = 5,
    in_channels: int = 1,
    hidden: int = 64,
    head: HeadKind | None = "linear",
    head_init: str = "normal",
    **kwargs: Any,
) -> ConvNet:
    """cbfinn's TF MAML Omniglot net, the project's benchmark backbone.

    4 × [conv3x3 ``hidden``, stride 2, TF SAME padding, bias → BN → ReLU]: 28→14→7→4→2;
    mean over the 2×2 map; linear ``hidden`` → N. Params at N=5, ``hidden=64``: 112,005
    (β-only BN, the default) or 112,261 with ``bn_scale=True``.

    Reference: Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of
    Deep Networks", ICML 2017; ``cbfinn/maml : utils.py conv_block, maml.py``.

    Common arguments (:class:`~metakd.nn.Backbone`): ``in_channels`` default 1; BN default
    TF's: ``bn_mode="transductive"``, ``bn_scale=False`` (β only), ``bn_eps=1e-3``.

    Args:
        hidden: filters per conv.
        head_init: ``"normal"``: the linear head's weights are N(0, 1), as TF's
            ``tf.random_normal`` in the reference; ``"xavier"``: Xavier-uniform like the
            convs. With N(0, 1) the initial logits are large, the first inner steps saturate
            the softmax, and meta-training starts slowly (at the reference inner-loss scale it
            can diverge); on the bundled Omniglot, 100 s of meta-training reached 80.7% with
            ``"xavier"`` against 68.5% with ``"normal"`` (5-way 1-shot, 300 test episodes).

    Shapes:
        ``[B, 1, 28, 28]`` → ``[B, N]``; ``features``: ``[B, 64]``.

    Example:
        >>> net = maml_omniglot(num_classes=20)
        >>> net(torch.randn(4, 1, 28, 28)).shape
        torch.Size([4, 20])
    """
    bn = _bn_config("maml_omniglot", kwargs, _TF_BN)
    if head_init not in ("normal", "xavier"):
        raise ValueError(f"maml_omniglot: head_init must be 'normal' or 'xavier', got {head_init!r}")
    layout = [{"stride": 2, "padding": "tf_same", "pool": None}] * 4
    net = _conv_net("maml_omniglot", layout, in_channels=in_channels, hidden=hidden, bn=bn,
                    head=head, num_classes=num_classes)
    _tf_init(net, head_std=1.0 if head_init == "normal" else None)
    return net


@register_model(family="few-shot")
def maml_miniimagenet(
    *,
    num_classes: int = 5,
    in_channels: int = 3,
    hidden: int = 32,
    image_size: int = 84,
    head: HeadKind | None = "linear",
    **kwargs: Any,
) -> ConvNet:
    """cbfinn's TF MAML miniImageNet net.

    4 × [conv3x3 ``hidden`` SAME, bias → BN → ReLU → maxpool 2×2 s2]: 84→42→21→10→5;
    flatten 32·5·5 = 800 → linear N (Xavier). Params at N=5: 32,773 (β-only BN, the default)
    or 32,901 with ``bn_scale=True`` (then it is also the Meta-LSTM learner of Ravi &
    Larochelle, with ``bn_mode="running", bn_eps=1e-3``).

    Reference: Finn et al., ICML 2017; ``cbfinn/maml : maml.py`` (``max_pool=True``).

    Common arguments (:class:`~metakd.nn.Backbone`): BN default TF's (transductive, β only,
    eps 1e-3).

    Args:
        hidden: filters per conv.
        image_size: input side, to size the head.

    Shapes:
        ``[B, 3, 84, 84]`` → ``[B, N]``; ``features``: ``[B, 800]``.

    Example:
        >>> maml_miniimagenet()(torch.randn(2, 3, 84, 84)).shape
        torch.Size([2, 5])
    """
    bn = _bn_config("maml_miniimagenet", kwargs, _TF_BN)
    layout: list[dict[str, Any]] = [{}] * 4  # conv3x3 p1 (SAME at stride 1), maxpool 2
    net = _conv_net("maml_miniimagenet", layout, in_channels=in_channels, hidden=hidden, bn=bn,
                    head=head, num_classes=num_classes, image_size=image_size)
    _tf_init(net, head_std=None)
    return net


# ---------------------------------------------------------------------------------------------
# dragen1860/MAML-Pytorch

_DRAGEN_BN = BatchNormConfig(mode="transductive", affine=True, scale=True, eps=1e-5)


def _kaiming_init(net: nn.Module) -> None:
    """``kaiming_normal_`` (fan_in, gain √2) weights and zero biases, as ``learner.py``."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@register_model(family="few-shot")
def maml_pytorch_omniglot(
    *,
    num_classes: int = 5,
    in_channels: int = 1,
    hidden: int = 64,
    image_size: int = 28,
    head: HeadKind | None = "linear",
    **kwargs: Any,
) -> ConvNet:
    """dragen1860/MAML-Pytorch's Omniglot net, layer for layer.

    conv3x3 s2 p0 → ReLU → BN (28→13), twice more (→6→2), conv2x2 s1 → ReLU → BN (→1),
    flatten 64 → linear N. 91,781 params at N=5.

    Reference: ``dragen1860/MAML-Pytorch : omniglot_train.py`` config list, ``learner.py``.

    Common arguments (:class:`~metakd.nn.Backbone`): ``in_channels`` default 1; BN default
    transductive, γ and β, eps 1e-5.

    Args:
        hidden: filters per conv.
        image_size: input side, to size the head.

    Shapes:
        ``[B, 1, 28, 28]`` → ``[B, N]``; ``features``: ``[B, 64]``.

    Example:
        >>> maml_pytorch_omniglot()(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 5])
    """
    bn = _bn_config("maml_pytorch_omniglot", kwargs, _DRAGEN_BN)
    layout = [
        {"kernel": k, "stride": s, "padding": 0, "pool": None, "relu_first": True}
        for k, s in [(3, 2), (3, 2), (3, 2), (2, 1)]
    ]
    net = _conv_net("maml_pytorch_omniglot", layout, in_channels=in_channels, hidden=hidden,
                    bn=bn, head=head, num_classes=num_classes, image_size=image_size)
    _kaiming_init(net)
    return net


@register_model(family="few-shot")
def maml_pytorch_miniimagenet(
    *,
    num_classes: int = 5,
    in_channels: int = 3,
    hidden: int = 32,
    image_size: int = 84,
    head: HeadKind | None = "linear",
    **kwargs: Any,
) -> ConvNet:
    """dragen1860/MAML-Pytorch's miniImageNet net, layer for layer.

    4 × [conv3x3 s1 p0 → ReLU → BN → maxpool 2], the last pool with stride 1:
    84→82→41→39→19→17→8→6→5; flatten 800 → linear N. 32,901 params at N=5.

    Reference: ``dragen1860/MAML-Pytorch : miniimagenet_train.py`` config list.

    Common arguments (:class:`~metakd.nn.Backbone`): BN default transductive, γ and β,
    eps 1e-5.

    Args:
        hidden: filters per conv.
        image_size: input side, to size the head.

    Shapes:
        ``[B, 3, 84, 84]`` → ``[B, N]``; ``features``: ``[B, 800]``.

    Example:
        >>> maml_pytorch_miniimagenet()(torch.randn(2, 3, 84, 84)).shape
        torch.Size([2, 5])
    """
    bn = _bn_config("maml_pytorch_miniimagenet", kwargs, _DRAGEN_BN)
    layout = [
        {"padding": 0, "pool_stride": 1 if i == 3 else 2, "relu_first": True} for i in range(4)
    ]
    net = _conv_net("maml_pytorch_miniimagenet", layout, in_channels=in_channels,
                    hidden=hidden, bn=bn, head=head, num_classes=num_classes,
                    image_size=image_size)
    _kaiming_init(net)
    return net
