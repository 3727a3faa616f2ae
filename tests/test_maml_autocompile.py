"""``compile="auto"``: the tiered policy (eager, then a background compile, then compiled).

The fast tests replace ``torch.compile``'s part (``compiled_unit``) by the eager unit, so
they check the policy (when it compiles, what runs where, failures, invalidation) in
milliseconds; the slow test runs the real compile in float64.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

import metakd.meta._compiled as compiled_mod
from metakd.data import TaskBatch
from metakd.meta import MAMLWrapper
from metakd.meta._autocompile import AutoCompiler
from metakd.nn import create

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _batch(dtype: torch.dtype = torch.float32, tasks: int = 4) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4)
    return TaskBatch(
        torch.randn(tasks, 4, 1, 16, 16, generator=g, dtype=dtype),
        y.repeat(tasks, 1),
        torch.randn(tasks, 8, 1, 16, 16, generator=g, dtype=dtype),
        y.repeat_interleave(2).repeat(tasks, 1),
    )


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return create("conv4", in_channels=1, hidden=4, num_classes=4)


class FakeCompile:
    """Stands in for ``compiled_unit``: the eager unit, with a record of its calls."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.models: list[int] = []
        self.threads: list[int] = []  # torch.get_num_threads() at each call

    def __call__(self, backend: Any, steps: int, lrs: Any, scale: float, first_order: bool,
                 inputs: Any, cache: Any = None) -> Any:
        if self.fail:
            raise RuntimeError("inductor exploded")
        eager = backend.eager_unit(steps, lrs, scale, first_order, inputs)

        def unit(model: torch.nn.Module, b: TaskBatch) -> Any:
            self.models.append(id(model))
            self.threads.append(torch.get_num_threads())
            return eager(model, b)

        return unit


def _grads(maml: MAMLWrapper, batch: TaskBatch) -> list[torch.Tensor]:
    maml.zero_grad()
    maml.meta_loss(batch)[0].backward()
    return [p.grad.clone() for p in maml.model.parameters()]


@pytest.mark.parametrize("backend", ["func", "vmap", "auto"])
def test_compiles_in_background_then_runs_compiled(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeCompile()
    monkeypatch.setattr(compiled_mod, "compiled_unit", fake)
    batch = _batch()
    maml = MAMLWrapper(_net(), 0.1, 1, backend=backend, compile_after_s=0.0)
    eager = MAMLWrapper(copy.deepcopy(maml.model), 0.1, 1, backend=backend, compile=False)
    first = _grads(maml, batch)
    assert maml.wait_for_compile(timeout=60)
    (status,) = maml.compile_status()
    assert status["state"] == "compiled" and status["error"] is None
    warmup_calls = len(fake.models)  # one unit per replica, in the compile thread
    assert warmup_calls >= 1
    second = _grads(maml, batch)
    assert len(fake.models) > warmup_calls, "the compiled unit was not used"
    # The compiled unit runs on the compile's own replicas, never on the user's model.
    assert id(maml.model) not in fake.models
    ref = _grads(eager, batch)
    for a, b, r in zip(first, second, ref):
        torch.testing.assert_close(a, r)
        torch.testing.assert_close(b, r)


def test_short_runs_never_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCompile()
    monkeypatch.setattr(compiled_mod, "compiled_unit", fake)
    maml = MAMLWrapper(_net(), 0.1, 1)  # default: compile="auto" after 120 s
    assert maml.compile_mode == "auto"
    for _ in range(3):
        _grads(maml, _batch())
    (status,) = maml.compile_status()
    assert status["state"] == "eager" and 0 < status["eager_s"] < 120
    assert fake.models == []


def test_failed_compile_warns_and_stays_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled_mod, "compiled_unit", FakeCompile(fail=True))
    maml = MAMLWrapper(_net(), 0.1, 1, backend="func", compile_after_s=0.0)
    with pytest.warns(RuntimeWarning, match="inductor exploded"):
        _grads(maml, _batch())
        maml.wait_for_compile(timeout=60)
    (status,) = maml.compile_status()
    assert status["state"] == "failed" and "inductor exploded" in status["error"]
    _grads(maml, _batch())  # goes on eager, no second attempt
    assert maml.compile_status()[0]["state"] == "failed"


def test_replaced_parameters_invalidate_the_compiled_unit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeCompile()
    monkeypatch.setattr(compiled_mod, "compiled_unit", fake)
    maml = MAMLWrapper(_net(), 0.1, 1, backend="func", workers=1, compile_after_s=0.0)
    _grads(maml, _batch())
    maml.wait_for_compile(timeout=60)
    old_replicas = set(fake.models)
    maml.model.head.weight = torch.nn.Parameter(maml.model.head.weight.detach().clone())
    # Stale replicas would share the old tensor: this call runs eager and compiles anew.
    _grads(maml, _batch())
    maml.wait_for_compile(timeout=60)
    assert maml.compile_status()[0]["state"] == "compiled"
    calls = len(fake.models)
    _grads(maml, _batch())
    assert fake.models[calls:] and not set(fake.models[calls:]) & old_replicas


