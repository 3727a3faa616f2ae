"""The MAML family of small convolutional backbones.

Registered names (all ``Backbone``s: ``forward(x) = head(features(x))``):

``conv1``, ``conv2``, ``conv4``, ``conv6``, ``conv8``
    The PMAML / Torchmeta conv blocks (Zhang et al., "Knowledge Distillation for
    Model-Agnostic Meta-Learning", ECAI 2020): ``conv3x3(pad 1, bias) → BN → ReLU →
    MaxPool2d(2)``. Conv-6/Conv-8 add 2/4 blocks without pooling after the fourth.
    ``head="gap"`` (PMAML: mean over H×W, ``hidden``-d) or ``"flatten"`` (MAML literature:
    ``hidden·s·s``-d, needs ``image_size``). BN defaults to transductive with γ and β.
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

Every factory also accepts the BN options ``bn_mode``, ``bn_affine``, ``bn_scale``,
``bn_eps``, ``bn_momentum``, ``bn_steps`` (see :mod:`metakd.nn.norm`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from metakd.nn.heads import Backbone, HeadKind, make_head
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

    The factories of this module build it; use them rather than this class.

    Args:
        encoder: maps ``[B, C, H, W]`` to a feature map ``[B, C', H', W']``.
        feature_dim: ``C'`` for ``"gap"``, ``C'·H'·W'`` for ``"flatten"``.
        embedding: ``"gap"`` or ``"flatten"``.
        head: the classifier, ``[B, feature_dim]`` → ``[B, N]`` (``nn.Identity`` for none).

    Example:
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


def _block(
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
        layers.append(("pool", nn.MaxPool2d(pool, pool_stride)))
    return nn.Sequential(OrderedDict(layers))


def _out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _check_size(size: int, name: str) -> int:
    if size < 1:
        raise ValueError(f"image too small for {name}: the feature map would be empty")
    return size


# ---------------------------------------------------------------------------------------------
# PMAML / Torchmeta conv-N


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
        _block(in_channels if i == 0 else hidden, hidden, bn, pool=2 if i < pooled else None)
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
        feature_dim = hidden * _check_size(side, f"conv{depth}") ** 2
    else:
        raise ValueError(f"conv{depth}: head must be 'gap', 'flatten' or None, got {head!r}")
    classifier = make_head(None if head is None else "linear", feature_dim, num_classes)
    encoder = nn.Sequential(OrderedDict((f"block{i + 1}", b) for i, b in enumerate(blocks)))
    return ConvNet(encoder, feature_dim=feature_dim, embedding=embedding, head=classifier)


_CONV_DOC = """Conv-{depth} (PMAML/MAML conv blocks): {layout}.

    Args:
        num_classes: classes N of the linear head (0: feature extractor).
        in_channels: image channels (1 for Omniglot, 3 for RGB).
        hidden: filters per conv (64; MAML miniImageNet uses 32).
        head: ``"gap"`` (mean over H×W, PMAML), ``"flatten"`` (MAML literature; needs
            ``image_size``) or ``None`` (GAP features, no classifier).
        image_size: input side in pixels, for ``head="flatten"``.
        **kwargs: BN options ``bn_mode`` ("transductive"), ``bn_affine``, ``bn_scale``,
            ``bn_eps`` (1e-5), ``bn_momentum``, ``bn_steps``.

    Shapes:
        ``[B, in_channels, H, W]`` → ``[B, N]``.

    Example:
        >>> net = conv{depth}(in_channels=3, head="flatten", image_size=84)
        >>> net(torch.randn(2, 3, 84, 84)).shape
        torch.Size([2, 5])
    """


@register_model
def conv1(**kwargs: Any) -> ConvNet:
    return _pmaml_convnet(1, **kwargs)


@register_model
def conv2(**kwargs: Any) -> ConvNet:
    return _pmaml_convnet(2, **kwargs)


@register_model
def conv4(**kwargs: Any) -> ConvNet:
    return _pmaml_convnet(4, **kwargs)


@register_model
def conv6(**kwargs: Any) -> ConvNet:
    return _pmaml_convnet(6, **kwargs)


@register_model
def conv8(**kwargs: Any) -> ConvNet:
    return _pmaml_convnet(8, **kwargs)


conv1.__doc__ = _CONV_DOC.format(depth=1, layout="one pooled block")
conv2.__doc__ = _CONV_DOC.format(depth=2, layout="two pooled blocks")
conv4.__doc__ = _CONV_DOC.format(depth=4, layout="four pooled blocks (84 px → 5×5, 28 px → 1×1)")
conv6.__doc__ = _CONV_DOC.format(depth=6, layout="four pooled blocks, then two without pooling")
conv8.__doc__ = _CONV_DOC.format(depth=8, layout="four pooled blocks, then four without pooling")


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


@register_model
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

    Args:
        num_classes: ways N (0: feature extractor).
        in_channels: 1 for Omniglot.
        hidden: filters per conv.
        head: ``"linear"``, ``"cosine"`` or ``None``.
        head_init: ``"normal"``: the linear head's weights are N(0, 1), as TF's
            ``tf.random_normal`` in the reference; ``"xavier"``: Xavier-uniform like the
            convs. With N(0, 1) the initial logits are large, the first inner steps saturate
            the softmax, and meta-training starts slowly (at the reference inner-loss scale it
            can diverge); on the bundled Omniglot, 100 s of meta-training reached 80.7% with
            ``"xavier"`` against 68.5% with ``"normal"`` (5-way 1-shot, 300 test episodes).
        **kwargs: BN options; the default is TF's: ``bn_mode="transductive"``,
            ``bn_scale=False`` (β only), ``bn_eps=1e-3``.

    Shapes:
        ``[B, 1, 28, 28]`` → ``[B, N]``; ``features``: ``[B, 64]``.

    Example:
        >>> net = maml_omniglot(num_classes=20)
        >>> net(torch.randn(4, 1, 28, 28)).shape
        torch.Size([4, 20])
    """
    bn = pop_bn_kwargs(kwargs, _TF_BN)
    if kwargs:
        raise TypeError(f"maml_omniglot: unexpected arguments {sorted(kwargs)}")
    if head_init not in ("normal", "xavier"):
        raise ValueError(f"maml_omniglot: head_init must be 'normal' or 'xavier', got {head_init!r}")
    blocks = [
        _block(
            in_channels if i == 0 else hidden, hidden, bn, stride=2, padding="tf_same", pool=None
        )
        for i in range(4)
    ]
    encoder = nn.Sequential(OrderedDict((f"block{i + 1}", b) for i, b in enumerate(blocks)))
    net = ConvNet(
        encoder, feature_dim=hidden, embedding="gap", head=make_head(head, hidden, num_classes)
    )
    _tf_init(net, head_std=1.0 if head_init == "normal" else None)
    return net


