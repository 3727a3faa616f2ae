"""MAMLWrapper's API: arguments, learners, metrics, evaluation, Meta-SGD, ANIL, imports."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakd.data import TaskBatch
from metakd.meta import MAMLLearner, MAMLWrapper, default_backend
from metakd.nn import create


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is as fast, and immune to OpenMP stalls on a busy CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def small_net() -> nn.Module:
    return create("conv4", in_channels=1, hidden=4, num_classes=3).double()


def batch_of(tasks: int = 3, ways: int = 3, shots: int = 1, queries: int = 2, seed: int = 0,
             size: int = 16) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(ways)
    return TaskBatch(
        torch.randn(tasks, ways * shots, 1, size, size, generator=g, dtype=torch.float64),
        y.repeat_interleave(shots).repeat(tasks, 1),
        torch.randn(tasks, ways * queries, 1, size, size, generator=g, dtype=torch.float64),
        y.repeat_interleave(queries).repeat(tasks, 1),
    )


def full_graph_meta_grads(maml: MAMLWrapper, batch: TaskBatch) -> list[Tensor]:
    """Reference: one graph through adapt() for every task, mean query loss, autograd."""
    losses = []
    for task in batch:
        learner = maml.adapt(task.support_x, task.support_y)
        losses.append(F.cross_entropy(learner(task.query_x), task.query_y))
    params = list(maml.parameters())
    return list(torch.autograd.grad(torch.stack(losses).mean(), params))


# ------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"inner_lr": 0.0}, "inner_lr"),
        ({"inner_lr": -0.1}, "inner_lr"),
        ({"inner_lr": float("nan")}, "inner_lr"),
        ({"inner_lr": "0.1"}, "inner_lr"),
        ({"inner_steps": -1}, "inner_steps"),
        ({"inner_steps": 1.5}, "inner_steps"),
        ({"test_inner_steps": -2}, "test_inner_steps"),
        ({"backend": "jax"}, "backend"),
        ({"inner_loss_reduction": "sum"}, "sum_over_k"),
        ({"adapt": "body"}, "adapt"),
        ({"adapt": ["encoder.nope.weight"]}, "valid names"),
        ({"adapt": lambda n, p: False}, "selects no"),
        ({"vmap_chunk": 0}, "vmap_chunk"),
        ({"vmap_chunk": 4, "backend": "func"}, "vmap_chunk"),
        ({"workers": 0}, "workers"),
        ({"inner_loss": "ce"}, "inner_loss"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict, match: str) -> None:
    args = {"inner_lr": 0.1, "inner_steps": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        MAMLWrapper(small_net(), **args)


def test_head_adaptation_needs_a_head() -> None:
    with pytest.raises(ValueError, match="head"):
        MAMLWrapper(nn.Sequential(nn.Linear(3, 3)), 0.1, 1, adapt="head")


def test_bad_inputs_raise_value_error() -> None:
    maml = MAMLWrapper(small_net(), 0.1, 1)
    b = batch_of()
    with pytest.raises(ValueError, match="TaskBatch"):
        maml.meta_loss((b.support_x, b.support_y))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one task"):
        maml.adapt(b.support_x[0], b.support_y[0][:2])
    with pytest.raises(ValueError, match="steps"):
        maml.adapt(b.support_x[0], b.support_y[0], steps=-1)


def test_default_backend() -> None:
    assert default_backend("cpu") == "auto"
    assert MAMLWrapper(small_net(), 0.1, 1).backend_name == "auto"


# ------------------------------------------------------------------------------- imports
def test_import_does_not_import_optional_packages() -> None:
    code = (
        "import sys, metakd.meta\n"
        "from metakd.meta import MAMLWrapper\n"
        "import torch\n"
        "m = MAMLWrapper(torch.nn.Linear(3, 2), 0.1, 1)\n"
        "bad = [k for k in ('learn2learn', 'higher', 'gym') if k in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(("backend", "hint"), [("learn2learn", "pip install metakd[learn2learn]"),
                                               ("higher", "pip install higher")])
def test_missing_package_raises_import_error(
    backend: str, hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, backend, None)  # makes `import backend` fail
    with pytest.raises(ImportError, match=hint.replace("[", r"\[").replace("]", r"\]")):
        MAMLWrapper(small_net(), 0.1, 1, backend=backend)


# --------------------------------------------------------------------- learner and metrics
def test_adapt_returns_graph_connected_learner() -> None:
    maml = MAMLWrapper(small_net(), 0.1, 2)
    b = batch_of()
    learner = maml.adapt(b.support_x[0], b.support_y[0])
    assert isinstance(learner, MAMLLearner)
    assert sorted(learner.params) == sorted(n for n, _ in maml.model.named_parameters())
    assert all(t.grad_fn is not None for t in learner.params.values())
    assert learner(b.query_x[0]).shape == (6, 3)
    with torch.no_grad():
        frozen = maml.adapt(b.support_x[0], b.support_y[0])
    assert all(t.grad_fn is None for t in frozen.params.values())
    # same values either way (first- and second-order adaptation agree in value)
    for n, t in learner.params.items():
        torch.testing.assert_close(t.detach(), frozen.params[n])


def test_meta_loss_metrics_and_surrogate_gradient() -> None:
    maml = MAMLWrapper(small_net(), 0.1, 2, workers=1)
    b = batch_of()
    ref = full_graph_meta_grads(maml, b)
    loss, metrics = maml.meta_loss(b)
    assert isinstance(metrics["loss"], float) and isinstance(metrics["accuracy"], float)
    assert metrics["task_accuracy"].shape == (3,)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["accuracy"] == pytest.approx(float(metrics["task_accuracy"].mean()))
    (2.0 * loss).backward()  # the surrogate is linear: scaling it scales the gradient
    for p, r in zip(maml.parameters(), ref):
        torch.testing.assert_close(p.grad, 2.0 * r, rtol=0, atol=1e-12)


def counting_loss() -> tuple[Callable[[Tensor, Tensor], Tensor], list[int]]:
    calls = [0]

    def loss(logits: Tensor, y: Tensor) -> Tensor:
        calls[0] += 1
        return F.cross_entropy(logits, y)

    return loss, calls


@pytest.mark.parametrize("backend", ["func", "vmap", "learn2learn", "higher"])
def test_evaluation_uses_test_steps_and_no_graph(backend: str) -> None:
    if backend in ("learn2learn", "higher"):
        pytest.importorskip(backend)
    loss_fn, calls = counting_loss()
    maml = MAMLWrapper(small_net(), 0.1, 1, test_inner_steps=4, backend=backend,
                       inner_loss=loss_fn, workers=1)
    b = batch_of(tasks=2)
    loss, metrics = maml.meta_loss(b, training=False)
    assert not loss.requires_grad
    if backend != "vmap":  # vmap calls the loss once per chunk, not per task
        assert calls[0] == 2 * (4 + 1)
    calls[0] = 0
    loss, _ = maml.meta_loss(b, training=True)
    if backend != "vmap":
        assert calls[0] == 2 * (1 + 1)
    # evaluation of a model trained by nothing equals the training-mode value with 4 steps
    maml4 = MAMLWrapper(maml.model, 0.1, 4, backend=backend, workers=1)
    assert maml4.meta_loss(b)[1]["loss"] == pytest.approx(metrics["loss"], rel=1e-9)


def test_evaluation_leaves_no_grad() -> None:
    maml = MAMLWrapper(small_net(), 0.1, 2)
    maml.meta_loss(batch_of(), training=False)
    assert all(p.grad is None for p in maml.parameters())


# ------------------------------------------------------------------------ Meta-SGD, ANIL
@pytest.mark.parametrize("backend", ["func", "vmap", "learn2learn", "higher"])
def test_meta_sgd_rates_get_gradients(backend: str) -> None:
    if backend in ("learn2learn", "higher"):
        pytest.importorskip(backend)
    maml = MAMLWrapper(small_net(), 0.1, 2, learn_inner_lr=True, backend=backend)
    names = [n for n, _ in maml.model.named_parameters()]
    assert len(maml.inner_lrs) == len(names)
    assert all(k.startswith("rule.lrs.") for k in maml.state_dict() if "lrs" in k)
    loss, _ = maml.meta_loss(batch_of())
    loss.backward()
    for name in names:
        lr = maml.inner_lrs[name.replace(".", "-")]
        assert lr.shape == dict(maml.model.named_parameters())[name].shape
        assert lr.grad is not None
    assert any(float(lr.grad.abs().max()) > 0 for lr in maml.inner_lrs.values())
    # the Meta-SGD parameters are among the wrapper's parameters (an optimizer sees them)
    assert {id(p) for p in maml.inner_lrs.values()} <= {id(p) for p in maml.parameters()}


@pytest.mark.parametrize("backend", ["func", "vmap", "learn2learn", "higher"])
def test_anil_adapts_only_the_head(backend: str) -> None:
    if backend in ("learn2learn", "higher"):
        pytest.importorskip(backend)
    torch.manual_seed(0)
    net = small_net()
    maml = MAMLWrapper(net, 0.5, 2, adapt="head", backend=backend, workers=1)
    assert maml.adapted_names == ["head.weight", "head.bias"]
    b = batch_of()
    learner = maml.adapt(b.support_x[0], b.support_y[0])
    assert sorted(learner.params) == ["head.bias", "head.weight"]
    assert not torch.equal(learner.params["head.weight"].detach(), net.head.weight.detach())
    # body gradients come from the outer loss only, and equal the full-graph reference
    ref = full_graph_meta_grads(maml, b)
    maml.meta_loss(b)[0].backward()
    for p, r in zip(maml.parameters(), ref):
        torch.testing.assert_close(p.grad, r, rtol=0, atol=1e-12)
    body = [p for n, p in net.named_parameters() if not n.startswith("head.")]
    assert any(float(p.grad.abs().max()) > 0 for p in body)


@pytest.mark.learn2learn
@pytest.mark.parametrize("backend", ["func", "vmap"])
def test_anil_feature_cache_equals_learn2learns_full_forward(backend: str) -> None:
    """The feature-caching ANIL path equals learn2learn's full forward at every step."""
    pytest.importorskip("learn2learn")
    torch.manual_seed(0)
    net = small_net()
    b = batch_of()
    grads = []
    for name in (backend, "learn2learn"):
        maml = MAMLWrapper(copy.deepcopy(net), 0.5, 2, adapt="head", backend=name)
        maml.meta_loss(b)[0].backward()
        grads.append([p.grad for p in maml.parameters()])
    for g, ref in zip(*grads):
        torch.testing.assert_close(g, ref, rtol=0, atol=1e-10)


