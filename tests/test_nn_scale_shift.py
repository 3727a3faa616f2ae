"""Tests for metakd.nn.scale_shift (Meta-Transfer Learning scaling and shifting)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import metakd.nn as mnn
from metakd.nn import ScaleShiftConv2d, convert_to_scale_shift


def test_forward_against_a_hand_computed_conv() -> None:
    # 1 input channel 3×3 image, 2 output channels, 2×2 kernel, no padding → 2×2 output.
    ss = ScaleShiftConv2d(1, 2, 2, bias=True)
    with torch.no_grad():
        ss.weight.copy_(torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[0.0, 1.0], [1.0, 0.0]]]]))
        ss.bias.copy_(torch.tensor([1.0, -1.0]))  # type: ignore[union-attr]
        ss.scale.copy_(torch.tensor([2.0, 3.0]).view(2, 1, 1, 1))
        ss.shift.copy_(torch.tensor([0.5, 0.0]))  # type: ignore[union-attr]
    x = torch.arange(9.0).view(1, 1, 3, 3)  # [[0,1,2],[3,4,5],[6,7,8]]
    # channel 0: 2·(x[i,j] + x[i+1,j+1]) + 1 + 0.5 ; channel 1: 3·(x[i,j+1] + x[i+1,j]) − 1
    expected = torch.tensor(
        [
            [[2 * (0 + 4) + 1.5, 2 * (1 + 5) + 1.5], [2 * (3 + 7) + 1.5, 2 * (4 + 8) + 1.5]],
            [[3 * (1 + 3) - 1, 3 * (2 + 4) - 1], [3 * (4 + 6) - 1, 3 * (5 + 7) - 1]],
        ]
    ).unsqueeze(0)
    torch.testing.assert_close(ss(x), expected)


def test_shapes_and_frozen_weights() -> None:
    ss = ScaleShiftConv2d(8, 6, 3, padding=1, groups=2, bias=False)
    assert ss.weight.shape == (6, 4, 3, 3) and ss.scale.shape == (6, 4, 1, 1)
    assert ss.shift is None and ss.bias is None
    assert [n for n, _ in ss.named_parameters()] == ["scale"]
    assert set(ss.state_dict()) == {"weight", "scale"}
    withbias = ScaleShiftConv2d(3, 5, 3)
    assert [n for n, _ in withbias.named_parameters()] == ["scale", "shift"]
    assert withbias.shift is not None and withbias.shift.shape == (5,)


def test_from_conv_is_the_same_function_and_trains_only_scale_shift() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1).double()
    ss = ScaleShiftConv2d.from_conv(conv)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(ss(x), conv(x))
    ss(x).square().sum().backward()
    assert ss.scale.grad is not None and ss.shift is not None and ss.shift.grad is not None
    assert not ss.weight.requires_grad
    # d/dscale of conv(x, W·s) equals Σ_{k×k} W ⊙ dL/dW' (chain rule on W' = W·s).
    w_eff = (conv.weight.detach() * 1.0).requires_grad_(True)
    F.conv2d(x, w_eff, conv.bias, 2, 1).square().sum().backward()
    assert w_eff.grad is not None
    torch.testing.assert_close(ss.scale.grad, (w_eff.grad * conv.weight).sum((2, 3), keepdim=True))
    with pytest.raises(ValueError, match="zero padding"):
        ScaleShiftConv2d.from_conv(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"))


def test_convert_a_backbone() -> None:
    torch.manual_seed(1)
    net = mnn.create("mtl_resnet12", channels=(4, 8, 8, 16), num_classes=5)
    x = torch.randn(3, 3, 16, 16)
    before = net(x)
    convert_to_scale_shift(net, exclude=lambda name, conv: conv.kernel_size == (1, 1))
    kinds = {type(m).__name__ for name, m in net.named_modules() if "conv" in name}
    assert kinds == {"ScaleShiftConv2d"}
    assert all(type(m.shortcut) is nn.Conv2d for m in net.modules() if hasattr(m, "shortcut"))
    torch.testing.assert_close(net(x), before)
    # Only scale/shift, BN β and the head remain parameters; the kernels are buffers now.
    names = [n for n, _ in net.named_parameters()]
    assert any(n.endswith("conv1.scale") for n in names)
    assert not any(n.endswith("conv1.weight") for n in names)
    params = {k: v.detach() + 0.1 for k, v in net.named_parameters()}
    functional_call(net, params, (x,))  # runs with the frozen buffers


def test_convert_rejects_a_bare_conv() -> None:
    with pytest.raises(ValueError, match="from_conv"):
        convert_to_scale_shift(nn.Conv2d(1, 1, 1))
