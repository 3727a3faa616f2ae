"""dragen1860/MAML-Pytorch checkpoints load into ``maml_pytorch_*`` and compute the same function.

The original checkpoint is re-created here, independently of the converter, from the config
lists of the port's ``omniglot_train.py`` / ``miniimagenet_train.py`` (commit 98a00d4): each
``conv2d``, ``bn`` and ``linear`` entry adds its tensors to ``net.vars`` (and a ``bn`` its running
statistics to ``net.vars_bn``) in config order, and :func:`positional_forward` walks the config
list as the port's ``Learner.forward`` does. ``fixtures/maml_pytorch_reference.json`` holds the
outputs of the port's own ``Learner`` on the same weights (see its ``made_by``), which checks
this re-creation against the original code.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from metakd import interop
from metakd.engine.errors import InputError
from metakd.interop import maml_pytorch
from metakd.interop._common import build_model

FIXTURE = Path(__file__).parent / "fixtures" / "maml_pytorch_reference.json"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "maml"

Config = list[tuple[str, list[Any]]]


def omniglot_config(n_way: int = 5) -> Config:
    """``omniglot_train.py``'s config list (conv layout ``[c_out, c_in, k, k, stride, pad]``)."""
    config: Config = []
    for c_in, k, s in ((1, 3, 2), (64, 3, 2), (64, 3, 2), (64, 2, 1)):
        config += [("conv2d", [64, c_in, k, k, s, 0]), ("relu", [True]), ("bn", [64])]
    return [*config, ("flatten", []), ("linear", [n_way, 64])]


def miniimagenet_config(n_way: int = 5) -> Config:
    """``miniimagenet_train.py``'s config list."""
    config: Config = []
    for i, c_in in enumerate((3, 32, 32, 32)):
        config += [("conv2d", [32, c_in, 3, 3, 1, 0]), ("relu", [True]), ("bn", [32]),
                   ("max_pool2d", [2, 1 if i == 3 else 2, 0])]
    return [*config, ("flatten", []), ("linear", [n_way, 32 * 5 * 5])]


def positional_state(config: Config, seed: int = 0, prefix: str = "net.") -> dict[str, Tensor]:
    """A ``Meta.state_dict()`` of ``config`` with seeded float64 values (running var > 0)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    vars_: list[Tensor] = []
    vars_bn: list[Tensor] = []
    for name, p in config:
        if name == "conv2d":
            c_out, c_in, kh, kw = p[:4]
            vars_ += [randn(c_out, c_in, kh, kw) * math.sqrt(2 / (c_in * kh * kw)),
                      0.1 * randn(c_out)]
        elif name == "bn":
            vars_ += [1 + 0.1 * randn(p[0]), 0.1 * randn(p[0])]
            vars_bn += [0.1 * randn(p[0]),
                        0.5 + torch.rand(p[0], generator=g, dtype=torch.float64)]
        elif name == "linear":
            vars_ += [randn(p[0], p[1]) / math.sqrt(p[1]), 0.1 * randn(p[0])]
    state = {f"{prefix}vars.{i}": t for i, t in enumerate(vars_)}
    state.update({f"{prefix}vars_bn.{j}": t for j, t in enumerate(vars_bn)})
    return state


def positional_forward(config: Config, state: dict[str, Tensor], x: Tensor,
                       bn_training: bool) -> Tensor:
    """The port's forward on a positional state; ``bn_training=True`` updates ``vars_bn``."""
    prefix = "net." if "net.vars.0" in state else ""
    i = j = 0
    for name, p in config:
        if name == "conv2d":
            x = F.conv2d(x, state[f"{prefix}vars.{i}"], state[f"{prefix}vars.{i + 1}"],
                         stride=p[4], padding=p[5])
            i += 2
        elif name == "bn":
            x = F.batch_norm(x, state[f"{prefix}vars_bn.{j}"], state[f"{prefix}vars_bn.{j + 1}"],
                             state[f"{prefix}vars.{i}"], state[f"{prefix}vars.{i + 1}"],
                             training=bn_training)
            i, j = i + 2, j + 2
        elif name == "relu":
            x = F.relu(x)
        elif name == "max_pool2d":
            x = F.max_pool2d(x, p[0], p[1], p[2])
        elif name == "flatten":
            x = x.flatten(1)
        elif name == "linear":
            x = F.linear(x, state[f"{prefix}vars.{i}"], state[f"{prefix}vars.{i + 1}"])
            i += 2
    return x


