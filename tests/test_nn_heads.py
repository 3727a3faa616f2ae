"""Tests for metakd.nn.heads and metakd.nn.registry."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import metakd.nn as mnn
from metakd.nn import registry


def test_linear_head_is_a_linear_layer() -> None:
    head = mnn.LinearHead(8, 3)
    x = torch.randn(4, 8)
    torch.testing.assert_close(head(x), x @ head.weight.T + head.bias)


def test_cosine_head_by_hand() -> None:
    torch.manual_seed(0)
    head = mnn.CosineHead(3, 2, temperature=5.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 2.0]]))
    x = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, -1.0], [1.0, 1.0, 0.0]])
    expected = 5.0 * torch.tensor([[1.0, 0.0], [0.0, -1 / math.sqrt(2)], [1 / math.sqrt(2), 0.5]])
    torch.testing.assert_close(head(x), expected)
    assert isinstance(head.temperature, nn.Parameter)
    F.cross_entropy(head(x), torch.tensor([0, 1, 1])).backward()
    assert head.temperature.grad is not None


def test_cosine_head_fixed_temperature_and_logits_helper() -> None:
    head = mnn.CosineHead(4, 3, temperature=10.0, learn_temperature=False)
    assert [n for n, _ in head.named_parameters()] == ["weight"]
    assert "temperature" in dict(head.named_buffers())
    protos = torch.randn(2, 3, 4)  # batched prototypes [T, N, D]
    queries = torch.randn(2, 6, 4)
    logits = mnn.cosine_logits(queries, protos, 10.0)
    assert logits.shape == (2, 6, 3) and logits.abs().max() <= 10.0 + 1e-5


def test_make_head() -> None:
    assert isinstance(mnn.make_head(None, 8, 5), nn.Identity)
    assert isinstance(mnn.make_head("linear", 8, 0), nn.Identity)
    assert isinstance(mnn.make_head("linear", 8, 5), mnn.LinearHead)
    with pytest.raises(ValueError, match="unknown head"):
        mnn.make_head("mlp", 8, 5)  # type: ignore[arg-type]


def test_registry_create_list_and_errors() -> None:
    names = mnn.list_models()
    assert names == sorted(names) and {"conv4", "maml_omniglot", "resnet12"} <= set(names)
    assert mnn.list_models("maml_pytorch_*") == [
        "maml_pytorch_miniimagenet",
        "maml_pytorch_omniglot",
    ]
    assert mnn.is_model("resnet20") and not mnn.is_model("resnet21")
    with pytest.raises(ValueError, match=r"unknown model 'conv5'.*conv4"):
        mnn.create("conv5")
    assert mnn.create("conv4", ways=3).out_features == 3
    with pytest.raises(TypeError, match="ways or num_classes"):
        mnn.create("conv4", ways=3, num_classes=3)


def test_register_model_twice_is_an_error() -> None:
    @mnn.register_model(name="_test_tiny_net")
    def tiny(**kwargs: object) -> nn.Module:
        return nn.Linear(2, 2)

    try:
        assert isinstance(mnn.create("_test_tiny_net"), nn.Linear)
        with pytest.raises(ValueError, match="already registered"):
            mnn.register_model(tiny, name="_test_tiny_net")
        with pytest.raises(ValueError, match="already registered"):
            mnn.register_model(mnn.conv.conv4)
    finally:
        registry._MODELS.pop("_test_tiny_net", None)


def test_nn_package_does_not_import_heavy_optional_packages() -> None:
    forbidden = {"torchvision", "higher", "learn2learn"}
    package = Path(mnn.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & forbidden, f"{path.name} imports {roots & forbidden}"


def test_public_names() -> None:
    for name in mnn.__all__:
        assert hasattr(mnn, name), name


@pytest.mark.slow
def test_docstring_examples() -> None:
    import doctest
    import importlib

    modules = ["", ".norm", ".registry", ".heads", ".conv", ".resnet", ".cifar_resnet"]
    modules += [".scale_shift", ".blocks", ".convnet", ".maml_conv", ".resnet12", ".mtl_resnet"]
    try:
        for suffix in modules:
            module = importlib.import_module("metakd.nn" + suffix)
            result = doctest.testmod(module, extraglobs={"torch": torch, "nn": nn})
            assert result.failed == 0, module.__name__
    finally:
        registry._MODELS.pop("my_tiny_net", None)
        registry._FAMILIES.pop("my_tiny_net", None)
