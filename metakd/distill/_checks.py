"""Argument checks and small tensor helpers shared by the distillation losses."""

from __future__ import annotations

import torch
from torch import Tensor

KD_REDUCTIONS = ("batchmean", "mean_elements", "sum", "none")
ROW_REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def check_pair(student_logits: Tensor, teacher_logits: Tensor, name: str) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"{name}: student_logits and teacher_logits must have the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if student_logits.dim() < 1:
        raise ValueError(f"{name}: logits need a class dimension, got a 0-d tensor")


def check_temperature(temperature: float, name: str) -> None:
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"{name}: temperature must be > 0, got {temperature}")


def check_reduction(reduction: str, allowed: tuple[str, ...], name: str) -> None:
    if reduction not in allowed:
        raise ValueError(f"{name}: unknown reduction {reduction!r}; expected one of {allowed}")


def kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``Σ_c p (log p − log q)`` over the last dim; a zero ``p`` contributes exactly 0."""
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(-1)


def reduce_rows(per_row: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.mean()


def safe_sqrt(x: Tensor) -> Tensor:
    """``sqrt(x)`` for ``x >= 0`` with gradient 0 (not inf/NaN) where ``x == 0``."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), 0.0)


def row_std(logits: Tensor) -> Tensor:
    """Unbiased std over the last dim (``torch.std``'s value), gradient 0 at constant rows."""
    return safe_sqrt(logits.var(dim=-1, unbiased=True))