def inputs(shape: tuple[int, ...], seed: int = 1) -> Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


NETS = {
    "maml_pytorch_omniglot": (omniglot_config, (6, 1, 28, 28)),
    "maml_pytorch_miniimagenet": (miniimagenet_config, (3, 3, 84, 84)),
}


def rel_diff(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def clone(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in state.items()}


@pytest.mark.parametrize("arch", list(NETS))
def test_the_reimplemented_layout_is_the_original_learners(arch: str) -> None:
    """The port's own ``Learner`` gave these outputs and keys on the same seeded weights."""
    ref = json.loads(FIXTURE.read_text())[arch]
    make_config, _ = NETS[arch]
    state = positional_state(make_config())
    assert list(state) == ref["keys"]
    assert [list(v.shape) for v in state.values()] == ref["shapes"]
    x = inputs(tuple(ref["input_shape"]))
    for mode, training in (("bn_training_false", False), ("bn_training_true", True)):
        out = positional_forward(make_config(), clone(state), x, training)
        assert rel_diff(out, torch.tensor(ref[mode], dtype=torch.float64)) < 1e-12, mode


@pytest.mark.parametrize("arch", list(NETS))
def test_transductive_conversion_computes_the_ports_forward(arch: str) -> None:
    make_config, shape = NETS[arch]
    state = positional_state(make_config(), seed=3)
    converted = interop.read(state)  # detected, arch from the conv kernels
    assert converted is not None and converted.format == "maml_pytorch"
    assert converted.arch == arch and converted.extras["bn_running_stats"] == "dropped"
    model = build_model(converted)
    x = inputs(shape)
    want = positional_forward(make_config(), clone(state), x, bn_training=True)
    for training in (True, False):  # the port's Meta always uses batch statistics
        model.train(training)
        with torch.no_grad():
            assert rel_diff(model(x), want) < 1e-9


@pytest.mark.parametrize("arch", list(NETS))
def test_running_conversion_keeps_the_statistics(arch: str) -> None:
    make_config, shape = NETS[arch]
    state = positional_state(make_config(), seed=4, prefix="")  # Learner.state_dict()
    converted = maml_pytorch.convert(state, arch, bn_mode="running")
    model = build_model(converted).eval()
    x = inputs(shape)
    with torch.no_grad():
        assert rel_diff(model(x), positional_forward(make_config(), clone(state), x, False)) < 1e-9
        model.train()
        original = clone(state)
        assert rel_diff(model(x), positional_forward(make_config(), original, x, True)) < 1e-9
    # a training forward moves the running statistics as the port's does
    assert torch.allclose(model.encoder.block2.bn.running_var, original["vars_bn.3"],
                          rtol=0, atol=1e-12)


def test_a_perturbed_tensor_is_caught() -> None:
    state = positional_state(omniglot_config(), seed=5)
    converted = maml_pytorch.convert(state)
    converted.state["encoder.block3.bn.bias"] = converted.state["encoder.block3.bn.bias"] + 1e-3
    model = build_model(converted)
    x = inputs((6, 1, 28, 28))
    with torch.no_grad():
        assert rel_diff(model(x), positional_forward(omniglot_config(), state, x, True)) > 1e-6


def test_refusals_are_one_line() -> None:
    omniglot = positional_state(omniglot_config())
    with pytest.raises(InputError, match="omniglot net .* not 'maml_pytorch_miniimagenet'"):
        interop.read(omniglot, "maml_pytorch_miniimagenet", source="m.pt")
    with pytest.raises(InputError, match="convert to maml_pytorch_omniglot or"):
        maml_pytorch.convert(omniglot, "conv4")
    extra = positional_state([*omniglot_config(), ("linear", [5, 5])])
    with pytest.raises(InputError, match="20 tensors and 8 batch-norm") as e:
        maml_pytorch.convert(extra)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="image_size=32.*shape mismatch head.weight"):
        maml_pytorch.convert(omniglot, image_size=32)
    assert not maml_pytorch.detect({"net.vars.1": torch.zeros(1)})  # not numbered from 0


