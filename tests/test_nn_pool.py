"""metakd.nn.pool: the channels-last CPU route gives PyTorch's max pooling bit for bit."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import metakd.nn.pool as pool
from metakd.nn import create
from metakd.nn.pool import FAST_MAX_ELEMENTS, MaxPool2d, max_pool2d


@pytest.fixture
def fast_calls(monkeypatch: pytest.MonkeyPatch) -> list[torch.Size]:
    """The input shapes that went through the channels-last route."""
    calls: list[torch.Size] = []
    route = pool._ChannelsLastMaxPool

    class Spy(route):  # type: ignore[misc, valid-type]
        @staticmethod
        def forward(*args: Any) -> Any:
            calls.append(args[0].shape)
            return route.forward(*args)

    monkeypatch.setattr(pool, "_ChannelsLastMaxPool", Spy)
    return calls


@pytest.fixture
def small_maps_routed(monkeypatch: pytest.MonkeyPatch, fast_calls: list[torch.Size]
                      ) -> list[torch.Size]:
    """``fast_calls``, with the route also taken by maps too small for it to pay, so that
    the tests stay small."""
    monkeypatch.setattr(pool, "_MIN_ELEMENTS", 1)
    return fast_calls


def _tied(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Small integers: most windows hold ties, where the argmax choice shows."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, shape, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("shape", "args"), [
    ((3, 4, 8, 8), (2,)),
    ((2, 3, 7, 9), (2,)),                 # odd sides: the last row and column are dropped
    ((2, 5, 6, 6), (2, 1)),               # MAML-Pytorch's stride-1 last pool
    ((2, 3, 9, 7), (3, 2, 1)),            # kernel 3, stride 2, padding 1
    ((2, 3, 7, 7), (2, 2, 0, 1, True)),   # ceil mode
])
def test_values_indices_gradients_and_second_order_equal_pytorch_bit_for_bit(
    shape: tuple[int, ...], args: tuple[Any, ...], dtype: torch.dtype,
    small_maps_routed: list[torch.Size],
) -> None:
    fast_calls = small_maps_routed
    x = _tied(shape, dtype, seed=sum(shape)).requires_grad_(True)
    ours = max_pool2d(x, *args)
    theirs = F.max_pool2d(x, *args)
    assert fast_calls == [x.shape]
    assert ours.is_contiguous() and torch.equal(ours, theirs)
    g = torch.randn(theirs.shape, dtype=dtype, requires_grad=True)
    (gx_ours,) = torch.autograd.grad(ours, x, g, create_graph=True)
    (gx_theirs,) = torch.autograd.grad(theirs, x, g, create_graph=True)
    assert gx_ours.is_contiguous() and torch.equal(gx_ours, gx_theirs)
    assert int((gx_ours != 0).sum()) < x.numel()  # the ties really were resolved
    h = torch.randn_like(x)
    (gg_ours,) = torch.autograd.grad(gx_ours, g, h)
    (gg_theirs,) = torch.autograd.grad(gx_theirs, g, h)
    assert torch.equal(gg_ours, gg_theirs)


def test_the_route_is_taken_only_for_small_contiguous_multichannel_cpu_maps_outside_vmap(
    fast_calls: list[torch.Size],
) -> None:
    side = 32
    channels_over = FAST_MAX_ELEMENTS // (side * side) + 1
    cases = {
        "small NCHW": (torch.randn(8, 8, side, side), True),
        "one channel": (torch.randn(64, 1, side, side), False),
        "channels-last": (torch.randn(8, 8, side, side).contiguous(
            memory_format=torch.channels_last), False),
        "too large per image": (torch.randn(2, channels_over, side, side), False),
        "too few in all": (torch.randn(1, 8, side, side), False),
        "3-D": (torch.randn(64, side, side), False),
    }
    for name, (x, fast) in cases.items():
        fast_calls.clear()
        assert torch.equal(max_pool2d(x, 2), F.max_pool2d(x, 2)), name
        assert bool(fast_calls) == fast, name
    fast_calls.clear()
    xs = torch.randn(3, 8, 8, side, side)
    pooled = torch.func.vmap(lambda x: max_pool2d(x, 2))(xs)
    assert not fast_calls
    assert torch.equal(pooled, F.max_pool2d(xs.flatten(0, 1), 2).view(3, 8, 8, 16, 16))


def test_second_order_torch_func_grad_equals_pytorch(small_maps_routed: list[torch.Size]
                                                     ) -> None:
    """Under ``torch.func.grad`` (the func MAML backend) the route runs, and a MAML-style
    gradient of a gradient equals the one through PyTorch's pooling exactly."""
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3, dtype=torch.float64)
    x = torch.randn(4, 3, 10, 10, dtype=torch.float64)

    def meta(pool_fn: Any) -> torch.Tensor:
        def inner(w: torch.Tensor) -> torch.Tensor:
            return pool_fn(F.relu(F.conv2d(x, w, padding=1)), 2).pow(2).sum()

        def outer(w: torch.Tensor) -> torch.Tensor:
            fast = w - 0.1 * torch.func.grad(inner)(w)
            return pool_fn(F.conv2d(x, fast, padding=1).tanh(), 2).sum()

        return torch.func.grad(outer)(w)

    ours = meta(max_pool2d)
    assert small_maps_routed
    assert torch.equal(ours, meta(F.max_pool2d))


def test_module_matches_torch_and_networks_give_identical_meta_gradients(
    small_maps_routed: list[torch.Size],
) -> None:
    """MaxPool2d is an nn.MaxPool2d with the same repr; a whole MAML-Pytorch miniImageNet net
    (conv → ReLU → BN → pool: every all-zero window becomes a tie after the BN, and its last
    pool has stride 1; 46 px so that every map takes the route) gives the same second-order meta-gradient bit for bit as a copy whose
    pools are PyTorch's."""
    ours = MaxPool2d(2, 1)
    assert isinstance(ours, nn.MaxPool2d) and repr(ours) == repr(nn.MaxPool2d(2, 1))
    assert ours.state_dict() == {}

    torch.manual_seed(0)
    net = create("maml_pytorch_miniimagenet", num_classes=5, image_size=46)
    ref = copy.deepcopy(net)
    swapped = 0
    for parent in ref.modules():
        for name, child in parent.named_children():
            if isinstance(child, MaxPool2d):
                setattr(parent, name, nn.MaxPool2d(child.kernel_size, child.stride))
                swapped += 1
    assert swapped == 4
    xs, ys = torch.randn(5, 3, 46, 46), torch.arange(5)
    xq, yq = torch.randn(10, 3, 46, 46), torch.arange(10) % 5

    def meta_grad(model: nn.Module) -> list[torch.Tensor]:
        params = dict(model.named_parameters())
        loss = F.cross_entropy(torch.func.functional_call(model, params, (xs,)), ys)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        fast = {k: p - 0.4 * g for (k, p), g in zip(params.items(), grads)}
        query = F.cross_entropy(torch.func.functional_call(model, fast, (xq,)), yq)
        return list(torch.autograd.grad(query, list(params.values())))

    mine = meta_grad(net)
    assert len(small_maps_routed) == 2 * 4  # the support and the query forward, four pools each
    for a, b in zip(mine, meta_grad(ref)):
        assert torch.equal(a, b)
