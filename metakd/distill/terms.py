"""Distillation terms and :class:`DistillLoss`: the losses of :mod:`metakd.distill.losses` as values.

A *term* is a small ``nn.Module`` holding one loss's settings and weight:

```text
term(student_logits [B, C], teacher_logits [B, C], labels [B], epoch) -> {name: 0-d tensor}
```

and :class:`DistillLoss` adds the student's own cross-entropy and sums nothing: it returns
every weighted part by name (``ce``, ``kd``, ``dkd``, ``fisher_rao``, ``sinkhorn``), so the
engine logs each one and descends on their sum. The same object serves whole minibatches
(:class:`metakd.distill.Distiller`) and episodes (:class:`metakd.distill.DistillObjective`,
called per task on the query logits, under ``vmap`` too): no loss is written twice.

``epoch`` is the schedule clock of DKD's warm-up, counted from 1 as in mdistiller: the
Distiller passes ``step // steps_per_epoch + 1``; the episodic objective passes the
meta-iteration (a 0-d tensor) the same way. Terms without a schedule ignore it.

:func:`preset` builds the weightings of the published codes by name (:data:`PRESETS`), so
that each paper's number is reproduced with its own convention:

| preset | total loss (and the code it reproduces) |
| --- | --- |
| ``ce`` | CE only (no distillation; how teachers and baselines are trained) |
| ``mdistiller_kd`` | 0.1·CE + 0.9·T²·KL_batchmean, T = 4 (mdistiller ``KD``) |
| ``mdistiller_dkd`` | 1.0·CE + min(epoch/20, 1)·(1.0·TCKD + 8.0·NCKD), T = 4 (mdistiller ``DKD``; its per-pair β: :func:`dkd_beta`) |
| ``torchdistill_kd`` | α·CE + (1−α)·T²·KL_batchmean, α = 0.9, T = 4 (torchdistill ``KDLoss``; ``alpha=None``: KL_batchmean alone, without T², as torchdistill does) |
| ``pmaml`` | 0.1·CE + 0.9·T²·KL_mean_elements, T = 10 (PMAML's ``nn.KLDivLoss()``: the KL divided by the classes too, an effective weight λT²/C) |
| ``gda_kd`` | 2.0·CE + 1.0·T²·KL_batchmean + 0.02·FR + 0.1·SK, T = 4 (the GDA ``train.sh`` command; λ_FR and λ_SK are *not* scaled by the KD weight) |
| ``gda_dkd`` | 2.0·CE + 1.0·DKD(α 1, β 1, T 4, no warm-up) + 0.1·SK (``train.sh`` with ``--distiller dkd``: its DKD settings are the argparse defaults, and the ``dkd`` distiller's Fisher–Rao part is commented out) |
| ``gda_fewshot_kd`` | CE + 1.0·(T²·KL_batchmean + 0.1·FR + 0.1·SK), T = 1 (GDA's few-shot ``kd`` loss with the values that effectively run in its meta stage) |

FR is the Fisher–Rao term, SK the Sinkhorn term (:func:`metakd.distill.gda_loss`).
The GDA presets use the library's fixes by default (``guard=True``, ``debias=True``); pass
``guard=False, debias=False`` for the official code's exact numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from metakd.distill.losses import dkd_parts, gda_loss, kd_loss, warmup_factor

__all__ = ["DKD", "GDA", "KD", "PRESETS", "DistillLoss", "dkd_beta", "preset"]

Terms = dict[str, Tensor]


class KD(nn.Module):
    """Hinton's knowledge distillation term: ``weight · [T²] · KL(teacher/T ‖ student/T)``.

    Args:
        temperature: the softening temperature ``T``.
        weight: the term's weight (mdistiller's ``KD_WEIGHT``, PMAML's λ).
        reduction: ``"batchmean"`` (mdistiller, GDA, torchdistill) or ``"mean_elements"``
            (PMAML's ``nn.KLDivLoss()``: also divided by the classes); see
            :func:`metakd.distill.kd_loss`.
        t_squared: multiply by ``T²`` (all codes except torchdistill's ``alpha=None``).
        name: the term's name in the loss dict.

    Example:
        >>> import torch
        >>> s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
        >>> KD(temperature=1.0)(s, t, torch.tensor([0]), 1)["kd"].item()
        0.4621...
    """

    def __init__(self, temperature: float = 4.0, weight: float = 1.0, *,
                 reduction: str = "batchmean", t_squared: bool = True, name: str = "kd") -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if reduction not in ("batchmean", "mean_elements"):
            raise ValueError(f"reduction={reduction!r}: a KD term takes 'batchmean' or "
                             "'mean_elements' (kd_loss itself also takes 'sum' and 'none')")
        self.temperature = float(temperature)
        self.weight = float(weight)
        self.reduction = reduction
        self.t_squared = bool(t_squared)
        self.name = name

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                epoch: float | Tensor = 1) -> Terms:
        """``{name: weighted KD}`` of ``[B, C]`` logits (labels and epoch unused)."""
        value = kd_loss(student_logits, teacher_logits, self.temperature,
                        reduction=self.reduction, t_squared=self.t_squared)
        return {self.name: self.weight * value}

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, weight={self.weight}, "
                f"reduction={self.reduction!r}, t_squared={self.t_squared}")


class DKD(nn.Module):
    """Decoupled KD (Zhao et al., CVPR 2022) as mdistiller defines it.

    ``weight · min(epoch / warmup, 1) · (α·TCKD + β·NCKD)``: the target-class part TCKD (the
    binary target / non-target distributions) and the non-target part NCKD (the distribution
    over the other classes), each ``T²``-scaled and averaged over the batch.

    Args:
        alpha: weight of TCKD (mdistiller 1.0).
        beta: weight of NCKD (mdistiller 8.0; 2.0 for ResNet-56→20, see :func:`dkd_beta`).
        temperature: ``T`` (mdistiller 4.0).
        warmup: epochs of the linear warm-up (mdistiller 20; 0: none).
        weight: an outer weight (the GDA code's ``kd_loss_weight``).
        name: the term's name.

    Example:
        >>> import torch
        >>> s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
        >>> dkd = DKD(warmup=20)
        >>> half = dkd(s, t, y, epoch=10)["dkd"] / dkd(s, t, y, epoch=40)["dkd"]
        >>> round(half.item(), 6)
        0.5
    """

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
                 warmup: float = 20.0, weight: float = 1.0, *, name: str = "dkd") -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.temperature = float(temperature)
        self.warmup = float(warmup)
        self.weight = float(weight)
        self.name = name

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                epoch: float | Tensor = 1) -> Terms:
        """``{name: weighted, warmed-up DKD}``; ``epoch`` counts from 1."""
        tckd, nckd = dkd_parts(student_logits, teacher_logits, labels, self.temperature)
        factor = warmup_factor(epoch, self.warmup)
        return {self.name: self.weight * factor * (self.alpha * tckd + self.beta * nckd)}

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, "
                f"warmup={self.warmup}, weight={self.weight}")


class GDA(nn.Module):
    """Global Distribution Alignment: the Fisher–Rao and Sinkhorn terms of the GDA code.

    Returns ``{"fisher_rao": λ_FR·FR, "sinkhorn": λ_SK·SK}`` (without ``"fisher_rao"`` when
    ``fisher_rao=False``). The Sinkhorn term is a *sum* over the batch (it grows with the batch
    size) and, under ``torch.distributed``, is computed on each rank's own slice; see
    :func:`metakd.distill.sinkhorn_loss`.

    Args:
        fisher_rao_weight: λ_FR (official constructor default 0.01).
        sinkhorn_weight: λ_SK (official constructor default 0.0008).
        epsilon: entropic regularisation of Sinkhorn (0.1).
        iters: Sinkhorn iterations (20).
        tau: temperature of the standardised logits' softmax (2).
        fisher_rao: include the Fisher–Rao term (the official ``dkd`` distiller does not).
        guard: numerical guards of the Fisher–Rao term (the official code has none: NaN
            gradients where student and teacher moments coincide).
        debias: the debiased Sinkhorn term, zero when student equals teacher (the official
            term is not).
        weight: an outer weight multiplying both (the GDA few-shot code's ``loss_weight``).
        sinkhorn_reduction: ``"sum"`` over the batch (the official term) or ``"mean"`` per
            row (one weight for every batch size).

    Example:
        >>> import torch
        >>> z = torch.randn(6, 5)
        >>> {k: round(v.item(), 6) for k, v in GDA()(z, z, None, 1).items()}
        {'fisher_rao': 0.0, 'sinkhorn': 0.0}
    """

    def __init__(self, fisher_rao_weight: float = 0.01, sinkhorn_weight: float = 0.0008, *,
                 epsilon: float = 0.1, iters: int = 20, tau: float = 2.0,
                 fisher_rao: bool = True, guard: bool = True, debias: bool = True,
                 weight: float = 1.0, sinkhorn_reduction: str = "sum") -> None:
        super().__init__()
        self.fisher_rao_weight = float(fisher_rao_weight)
        self.sinkhorn_weight = float(sinkhorn_weight)
        self.epsilon, self.iters, self.tau = float(epsilon), int(iters), float(tau)
        self.fisher_rao, self.guard, self.debias = bool(fisher_rao), bool(guard), bool(debias)
        self.weight = float(weight)
        if sinkhorn_reduction not in ("sum", "mean"):
            raise ValueError(f"GDA: sinkhorn_reduction={sinkhorn_reduction!r}; use 'sum' or "
                             "'mean'")
        self.sinkhorn_reduction = sinkhorn_reduction

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None,
                epoch: float | Tensor = 1) -> Terms:
        """The weighted GDA terms of ``[B, C]`` logits (labels and epoch unused)."""
        terms = gda_loss(
            student_logits, teacher_logits,
            fisher_rao_weight=self.weight * self.fisher_rao_weight,
            sinkhorn_weight=self.weight * self.sinkhorn_weight,
            epsilon=self.epsilon, iters=self.iters, tau=self.tau,
            fisher_rao=self.fisher_rao, guard=self.guard, debias=self.debias,
            sinkhorn_reduction=self.sinkhorn_reduction,
        )
        return dict(terms)

    def extra_repr(self) -> str:
        return (f"fisher_rao_weight={self.fisher_rao_weight}, "
                f"sinkhorn_weight={self.sinkhorn_weight}, epsilon={self.epsilon}, "
                f"iters={self.iters}, tau={self.tau}, fisher_rao={self.fisher_rao}, "
                f"guard={self.guard}, debias={self.debias}, weight={self.weight}, "
                f"sinkhorn_reduction={self.sinkhorn_reduction!r}")


class DistillLoss(nn.Module):
    """The student's weighted cross-entropy plus distillation terms, as named parts.

    ``loss(student_logits, teacher_logits, labels, epoch) -> {"ce": w·CE, **terms}``; the
    training loss is the sum of the values (:func:`metakd.meta.total`). With ``ce_weight=0``
    there is no ``"ce"`` part; with no terms it is plain cross-entropy.

    Args:
        terms: distillation terms (:class:`KD`, :class:`DKD`, :class:`GDA` or any module with
            the same call), in the order their parts are reported.
        ce_weight: weight of the cross-entropy on the labels.

    Raises:
        ValueError: two terms report the same name.

    Example:
        >>> import torch
        >>> loss = DistillLoss([KD(temperature=4.0, weight=0.9)], ce_weight=0.1)
        >>> s, t, y = torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1])
        >>> {k: round(v.item(), 4) for k, v in loss(s, t, y).items()}
        {'ce': 0.1099, 'kd': 0.0}
    """

    def __init__(self, terms: Sequence[nn.Module] = (), ce_weight: float = 1.0) -> None:
        super().__init__()
        self.terms = nn.ModuleList(terms)
        self.ce_weight = float(ce_weight)

    @property
    def needs_teacher(self) -> bool:
        """Whether any term reads the teacher's logits (False for plain CE)."""
        return len(self.terms) > 0

    def forward(self, student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor,
                epoch: float | Tensor = 1) -> Terms:
        """Named, weighted parts of the loss of ``[B, C]`` student logits."""
        out: Terms = {}
        if self.ce_weight != 0 or not self.terms:
            out["ce"] = self.ce_weight * F.cross_entropy(student_logits, labels)
        if self.terms and teacher_logits is None:
            raise ValueError("this DistillLoss has distillation terms: it needs teacher logits")
        for term in self.terms:
            for name, value in term(student_logits, teacher_logits, labels, epoch).items():
                if name in out:
                    raise ValueError(f"two parts of the loss are named {name!r}: give the "
                                     "terms distinct names")
                out[name] = value
        return out

    def extra_repr(self) -> str:
        return f"ce_weight={self.ce_weight}"


PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "ce": ("cross-entropy only, no distillation", {"ce_weight": 1.0}),
    "mdistiller_kd": (
        "mdistiller KD: 0.1 CE + 0.9 T^2 KL_batchmean, T = 4",
        {"ce_weight": 0.1, "kd_weight": 0.9, "temperature": 4.0},
    ),
    "mdistiller_dkd": (
        "mdistiller DKD: CE + min(epoch/20, 1) (TCKD + 8 NCKD), T = 4",
        {"ce_weight": 1.0, "kd_weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0,
         "warmup": 20.0},
    ),
    "torchdistill_kd": (
        "torchdistill KDLoss: alpha CE + (1 - alpha) T^2 KL_batchmean, alpha = 0.9, T = 4 "
        "(alpha=None: KL_batchmean alone, no T^2)",
        {"alpha": 0.9, "temperature": 4.0},
    ),
    "pmaml": (
        "PMAML: (1 - lambda) CE + lambda T^2 KL_mean_elements, lambda = 0.9, T = 10",
        {"ce_weight": 0.1, "kd_weight": 0.9, "temperature": 10.0, "reduction": "mean_elements"},
    ),
    "gda_kd": (
        "GDA train.sh: 2 CE + T^2 KL_batchmean + 0.02 Fisher-Rao + 0.1 Sinkhorn, T = 4",
        {"ce_weight": 2.0, "kd_weight": 1.0, "temperature": 4.0, "fisher_rao_weight": 0.02,
         "sinkhorn_weight": 0.1},
    ),
    "gda_dkd": (
        "GDA train.sh with --distiller dkd: 2 CE + DKD(alpha 1, beta 1, T 4) + 0.1 Sinkhorn "
        "(no Fisher-Rao, no warm-up)",
        {"ce_weight": 2.0, "kd_weight": 1.0, "alpha": 1.0, "beta": 1.0, "temperature": 4.0,
         "warmup": 0.0, "sinkhorn_weight": 0.1, "fisher_rao": False},
    ),
    "gda_fewshot_kd": (
        "GDA few-shot kd: CE + (T^2 KL_batchmean + 0.1 Fisher-Rao + 0.1 Sinkhorn), T = 1",
        {"ce_weight": 1.0, "kd_weight": 1.0, "temperature": 1.0, "fisher_rao_weight": 0.1,
         "sinkhorn_weight": 0.1},
    ),
}
"""The presets of :func:`preset`: ``name -> (description, default settings)``."""

_GDA_KEYS = ("fisher_rao_weight", "sinkhorn_weight", "epsilon", "iters", "tau", "fisher_rao",
             "guard", "debias", "sinkhorn_reduction")
_KD_KEYS = ("ce_weight", "kd_weight", "temperature", "reduction", "t_squared")
_DKD_KEYS = ("ce_weight", "kd_weight", "temperature", "alpha", "beta", "warmup")
_TORCHDISTILL_KEYS = ("alpha", "temperature", "reduction", "t_squared")


def _accepted(name: str) -> tuple[str, ...]:
    """The settings preset ``name`` applies: its own loss's, and the GDA term's."""
    if name == "ce":
        return ("ce_weight",)
    own: tuple[str, ...]
    if name == "torchdistill_kd":
        own = _TORCHDISTILL_KEYS
    elif name.endswith("dkd"):
        own = _DKD_KEYS
    else:
        own = _KD_KEYS
    return own + _GDA_KEYS


def _why(name: str, refused: list[str]) -> str:
    """A short reason for the settings a preset refuses (empty when the list says it all)."""
    known = {k for p in PRESETS for k in _accepted(p)}
    reasons = []
    if any(k not in known for k in refused):
        reasons.append("unknown settings")
    if name == "torchdistill_kd" and {"beta", "warmup"} & set(refused):
        reasons.append("beta and warmup belong to DKD")
    elif name != "ce" and not name.endswith("dkd") and {"alpha", "beta", "warmup"} & set(refused):
        reasons.append("alpha, beta and warmup belong to DKD")
    if name == "torchdistill_kd" and {"ce_weight", "kd_weight"} & set(refused):
        reasons.append("its CE weight is alpha and its KD weight 1 - alpha")
    if "fisher_rao_weight" in refused and name != "ce":
        reasons.append("fisher_rao_weight needs fisher_rao=True")
    return f" ({'; '.join(reasons)})" if reasons else ""


def preset(name: str, **overrides: Any) -> DistillLoss:
    """A :class:`DistillLoss` with a published code's weighting (see :data:`PRESETS`).

    Every setting given is applied; a setting the preset would not use is refused.

    Args:
        name: a key of :data:`PRESETS`.
        **overrides: settings to change. ``ce`` takes ``ce_weight`` alone. The KD presets
            (``mdistiller_kd``, ``pmaml``, ``gda_kd``, ``gda_fewshot_kd``) take ``ce_weight``,
            ``kd_weight``, ``temperature``, ``reduction`` and ``t_squared``; the DKD presets
            (``mdistiller_dkd``, ``gda_dkd``) ``ce_weight``, ``kd_weight`` (the DKD term's
            weight), ``temperature``, ``alpha``, ``beta`` and ``warmup``;
            ``torchdistill_kd`` ``alpha`` (its CE weight; the KD weight is ``1 - alpha``),
            ``temperature``, ``reduction`` and ``t_squared``. All but ``ce`` also take the
            GDA settings ``fisher_rao_weight``, ``sinkhorn_weight``, ``epsilon``, ``iters``,
            ``tau``, ``fisher_rao``, ``guard`` and ``debias``; giving one to a preset without
            the GDA term adds the term, and ``fisher_rao_weight`` needs the Fisher–Rao part
            on (``fisher_rao=True`` for ``gda_dkd``).

    Raises:
        ValueError: an unknown preset, or a setting the preset does not take (the one-line
            message names the preset, the setting and the settings it takes).

    Example:
        >>> preset("mdistiller_kd")
        DistillLoss(
          ce_weight=0.1
          (terms): ModuleList(
            (0): KD(temperature=4.0, weight=0.9, reduction='batchmean', t_squared=True)
          )
        )
        >>> [type(t).__name__ for t in preset("gda_dkd").terms]
        ['DKD', 'GDA']
        >>> preset("torchdistill_kd", alpha=None).terms[0].t_squared
        False
        >>> preset("torchdistill_kd", beta=0.3)
        Traceback (most recent call last):
        ...
        ValueError: preset 'torchdistill_kd' does not use beta (...); it takes alpha, temperature, ...
    """
    if name not in PRESETS:
        raise ValueError(f"unknown distillation preset {name!r}; known: {', '.join(PRESETS)}")
    accepted = _accepted(name)
    s = {**PRESETS[name][1], **overrides}
    refused = [k for k in overrides if k not in accepted]
    if "fisher_rao_weight" in overrides and not s.get("fisher_rao", True):
        refused.append("fisher_rao_weight")
    if refused:
        raise ValueError(f"preset {name!r} does not use {', '.join(refused)}"
                         f"{_why(name, refused)}; it takes {', '.join(accepted)}")
    gda_given = any(k in s for k in _GDA_KEYS)
    gda = GDA(**{k: s[k] for k in _GDA_KEYS if k in s}) if gda_given else None
    temperature = float(s.get("temperature", 4.0))
    reduction = str(s.get("reduction", "batchmean"))
    terms: list[nn.Module] = []
    if name == "ce":
        return DistillLoss([], ce_weight=float(s["ce_weight"]))
    if name == "torchdistill_kd":
        alpha = s["alpha"]
        if alpha is None or alpha == 0:  # torchdistill: the KL alone, without T^2
            terms.append(KD(temperature, 1.0, reduction=reduction,
                            t_squared=bool(s.get("t_squared", False))))
            ce_weight = 0.0
        else:
            terms.append(KD(temperature, 1.0 - float(alpha), reduction=reduction,
                            t_squared=bool(s.get("t_squared", True))))
            ce_weight = float(alpha)
    elif name.endswith("dkd"):
        terms.append(DKD(float(s["alpha"]), float(s["beta"]), temperature, float(s["warmup"]),
                         float(s["kd_weight"])))
        ce_weight = float(s["ce_weight"])
    else:
        terms.append(KD(temperature, float(s["kd_weight"]), reduction=reduction,
                        t_squared=bool(s.get("t_squared", True))))
        ce_weight = float(s["ce_weight"])
    if gda is not None:
        terms.append(gda)
    return DistillLoss(terms, ce_weight=ce_weight)


#: mdistiller's per-pair DKD β on CIFAR-100 (``configs/cifar100/dkd/*.yaml``); default 8.0.
DKD_BETAS: Mapping[tuple[str, str], float] = {
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("resnet32x4", "resnet8x4"): 8.0,
    ("vgg13", "vgg8"): 6.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
    ("vgg13", "mobilenetv2"): 6.0,
}


def dkd_beta(teacher: str, student: str) -> float:
    """mdistiller's DKD β for a CIFAR-100 teacher → student pair (8.0 when it has none).

    Example:
        >>> dkd_beta("resnet56", "resnet20"), dkd_beta("resnet32x4", "resnet8x4")
        (2.0, 8.0)
    """
    return DKD_BETAS.get((teacher.lower(), student.lower()), 8.0)