def test_adapt_by_names_and_callable() -> None:
    net = small_net()
    by_names = MAMLWrapper(net, 0.1, 1, adapt=["head.weight", "encoder.block4.conv.weight"])
    assert by_names.adapted_names == ["encoder.block4.conv.weight", "head.weight"]
    by_fn = MAMLWrapper(net, 0.1, 1, adapt=lambda n, p: p.dim() > 1 and "block1" in n)
    assert by_fn.adapted_names == ["encoder.block1.conv.weight"]
    task = batch_of()[0]
    learner = by_names.adapt(task.support_x, task.support_y)
    assert sorted(learner.params) == ["encoder.block4.conv.weight", "head.weight"]


def test_frozen_parameters_are_neither_adapted_nor_meta_learned() -> None:
    net = small_net()
    net.encoder.block1.conv.weight.requires_grad_(False)
    maml = MAMLWrapper(net, 0.1, 1)
    assert "encoder.block1.conv.weight" not in maml.adapted_names
    maml.meta_loss(batch_of())[0].backward()
    assert net.encoder.block1.conv.weight.grad is None


def test_sum_over_k_is_mean_times_ways() -> None:
    """TF reference inner loss Σ/K = N·mean: same as mean with an N times larger rate."""
    b = batch_of(ways=3, shots=2)
    a = MAMLWrapper(small_net(), 0.1, 2, inner_loss_reduction="sum_over_k", workers=1)
    m = MAMLWrapper(copy.deepcopy(a.model), 0.3, 2, workers=1)
    a.meta_loss(b)[0].backward()
    m.meta_loss(b)[0].backward()
    for p, q in zip(a.parameters(), m.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ BatchNorm safety rules
def test_vmap_refuses_torch_batchnorm() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.LazyLinear(3))
    net(torch.randn(2, 1, 16, 16))
    maml = MAMLWrapper(net.double(), 0.1, 1, backend="vmap")
    with pytest.raises(ValueError, match="batch_norm"):
        maml.meta_loss(batch_of())


