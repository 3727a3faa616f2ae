"""Pure knowledge-distillation loss functions on logits.

Every function here is plain tensor code: no module state, no Python branching on tensor
*values* (only on shapes and arguments), so each one works on a single task's query logits
``[M, N]`` under :func:`torch.func.vmap` over a stack of tasks ``[T, M, N]``. Logits are
``[..., B, C]`` (rows, classes); the functions that reduce over rows reduce over every leading
row.

Conventions:
    * **The teacher is always stop-gradient.** Each function detaches ``teacher_logits`` itself,
      so no gradient reaches the teacher, whatever the caller did.
    * **Hinton KD** (:func:`kd_loss`) is ``KL(softmax(z_t/T) || softmax(z_s/T))`` per row
      (sum over classes), times ``T²`` when ``t_squared``. Its ``reduction`` picks which code
      it reproduces:

      - ``"batchmean"`` (mean over rows): mdistiller's ``kd_loss``, GDA's ``kd_loss`` and
        torchdistill's ``KDLoss``. torchdistill drops the ``T²`` when its ``alpha`` is unset:
        ``t_squared=False``.
      - ``"mean_elements"`` (sum over all ``B·C`` elements divided by ``B·C``, i.e.
        ``batchmean / C``): ``nn.KLDivLoss()``'s default ``'mean'``, which the official PMAML
        code uses, so its KD weight λ acts as ``λ/C`` on the batchmean KL.
    * **DKD** (:func:`dkd_parts`, :func:`dkd_loss`, :func:`warmup_factor`) follows mdistiller's
      ``DKD``: both parts are sums over the batch divided by ``B`` and multiplied by ``T²``.
      The binary target/non-target probabilities are taken in log space, which equals
      mdistiller's ``log(cat_mask(softmax))`` but never gives ``-inf``.
    * **GDA** (:func:`fisher_rao_loss`, :func:`sinkhorn_loss`, :func:`gda_loss`) follows the
      ``FishRao_Sinkhorn`` class of the official GDA code (``Logit-Distillation-GDA``):
      a Fisher–Rao distance between per-row Gaussian fits of the logits, and an entropic
      optimal-transport (Sinkhorn) cost between the *batches* of standardised distributions.
      ``guard=False`` and ``debias=False`` give the official terms exactly; the defaults add
      numerical guards (finite gradients where the official code gives NaN) and remove the
      entropic bias of the Sinkhorn term (zero at student == teacher).
    * The Sinkhorn term is a **sum** over the batch (it grows about linearly with ``B``), and
      under ``torch.distributed`` each rank computes it on its own slice of the batch: nothing
      is gathered, as in the official code under DDP.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "dkd_loss",
    "dkd_parts",
    "fisher_rao_loss",
    "fisher_rao_normal",
    "gda_loss",
    "kd_loss",
    "logit_moments",
    "sinkhorn",
    "sinkhorn_cost",
    "sinkhorn_loss",
    "standardize",
    "warmup_factor",
]

_KD_REDUCTIONS = ("batchmean", "mean_elements", "sum", "none")
_ROW_REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _check_pair(student_logits: Tensor, teacher_logits: Tensor, name: str) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"{name}: student_logits and teacher_logits must have the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if student_logits.dim() < 1:
        raise ValueError(f"{name}: logits need a class dimension, got a 0-d tensor")


def _check_temperature(temperature: float, name: str) -> None:
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"{name}: temperature must be > 0, got {temperature}")


def _check_reduction(reduction: str, allowed: tuple[str, ...], name: str) -> None:
    if reduction not in allowed:
        raise ValueError(f"{name}: unknown reduction {reduction!r}; expected one of {allowed}")


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``Σ_c p (log p − log q)`` over the last dim; a zero ``p`` contributes exactly 0."""
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(-1)


