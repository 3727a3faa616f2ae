"""The pure distillation losses of :mod:`metakd.distill.losses` against hand computations.

Every reference here is written independently of the library (explicit softmax/log in float64,
mdistiller's ``-1000`` mask computed naively, the normal-distribution formula by hand).
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from metakd.distill.losses import (
    dkd_loss,
    dkd_parts,
    fisher_rao_loss,
    fisher_rao_normal,
    gda_loss,
    kd_loss,
    logit_moments,
    sinkhorn,
    sinkhorn_cost,
    sinkhorn_loss,
    standardize,
    warmup_factor,
)

F64 = torch.float64


def _softmax(z: Tensor) -> Tensor:
    e = torch.exp(z - z.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def _hand_kl_rows(s: Tensor, t: Tensor, temp: float) -> Tensor:
    """Per-row KL(softmax(t/T) || softmax(s/T)) with explicit softmax and log."""
    p_s, p_t = _softmax(s / temp), _softmax(t / temp)
    return (p_t * torch.log(p_t / p_s)).sum(-1)


S23 = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], dtype=F64)
T23 = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.5, -1.5]], dtype=F64)


# ---------------------------------------------------------------------------------------------
# KD
# ---------------------------------------------------------------------------------------------


def test_kd_zero_with_zero_gradient_at_teacher() -> None:
    s = torch.randn(4, 5, dtype=F64, requires_grad=True)
    loss = kd_loss(s, s.detach().clone())
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-14)
    assert s.grad is not None and s.grad.abs().max().item() < 1e-12


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_kd_reductions_and_t_squared_against_hand_values(temp: float) -> None:
    rows = _hand_kl_rows(S23, T23, temp)
    c = S23.shape[1]
    t2 = temp**2
    torch.testing.assert_close(kd_loss(S23, T23, temp, reduction="none"), rows * t2)
    torch.testing.assert_close(kd_loss(S23, T23, temp), rows.mean() * t2)
    torch.testing.assert_close(kd_loss(S23, T23, temp, reduction="sum"), rows.sum() * t2)
    torch.testing.assert_close(
        kd_loss(S23, T23, temp, reduction="mean_elements"), rows.sum() / (2 * c) * t2
    )
    torch.testing.assert_close(kd_loss(S23, T23, temp, t_squared=False), rows.mean())
    assert kd_loss(S23, T23, temp, reduction="none").shape == (2,)


def test_kd_mean_elements_is_batchmean_over_classes() -> None:
    s, t = torch.randn(6, 7), torch.randn(6, 7)
    torch.testing.assert_close(
        kd_loss(s, t, 3.0, reduction="mean_elements"), kd_loss(s, t, 3.0) / 7
    )


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning")
def test_kd_matches_kldivloss_and_torchdistill_convention() -> None:
    s, t, temp = torch.randn(8, 5, dtype=F64), torch.randn(8, 5, dtype=F64), 4.0
    ref = torch.nn.KLDivLoss(reduction="batchmean")(
        torch.log_softmax(s / temp, 1), torch.softmax(t / temp, 1)
    )
    torch.testing.assert_close(kd_loss(s, t, temp), ref * temp**2)
    torch.testing.assert_close(kd_loss(s, t, temp, t_squared=False), ref)  # torchdistill alpha=None
    pmaml = torch.nn.KLDivLoss()(torch.log_softmax(s / temp, 1), torch.softmax(t / temp, 1))
    torch.testing.assert_close(kd_loss(s, t, temp, reduction="mean_elements"), pmaml * temp**2)


def test_kd_zero_teacher_probability_is_finite() -> None:
    t = torch.tensor([[0.0, -math.inf, 1.0]])
    s = torch.tensor([[0.5, 0.0, 1.0]], requires_grad=True)
    loss = kd_loss(s, t, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and s.grad is not None and torch.isfinite(s.grad).all()
    p_t = _softmax(t[0, [0, 2]])  # the -inf class has probability 0 and contributes 0
    p_s = _softmax(s.detach()[0])[[0, 2]]
    torch.testing.assert_close(loss, (p_t * torch.log(p_t / p_s)).sum())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reduction": "mean"}, "reduction"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
    ],
)
def test_kd_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), **kwargs)


def test_kd_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4))


# ---------------------------------------------------------------------------------------------
# DKD
# ---------------------------------------------------------------------------------------------


def _naive_mdistiller_dkd(s: Tensor, t: Tensor, y: Tensor, temp: float) -> tuple[Tensor, Tensor]:
    """mdistiller's DKD written out naively (softmax, cat_mask, log, -1000 mask)."""
    b = s.shape[0]
    gt = torch.zeros_like(s)
    gt[torch.arange(b), y] = 1.0
    p_s, p_t = _softmax(s / temp), _softmax(t / temp)
    bin_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], 1)
    bin_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], 1)
    tckd = (bin_t * (torch.log(bin_t) - torch.log(bin_s))).sum() * temp**2 / b
    q_t = _softmax(t / temp - 1000.0 * gt)
    log_q_s = torch.log_softmax(s / temp - 1000.0 * gt, 1)
    nckd = (torch.xlogy(q_t, q_t) - q_t * log_q_s).sum() * temp**2 / b
    return tckd, nckd


