"""Classifier heads and the backbone contract (``features`` + ``head``).

Every model in :mod:`metakd.nn` is a :class:`Backbone`: ``forward(x) = head(features(x))``,
with ``features(x)`` the embedding ``[B, feature_dim]`` and ``head`` the classifier module
(``nn.Identity`` for a feature extractor). Assigning a new module to ``model.head`` swaps the
classifier.

Heads:
    :class:`LinearHead` is ``nn.Linear``. :class:`CosineHead` is the temperature-scaled cosine
    classifier of Meta-Baseline (Chen et al., "Meta-Baseline: Exploring Simple Meta-Learning
    for Few-Shot Learning", ICCV 2021): ``logits = τ · cos(x, w_c)``, τ learnable or fixed.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Backbone", "CosineHead", "HeadKind", "LinearHead", "cosine_logits", "make_head"]

HeadKind = Literal["linear", "cosine"]


def cosine_logits(x: Tensor, weight: Tensor, temperature: Tensor | float = 1.0) -> Tensor:
    """Temperature-scaled cosine similarities between rows of ``x`` and rows of ``weight``.

    Args:
        x: embeddings ``[..., B, D]``.
        weight: class vectors (weights or prototypes) ``[..., N, D]``.
        temperature: scalar τ (a float or a 0-d tensor).

    Returns:
        ``[..., B, N]``: ``τ · <x/|x|, w/|w|>``.

    Example:
        >>> cosine_logits(torch.ones(2, 3), torch.eye(3), 10.0).shape
        torch.Size([2, 3])
    """
    return temperature * (F.normalize(x, dim=-1) @ F.normalize(weight, dim=-1).transpose(-1, -2))


class LinearHead(nn.Linear):
    """A linear classifier ``[B, D] -> [B, N]`` (``nn.Linear`` under a head name).

    Example:
        >>> LinearHead(64, 5)(torch.randn(2, 64)).shape
        torch.Size([2, 5])
    """


class CosineHead(nn.Module):
    """Temperature-scaled cosine classifier (Meta-Baseline).

    ``logits[b, c] = τ · cos(x_b, w_c)``. Meta-Baseline initializes τ = 10 and learns it.

    Args:
        in_features: embedding size D.
        num_classes: number of classes N.
        temperature: initial τ.
        learn_temperature: make τ a parameter (else a buffer).

    Shapes:
        input ``[B, D]`` → output ``[B, N]``; ``weight`` is ``[N, D]``.

    Example:
        >>> head = CosineHead(512, 64)
        >>> head(torch.randn(4, 512)).shape
        torch.Size([4, 64])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        temperature: float = 10.0,
        learn_temperature: bool = True,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        tau = torch.tensor(float(temperature))
        self.temperature: Tensor
        if learn_temperature:
            self.temperature = nn.Parameter(tau)
        else:
            self.register_buffer("temperature", tau)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, N]`` for embeddings ``[B, D]``."""
        return cosine_logits(x, self.weight, self.temperature)

    def extra_repr(self) -> str:
        learn = isinstance(self.temperature, nn.Parameter)
        tau = self.temperature.detach()
        shown = "?" if tau.is_meta else f"{float(tau):g}"
        return (
            f"in_features={self.in_features}, num_classes={self.out_features}, "
            f"temperature={shown}, learn_temperature={learn}"
        )


def make_head(kind: HeadKind | None, in_features: int, num_classes: int) -> nn.Module:
    """Build a classifier: ``"linear"``, ``"cosine"``, or ``nn.Identity`` for no classifier.

    ``kind=None`` or ``num_classes=0`` gives ``nn.Identity`` (a feature extractor).

    Example:
        >>> make_head("cosine", 64, 5)
        CosineHead(in_features=64, num_classes=5, temperature=10, learn_temperature=True)
    """
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    if kind is None or num_classes == 0:
        return nn.Identity()
    if kind == "linear":
        return LinearHead(in_features, num_classes)
    if kind == "cosine":
        return CosineHead(in_features, num_classes)
    raise ValueError(f"unknown head {kind!r}; expected 'linear', 'cosine' or None")


class Backbone(nn.Module):
    """Base class of the models: ``forward(x) = head(features(x))``.

    Subclasses set ``feature_dim`` (embedding size), ``head`` (a module) and implement
    :meth:`features`. ``out_features`` is the number of classes, or ``feature_dim`` when the
    head is ``nn.Identity``.

    **Common arguments.** Every model class of :mod:`metakd.nn` and every factory of the
    registry (:func:`metakd.nn.create`) takes these keyword arguments; each model's docstring
    states its defaults and what differs:

    - ``num_classes``: classes ``N`` of the head; ``0`` builds a feature extractor (``head``
      is ``nn.Identity`` and ``forward`` returns the features). ``create(name, ways=N)`` is
      another spelling. The few-shot models default to 5, the CIFAR models to 100.
    - ``in_channels``: image channels (1 for Omniglot, 3 for RGB images).
    - ``head``: the classifier, ``"linear"`` (:class:`LinearHead`), ``"cosine"``
      (:class:`CosineHead`, Meta-Baseline's) or ``None`` (no classifier).
    - ``bn`` (model classes): the :class:`~metakd.nn.BatchNormConfig` of every BatchNorm
      layer.
    - ``bn_mode``, ``bn_affine``, ``bn_scale``, ``bn_eps``, ``bn_momentum``, ``bn_steps``
      (factories): each overrides one field of the model's default ``BatchNormConfig``
      (``mode``, ``affine``, ``scale``, ``eps``, ``momentum``, ``num_steps``).

    Example:
        >>> import metakd.nn as mnn
        >>> net = mnn.create("resnet12", num_classes=0, bn_mode="transductive")
        >>> isinstance(net, Backbone), net.out_features, net.layer1.bn1.mode
        (True, 512, 'transductive')
    """

    feature_dim: int
    head: nn.Module

    @property
    def out_features(self) -> int:
        """Size of the last dimension of ``forward``'s output."""
        n = getattr(self.head, "out_features", None)
        return self.feature_dim if n is None else int(n)

    def features(self, x: Tensor) -> Tensor:
        """The embedding ``[B, feature_dim]`` of a batch of images ``[B, C, H, W]``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, out_features]`` (or embeddings when there is no classifier)."""
        return self.head(self.features(x))