def _reduce_rows(per_row: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.mean()


def _safe_sqrt(x: Tensor) -> Tensor:
    """``sqrt(x)`` for ``x >= 0`` with gradient 0 (not inf/NaN) where ``x == 0``."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), 0.0)


def _std(logits: Tensor) -> Tensor:
    """Unbiased std over the last dim (``torch.std``'s value), gradient 0 at constant rows."""
    return _safe_sqrt(logits.var(dim=-1, unbiased=True))


# --------------------------------------------------------------------------------------------
# Hinton KD
# --------------------------------------------------------------------------------------------


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 4.0,
    *,
    reduction: str = "batchmean",
    t_squared: bool = True,
) -> Tensor:
    """Hinton knowledge distillation: ``KL(softmax(z_t/T) || softmax(z_s/T))`` per row.

    Computed in log space (``log_softmax`` of both sides); a teacher probability that is
    exactly zero contributes 0 (never NaN), as in ``F.kl_div``. The teacher is detached.

    Args:
        student_logits: ``[..., B, C]`` student logits.
        teacher_logits: teacher logits, same shape (detached here).
        temperature: softmax temperature ``T > 0``.
        reduction: ``"batchmean"`` (mean of the per-row KL over rows: mdistiller, GDA,
            torchdistill), ``"mean_elements"`` (sum over all elements divided by their number,
            ``= batchmean / C``: ``nn.KLDivLoss()``'s default, the official PMAML code),
            ``"sum"`` (sum over rows) or ``"none"`` (per-row KL, shape ``[..., B]``).
        t_squared: multiply by ``T²`` (Hinton's gradient-scale correction). ``False``
            reproduces torchdistill's ``KDLoss`` when its ``alpha`` is unset.

    Returns:
        A scalar, or the per-row tensor for ``reduction="none"``.

    Raises:
        ValueError: unknown ``reduction``, ``temperature <= 0`` or mismatched shapes.

    Example:
        >>> s = torch.tensor([[1.0, 2.0, 3.0]])
        >>> t = torch.tensor([[3.0, 2.0, 1.0]])
        >>> round(kd_loss(s, t, temperature=1.0).item(), 4)
        1.1504
        >>> round(kd_loss(s, t, 1.0, reduction="mean_elements").item(), 4)
        0.3835
        >>> kd_loss(s, s).item()
        0.0
    """
    _check_pair(student_logits, teacher_logits, "kd_loss")
    _check_temperature(temperature, "kd_loss")
    _check_reduction(reduction, _KD_REDUCTIONS, "kd_loss")
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    per_row = _kl_rows(log_p_t, log_p_s)
    if reduction == "mean_elements":
        loss = per_row.mean() / student_logits.shape[-1]
    else:
        loss = _reduce_rows(per_row, "mean" if reduction == "batchmean" else reduction)
    return loss * temperature**2 if t_squared else loss


# --------------------------------------------------------------------------------------------
# Decoupled KD (mdistiller's DKD)
# --------------------------------------------------------------------------------------------


def _binary_log_probs(log_p: Tensor, gt_mask: Tensor, labels: Tensor) -> Tensor:
    """``[log p_gt, log(1 − p_gt)]`` (``[..., B, 2]``) from log-probabilities, stably."""
    log_gt = log_p.gather(-1, labels.unsqueeze(-1))
    log_rest = log_p.masked_fill(gt_mask, -math.inf).logsumexp(dim=-1, keepdim=True)
    return torch.cat([log_gt, log_rest], dim=-1)


def dkd_parts(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float = 4.0,
) -> tuple[Tensor, Tensor]:
    """The two parts ``(tckd, nckd)`` of Decoupled KD (Zhao et al., CVPR 2022), as mdistiller.

    With ``p = softmax(z/T)`` and the ground-truth class ``gt``:

    * ``tckd = T² · Σ_rows KL([p_t,gt, 1 − p_t,gt] || [p_s,gt, 1 − p_s,gt]) / B`` (binary
      target-class KD). The binary log-probabilities are taken in log space
      (``log p_gt`` from ``log_softmax``, ``log(1 − p_gt)`` as the ``logsumexp`` of the
      non-target log-probabilities), equal to mdistiller's ``log(cat_mask(softmax))`` but
      finite even when ``p_gt`` rounds to 1.
    * ``nckd = T² · Σ_rows KL(softmax(z_t/T − 1000·1_gt) || softmax(z_s/T − 1000·1_gt)) / B``
      (non-target-class KD, mdistiller's ``-1000`` mask).

    ``B`` is the number of rows (every leading dimension). The teacher is detached.

    Args:
        student_logits: ``[..., B, C]`` student logits (``C >= 2``).
        teacher_logits: teacher logits, same shape (detached here).
        labels: ground-truth class indices ``[..., B]`` (integer).
        temperature: softmax temperature ``T > 0``.

    Returns:
        ``(tckd, nckd)``, two scalars.

    Raises:
        ValueError: ``temperature <= 0`` or mismatched shapes.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0]])
        >>> t = torch.tensor([[1.0, 2.0, 0.0]])
        >>> tckd, nckd = dkd_parts(s, t, torch.tensor([0]), temperature=1.0)
        >>> round(tckd.item(), 4), round(nckd.item(), 4)
        (0.3698, 0.0671)
    """
    _check_pair(student_logits, teacher_logits, "dkd_parts")
    _check_temperature(temperature, "dkd_parts")
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"dkd_parts: labels must have shape {tuple(student_logits.shape[:-1])} (the logits'"
            f" rows), got {tuple(labels.shape)}"
        )
    num_classes = student_logits.shape[-1]
    if num_classes < 2:
        raise ValueError(f"dkd_parts: DKD needs at least 2 classes, got {num_classes}")
    labels = labels.long()
    classes = torch.arange(num_classes, device=student_logits.device)
    gt_mask = labels.unsqueeze(-1) == classes  # [..., B, C], vmap-friendly (no one_hot)
    z_s = student_logits / temperature
    z_t = teacher_logits.detach() / temperature

    binary_s = _binary_log_probs(F.log_softmax(z_s, dim=-1), gt_mask, labels)
    binary_t = _binary_log_probs(F.log_softmax(z_t, dim=-1), gt_mask, labels)
    tckd = _kl_rows(binary_t, binary_s).mean() * temperature**2

    shift = 1000.0 * gt_mask.to(z_s.dtype)
    log_nt_s = F.log_softmax(z_s - shift, dim=-1)
    log_nt_t = F.log_softmax(z_t - shift, dim=-1)
    nckd = _kl_rows(log_nt_t, log_nt_s).mean() * temperature**2
    return tckd, nckd


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """Decoupled KD: ``alpha · tckd + beta · nckd`` (see :func:`dkd_parts`), no warm-up.

    mdistiller multiplies this by :func:`warmup_factor` and adds its own cross-entropy; both
    are left to the caller. Its defaults are ``alpha=1, beta=8, T=4`` (``beta=2`` for
    ResNet56 → ResNet20).

    Args:
        student_logits: ``[..., B, C]`` student logits.
        teacher_logits: teacher logits, same shape (detached here).
        labels: ground-truth class indices ``[..., B]``.
        alpha: weight of the target-class part.
        beta: weight of the non-target-class part.
        temperature: softmax temperature ``T > 0``.

    Returns:
        A scalar.

    Example:
        >>> s = torch.tensor([[2.0, 1.0, 0.0]])
        >>> t = torch.tensor([[1.0, 2.0, 0.0]])
        >>> round(dkd_loss(s, t, torch.tensor([0]), beta=2.0, temperature=1.0).item(), 4)
        0.5041
    """
    tckd, nckd = dkd_parts(student_logits, teacher_logits, labels, temperature)
    return alpha * tckd + beta * nckd