def test_dkd_parts_against_hand_computation() -> None:
    y = torch.tensor([2, 0])
    for temp in (1.0, 4.0):
        tckd, nckd = dkd_parts(S23, T23, y, temp)
        ref_t, ref_n = _naive_mdistiller_dkd(S23, T23, y, temp)
        torch.testing.assert_close(tckd, ref_t)
        torch.testing.assert_close(nckd, ref_n)
        # nckd is the KL of the renormalised non-target distributions (gt column dropped).
        keep = [[0, 1], [1, 2]]
        s_nt = torch.stack([S23[i, keep[i]] for i in range(2)])
        t_nt = torch.stack([T23[i, keep[i]] for i in range(2)])
        torch.testing.assert_close(nckd, _hand_kl_rows(s_nt, t_nt, temp).mean() * temp**2)


def test_dkd_loss_combines_parts() -> None:
    s, t, y = torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    tckd, nckd = _naive_mdistiller_dkd(s.double(), t.double(), y, 2.0)
    loss = dkd_loss(s.double(), t.double(), y, alpha=0.7, beta=3.0, temperature=2.0)
    torch.testing.assert_close(loss, 0.7 * tckd + 3.0 * nckd)


def test_dkd_stable_when_target_probability_rounds_to_one() -> None:
    s = torch.tensor([[200.0, 0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[150.0, 1.0, 0.0]])
    loss = dkd_loss(s, t, torch.tensor([0]), temperature=1.0)
    loss.backward()
    assert torch.isfinite(loss) and s.grad is not None and torch.isfinite(s.grad).all()


def test_dkd_rejects_bad_labels_shape() -> None:
    with pytest.raises(ValueError, match="labels"):
        dkd_parts(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))


def test_warmup_factor() -> None:
    assert warmup_factor(10, 20) == 0.5
    assert isinstance(warmup_factor(10, 20), float)
    assert warmup_factor(40, 20) == 1.0
    assert warmup_factor(1, 0) == 1.0
    out = warmup_factor(torch.tensor([10, 30]), 20)
    assert isinstance(out, Tensor)
    torch.testing.assert_close(out, torch.tensor([0.5, 1.0]))


# ---------------------------------------------------------------------------------------------
# Fisher–Rao
# ---------------------------------------------------------------------------------------------


def test_logit_moments_unbiased() -> None:
    z = torch.tensor([[1.0, 2.0, 4.0, 9.0]], dtype=F64)
    mean, std = logit_moments(z)
    torch.testing.assert_close(mean, torch.tensor([4.0], dtype=F64))
    hand = math.sqrt(((1 - 4) ** 2 + (2 - 4) ** 2 + 0 + (9 - 4) ** 2) / 3)
    torch.testing.assert_close(std, torch.tensor([hand], dtype=F64))


def test_fisher_rao_known_value_and_symmetry() -> None:
    zero, one, two = (torch.tensor(v, dtype=F64) for v in (0.0, 1.0, 2.0))
    for guard in (True, False):
        d = fisher_rao_normal(zero, one, zero, two, guard=guard)
        assert d.item() == pytest.approx(math.sqrt(2) * math.log(2), rel=1e-12)
    mu1, s1, mu2, s2 = torch.randn(4, 10, dtype=F64).unbind(0)
    s1, s2 = s1.abs() + 0.1, s2.abs() + 0.1
    torch.testing.assert_close(
        fisher_rao_normal(mu1, s1, mu2, s2), fisher_rao_normal(mu2, s2, mu1, s1)
    )


