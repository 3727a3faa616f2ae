"""``compile=True`` computes the eager meta-gradients (slow: each case compiles for a minute)."""

from __future__ import annotations

import copy

import pytest
import torch

from metakd.data import TaskBatch
from metakd.meta import MAMLWrapper
from metakd.nn import create

# Tiny tensors: one intra-op thread (see conftest.one_intra_op_thread).
pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _batch() -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4)
    return TaskBatch(
        torch.randn(3, 4, 1, 16, 16, generator=g, dtype=torch.float64),
        y.repeat(3, 1),
        torch.randn(3, 8, 1, 16, 16, generator=g, dtype=torch.float64),
        y.repeat_interleave(2).repeat(3, 1),
    )


def test_compile_argument_checks() -> None:
    net = create("conv4", in_channels=1, hidden=4, num_classes=4)
    with pytest.raises(ValueError, match="compile"):
        MAMLWrapper(net, 0.1, 1, backend="higher", compile=True)
    with pytest.raises(ValueError, match="True, False or 'auto'"):
        MAMLWrapper(net, 0.1, 1, compile="on")
    per_step = create("conv4", in_channels=1, hidden=4, num_classes=4, bn_mode="per_step",
                      bn_steps=2)
    with pytest.raises(ValueError, match="per-step"):
        MAMLWrapper(per_step, 0.1, 1, compile=True).meta_loss(_batch().to("cpu", torch.float32))


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "first_order", "learn_inner_lr", "workers"),
                         [("func", False, False, 2), ("func", True, True, 1),
                          ("vmap", False, True, 1)])
def test_compiled_meta_gradients_match_eager(
    backend: str, first_order: bool, learn_inner_lr: bool, workers: int
) -> None:
    torch.manual_seed(0)
    net = create("conv4", in_channels=1, hidden=8, num_classes=4).double()
    batch = _batch()
    grads = []
    for compiled in (False, True):
        model = copy.deepcopy(net)
        extra = {"vmap_chunk": 2} if backend == "vmap" else {}
        maml = MAMLWrapper(model, 0.1, 2, first_order=first_order, learn_inner_lr=learn_inner_lr,
                           workers=workers, compile=compiled, backend=backend, **extra)
        for _ in range(2):  # the second batch reuses the compiled function
            maml.zero_grad()
            loss, _ = maml.meta_loss(batch)
            loss.backward()
        grads.append([p.grad for p in maml.parameters()])
    for eager, comp in zip(*grads):
        torch.testing.assert_close(comp, eager, rtol=0, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["func", "vmap"])
def test_compiled_path_runs_the_same_rule_objective_and_feature_cache(backend: str) -> None:
    """A user rule, a two-term objective reading the batch's extras and the meta-iteration,
    and head-only adaptation (features once per set): compiled equals eager to 1e-10."""
    from test_meta_core import MySGD, Scheduled

    torch.manual_seed(0)
    net = create("conv4", in_channels=1, hidden=8, num_classes=4).double()
    g = torch.Generator().manual_seed(1)
    batch = _batch().with_extras(teacher=torch.randn(3, 8, 4, generator=g, dtype=torch.float64))
    for adapt in (None, "head"):
        grads = []
        for compiled in (False, True):
            maml = MAMLWrapper(copy.deepcopy(net), inner_steps=2, rule=MySGD(0.1),
                               objective=Scheduled(), adapt=adapt, compile=compiled,
                               backend=backend)
            assert maml._loop.head_only == (adapt == "head")
            maml.zero_grad()
            loss, metrics = maml.meta_loss(batch, step=7)
            loss.backward()
            assert metrics["terms"]["kd"] > 0
            grads.append([p.grad for p in maml.parameters()])
        for eager, comp in zip(*grads):
            torch.testing.assert_close(comp, eager, rtol=0, atol=1e-10)


def test_every_compiled_unit_has_its_own_dynamo_cache() -> None:
    """Dynamo's recompile limit (8) is per code object: each unit gets a code object of its
    own, so a process may build many compiled units (wrappers, step counts, replicas)."""
    from metakd.meta import accel

    maml = MAMLWrapper(create("conv4", in_channels=1, hidden=4, num_classes=4), 0.1, 1,
                       backend="func")
    backend = maml._backend
    codes = {accel._build(backend, maml.model, steps, False, False)
             ._torchdynamo_orig_callable.__code__ for steps in (1, 2, 1)}
    assert len(codes) == 3