def warmup_factor(epoch: float | Tensor, warmup: float) -> float | Tensor:
    """mdistiller's DKD warm-up factor ``min(epoch / warmup, 1)`` (its epochs count from 1).

    Args:
        epoch: the current epoch (a number or a tensor).
        warmup: the warm-up length in epochs; ``warmup <= 0`` means no warm-up (factor 1).

    Returns:
        A float for a number ``epoch``, a floating tensor for a tensor ``epoch``.

    Example:
        >>> warmup_factor(10, 20), warmup_factor(30, 20), warmup_factor(3, 0)
        (0.5, 1.0, 1.0)
        >>> warmup_factor(torch.tensor(5), 20)
        tensor(0.2500)
    """
    if isinstance(epoch, Tensor):
        if warmup <= 0:
            return torch.ones_like(epoch, dtype=torch.get_default_dtype())
        return torch.clamp(epoch / warmup, max=1.0)
    if warmup <= 0:
        return 1.0
    return min(float(epoch) / warmup, 1.0)


# --------------------------------------------------------------------------------------------
# GDA: Fisher–Rao term
# --------------------------------------------------------------------------------------------


def logit_moments(logits: Tensor, eps: float = 0.0) -> tuple[Tensor, Tensor]:
    """Per-row mean and unbiased standard deviation of the logits (a Gaussian fit per row).

    The std has ``torch.std``'s default divisor ``C − 1`` and value; its gradient is 0 (not
    NaN) on a constant row. ``eps`` is added to the std.

    Args:
        logits: ``[..., B, C]`` logits.
        eps: added to the standard deviation.

    Returns:
        ``(mean, std)``, each ``[..., B]``.

    Example:
        >>> mean, std = logit_moments(torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]))
        >>> mean.tolist(), std.tolist()
        ([2.0, 0.0], [1.0, 0.0])
    """
    return logits.mean(dim=-1), _std(logits) + eps


