"""The pieces of the CIFAR-100 distillation recipe (:mod:`metakd.recipes.cifar_kd`): the
epoch-based learning-rate schedule, the optimiser's parameter groups, the training objective
(the teacher read at the first step) and the top-1 evaluation.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from metakd.recipes.cifar_kd import CifarKDConfig

__all__ = ["EpochSchedule"]

log = logging.getLogger("metakd.recipes.cifar_kd")


class EpochSchedule:
    """The learning rate of the CIFAR recipes, a function of the epoch, stepped once per step.

    At step ``s`` (0-based) the epoch is ``e = s // steps_per_epoch`` and the rate is

    * step schedule (mdistiller): ``lr · gamma^#{m in milestones : e >= m}``;
    * cosine (timm's ``CosineLRScheduler`` as GDA uses it): ``warmup_lr +
      e · (lr - warmup_lr) / warmup_epochs`` for ``e < warmup_epochs``, then ``min_lr +
      (lr - min_lr) · (1 + cos(π e / epochs)) / 2``.

    Args:
        optimizer: every parameter group's ``lr`` is set.
        steps_per_epoch: batches per epoch.
        lr: the peak rate.
        epochs: the schedule's length in epochs (the cosine's period).
        milestones: epochs of the step decays.
        gamma: the step decays' factor.
        cosine: the cosine schedule (else the step schedule).
        warmup_epochs: epochs of the cosine schedule's linear warm-up.
        warmup_lr: the rate at epoch 0 of the warm-up.
        min_lr: the cosine's final rate.

    Example:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> s = EpochSchedule(opt, steps_per_epoch=2, lr=1.0, epochs=4, milestones=[1, 3])
        >>> [s.lr_at(i) for i in range(8)]
        [1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.010000000000000002, 0.010000000000000002]
    """

    def __init__(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, lr: float,
                 epochs: int, milestones: Sequence[int] = (), gamma: float = 0.1,
                 cosine: bool = False, warmup_epochs: int = 0, warmup_lr: float = 0.0, min_lr: float = 0.0) -> None:
        if steps_per_epoch < 1 or epochs < 1:
            raise ValueError(f"steps_per_epoch and epochs must be >= 1, got {steps_per_epoch}, "
                             f"{epochs}")
        self.optimizer = optimizer
        self.steps_per_epoch, self.epochs = int(steps_per_epoch), int(epochs)
        self.lr, self.gamma = float(lr), float(gamma)
        self.milestones = sorted(int(m) for m in milestones)
        self.cosine = bool(cosine)
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_lr, self.min_lr = float(warmup_lr), float(min_lr)
        self.step_count = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        """The learning rate used by the 0-based training step ``step``."""
        e = step // self.steps_per_epoch
        if not self.cosine:
            return self.lr * self.gamma ** sum(e >= m for m in self.milestones)
        if e < self.warmup_epochs:
            return self.warmup_lr + e * (self.lr - self.warmup_lr) / self.warmup_epochs
        if e >= self.epochs:
            return self.min_lr
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * e / self.epochs))

    def _apply(self) -> None:
        lr = self.lr_at(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        """Count one training step and set the rate of the next one."""
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The current rate of every parameter group."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """The steps counted (all the rest comes from the config)."""
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        self.step_count = int(state["step_count"])
        self._apply()


def _param_groups(model: nn.Module, weight_decay: float, decay_1d: bool) -> list[dict[str, Any]]:
    """One group with weight decay; without ``decay_1d``, biases and 1-d params apart (timm)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if decay_1d:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    flat = [p for n, p in params if p.ndim <= 1 or n.endswith(".bias")]
    rest = [p for n, p in params if not (p.ndim <= 1 or n.endswith(".bias"))]
    return [{"params": rest, "weight_decay": weight_decay},
            {"params": flat, "weight_decay": 0.0}]


