"""Tests for the metakd.nn backbones: parameter counts, shapes, functional transforms."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

import metakd.nn as mnn

# ---------------------------------------------------------------------------------------------
# Parameter counts, by arithmetic.
#
# conv3x3 c_in→c_out with bias: 9·c_in·c_out + c_out.  BN: 2c (γ, β) or c (β only).
# Meta-Baseline block (i→c): convs 9ic + 2·9c², shortcut 1×1 ic, 4 BNs 8c → 10ic + 18c² + 8c.
# Identity Meta-Baseline block (c→c): 27c² + 6c.  BasicBlock c→c: 18c² + 4c;
# BasicBlock i→c with conv1x1+BN shortcut: 9ic + 9c² + ic + 6c = 10ic + 9c² + 6c.
PARAM_COUNTS: list[tuple[str, dict[str, Any], int]] = [
    # dragen Omniglot: conv 1→64 3×3 (640) + 2 × conv 64→64 3×3 (36,928 each)
    # + conv 64→64 2×2 (16,448) + 4 BN (4·128) + linear 64→5 (325) = 91,781
    ("maml_pytorch_omniglot", {}, 640 + 2 * 36_928 + 16_448 + 4 * 128 + 325),
    # dragen miniImageNet: conv 3→32 (896) + 3 × conv 32→32 (9,248) + 4 BN (4·64)
    # + linear 800→5 (4,005) = 32,901
    ("maml_pytorch_miniimagenet", {}, 896 + 3 * 9_248 + 4 * 64 + 4_005),
    # TF Omniglot: conv 1→64 (640) + 3 × 36,928 + 4 BN β-only (4·64) + linear 64→5 (325)
    # = 112,005; with γ: + 4·64 = 112,261
    ("maml_omniglot", {}, 640 + 3 * 36_928 + 4 * 64 + 325),
    ("maml_omniglot", {"bn_scale": True}, 640 + 3 * 36_928 + 4 * 128 + 325),
    # TF miniImageNet: 896 + 3 · 9,248 + 4 BN β-only (4·32) + 4,005 = 32,773
    ("maml_miniimagenet", {}, 896 + 3 * 9_248 + 4 * 32 + 4_005),
    # MAML conv-4 (32 filters, flatten 800 at 84 px, γ and β) = the 32,901 learner
    (
        "conv4",
        {"hidden": 32, "head": "flatten", "image_size": 84},
        896 + 3 * 9_248 + 4 * 64 + 4_005,
    ),
    # PMAML conv-N, 64 filters, GAP → linear 64→5 (325); first block 1,792 + 128 = 1,920,
    # every further block 36,928 + 128 = 37,056
    ("conv1", {}, 1_920 + 325),
    ("conv2", {}, 1_920 + 37_056 + 325),
    ("conv4", {}, 1_920 + 3 * 37_056 + 325),
    ("conv4", {"in_channels": 1}, 640 + 128 + 3 * 37_056 + 325),
    ("conv6", {}, 1_920 + 5 * 37_056 + 325),
    ("conv8", {}, 1_920 + 7 * 37_056 + 325),
    # Meta-Baseline ResNet-12 (encoder): blocks 3→64 76,160; 64→128 377,856;
    # 128→256 1,509,376; 256→512 6,033,408 → 7,996,800
    ("resnet12", {"num_classes": 0}, 76_160 + 377_856 + 1_509_376 + 6_033_408),
    # + linear 512→64 (32,832)
    ("resnet12", {"num_classes": 64}, 7_996_800 + 32_832),
    # wide 64-160-320-640: 76,160 + 564,480 + 2,357,760 + 9,425,920 = 12,424,320
    ("resnet12", {"num_classes": 0, "wide": True}, 76_160 + 564_480 + 2_357_760 + 9_425_920),
    # GDA bottle: ResNet-12 + identity blocks (c=64: 110,976; 128: 443,136;
    # 256: 1,771,008; 512: 7,080,960) for layers[s] - 1 extra blocks per stage
    ("resnet12_bottle", {"num_classes": 0}, 7_996_800),
    ("resnet18_bottle", {"num_classes": 0}, 7_996_800 + 443_136 + 1_771_008),
    (
        "resnet36_bottle",
        {"num_classes": 0},
        7_996_800 + 110_976 + 2 * 443_136 + 4 * 1_771_008 + 7_080_960,
    ),
    (
        "resnet50_bottle",
        {"num_classes": 0},
        7_996_800 + 2 * 110_976 + 3 * 443_136 + 5 * 1_771_008 + 2 * 7_080_960,
    ),
    # FEAT/PMAML ResNet-10: stem 1,728 + 128; layer1 73,984; layer2 (64→128) 230,144;
    # layer3 (128→256) 919,040; layer4 (256→512) 3,673,088 → 4,898,112
    ("resnet10", {"num_classes": 0}, 1_856 + 73_984 + 230_144 + 919_040 + 3_673_088),
    # ResNet-18: + one more identity BasicBlock per stage: 73,984; 295,424; 1,180,672;
    # 4,720,640 → 11,168,832 (= torchvision resnet18 11,176,512 − 7×7 stem 9,408 + 1,728)
    (
        "resnet18",
        {"num_classes": 0},
        4_898_112 + 73_984 + 295_424 + 1_180_672 + 4_720_640,
    ),
    # MTL TF ResNet-12: per block convs with bias, 1×1 shortcut without bias, 3 BN β-only:
    # 3→64 76,032; 64→128 377,600; 128→256 1,508,864; 256→512 6,032,384 → 7,994,880
    ("mtl_resnet12", {"num_classes": 0}, 76_032 + 377_600 + 1_508_864 + 6_032_384),
    # CIFAR, 100 classes. [16,16,32,64]: stem 432 + 32 = 464; stage1 block 4,672;
    # stage2 first 14,528, then 18,560; stage3 first 57,728, then 73,984; fc 6,500.
    ("resnet8", {}, 464 + 4_672 + 14_528 + 57_728 + 6_500),
    ("resnet20", {}, 464 + 3 * 4_672 + 14_528 + 2 * 18_560 + 57_728 + 2 * 73_984 + 6_500),
    ("resnet32", {}, 464 + 5 * 4_672 + 14_528 + 4 * 18_560 + 57_728 + 4 * 73_984 + 6_500),
    ("resnet56", {}, 464 + 9 * 4_672 + 14_528 + 8 * 18_560 + 57_728 + 8 * 73_984 + 6_500),
    ("resnet110", {}, 464 + 18 * 4_672 + 14_528 + 17 * 18_560 + 57_728 + 17 * 73_984 + 6_500),
    # [32,64,128,256]: stem 864 + 64 = 928; first blocks 57,728 / 230,144 / 919,040;
    # identity blocks 73,984 / 295,424 / 1,180,672; fc 256·100 + 100 = 25,700.
    ("resnet8x4", {}, 928 + 57_728 + 230_144 + 919_040 + 25_700),
    (
        "resnet32x4",
        {},
        928 + 57_728 + 230_144 + 919_040 + 4 * (73_984 + 295_424 + 1_180_672) + 25_700,
    ),
]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def create(name: str, **kwargs: Any) -> Any:
    """``mnn.create`` typed ``Any``, so the tests can reach model-specific attributes."""
    return mnn.create(name, **kwargs)


def create_meta(name: str, **kwargs: Any) -> Any:
    """Build a model on the meta device: shapes and counts without memory or compute."""
    with torch.device("meta"):
        return create(name, **kwargs)


@pytest.mark.parametrize(("name", "kwargs", "expected"), PARAM_COUNTS)
def test_parameter_count(name: str, kwargs: dict[str, Any], expected: int) -> None:
    assert n_params(create_meta(name, **kwargs)) == expected


def test_literature_anchors() -> None:
    assert n_params(create("maml_pytorch_omniglot")) == 91_781
    assert n_params(create("maml_pytorch_miniimagenet")) == 32_901
    assert n_params(create("resnet20")) == 278_324  # ≈ 0.278M
    assert n_params(create("resnet56")) == 861_620  # ≈ 0.861M


# ---------------------------------------------------------------------------------------------
# Shapes at the literature's input sizes

SHAPES: list[tuple[str, dict[str, Any], tuple[int, int, int], int, int]] = [
    # name, kwargs, input [C, H, W], feature_dim, out_features
    ("maml_omniglot", {}, (1, 28, 28), 64, 5),
    ("maml_pytorch_omniglot", {}, (1, 28, 28), 64, 5),
    ("maml_miniimagenet", {}, (3, 84, 84), 800, 5),
    ("maml_pytorch_miniimagenet", {}, (3, 84, 84), 800, 5),
    ("conv4", {"in_channels": 1, "num_classes": 20}, (1, 28, 28), 64, 20),
    ("conv4", {"head": "flatten", "image_size": 84}, (3, 84, 84), 1600, 5),
    ("conv4", {"head": "flatten", "image_size": 28, "in_channels": 1}, (1, 28, 28), 64, 5),
    ("conv6", {"head": "flatten", "image_size": 84}, (3, 84, 84), 1600, 5),
    ("conv8", {}, (3, 84, 84), 64, 5),
    ("conv1", {"head": "flatten", "image_size": 84}, (3, 84, 84), 64 * 42 * 42, 5),
    ("conv2", {"head": None}, (3, 84, 84), 64, 64),
    ("resnet12", {"num_classes": 64}, (3, 80, 80), 512, 64),
    ("resnet12", {"wide": True, "num_classes": 0}, (3, 80, 80), 640, 640),
    ("resnet12_bottle", {}, (3, 80, 80), 512, 5),
    ("resnet10", {}, (3, 84, 84), 512, 5),
    ("resnet18", {"head": "cosine"}, (3, 84, 84), 512, 5),
    ("mtl_resnet12", {}, (3, 84, 84), 512, 5),
    ("resnet8", {}, (3, 32, 32), 64, 100),
    ("resnet20", {"num_classes": 10}, (3, 32, 32), 64, 10),
    ("resnet8x4", {}, (3, 32, 32), 256, 100),
]


@pytest.mark.parametrize(("name", "kwargs", "chw", "dim", "out"), SHAPES)
def test_output_shapes(
    name: str, kwargs: dict[str, Any], chw: tuple[int, int, int], dim: int, out: int
) -> None:
    # Shape propagation on the meta device (no compute); real forwards are tested below.
    net = create_meta(name, **kwargs)
    assert isinstance(net, mnn.Backbone)
    x = torch.empty(2, *chw, device="meta")
    feats = net.features(x)
    assert feats.shape == (2, dim) and net.feature_dim == dim
    assert net(x).shape == (2, out) and net.out_features == out


def test_real_forward_resnet12_at_80px() -> None:
    torch.manual_seed(0)
    net = create("resnet12", num_classes=64).eval()
    x = torch.randn(1, 3, 80, 80)
    with torch.no_grad():
        feats = net.features(x)
        logits = net(x)
    assert feats.shape == (1, 512) and logits.shape == (1, 64)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(net.head(feats), logits)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "size"),
    [("resnet18", 84), ("resnet36_bottle", 80), ("resnet50_bottle", 80), ("resnet110", 32)],
)
def test_real_forward_large(name: str, size: int) -> None:
    net = mnn.create(name, num_classes=7)
    with torch.no_grad():
        assert net(torch.randn(2, 3, size, size)).shape == (2, 7)


def _record_shapes(encoder: nn.Sequential, x: torch.Tensor) -> list[tuple[int, ...]]:
    shapes = []
    with torch.no_grad():
        for block in encoder:
            x = block(x)
            shapes.append(tuple(x.shape[1:]))
    return shapes


def test_intermediate_shapes_of_the_maml_nets() -> None:
    omni = torch.randn(2, 1, 28, 28)
    mini = torch.randn(2, 3, 84, 84)
    assert _record_shapes(create("maml_omniglot").encoder, omni) == [
        (64, 14, 14), (64, 7, 7), (64, 4, 4), (64, 2, 2),
    ]  # fmt: skip
    assert _record_shapes(create("maml_pytorch_omniglot").encoder, omni) == [
        (64, 13, 13), (64, 6, 6), (64, 2, 2), (64, 1, 1),
    ]  # fmt: skip
    assert _record_shapes(create("maml_pytorch_miniimagenet").encoder, mini) == [
        (32, 41, 41), (32, 19, 19), (32, 8, 8), (32, 5, 5),
    ]  # fmt: skip
    assert _record_shapes(create("maml_miniimagenet").encoder, mini) == [
        (32, 42, 42), (32, 21, 21), (32, 10, 10), (32, 5, 5),
    ]  # fmt: skip


def test_dragen_layer_order_and_tf_same_padding() -> None:
    block = create("maml_pytorch_omniglot").encoder[0]
    assert [name for name, _ in block.named_children()] == ["conv", "relu", "bn"]
    tf_block = create("maml_omniglot").encoder[0]
    assert [name for name, _ in tf_block.named_children()] == ["pad", "conv", "bn", "relu"]
    # TF SAME, 3×3 stride 2: 28 px pads 0 before and 1 after (7 px: 1 and 1).
    x = torch.randn(2, 1, 28, 28)
    conv = tf_block.conv
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2)
    torch.testing.assert_close(conv(tf_block.pad(x)), expected)
    assert mnn.TFSamePad2d(3, 2)(torch.zeros(1, 1, 7, 7)).shape == (1, 1, 9, 9)


def test_tf_defaults_of_the_maml_reference_nets() -> None:
    net = create("maml_omniglot")
    bns = [m for m in net.modules() if isinstance(m, mnn.BatchNorm2d)]
    assert len(bns) == 4
    assert all(m.weight is None and m.bias is not None and m.eps == 1e-3 for m in bns)
    assert all(m.mode == "transductive" for m in bns)
    assert float(net.head.weight.detach().std()) > 0.5  # tf.random_normal, std 1


def test_head_options_and_feature_extractors() -> None:
    x = torch.randn(3, 1, 28, 28)
    extractor = create("maml_omniglot", num_classes=0)
    assert isinstance(extractor.head, nn.Identity) and extractor(x).shape == (3, 64)
    assert create("resnet20", head=None)(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    cos = create("maml_omniglot", head="cosine", ways=4)
    assert isinstance(cos.head, mnn.CosineHead) and cos(x).shape == (3, 4)
    with pytest.raises(ValueError, match="image_size"):
        create("conv4", head="flatten")
    with pytest.raises(ValueError, match="head"):
        create("conv4", head="max")
    with pytest.raises(TypeError, match="unexpected"):
        create("conv4", hiden=32)
    with pytest.raises(ValueError, match="depth"):
        mnn.CifarResNet(21)


def test_swapping_the_head() -> None:
    net = create("conv4", in_channels=1)
    net.head = mnn.CosineHead(64, 3)
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 3) and net.out_features == 3


def test_no_submodule_or_parameter_registered_twice() -> None:
    for name in mnn.list_models():
        net = create_meta(name)
        all_modules = list(net.named_modules(remove_duplicate=False))
        assert len(all_modules) == len(dict(net.named_modules())), name
        assert len({id(m) for _, m in all_modules}) == len(all_modules), name
        all_params = list(net.named_parameters(remove_duplicate=False))
        assert len({id(p) for _, p in all_params}) == len(all_params), name


def test_meta_baseline_state_dict_names() -> None:
    keys = set(create("resnet12", num_classes=0).state_dict())
    for k in ["layer1.conv1.weight", "layer1.bn1.running_mean", "layer4.downsample.0.weight",
              "layer4.downsample.1.num_batches_tracked"]:  # fmt: skip
        assert k in keys


def test_per_step_bn_through_create() -> None:
    net = create("conv4", bn_mode="per_step", bn_steps=5, in_channels=1)
    assert mnn.set_bn_step(net, 4) == 4
    net(torch.randn(4, 1, 28, 28))
    bn = net.encoder.block1.bn
    assert bn.num_batches_tracked.tolist() == [0, 0, 0, 0, 1]


# ---------------------------------------------------------------------------------------------
# Functional transforms: functional_call, vmap over tasks, higher, learn2learn

# Small inputs and narrow ResNets keep these fast; the BN mode is transductive so that
# train() forwards are pure.
NARROW = (4, 8, 8, 16)
FUNCTIONAL: list[tuple[str, dict[str, Any], tuple[int, int, int]]] = [
    ("maml_omniglot", {}, (1, 28, 28)),
    ("maml_pytorch_omniglot", {}, (1, 28, 28)),
    ("maml_pytorch_miniimagenet", {"hidden": 8}, (3, 84, 84)),
    ("maml_miniimagenet", {"hidden": 8}, (3, 84, 84)),
    ("conv4", {"hidden": 8, "in_channels": 1}, (1, 28, 28)),
    ("conv6", {"hidden": 8, "head": "flatten", "image_size": 32}, (3, 32, 32)),
    ("resnet12", {"bn_mode": "transductive", "head": "cosine", "channels": NARROW}, (3, 16, 16)),
    ("resnet18_bottle", {"bn_mode": "transductive", "channels": NARROW}, (3, 16, 16)),
    ("resnet10", {"bn_mode": "transductive", "width": 4}, (3, 16, 16)),
    ("mtl_resnet12", {"channels": NARROW}, (3, 16, 16)),
    ("resnet8", {"bn_mode": "transductive", "num_classes": 5}, (3, 16, 16)),
]


def _net(name: str, kwargs: dict[str, Any]) -> Any:
    torch.manual_seed(0)
    return create(name, **kwargs)


@pytest.mark.parametrize(("name", "kwargs", "chw"), FUNCTIONAL)
def test_functional_call_equals_forward(
    name: str, kwargs: dict[str, Any], chw: tuple[int, int, int]
) -> None:
    net = _net(name, kwargs)
    x = torch.randn(4, *chw)
    params = {k: v.detach() * 1.1 for k, v in net.named_parameters()}
    out = functional_call(net, params, (x,))
    with torch.no_grad():
        for k, v in net.named_parameters():
            v.copy_(params[k])
        torch.testing.assert_close(out, net(x))


@pytest.mark.parametrize(("name", "kwargs", "chw"), FUNCTIONAL)
def test_vmap_over_tasks_equals_loop(
    name: str, kwargs: dict[str, Any], chw: tuple[int, int, int]
) -> None:
    net = _net(name, kwargs)
    tasks = 3
    params = {
        k: v.detach() + 0.01 * torch.randn(tasks, *v.shape) for k, v in net.named_parameters()
    }
    x = torch.randn(tasks, 5, *chw)

    def run(p: dict[str, torch.Tensor], xt: torch.Tensor) -> torch.Tensor:
        return functional_call(net, p, (xt,))

    batched = vmap(run)(params, x)
    for t in range(tasks):
        expected = run({k: v[t] for k, v in params.items()}, x[t])
        torch.testing.assert_close(batched[t], expected, atol=1e-5, rtol=1e-4)


def test_vmap_running_bn_in_eval_mode() -> None:
    net = _net("resnet12", {"num_classes": 5, "channels": NARROW}).eval()
    x = torch.randn(3, 4, 3, 16, 16)
    params: dict[str, torch.Tensor] = dict(net.named_parameters())
    out = vmap(lambda xt: functional_call(net, params, (xt,)))(x)
    with torch.no_grad():
        torch.testing.assert_close(out, torch.stack([net(xt) for xt in x]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("name", "kwargs", "chw"), [FUNCTIONAL[0], FUNCTIONAL[6], FUNCTIONAL[9]])
def test_higher_monkeypatch(name: str, kwargs: dict[str, Any], chw: tuple[int, int, int]) -> None:
    higher = pytest.importorskip("higher")
    net = _net(name, kwargs)
    x = torch.randn(6, *chw)
    y = torch.arange(6) % 5
    fnet = higher.monkeypatch(net, copy_initial_weights=False)
    params = list(net.parameters())
    torch.testing.assert_close(fnet(x, params=params), net(x))
    # One differentiable inner step, then a meta-gradient back to the initial weights.
    grads = torch.autograd.grad(
        F.cross_entropy(fnet(x, params=params), y), params, create_graph=True
    )
    fast = [p - 0.1 * g for p, g in zip(params, grads)]
    F.cross_entropy(fnet(x, params=fast), y).backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.learn2learn
def test_learn2learn_clone_module() -> None:
    utils = pytest.importorskip("learn2learn.utils")
    net = _net("maml_omniglot", {})
    clone = utils.clone_module(net)
    x = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(clone(x), net(x))
    assert isinstance(clone, mnn.ConvNet) and clone.features(x).shape == (5, 64)
    clone(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
