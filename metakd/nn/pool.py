"""Max pooling with the same values and gradients as PyTorch's, faster on small CPU feature maps.

PyTorch's CPU max-pooling kernel for contiguous ``[N, C, H, W]`` tensors walks every output
element's window one element at a time, while its channels-last kernel runs over the
channels in vector registers. On a 2-core AMD EPYC (torch 2.14.1, 1 thread, 2026-12-07) a
2×2 pool of a ``[80, 64, 28, 28]`` map, forward and backward, took 22.8 ms the first way and
10.7 ms by copying the map to channels-last, pooling there and copying the result back
(``python -m benchmarks.pool_speed``; ``benchmarks/results/pool_speed_cpu_2026-12-07.json``).
On larger maps a whole network's step gained nothing from the route (an 84 px Conv-4), and on
a few thousand values the route's fixed cost outweighs the pool. So :func:`max_pool2d` takes
that route only for maps of at most :data:`FAST_MAX_ELEMENTS` values per image (``C·H·W``)
and at least 65,536 in all, and hands everything else to
:func:`torch.nn.functional.max_pool2d`.

The route changes no number: the pooled values are the same maxima, the argmax of each
window is the same element (the first maximum in row-major order, as PyTorch's kernels
pick it; ties are common after a ReLU), and the backward is PyTorch's own
``max_pool2d_with_indices_backward`` on those indices, so gradients and second-order
gradients are bit-identical (``tests/test_nn_pool.py``). It applies to contiguous 4-D CPU
inputs with more than one channel in plain eager code, ``torch.autograd.grad`` and
``torch.func.grad`` included; under ``torch.func.vmap``, inside ``torch.compile`` (Inductor
writes its own pooling loop) and on other devices the plain PyTorch call runs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from metakd.nn.norm import plain_eager

__all__ = ["FAST_MAX_ELEMENTS", "MaxPool2d", "max_pool2d"]

FAST_MAX_ELEMENTS = 1 << 17
"""The largest ``C·H·W`` per image that :func:`max_pool2d` pools through channels-last."""

_MIN_ELEMENTS = 1 << 16  # below this the route's fixed cost outweighs the kernel time


class _ChannelsLastMaxPool(torch.autograd.Function):
    """Pool through a channels-last copy; backward by PyTorch's kernel on the saved indices."""

    @staticmethod
    def forward(x: Tensor, kernel: list[int], stride: list[int], padding: list[int],
                dilation: list[int], ceil_mode: bool) -> tuple[Tensor, Tensor]:
        out, indices = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), kernel,
                                    stride, padding, dilation, ceil_mode, return_indices=True)
        return out.contiguous(), indices.contiguous()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        x, *ctx.pool_args = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(x, output[1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _: Any) -> tuple[Tensor | None, ...]:
        x, indices = ctx.saved_tensors
        # A differentiable op: second-order gradients gather through the same indices.
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, *ctx.pool_args, indices)
        return grad_x, None, None, None, None, None


def _fast_route(x: Tensor) -> bool:
    return (x.device.type == "cpu" and x.dim() == 4 and x.shape[1] > 1
            and x.is_contiguous() and x.numel() >= _MIN_ELEMENTS
            and x[0].numel() <= FAST_MAX_ELEMENTS and plain_eager())


def max_pool2d(x: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0,
               dilation: Any = 1, ceil_mode: bool = False) -> Tensor:
    """:func:`torch.nn.functional.max_pool2d` (same arguments, values and gradients), faster
    on small contiguous CPU feature maps.

    Example:
        >>> import torch
        >>> from metakd.nn.pool import max_pool2d
        >>> x = torch.randn(2, 8, 6, 6)
        >>> torch.equal(max_pool2d(x, 2), torch.nn.functional.max_pool2d(x, 2))
        True
    """
    if not _fast_route(x):
        return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    kernel = list(_pair(kernel_size))
    strides = kernel if stride is None or stride == [] else list(_pair(stride))
    out, _ = _ChannelsLastMaxPool.apply(x, kernel, strides, list(_pair(padding)),
                                        list(_pair(dilation)), ceil_mode)
    return out


class MaxPool2d(nn.MaxPool2d):
    """:class:`torch.nn.MaxPool2d` through :func:`max_pool2d` (same arguments and results).

    ``return_indices=True`` is not supported: use :class:`torch.nn.MaxPool2d` for it.
    """

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0,
                 dilation: Any = 1, ceil_mode: bool = False) -> None:
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode=ceil_mode)

    def forward(self, x: Tensor) -> Tensor:
        """Pool ``x`` of shape ``[N, C, H, W]`` or ``[C, H, W]``."""
        return max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                          self.ceil_mode)