def test_running_batchnorm_rules() -> None:
    net = create("conv4", in_channels=1, hidden=4, num_classes=3, bn_mode="running").double()
    b = batch_of()
    with pytest.raises(ValueError, match="running"):
        MAMLWrapper(net, 0.1, 1, backend="vmap").meta_loss(b)
    with pytest.raises(ValueError, match="workers=1"):
        MAMLWrapper(net, 0.1, 1, workers=2).meta_loss(b)
    before = net.encoder.block1.bn.running_mean.clone()
    MAMLWrapper(net, 0.1, 1).meta_loss(b)[0].backward()  # workers=None: one at a time
    assert not torch.equal(before, net.encoder.block1.bn.running_mean)
    net.eval()  # running statistics are only read now: vmap and threads are fine
    _, metrics_v = MAMLWrapper(net, 0.1, 1, backend="vmap").meta_loss(b)
    _, metrics_f = MAMLWrapper(net, 0.1, 1, workers=2).meta_loss(b)
    assert metrics_v["loss"] == pytest.approx(metrics_f["loss"], rel=1e-9)


def test_per_step_batchnorm_uses_one_row_per_step() -> None:
    net = create("conv4", in_channels=1, hidden=4, num_classes=3, bn_mode="per_step",
                 bn_steps=3).double()
    maml = MAMLWrapper(net, 0.1, 3)
    maml.meta_loss(batch_of())[0].backward()
    counts = net.encoder.block1.bn.num_batches_tracked
    # 3 tasks: support at steps 0, 1, 2 and the query at the last step's row
    assert counts.tolist() == [3, 3, 6]