def _loss_settings(cfg: CifarKDConfig) -> dict[str, Any]:
    """The overrides of the config's distillation preset (only those given)."""
    given = {"temperature": cfg.temperature, "kd_weight": cfg.kd_weight,
             "alpha": cfg.dkd_alpha, "beta": cfg.dkd_beta,
             "fisher_rao_weight": cfg.fisher_rao_weight, "sinkhorn_weight": cfg.sinkhorn_weight}
    if cfg.distill == "torchdistill_kd":
        if cfg.kd_weight is not None or cfg.dkd_alpha is not None or cfg.dkd_beta is not None:
            raise ValueError("distill='torchdistill_kd' weighs CE by alpha and KD by 1 - alpha: "
                             "give ce_weight (its alpha) only")
        given["alpha"], given["kd_weight"] = cfg.ce_weight, None
    else:
        given["ce_weight"] = cfg.ce_weight
    if cfg.distill == "mdistiller_dkd" and cfg.dkd_beta is None:
        from metakd.distill import dkd_beta

        given["beta"] = dkd_beta(cfg.teacher_arch, cfg.arch)
    if not (cfg.distill or "").endswith("dkd") and (cfg.dkd_alpha is not None
                                                    or cfg.dkd_beta is not None):
        raise ValueError(f"dkd_alpha and dkd_beta belong to a DKD preset, not {cfg.distill!r}")
    return {k: v for k, v in given.items() if v is not None}


@contextlib.contextmanager
def _autocast(enabled: bool, device: str) -> Iterator[None]:
    if enabled:
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            yield
    else:
        yield


def _load_teacher(cfg: CifarKDConfig, channels_last: bool) -> nn.Module:
    """The config's teacher (a run folder or a weights file), in the student's memory format."""
    from metakd.recipes.teachers import load_teacher

    teacher = load_teacher(str(cfg.teacher), arch=cfg.teacher_arch, num_classes=cfg.ways)
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher


class _TrainingLoss:
    """``fit``'s objective: the distillation loss (teacher read at the first step), or CE.

    The learner ``fit`` trains is the student itself, so its checkpoints are a plain
    ``state_dict`` of the student (a later run can use it as a teacher) and reading the run
    back (``metakd eval``) does not need the teacher.
    """

    def __init__(self, cfg: CifarKDConfig, steps_per_epoch: int, amp: bool,
                 channels_last: bool) -> None:
        self.cfg, self.steps_per_epoch = cfg, steps_per_epoch
        self.amp, self.channels_last = amp, channels_last
        self.distiller: Any = None
        self.loss: Any = None  # a metakd.distill.DistillLoss, or None: plain cross-entropy
        self.teacher: Any = None  # its FrozenTeacher: read at the first use, on the student's device
        if cfg.distill != "ce":
            from metakd.distill import FrozenTeacher, preset

            self.loss = preset(str(cfg.distill), **_loss_settings(cfg))  # bad settings fail early
            self.teacher = FrozenTeacher(functools.partial(_load_teacher, cfg, channels_last))

    def _distiller(self, student: nn.Module) -> Any:
        if self.distiller is None or self.distiller.student is not student:
            from metakd.distill import Distiller

            self.distiller = Distiller(student, self.teacher, self.loss,
                                       steps_per_epoch=self.steps_per_epoch)
        return self.distiller

    def __call__(self, learner: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, Any]:
        from metakd.engine import supervised_loss

        if self.loss is None:
            with _autocast(self.amp, self.cfg.device):
                return supervised_loss(learner, batch, step)
        d = self._distiller(learner)
        d.train(learner.training)  # the student's mode; the teacher stays in eval mode
        if not self.amp:
            return d.training_loss(batch, step)
        # bfloat16 forwards, float32 losses: the GDA moments (mean, std) and the Sinkhorn
        # iterations would otherwise run in bfloat16, which autocast does not promote.
        x, y = batch
        with _autocast(True, self.cfg.device):
            logits, teacher = learner(x), d.teacher_logits(x)
        logits = logits.float()
        terms = d.loss(logits, teacher.float(), y, d.epoch(step))
        with torch.no_grad():
            acc = (logits.argmax(-1) == y).double().mean()
        return sum(terms.values()), {"accuracy": float(acc),
                                     "terms": {k: float(v.detach()) for k, v in terms.items()}}


def _evaluate_top1(learner: nn.Module, data: Any, *, device: Any = None,
                   progress: bool = False) -> Any:
    """Top-1 of the student on labelled minibatches (float32; no teacher involved)."""
    from metakd.engine import evaluate

    return evaluate(learner, data, device=device, progress=progress)
