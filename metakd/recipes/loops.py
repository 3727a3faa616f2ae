"""The loop parts of the meta-learning configs: the inner loop and the outer loop's optimiser.

Like the data parts of :mod:`metakd.recipes.parts`, each is a small dataclass whose fields are
documented once and composed into the configs:

- :class:`InnerExecution`: the inner loop's support-loss scale and backend (MAML, PMAML, MTL);
- :class:`InnerLoop`: with MAML's learning rate, step counts and order (MAML, PMAML);
- :class:`OuterLoop`: tasks per meta-batch, the weight decay, the learning-rate schedule and
  the clipping of the meta-gradient (MAML, PMAML, MTL, Meta-LSTM), built by :func:`schedule`;
- :class:`MetaAdam`: with one Adam learning rate for everything meta-learned (MAML, PMAML,
  Meta-LSTM; MTL has one per parameter group).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

__all__ = ["InnerExecution", "InnerLoop", "MetaAdam", "OuterLoop", "schedule"]


@dataclass
class InnerExecution:
    """How the inner loop's support loss is scaled and which backend runs it.

    Attributes:
        inner_loss_reduction: ``"sum_over_k"`` (the MAML reference: the support cross-entropy
            summed and divided by ``K``, ``N`` times the mean) or ``"mean"``.
        backend: inner-loop backend of :class:`metakd.meta.MAMLWrapper` (``"auto"``, the
            default: ``"vmap"`` or ``"func"`` per meta-batch; ``"vmap"``, ``"func"``,
            ``"learn2learn"`` or ``"higher"``).
    """

    inner_loss_reduction: Literal["sum_over_k", "mean"] = "sum_over_k"
    # "auto" (the wrapper's default) chooses per meta-batch: vmap for MAML's Omniglot batches
    # (1 training query, meta-batch 32), func for PMAML's and MTL's (meta-batch 4, 15 or 5
    # queries), where vmap was 0.83x and 0.73x of a plain per-task loop on the 2-core CPU
    # (benchmarks.method_speed, 2026-12-06) and func matched it. Same accuracy to 2 decimals
    # on `metakd train maml --steps 30 --test-tasks 200` with either.
    backend: Literal["vmap", "func", "auto", "learn2learn", "higher"] = "auto"


@dataclass
class InnerLoop(InnerExecution):
    """MAML's inner loop: gradient steps of one learning rate on each task's support set.

    Attributes:
        inner_lr: ``alpha``, the inner loop's learning rate.
        inner_steps: inner steps in meta-training.
        test_inner_steps: inner steps at validation and test.
        first_order: first-order MAML (FOMAML): the meta-gradient ignores the inner steps'
            second-order terms.
    """

    inner_lr: float = 0.4
    inner_steps: int = 1
    test_inner_steps: int = 3
    first_order: bool = False


@dataclass
class OuterLoop:
    """The outer loop: meta-batches of tasks, Adam's weight decay, schedule and clipping.

    Attributes:
        meta_batch_size: tasks per meta-batch (meta-iteration).
        weight_decay: Adam's weight decay (the MAML reference: 0; PMAML: 5e-4).
        lr_schedule: ``"constant"`` (the MAML reference) or ``"cosine"``: the meta learning
            rate decays to 0 over ``steps`` or over ``max_seconds``, whichever ends first
            (:class:`metakd.engine.BudgetCosine`).
        lr_milestones: tasks (meta-iterations times ``meta_batch_size``) after which the meta
            learning rate is multiplied by ``lr_gamma`` (PMAML's ``--schedule``); empty: none.
        lr_gamma: the meta learning rate's factor at each decay (each of ``lr_milestones``;
            MTL: also every ``lr_step``).
        clip_grad_value: clip every meta-gradient entry to ``[-v, v]`` (the MAML reference
            uses 10 on miniImageNet), or ``None``.
    """

    meta_batch_size: int = 32
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_milestones: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    clip_grad_value: float | None = None


@dataclass
class MetaAdam(OuterLoop):
    """The outer loop with one Adam learning rate for every meta-learned parameter.

    Attributes:
        meta_lr: Adam's learning rate.
    """

    meta_lr: float = 1e-3


def schedule(cfg: Any, optimizer: torch.optim.Optimizer) -> Any:
    """The meta learning-rate scheduler of ``cfg`` (stepped once per meta-iteration), or None.

    ``cfg`` has the fields of :class:`OuterLoop` and ``steps`` and ``max_seconds``.
    ``lr_schedule="cosine"``: :class:`metakd.engine.BudgetCosine`; ``lr_milestones`` (in
    tasks): a step decay by ``lr_gamma`` after each; both at once is an error.

    Example:
        >>> from metakd.recipes import MAMLConfig
        >>> opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)])
        >>> schedule(MAMLConfig(meta_batch_size=4, lr_milestones=[8, 20]), opt).milestones
        Counter({2: 1, 5: 1})
    """
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule={cfg.lr_schedule!r} is unknown; use 'constant' or 'cosine'")
    if cfg.lr_schedule == "cosine" and cfg.lr_milestones:
        raise ValueError("lr_schedule='cosine' and lr_milestones are two schedules: pick one")
    if cfg.lr_schedule == "cosine":
        from metakd.engine import BudgetCosine

        return BudgetCosine(optimizer, cfg.steps, cfg.max_seconds)
    if cfg.lr_milestones:
        its = sorted({max(1, int(m) // cfg.meta_batch_size) for m in cfg.lr_milestones})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, its, gamma=cfg.lr_gamma)
    return None
