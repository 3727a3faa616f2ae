"""W2S's confidence-weighted KD terms, AugConf and AdaptConf, as :class:`DistillLoss` terms.

Weak-to-strong distillation (Guo et al., "Vision Superalignment: Weak-to-Strong Generalization
for Vision Foundation Models", ``ggjy/vision_weak_to_strong``) mixes the KD term with the
student's cross-entropy on its *own* hard predictions, so that a strong student can overrule a
weak teacher where it is confident. GDA's few-shot code (``Few-shot Learning/utils``) builds
on both (its ``aug_conf`` and ``adapt_conf`` loss types). Each term returns two named parts:
``{name: weight · mix(KD), "self_ce": weight · mix(CE(z_s, argmax z_s))}``; add the GDA term
(:class:`metakd.distill.GDA`) next to it for GDA's version.

Defects of the original fixed here, each behind an option (see the spec, section 4.6):

- **G5** (AugConf): the mixing weight ``a(e) = θ · min(e / (r·E), 1)`` exceeds 1 with GDA's
  default θ = 8, which flips the sign of the KD part. ``clamp=True`` (default) keeps
  ``a`` in ``[0, 1]``; ``clamp=False`` reproduces the original.
- **G6** (both): the original calls its ``kd_loss``, which already adds a GDA term with
  default weights, then adds a second GDA term (in AdaptConf counted once per class and
  weighted by ``1 - a_i``). Here the GDA term is a separate term that runs once; the
  double count is not reproduced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakd.distill.losses import kd_loss, warmup_factor

__all__ = ["AdaptConf", "AugConf", "conf_ramp"]

Terms = dict[str, Tensor]


def conf_ramp(epoch: float | Tensor, epochs: int | None, fraction: float = 0.25) -> float | Tensor:
    """The W2S ramp ``min(epoch / (fraction · epochs), 1)`` (1 when ``epochs`` is ``None``).

    ``epoch`` counts from 1, as the training loops of Meta-Baseline and GDA do.

    Example:
        >>> conf_ramp(5, 100), conf_ramp(40, 100), conf_ramp(3, None)
        (0.2, 1.0, 1.0)
    """
    if epochs is None or fraction <= 0:
        return 1.0
    return warmup_factor(epoch, fraction * epochs)


class AugConf(nn.Module):
    """W2S AugConf: ``(1 - a)·T²·KL + a·CE(z_s, argmax z_s)``, ``a = θ · ramp(epoch)``.

    Args:
        temperature: the KD temperature ``T`` (GDA's effective value: 1).
        threshold: ``θ``, the final mixing weight (W2S: 0.25; GDA's command line: 8, which
            is only meaningful with ``clamp=False``, see the module docstring).
        epochs: the run's epochs ``E`` for the ramp over the first ``ramp_fraction · E``
            epochs; ``None``: no ramp (``a = θ`` from the start).
        ramp_fraction: the ramp's length as a fraction of ``E`` (0.25).
        weight: the outer weight (GDA's ``loss_weight``).
        clamp: keep ``a`` in ``[0, 1]`` (the fix of G5); ``False``: the original.
        name: the name of the KD part.

    Shapes:
        student and teacher logits ``[B, C]``; labels unused; ``epoch`` counts from 1.

    Example:
        >>> s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
        >>> parts = AugConf(threshold=0.25)(s, t, None, epoch=1)
        >>> sorted(parts), round(parts["self_ce"].item(), 4)
        (['kd', 'self_ce'], 0.0317)
    """

    def __init__(self, temperature: float = 1.0, threshold: float = 0.25, *,
                 epochs: int | None = None, ramp_fraction: float = 0.25, weight: float = 1.0,
                 clamp: bool = True, name: str = "kd") -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.temperature, self.threshold = float(temperature), float(threshold)
        self.epochs = None if epochs is None else int(epochs)
        self.ramp_fraction, self.weight = float(ramp_fraction), float(weight)
        self.clamp, self.name = bool(clamp), name

    def mix(self, epoch: float | Tensor) -> float | Tensor:
        """The mixing weight ``a`` at ``epoch`` (clamped to 1 when ``clamp``)."""
        a = self.threshold * conf_ramp(epoch, self.epochs, self.ramp_fraction)
        if self.clamp:
            a = torch.clamp(a, max=1.0) if isinstance(a, Tensor) else min(a, 1.0)
        return a

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None,
                epoch: float | Tensor = 1) -> Terms:
        """``{name: w·(1-a)·KD, "self_ce": w·a·CE(z_s, argmax z_s)}``."""
        a = self.mix(epoch)
        kd = kd_loss(student_logits, teacher_logits, self.temperature)
        self_ce = F.cross_entropy(student_logits, student_logits.detach().argmax(-1))
        return {self.name: self.weight * (1 - a) * kd, "self_ce": self.weight * a * self_ce}

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, threshold={self.threshold}, "
                f"epochs={self.epochs}, weight={self.weight}, clamp={self.clamp}")


class AdaptConf(nn.Module):
    """W2S AdaptConf: a per-sample mix of KD and the student's own hard labels.

    ``a_i = sg[σ((CE(z_s,i, argmax z_s,i) - CE(z_s,i, argmax z_t,i)) / θ)]`` (the softmax of
    the two cross-entropies at temperature ``θ``), times the ramp, and the parts
    ``mean_i (1 - a_i)·T²·KL_i`` and ``mean_i a_i·CE(z_s,i, argmax z_s,i)``, as GDA's
    few-shot ``adapt_conf`` computes them. ``a_i = 0.5`` where teacher and student agree.

    Args:
        temperature: the KD temperature ``T`` (GDA's effective value: 1).
        threshold: ``θ``, the temperature of the confidence softmax (GDA: 8).
        epochs: the run's epochs for the ramp of GDA's few-shot code; ``None``: no ramp
            (W2S's CIFAR ``AdaptConf``).
        ramp_fraction: the ramp's length as a fraction of ``epochs`` (0.25).
        weight: the outer weight.
        name: the name of the KD part.

    Example:
        >>> s, t = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 2.0], [0.0, 1.0]])
        >>> a = AdaptConf(threshold=1.0).confidence(s, t)
        >>> [round(v, 4) for v in a.tolist()]
        [0.1192, 0.5]
    """

    def __init__(self, temperature: float = 1.0, threshold: float = 8.0, *,
                 epochs: int | None = None, ramp_fraction: float = 0.25, weight: float = 1.0,
                 name: str = "kd") -> None:
        super().__init__()
        if temperature <= 0 or threshold <= 0:
            raise ValueError(f"temperature and threshold must be > 0, got {temperature}, "
                             f"{threshold}")
        self.temperature, self.threshold = float(temperature), float(threshold)
        self.epochs = None if epochs is None else int(epochs)
        self.ramp_fraction, self.weight, self.name = float(ramp_fraction), float(weight), name

    def confidence(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """``a_i`` before the ramp, ``[B]``, without gradient."""
        with torch.no_grad():
            own = F.cross_entropy(student_logits, student_logits.argmax(-1), reduction="none")
            other = F.cross_entropy(student_logits, teacher_logits.argmax(-1), reduction="none")
            return torch.sigmoid((own - other) / self.threshold)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None,
                epoch: float | Tensor = 1) -> Terms:
        """``{name: w·mean((1-a)·KL), "self_ce": w·mean(a·CE(z_s, argmax z_s))}``."""
        a = self.confidence(student_logits, teacher_logits)
        a = a * conf_ramp(epoch, self.epochs, self.ramp_fraction)
        kl = kd_loss(student_logits, teacher_logits, self.temperature, reduction="none")
        own = F.cross_entropy(student_logits, student_logits.detach().argmax(-1),
                              reduction="none")
        return {self.name: self.weight * ((1 - a) * kl).mean(),
                "self_ce": self.weight * (a * own).mean()}

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, threshold={self.threshold}, "
                f"epochs={self.epochs}, weight={self.weight}")
