"""``MAMLWrapper``'s default ``compile="auto"``: compiled where the model allows it, decided
at the first meta-batch, the eager gradients either way, eager with one warning when
compiling fails, and eager where the environment says so.

The suite runs with ``METAKD_COMPILE=0`` (``tests/conftest.py``); these tests lift it.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from meta_helpers import make_batch
from torch import nn

from metakd.data import TaskBatch
from metakd.meta import MAMLWrapper, accel


@pytest.fixture(autouse=True)
def _compile_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METAKD_COMPILE", raising=False)
    monkeypatch.delenv("TORCH_COMPILE_DISABLE", raising=False)


def _net(bn: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), bn or nn.Identity(), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 5))


def _batch(tasks: int = 3, queries: int = 3, dtype: torch.dtype = torch.float32) -> TaskBatch:
    return make_batch(tasks, 5, queries, 1, 8, dtype, seed=1)


def _grads(maml: MAMLWrapper, batch: TaskBatch, batches: int = 1) -> list[torch.Tensor]:
    """The meta-gradient of the last of ``batches`` meta-batches (plain SGD steps between)."""
    opt = torch.optim.SGD(maml.parameters(), lr=0.1)
    for _ in range(batches):
        opt.zero_grad(set_to_none=True)
        maml.meta_loss(batch)[0].backward()
        grads = [p.grad.clone() for p in maml.parameters()]
        opt.step()
    return grads


def _accels(maml: MAMLWrapper) -> list[accel.Acceleration]:
    backend: Any = maml._backend
    parts = [backend.func, backend.vmap] if hasattr(backend, "func") else [backend]
    return [b.accel for b in parts if getattr(b, "accel", None) is not None]


def test_the_default_compiles_and_computes_the_eager_meta_gradient() -> None:
    """Per-task units (3 tasks, 3 queries: the func path), float64: compiled == eager to
    1e-10 over two meta-batches; a second wrapper from the same seed repeats it bit for bit."""
    batch = _batch(dtype=torch.float64)
    default = MAMLWrapper(_net().double(), inner_lr=0.4)
    assert default.compile_mode == "auto"
    compiled = _grads(default, batch, batches=2)
    (func_accel, vmap_accel) = _accels(default)
    assert func_accel.planned is True and func_accel.compiled_once and not func_accel.failed
    assert vmap_accel.planned is None  # the vmap path never ran
    assert accel.compiled(default)
    eager = _grads(MAMLWrapper(_net().double(), inner_lr=0.4, compile=False), batch, batches=2)
    for c, e in zip(compiled, eager, strict=True):
        torch.testing.assert_close(c, e, rtol=1e-10, atol=1e-12)
    again = _grads(MAMLWrapper(_net().double(), inner_lr=0.4), batch, batches=2)
    assert all(torch.equal(a, c) for a, c in zip(again, compiled, strict=True))


def _failing_build(*args: Any, **kwargs: Any) -> Any:
    def fn(*a: Any, **k: Any) -> Any:
        raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")
    return fn


def test_a_failed_compile_goes_on_eager_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "_build", _failing_build)
    batch = _batch()
    maml = MAMLWrapper(_net(), inner_lr=0.4)
    with pytest.warns(RuntimeWarning, match="compiling the meta-gradient failed .*InvalidCxx"
                      ".*goes on eager") as record:
        first = _grads(maml, batch)
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _grads(maml, batch)  # no second warning, no second attempt
    (func_accel, _) = _accels(maml)
    assert func_accel.failed and not func_accel.compiled_once and not accel.compiled(maml)
    eager = _grads(MAMLWrapper(_net(), inner_lr=0.4, compile=False), batch)
    for f, e in zip(first, eager, strict=True):
        torch.testing.assert_close(f, e, rtol=1e-6, atol=1e-7)
    # compile=True asked for it: the failure is an error
    with pytest.raises(RuntimeError, match="InvalidCxxCompiler"):
        MAMLWrapper(_net(), inner_lr=0.4, compile=True).meta_loss(batch)


def test_a_failure_after_a_compiled_meta_batch_is_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Falling back mid-run would change the run's numbers: only the first meta-batch may."""
    calls = {"n": 0}

    def build(*args: Any, **kwargs: Any) -> Any:
        def fn(values: Any, sx: torch.Tensor, *rest: Any) -> Any:
            calls["n"] += 1
            if calls["n"] > 1:
                raise RuntimeError("a later failure")
            grads = {g: {n: torch.zeros_like(t) for n, t in named.items()}
                     for g, named in values.items()}
            return grads, {"ce": sx.new_zeros(1)}, sx.new_zeros(1, 15, 5)
        return fn

    monkeypatch.setattr(accel, "_build", build)
    maml = MAMLWrapper(_net(), inner_lr=0.4, workers=1)
    maml.meta_loss(_batch(tasks=1))
    with pytest.raises(RuntimeError, match="a later failure"):
        maml.meta_loss(_batch(tasks=1))


def test_auto_stays_eager_where_the_model_or_the_environment_says_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No compile is attempted (a build would raise) and no error is raised: running
    statistics in train(), METAKD_COMPILE=0, TORCH_COMPILE_DISABLE=1, the higher backend."""
    monkeypatch.setattr(accel, "_build", _failing_build)
    batch = _batch()

    def eager_run(maml: MAMLWrapper) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            maml.meta_loss(batch)[0].backward()
        assert all(a.planned is not True for a in _accels(maml))

    running = MAMLWrapper(_net(nn.BatchNorm2d(4)), inner_lr=0.4)
    eager_run(running)
    assert accel.compile_obstacle(running._backend.func) == (  # type: ignore[attr-defined]
        "['1'] update running BatchNorm statistics in train() mode")
    with pytest.raises(ValueError, match="running BatchNorm statistics"):
        MAMLWrapper(_net(nn.BatchNorm2d(4)), inner_lr=0.4, compile=True).meta_loss(batch)
    for var, value in (("METAKD_COMPILE", "0"), ("TORCH_COMPILE_DISABLE", "1")):
        with monkeypatch.context() as m:
            m.setenv(var, value)
            maml = MAMLWrapper(_net(), inner_lr=0.4)
            eager_run(maml)
            assert var in (accel.compile_disabled() or "")
    higher = MAMLWrapper(_net(), inner_lr=0.4, backend="higher")
    assert not _accels(higher) and higher.compile_mode is False
    higher.meta_loss(batch)[0].backward()


def test_compile_argument_is_checked() -> None:
    with pytest.raises(ValueError, match="compile must be True, False or 'auto'"):
        MAMLWrapper(_net(), inner_lr=0.4, compile="yes")
