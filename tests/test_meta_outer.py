"""The outer loop (metakd.meta.outer) that every meta-learner calls, the accelerations applied
from outside the core (metakd.meta.accel), and learn2learn's clone() / adapt(loss)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from meta_helpers import make_batch
from torch import nn

from metakd.data import TaskBatch
from metakd.meta import (
    MAMLWrapper,
    MetaParams,
    PerTask,
    accumulate,
    outer_step,
    surrogate,
)
from metakd.meta.accel import accelerate
from metakd.nn import create


def _batch(tasks: int = 3, queries: int = 2, dtype: torch.dtype = torch.float64) -> TaskBatch:
    return make_batch(tasks, 4, queries, 1, 16, dtype, seed=1)


def _net(**kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return create("conv4", in_channels=1, hidden=4, num_classes=4, **kwargs).double()


def test_per_task_equals_the_full_graph_mean() -> None:
    """PerTask's surrogate gives the gradient of the mean loss built as one graph."""
    net = nn.Linear(16 * 16, 4).double()
    batch = _batch()

    def objective(task, step):  # type: ignore[no-untyped-def]
        logits = net(task.query_x.flatten(1))
        return {"ce": F.cross_entropy(logits, task.query_y), "l2": 0.1 * logits.pow(2).mean()}, logits

    loss, metrics = outer_step(PerTask(objective), batch, net)
    loss.backward()
    got = [p.grad.clone() for p in net.parameters()]  # type: ignore[union-attr]
    net.zero_grad()
    full = torch.stack([sum(objective(t, 0)[0].values()) for t in batch]).mean()  # type: ignore[misc]
    full.backward()
    for g, p in zip(got, net.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-12, atol=1e-12)
    assert loss.item() == pytest.approx(full.item(), rel=1e-12)
    assert sorted(metrics["terms"]) == ["ce", "l2"] and metrics["task_accuracy"].shape == (3,)
    _, evaluated = outer_step(PerTask(objective), batch, net, training=False)
    assert evaluated["loss"] == pytest.approx(full.item(), rel=1e-12)


def test_meta_params_and_surrogate_leave_unreached_parameters_without_grad() -> None:
    used, unused = nn.Linear(2, 2), nn.Linear(2, 2)
    params = MetaParams({"used": used, "unused": unused, "again": used})
    assert len(params) == 4 and params.groups["again"] == {}
    grads = [torch.ones(2, 2), torch.ones(2), None, None]
    surrogate(torch.tensor(1.0), params.flat, grads).backward()
    assert used.weight.grad is not None and unused.weight.grad is None


def test_accumulate_in_workers_adds_the_same_gradients() -> None:
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    units = [torch.randn(3, dtype=torch.float64) for _ in range(5)]

    def run(worker: int, x: torch.Tensor):  # type: ignore[no-untyped-def]
        loss = (w * x).sum().sin()
        return {"l": loss[None]}, x[None, None], torch.autograd.grad(loss, [w])

    def serial(work, workers):  # type: ignore[no-untyped-def]
        for k in range(workers):
            work(k)

    one = accumulate(units, run, [w], weight=0.2)
    two = accumulate(units, run, [w], weight=0.2, workers=2, parallel=serial)
    torch.testing.assert_close(one.grads[0], two.grads[0], rtol=1e-12, atol=0)
    assert torch.equal(one.terms["l"], two.terms["l"]) and one.logits.shape == (5, 1, 3)
    with pytest.raises(ValueError, match="parallel"):
        accumulate(units, run, [w], workers=2)


def test_maml_meta_loss_is_outer_step_with_its_strategy() -> None:
    maml = MAMLWrapper(_net(), 0.3, 2, backend="func")
    batch = _batch()
    loss, _ = maml.meta_loss(batch, step=2)
    again, _ = outer_step(maml._backend.strategy(2, False), batch, maml._meta_params(),
                          step=torch.tensor(2))
    assert torch.equal(loss, again)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("kwargs", [{}, {"learn_inner_lr": True}, {"adapt": "head"}],
                         ids=["sgd", "meta_sgd", "anil"])
def test_clone_adapt_loss_equals_adapt_on_the_support_set(first_order: bool, kwargs: dict) -> None:
    """learn2learn's habit gives metakd's numbers: the adapted parameters and the
    meta-gradient of the query loss."""
    batch = _batch(tasks=1)
    sx, sy, qx, qy = batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0]
    grads = []
    for habit in ("clone", "metakd"):
        maml = MAMLWrapper(_net(), 0.3, 2, first_order=first_order, backend="func", **kwargs)
        if habit == "clone":
            learner = maml.clone()
            for _ in range(2):
                learner.adapt(F.cross_entropy(learner(sx), sy))
        else:
            learner = maml.adapt(sx, sy)
        F.cross_entropy(learner(qx), qy).backward()
        grads.append([p.grad for p in maml.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_clone_refuses_what_it_cannot_follow() -> None:
    maml = MAMLWrapper(_net(), 0.3, 1)
    with torch.no_grad(), pytest.raises(ValueError, match=r"maml\.adapt\(support_x, support_y\)"):
        learner = maml.clone()
        learner.adapt(F.cross_entropy(learner(_batch().support_x[0]), _batch().support_y[0]))
    per_step = MAMLWrapper(_net(bn_mode="per_step", bn_steps=2), 0.3, 2)
    with pytest.raises(ValueError, match=r"maml\.adapt\(support_x, support_y\)"):
        per_step.clone()


def test_accelerate_applies_from_outside_and_changes_no_number() -> None:
    batch = _batch()
    eager = MAMLWrapper(_net(), 0.3, 2, backend="func", compile=False)
    threaded = accelerate(copy.deepcopy(eager), workers=2)
    assert threaded._backend.accel is not None and eager._backend.accel is None
    for maml in (eager, threaded):
        maml.meta_loss(batch)[0].backward()
    for a, b in zip(eager.parameters(), threaded.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14)
    assert accelerate(threaded)._backend.accel is None  # the defaults turn it off
    shorthand = MAMLWrapper(_net(), 0.3, 2, compile=True)
    assert shorthand.compile_mode and shorthand._backend.vmap.accel.compile
    with pytest.raises(ValueError, match="'func', 'vmap' and 'auto'"):
        accelerate(MAMLWrapper(_net(), 0.3, 1, backend="higher"), workers=2)
    with pytest.raises(ValueError, match="MAMLWrapper"):
        accelerate(nn.Linear(2, 2), compile=True)


def test_accelerate_reaches_a_pmaml_student() -> None:
    from metakd.distill import PMAML

    pmaml = PMAML(_net(), MAMLWrapper(_net(), inner_lr=0.4), inner_lr=0.4)
    accelerate(pmaml, workers=2)
    assert pmaml.student._backend.func.accel.requested_workers == 2


def test_the_core_imports_no_acceleration() -> None:
    """No module of the core imports metakd.meta.accel: plain eager never loads it (the
    default ``compile="auto"`` reaches it through ``accelerate``, called by the constructor's
    shorthand)."""
    code = (
        "import sys, torch\n"
        "from metakd.meta import MAMLWrapper, MetaLSTM\n"
        "from metakd.nn import create\n"
        "m = MAMLWrapper(torch.nn.Linear(3, 2), inner_lr=0.1, workers=1, compile=False)\n"
        "import metakd.meta._func, metakd.meta._external\n"
        "print('metakd.meta.accel' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
