"""Entropic optimal transport between batches of distributions: the Sinkhorn term of GDA.

The conventions are those of :mod:`metakd.distill.losses`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from metakd.distill._checks import check_pair, row_std

__all__ = [
    "sinkhorn",
    "sinkhorn_cost",
    "sinkhorn_loss",
    "standardize",
]

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
    return (logits - logits.mean(dim=-1, keepdim=True)) / (row_std(logits).unsqueeze(-1) + eps)


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
    reduction: str = "sum",
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
        reduction: ``"sum"`` (the official term, over the ``B × B`` plan) or ``"mean"``
            (divided by the number of rows ``B``: a per-row cost whose size does not depend
            on the batch, so one weight fits every batch or episode size).

    Returns:
        A scalar (``[...]`` for batched leading dimensions).

    Raises:
        ValueError: mismatched shapes, or an unknown ``reduction``.

    Example:
        >>> s = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0], [1.0, 0.0, 2.0]])
        >>> sinkhorn_loss(s, s).item()
        0.0
        >>> round(sinkhorn_loss(s, s, debias=False).item(), 4)
        0.0436
        >>> round(sinkhorn_loss(s, s, debias=False, reduction="mean").item(), 4)  # / 3 rows
        0.0145
    """
    check_pair(student_logits, teacher_logits, "sinkhorn_loss")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"sinkhorn_loss: reduction={reduction!r}; use 'sum' or 'mean'")
    rows = student_logits.shape[-2] if reduction == "mean" else 1
    p_s = _gda_probs(student_logits, tau)
    p_t = _gda_probs(teacher_logits.detach(), tau)
    loss = _transport_cost(p_s, p_t, epsilon, iters)
    if not debias:
        return loss / rows
    self_s = _transport_cost(p_s, p_s, epsilon, iters)
    self_t = _transport_cost(p_t, p_t, epsilon, iters)
    return (loss - self_s / 2 - self_t / 2) / rows
