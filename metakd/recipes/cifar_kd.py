"""CIFAR-100 image classification with knowledge distillation: teachers and students.

One registered method, ``cifar_kd``, trains a CIFAR ResNet on CIFAR-100 either alone
(``teacher=None``: plain cross-entropy, which is how teachers are trained) or distilled from
a frozen teacher with a loss preset of :mod:`metakd.distill` (mdistiller's KD and DKD,
torchdistill's KD, GDA's KD and DKD with the Fisher-Rao and Sinkhorn terms). Two training
recipes are named presets:

* ``"mdistiller"`` (``megvii-research/mdistiller``, ``configs/cifar100/*.yaml``): SGD lr 0.05,
  momentum 0.9, weight decay 5e-4 on every parameter, batch 64, 240 epochs, the rate times
  0.1 after epochs 150, 180 and 210; random crop (padding 4) and flip.
* ``"gda"`` (``Logit-Distillation-GDA``, ``Image Classification/configs/cifar_v0.yaml`` under
  timm 0.6): Nesterov SGD lr 0.2, momentum 0.9, weight decay 5e-4 except on 1-d parameters
  (biases, batch-norm), batch 128, 240 epochs of a cosine to 2e-3 after 10 linear warm-up
  epochs from 1e-4 (timm's ``CosineLRScheduler``, updated once per epoch).

The learning rate of both is a function of the epoch (``step // batches_per_epoch``), as in
the reference trainers, which set it at the start of each epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch

from metakd.recipes.cifar_kd_parts import (
    EpochSchedule,
    _evaluate_top1,
    _param_groups,
    _TrainingLoss,
)
from metakd.recipes.parts import supervised_augmentation, supervised_batches
from metakd.recipes.registry import Parts, register

__all__ = ["CIFAR100_STATS", "RECIPES", "CifarKDConfig", "EpochSchedule", "build"]

log = logging.getLogger(__name__)

#: ``(mean, std)`` per channel used by each recipe's normalisation (mdistiller's
#: ``dataset/cifar100.py``; timm's CIFAR-100 constants in GDA's ``cifar_v0.yaml``).
CIFAR100_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mdistiller": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "gda": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

#: The training recipes by name: optimiser, batch size and learning-rate schedule.
RECIPES: dict[str, dict[str, Any]] = {
    "mdistiller": dict(epochs=240, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4,
                       nesterov=False, decay_1d=True, schedule="step",
                       milestones=[150, 180, 210], gamma=0.1,
                       warmup_epochs=0, warmup_lr=0.0, min_lr=0.0),
    "gda": dict(epochs=240, batch_size=128, lr=0.2, momentum=0.9, weight_decay=5e-4,
                nesterov=True, decay_1d=False, schedule="cosine", milestones=[], gamma=0.1,
                warmup_epochs=10, warmup_lr=1e-4, min_lr=2e-3),
}

_PRESETS = ("ce", "mdistiller_kd", "mdistiller_dkd", "torchdistill_kd", "gda_kd", "gda_dkd")
_RECIPE_KEYS = ("epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay",
                "milestones", "gamma", "warmup_epochs", "warmup_lr", "min_lr")
_TRAIN_IMAGES = 50_000  # CIFAR-100's training set: the epoch of the default val_every


@dataclass
class CifarKDConfig:
    """CIFAR-100 classification, plain or distilled from a frozen teacher (mdistiller, GDA).

    Fields left ``None`` take the recipe's (or the preset's) value when the config is made, so
    ``config.json`` records every value the run used. Validation is on the CIFAR-100 *test*
    set: the CIFAR convention, where mdistiller and GDA report the best test accuracy over the
    epochs; the test is then that best checkpoint's top-1 on the 10,000 test images.

    Under torchrun, :func:`metakd.engine.fit` gives every rank its slice of each batch
    (``batch_size`` is the global batch: GDA's 6 GPUs x 128 are ``batch_size=768``) and
    averages the gradients; the GDA Sinkhorn term, which couples the samples of a batch, is
    then computed per rank on its local slice, as in the GDA code under DDP.

    Attributes:
        dataset: cifar100, the only one.
        root: the folder holding cifar-100-python/.
        download: download CIFAR-100 (md5-checked) into root when it is missing.
        ways: classes of the data set and of the model (checked against the data).
        shots: unused: whole classification, not episodes.
        test_queries: images per evaluation batch (the accuracy does not depend on it).
        test_tasks: unused: the test always covers the whole test set.
        steps: training steps; 0: epochs x batches per epoch. A smaller value stops early
            without shortening the schedule.
        val_every: validation period in steps; 0: one epoch of the 50,000 CIFAR-100 training
            images (781 steps at batch 64).
        seed: seeds the weights, the epoch permutations and the augmentation.
        out_dir: run folder.
        max_seconds: training time budget.
        device: cpu or cuda.
        arch: the trained model (the student), a CIFAR ResNet of metakd.nn.
        teacher: None: plain cross-entropy training (how teachers are trained); else a metakd
            run folder, a state_dict file or an mdistiller checkpoint ({"model": state_dict}).
            It is loaded at the first training step, so metakd eval of the run needs no
            teacher.
        teacher_arch: the teacher's architecture.
        distill: the loss preset of metakd.distill.preset; None: mdistiller_kd with a
            teacher, ce without.
        temperature: the KD/DKD temperature; None: the preset's.
        ce_weight: weight of the cross-entropy (torchdistill_kd: its alpha); None: the
            preset's.
        kd_weight: weight of the KD or DKD term; None: the preset's.
        dkd_alpha: DKD's TCKD weight; None: the preset's.
        dkd_beta: DKD's NCKD weight; None: the preset's (mdistiller_dkd: mdistiller's value
            for the teacher/student pair, metakd.distill.dkd_beta).
        fisher_rao_weight: GDA's Fisher-Rao weight (adds the GDA term to a KD/DKD preset);
            None: the preset's.
        sinkhorn_weight: GDA's Sinkhorn weight (adds the GDA term to a KD/DKD preset); None:
            the preset's.
        recipe: the optimiser and schedule; None: gda for the gda presets, else mdistiller.
        epochs: training epochs; None: the recipe's (240).
        batch_size: images per step over all ranks; None: the recipe's (64; gda 128).
        lr: the peak learning rate; None: the recipe's (0.05; gda 0.2).
        momentum: SGD momentum; None: the recipe's (0.9).
        nesterov: Nesterov momentum; None: the recipe's (gda only).
        weight_decay: weight decay; None: the recipe's (5e-4; gda: not on 1-d parameters).
        milestones: epochs after which the step schedule (mdistiller) multiplies the rate by
            gamma; None: the recipe's (150 180 210).
        gamma: the step schedule's factor; None: the recipe's (0.1).
        warmup_epochs: epochs of linear warm-up of the cosine (gda); None: the recipe's (10).
        warmup_lr: the rate of the first warm-up epoch; None: the recipe's (gda 1e-4).
        min_lr: the final rate of the cosine; None: the recipe's (gda 2e-3).
        amp: bfloat16 autocast of the training step on CUDA; None: on with CUDA. It does
            nothing on a CPU; evaluation is in float32.
        channels_last: channels-last memory format on CUDA; None: on with CUDA.

    Example:
        >>> cfg = CifarKDConfig.paper(teacher="runs/resnet56")
        >>> cfg.distill, cfg.recipe, cfg.lr, cfg.batch_size, cfg.milestones
        ('mdistiller_kd', 'mdistiller', 0.05, 64, [150, 180, 210])
        >>> CifarKDConfig(distill="gda_kd", teacher="t.pt").lr
        0.2
    """

    dataset: str = "cifar100"
    root: str | None = None
    download: bool = False
    ways: int = 100
    shots: int = 0
    test_queries: int = 256
    test_tasks: int = 0
    steps: int = 0
    val_every: int = 0
    seed: int = 0
    out_dir: str = "runs/cifar_kd"
    max_seconds: float | None = None
    device: str = "cpu"
    arch: str = "resnet20"
    teacher: str | None = None
    teacher_arch: str = "resnet56"
    distill: Literal["ce", "mdistiller_kd", "mdistiller_dkd", "torchdistill_kd", "gda_kd",
                     "gda_dkd"] | None = None
    temperature: float | None = None
    ce_weight: float | None = None
    kd_weight: float | None = None
    dkd_alpha: float | None = None
    dkd_beta: float | None = None
    fisher_rao_weight: float | None = None
    sinkhorn_weight: float | None = None
    recipe: Literal["mdistiller", "gda"] | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    milestones: list[int] | None = None
    gamma: float | None = None
    warmup_epochs: int | None = None
    warmup_lr: float | None = None
    min_lr: float | None = None
    amp: bool | None = None
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        """Fill the fields left ``None`` from the preset and the recipe; check the names."""
        if self.distill is None:
            self.distill = "ce" if self.teacher is None else "mdistiller_kd"
        if self.distill not in _PRESETS:
            raise ValueError(f"distill={self.distill!r} is unknown; use one of {_PRESETS}")
        if self.recipe is None:
            self.recipe = "gda" if self.distill.startswith("gda") else "mdistiller"
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe={self.recipe!r} is unknown; use one of {sorted(RECIPES)}")
        base = RECIPES[self.recipe]
        for name in _RECIPE_KEYS:
            if getattr(self, name) is None:
                value = base[name]
                setattr(self, name, list(value) if isinstance(value, list) else value)
        if self.val_every == 0:
            self.val_every = max(1, _TRAIN_IMAGES // int(self.batch_size or base["batch_size"]))

    @classmethod
    def paper(cls, dataset: str = "cifar100", ways: int = 100, shots: int = 0,
              **overrides: Any) -> CifarKDConfig:
        """The recipe's settings (mdistiller's unless ``recipe="gda"``), then ``overrides``.

        Example:
            >>> cfg = CifarKDConfig.paper(recipe="gda", teacher="t.pt", distill="gda_kd")
            >>> cfg.batch_size, cfg.lr, cfg.nesterov, cfg.warmup_epochs, cfg.min_lr
            (128, 0.2, True, 10, 0.002)
        """
        return cls(dataset=dataset, ways=ways, shots=shots, **overrides)


def _datasets(cfg: CifarKDConfig) -> tuple[Any, Any]:
    from metakd.data import CIFAR100

    if cfg.dataset.lower().replace("-", "") != "cifar100":
        raise ValueError(f"cifar_kd trains on CIFAR-100 only, not {cfg.dataset!r}")
    if cfg.root is None:
        raise ValueError("cifar_kd needs root, the folder holding cifar-100-python/ "
                         "(--root DIR; add --download to fetch it)")
    if cfg.download:
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized()
        if not distributed or dist.get_rank() == 0:
            CIFAR100(cfg.root, split="train", download=True)
        if distributed:
            dist.barrier()  # the other ranks wait until rank 0 has the files
    train, test = CIFAR100(cfg.root, split="train"), CIFAR100(cfg.root, split="test")
    if len(train.classes) != cfg.ways:
        raise ValueError(f"{cfg.root} holds {len(train.classes)} classes but ways={cfg.ways}")
    return train, test


def build(cfg: CifarKDConfig) -> Parts:
    """Data, student, optimiser, schedule and objective of a CIFAR-100 run (nothing trained).

    Args:
        cfg: the run's config.

    Returns:
        :class:`Parts` whose ``learner`` and ``model`` are the student, ``train_data`` an
        endless augmented loader, ``val_data`` and ``test_data`` the test set, ``steps``
        the training length (``epochs`` x batches per epoch unless ``cfg.steps``).

    Raises:
        ValueError: no ``root``, another data set, a class count other than ``ways``, an
            unknown architecture, or loss settings that the preset does not take.
    """
    from metakd.nn import create

    train_set, test_set = _datasets(cfg)
    cuda = torch.device(cfg.device).type == "cuda"
    amp = cuda if cfg.amp is None else bool(cfg.amp)
    channels_last = cuda if cfg.channels_last is None else bool(cfg.channels_last)
    if amp and not cuda:
        log.info("amp: bfloat16 autocast is used on CUDA only; training on %s in float32",
                 cfg.device)
        amp = False
    if cfg.distill != "ce" and cfg.teacher is None:
        raise ValueError(f"distill={cfg.distill!r} needs a teacher (--teacher: a run folder, "
                         "a state_dict file or an mdistiller checkpoint)")
    if cfg.distill == "ce" and cfg.teacher is not None:
        raise ValueError("distill='ce' trains without a teacher; drop --teacher or pick a "
                         "distillation preset")
    torch.manual_seed(cfg.seed)
    student = create(cfg.arch, num_classes=cfg.ways).to(cfg.device)
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
    hp: dict[str, Any] = {k: getattr(cfg, k) for k in _RECIPE_KEYS}
    stats = CIFAR100_STATS[str(cfg.recipe)]
    train, test = supervised_batches(train_set, hp["batch_size"], seed=cfg.seed,
                                     device=cfg.device,
                                     augment=supervised_augmentation("cifar", 32),
                                     normalize=stats, val=test_set,
                                     val_batch_size=cfg.test_queries)
    per_epoch = len(train)
    groups = _param_groups(student, hp["weight_decay"], RECIPES[str(cfg.recipe)]["decay_1d"])
    optimizer = torch.optim.SGD(groups, lr=hp["lr"], momentum=hp["momentum"],
                                nesterov=hp["nesterov"])
    scheduler = EpochSchedule(optimizer, per_epoch, hp["lr"], hp["epochs"], hp["milestones"],
                              hp["gamma"], RECIPES[str(cfg.recipe)]["schedule"] == "cosine",
                              hp["warmup_epochs"], hp["warmup_lr"], hp["min_lr"])
    steps = cfg.steps if cfg.steps > 0 else hp["epochs"] * per_epoch
    return Parts(
        learner=student, model=student, train_data=train, optimizer=optimizer,
        val_data=test, test_data=test, scheduler=scheduler,
        loss_fn=_TrainingLoss(cfg, per_epoch, amp, channels_last),
        eval_fn=_evaluate_top1, steps=steps,
    )


register("cifar_kd", CifarKDConfig, build,
         describe="CIFAR-100 classification, plain (teachers) or distilled from a frozen "
                  "teacher: mdistiller KD/DKD, torchdistill KD, GDA (recipes of mdistiller "
                  "and GDA)",
         title="CIFAR-100 KD", step_name="steps",
         task=lambda cfg: f"{cfg.ways}-class classification")

