"""Tests for metakd.nn.norm: BatchNorm modes, affine options, vmap second-order gradients."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from metakd.nn import BatchNorm1d, BatchNorm2d, BatchNormConfig, set_bn_step
from metakd.nn.norm import pop_bn_kwargs


def _randomize_affine(ours: Any, ref: Any) -> None:
    with torch.no_grad():
        w = torch.randn_like(ref.weight) + 1.0
        b = torch.randn_like(ref.bias)
        ref.weight.copy_(w)
        ref.bias.copy_(b)
        ours.weight.copy_(w)
        ours.bias.copy_(b)


@pytest.mark.parametrize("momentum", [0.1, 0.9, None])
def test_running_mode_matches_torch_batchnorm2d(momentum: float | None) -> None:
    torch.manual_seed(0)
    ours = BatchNorm2d(6, mode="running", momentum=momentum)
    ref = nn.BatchNorm2d(6, momentum=momentum)
    _randomize_affine(ours, ref)
    for _ in range(3):  # train: batch statistics and the same running buffers
        x = torch.randn(5, 6, 4, 3) * 3 + 1
        torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours.running_var, ref.running_var, atol=1e-6, rtol=1e-6)
    assert ours.num_batches_tracked is not None and ref.num_batches_tracked is not None
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    ours.eval()
    ref.eval()
    x = torch.randn(7, 6, 4, 3)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-6)


def test_transductive_matches_torch_train_mode_also_in_eval() -> None:
    torch.manual_seed(1)
    ours = BatchNorm2d(4, eps=1e-3)
    ref = nn.BatchNorm2d(4, eps=1e-3, track_running_stats=False)
    _randomize_affine(ours, ref)
    x = torch.randn(8, 4, 5, 5) * 2 - 1
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-6)
    ours.eval()
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-6)  # still batch stats
    assert ours.running_mean is None and len(list(ours.buffers())) == 0


def test_batchnorm1d_2d_and_3d_inputs() -> None:
    torch.manual_seed(2)
    for shape in [(9, 5), (9, 5, 7)]:
        ours = BatchNorm1d(5, mode="running")
        ref = nn.BatchNorm1d(5)
        _randomize_affine(ours, ref)
        x = torch.randn(*shape)
        torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-6)
        ours.eval()
        ref.eval()
        torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-6)


def test_affine_options() -> None:
    full, beta, none = BatchNorm2d(3), BatchNorm2d(3, scale=False), BatchNorm2d(3, affine=False)
    assert [n for n, _ in full.named_parameters()] == ["weight", "bias"]
    assert [n for n, _ in beta.named_parameters()] == ["bias"]
    assert list(none.parameters()) == []
    x = torch.randn(4, 3, 2, 2)
    assert beta.bias is not None
    with torch.no_grad():
        beta.bias.fill_(0.5)
    expected = F.batch_norm(x, None, None, training=True, eps=1e-5) + 0.5
    torch.testing.assert_close(beta(x), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(none(x), expected - 0.5, atol=1e-6, rtol=1e-6)


def test_state_dict_loads_from_torch_batchnorm() -> None:
    ref = nn.BatchNorm2d(4)
    ref(torch.randn(3, 4, 2, 2))
    ours = BatchNorm2d(4, mode="running")
    ours.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ours.running_var, ref.running_var)
    transductive = BatchNorm2d(4)  # has no running buffers: they are dropped
    transductive.load_state_dict(ref.state_dict())
    per_step = BatchNorm2d(4, mode="per_step", num_steps=3)  # every step starts from them
    per_step.load_state_dict(ref.state_dict())
    assert per_step.running_var is not None and per_step.num_batches_tracked is not None
    assert ref.running_var is not None
    torch.testing.assert_close(per_step.running_var, ref.running_var.expand(3, 4))
    assert per_step.num_batches_tracked.tolist() == [1, 1, 1]
    per_step.load_state_dict(per_step.state_dict())  # its own checkpoints load as they are


def test_per_step_statistics() -> None:
    torch.manual_seed(3)
    bn = BatchNorm2d(2, mode="per_step", num_steps=3, momentum=1.0)
    assert bn.running_mean is not None and bn.running_mean.shape == (3, 2)
    assert bn.running_var is not None
    net = nn.Sequential(bn)
    xs = [torch.randn(6, 2, 3, 3) + k for k in range(3)]
    for k, x in enumerate(xs):
        assert set_bn_step(net, k) == 1
        net(x)
    for k, x in enumerate(xs):  # momentum 1: row k holds the statistics of batch k
        torch.testing.assert_close(bn.running_mean[k], x.mean(dim=(0, 2, 3)))
        torch.testing.assert_close(bn.running_var[k], x.var(dim=(0, 2, 3), unbiased=True))
    assert bn.num_batches_tracked is not None
    assert bn.num_batches_tracked.tolist() == [1, 1, 1]
    net.eval()
    set_bn_step(net, 1)
    y = net(xs[1])  # eval: row 1, i.e. the statistics of xs[1]
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="out of range"):
        set_bn_step(net, 3)


def test_errors_and_config() -> None:
    with pytest.raises(ValueError, match="unknown BatchNorm mode"):
        BatchNorm2d(3, mode="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channels"):
        BatchNorm2d(3)(torch.randn(2, 4, 2, 2))
    with pytest.raises(ValueError, match="4-d"):
        BatchNorm2d(3)(torch.randn(2, 3))
    kwargs = {"bn_mode": "per_step", "bn_steps": 4, "hidden": 8}
    cfg = pop_bn_kwargs(kwargs, BatchNormConfig())
    assert (cfg.mode, cfg.num_steps, kwargs) == ("per_step", 4, {"hidden": 8})
    with pytest.raises(ValueError, match="bn_mode"):
        pop_bn_kwargs({"bn_mode": "batch"}, BatchNormConfig())


def _maml_setup(
    bn: nn.Module,
) -> tuple[nn.Module, dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), bn, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)
    ).double()
    params = {k: v.detach() for k, v in net.named_parameters()}
    g = torch.Generator().manual_seed(5)
    tasks = 3
    xs = torch.randn(tasks, 6, 2, 5, 5, generator=g, dtype=torch.float64)
    ys = torch.randint(0, 3, (tasks, 6), generator=g)
    xq = torch.randn(tasks, 9, 2, 5, 5, generator=g, dtype=torch.float64)
    yq = torch.randint(0, 3, (tasks, 9), generator=g)
    return net, params, (xs, ys, xq, yq)


def test_second_order_gradients_under_vmap_equal_loop() -> None:
    """Two second-order MAML steps: per-task meta-gradients, vmapped vs looped (float64)."""
    net, params, (xs, ys, xq, yq) = _maml_setup(BatchNorm2d(4))

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(net, p, (x,)), y)

    def meta_loss(p: dict[str, torch.Tensor], sx, sy, qx, qy):
        for _ in range(2):
            g = grad(loss)(p, sx, sy)
            p = {k: p[k] - 0.3 * g[k] for k in p}
        return loss(p, qx, qy)

    shared = vmap(grad(meta_loss), in_dims=(None, 0, 0, 0, 0))(params, xs, ys, xq, yq)
    batched_params = {k: v.expand(3, *v.shape).clone() for k, v in params.items()}
    batched = vmap(grad(meta_loss))(batched_params, xs, ys, xq, yq)
    for t in range(3):
        # Reference: plain autograd with create_graph, one task at a time.
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        fast = p
        for _ in range(2):
            g = torch.autograd.grad(
                loss(fast, xs[t], ys[t]), list(fast.values()), create_graph=True
            )
            fast = {k: v - 0.3 * gk for (k, v), gk in zip(fast.items(), g)}
        ref = torch.autograd.grad(loss(fast, xq[t], yq[t]), list(p.values()))
        for (k, _), r in zip(params.items(), ref):
            torch.testing.assert_close(shared[k][t], r, atol=1e-10, rtol=1e-10)
            torch.testing.assert_close(batched[k][t], r, atol=1e-10, rtol=1e-10)


def test_running_mode_eval_under_vmap_and_batched_buffer_updates() -> None:
    bn = BatchNorm2d(3, mode="running")
    with torch.no_grad():
        assert bn.running_mean is not None and bn.running_var is not None
        bn.running_mean.uniform_()
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, 5, 3, 2, 2)
    bn.eval()
    out = vmap(bn)(x)
    torch.testing.assert_close(out, torch.stack([bn(xi) for xi in x]))
    bn.train()  # one set of buffers per task, updated in place under vmap
    buffers = {k: v.expand(4, *v.shape).clone() for k, v in bn.named_buffers()}
    params: dict[str, torch.Tensor] = dict(bn.named_parameters())

    def run(b: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(bn, (params, b), (xi,))

    vmap(run, in_dims=(0, 0))(buffers, x)
    torch.testing.assert_close(
        buffers["running_mean"][2], 0.9 * bn.running_mean + 0.1 * x[2].mean(dim=(0, 2, 3))
    )


def _spy_on_batch_norm(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record every call of ``F.batch_norm`` (the native kernel) in the returned list."""
    calls: list[bool] = []
    real = F.batch_norm

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "batch_norm", spy)
    return calls


