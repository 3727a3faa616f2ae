"""Argument checks of :class:`~metakd.meta.MAMLWrapper` and of the opt-in accelerations.

Internal module: the checks run in ``MAMLWrapper(...)`` and ``metakd.meta.accel.accelerate``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from metakd.meta._backends import BACKENDS
from metakd.meta.objectives import REDUCTIONS

__all__ = ["check_acceleration", "check_maml_arguments", "check_steps"]


def check_steps(what: str, steps: object) -> None:
    """``steps`` is an int ``>= 0``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"{what} must be an int >= 0, got {steps!r}")


def check_acceleration(backend: str, compile: object, workers: object) -> None:
    """``compile`` is a bool or ``"auto"``, ``workers`` a positive int or ``None``, and the
    backend runs them (``"auto"`` is eager on the learn2learn and higher backends)."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ValueError(f"workers must be a positive int or None, got {workers!r}")
    if compile == "auto":
        return
    if compile not in (True, False):
        raise ValueError(f"compile must be True, False or 'auto', got {compile!r}")
    if compile and backend not in ("func", "vmap", "auto"):
        raise ValueError(f"compile=True needs backend 'func', 'vmap' or 'auto', not {backend!r}")


def check_maml_arguments(
    model: nn.Module, inner_lr: float | None, inner_steps: int, backend: str,
    test_inner_steps: int | None, learn_inner_lr: bool,
    inner_loss: Callable[[Tensor, Tensor], Tensor] | None, inner_loss_reduction: str,
    rule: Any, support: Any, objective: Any, vmap_chunk: int | None, workers: int | None,
    compile: bool | str,
) -> None:
    """Raise a ``ValueError`` naming the first bad argument of ``MAMLWrapper(...)``."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    check_steps("inner_steps", inner_steps)
    if test_inner_steps is not None:
        check_steps("test_inner_steps", test_inner_steps)
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"backend={backend!r} is unknown; use one of {('auto', *BACKENDS)}")
    if inner_loss_reduction not in REDUCTIONS:
        raise ValueError(
            f"inner_loss_reduction={inner_loss_reduction!r} is unknown; use 'mean' "
            "(mean over the support set) or 'sum_over_k' (TF reference: sum / K)"
        )
    if inner_loss is not None and not callable(inner_loss):
        raise ValueError("inner_loss must be a callable loss(logits, labels) -> scalar")
    for what, value in (("rule", rule), ("support", support), ("objective", objective)):
        if value is not None and not callable(value):
            raise ValueError(f"{what} must be callable, got {type(value).__name__}")
    if rule is not None and (inner_lr is not None or learn_inner_lr):
        raise ValueError("pass either rule= or inner_lr/learn_inner_lr (the default rule)")
    if rule is None and inner_lr is None:
        raise ValueError("inner_lr is required with the default update rule (SGD)")
    if inner_lr is not None and (
        isinstance(inner_lr, bool) or not isinstance(inner_lr, (int, float))
        or not math.isfinite(inner_lr) or inner_lr <= 0
    ):
        raise ValueError(f"inner_lr must be a positive finite float, got {inner_lr!r}")
    if vmap_chunk is not None and (isinstance(vmap_chunk, bool) or vmap_chunk < 1):
        raise ValueError(f"vmap_chunk must be a positive int or None, got {vmap_chunk!r}")
    if vmap_chunk is not None and backend not in ("vmap", "auto"):
        raise ValueError(f"vmap_chunk applies to backend='vmap' only, not {backend!r}")
    check_acceleration(backend, compile, workers)