def fisher_rao_normal(
    mu1: Tensor,
    sigma1: Tensor,
    mu2: Tensor,
    sigma2: Tensor,
    *,
    guard: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """Closed-form Fisher–Rao distance between univariate normals ``N(mu1, σ1)``, ``N(mu2, σ2)``.

    Elementwise (broadcasting), ``2·√2·artanh(sqrt((Δμ² + 2Δσ²) / (Δμ² + 2(σ1 + σ2)²)))``,
    the formula of the official GDA code.

    Args:
        mu1: means of the first normals.
        sigma1: standard deviations of the first normals.
        mu2: means of the second normals.
        sigma2: standard deviations of the second normals.
        guard: ``False`` is the official code exactly: the gradient is NaN where the two
            normals coincide (``sqrt``'s infinite slope at 0) and the value is inf where a σ is
            0. ``True`` clamps the denominator to ``>= eps`` and the ratio to ``<= 1 − eps``
            before ``artanh``, and takes the square root so that where the ratio is 0 the
            value is exactly 0 with a finite (zero) gradient. At non-degenerate points both give
            the same value.
        eps: the guard's tolerance.

    Returns:
        The distances, broadcast shape of the inputs.

    Example:
        >>> d = fisher_rao_normal(torch.tensor(0.0), torch.tensor(1.0),
        ...                       torch.tensor(0.0), torch.tensor(2.0))
        >>> round(d.item(), 4), round(math.sqrt(2) * math.log(2), 4)
        (0.9803, 0.9803)
        >>> fisher_rao_normal(torch.tensor(1.0), torch.tensor(1.0),
        ...                   torch.tensor(1.0), torch.tensor(1.0)).item()
        0.0
    """
    d_mu2 = (mu1 - mu2) ** 2
    numerator = d_mu2 + 2 * (sigma1 - sigma2) ** 2
    denominator = d_mu2 + 2 * (sigma1 + sigma2) ** 2
    if not guard:
        return 2 * math.sqrt(2) * torch.atanh(torch.sqrt(numerator / denominator))
    ratio = (numerator / denominator.clamp_min(eps)).clamp(max=1 - eps)
    return 2 * math.sqrt(2) * torch.atanh(_safe_sqrt(ratio))


def fisher_rao_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    guard: bool = True,
    reduction: str = "mean",
) -> Tensor:
    """GDA's Fisher–Rao term: the distance between the per-row Gaussian fits of the logits.

    Each row's logits are summarised by their mean and unbiased std (:func:`logit_moments`);
    the term is :func:`fisher_rao_normal` between the student's and the teacher's normals.
    The official code takes the mean over rows, unweighted (the weight λ_FR is applied by
    :func:`gda_loss`). The teacher is detached.

    Args:
        student_logits: ``[..., B, C]`` student logits.
        teacher_logits: teacher logits, same shape (detached here).
        guard: see :func:`fisher_rao_normal` (``False``: the official code exactly).
        reduction: ``"mean"`` over rows (official), ``"sum"`` or ``"none"`` (``[..., B]``).

    Returns:
        A scalar, or the per-row distances for ``reduction="none"``.

    Raises:
        ValueError: unknown ``reduction`` or mismatched shapes.

    Example:
        >>> s = torch.tensor([[0.0, 1.0, 2.0]])
        >>> round(fisher_rao_loss(s, 2 * s).item(), 4)
        1.1894
        >>> fisher_rao_loss(s, s).item()
        0.0
    """
    _check_pair(student_logits, teacher_logits, "fisher_rao_loss")
    _check_reduction(reduction, _ROW_REDUCTIONS, "fisher_rao_loss")
    mu_s, sigma_s = logit_moments(student_logits)
    mu_t, sigma_t = logit_moments(teacher_logits.detach())
    per_row = fisher_rao_normal(mu_s, sigma_s, mu_t, sigma_t, guard=guard)
    return _reduce_rows(per_row, reduction)


# --------------------------------------------------------------------------------------------
# GDA: Sinkhorn term
# --------------------------------------------------------------------------------------------


