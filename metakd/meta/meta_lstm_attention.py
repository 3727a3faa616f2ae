"""The attention parts of MLAL (Liao and Zhai, "Optimization model based on attention for
few-shot learning", Machine Vision and Applications 2024), sized from the learner.

Two modules, both optional additions to the Meta-LSTM of Ravi & Larochelle (ICLR 2017):

- :class:`MetaAttention`, inside the meta-learner: the first LSTM layer's hidden states of the
  ``P`` learner coordinates ``[P, H]`` are cut into ``R`` rows of ``C`` consecutive coordinates
  (``X [R, C*H]``, zero-padded to ``R*C``), and ``X' = X + A V`` with ``V = X W_v``,
  ``A = (X W_q)(X W_k)^T / sqrt(C*H)`` (optionally a softmax over the last axis). The gates of
  the meta-learner cell read ``X'`` in place of the hidden state. The original hard-codes
  ``R x C*H = 1217 x 948`` for its 288,429-parameter learner and never applies the softmax it
  defines; here ``C`` follows from ``P`` (default ``ceil(sqrt(P / H))``, which balances the
  ``(C*H)^2`` projection against the ``R^2`` attention map) and the softmax is an option.
- :class:`CrossAttentionFrontEnd`, in front of the learner: an image ``[B, C, H, W]`` is read
  as ``H`` tokens of ``C*W`` values (a plain reshape, as the original does), attends to a
  *context* image, and ``x' = context + LayerNorm(Dense(softmax(Q K^T / sqrt(H)) V) + x)`` with
  ``V, K`` from ``x`` and ``Q`` from the context. The original picks the context of a support
  image among the *query images of its class* (by their labels, at meta-test too): a label
  leak. Here the context is the image itself (the form the original uses for the query set),
  so adaptation never reads a query image or label. :class:`AttentionLearner` puts the front
  end before any backbone; its parameters are part of the learner that the Meta-LSTM adapts.

Example:
    >>> import torch
    >>> att = MetaAttention(num_params=100, hidden_size=4)
    >>> att.chunk, att(torch.randn(100, 4)).shape
    (5, torch.Size([100, 4]))
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AttentionLearner", "CrossAttentionFrontEnd", "MetaAttention"]


class MetaAttention(nn.Module):
    """MLAL's self-attention over the meta-learner's LSTM states, sized from the learner.

    Args:
        num_params: ``P``, the learner's number of adapted parameters.
        hidden_size: ``H``, the first LSTM layer's hidden units.
        chunk: coordinates per row ``C`` (default ``ceil(sqrt(P / H))``).
        key_dim: width of the queries and keys (the original: 20).
        softmax: normalise the attention map with a softmax (the original defines one and
            never applies it: ``False``).

    Shapes:
        ``h [P, H]`` -> ``[P, H]``.

    Example:
        >>> import torch
        >>> att = MetaAttention(32_901, 4)
        >>> att.rows, att.chunk, att(torch.zeros(32_901, 4)).shape
        (362, 91, torch.Size([32901, 4]))
    """

    def __init__(self, num_params: int, hidden_size: int, chunk: int | None = None,
                 key_dim: int = 20, softmax: bool = False) -> None:
        super().__init__()
        if num_params < 1 or hidden_size < 1 or key_dim < 1:
            raise ValueError(f"MetaAttention needs num_params, hidden_size, key_dim >= 1, got "
                             f"{num_params}, {hidden_size}, {key_dim}")
        if chunk is None:
            chunk = max(1, math.ceil(math.sqrt(num_params / hidden_size)))
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.num_params, self.hidden_size, self.chunk = num_params, hidden_size, int(chunk)
        self.rows = math.ceil(num_params / self.chunk)
        self.softmax = bool(softmax)
        width = self.chunk * hidden_size
        self.value = nn.Linear(width, width)
        self.key = nn.Linear(width, key_dim)
        self.query = nn.Linear(width, key_dim)
        self.scale = 1.0 / math.sqrt(width)

    def forward(self, h: Tensor) -> Tensor:
        """The attended states ``[P, H]`` of the LSTM states ``h [P, H]``."""
        if h.shape != (self.num_params, self.hidden_size):
            raise ValueError(f"MetaAttention was sized for [{self.num_params}, "
                             f"{self.hidden_size}] states, got {tuple(h.shape)}")
        pad = self.rows * self.chunk - self.num_params
        x = F.pad(h, (0, 0, 0, pad)).reshape(self.rows, self.chunk * self.hidden_size)
        a = self.query(x) @ self.key(x).T * self.scale  # [R, R]
        if self.softmax:
            a = a.softmax(-1)
        x = x + a @ self.value(x)
        return x.reshape(-1, self.hidden_size)[: self.num_params]

    def extra_repr(self) -> str:
        return (f"rows={self.rows}, chunk={self.chunk}, hidden={self.hidden_size}, "
                f"softmax={self.softmax}")


class CrossAttentionFrontEnd(nn.Module):
    """MLAL's cross-attention in front of the learner, sized from the images.

    Args:
        channels: the images' channels ``C``.
        height: their height ``H``: the tokens are the ``H`` rows of a plain
            ``[B, H, C*W]`` reshape (the original: 84 tokens of 252 values).
        width: their width ``W``.
        eps: the LayerNorm's epsilon (the original: the batch-norm eps, 1e-3).

    Shapes:
        ``x [B, C, H, W]`` (and ``context`` of the same shape, default ``x``) ->
        ``[B, C, H, W]``.

    Example:
        >>> import torch
        >>> front = CrossAttentionFrontEnd(1, 28, 28)
        >>> front(torch.randn(2, 1, 28, 28)).shape, sum(p.numel() for p in front.parameters())
        (torch.Size([2, 1, 28, 28]), 3304)
    """

    def __init__(self, channels: int, height: int, width: int, eps: float = 1e-3) -> None:
        super().__init__()
        if min(channels, height, width) < 1:
            raise ValueError(f"bad image shape {(channels, height, width)}")
        self.shape = (channels, height, width)
        d = channels * width
        self.value = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.query = nn.Linear(d, d)
        self.dense = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d, eps=eps)
        self.scale = 1.0 / math.sqrt(height)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``context + LayerNorm(Dense(attention(context -> x)) + x)``, reshaped back."""
        c, hh, w = self.shape
        if x.dim() != 4 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"CrossAttentionFrontEnd expects [B, {c}, {hh}, {w}] images, got "
                             f"{tuple(x.shape)}")
        ctx = x if context is None else context
        if ctx.shape != x.shape:
            raise ValueError(f"context {tuple(ctx.shape)} must have the shape of x "
                             f"{tuple(x.shape)}")
        xs = x.reshape(x.shape[0], hh, c * w)
        xc = ctx.reshape(x.shape[0], hh, c * w)
        a = (self.query(xc) @ self.key(xs).transpose(1, 2) * self.scale).softmax(-1)
        out = self.norm(self.dense(a @ self.value(xs)) + xs)
        return (xc + out).reshape(x.shape)


class AttentionLearner(nn.Module):
    """A backbone with MLAL's cross-attention front end; the front end attends each image to
    itself, at adaptation and at query time alike (no query image or label is read while
    adapting).

    Args:
        backbone: any :mod:`metakd.nn` model (forward depends only on parameters/buffers).
        channels: the input images' channels.
        image_size: their side (or ``(H, W)``).
        eps: the front end's LayerNorm epsilon.

    Shapes:
        ``[B, C, H, W]`` -> the backbone's output.

    Example:
        >>> import torch
        >>> from metakd.nn import create
        >>> net = AttentionLearner(create("conv4", in_channels=1, hidden=8), 1, 28)
        >>> net(torch.randn(3, 1, 28, 28)).shape
        torch.Size([3, 5])
    """

    def __init__(self, backbone: nn.Module, channels: int, image_size: int | tuple[int, int],
                 eps: float = 1e-3) -> None:
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.frontend = CrossAttentionFrontEnd(channels, h, w, eps=eps)
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        """The backbone's output on the attended images."""
        return self.backbone(self.frontend(x))