@register_model
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

    Args:
        num_classes: ways N (0: feature extractor).
        in_channels: image channels.
        hidden: filters per conv.
        image_size: input side, to size the head.
        head: ``"linear"``, ``"cosine"`` or ``None``.
        **kwargs: BN options (default TF: transductive, β only, eps 1e-3).

    Shapes:
        ``[B, 3, 84, 84]`` → ``[B, N]``; ``features``: ``[B, 800]``.

    Example:
        >>> maml_miniimagenet()(torch.randn(2, 3, 84, 84)).shape
        torch.Size([2, 5])
    """
    bn = pop_bn_kwargs(kwargs, _TF_BN)
    if kwargs:
        raise TypeError(f"maml_miniimagenet: unexpected arguments {sorted(kwargs)}")
    blocks = [_block(in_channels if i == 0 else hidden, hidden, bn) for i in range(4)]
    side = image_size
    for _ in range(4):
        side //= 2
    feature_dim = hidden * _check_size(side, "maml_miniimagenet") ** 2
    encoder = nn.Sequential(OrderedDict((f"block{i + 1}", b) for i, b in enumerate(blocks)))
    net = ConvNet(
        encoder,
        feature_dim=feature_dim,
        embedding="flatten",
        head=make_head(head, feature_dim, num_classes),
    )
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


@register_model
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

    Args:
        num_classes: ways N (0: feature extractor).
        in_channels: image channels.
        hidden: filters per conv.
        image_size: input side, to size the head.
        head: ``"linear"``, ``"cosine"`` or ``None``.
        **kwargs: BN options (default: transductive, γ and β, eps 1e-5).

    Shapes:
        ``[B, 1, 28, 28]`` → ``[B, N]``; ``features``: ``[B, 64]``.

    Example:
        >>> maml_pytorch_omniglot()(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 5])
    """
    bn = pop_bn_kwargs(kwargs, _DRAGEN_BN)
    if kwargs:
        raise TypeError(f"maml_pytorch_omniglot: unexpected arguments {sorted(kwargs)}")
    specs = [(3, 2), (3, 2), (3, 2), (2, 1)]  # (kernel, stride), all unpadded
    blocks = []
    side = image_size
    for i, (k, s) in enumerate(specs):
        c_in = in_channels if i == 0 else hidden
        blocks.append(
            _block(c_in, hidden, bn, kernel=k, stride=s, padding=0, pool=None, relu_first=True)
        )
        side = _out(side, k, s, 0)
    feature_dim = hidden * _check_size(side, "maml_pytorch_omniglot") ** 2
    encoder = nn.Sequential(OrderedDict((f"block{i + 1}", b) for i, b in enumerate(blocks)))
    net = ConvNet(
        encoder,
        feature_dim=feature_dim,
        embedding="flatten",
        head=make_head(head, feature_dim, num_classes),
    )
    _kaiming_init(net)
    return net


@register_model
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

    Args:
        num_classes: ways N (0: feature extractor).
        in_channels: image channels.
        hidden: filters per conv.
        image_size: input side, to size the head.
        head: ``"linear"``, ``"cosine"`` or ``None``.
        **kwargs: BN options (default: transductive, γ and β, eps 1e-5).

    Shapes:
        ``[B, 3, 84, 84]`` → ``[B, N]``; ``features``: ``[B, 800]``.

    Example:
        >>> maml_pytorch_miniimagenet()(torch.randn(2, 3, 84, 84)).shape
        torch.Size([2, 5])
    """
    bn = pop_bn_kwargs(kwargs, _DRAGEN_BN)
    if kwargs:
        raise TypeError(f"maml_pytorch_miniimagenet: unexpected arguments {sorted(kwargs)}")
    blocks = []
    side = image_size
    for i in range(4):
        pool_stride = 1 if i == 3 else 2
        c_in = in_channels if i == 0 else hidden
        blocks.append(_block(c_in, hidden, bn, padding=0, pool_stride=pool_stride, relu_first=True))
        side = _out(_out(side, 3, 1, 0), 2, pool_stride, 0)
    feature_dim = hidden * _check_size(side, "maml_pytorch_miniimagenet") ** 2
    encoder = nn.Sequential(OrderedDict((f"block{i + 1}", b) for i, b in enumerate(blocks)))
    net = ConvNet(
        encoder,
        feature_dim=feature_dim,
        embedding="flatten",
        head=make_head(head, feature_dim, num_classes),
    )
    _kaiming_init(net)
    return net
