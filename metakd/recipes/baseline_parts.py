"""The pieces of the Classifier-Baseline and Meta-Baseline recipes (:mod:`metakd.recipes.baseline`).

The data of a run (:class:`~metakd.recipes.parts.EpisodeSplits`), the backbone, the loss of a config, the teachers (handed to the models as
loaders, read at the first training step), the few-shot monitor and the objectives ``fit`` calls. The configs, the
builds and the registration are in :mod:`metakd.recipes.baseline`.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from metakd._frozen import FrozenTeacher
from metakd.engine.callbacks import Callback
from metakd.recipes.parts import EpisodeSplits, create_backbone

__all__ = ["DISTILL", "FewShotMonitor", "make_loss"]

log = logging.getLogger("metakd.recipes.baseline")

DISTILL = ("kd", "dkd", "aug_conf", "adapt_conf")
"""The distillation terms of ``distill`` (``None``: no distillation)."""

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

def make_loss(cfg: Any, steps_per_epoch: int | None = None) -> Any:
    """The :class:`metakd.distill.DistillLoss` of a config: CE + ``distill`` (+ GDA).

    Example:
        >>> from metakd.recipes import MetaBaselineConfig
        >>> cfg = MetaBaselineConfig(teacher="t", distill="kd", gda=True)
        >>> [type(t).__name__ for t in make_loss(cfg).terms]
        ['KD', 'GDA']
    """
    from metakd.distill import DKD, GDA, KD, DistillLoss
    from metakd.distill.fewshot import AdaptConf, AugConf

    kind = cfg.distill or "kd"
    if kind not in DISTILL:
        raise ValueError(f"distill={cfg.distill!r} is unknown; use one of {DISTILL}")
    w, t = cfg.kd_weight, cfg.temperature
    terms: list[nn.Module] = []
    if kind == "kd":
        terms.append(KD(t, w))
    elif kind == "dkd":
        terms.append(DKD(cfg.dkd_alpha, cfg.dkd_beta, t, warmup=0.0, weight=w))
    elif kind == "aug_conf":
        terms.append(AugConf(t, 0.25 if cfg.threshold is None else cfg.threshold,
                             epochs=cfg.epochs, weight=w, clamp=cfg.conf_clamp))
    else:
        terms.append(AdaptConf(t, 8.0 if cfg.threshold is None else cfg.threshold,
                               epochs=cfg.epochs, weight=w))
    if cfg.gda:
        terms.append(GDA(cfg.fisher_rao_weight, cfg.sinkhorn_weight, guard=cfg.guard,
                         debias=cfg.debias, weight=w,
                         sinkhorn_reduction=cfg.sinkhorn_reduction))
    return DistillLoss(terms, ce_weight=1.0)


def _splits(cfg: Any) -> EpisodeSplits:
    """The run's data set (:class:`~metakd.recipes.parts.EpisodeSplits`), RGB images
    normalised with the ImageNet statistics."""
    data = EpisodeSplits(cfg, device=cfg.device, progress=False)
    data.normalize = IMAGENET_STATS if data.channels == 3 else None
    return data


def _model(cfg: Any, channels: int, num_classes: int) -> nn.Module:
    kwargs = dict(cfg.model_kwargs)
    if cfg.arch.startswith("conv"):
        kwargs.setdefault("bn_mode", "running")  # whole classification: running statistics
    return create_backbone(cfg.arch, channels, num_classes, **kwargs)


class _CentroidEval:
    """``eval_fn``: nearest-centroid episodes for a classifier; top-1 for base-image batches."""

    def __call__(self, learner: nn.Module, data: Any, *, device: Any = None,
                 progress: bool = False) -> Any:
        from metakd.data.tasks import FewShotSampler
        from metakd.engine import evaluate
        from metakd.meta.baseline import MetaBaseline

        if isinstance(data, FewShotSampler) and not hasattr(learner, "meta_loss"):
            return evaluate(MetaBaseline(learner, learn_temperature=False), data,
                            device=device, progress=progress)
        return evaluate(learner, data, device=device, progress=progress)


def _write_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


class FewShotMonitor(Callback):
    """Classifier-Baseline's periodic few-shot test: 1- and 5-shot centroid episodes.

    Every ``every`` steps it evaluates the classifier's encoder with
    :class:`metakd.meta.MetaBaseline` on fixed episode sets (``{shots: sampler}``), logs the
    results and appends them to ``fs_monitor.jsonl`` in the run folder (rank 0).
    """

    def __init__(self, episodes: Mapping[int, Any], every: int) -> None:
        self.episodes, self.every = dict(episodes), int(every)
        self.history: list[dict[str, Any]] = []
        self.path: Path | None = None
        self.rank = 0

    def on_fit_start(self, fit_state: Any) -> None:
        self.path = None if fit_state.out_dir is None else Path(fit_state.out_dir) / "fs_monitor.jsonl"
        self.rank = fit_state.rank

    def next_batch(self) -> Any:
        return None

    def on_step_end(self, step: int, batch: Any, loss: Any, metrics: Any,
                    learner: nn.Module) -> None:
        if self.every <= 0 or step % self.every or self.rank != 0:
            return
        record: dict[str, Any] = {"step": step}
        for shots, data in self.episodes.items():
            res = _CentroidEval()(learner, data)
            record[f"{shots}shot"] = res.as_dict()
            log.info("step %d: few-shot monitor %d-shot %s", step, shots, res)
        self.history.append({"step": step, **{k: v["accuracy"] for k, v in record.items()
                                              if isinstance(v, dict)}})
        if self.path is not None:
            _write_jsonl(self.path, record)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))


class _ClassifierLoss:
    """``fit``'s objective of stage 1: CE, or a Distiller whose teacher is read at first use."""

    def __init__(self, cfg: Any, steps_per_epoch: int, classes: int) -> None:
        self.cfg, self.steps_per_epoch, self.classes = cfg, steps_per_epoch, classes
        self.loss = make_loss(cfg) if cfg.teacher is not None else None
        self.teacher = None if self.loss is None else FrozenTeacher(
            functools.partial(_load_classifier_teacher, cfg, classes))
        self.distiller: Any = None

    def __call__(self, learner: nn.Module, batch: Any, step: int) -> Any:
        from metakd.distill import Distiller
        from metakd.engine import supervised_loss

        if self.loss is None or not learner.training:
            return supervised_loss(learner, batch, step)
        if self.distiller is None or self.distiller.student is not learner:
            self.distiller = Distiller(learner, self.teacher, self.loss,
                                       steps_per_epoch=self.steps_per_epoch)
        self.distiller.train(True)
        return self.distiller.training_loss(batch, step)


