"""PMAML (Zhang, Wang and Gai, ECAI 2020) end to end: a MAML student distilled from a MAML teacher.

The teacher is any MAML run folder (``metakd train maml --model conv4 ...``); the student is
meta-trained by :class:`metakd.distill.PMAML`. The defaults are the official code's
(``remiMZ/PMAML-ECAI20``): Conv-4 with a global-average-pooled head, one inner step of 0.4 on
the mean support cross-entropy, second order, 4 tasks per meta-batch, 60,000 tasks (15,000
meta-iterations), Adam 1e-3 with weight decay 5e-4, the learning rate times 0.1 after 15,000,
30,000 and 45,000 tasks, KD with T = 10 and λ = 0.9 in ``nn.KLDivLoss()``'s element mean, at
every meta-iteration, the teacher unadapted. None of the official code's defects is copied: the
teacher runs without a graph, is built with its own width, its run's episode shape and image
size are checked, validation and test episodes are seeded and drawn from all images, and a
resumed run continues its schedule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from metakd.recipes.fields import compose_doc
from metakd.recipes.loops import InnerLoop, MetaAdam, schedule
from metakd.recipes.maml import load_weights
from metakd.recipes.parts import Backbone, EpisodeData, EpisodeSplits, RunSettings, create_backbone
from metakd.recipes.registry import Parts, register

__all__ = ["PMAMLConfig", "meta_batch_interval"]

log = logging.getLogger(__name__)


@compose_doc
@dataclass
class PMAMLConfig(RunSettings, MetaAdam, InnerLoop, Backbone, EpisodeData):
    """A PMAML run: a MAML student with a frozen MAML teacher's outputs in its meta-objective.

    The student's data and MAML settings are the parts of :class:`metakd.recipes.MAMLConfig`
    (without ``compile``: the student runs eager); PMAML's defaults for the outer loop's
    ``weight_decay`` (5e-4) and ``lr_milestones`` (15,000, 30,000 and 45,000 tasks, PMAML's
    ``--schedule``).

    Attributes:
        teacher: the teacher's run folder (a ``metakd train maml`` run); required to train.
        teacher_checkpoint: ``"best"`` or ``"last"`` weights of the teacher's run.
        distill: the distillation loss preset (:func:`metakd.distill.preset`): ``"pmaml"``
            (the official weighting), ``"mdistiller_kd"``, ``"mdistiller_dkd"``,
            ``"gda_kd"``...
        temperature: KD temperature ``T`` (PMAML: 10).
        trade_lambda: λ, the distillation weight; the cross-entropy weighs ``1 − λ``.
        kd_reduction: ``"mean_elements"`` (PMAML's ``nn.KLDivLoss()``) or ``"batchmean"``.
        schedule: ``"every"`` (``pmaml_every``), ``"last"`` (``pmaml_last``: MAML plus one
            distillation step at the final meta-iteration), ``"none"`` (never: the same
            student, optimiser and episodes without distillation, the control; no teacher
            needed) or a comma-separated list of 0-based meta-iterations.
        inner_kd: ``None`` (official), ``"every"`` or ``"last"``: the distillation term in the
            inner loop's support loss too, at every inner step or at the last one.
        teacher_adapt: adapt the teacher on each support set (its own inner learning rate and
            steps, no graph) before taking its query logits; official: ``False``.
        teacher_inner_steps: the adapted teacher's steps (default: its run's
            ``test_inner_steps``).

    Example:
        >>> cfg = PMAMLConfig.paper("omniglot", ways=5, shots=1, teacher="runs/teacher")
        >>> cfg.model, cfg.inner_lr, cfg.meta_batch_size, cfg.steps, cfg.temperature
        ('conv4', 0.4, 4, 15000, 10.0)
    """

    teacher: str | None = None
    teacher_checkpoint: Literal["best", "last"] = "best"
    distill: str = "pmaml"
    temperature: float = 10.0
    trade_lambda: float = 0.9
    kd_reduction: Literal["mean_elements", "batchmean"] = "mean_elements"
    schedule: str = "every"
    inner_kd: Literal["every", "last"] | None = None
    teacher_adapt: bool = False
    teacher_inner_steps: int | None = None
    weight_decay: float = 5e-4
    lr_milestones: list[int] = field(default_factory=lambda: [15_000, 30_000, 45_000])
    out_dir: str = "runs/pmaml"

    @classmethod
    def paper(cls, dataset: str = "omniglot", ways: int = 5, shots: int = 1,
              **overrides: Any) -> PMAMLConfig:
        """The official code's settings for a data set and episode shape, then ``overrides``.

        Example:
            >>> PMAMLConfig.paper("miniimagenet", shots=5).test_queries
            15
        """
        base: dict[str, Any] = dict(
            model="conv4", inner_lr=0.4, inner_steps=1, test_inner_steps=1, first_order=False,
            inner_loss_reduction="mean", meta_lr=1e-3, meta_batch_size=4, steps=15_000,
            queries=15, test_queries=15, val_every=250, val_tasks=600, test_tasks=800,
            rotations=dataset.lower() == "omniglot", backend="auto",
        )
        return cls(dataset=dataset, ways=ways, shots=shots, **{**base, **overrides})


def _schedule(cfg: PMAMLConfig) -> str | list[int]:
    if cfg.schedule in ("every", "last"):
        return cfg.schedule
    if cfg.schedule == "none":
        return []
    try:
        return [int(s) for s in str(cfg.schedule).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"schedule={cfg.schedule!r}: use 'every', 'last' or a comma-separated "
                         "list of meta-iterations (e.g. '0,100,200')") from None


def _loss(cfg: PMAMLConfig) -> Any:
    from metakd.distill import preset

    if cfg.distill == "pmaml":
        return preset("pmaml", temperature=cfg.temperature, kd_weight=cfg.trade_lambda,
                      ce_weight=1.0 - cfg.trade_lambda, reduction=cfg.kd_reduction)
    return preset(cfg.distill)


def check(cfg: PMAMLConfig) -> None:
    """Refuse, in one line, a teacher that is missing or does not fit the student's episodes.

    The teacher's run must have the same number of ways (its classifier's outputs), shots,
    data set, image size and channels as the student's episodes.
    """
    from metakd.recipes.runs import read_config

    if not _schedule(cfg):
        return  # "none": nothing is distilled (inner KD follows the schedule), no teacher
    if not cfg.teacher:
        raise ValueError("PMAML needs a teacher: --teacher RUN_DIR, a MAML run folder (train "
                         "one with `metakd train maml --model conv4 ...`)")
    method, t = read_config(cfg.teacher)
    if method.name != "maml":
        raise ValueError(f"teacher {cfg.teacher} is a {method.name!r} run; PMAML distils a "
                         "MAML teacher (a `metakd train maml` run folder)")
    for name in ("ways", "shots"):
        if getattr(t, name) != getattr(cfg, name):
            raise ValueError(f"teacher {cfg.teacher} was trained {t.ways}-way {t.shots}-shot; "
                             f"the student's episodes are {cfg.ways}-way {cfg.shots}-shot")
    if t.dataset.lower() != cfg.dataset.lower():
        raise ValueError(f"teacher {cfg.teacher} was trained on {t.dataset}, the student "
                         f"trains on {cfg.dataset}")
    if (t.image_size or None) != (cfg.image_size or None):
        raise ValueError(f"teacher {cfg.teacher} takes {t.image_size or 'default'}-px images, "
                         f"the student {cfg.image_size or 'default'}-px")
    _schedule(cfg)


def build(cfg: PMAMLConfig) -> Parts:
    """Data, student, (lazily loaded) teacher, optimiser and schedule of a PMAML run.

    The teacher's run folder is read at the first training step only, so a PMAML run read
    back for evaluation (``metakd eval``, :func:`metakd.recipes.load_run`) does not need it.

    Example:
        >>> parts = build(PMAMLConfig(teacher="nowhere", meta_batch_size=2, test_tasks=2))
        >>> type(parts.learner).__name__, [n for n, _ in parts.learner.named_children()]
        ('PMAML', ['student'])
    """
    from metakd.distill import PMAML

    torch.manual_seed(cfg.seed)
    data = EpisodeSplits(cfg, device=cfg.device)
    model = create_backbone(cfg.model, data.channels, cfg.ways, **cfg.model_kwargs)

    def read_teacher() -> Any:  # PMAML calls it at the first step that distils
        from metakd.recipes.runs import load_run

        if not cfg.teacher:
            raise ValueError("PMAML needs a teacher to train: set teacher (--teacher RUN_DIR)")
        if cfg.teacher_checkpoint == "last":
            return load_run(cfg.teacher, checkpoint="last", device=cfg.device).learner
        return load_run(cfg.teacher, checkpoint="best", device=cfg.device).learner

    learner = PMAML(
        model, read_teacher, inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps,
        test_inner_steps=cfg.test_inner_steps, first_order=cfg.first_order, loss=_loss(cfg),
        schedule=_schedule(cfg), total_steps=cfg.steps, inner_kd=cfg.inner_kd,
        teacher_adapt=cfg.teacher_adapt, teacher_inner_steps=cfg.teacher_inner_steps,
        inner_loss_reduction=cfg.inner_loss_reduction, backend=cfg.backend,
        compile=False,  # the student runs eager (see PMAMLConfig)
    ).to(cfg.device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=cfg.meta_lr,
                                 weight_decay=cfg.weight_decay)
    episodes = data.streams(cfg.meta_batch_size)
    return Parts(learner=learner, model=model, train_data=episodes.train,
                 val_data=episodes.val, test_data=episodes.test, optimizer=optimizer,
                 scheduler=schedule(cfg, optimizer), clip_grad_value=cfg.clip_grad_value)


def meta_batch_interval(episodes: Any, batch_tasks: int) -> tuple[Any, int]:
    """PMAML's test interval: over the means of consecutive meta-batches of ``batch_tasks``.

    The official code reports the mean of the meta-batch means ± t_{0.975, n-1} SEM over the
    n meta-batches (its ``Mean_confidence_interval``); metakd's own interval is over episodes.

    Args:
        episodes: the per-episode result (:class:`metakd.engine.EvalResult` with ``values``,
            in test order, as :func:`metakd.engine.evaluate` and ``results.json`` keep them).
        batch_tasks: tasks per test meta-batch (the last one may be shorter, as tested).

    Returns:
        ``(over_batches, n)``: the :class:`metakd.engine.EvalResult` over the batch means
        and the number of meta-batches.

    Example:
        >>> from metakd.engine import mean_confidence_interval
        >>> res, n = meta_batch_interval(mean_confidence_interval([1.0, 0.0, 1.0, 1.0]), 2)
        >>> res.mean, n
        (0.75, 2)
    """
    from metakd.engine import mean_confidence_interval

    values = list(episodes.values or ())
    if not values:
        raise ValueError("the test result keeps no per-episode accuracies")
    means = [sum(chunk) / len(chunk) for chunk in
             (values[i:i + batch_tasks] for i in range(0, len(values), batch_tasks))]
    return mean_confidence_interval(means), len(means)


register("pmaml", PMAMLConfig, build,
         describe="PMAML (Zhang, Wang and Gai, ECAI 2020): a MAML student distilled from a "
                  "frozen MAML teacher (KD every / last meta-iteration, teacher adapted or not)",
         title="PMAML", step_name="meta-iterations", load_weights=load_weights, check=check)
