"""Classifier-Baseline and Meta-Baseline (Chen et al., ICCV 2021), plain or distilled (GDA, W2S).

Two registered methods, the two stages of ``yinboc/few-shot-meta-baseline`` as GDA's
``Few-shot Learning`` code runs them:

``classifier_baseline``
    Whole classification of the base (meta-training) classes with a linear head; validation
    on held-out base images (the Gidaris pickles' ``train_phase_val``, or ``val_holdout``
    images of each class); every ``fs_every`` epochs a few-shot monitor (1- and 5-shot
    nearest-centroid episodes of the test split, logged to ``fs_monitor.jsonl``); the test is
    cosine nearest-centroid on episodes. With ``teacher`` (a ``classifier_baseline`` run
    folder or a weights file) the loss distils the teacher's base-class logits.
``meta_baseline``
    Episodic fine-tuning of a ``classifier_baseline`` run's encoder (``pretrained``) with
    :class:`metakd.meta.MetaBaseline`: cosine to the support centroids, learnable
    temperature (10 at first), support and query in one forward, optional frozen batch norm.
    With ``teacher`` (a ``meta_baseline`` run, its learned temperature loaded; or a
    ``classifier_baseline`` run, temperature 10) the teacher's episode logits from its own
    centroids are distilled.

Distillation (``distill``): ``kd`` (``T²·KL``), ``dkd``, ``aug_conf`` or ``adapt_conf``
(W2S), each weighted by ``kd_weight`` on top of the cross-entropy, plus the GDA term when
``gda`` (``fisher_rao_weight``, ``sinkhorn_weight``, scaled by ``kd_weight`` as GDA's
few-shot code does; ``sinkhorn_reduction="mean"`` averages the Sinkhorn term over the rows
instead of summing it). The defaults are the values that effectively run in GDA's code (its
command-line defaults override its YAML files): ``T = 1``, λ_FR 0.1, λ_SK 0.0008 in stage 1
and 0.1 in stage 2, DKD α 1 / β 0.5; see ``docs/concepts/baseline.md`` for what is fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from metakd.recipes.baseline_parts import (
    DISTILL,
    FewShotMonitor,
    _CentroidEval,
    _checkpoint,
    _ClassifierLoss,
    _encoder_state,
    _MetaLoss,
    _model,
    _splits,
    make_loss,
)
from metakd.recipes.fields import compose_doc
from metakd.recipes.parts import SupervisedData, supervised_augmentation, supervised_batches
from metakd.recipes.registry import Parts, register

__all__ = ["DISTILL", "ClassifierBaselineConfig", "FewShotMonitor", "MetaBaselineConfig",
           "build_classifier", "build_meta", "check_meta", "make_loss"]

log = logging.getLogger(__name__)

# Meta-Baseline's configs (spec §3.2-3.3) and GDA's effective loss values (§4.5).
_CLS_PAPER: dict[str, dict[str, Any]] = {
    "miniimagenet": dict(arch="resnet12", image_size=80, batch_size=128, epochs=100, lr=0.1,
                         weight_decay=5e-4, milestones=[90], augment="resize",
                         val_split="train_phase_val"),
    "tieredimagenet": dict(arch="resnet12", image_size=80, batch_size=512, epochs=120, lr=0.1,
                           weight_decay=5e-4, milestones=[40, 80], augment="resize"),
    # the bundled Omniglot on a CPU: Conv-4 with running batch norm, 28 px, rotations
    "omniglot": dict(arch="conv4", image_size=None, batch_size=64, epochs=10, lr=0.05,
                     milestones=[8], augment=None, val_holdout=5, fs_every=5, fs_tasks=200,
                     test_tasks=600),
}
_META_PAPER: dict[str, dict[str, Any]] = {
    "miniimagenet": dict(arch="resnet12", image_size=80, train_batches=200, epochs=20),
    "tieredimagenet": dict(arch="resnet12", image_size=80, train_batches=10, epochs=20),
    "omniglot": dict(arch="conv4", image_size=None, train_batches=100, epochs=5, lr=1e-3,
                     val_tasks=0, test_tasks=600),
}


@dataclass
class _BaselineBase:
    """Fields shared by both stages.

    Attributes:
        dataset: miniimagenet, tieredimagenet or omniglot (root None: the bundled copy).
        root: the data set's folder (the Gidaris pickles for miniImageNet's train_phase_val).
        ways: the test episodes' N.
        shots: the test episodes' K.
        test_queries: query images per class of test episodes (15).
        test_tasks: test episodes.
        steps: training steps; 0: derived from the epochs.
        val_every: validation period in steps; 0: once per epoch.
        seed: seeds the weights and the data streams.
        out_dir: run folder.
        max_seconds: training time budget.
        device: cpu or cuda.
        arch: the encoder (metakd.nn name: resnet12, resnet12_bottle, resnet18_bottle,
            resnet36_bottle, conv4 ...).
        model_kwargs: backbone options (KEY=VALUE), e.g. hidden=32 for conv4.
        image_size: side of the images (80 for the ImageNet variants; None: the data set's).
        rotations: Omniglot rotation classes.
        test_seed: seed of the test episodes; None: seed + 2.
        epochs: training epochs.
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay (on every parameter, the temperature too).
        teacher: a run folder (or weights file with teacher_arch) to distil from; None: no
            distillation.
        teacher_arch: the teacher's architecture (checked against a run folder's).
        teacher_checkpoint: best or last, for a teacher run folder.
        distill: the distillation term: kd, dkd, aug_conf or adapt_conf; None: kd with a
            teacher.
        gda: add GDA's Fisher-Rao and Sinkhorn terms.
        kd_weight: weight of the distillation (GDA's loss_weight; 1).
        temperature: KD temperature (GDA's effective value 1).
        fisher_rao_weight: GDA's lambda_FR (0.1).
        sinkhorn_weight: GDA's lambda_SK (stage 1: 0.0008; stage 2: 0.1).
        threshold: W2S theta; None: 0.25 for aug_conf, 8 for adapt_conf.
        dkd_alpha: DKD's TCKD weight (1).
        dkd_beta: DKD's NCKD weight (0.5).
        conf_clamp: keep AugConf's mixing weight in [0, 1] (fixes GDA's sign flip at
            theta 8).
        guard: numerical guards of the Fisher-Rao term (the original has none).
        debias: the debiased Sinkhorn term (zero when student equals teacher).
        sinkhorn_reduction: sum (GDA's code: the Sinkhorn term summed over the batch's rows,
            so it grows with the minibatch in stage 1 and with the queries of a step's
            episodes in stage 2, 300 rows on miniImageNet) or mean (averaged per row: one
            sinkhorn_weight fits every batch size).
    """

    dataset: str = "miniimagenet"
    root: str | None = None
    ways: int = 5
    shots: int = 1
    test_queries: int = 15
    test_tasks: int = 2000
    steps: int = 0
    val_every: int = 0
    seed: int = 0
    out_dir: str = "runs/baseline"
    max_seconds: float | None = None
    device: str = "cpu"
    arch: str = "resnet12"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = 80
    rotations: bool = False
    test_seed: int | None = None
    epochs: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    teacher: str | None = None
    teacher_arch: str | None = None
    teacher_checkpoint: str = "best"
    distill: Literal["kd", "dkd", "aug_conf", "adapt_conf"] | None = None
    gda: bool = False
    kd_weight: float = 1.0
    temperature: float = 1.0
    fisher_rao_weight: float = 0.1
    sinkhorn_weight: float = 0.0008
    threshold: float | None = None
    dkd_alpha: float = 1.0
    dkd_beta: float = 0.5
    conf_clamp: bool = True
    guard: bool = True
    debias: bool = True
    sinkhorn_reduction: Literal["sum", "mean"] = "sum"

    @classmethod
    def _paper(cls, table: dict[str, dict[str, Any]], dataset: str, ways: int, shots: int,
               overrides: dict[str, Any]) -> Any:
        key = dataset.lower().replace("-", "").replace("_", "")
        base = dict(table.get(key, table["miniimagenet"]))
        if key == "omniglot":
            base.update(rotations=True, model_kwargs={"bn_mode": "running"})
        return cls(dataset=dataset, ways=ways, shots=shots, **{**base, **overrides})




@compose_doc
@dataclass
class ClassifierBaselineConfig(SupervisedData, _BaselineBase):
    """Classifier-Baseline: whole classification of the base classes, centroid test (Chen et al.).

    The minibatches are :class:`~metakd.recipes.parts.SupervisedData`'s (128 images;
    tieredImageNet 512).

    Attributes:
        milestones: epochs after which the learning rate is multiplied by 0.1.
        fs_every: epochs between few-shot monitors (1- and 5-shot episodes of the test
            split; 0: none; the original: 5).
        fs_tasks: episodes of each few-shot monitor (800: 200 batches of 4).
    """

    out_dir: str = "runs/classifier_baseline"
    milestones: list[int] = field(default_factory=lambda: [90])
    fs_every: int = 5
    fs_tasks: int = 800

    @classmethod
    def paper(cls, dataset: str = "miniimagenet", ways: int = 5, shots: int = 1,
              **overrides: Any) -> ClassifierBaselineConfig:
        """Meta-Baseline's ``train_classifier_*.yaml`` (Omniglot: small CPU settings).

        Example:
            >>> cfg = ClassifierBaselineConfig.paper("miniimagenet")
            >>> cfg.arch, cfg.image_size, cfg.batch_size, cfg.epochs, cfg.milestones
            ('resnet12', 80, 128, 100, [90])
        """
        return cls._paper(_CLS_PAPER, dataset, ways, shots, overrides)


@compose_doc
@dataclass
class MetaBaselineConfig(_BaselineBase):
    """Meta-Baseline: episodic fine-tuning with the cosine centroid classifier (Chen et al.).

    Attributes:
        pretrained: the classifier_baseline run folder whose encoder is fine-tuned.
        pretrained_checkpoint: last (Meta-Baseline's epoch-last) or best (GDA's max-va).
        queries: query images per class in training (15).
        meta_batch_size: episodes per step (4).
        train_batches: steps per epoch (200; tieredImageNet 10).
        val_tasks: validation episodes of the val split per epoch (800; 0: none).
        temperature_init: the student's initial temperature tau (10).
        learn_temperature: learn tau.
        teacher_temperature: the teacher's tau; None: its checkpoint's (a classifier
            teacher: 10). The original leaves it at 10.
        freeze_bn: batch norm in eval mode while training (the ImageNet-800 recipe).
    """

    out_dir: str = "runs/meta_baseline"
    lr: float = 1e-3
    epochs: int = 20
    sinkhorn_weight: float = 0.1
    pretrained: str | None = None
    pretrained_checkpoint: str = "last"
    queries: int = 15
    meta_batch_size: int = 4
    train_batches: int = 200
    val_tasks: int = 800
    temperature_init: float = 10.0
    learn_temperature: bool = True
    teacher_temperature: float | None = None
    freeze_bn: bool = False

    @classmethod
    def paper(cls, dataset: str = "miniimagenet", ways: int = 5, shots: int = 1,
              **overrides: Any) -> MetaBaselineConfig:
        """Meta-Baseline's ``train_meta_*.yaml`` (Omniglot: small CPU settings).

        Example:
            >>> cfg = MetaBaselineConfig.paper("tieredimagenet", pretrained="runs/cb")
            >>> cfg.lr, cfg.train_batches, cfg.epochs, cfg.meta_batch_size, cfg.sinkhorn_weight
            (0.001, 10, 20, 4, 0.1)
        """
        return cls._paper(_META_PAPER, dataset, ways, shots, overrides)


def build_classifier(cfg: ClassifierBaselineConfig) -> Parts:
    """Stage 1: data, classifier, SGD with step decay, validation, monitor, centroid test.

    Example:
        >>> cfg = ClassifierBaselineConfig.paper("omniglot", rotations=False, test_tasks=4)
        >>> parts = build_classifier(cfg)
        >>> parts.model.out_features, parts.steps, len(parts.test_data)
        (136, 310, 1)
    """
    data = _splits(cfg)
    arrays = data.train.arrays(data.size, progress=False)
    val_arrays = None
    if cfg.val_split:
        val_arrays = data.open(cfg.val_split).arrays(data.size, progress=False)
    elif cfg.val_holdout > 0:
        keep = int(arrays.class_counts.min()) - cfg.val_holdout
        arrays, val_arrays = arrays.split_items(keep, seed=cfg.seed)
    train, val = supervised_batches(arrays, cfg.batch_size, seed=cfg.seed, device=cfg.device,
                                    augment=supervised_augmentation(cfg.augment, data.size),
                                    normalize=data.normalize, val=val_arrays)
    torch.manual_seed(cfg.seed)
    model = _model(cfg, data.channels, train.num_classes).to(cfg.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    per_epoch = len(train)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, [m * per_epoch for m in cfg.milestones], gamma=0.1)
    callbacks: list[Any] = []
    if cfg.fs_every > 0:
        monitor = {k: data.episodes("test", k, cfg.test_queries, cfg.fs_tasks, 0, 4)
                   for k in (1, 5)}
        callbacks.append(FewShotMonitor(monitor, cfg.fs_every * per_epoch))
    if cfg.val_every == 0:
        cfg.val_every = per_epoch
    return Parts(learner=model, model=model, train_data=train, optimizer=optimizer,
                 val_data=val, test_data=data.test(4), scheduler=scheduler,
                 callbacks=callbacks, loss_fn=_ClassifierLoss(cfg, per_epoch, train.num_classes),
                 eval_fn=_CentroidEval(),
                 steps=cfg.steps if cfg.steps > 0 else cfg.epochs * per_epoch)


def check_meta(cfg: MetaBaselineConfig) -> None:
    """Refuse, in one line, a missing or mismatched ``pretrained`` run or a bad setting.

    Example:
        >>> check_meta(MetaBaselineConfig())
        Traceback (most recent call last):
        ...
        ValueError: meta_baseline needs pretrained=RUN_DIR, a classifier_baseline run folder
    """
    from metakd.recipes.runs import read_config

    if cfg.pretrained_checkpoint not in ("last", "best"):
        raise ValueError(f"pretrained_checkpoint={cfg.pretrained_checkpoint!r}: last or best")
    if cfg.distill is not None and cfg.distill not in DISTILL:
        raise ValueError(f"distill={cfg.distill!r} is unknown; use one of {DISTILL}")
    if cfg.teacher is None and (cfg.distill is not None or cfg.gda):
        raise ValueError("distill and gda need a teacher (--teacher RUN_DIR)")
    if not cfg.pretrained:
        raise ValueError("meta_baseline needs pretrained=RUN_DIR, a classifier_baseline run "
                         "folder")
    try:
        method, pre = read_config(cfg.pretrained)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"pretrained={cfg.pretrained}: {e}") from None
    if method.name not in ("classifier_baseline", "meta_baseline"):
        raise ValueError(f"pretrained={cfg.pretrained} is a {method.name!r} run, not a "
                         "classifier_baseline run")
    for name in ("arch", "dataset", "image_size"):
        if getattr(pre, name) != getattr(cfg, name):
            raise ValueError(f"pretrained={cfg.pretrained} has {name}={getattr(pre, name)!r}, "
                             f"this run {getattr(cfg, name)!r}")
    if _checkpoint(cfg.pretrained, cfg.pretrained_checkpoint) is None:
        raise ValueError(f"pretrained={cfg.pretrained} has no checkpoint yet")


def build_meta(cfg: MetaBaselineConfig) -> Parts:
    """Stage 2: episodes, the pre-trained encoder in a :class:`MetaBaseline`, SGD.

    Without ``pretrained`` checkpoint (reading a run back whose stage-1 folder is gone) the
    encoder starts random and the run's own checkpoint provides the weights.
    """
    from metakd.meta.baseline import MetaBaseline

    data = _splits(cfg)
    torch.manual_seed(cfg.seed)
    encoder = _model(cfg, data.channels, 0)
    state = _encoder_state(cfg)
    if state is not None:
        from metakd.recipes.weights import load_state

        load_state(encoder, state, f"the encoder of {cfg.pretrained}")
    learner = MetaBaseline(encoder, temperature=cfg.temperature_init,
                           learn_temperature=cfg.learn_temperature, freeze_bn=cfg.freeze_bn,
                           steps_per_epoch=cfg.train_batches).to(cfg.device)
    optimizer = torch.optim.SGD(learner.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    train = data.episodes(data.train, cfg.shots, cfg.queries, None, cfg.seed,
                          cfg.meta_batch_size)
    val = None
    if cfg.val_tasks > 0 and data.has_val:
        val = data.episodes("val", cfg.shots, cfg.test_queries, cfg.val_tasks, 0, 4)
    if cfg.val_every == 0:
        cfg.val_every = cfg.train_batches
    return Parts(learner=learner, model=encoder, train_data=train, optimizer=optimizer,
                 val_data=val, test_data=data.test(4), loss_fn=_MetaLoss(cfg),
                 steps=cfg.steps if cfg.steps > 0 else cfg.epochs * cfg.train_batches)


def _load_meta_weights(parts: Parts, state: Mapping[str, torch.Tensor], trained: Any,
                       cfg: Any) -> None:
    from metakd.recipes.weights import load_state

    load_state(parts.learner, state, "the run")


def _check_classifier(cfg: ClassifierBaselineConfig) -> None:
    if cfg.distill is not None and cfg.distill not in DISTILL:
        raise ValueError(f"distill={cfg.distill!r} is unknown; use one of {DISTILL}")
    if cfg.teacher is None and (cfg.distill is not None or cfg.gda):
        raise ValueError("distill and gda need a teacher (--teacher RUN_DIR)")
    supervised_augmentation(cfg.augment, 8)


register("classifier_baseline", ClassifierBaselineConfig, build_classifier,
         describe="Classifier-Baseline (Chen et al., ICCV 2021): whole classification of the "
                  "base classes, cosine nearest-centroid test; KD/DKD/AugConf/AdaptConf + GDA",
         title="Classifier-Baseline", step_name="steps", check=_check_classifier)
register("meta_baseline", MetaBaselineConfig, build_meta,
         describe="Meta-Baseline (Chen et al., ICCV 2021): episodic fine-tuning with the "
                  "cosine centroid classifier; KD/DKD/AugConf/AdaptConf + GDA from a teacher",
         title="Meta-Baseline", step_name="steps", load_weights=_load_meta_weights,
         check=check_meta)