def standardize(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-row logit standardisation ``(z − mean) / (std + eps)`` (unbiased std), as GDA.

    Args:
        logits: ``[..., C]`` logits.
        eps: added to the standard deviation (the GDA code's ``1e-7``).

    Returns:
        The standardised logits, same shape; a constant row gives zeros (finite gradient).

    Example:
        >>> [round(v, 4) for v in standardize(torch.tensor([1.0, 2.0, 3.0])).tolist()]
        [-1.0, 0.0, 1.0]
    """
    return (logits - logits.mean(dim=-1, keepdim=True)) / (_std(logits).unsqueeze(-1) + eps)


def sinkhorn(cost: Tensor, epsilon: float = 0.1, iters: int = 20) -> Tensor:
    """The entropic transport plan of GDA's Sinkhorn term for a ``[..., B, B']`` cost.

    ``P = exp(−cost/ε)``, then ``iters`` times: divide each row by its sum, then each column
    by its sum (the official alternation: unit row and column sums, not marginals ``1/B``).
    After the last step the column sums are 1 and the row sums close to 1. The normalisations
    are carried out in log space (``logsumexp``), which is the same computation but cannot
    underflow to ``0/0``. Nothing is detached: gradients flow through every iteration.

    Args:
        cost: ``[..., B, B']`` cost matrix.
        epsilon: entropic regularisation ε.
        iters: number of (row, column) normalisation rounds; 0 returns the kernel.

    Returns:
        The plan, same shape as ``cost``.

    Example:
        >>> plan = sinkhorn(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), epsilon=0.5, iters=5)
        >>> [round(v, 4) for v in plan.sum(0).tolist()]
        [1.0, 1.0]
        >>> [round(v, 4) for v in plan[0].tolist()]
        [0.8808, 0.1192]
    """
    log_plan = -cost / epsilon
    for _ in range(iters):
        log_plan = log_plan - log_plan.logsumexp(dim=-1, keepdim=True)
        log_plan = log_plan - log_plan.logsumexp(dim=-2, keepdim=True)
    return log_plan.exp()


def _pairwise_l1(a: Tensor, b: Tensor) -> Tensor:
    """``[..., B, C]``, ``[..., B', C]`` -> ``[..., B, B']`` L1 distances (vmap-friendly)."""
    return (a.unsqueeze(-2) - b.unsqueeze(-3)).abs().sum(-1)


def _gda_probs(logits: Tensor, tau: float) -> Tensor:
    return F.softmax(standardize(logits) / tau, dim=-1)


def _transport_cost(p_a: Tensor, p_b: Tensor, epsilon: float, iters: int) -> Tensor:
    cost = _pairwise_l1(p_a, p_b)
    return (sinkhorn(cost, epsilon, iters) * cost).sum(dim=(-2, -1))


def sinkhorn_cost(student_logits: Tensor, teacher_logits: Tensor, tau: float = 2.0) -> Tensor:
    """GDA's cross-sample cost matrix: ``W_ij = |p_s,i − p_t,j|_1``.

    ``p = softmax(standardize(z) / tau)`` per row (GDA's hard-coded ``T = 2``, independent of
    the KD temperature). Written with broadcasting rather than ``torch.cdist`` so that it works
    under ``vmap`` and has a finite gradient where two rows are equal. The teacher is detached.

    Args:
        student_logits: ``[..., B, C]`` student logits.
        teacher_logits: ``[..., B', C]`` teacher logits (detached here).
        tau: softmax temperature applied to the standardised logits.

    Returns:
        ``[..., B, B']`` costs.

    Example:
        >>> s = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
        >>> sinkhorn_cost(s, s).round(decimals=4)
        tensor([[0.0000, 0.6403],
                [0.6403, 0.0000]])
    """
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            "sinkhorn_cost: student and teacher logits need the same number of classes, got "
            f"{student_logits.shape[-1]} and {teacher_logits.shape[-1]}"
        )
    return _pairwise_l1(_gda_probs(student_logits, tau), _gda_probs(teacher_logits.detach(), tau))


def sinkhorn_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    epsilon: float = 0.1,
    iters: int = 20,
    tau: float = 2.0,
    debias: bool = True,
) -> Tensor:
    """GDA's Sinkhorn term ``S(s, t) = Σ_ij P_ij W_ij`` between the student and teacher batches.

    ``W = sinkhorn_cost(s, t, tau)`` and ``P = sinkhorn(W, epsilon, iters)``: every student row
    is matched against every teacher row of the batch ("global" alignment). The sum runs over
    the ``B × B`` plan, so the term grows about linearly with the batch size ``B`` (a batch
    repeated twice gives exactly twice the official term); its weight has to be chosen for a
    batch size. Under ``torch.distributed`` each rank computes it on its own slice of the batch
    (local, never gathered), as the official code does under DDP.

    Args:
        student_logits: ``[..., B, C]`` student logits.
        teacher_logits: teacher logits, same shape (detached here).
        epsilon: entropic regularisation ε of :func:`sinkhorn`.
        iters: Sinkhorn rounds.
        tau: softmax temperature on the standardised logits.
        debias: ``False`` is the official term, which is ``> 0`` even when student == teacher
            (the entropic blur spreads the plan off the diagonal). ``True`` returns the
            debiased ``S(s, t) − S(s, s)/2 − S(t, t)/2``, exactly 0 at student == teacher, with
            finite gradients there.

    Returns:
        A scalar (``[...]`` for batched leading dimensions).

    Raises:
        ValueError: mismatched shapes.

    Example:
        >>> s = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0], [1.0, 0.0, 2.0]])
        >>> sinkhorn_loss(s, s).item()
        0.0
        >>> round(sinkhorn_loss(s, s, debias=False).item(), 4)
        0.0436
    """
    _check_pair(student_logits, teacher_logits, "sinkhorn_loss")
    p_s = _gda_probs(student_logits, tau)
    p_t = _gda_probs(teacher_logits.detach(), tau)
    loss = _transport_cost(p_s, p_t, epsilon, iters)
    if not debias:
        return loss
    self_s = _transport_cost(p_s, p_s, epsilon, iters)
    self_t = _transport_cost(p_t, p_t, epsilon, iters)
    return loss - self_s / 2 - self_t / 2


def gda_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    fisher_rao_weight: float = 0.01,
    sinkhorn_weight: float = 0.0008,
    epsilon: float = 0.1,
    iters: int = 20,
    tau: float = 2.0,
    fisher_rao: bool = True,
    guard: bool = True,
    debias: bool = True,
) -> dict[str, Tensor]:
    """The GDA term (``FishRao_Sinkhorn``) as a dict of weighted parts.

    ``{"fisher_rao": fisher_rao_weight · fisher_rao_loss, "sinkhorn": sinkhorn_weight ·
    sinkhorn_loss}``. The defaults are the official constructor's (λ_FR 0.01, λ_SK 0.0008,
    ε 0.1, 20 rounds, τ 2); the official recipes override the two weights (§4.4–4.5 of the
    spec). ``fisher_rao=False`` leaves out the ``"fisher_rao"`` key, as the official CIFAR
    ``dkd`` distiller (Sinkhorn only). ``guard=False, debias=False`` is the official code
    exactly.

    Args:
        student_logits: ``[..., B, C]`` student logits.
        teacher_logits: teacher logits, same shape (detached here).
        fisher_rao_weight: λ_FR.
        sinkhorn_weight: λ_SK.
        epsilon: entropic regularisation of the Sinkhorn term.
        iters: Sinkhorn rounds.
        tau: softmax temperature on the standardised logits (Sinkhorn term).
        fisher_rao: include the Fisher–Rao term.
        guard: numerical guards of :func:`fisher_rao_normal`.
        debias: debiased Sinkhorn term (see :func:`sinkhorn_loss`).

    Returns:
        ``{"fisher_rao": ..., "sinkhorn": ...}`` (no ``"fisher_rao"`` if ``fisher_rao=False``).

    Example:
        >>> s = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
        >>> parts = gda_loss(s, 2 * s, fisher_rao_weight=0.1, sinkhorn_weight=0.1)
        >>> {k: round(v.item(), 4) for k, v in parts.items()}
        {'fisher_rao': 0.1189, 'sinkhorn': 0.0}
        >>> sorted(gda_loss(s, 2 * s, fisher_rao=False))
        ['sinkhorn']
    """
    parts: dict[str, Tensor] = {}
    if fisher_rao:
        parts["fisher_rao"] = fisher_rao_weight * fisher_rao_loss(
            student_logits, teacher_logits, guard=guard
        )
    parts["sinkhorn"] = sinkhorn_weight * sinkhorn_loss(
        student_logits, teacher_logits, epsilon=epsilon, iters=iters, tau=tau, debias=debias
    )
    return parts