def test_fisher_rao_guarded_zero_with_zero_gradient_at_equality() -> None:
    mu = torch.tensor([0.3, -1.0], dtype=F64, requires_grad=True)
    sigma = torch.tensor([1.5, 0.2], dtype=F64, requires_grad=True)
    d = fisher_rao_normal(mu, sigma, mu.detach().clone(), sigma.detach().clone())
    assert d.tolist() == [0.0, 0.0]
    d.sum().backward()
    assert mu.grad is not None and sigma.grad is not None
    assert mu.grad.tolist() == [0.0, 0.0] and sigma.grad.tolist() == [0.0, 0.0]


def test_fisher_rao_unguarded_has_nan_gradient_at_equality() -> None:
    """Documents the official code's defect: sqrt's infinite slope at 0."""
    mu = torch.tensor(0.3, dtype=F64, requires_grad=True)
    sigma = torch.tensor(1.5, dtype=F64)
    fisher_rao_normal(mu, sigma, mu.detach().clone(), sigma, guard=False).backward()
    assert mu.grad is not None and torch.isnan(mu.grad)


def test_fisher_rao_zero_sigma_inf_unguarded_clamped_guarded() -> None:
    zero, one = torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    assert fisher_rao_normal(zero, zero, zero, one, guard=False).item() == math.inf
    guarded = fisher_rao_normal(zero, zero, zero, one).item()
    assert guarded == pytest.approx(2 * math.sqrt(2) * math.atanh(math.sqrt(1 - 1e-6)), rel=1e-9)
    sigma = torch.tensor(0.0, dtype=F64, requires_grad=True)
    d = fisher_rao_normal(zero, sigma, zero, zero)  # 0/0: guarded value and gradient
    d.backward()
    assert d.item() == 0.0 and sigma.grad is not None and torch.isfinite(sigma.grad)


def test_fisher_rao_guard_does_not_change_non_degenerate_values() -> None:
    mu1, s1, mu2, s2 = torch.randn(4, 200).unbind(0)
    s1, s2 = s1.abs() + 0.05, s2.abs() + 0.05
    torch.testing.assert_close(
        fisher_rao_normal(mu1, s1, mu2, s2), fisher_rao_normal(mu1, s1, mu2, s2, guard=False)
    )


def test_fisher_rao_loss_against_hand_formula() -> None:
    s, t = torch.randn(5, 6, dtype=F64), torch.randn(5, 6, dtype=F64)
    ms, ss, mt, st = s.mean(1), s.std(1), t.mean(1), t.std(1)
    ratio = ((ms - mt) ** 2 + 2 * (ss - st) ** 2) / ((ms - mt) ** 2 + 2 * (ss + st) ** 2)
    r = ratio.sqrt()
    hand = 2 * math.sqrt(2) * 0.5 * torch.log((1 + r) / (1 - r))
    torch.testing.assert_close(fisher_rao_loss(s, t, reduction="none"), hand)
    torch.testing.assert_close(fisher_rao_loss(s, t), hand.mean())
    torch.testing.assert_close(fisher_rao_loss(s, t, reduction="sum"), hand.sum())


def test_fisher_rao_loss_finite_on_constant_student_rows() -> None:
    """A zero-initialised head gives constant logits: guarded loss and gradient stay finite."""
    s = torch.zeros(3, 5, requires_grad=True)
    loss = fisher_rao_loss(s, torch.randn(3, 5))
    loss.backward()
    assert torch.isfinite(loss) and s.grad is not None and torch.isfinite(s.grad).all()


# ---------------------------------------------------------------------------------------------
# Sinkhorn
# ---------------------------------------------------------------------------------------------


def _naive_official_sinkhorn_term(
    s: Tensor, t: Tensor, eps: float, iters: int, tau: float
) -> Tensor:
    """The official term written out: normalize, softmax, cdist p=1, divide rows then columns."""

    def norm(z: Tensor) -> Tensor:
        return (z - z.mean(-1, keepdim=True)) / (1e-7 + z.std(-1, keepdim=True))

    w = torch.cdist(torch.softmax(norm(s) / tau, -1), torch.softmax(norm(t) / tau, -1), p=1)
    k = torch.exp(-w / eps)
    for _ in range(iters):
        k = k / k.sum(1, keepdim=True)
        k = k / k.sum(0, keepdim=True)
    return (k * w).sum()


