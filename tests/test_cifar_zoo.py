"""mdistiller's CIFAR-100 model zoo in metakd: same parameters, same keys, same function.

The reference is ``megvii-research/mdistiller`` at commit
``a08d46f10d6102bd6e3f258ca5ac880b020ea259`` (``mdistiller/models/cifar/``), for every
architecture of its ``cifar_model_dict`` but ``ResNet18`` (a student of its Tiny-ImageNet
table only).

How the numbers below and ``fixtures/mdistiller_cifar_zoo.json`` were made, once, outside the
repository: the files of ``mdistiller/models/cifar/`` at that commit were copied into a scratch
package; each model was built by its ``cifar_model_dict`` entry with ``num_classes=100``; its
parameters were counted and the sha256 of its sorted ``"key:shape"`` lines (see
:func:`key_lines`) was taken; every tensor of its state dict was then replaced by
:func:`filled` (a float64 value drawn from a generator seeded by the key's name), the model
was put in ``eval()`` mode in float64 and run on :func:`probe_input` (two 32×32 images from
seed 0), and :func:`summary` of its logits ``[2, 100]`` was written to the fixture. The
script imported :func:`filled`, :func:`summary` and :func:`probe_input` from this file, so
both sides fill and summarise the same way.

Here each metakd model is built by the same name, its keys are translated back to the
original's with :func:`metakd.nn.original_key_map`, filled by the same rule, and run in the
same way: every summary value must agree to 1e-9 of the logits' scale.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import metakd.nn as mnn

FIXTURE = Path(__file__).parent / "fixtures" / "mdistiller_cifar_zoo.json"
MDISTILLER_COMMIT = "a08d46f10d6102bd6e3f258ca5ac880b020ea259"


# --- the shared recipe (the fixture's script imported these) ----------------------------------
def filled(key: str, like: Tensor) -> Tensor:
    """The deterministic float64 value of the state-dict entry ``key`` (an original name).

    Seeded by the sha256 of the key; conv/linear weights uniform with variance ``2 / fan_in``;
    BN scales and running variances in [0.5, 1.5); running means, shifts and biases in
    [-0.1, 0.1). Integer entries (``num_batches_tracked``) are kept.
    """
    if not like.is_floating_point():
        return like.clone()
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1
    u = torch.rand(like.shape, generator=torch.Generator().manual_seed(seed),
                   dtype=torch.float64)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_var" or (leaf == "weight" and like.dim() == 1):
        return 0.5 + u
    if like.dim() == 1:
        return 0.2 * (u - 0.5)
    return (2 * u - 1) * math.sqrt(6.0 / like[0].numel())


def probe_input() -> Tensor:
    """Two float64 images ``[2, 3, 32, 32]`` from seed 0."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64)


def summary(logits: Tensor) -> dict[str, Any]:
    """The first 10 logits of each image and sums over all ``[2, 100]`` of them."""
    weights = torch.sin(torch.arange(1, logits.numel() + 1, dtype=torch.float64))
    flat = logits.detach().double().flatten()
    return {
        "first": logits[:, :10].flatten().tolist(),
        "max_abs": float(flat.abs().max()),
        "sum": float(flat.sum()),
        "abs_sum": float(flat.abs().sum()),
        "weighted_sum": float((weights * flat).sum()),
        "argmax": logits.argmax(1).tolist(),
    }


def key_lines(state: dict[str, Tensor]) -> str:
    """``"key:d0xd1x..."`` lines of a state dict, sorted, joined by newlines."""
    return "\n".join(sorted(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in state.items()))


