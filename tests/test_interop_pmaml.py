"""PMAML ``*_max_acc.pt`` files (torchmeta key names) load into metakd's conv/resnet models.

The original state dicts are re-created here from PMAML's key layout (remiMZ/PMAML-ECAI20 at
266d067: ``ConvolutionalNeuralNetwork`` = ``encoder`` + average pooling + ``classifier``), and
:func:`pmaml_forward` re-states the original forward, independently of the converter.
``fixtures/pmaml_reference.json`` holds the outputs of PMAML's own modules on the same weights
(see its ``made_by``), which checks this re-creation against the original code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from metakd import interop
from metakd.engine.errors import InputError
from metakd.interop import pmaml
from metakd.interop._common import build_model

FIXTURE = Path(__file__).parent / "fixtures" / "pmaml_reference.json"

# metakd name: (PMAML layout, input shape)
CASES = {
    "conv4": ("conv", 4, (6, 3, 32, 32)),
    "conv2": ("conv", 2, (6, 3, 16, 16)),
    "conv1": ("conv", 1, (6, 1, 8, 8)),
    "resnet10": ("resnet", (1, 1, 1, 1), (4, 3, 16, 16)),
    "resnet18": ("resnet", (2, 2, 2, 2), (4, 3, 12, 12)),
}


def _blocks(layers: tuple[int, ...]) -> list[tuple[str, int, int, int]]:
    """``(prefix, in, out, stride)`` of each BasicBlock of PMAML's ResNet."""
    out, c_in = [], 64
    for s, (n, c) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
        for b in range(n):
            out.append((f"encoder.layer{s}.{b}.", c_in, c, 2 if s > 1 and b == 0 else 1))
            c_in = c
    return out


def pmaml_state(kind: str, depth: int | tuple[int, ...], in_channels: int = 3, ways: int = 5,
                seed: int = 0, prefix: str = "") -> dict[str, Tensor]:
    """A PMAML state dict with seeded float64 values, in the original's key order."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def conv(c_out: int, c_in: int, k: int) -> Tensor:
        return randn(c_out, c_in, k, k) * math.sqrt(2 / (c_in * k * k))

    state: dict[str, Tensor] = {}

    def bn(key: str, c: int, running: bool) -> None:
        state[key + "weight"], state[key + "bias"] = 1 + 0.1 * randn(c), 0.1 * randn(c)
        if running:
            state[key + "running_mean"] = 0.1 * randn(c)
            state[key + "running_var"] = 0.5 + torch.rand(c, generator=g, dtype=torch.float64)
            state[key + "num_batches_tracked"] = torch.tensor(7)

    if kind == "conv":
        assert isinstance(depth, int)
        for i in range(depth):
            state[f"encoder.encoder.{i}.0.weight"] = conv(64, in_channels if i == 0 else 64, 3)
            state[f"encoder.encoder.{i}.0.bias"] = 0.1 * randn(64)
            bn(f"encoder.encoder.{i}.1.", 64, running=False)
        features = 64
    else:
        assert isinstance(depth, tuple)
        state["encoder.conv1.weight"] = conv(64, in_channels, 3)
        bn("encoder.bn1.", 64, running=True)
        for key, c_in, c, stride in _blocks(depth):
            state[key + "conv1.weight"] = conv(c, c_in, 3)
            bn(key + "bn1.", c, running=True)
            state[key + "conv2.weight"] = conv(c, c, 3)
            bn(key + "bn2.", c, running=True)
            if stride != 1 or c_in != c:
                state[key + "downsample.0.weight"] = conv(c, c_in, 1)
                bn(key + "downsample.1.", c, running=True)
        features = 512
    state["classifier.weight"] = randn(ways, features) / math.sqrt(features)
    state["classifier.bias"] = 0.1 * randn(ways)
    return {prefix + k: v for k, v in state.items()}


def pmaml_forward(state: dict[str, Tensor], x: Tensor, training: bool) -> Tensor:
    """PMAML's forward: conv blocks (batch statistics always) or the ResNet, GAP, classifier."""
    s = {k.removeprefix("module."): v for k, v in state.items()}

    def bn(x: Tensor, key: str) -> Tensor:
        running = key + "running_mean" in s
        return F.batch_norm(x, s.get(key + "running_mean"), s.get(key + "running_var"),
                            s[key + "weight"], s[key + "bias"], training or not running)

    if "encoder.encoder.0.0.weight" in s:
        i = 0
        while f"encoder.encoder.{i}.0.weight" in s:
            x = F.conv2d(x, s[f"encoder.encoder.{i}.0.weight"], s[f"encoder.encoder.{i}.0.bias"],
                         padding=1)
            x = F.relu(bn(x, f"encoder.encoder.{i}.1."))
            x = F.max_pool2d(x, 2) if i < 4 else x
            i += 1
    else:
        x = F.relu(bn(F.conv2d(x, s["encoder.conv1.weight"], padding=1), "encoder.bn1."))
        layers = tuple(sum(1 for k in s if k.startswith(f"encoder.layer{n}.")
                           and k.endswith(".conv1.weight")) for n in range(1, 5))
        for key, _, _, stride in _blocks(layers):
            out = F.relu(bn(F.conv2d(x, s[key + "conv1.weight"], stride=stride, padding=1),
                            key + "bn1."))
            out = bn(F.conv2d(out, s[key + "conv2.weight"], padding=1), key + "bn2.")
            if key + "downsample.0.weight" in s:
                x = bn(F.conv2d(x, s[key + "downsample.0.weight"], stride=stride),
                       key + "downsample.1.")
            x = F.relu(out + x)
    return F.linear(x.mean(dim=(2, 3)), s["classifier.weight"], s["classifier.bias"])