@pytest.mark.parametrize("scale", [True, False])
def test_native_kernel_outside_vmap_only_and_same_second_order(
    scale: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eager transductive BN calls F.batch_norm; under vmap it must not (wrong 2nd order)."""
    calls = _spy_on_batch_norm(monkeypatch)
    net, params, (xs, ys, xq, yq) = _maml_setup(BatchNorm2d(4, affine=True, scale=scale))

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(net, p, (x,)), y)

    def meta_loss(p: dict[str, torch.Tensor], sx, sy, qx, qy):
        g = grad(loss)(p, sx, sy)
        return loss({k: p[k] - 0.3 * g[k] for k in p}, qx, qy)

    vmapped = vmap(grad(meta_loss), in_dims=(None, 0, 0, 0, 0))(params, xs, ys, xq, yq)
    assert not calls, "F.batch_norm ran under vmap"
    for t in range(3):
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        g = torch.autograd.grad(loss(p, xs[t], ys[t]), list(p.values()), create_graph=True)
        fast = {k: v - 0.3 * gk for (k, v), gk in zip(p.items(), g)}
        ref = torch.autograd.grad(loss(fast, xq[t], yq[t]), list(p.values()))
        for (k, _), r in zip(params.items(), ref):
            torch.testing.assert_close(vmapped[k][t], r, atol=1e-10, rtol=1e-10)
    assert calls, "eager transductive BatchNorm did not use the native kernel"


@pytest.mark.parametrize(("mode", "momentum", "scale"), [
    ("running", 0.1, True), ("running", None, False), ("per_step", 0.9, True)])
def test_running_statistics_in_train_through_the_native_kernel_equal_the_decomposed_form(
    mode: str, momentum: float | None, scale: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eager train-mode BN with running statistics calls the fused F.batch_norm: same output,
    same running buffers and the same first- and second-order gradients as the var_mean form
    (the form under vmap and compile), in float64."""
    import metakd.nn.norm as norm

    def run(native: bool) -> list[torch.Tensor]:
        monkeypatch.setattr(norm, "plain_eager", lambda: native)
        torch.manual_seed(5)
        kw = {"num_steps": 2} if mode == "per_step" else {}
        bn = BatchNorm2d(3, mode=mode, momentum=momentum, scale=scale, **kw).double().train()
        with torch.no_grad():
            bn.bias.uniform_(-1, 1)
            if bn.weight is not None:
                bn.weight.uniform_(0.5, 1.5)
        x = (torch.randn(4, 3, 5, 5, dtype=torch.float64) * 2 + 1).requires_grad_(True)
        outs = []
        for k in range(2):
            if mode == "per_step":
                set_bn_step(bn, k)
            y = bn(x * (k + 1))
            outs.append(y)
        loss = sum((o ** 3).sum() for o in outs)
        params = [x] + [p for p in bn.parameters()]
        g = torch.autograd.grad(loss, params, create_graph=True)
        gg = torch.autograd.grad(sum((t ** 2).sum() for t in g), params)
        return [*outs, *g, *gg, bn.running_mean, bn.running_var,
                bn.num_batches_tracked.double()]

    calls = _spy_on_batch_norm(monkeypatch)
    native = run(True)
    assert calls, "train-mode BN with running statistics did not use the native kernel"
    calls.clear()
    decomposed = run(False)
    assert not calls
    for a, b in zip(native, decomposed):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