# --- the reference numbers --------------------------------------------------------------------
# name: (parameters at 100 classes, sha256 of key_lines of the original's state dict), computed
# from mdistiller's own definitions at MDISTILLER_COMMIT.
ORIGINAL: dict[str, tuple[int, str]] = {
    "resnet8": (83_892, "ba877b25108cf0b20322572d01867150918584c8020a423ff0279b4c7af12636"),
    "resnet14": (181_108, "0020493f76ff8f81bfd595ce36eaa94171b1eb7f55bbfb5173ca3bd05bab2e80"),
    "resnet20": (278_324, "9ae23db380f6609a904cc910da2f6d09ad02167be891ee7811f59d1cb5d5e44f"),
    "resnet32": (472_756, "afdb21d9a555c406b37d0ba0922a480aeac0e9642b3912a96e767a1f80475d90"),
    "resnet44": (667_188, "0b578a9b4e42ecd1ddaa5fc07f6b99f2cb1207cb47a4a427b7dbbe15866d5d28"),
    "resnet56": (861_620, "aeeb07ae8bb76990bd7476eb655e12a9aedda3f1840439d264a3921db12391a7"),
    "resnet110": (1_736_564, "78866feb569405a9c78cb30cddcda8c396741a2868b16a2789875f07b68ac884"),
    "resnet8x4": (1_233_540, "1b2c5a0604a6274e6bec8c804f088eb3e0a080a09616da9dbb4be78ac6727c08"),
    "resnet32x4": (7_433_860, "d5c86d1312f03cca31e250f6811ed7765ccf5b062f51495b96d02bc312c048dc"),
    "ResNet50": (23_705_252, "fc8911e14af586b3fc5925a630b0dc1e87fcbdbcd95aed7d9936244ccce6f92c"),
    "wrn_16_1": (180_916, "94152702b8355329d96915bc5fabfaecbb789ba52125d47dfc4ac8aa72fe9958"),
    "wrn_16_2": (703_284, "af3878270cfa238e1c6965cd4f456d728ac2300e45a93e9f39e6a781de1a9610"),
    "wrn_40_1": (569_780, "923f41225b5c84b940cbf3ccee951cf87fc83a3489bb2197fa7209e95b32c74e"),
    "wrn_40_2": (2_255_156, "e2f6e2026dd09ff07d268148c0ccbc8a243cfdb091dbf9faac930d5c8e9a3964"),
    "vgg8": (3_965_028, "3e03c7261910e8247230728daf5b733bb58f5f8a61ba1b8eebe7ecab578abaff"),
    "vgg11": (9_277_284, "91c4f6192d92984c1727a3e1d9a72c2e93cec959b7b116e600fc7a8c311723da"),
    "vgg13": (9_462_180, "40400133f578eb17fef8c677beecfad8b54ae22d03cc1e26216849b4935ac13e"),
    "vgg16": (14_774_436, "dcbe6982cfca1b5e52faa096e81c8f9986c739fb76e578d7dc807ead64adb766"),
    "vgg19": (20_086_692, "0e3c070960893fa7389096310eceff74a56f9c0eba4e367b311ecd958faffaa3"),
    "MobileNetV2": (812_836, "b97e51549e7cf1244ad315ab4d56682cf3ed2d15d91d3b2497046f25bdcaf0cb"),
    "ShuffleV1": (949_258, "b714b6c6e46b33bdbf62e976f896a53e194f2ab15454cf7640d95dbd0bda5a99"),
    "ShuffleV2": (1_355_528, "07d59692e0bad170ede51640cc2cc83e26ba83929553f1c1adb75586bb922bf3"),
}

# A few keys of the original state dicts and their shapes, spelled out.
ORIGINAL_KEYS: dict[str, dict[str, tuple[int, ...]]] = {
    "resnet44": {"layer3.6.bn2.running_mean": (64,), "layer2.0.downsample.0.weight": (32, 16, 1, 1),
                 "fc.weight": (100, 64)},
    "ResNet50": {"layer1.0.shortcut.0.weight": (256, 64, 1, 1),
                 "layer4.2.conv3.weight": (2048, 512, 1, 1), "linear.weight": (100, 2048)},
    "wrn_16_1": {"block2.layer.0.convShortcut.weight": (32, 16, 1, 1), "fc.weight": (100, 64)},
    "wrn_40_2": {"block1.layer.0.convShortcut.weight": (32, 16, 1, 1),
                 "block3.layer.5.conv2.weight": (128, 128, 3, 3), "bn1.running_var": (128,),
                 "fc.weight": (100, 128)},
    "vgg8": {"block4.1.num_batches_tracked": (), "classifier.bias": (100,)},
    "vgg13": {"block0.0.weight": (64, 3, 3, 3), "block0.4.running_mean": (64,),
              "block4.3.bias": (512,), "classifier.weight": (100, 512)},
    "MobileNetV2": {"conv1.0.weight": (16, 3, 3, 3), "blocks.0.0.conv.0.weight": (16, 16, 1, 1),
                    "blocks.6.0.conv.7.running_var": (160,), "conv2.0.weight": (1280, 160, 1, 1),
                    "classifier.0.weight": (100, 1280)},
    "ShuffleV1": {"layer1.0.conv1.weight": (54, 24, 1, 1), "layer2.0.conv1.weight": (60, 80, 1, 1),
                  "layer3.3.bn3.weight": (960,), "linear.weight": (100, 960)},
    "ShuffleV2": {"layer1.0.conv1.weight": (24, 1, 3, 3), "layer2.7.conv2.weight": (116, 1, 3, 3),
                  "conv2.weight": (1024, 464, 1, 1), "linear.weight": (100, 1024)},
}