@pytest.mark.parametrize("bn_mode", ["running", "per_step"])
def test_running_statistics_native_kernel_under_func_grad_equals_the_var_mean_form(
    bn_mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Second-order meta-gradients and running buffers of the func backend (torch.func.grad
    around the native batch-norm kernel) equal those of the var_mean form, in float64."""
    import metakd.nn.norm as norm

    def run(native: bool) -> list[Tensor]:
        monkeypatch.setattr(norm, "plain_eager", lambda: native)
        torch.manual_seed(2)
        net = create("conv4", in_channels=1, hidden=4, num_classes=3, bn_mode=bn_mode,
                     bn_steps=2).double()
        maml = MAMLWrapper(net, 0.1, 2, backend="func", compile=False)
        loss, _ = maml.meta_loss(batch_of())
        loss.backward()
        bn = net.encoder.block1.bn
        return [loss.detach(), *(p.grad for p in net.parameters()), bn.running_mean,
                bn.running_var]

    for a, b in zip(run(True), run(False)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_auto_backend_picks_vmap_for_small_tasks_and_func_for_large() -> None:
    from metakd.meta._func import AUTO_MIN_CHUNK, auto_chunk

    torch.manual_seed(0)
    net = create("maml_omniglot", num_classes=5, hidden=8).double()
    y = torch.arange(5)

    def batch(tasks: int, queries: int) -> TaskBatch:
        return TaskBatch(torch.randn(tasks, 5, 1, 28, 28, dtype=torch.float64), y.repeat(tasks, 1),
                         torch.randn(tasks, 5 * queries, 1, 28, 28, dtype=torch.float64),
                         y.repeat_interleave(queries).repeat(tasks, 1))

    small, large = batch(10, 1), batch(3, 15)
    assert auto_chunk(small) == 10 >= AUTO_MIN_CHUNK and auto_chunk(large) == 3
    # second order keeps every inner step's graph: the support counts once per step
    # (5 x 5 + 5 = 30 images a task, room for 10 in 320), spread evenly over the chunks
    assert auto_chunk(batch(32, 1), kept_steps=1) == 32
    assert auto_chunk(batch(32, 1), kept_steps=5) == 8  # 4 chunks of 8, not 10 + 10 + 10 + 2
    assert auto_chunk(batch(12, 1), kept_steps=5) == 6
    auto = MAMLWrapper(copy.deepcopy(net), 0.4, 1)
    picked = auto._backend.pick  # type: ignore[attr-defined]
    assert picked(small).name == "vmap" and picked(large).name == "func"
    assert picked(batch(12, 1), 1).name == "vmap" and picked(batch(12, 1), 5).name == "func"
    for b in (small, large):  # same meta-gradients as the sequential func backend, float64
        ref = MAMLWrapper(copy.deepcopy(net), 0.4, 1, backend="func", workers=1)
        got = MAMLWrapper(copy.deepcopy(net), 0.4, 1)
        for m in (ref, got):
            m.meta_loss(b)[0].backward()
        for (n, p), q in zip(ref.named_parameters(), got.parameters()):
            assert p.grad is not None and q.grad is not None
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-12, msg=n)
