"""Meta-Transfer Learning (Sun, Liu, Chua and Schiele, CVPR 2019) end to end, in two runs.

``phase="pre"`` trains the body and a pre-training head on every class of the meta-training
split (whole-classification minibatches); its run folder's model is the pre-trained network,
and its test (like its validation) fine-tunes a fresh classifier on each episode's support set
over the frozen body, the "pre-train + fine-tune" baseline and the PyTorch project's pre-val.
``phase="meta"`` loads that body (``pretrained``: the "pre" run folder), drops its head, adds a
fresh ``N``-way head, converts the convolutions to scale-shift ones and freezes what the
variant does not train (:func:`metakd.nn.mtl_preset`), and meta-learns the scale-shift (and,
for the PyTorch variant, batch-norm) parameters and the head's initialisation with an inner
loop on the head only (:class:`metakd.meta.MAMLWrapper` with ``adapt="head"``), optionally
with the hard-task meta-batch (:class:`metakd.meta.HardTaskSampler`). Its test is MTL's
meta-test: the head alone is fine-tuned on each support set.

The defaults are the PyTorch project's (``yaoyao-liu/meta-transfer-learning : pytorch``,
spec ``meta-learning-spec.md`` §2.5), except the backbone: the TF paper's ResNet-12
(``mtl_resnet12``, 8.0M parameters); the PyTorch project's ResNet-25 (36.6M) is
``model="mtl_resnet25"``. ``pretrained`` also takes the original projects' own checkpoints
(:mod:`metakd.interop.mtl`), and the TF project's ``run_experiment.py`` settings map onto
these fields (:mod:`metakd.recipes.mtl_tf`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from metakd.recipes.fields import compose_doc
from metakd.recipes.loops import InnerExecution, OuterLoop
from metakd.recipes.maml import load_weights as load_maml_weights
from metakd.recipes.mtl_parts import build_meta, build_pre, checkpoint, finetune_learner
from metakd.recipes.parts import Backbone, EpisodeData, EpisodeSplits, RunSettings
from metakd.recipes.registry import Parts, register

__all__ = ["MTLConfig", "finetune_learner"]

log = logging.getLogger(__name__)

PHASES = ("pre", "meta")

# PyTorch project (pytorch/main.py, run_pre.py, run_meta.py), the same for every data set.
_PYTORCH: dict[str, Any] = dict(
    model="mtl_resnet12", rotations=False, pre_lr=0.1, pre_epochs=110, pre_batch_size=128,
    pre_lr_step=30.0, pre_lr_gamma=0.2, pre_weight_decay=5e-4, pre_augment="miniimagenet",
    meta_batch_size=1, queries=15, test_queries=15, meta_lr1=1e-4, meta_lr2=1e-3,
    base_lr=0.01, update_step=100, test_update_step=100, inner_loss_reduction="mean",
    lr_step=1000, lr_gamma=0.5, steps=10_000, val_every=100, val_tasks=600, test_tasks=600,
)
# TF project (tensorflow/main.py, run_experiment.py): Adam pre-training halved every 5,000
# iterations of 64 images (8.33 epochs of miniImageNet's 38,400), 10,000 iterations kept.
_TF: dict[str, Any] = dict(
    pre_lr=1e-3, pre_epochs=17, pre_batch_size=64, pre_lr_step=5000 * 64 / 38_400,
    pre_lr_gamma=0.5, pre_weight_decay=0.0, pre_augment=None, meta_batch_size=2,
    meta_lr1=1e-3, meta_lr2=1e-3, base_lr=1e-3, update_step=20, test_update_step=100,
    inner_loss_reduction="sum_over_k", lr_step=1000, lr_gamma=0.5, steps=20_000,
)
# Bundled Omniglot at 28 px on a CPU: Conv-4. One pre-training step (64 images, 544 classes,
# one thread of the 2-core CPU) took 0.12 s with conv4 and 1.36 s with mtl_resnet12, so the
# 10 pre-training epochs (1,700 steps) take about 3.5 minutes with Conv-4.
_OMNIGLOT: dict[str, Any] = dict(
    model="conv4", image_size=28, rotations=True, pre_lr=0.05, pre_epochs=10,
    pre_batch_size=64, pre_lr_step=5.0, pre_lr_gamma=0.2, pre_augment=None,
    meta_batch_size=4, queries=5, test_queries=15, meta_lr1=1e-3, meta_lr2=1e-3,
    base_lr=0.1, update_step=10, test_update_step=20, lr_step=500, lr_gamma=0.5,
    steps=2000, val_every=250, val_tasks=200, test_tasks=600,
)


@compose_doc
@dataclass
class MTLConfig(RunSettings, OuterLoop, InnerExecution, Backbone, EpisodeData):
    """A Meta-Transfer Learning run: pre-training (``phase="pre"``) or meta-transfer ("meta").

    Composed of the data, backbone, outer-loop (without one learning rate: MTL has two),
    inner-loop execution and run parts of :class:`metakd.recipes.MAMLConfig`; MTL's own
    names for the inner loop's rate and steps.

    Attributes:
        phase: ``"pre"`` (whole-classification pre-training of the body) or ``"meta"``
            (meta-transfer learning on a pre-trained body; needs ``pretrained``).
        variant: ``"mtl_pytorch"`` (the PyTorch project: batch-norm affine trained, 1x1
            convolutions scaled per weight, first-order meta-gradient, SGD pre-training) or
            ``"mtl_tf"`` (the paper's TF code: batch norm and 1x1 convolutions frozen,
            second order, Adam pre-training); see :func:`metakd.nn.mtl_preset`.
        pretrained: phase "meta": the run folder of a phase "pre" run of the same backbone,
            data set and image size (its best weights, else its last); or an original
            project's checkpoint (:mod:`metakd.interop.mtl`): the PyTorch code's
            ``max_acc.pth`` (``model="mtl_resnet25"``) or the TF code's ``weights.npy`` (or
            the folder holding it, ``model="mtl_resnet12"``).
        pretrained_parts: what a meta-phase original checkpoint starts the meta phase from:
            ``"all"`` its weights (scale, shift and classifier too) or ``"body"`` the
            pre-trained network alone (the TF code's ``META_LOAD``).
        pre_lr: pre-training's learning rate.
        pre_epochs: pre-training's epochs over the meta-training split.
        pre_batch_size: pre-training's minibatch size.
        pre_lr_step: the pre-training rate is multiplied by ``pre_lr_gamma`` every this many
            epochs (may be fractional).
        pre_lr_gamma: the pre-training rate's factor every ``pre_lr_step`` epochs.
        pre_weight_decay: weight decay of pre-training's SGD (PyTorch: Nesterov, momentum
            0.9); TF pre-trains with Adam.
        pre_steps: pre-training minibatches (TF ``PRE_TRA_ITER_MAX``); 0: ``pre_epochs``.
        pre_lr_drop_steps: multiply the pre-training rate by ``pre_lr_gamma`` every this many
            minibatches (TF ``PRE_DROP_STEP``); 0: every ``pre_lr_step`` epochs.
        pre_dropout: dropout after each block in pre-training only (TF: 0.1, ``PRE_TRA_DROP``
            keep 0.9; the backbone must take ``drop_rate``).
        pre_augment: augmentation of the pre-training minibatches
            (:func:`metakd.recipes.parts.supervised_augmentation` name, e.g.
            ``"miniimagenet"``) or ``None``.
        meta_lr1: Adam's rate of the scale-shift (and batch-norm) parameters.
        meta_lr2: Adam's rate of the head's initialisation.
        base_lr: the inner loop's rate (MAML's ``inner_lr``); also that of the classifier
            fine-tuned when a "pre" run is validated or tested.
        update_step: inner steps in meta-training (MAML's ``inner_steps``).
        test_update_step: inner steps at validation and test (MAML's ``test_inner_steps``),
            also those of a "pre" run's fine-tuned classifier.
        lr_step: both meta rates are multiplied by ``lr_gamma`` every this many
            meta-iterations (0: the ``lr_schedule`` / ``lr_milestones`` of the outer loop
            instead).
        lr_min: the meta rates never fall below it (TF ``META_LR_MIN``; 0: no floor).
        first_order: ``None``: as the variant (PyTorch first order, TF second order);
            ``True`` / ``False`` forces it.
        hard_tasks: the hard-task meta-batch (:class:`metakd.meta.HardTaskSampler`).
        hard_task_mode: ``"alternate"`` (normal and hard meta-batches in turn) or ``"every"``.
        hard_task_others: how a hard task's other classes are drawn: ``"random"`` or
            ``"failures"`` (the meta-batch's other failure classes first).
        hard_task_batch: tasks per hard meta-batch (default: as many as the mined batch).

    ``steps`` and ``val_every`` count minibatches in phase "pre" (whose length is
    ``pre_steps`` or ``pre_epochs``) and meta-iterations in phase "meta".

    Example:
        >>> cfg = MTLConfig.paper("miniimagenet", ways=5, shots=1, phase="meta",
        ...                       pretrained="runs/mtl-pre")
        >>> cfg.meta_lr1, cfg.meta_lr2, cfg.base_lr, cfg.update_step, cfg.test_update_step
        (0.0001, 0.001, 0.01, 100, 100)
    """

    phase: Literal["pre", "meta"] = "pre"
    variant: Literal["mtl_pytorch", "mtl_tf"] = "mtl_pytorch"
    pretrained: str | None = None
    pretrained_parts: Literal["all", "body"] = "all"
    pre_lr: float = 0.1
    pre_epochs: int = 110
    pre_batch_size: int = 128
    pre_lr_step: float = 30.0
    pre_lr_gamma: float = 0.2
    pre_weight_decay: float = 5e-4
    pre_augment: str | None = "miniimagenet"
    pre_steps: int = 0
    pre_lr_drop_steps: int = 0
    pre_dropout: float = 0.0
    meta_lr1: float = 1e-4
    meta_lr2: float = 1e-3
    base_lr: float = 0.01
    update_step: int = 100
    test_update_step: int = 100
    lr_step: int = 1000
    lr_gamma: float = 0.5
    lr_min: float = 0.0
    hard_tasks: bool = False
    hard_task_mode: Literal["alternate", "every"] = "alternate"
    hard_task_others: Literal["random", "failures"] = "random"
    hard_task_batch: int | None = None
    first_order: bool | None = None
    model: str = "mtl_resnet12"
    rotations: bool = False
    meta_batch_size: int = 1
    inner_loss_reduction: Literal["sum_over_k", "mean"] = "mean"
    steps: int = 10_000
    val_every: int = 100
    out_dir: str = "runs/mtl"

    @classmethod
    def paper(cls, dataset: str = "miniimagenet", ways: int = 5, shots: int = 1,
              **overrides: Any) -> MTLConfig:
        """The PyTorch project's settings (``variant="mtl_tf"``: the TF code's), then overrides.

        miniImageNet, FC100 and tieredImageNet share the PyTorch settings; Omniglot (the
        bundled copy at 28 px) gets small CPU-sized ones with Conv-4.

        Example:
            >>> cfg = MTLConfig.paper("omniglot", ways=5, shots=1)
            >>> cfg.model, cfg.image_size, cfg.update_step, cfg.meta_batch_size
            ('conv4', 28, 10, 4)
            >>> MTLConfig.paper("miniimagenet", variant="mtl_tf").update_step
            20
        """
        base = dict(_PYTORCH)
        if overrides.get("variant") == "mtl_tf":
            base.update(_TF)
        if dataset.lower() == "omniglot":
            base.update(_OMNIGLOT)
        return cls(dataset=dataset, ways=ways, shots=shots, **{**base, **overrides})


def check(cfg: MTLConfig) -> None:
    """Refuse, in one line, an unknown phase or variant, or a missing or mismatched body.

    Phase "meta" needs ``pretrained``: a finished phase "pre" MTL run of the same backbone
    (and its options), data set and image size.

    Example:
        >>> check(MTLConfig(phase="meta"))
        Traceback (most recent call last):
        ...
        ValueError: MTL phase 'meta' needs pretrained=RUN_DIR, a phase 'pre' MTL run folder
    """
    from metakd.nn.scale_shift import MTL_PRESETS
    from metakd.recipes.runs import read_config

    if cfg.phase not in PHASES:
        raise ValueError(f"phase={cfg.phase!r} is unknown; use one of {PHASES}")
    if cfg.variant not in MTL_PRESETS:
        raise ValueError(f"variant={cfg.variant!r} is unknown; use one of {MTL_PRESETS}")
    if cfg.pretrained_parts not in ("all", "body"):
        raise ValueError(f"pretrained_parts={cfg.pretrained_parts!r}: use 'all' or 'body'")
    if cfg.phase == "pre":
        return
    if not cfg.pretrained:
        raise ValueError("MTL phase 'meta' needs pretrained=RUN_DIR, a phase 'pre' MTL run "
                         "folder")
    from metakd.interop.mtl import is_original, read_checkpoint

    if is_original(cfg.pretrained):  # refused in one line unless it fits cfg.model
        read_checkpoint(cfg.pretrained, cfg.model)
        return
    try:
        method, pre = read_config(cfg.pretrained)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"pretrained={cfg.pretrained}: {e}") from None
    if method.name != "mtl" or getattr(pre, "phase", None) != "pre":
        raise ValueError(f"pretrained={cfg.pretrained} is a {method.name!r} run, not a phase "
                         "'pre' MTL run")
    for name in ("model", "model_kwargs", "dataset"):
        if getattr(pre, name) != getattr(cfg, name):
            raise ValueError(f"pretrained={cfg.pretrained} has {name}={getattr(pre, name)!r}, "
                             f"this run {getattr(cfg, name)!r}")
    if (pre.image_size or None) != (cfg.image_size or None):
        raise ValueError(f"pretrained={cfg.pretrained} takes {pre.image_size or 'default'}-px "
                         f"images, this run {cfg.image_size or 'default'}-px")
    if checkpoint(cfg.pretrained) is None:
        raise ValueError(f"pretrained={cfg.pretrained} has no best.pt or last.pt yet")


def build(cfg: MTLConfig) -> Parts:
    """Data, model, learner, optimiser and schedule of an MTL run of either phase.

    Example:
        >>> parts = build(MTLConfig.paper("omniglot", rotations=False, pre_batch_size=32,
        ...                               test_tasks=2))
        >>> type(parts.learner).__name__, parts.model.head.out_features, parts.steps
        ('ConvNet', 136, 850)
    """
    if cfg.phase not in PHASES:
        raise ValueError(f"phase={cfg.phase!r} is unknown; use one of {PHASES}")
    torch.manual_seed(cfg.seed)
    data = EpisodeSplits(cfg, device=cfg.device)
    episodes = data.streams(cfg.meta_batch_size)
    return (build_pre if cfg.phase == "pre" else build_meta)(cfg, data, episodes)


def load_weights(parts: Parts, state: Mapping[str, torch.Tensor], trained: MTLConfig,
                 cfg: MTLConfig) -> None:
    """Put a run's weights into ``parts``: "pre" as saved, "meta" as MAML's (new head)."""
    if cfg.phase == "pre":
        from metakd.recipes.weights import load_state

        load_state(parts.learner, state, "the run")
    else:
        load_maml_weights(parts, state, trained, cfg)


register("mtl", MTLConfig, build,
         describe="Meta-Transfer Learning (Sun, Liu, Chua and Schiele, CVPR 2019): pre-train, "
                  "then meta-learn scale-shift and the classifier init (PyTorch or TF variant, "
                  "hard-task meta-batch)",
         title="MTL", step_name="steps", load_weights=load_weights, check=check)