NAMES = list(ORIGINAL)
# The forward comparison of one network of each family runs by default, the rest with the
# slow tests (float64 forwards of the large ones, and float64 depthwise convolutions, which
# PyTorch runs group by group, take seconds on a shared CPU).
QUICK = ("resnet14", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2")
FORWARD = [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in NAMES]
REFERENCE: dict[str, dict[str, Any]] = json.loads(FIXTURE.read_text())["logits"]


# --- helpers ----------------------------------------------------------------------------------
def to_original(state: dict[str, Tensor], name: str) -> dict[str, Tensor]:
    """metakd's state dict of ``name`` in the original's key names (the inverse renaming)."""
    back = {new: old for old, new in mnn.original_key_map(name).items()}
    out = {}
    for key, value in state.items():
        prefix = next((p for p in back if key.startswith(p)), None)
        out[key if prefix is None else back[prefix] + key[len(prefix):]] = value
    return out


def filled_model(name: str) -> nn.Module:
    """metakd's ``name`` in float64, eval mode, every entry filled from its original key."""
    with torch.device("meta"):
        net = mnn.create(name, num_classes=100)
    net = net.to_empty(device="cpu").double()
    originals = to_original(net.state_dict(), name)
    own_keys = list(net.state_dict())
    state = mnn.rename_original_keys({k: filled(k, v) for k, v in originals.items()}, name)
    assert list(state) == own_keys  # the renaming round-trips
    net.load_state_dict(state)
    return net.eval()


def assert_matches(got: dict[str, Any], want: dict[str, Any], rel: float = 1e-9) -> None:
    """Every summary value within ``rel`` of the logits' scale."""
    assert got["argmax"] == want["argmax"]
    scale = want["max_abs"]
    first = torch.tensor(got["first"]) - torch.tensor(want["first"])
    assert float(first.abs().max()) <= rel * scale, (got["first"], want["first"])
    assert abs(got["max_abs"] - scale) <= rel * scale
    for key in ("sum", "abs_sum", "weighted_sum"):
        assert abs(got[key] - want[key]) <= rel * want["abs_sum"], (key, got[key], want[key])


# --- names, sizes, keys -----------------------------------------------------------------------
def test_fixture_covers_the_zoo() -> None:
    assert sorted(REFERENCE) == sorted(NAMES)
    assert json.loads(FIXTURE.read_text())["mdistiller_commit"] == MDISTILLER_COMMIT
    assert all(mnn.is_model(n) for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_parameters_and_state_dict_keys(name: str) -> None:
    with torch.device("meta"):
        net = mnn.create(name, num_classes=100)
    params, sha = ORIGINAL[name]
    assert sum(p.numel() for p in net.parameters()) == params
    original = to_original(net.state_dict(), name)
    assert hashlib.sha256(key_lines(original).encode()).hexdigest() == sha
    for key, shape in ORIGINAL_KEYS.get(name, {}).items():
        assert tuple(original[key].shape) == shape, key
    assert net.head.weight.shape == (100, net.feature_dim)  # the classifier is metakd's head
    assert net.out_features == 100


def test_key_maps() -> None:
    assert mnn.original_key_map("MobileNetV2") == {"classifier.0.": "head."}
    assert mnn.original_key_map("vgg19") == {"classifier.": "head."}
    assert mnn.original_key_map("ShuffleV1") == mnn.original_key_map("ResNet50") == {
        "linear.": "head."}
    assert mnn.original_key_map("wrn_16_2") == mnn.original_key_map("resnet56") == {
        "fc.": "head."}
    assert mnn.original_key_map("conv4") == {}
    with pytest.raises(ValueError, match="unknown model 'vgg13_bn'"):
        mnn.original_key_map("vgg13_bn")


def test_resnet50_is_not_resnet50_bottle() -> None:
    with torch.device("meta"):
        bottle = mnn.create("resnet50_bottle", num_classes=100)
    assert sum(p.numel() for p in bottle.parameters()) != ORIGINAL["ResNet50"][0]


# --- the same function ------------------------------------------------------------------------
@pytest.mark.parametrize("name", FORWARD)
def test_same_logits_as_mdistiller(name: str) -> None:
    net = filled_model(name)
    with torch.no_grad():
        logits = net(probe_input())
    assert logits.shape == (2, 100) and logits.dtype == torch.float64
    assert_matches(summary(logits), REFERENCE[name])


def test_the_comparison_can_fail() -> None:
    # One running variance in the middle of the network a little off: far outside 1e-9.
    net = filled_model("wrn_16_1")
    with torch.no_grad():
        net.block2.layer[1].bn2.running_var.mul_(1.001)
        logits = net(probe_input())
    with pytest.raises(AssertionError):
        assert_matches(summary(logits), REFERENCE["wrn_16_1"])
    with torch.no_grad():  # the forward that skips the 64-px-only pool is the one compared
        vgg = filled_model("vgg8")
        assert_matches(summary(vgg(probe_input())), REFERENCE["vgg8"])
        assert vgg.feature_map(torch.zeros(1, 3, 64, 64, dtype=torch.float64)).shape[-1] == 4


@pytest.mark.parametrize(("name", "prefix"), [
    ("vgg8", "module."),  # saved from DataParallel
    ("ShuffleV2", ""),
    pytest.param("MobileNetV2", "", marks=pytest.mark.slow),
])
def test_load_teacher_reads_mdistiller_checkpoints(name: str, prefix: str,
                                                   tmp_path: Path) -> None:
    from metakd.distill import load_teacher

    with torch.device("meta"):
        shapes = to_original(mnn.create(name, num_classes=100).state_dict(), name)
    state = {prefix + k: filled(k, torch.empty_like(v, device="cpu")) for k, v in shapes.items()}
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": state, "epoch": 240, "best_acc": 70.0}, path)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # a float64 model keeps the float64 weights exactly
    try:
        teacher = load_teacher(path, arch=name, num_classes=100)
    finally:
        torch.set_default_dtype(default)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        assert_matches(summary(teacher(probe_input())), REFERENCE[name])


# --- heterogeneous teacher -> student pairs of mdistiller's CIFAR-100 table --------------------
@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import fixtures_formats as fx

    path = tmp_path_factory.mktemp("cifar")
    fx.cifar100_python(path, fx.FINE, fx.COARSE, fx.SUPER_OF, train_per_class=1,
                       test_per_class=1)
    return path


def _mdistiller_checkpoint(name: str, path: Path) -> dict[str, Tensor]:
    """Save a fresh metakd ``name`` as an mdistiller checkpoint; return its metakd weights."""
    torch.manual_seed(1)
    state = mnn.create(name, num_classes=100).state_dict()
    torch.save({"model": to_original(state, name), "epoch": 240}, path)
    return state


@pytest.mark.parametrize(("teacher", "student", "distill"), [
    ("vgg13", "MobileNetV2", "mdistiller_dkd"),
    pytest.param("ResNet50", "MobileNetV2", "mdistiller_kd", marks=pytest.mark.slow),
    ("wrn_40_2", "ShuffleV1", "mdistiller_kd"),
    ("resnet32x4", "ShuffleV2", "mdistiller_dkd"),
])
def test_cifar_kd_step_across_families(teacher: str, student: str, distill: str,
                                       cifar_root: Path, tmp_path: Path) -> None:
    from metakd.recipes import CifarKDConfig
    from metakd.recipes.cifar_kd import build

    path = tmp_path / f"{teacher}_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    _mdistiller_checkpoint(teacher, path)
    cfg = CifarKDConfig.paper(root=str(cifar_root), out_dir=str(tmp_path / "run"), arch=student,
                              teacher=str(path), teacher_arch=teacher, distill=distill,
                              batch_size=2, epochs=1, steps=1, val_every=1000, test_queries=50)
    parts = build(cfg)
    assert type(parts.model).__name__ == STUDENT_CLASSES[student]
    before = [p.detach().clone() for p in parts.model.parameters()]
    loss, metrics = parts.loss_fn(parts.learner, next(iter(parts.train_data)), 0)
    assert torch.isfinite(loss) and len(metrics["terms"]) >= 2  # CE and the KD/DKD term
    loss.backward()
    parts.optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, parts.model.parameters()))


STUDENT_CLASSES = {"MobileNetV2": "CifarMobileNetV2", "ShuffleV1": "CifarShuffleNetV1",
                   "ShuffleV2": "CifarShuffleNetV2"}