def _teacher_method(cfg: Any) -> str | None:
    """The method of a teacher run folder (``None`` for a weights file)."""
    from metakd.recipes.runs import read_config

    path = Path(str(cfg.teacher))
    if not path.is_dir():
        return None
    method, tcfg = read_config(path)
    if cfg.teacher_arch is not None and getattr(tcfg, "arch", None) not in (None, cfg.teacher_arch):
        raise ValueError(f"teacher {path} is a {tcfg.arch!r} run, not teacher_arch="
                         f"{cfg.teacher_arch!r}")
    return method.name


def _load_classifier_teacher(cfg: Any, classes: int) -> nn.Module:
    from metakd.recipes.teachers import load_teacher

    method = _teacher_method(cfg)
    if method is not None and method != "classifier_baseline":
        raise ValueError(f"teacher {cfg.teacher} is a {method!r} run: stage 1 distils a "
                         "classifier_baseline run (its base-class logits)")
    if method is None and cfg.teacher_arch is None and _original_teacher(cfg) is None:
        raise ValueError(f"teacher {cfg.teacher} is a weights file: give teacher_arch")
    teacher = load_teacher(str(cfg.teacher), arch=cfg.teacher_arch, num_classes=classes,
                           checkpoint=cfg.teacher_checkpoint)
    out = getattr(teacher, "out_features", classes)
    if out != classes:
        raise ValueError(f"teacher {cfg.teacher} has {out} classes, the base split {classes}")
    return teacher


