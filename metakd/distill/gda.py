"""Global Distribution Alignment (GDA): the Fisher-Rao term, and the GDA loss that adds the
Sinkhorn term of :mod:`metakd.distill.transport`.

The conventions are those of :mod:`metakd.distill.losses`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metakd.distill._checks import (
    ROW_REDUCTIONS,
    check_pair,
    check_reduction,
    reduce_rows,
    row_std,
    safe_sqrt,
)
from metakd.distill.transport import sinkhorn_loss

__all__ = [
    "fisher_rao_loss",
    "fisher_rao_normal",
    "gda_loss",
    "logit_moments",
]


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
    return logits.mean(dim=-1), row_std(logits) + eps


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
    return 2 * math.sqrt(2) * torch.atanh(safe_sqrt(ratio))


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
    check_pair(student_logits, teacher_logits, "fisher_rao_loss")
    check_reduction(reduction, ROW_REDUCTIONS, "fisher_rao_loss")
    mu_s, sigma_s = logit_moments(student_logits)
    mu_t, sigma_t = logit_moments(teacher_logits.detach())
    per_row = fisher_rao_normal(mu_s, sigma_s, mu_t, sigma_t, guard=guard)
    return reduce_rows(per_row, reduction)


# --------------------------------------------------------------------------------------------
# GDA: Sinkhorn term
# --------------------------------------------------------------------------------------------


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
    sinkhorn_reduction: str = "sum",
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
        sinkhorn_reduction: ``"sum"`` over the batch (the official) or ``"mean"`` per row.

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
        student_logits, teacher_logits, epsilon=epsilon, iters=iters, tau=tau, debias=debias,
        reduction=sinkhorn_reduction,
    )
    return parts
