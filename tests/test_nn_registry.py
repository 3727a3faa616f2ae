"""The model registry's descriptions and families, and where the model modules' names live."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from torch import nn

import metakd.nn as mnn
from metakd.nn import registry

# The names each model module exported before ResNets and conv nets were split by family:
# they stay importable from there.
FORMER_EXPORTS = {
    "metakd.nn.resnet": [
        "BasicBlock", "BottleResNet", "MTLResNet12", "ResNet", "ResNet12", "ResNet12Block",
        "mtl_resnet12", "resnet10", "resnet12", "resnet12_bottle", "resnet12_gda", "resnet18",
        "resnet18_bottle", "resnet36_bottle", "resnet50_bottle",
    ],
    "metakd.nn.conv": [
        "ConvNet", "TFSamePad2d", "conv1", "conv2", "conv4", "conv6", "conv8",
        "maml_miniimagenet", "maml_omniglot", "maml_pytorch_miniimagenet",
        "maml_pytorch_omniglot",
    ],
    "metakd.nn.mtl_resnet": ["MTLResNet25", "mtl_resnet25"],
}


def test_describe_models_matches_list_models() -> None:
    rows = mnn.describe_models()
    assert [r.name for r in rows] == mnn.list_models()
    assert all(isinstance(r, mnn.ModelInfo) for r in rows)
    assert [r.name for r in mnn.describe_models("resnet1*")] == mnn.list_models("resnet1*")


def test_every_builtin_model_has_a_family_and_a_one_line_description() -> None:
    for row in mnn.describe_models():
        factory = registry._MODELS[row.name]
        cifar = factory.__module__.startswith("metakd.nn.cifar_")
        assert row.family == ("cifar" if cifar else "few-shot"), row
        assert row.description and "\n" not in row.description, row
        assert len(row.description) <= 130, row  # a summary, not the whole docstring


def test_descriptions_are_the_factories_summaries() -> None:
    info = {r.name: r for r in mnn.describe_models()}
    assert info["maml_omniglot"] == mnn.ModelInfo(
        "maml_omniglot", "few-shot", "cbfinn's TF MAML Omniglot net, the project's benchmark backbone."
    )
    # a summary wrapped over two source lines comes back on one line
    assert info["vgg8"].description == (
        'VGG-8 with BN (configuration "S": one conv per block), mdistiller\'s ``vgg8_bn``; '
        "3,965,028 params at 100 classes."
    )
    assert info["conv4"].description.startswith("Conv-4 (PMAML/MAML conv blocks)")


def test_list_models_by_family_keeps_its_return_type() -> None:
    cifar = mnn.list_models(family="cifar")
    few_shot = mnn.list_models(family="few-shot")
    assert isinstance(cifar, list) and all(isinstance(n, str) for n in cifar)
    assert sorted(cifar + few_shot) == mnn.list_models()
    assert {"resnet20", "vgg13", "ResNet50", "ShuffleV2"} <= set(cifar)
    assert {"conv4", "resnet12", "mtl_resnet25", "maml_omniglot"} <= set(few_shot)
    assert mnn.list_models("resnet*", family="few-shot") == [
        "resnet10", "resnet12", "resnet12_bottle", "resnet12_gda", "resnet18",
        "resnet18_bottle", "resnet36_bottle", "resnet50_bottle",
    ]
    assert mnn.list_models(family="custom") == []
    with pytest.raises(ValueError, match="family must be one of"):
        mnn.list_models(family="fewshot")


def test_a_registered_model_without_family_is_custom() -> None:
    @mnn.register_model(name="_test_described_net")
    def described(**kwargs: object) -> nn.Module:
        """A two-by-two linear map,
        for the test.

        Details that are not part of the description.
        """
        return nn.Linear(2, 2)

    try:
        assert mnn.describe_models("_test_described_net") == [
            mnn.ModelInfo("_test_described_net", "custom", "A two-by-two linear map, for the test.")
        ]
        assert mnn.list_models(family="custom") == ["_test_described_net"]
    finally:
        registry._MODELS.pop("_test_described_net", None)
        registry._FAMILIES.pop("_test_described_net", None)
    with pytest.raises(ValueError, match="family must be one of"):
        mnn.register_model(name="_test_bad_family", family="imagenet")


@pytest.mark.parametrize("module", sorted(FORMER_EXPORTS))
def test_names_stay_importable_from_their_former_modules(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [n for n in FORMER_EXPORTS[module] if not hasattr(mod, n)]
    assert not missing, f"{module} lost {missing}"
    assert set(FORMER_EXPORTS[module]) <= set(mod.__all__)


def test_model_modules_stay_small() -> None:
    """One family per module: no module of metakd.nn grows past ~450 lines."""
    package = Path(mnn.__file__).parent
    sizes = {p.name: len(p.read_text().splitlines()) for p in package.glob("*.py")}
    assert max(sizes.values()) <= 450, sizes


def test_common_arguments_are_documented_once() -> None:
    """``Backbone`` documents the common arguments; each model class refers to them."""
    import inspect

    base = inspect.getdoc(mnn.Backbone) or ""
    for arg in ("num_classes", "in_channels", "head", "bn", "bn_mode", "bn_steps"):
        assert f"``{arg}``" in base, arg
    models = [getattr(mnn, n) for n in mnn.__all__ if inspect.isclass(getattr(mnn, n))]
    models = [m for m in models if issubclass(m, mnn.Backbone) and m is not mnn.Backbone]
    assert len(models) >= 12
    for model in models:
        doc = inspect.getdoc(model) or ""
        if "num_classes" not in inspect.signature(model).parameters:
            continue  # ConvNet: built by the factories
        assert "common arguments" in doc and "Backbone`" in doc, model.__name__
        for arg in ("num_classes", "in_channels", "head", "bn"):
            assert f"\n    {arg}:" not in doc, f"{model.__name__} documents {arg} again"