def _which(name: str) -> Any:
    if name not in ("best", "last"):
        raise ValueError(f"checkpoint {name!r}: use best or last")
    return name


def _original_teacher(cfg: Any) -> Any:
    """The :class:`metakd.interop.Converted` of a teacher file an original project wrote
    (a Meta-Baseline's ``max-va.pth`` names its encoder and temperature), else ``None``."""
    from metakd import interop
    from metakd.engine import load_checkpoint

    path = Path(str(cfg.teacher))
    if not path.is_file():
        return None
    return interop.read(load_checkpoint(path), cfg.teacher_arch, source=str(path))


def _load_meta_teacher(cfg: Any) -> Any:
    """The teacher as a :class:`MetaBaseline` with its checkpoint's temperature."""
    from metakd.meta.baseline import MetaBaseline
    from metakd.recipes.runs import load_run
    from metakd.recipes.teachers import load_teacher

    method = _teacher_method(cfg)
    if method == "meta_baseline":
        teacher = cast(MetaBaseline, load_run(str(cfg.teacher),
                                              checkpoint=_which(cfg.teacher_checkpoint),
                                              device=cfg.device).learner)
        teacher.set_teacher(None)  # a teacher's own teacher (and loss) is not needed
        teacher.steps_per_epoch = None
    elif method in ("classifier_baseline", None):
        original = _original_teacher(cfg) if method is None else None
        if method is None and cfg.teacher_arch is None and original is None:
            raise ValueError(f"teacher {cfg.teacher} is a weights file: give teacher_arch")
        encoder = load_teacher(str(cfg.teacher), arch=cfg.teacher_arch,
                               checkpoint=cfg.teacher_checkpoint)
        extras = original.extras if original is not None else {}  # an original Meta-Baseline's
        teacher = MetaBaseline(encoder, temperature=float(extras.get("temperature") or 10.0),
                               metric=extras.get("metric", "cos"), learn_temperature=False)
    else:
        raise ValueError(f"teacher {cfg.teacher} is a {method!r} run; use a meta_baseline or "
                         "classifier_baseline run")
    if cfg.teacher_temperature is not None:
        teacher.temperature.data.fill_(float(cfg.teacher_temperature))
    return teacher  # frozen and moved to the student's device by its FrozenTeacher


def _checkpoint(folder: str | Path, which: str) -> Path | None:
    order = ("last.pt", "best.pt") if which == "last" else ("best.pt", "last.pt")
    for name in order:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


class _MetaLoss:
    """``fit``'s objective of stage 2: ``meta_loss``; a teacher is attached at the first
    training step, as a loader that the learner calls at its first use."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.loss = make_loss(cfg) if cfg.teacher is not None else None

    def __call__(self, learner: Any, batch: Any, step: int) -> Any:
        if self.loss is not None and learner.training and learner.teacher is None:
            learner.set_teacher(functools.partial(_load_meta_teacher, self.cfg), self.loss)
        return learner.meta_loss(batch, training=learner.training, step=step)


def _encoder_state(cfg: Any) -> dict[str, torch.Tensor] | None:
    from metakd.engine import load_checkpoint

    ckpt = _checkpoint(cfg.pretrained, cfg.pretrained_checkpoint) if cfg.pretrained else None
    if ckpt is None:
        log.info("no pre-trained encoder (pretrained=%s): weights must come from a checkpoint",
                 cfg.pretrained)
        return None
    state = load_checkpoint(ckpt)["model"]
    if "temperature" in state:  # a meta_baseline run: MetaBaseline(encoder) weights
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    return {k: v for k, v in state.items() if not k.startswith("head.")}


