"""learn2learn's vision models' state dicts load into metakd models computing the same function.

The learn2learn models are built here (learn2learn 0.2.0), given seeded float64 weights and
random running statistics, and compared with the converted metakd model in ``eval()`` and
``train()``; an ``OmniglotCNN`` is refused in one line naming the padding difference.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from metakd import interop
from metakd.engine.errors import InputError
from metakd.interop import learn2learn as l2l_format
from metakd.interop._common import build_model

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    l2l = pytest.importorskip("learn2learn")

pytestmark = pytest.mark.learn2learn


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """float64, every parameter and BN statistic drawn from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    model = model.double()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g, dtype=t.dtype))
            elif t.is_floating_point():
                scale = 1.0 if t.dim() == 1 else (2.0 / t[0].numel()) ** 0.5
                base = 1.0 if name.endswith("normalize.weight") or ".bn" in name else 0.0
                t.copy_(base + scale * torch.randn(t.shape, generator=g, dtype=t.dtype)
                        * (0.1 if t.dim() == 1 else 1.0))
    return model


def inputs(*shape: int, seed: int = 1) -> Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rel_diff(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def compare(original: nn.Module, converted: interop.Converted, x: Tensor,
            modes: tuple[bool, ...] = (False, True)) -> None:
    model = build_model(converted)
    for training in modes:
        original.train(training)
        model.train(training)
        with torch.no_grad():
            assert rel_diff(model(x), original(x)) < 1e-9, training
    if True in modes:  # both moved their running statistics alike
        mine = {k: v for k, v in model.state_dict().items() if k.endswith("running_mean")}
        theirs = [v for k, v in original.state_dict().items() if k.endswith("running_mean")]
        assert all(torch.allclose(a, b, rtol=0, atol=1e-12)
                   for a, b in zip(mine.values(), theirs))


@pytest.mark.parametrize(("make", "shape"), [
    (lambda: l2l.vision.models.MiniImagenetCNN(5, hidden_size=32), (3, 3, 84, 84)),
    (lambda: l2l.vision.models.CNN4(20, hidden_size=16, channels=1, embedding_size=16),
     (4, 1, 28, 28)),
], ids=["miniimagenet-32", "omniglot-sized-16"])
def test_cnn4_is_conv4_with_a_flatten_head(make, shape) -> None:  # type: ignore[no-untyped-def]
    original = randomise(make())
    converted = interop.read(original.state_dict())
    assert converted is not None and converted.format == "learn2learn"
    assert converted.arch == "conv4" and converted.model_kwargs["head"] == "flatten"
    compare(original, converted, inputs(*shape))


def test_cnn4_inside_l2l_maml_and_transductive() -> None:
    original = randomise(l2l.vision.models.CNN4(5, hidden_size=8), seed=2)
    state = l2l.algorithms.MAML(original, lr=0.1).state_dict()  # keys under module.
    assert all(k.startswith("module.") for k in state)
    converted = l2l_format.convert(state, "conv4", bn_mode="transductive")
    assert not any("running" in k for k in converted.state)
    compare(original, converted, inputs(2, 3, 84, 84), modes=(True,))  # train: batch stats


@pytest.mark.parametrize("wider", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_resnet12_is_metakds_resnet12(wider: bool) -> None:
    original = randomise(l2l.vision.models.ResNet12(5, hidden_size=640 if wider else 512,
                                                    wider=wider, dropblock_dropout=0.0), seed=3)
    converted = interop.read(original.state_dict())
    assert converted is not None and converted.arch == "resnet12"
    assert converted.model_kwargs["channels"][-1] == (640 if wider else 512)
    compare(original, converted, inputs(1, 3, 80, 80))  # a 5x5 last map: AvgPool2d(5) = mean


def test_a_perturbed_tensor_is_caught() -> None:
    original = randomise(l2l.vision.models.MiniImagenetCNN(5, hidden_size=8), seed=4).eval()
    converted = l2l_format.convert(original.state_dict())
    key = "encoder.block2.bn.running_mean"
    converted.state[key] = converted.state[key] + 1e-3  # (the tensors are the model's own)
    model = build_model(converted).eval()
    x = inputs(2, 3, 84, 84)
    with torch.no_grad():
        assert rel_diff(model(x), original(x)) > 1e-6


def test_refusals_state_the_difference(tmp_path: Path) -> None:
    from metakd.distill import load_teacher

    omni = l2l.vision.models.OmniglotCNN(5)
    torch.save(omni.state_dict(), tmp_path / "omniglot.pt")
    with pytest.raises(InputError, match="pads its 3x3 stride-2 convolutions by 1 pixel") as e:
        load_teacher(tmp_path / "omniglot.pt")
    assert "\n" not in str(e.value) and "omniglot.pt" in str(e.value)
    flat = l2l.vision.models.ResNet12(5, hidden_size=16000, avg_pool=False)
    with pytest.raises(InputError, match="avg_pool=False flattens"):
        l2l_format.convert(flat.state_dict())
    two = l2l.vision.models.CNN4(5, layers=2, hidden_size=8)
    with pytest.raises(InputError, match="2 layers max-pools by 4x4 .*conv2 pools by 2x2"):
        l2l_format.convert(two.state_dict())
    with pytest.raises(InputError, match="which is metakd's 'conv4', not 'resnet12'"):
        l2l_format.convert(l2l.vision.models.CNN4(5, hidden_size=8).state_dict(), "resnet12")
