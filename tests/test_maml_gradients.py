"""MAML meta-gradients against a closed form (linear regression) and central differences.

All in float64, for every backend.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from metakd.data import TaskBatch
from metakd.meta import MAMLWrapper

BACKENDS = ["func", "vmap", "learn2learn", "higher"]


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is as fast, and immune to OpenMP stalls on a busy CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _backend_available(name: str) -> None:
    if name in ("learn2learn", "higher"):
        pytest.importorskip(name)


def half_mse(out: Tensor, y: Tensor) -> Tensor:
    """``1/(2n) Σ_i ||out_i − y_i||²``."""
    return 0.5 * ((out - y) ** 2).sum(-1).mean()


def regression_task(d: int = 4, n_s: int = 6, n_q: int = 5, seed: int = 0) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(n_s, d, generator=g, dtype=torch.float64)
    ys = torch.randn(n_s, 1, generator=g, dtype=torch.float64)
    xq = torch.randn(n_q, d, generator=g, dtype=torch.float64)
    yq = torch.randn(n_q, 1, generator=g, dtype=torch.float64)
    return xs, ys, xq, yq


def closed_form(
    w: Tensor, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, alpha: Tensor, steps: int,
    first_order: bool,
) -> tuple[Tensor, Tensor]:
    """Meta-gradients ``(dL/dw, dL/dα)`` of linear-regression MAML; see the test docstring."""
    n_s, n_q = xs.shape[0], xq.shape[0]
    eye = torch.eye(w.numel(), dtype=w.dtype)
    # dw_k/dw_{k-1}: A = I − diag(α) H, or I when the inner gradients are constants
    a = eye if first_order else eye - torch.diag(alpha) @ (xs.T @ xs / n_s)
    wk = w.clone()
    jac = eye.clone()  # dw_k/dw
    jac_alpha = torch.zeros_like(eye)  # dw_k/dα
    for _ in range(steps):
        g_s = xs.T @ (xs @ wk - ys.squeeze(1)) / n_s
        jac_alpha = a @ jac_alpha - torch.diag(g_s)
        jac = a @ jac
        wk = wk - alpha * g_s
    g_q = xq.T @ (xq @ wk - yq.squeeze(1)) / n_q
    return jac.T @ g_q, jac_alpha.T @ g_q


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_matches_closed_form(backend: str, steps: int) -> None:
    r"""Second-order MAML on linear regression has an exact meta-gradient.

    Model ``f(x) = wᵀx``; support loss ``L_S(w) = 1/(2n_s) ||X_s w − y_s||²`` with gradient
    ``g_S(w) = X_sᵀ(X_s w − y_s)/n_s`` and constant Hessian ``H = X_sᵀX_s/n_s``. One inner step
    is affine in ``w``: ``w_k = w_{k−1} − α g_S(w_{k−1}) = A w_{k−1} + α X_sᵀy_s/n_s`` with
    ``A = I − αH`` (``A = I − diag(α) H`` for per-entry Meta-SGD rates). So after ``k`` steps
    ``∂w_k/∂w = A^k`` and, by the chain rule, the meta-gradient of the query loss
    ``L_Q(w_k) = 1/(2n_q) ||X_q w_k − y_q||²`` is

        ``dL_Q/dw = (A^k)ᵀ ∇L_Q(w_k)``, with ``∇L_Q(w_k) = X_qᵀ(X_q w_k − y_q)/n_q``.

    For the learning rates: ``∂w_k/∂α = A ∂w_{k−1}/∂α − diag(g_S(w_{k−1}))`` (from
    ``w_k = w_{k−1} − α ⊙ g_S(w_{k−1})``), so ``dL_Q/dα = (∂w_k/∂α)ᵀ ∇L_Q(w_k)``.
    First-order MAML replaces every ``A`` by ``I`` (the inner gradients are constants):
    ``dL_Q/dw = ∇L_Q(w_k)``.
    """
    _backend_available(backend)
    xs, ys, xq, yq = regression_task()
    model = nn.Linear(4, 1, bias=False).double()
    maml = MAMLWrapper(model, inner_lr=0.3, inner_steps=steps, backend=backend,
                       inner_loss=half_mse)
    learner = maml.adapt(xs, ys)
    loss = half_mse(learner(xq), yq)
    (grad,) = torch.autograd.grad(loss, [model.weight])
    w = model.weight.detach().flatten()
    expected, _ = closed_form(w, xs, ys, xq, yq, torch.full_like(w, 0.3), steps, False)
    torch.testing.assert_close(grad.flatten(), expected, rtol=0, atol=1e-12)
    # and it really is second order: different from the first-order gradient
    fo, _ = closed_form(w, xs, ys, xq, yq, torch.full_like(w, 0.3), steps, True)
    assert (grad.flatten() - fo).abs().max() > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("steps", [1, 3])
def test_first_order_drops_second_order_terms(backend: str, steps: int) -> None:
    """FOMAML's meta-gradient is exactly ``∇L_Q(w_k)`` (see the closed form above)."""
    _backend_available(backend)
    xs, ys, xq, yq = regression_task(seed=1)
    model = nn.Linear(4, 1, bias=False).double()
    maml = MAMLWrapper(model, inner_lr=0.3, inner_steps=steps, first_order=True,
                       backend=backend, inner_loss=half_mse)
    learner = maml.adapt(xs, ys)
    (grad,) = torch.autograd.grad(half_mse(learner(xq), yq), [model.weight])
    w = model.weight.detach().flatten()
    expected, _ = closed_form(w, xs, ys, xq, yq, torch.full_like(w, 0.3), steps, True)
    torch.testing.assert_close(grad.flatten(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("steps", [1, 2])
def test_meta_sgd_matches_closed_form(backend: str, steps: int) -> None:
    """Meta-SGD: per-entry rates get ``(∂w_k/∂α)ᵀ ∇L_Q(w_k)`` and ``w`` gets ``(A^k)ᵀ∇L_Q``."""
    _backend_available(backend)
    xs, ys, xq, yq = regression_task(seed=2)
    model = nn.Linear(4, 1, bias=False).double()
    maml = MAMLWrapper(model, inner_lr=0.2, inner_steps=steps, backend=backend,
                       inner_loss=half_mse, learn_inner_lr=True)
    lr = maml.inner_lrs["weight"]
    with torch.no_grad():
        lr.copy_(torch.tensor([[0.1, 0.2, 0.3, 0.25]], dtype=torch.float64))
    learner = maml.adapt(xs, ys)
    g_w, g_lr = torch.autograd.grad(half_mse(learner(xq), yq), [model.weight, lr])
    w = model.weight.detach().flatten()
    exp_w, exp_lr = closed_form(w, xs, ys, xq, yq, lr.detach().flatten(), steps, False)
    torch.testing.assert_close(g_w.flatten(), exp_w, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_lr.flatten(), exp_lr, rtol=0, atol=1e-12)


def test_meta_loss_matches_closed_form_over_tasks() -> None:
    """``meta_loss`` averages the per-task meta-gradients (surrogate backward)."""
    model = nn.Linear(4, 1, bias=False).double()
    tasks = [regression_task(seed=s) for s in range(3)]
    batch = TaskBatch(*(torch.stack(parts) for parts in zip(*tasks)))
    maml = MAMLWrapper(model, inner_lr=0.3, inner_steps=2, inner_loss=half_mse, workers=1)
    loss, _ = maml.meta_loss(batch)
    loss.backward()
    w = model.weight.detach().flatten()
    alpha = torch.full_like(w, 0.3)
    expected = torch.stack([closed_form(w, *t, alpha, 2, False)[0] for t in tasks]).mean(0)
    torch.testing.assert_close(model.weight.grad.flatten(), expected, rtol=0, atol=1e-12)


def tiny_conv_batch(tasks: int = 2, ways: int = 3, queries: int = 2, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(ways)
    return TaskBatch(
        torch.randn(tasks, ways, 1, 16, 16, generator=g, dtype=torch.float64),
        y.repeat(tasks, 1),
        torch.randn(tasks, ways * queries, 1, 16, 16, generator=g, dtype=torch.float64),
        y.repeat_interleave(queries).repeat(tasks, 1),
    )


class SmoothConvNet(nn.Module):
    """Two conv → BN (metakd's, batch statistics) → tanh blocks, mean pooling, a linear head.

    Smooth everywhere: with ReLU and max-pooling the meta-loss has kinks that the inner steps
    bring within 1e-6 of the weights, which spoils central differences, not the gradient.
    """

    def __init__(self, ways: int = 3) -> None:
        from metakd.nn import BatchNorm2d

        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.bn1 = BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.bn2 = BatchNorm2d(4)
        self.head = nn.Linear(4, ways)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.bn1(self.conv1(x)))
        h = torch.tanh(self.bn2(self.conv2(h)))
        return self.head(h.mean((2, 3)))


@pytest.mark.parametrize("backend", ["func", "vmap"])
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_central_differences(backend: str, first_order: bool) -> None:
    """Directional derivatives of the meta-loss, Meta-SGD rates included (float64).

    Second order must match central differences; first order must not (it drops terms).
    """
    model = SmoothConvNet().double()
    maml = MAMLWrapper(model, inner_lr=0.5, inner_steps=2, backend=backend,
                       learn_inner_lr=True, first_order=first_order)
    batch = tiny_conv_batch()
    loss, _ = maml.meta_loss(batch)
    loss.backward()
    params = list(maml.parameters())
    grads = [p.grad.clone() for p in params]
    g = torch.Generator().manual_seed(3)
    eps = 1e-5
    errors = []
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, v in zip(params, direction):
                    p.add_(sign * eps * v)
            values.append(maml.meta_loss(batch, training=False)[0].item())
            with torch.no_grad():
                for p, v in zip(params, direction):
                    p.sub_(sign * eps * v)
        numeric = (values[0] - values[1]) / (2 * eps)
        analytic = sum(float((gr * v).sum()) for gr, v in zip(grads, direction))
        errors.append(abs(numeric - analytic) / max(1.0, abs(numeric)))
    if first_order:
        assert max(errors) > 1e-3, errors
    else:
        assert max(errors) < 1e-7, errors
