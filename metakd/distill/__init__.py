"""Knowledge distillation: loss terms, their published weightings, the Distiller, teachers.

Three layers, each usable alone:

- :mod:`metakd.distill.losses`: pure functions of ``[B, C]`` logits (KD, DKD, the GDA
  Fisher–Rao and Sinkhorn terms), teacher logits always stop-gradient, ``vmap``-able;
- terms (:class:`KD`, :class:`DKD`, :class:`GDA`) and :class:`DistillLoss` (the weighted
  cross-entropy plus terms, as named parts), with :func:`preset` giving the weightings of
  mdistiller, torchdistill, PMAML and GDA by name;
- :class:`Distiller` (a student, a frozen and unregistered teacher and a loss) for
  minibatches, :class:`DistillObjective` (the same loss as a meta-learner's query objective)
  for episodes, :class:`FrozenTeacher` (the holder that keeps every teacher frozen, loaded at
  first use and out of its student's parameters and checkpoints) and :func:`load_teacher`
  (state-dict files, mdistiller checkpoints; run folders are read by
  :func:`metakd.recipes.load_teacher`).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from metakd.distill import Distiller
    >>> d = Distiller(nn.Linear(4, 3), nn.Linear(4, 3), "mdistiller_dkd", steps_per_epoch=10)
    >>> loss, metrics = Distiller.training_loss(d, (torch.randn(8, 4), torch.arange(8) % 3))
    >>> sorted(metrics["terms"])
    ['ce', 'dkd']
"""

from metakd._frozen import FrozenTeacher
from metakd.distill.distiller import Distiller, DistillObjective, epoch_clock, freeze
from metakd.distill.fewshot import AdaptConf, AugConf
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
from metakd.distill.pmaml import PMAML, KDSchedule, PMAMLObjective, SupportDistill
from metakd.distill.teachers import from_mdistiller, load_teacher
from metakd.distill.terms import DKD, GDA, KD, PRESETS, DistillLoss, dkd_beta, preset

__all__ = [
    "DKD",
    "GDA",
    "KD",
    "PMAML",
    "PRESETS",
    "AdaptConf",
    "AugConf",
    "DistillLoss",
    "DistillObjective",
    "Distiller",
    "FrozenTeacher",
    "KDSchedule",
    "PMAMLObjective",
    "SupportDistill",
    "dkd_beta",
    "dkd_loss",
    "dkd_parts",
    "epoch_clock",
    "fisher_rao_loss",
    "fisher_rao_normal",
    "freeze",
    "from_mdistiller",
    "gda_loss",
    "kd_loss",
    "load_teacher",
    "logit_moments",
    "preset",
    "sinkhorn",
    "sinkhorn_cost",
    "sinkhorn_loss",
    "standardize",
    "warmup_factor",
]