def inputs(shape: tuple[int, ...], seed: int = 1) -> Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def clone(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in state.items()}


def rel_diff(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def case_state(arch: str, seed: int = 0, prefix: str = "") -> dict[str, Tensor]:
    kind, depth, shape = CASES[arch]
    return pmaml_state(kind, depth, in_channels=shape[1], seed=seed, prefix=prefix)


@pytest.mark.parametrize("arch", ["conv4", "conv2", "resnet10"])
def test_the_reimplemented_layout_is_pmamls(arch: str) -> None:
    """PMAML's own modules gave these keys and outputs on the same seeded weights."""
    ref = json.loads(FIXTURE.read_text())[arch]
    state = case_state(arch)
    assert list(state) == ref["keys"]
    x = inputs(tuple(ref["input_shape"]))
    for mode, training in (("eval", False), ("train", True)):
        out = pmaml_forward(clone(state), x, training)
        assert rel_diff(out, torch.tensor(ref[mode], dtype=torch.float64)) < 1e-12, mode


@pytest.mark.parametrize("arch", list(CASES))
def test_conversion_computes_pmamls_forward(arch: str) -> None:
    state = case_state(arch, seed=2, prefix="module." if arch == "conv2" else "")
    converted = interop.read(state)  # detected; the keys say the backbone
    assert converted is not None and converted.format == "pmaml" and converted.arch == arch
    model = build_model(converted)
    x = inputs(CASES[arch][2])
    for training in (False, True):
        model.train(training)
        original = clone(state)
        with torch.no_grad():
            assert rel_diff(model(x), pmaml_forward(original, x, training)) < 1e-9, training
    if arch.startswith("resnet"):  # the training forward moved the same running statistics
        assert torch.allclose(model.layer2[0].bn1.running_mean,
                              original["encoder.layer2.0.bn1.running_mean"], rtol=0, atol=1e-12)


def test_a_perturbed_tensor_is_caught() -> None:
    state = case_state("resnet10", seed=3)
    converted = pmaml.convert(state, "resnet10")
    converted.state["layer3.0.downsample.1.running_var"] = (
        converted.state["layer3.0.downsample.1.running_var"] * 1.01)
    model = build_model(converted).eval()
    x = inputs(CASES["resnet10"][2])
    with torch.no_grad():
        assert rel_diff(model(x), pmaml_forward(state, x, False)) > 1e-6


def test_teacher_and_student_files_load_as_teachers(tmp_path: Path) -> None:
    from metakd.distill import load_teacher

    for name, arch in (("teacher_cub_cub_conv4_max_acc.pt", "conv4"),
                       ("pmaml_every_cub_cub_conv2_max_acc.pt", "conv2")):
        torch.save(case_state(arch, seed=4), tmp_path / name)
        net = load_teacher(tmp_path / name, part="student")
        assert type(net).__name__ == "ConvNet" and len(net.encoder) == int(arch[-1])


def test_refusals_are_one_line() -> None:
    conv4 = case_state("conv4")
    with pytest.raises(InputError, match="holds PMAML's conv4 .*not 'conv2'"):
        interop.read(conv4, "conv2", source="t.pt")
    with pytest.raises(InputError, match="no ResNet-12"):
        pmaml.convert(conv4, "resnet12")
    with pytest.raises(InputError, match=r"\[1, 2, 1, 1\] BasicBlocks"):
        pmaml.convert(pmaml_state("resnet", (1, 2, 1, 1)))
    three = {k: v for k, v in conv4.items() if not k.startswith("encoder.encoder.3.")}
    with pytest.raises(InputError, match="conv backbone of 3 blocks") as e:
        pmaml.convert(three)
    assert "\n" not in str(e.value)
    flat = {**conv4, "classifier.weight": torch.zeros(5, 64 * 25, dtype=torch.float64)}
    with pytest.raises(InputError, match="takes 1600 features"):
        pmaml.convert(flat)