def test_load_teacher_reads_the_file(tmp_path: Path) -> None:
    from metakd.distill import load_teacher

    state = positional_state(omniglot_config(20), seed=6)
    torch.save(state, tmp_path / "maml.pt")
    teacher = load_teacher(tmp_path / "maml.pt")
    assert teacher.out_features == 20 and not teacher.training
    x = inputs((6, 1, 28, 28)).float()
    want = positional_forward(omniglot_config(20), {k: v.float() for k, v in state.items()}, x,
                              True)
    assert rel_diff(teacher(x), want) < 1e-5  # float32 weights: the file's tensors are float64


def _example_args() -> Any:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    import _args

    return _args


SEED_COMMAND = ["--epoch", "40000", "--n_way", "5", "--k_spt", "1", "--k_qry", "15", "--imgsz",
                "28", "--task_num", "32", "--meta_lr", "1e-3", "--update_lr", "0.4",
                "--update_step", "5"]


def test_the_ports_command_takes_the_ports_inner_step() -> None:
    """``--update_lr 0.4`` acts on the mean support cross-entropy, as in MAML-Pytorch."""
    from metakd.meta import MAMLWrapper
    from metakd.nn import create

    _args = _example_args()
    args = _args.parser("omniglot", "t").parse_args(SEED_COMMAND)
    cfg = _args.config("omniglot", args)
    assert (cfg.inner_lr, cfg.inner_loss_reduction, cfg.inner_steps) == (0.4, "mean", 5)
    assert (cfg.meta_batch_size, cfg.steps, cfg.queries) == (32, 40_000, 15)
    assert "mean" in _args.describe_inner_loss(cfg)

    model = create(cfg.model, num_classes=5, in_channels=1, **cfg.model_kwargs).double()
    maml = MAMLWrapper(model, inner_lr=cfg.inner_lr, inner_steps=1,
                       inner_loss_reduction=cfg.inner_loss_reduction, backend="func")
    x, y = inputs((5, 1, 28, 28), seed=7), torch.arange(5)
    adapted = maml.adapt(x, y, steps=1).params
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()))
    for (name, p), g in zip(params.items(), grads):
        assert torch.allclose(adapted[name], p - 0.4 * g, rtol=0, atol=1e-12), name
    # the reference scale is a named option: the same --update_lr then steps N times further
    ref = _args.config("omniglot", _args.parser("omniglot", "t").parse_args(
        [*SEED_COMMAND, "--inner_loss", "sum_over_k"]))
    assert ref.inner_loss_reduction == "sum_over_k" and "sum" in _args.describe_inner_loss(ref)
    big = MAMLWrapper(model, inner_lr=ref.inner_lr, inner_steps=1,
                      inner_loss_reduction=ref.inner_loss_reduction, backend="func")
    head = big.adapt(x, y, steps=1).params["head.bias"]
    g_head = grads[list(params).index("head.bias")]
    assert torch.allclose(head, params["head.bias"] - 0.4 * 5 * g_head, rtol=0, atol=1e-12)


def test_default_inner_lr_is_the_papers_step_on_either_scale() -> None:
    _args = _example_args()
    mean = _args.config("omniglot", _args.parser("omniglot", "t").parse_args([]))
    ref = _args.config("omniglot", _args.parser("omniglot", "t").parse_args(
        ["--inner_loss", "sum_over_k"]))
    # the reference's 0.4 on sum/K is 5 x 0.4 on the mean of a 5-way task
    assert (ref.inner_lr, ref.inner_loss_reduction) == (0.4, "sum_over_k")
    assert (mean.inner_lr, mean.inner_loss_reduction) == (2.0, "mean")
