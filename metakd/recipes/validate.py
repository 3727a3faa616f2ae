"""The value rules every config follows, declared once by field name and checked before a build.

:func:`check_values` refuses nonsense before anything is built or written: counts that must be
at least 1 (ways, shots, queries, batch sizes, test episodes), lengths and periods that must
not be negative (steps, epochs, inner steps), rates and temperatures that must be positive,
weights that must not be negative, a weight whose complement is the other weight (PMAML's
``trade_lambda``: ``(1 - λ) CE + λ KD``) inside [0, 1], and NaN or infinity anywhere.

A field's class default is always accepted: it is the method's documented meaning (a
classification recipe's ``shots = 0`` means "unused", ``steps = 0`` "derived from the
epochs").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from metakd.engine.errors import UsageError

__all__ = ["RULES", "check_values"]

_AT_LEAST_ONE = ("ways", "shots", "queries", "test_queries", "test_tasks",
                 "meta_batch_size", "batch_size", "pre_batch_size", "train_batches",
                 "fs_tasks", "hard_task_batch", "image_size", "hidden_size", "input_size",
                 "teacher_inner_steps")
_NOT_NEGATIVE = ("steps", "epochs", "pre_epochs", "test_epochs", "inner_steps",
                 "test_inner_steps", "update_step", "test_update_step", "val_every", "val_tasks",
                 "fs_every", "val_holdout", "warmup_epochs", "weight_decay",
                 "pre_weight_decay", "kd_weight", "ce_weight", "fisher_rao_weight",
                 "sinkhorn_weight", "dkd_alpha", "dkd_beta", "inner_lr", "warmup_lr", "min_lr")
_POSITIVE = ("temperature", "temperature_init", "teacher_temperature", "max_seconds", "lr",
             "meta_lr", "meta_lr1", "meta_lr2", "pre_lr", "base_lr", "grad_clip",
             "clip_grad_value", "bn_eps", "lr_gamma", "gamma", "pre_lr_gamma", "pre_lr_step",
             "lr_step")
_UNIT = ("trade_lambda", "momentum", "bn_momentum")

RULES: dict[str, str] = {
    **{f: ">= 1" for f in _AT_LEAST_ONE},
    **{f: ">= 0" for f in _NOT_NEGATIVE},
    **{f: "> 0" for f in _POSITIVE},
    **{f: "in [0, 1]" for f in _UNIT},
}
"""``{field: rule}``: the rule each config field of that name follows, in every method."""


def _ok(value: float, rule: str) -> bool:
    if rule == ">= 1":
        return value >= 1
    if rule == ">= 0":
        return value >= 0
    if rule == "> 0":
        return value > 0
    return 0 <= value <= 1


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_values(cfg: Any) -> None:
    """Refuse a config whose values cannot run, in one line naming each bad field.

    Raises:
        UsageError: a value breaks its rule in :data:`RULES`, or a number is NaN/infinite.

    Example:
        >>> from metakd.recipes import MAMLConfig
        >>> check_values(MAMLConfig(shots=5))
        >>> check_values(MAMLConfig(shots=0, meta_lr=-1.0))
        Traceback (most recent call last):
        ...
        metakd.engine.errors.UsageError: shots=0 (--shots) must be >= 1; meta_lr=-1.0 (--meta-lr) must be > 0
    """
    problems = []
    defaults = type(cfg)()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value == getattr(defaults, f.name):
            continue
        if not math.isfinite(value):
            problems.append(f"{f.name}={value} ({_flag(f.name)}) must be a finite number")
            continue
        rule = RULES.get(f.name)
        if rule is not None and not _ok(value, rule):
            problems.append(f"{f.name}={value} ({_flag(f.name)}) must be {rule}")
    if problems:
        raise UsageError("; ".join(problems))