def test_sinkhorn_plan_marginals() -> None:
    cost = torch.rand(6, 6, dtype=F64)
    plan = sinkhorn(cost, epsilon=0.1, iters=20)
    torch.testing.assert_close(plan.sum(0), torch.ones(6, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(plan.sum(1), torch.ones(6, dtype=F64), rtol=0, atol=1e-3)
    torch.testing.assert_close(sinkhorn(cost, 0.5, 0), torch.exp(-cost / 0.5))


def test_sinkhorn_term_matches_naive_official_code() -> None:
    s, t = torch.randn(7, 5, dtype=F64), torch.randn(7, 5, dtype=F64)
    torch.testing.assert_close(
        sinkhorn_loss(s, t, debias=False), _naive_official_sinkhorn_term(s, t, 0.1, 20, 2.0)
    )
    w = torch.cdist(
        torch.softmax(standardize(s) / 2, -1), torch.softmax(standardize(t) / 2, -1), p=1
    )
    torch.testing.assert_close(sinkhorn_cost(s, t), w)


def test_sinkhorn_term_doubles_on_a_duplicated_batch() -> None:
    s, t = torch.randn(6, 5, dtype=F64), torch.randn(6, 5, dtype=F64)
    single = sinkhorn_loss(s, t, debias=False)
    double = sinkhorn_loss(torch.cat([s, s]), torch.cat([t, t]), debias=False)
    assert double.item() == pytest.approx(2 * single.item(), rel=1e-6)


def test_sinkhorn_debiased_zero_at_teacher_with_finite_gradient() -> None:
    s = torch.randn(6, 5, requires_grad=True)
    t = s.detach().clone()
    loss = sinkhorn_loss(s, t)
    loss.backward()
    assert loss.item() == 0.0
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert sinkhorn_loss(s, t, debias=False).item() > 0.01  # the official term's entropic blur


def test_sinkhorn_debiased_against_naive_terms() -> None:
    s, t = torch.randn(6, 5, dtype=F64), torch.randn(6, 5, dtype=F64)

    def naive(a: Tensor, b: Tensor) -> Tensor:
        return _naive_official_sinkhorn_term(a, b, 0.1, 20, 2.0)

    expected = naive(s, t) - naive(s, s) / 2 - naive(t, t) / 2
    torch.testing.assert_close(sinkhorn_loss(s, t), expected)


def test_gda_loss_parts_and_wiring() -> None:
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    parts = gda_loss(s, t, fisher_rao_weight=0.3, sinkhorn_weight=0.2, guard=False, debias=False)
    torch.testing.assert_close(parts["fisher_rao"], 0.3 * fisher_rao_loss(s, t, guard=False))
    torch.testing.assert_close(
        parts["sinkhorn"], 0.2 * _naive_official_sinkhorn_term(s, t, 0.1, 20, 2.0)
    )
    assert set(gda_loss(s, t, fisher_rao=False)) == {"sinkhorn"}
    default = gda_loss(s, t)
    torch.testing.assert_close(default["fisher_rao"], 0.01 * fisher_rao_loss(s, t))
    torch.testing.assert_close(default["sinkhorn"], 0.0008 * sinkhorn_loss(s, t))


# ---------------------------------------------------------------------------------------------
# Gradient flow, vmap, gradcheck
# ---------------------------------------------------------------------------------------------

Y6 = torch.tensor([0, 1, 2, 3, 4, 0])

LOSSES = {
    "kd": lambda s, t: kd_loss(s, t, 2.0),
    "kd_mean_elements": lambda s, t: kd_loss(s, t, 2.0, reduction="mean_elements"),
    "dkd": lambda s, t: dkd_loss(s, t, Y6[: s.shape[-2]], beta=2.0),
    "fisher_rao": lambda s, t: fisher_rao_loss(s, t),
    "fisher_rao_unguarded": lambda s, t: fisher_rao_loss(s, t, guard=False),
    "sinkhorn": lambda s, t: sinkhorn_loss(s, t),
    "sinkhorn_official": lambda s, t: sinkhorn_loss(s, t, debias=False),
    "gda": lambda s, t: sum(gda_loss(s, t, fisher_rao_weight=1.0, sinkhorn_weight=1.0).values()),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradient_reaches_student_never_teacher(name: str) -> None:
    s = torch.randn(6, 5, requires_grad=True)
    t = torch.randn(6, 5, requires_grad=True)
    LOSSES[name](s, t).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None or not t.grad.any()


VMAPPED = {
    "kd": lambda s, t, y: kd_loss(s, t, 2.0),
    "dkd": lambda s, t, y: dkd_loss(s, t, y, beta=2.0),
    "fisher_rao": lambda s, t, y: fisher_rao_loss(s, t),
    "sinkhorn": lambda s, t, y: sinkhorn_loss(s, t),
}


@pytest.mark.parametrize("name", sorted(VMAPPED))
def test_vmap_over_tasks_equals_loop(name: str) -> None:
    fn = VMAPPED[name]
    s, t = torch.randn(3, 10, 5), torch.randn(3, 10, 5)
    y = torch.randint(0, 5, (3, 10))
    batched = torch.func.vmap(fn)(s, t, y)
    looped = torch.stack([fn(s[i], t[i], y[i]) for i in range(3)])
    torch.testing.assert_close(batched, looped)
    grads = torch.func.vmap(torch.func.grad(fn))(s, t, y)
    loop_grads = torch.stack([torch.func.grad(fn)(s[i], t[i], y[i]) for i in range(3)])
    torch.testing.assert_close(grads, loop_grads)


@pytest.mark.parametrize("name", ["kd", "dkd", "fisher_rao", "sinkhorn", "sinkhorn_official"])
def test_gradcheck(name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(4, 5, dtype=F64, generator=gen, requires_grad=True)
    t = torch.randn(4, 5, dtype=F64, generator=gen)
    assert torch.autograd.gradcheck(lambda x: LOSSES[name](x, t), (s,))


# ---------------------------------------------------------------------------------------------
# Distributed locality of the Sinkhorn term
# ---------------------------------------------------------------------------------------------


def _fixed_batch() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(7)
    return torch.randn(8, 5, generator=gen, dtype=F64), torch.randn(8, 5, generator=gen, dtype=F64)


def _sinkhorn_rank(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        s, t = _fixed_batch()
        half = slice(4 * rank, 4 * rank + 4)
        value = sinkhorn_loss(s[half], t[half])
        total = value.clone()
        dist.all_reduce(total)
        torch.save({"value": value, "total": total}, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_sinkhorn_is_local_under_distributed(tmp_path: Path) -> None:
    mp.spawn(_sinkhorn_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    s, t = _fixed_batch()
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for rank, res in enumerate(results):
        half = slice(4 * rank, 4 * rank + 4)
        torch.testing.assert_close(res["value"], sinkhorn_loss(s[half], t[half]))
    total = results[0]["total"]
    torch.testing.assert_close(total, results[1]["total"])
    torch.testing.assert_close(total, results[0]["value"] + results[1]["value"])
    assert abs(total.item() - sinkhorn_loss(s, t).item()) > 1e-3


def test_sinkhorn_mean_reduction_is_the_sum_over_rows() -> None:
    """Per-row Sinkhorn: the official sum divided by the batch's rows, debiased or not; a
    batch repeated twice keeps the per-row value where the sum doubles."""
    from metakd.distill import gda_loss, sinkhorn_loss

    torch.manual_seed(0)
    s, t = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    for debias in (False, True):
        total = sinkhorn_loss(s, t, debias=debias)
        mean = sinkhorn_loss(s, t, debias=debias, reduction="mean")
        assert torch.allclose(mean * 6, total, rtol=1e-12)
    s2, t2 = torch.cat([s, s]), torch.cat([t, t])
    per_row = sinkhorn_loss(s2, t2, debias=False, reduction="mean")
    assert torch.allclose(per_row, sinkhorn_loss(s, t, debias=False, reduction="mean"),
                          rtol=1e-6)
    parts = gda_loss(s, t, sinkhorn_weight=0.5, sinkhorn_reduction="mean")
    assert torch.allclose(parts["sinkhorn"], 0.5 * sinkhorn_loss(s, t, reduction="mean"))
    with pytest.raises(ValueError, match="reduction='rows'"):
        sinkhorn_loss(s, t, reduction="rows")
