"""Hinton KD and decoupled KD (DKD) on logits, and DKD's warm-up factor.

The conventions (stop-gradient teacher, reductions, which code each reproduces) are those of
:mod:`metakd.distill.losses`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from metakd.distill._checks import (
    KD_REDUCTIONS,
    check_pair,
    check_reduction,
    check_temperature,
    kl_rows,
    reduce_rows,
)

__all__ = [
    "dkd_loss",
    "dkd_parts",
    "kd_loss",
    "warmup_factor",
]


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
    check_pair(student_logits, teacher_logits, "kd_loss")
    check_temperature(temperature, "kd_loss")
    check_reduction(reduction, KD_REDUCTIONS, "kd_loss")
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    per_row = kl_rows(log_p_t, log_p_s)
    if reduction == "mean_elements":
        loss = per_row.mean() / student_logits.shape[-1]
    else:
        loss = reduce_rows(per_row, "mean" if reduction == "batchmean" else reduction)
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
    check_pair(student_logits, teacher_logits, "dkd_parts")
    check_temperature(temperature, "dkd_parts")
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
    tckd = kl_rows(binary_t, binary_s).mean() * temperature**2

    shift = 1000.0 * gt_mask.to(z_s.dtype)
    log_nt_s = F.log_softmax(z_s - shift, dim=-1)
    log_nt_t = F.log_softmax(z_t - shift, dim=-1)
    nckd = kl_rows(log_nt_t, log_nt_s).mean() * temperature**2
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