def test_ineligible_models_and_backends_stay_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCompile()
    monkeypatch.setattr(compiled_mod, "compiled_unit", fake)
    per_step = create("conv4", in_channels=1, hidden=4, num_classes=4, bn_mode="per_step",
                      bn_steps=1)
    maml = MAMLWrapper(per_step, 0.1, 1, backend="func", workers=1, compile_after_s=0.0)
    _grads(maml, _batch())
    assert maml.compile_status()[0]["state"] == "eager"
    uneven = MAMLWrapper(_net(), 0.1, 1, backend="vmap", vmap_chunk=3, compile_after_s=0.0)
    _grads(uneven, _batch(tasks=4))  # chunks of 3 and 1: two shapes, not compiled
    assert uneven.compile_status()[0]["state"] == "eager"
    assert fake.models == []
    l2l_like = MAMLWrapper(_net(), 0.1, 1, backend="higher")
    assert l2l_like.compile_mode is False and l2l_like.compile_status() == []


def test_compile_argument_validation() -> None:
    with pytest.raises(ValueError, match="compile must be"):
        MAMLWrapper(_net(), 0.1, 1, compile="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compile_after_s"):
        MAMLWrapper(_net(), 0.1, 1, compile_after_s=-1.0)
    with pytest.raises(ValueError, match="compile_after_s"):
        AutoCompiler(-1.0)


@pytest.mark.slow
def test_real_background_compile_matches_eager_float64() -> None:
    net = _net().double()
    batch = _batch(torch.float64)
    torch.set_num_threads(2)  # 1 intra-op thread per worker: what the compile must match
    maml = MAMLWrapper(net, 0.1, 2, backend="func", workers=2, compile_after_s=0.0)
    eager = MAMLWrapper(copy.deepcopy(net), 0.1, 2, backend="func", compile=False)
    _grads(maml, batch)
    assert maml.wait_for_compile(timeout=600)
    assert maml.compile_status()[0]["state"] == "compiled"
    from torch._dynamo import config as dynamo_config

    with dynamo_config.patch(error_on_recompile=True):  # no compile in the loop
        compiled = _grads(maml, batch)
    for a, r in zip(compiled, _grads(eager, batch)):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-10)


def test_compiled_vmap_runs_chunks_of_8_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCompile()
    monkeypatch.setattr(compiled_mod, "compiled_unit", fake)
    batch = _batch(tasks=16)  # eager: one vmap chunk of 16; compiled: 2 chunks of 8
    maml = MAMLWrapper(_net(), 0.1, 1, backend="vmap", compile_after_s=0.0)
    eager = MAMLWrapper(copy.deepcopy(maml.model), 0.1, 1, backend="vmap", compile=False)
    _grads(maml, batch)
    assert maml.wait_for_compile(timeout=60)
    calls = len(fake.models)
    compiled = _grads(maml, batch)
    assert len(fake.models) - calls == 2 and len(set(fake.models[calls:])) == 1
    for a, r in zip(compiled, _grads(eager, batch)):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("workers", [1, 2])
def test_background_compile_runs_with_the_workers_intra_op_threads(
    workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dynamo guards on torch.get_num_threads(): the compile thread must use the count the
    worker threads will (2 cores over 2 workers: 1 each), else the first compiled meta-batch
    compiles again, in the training loop."""
    fake = FakeCompile()
    monkeypatch.setattr(compiled_mod, "compiled_unit", fake)
    torch.set_num_threads(2)  # the fixture restores its own setting afterwards
    maml = MAMLWrapper(_net(), 0.1, 1, backend="func", workers=workers, compile_after_s=0.0)
    _grads(maml, _batch())
    assert maml.wait_for_compile(timeout=60)
    at_compile = set(fake.threads)
    fake.threads.clear()
    _grads(maml, _batch())
    assert fake.threads and set(fake.threads) == at_compile == {2 // workers}


def test_recipe_skips_auto_compile_for_short_budgets() -> None:
    from metakd.recipes import MAMLConfig
    from metakd.recipes.maml import SHORT_RUN_S, _compile_mode

    assert _compile_mode(MAMLConfig()) == "auto"  # no budget: a long run
    assert _compile_mode(MAMLConfig(max_seconds=240.0)) is False  # the demo's 4 minutes
    assert _compile_mode(MAMLConfig(max_seconds=SHORT_RUN_S)) == "auto"
    assert _compile_mode(MAMLConfig(compile="on", max_seconds=60.0)) is True
    assert _compile_mode(MAMLConfig(compile="off")) is False
