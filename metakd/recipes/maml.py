"""MAML (Finn, Abbeel and Levine, ICML 2017) end to end: data, model, meta-training, test.

Defaults follow the reference implementation (``cbfinn/maml``), not the popular PyTorch port,
whose known defects are not reproduced: the meta-gradient is truly second order unless
``first_order=True``; the inner loss has the reference scale (support cross-entropy summed and
divided by ``K``, i.e. ``N`` times the mean); Omniglot classes get the 90-degree rotation
augmentation; the model is selected on the validation split, never on the test split; the test
accuracy is a mean over 600 episodes with its 95% confidence interval.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from metakd.recipes.registry import Parts, register

__all__ = ["SHORT_RUN_S", "MAMLConfig", "build", "run_maml", "schedule"]

log = logging.getLogger(__name__)

# Reference settings (meta-learning spec §1.2: cbfinn/maml main.py usage lines and the paper).
_PAPER: dict[str, dict[str, Any]] = {
    "omniglot": dict(model="maml_omniglot", meta_batch_size=32, inner_lr=0.4, inner_steps=1,
                     test_inner_steps=3, rotations=True, steps=60_000),
    "omniglot-20way": dict(model="maml_omniglot", meta_batch_size=16, inner_lr=0.1,
                           inner_steps=5, test_inner_steps=5, rotations=True, steps=60_000),
    "miniimagenet": dict(model="maml_miniimagenet", meta_batch_size=4, inner_lr=0.01,
                         inner_steps=5, test_inner_steps=10, clip_grad_value=10.0,
                         rotations=False, steps=60_000),
}


@dataclass
class MAMLConfig:
    """Everything a MAML run depends on. :meth:`paper` gives the reference settings.

    Attributes:
        dataset: ``omniglot`` (``root=None``: the bundled copy), ``miniimagenet``, ``cub``...
        root: the data set's folder.
        ways, shots, queries: episode shape for meta-training (``N``, ``K``, ``Q``).
        test_queries: query images per class in validation and test episodes. The reference
            tests with K per class; 15 estimates the same accuracy with less noise.
        image_size: side of the images (default: the data set's).
        rotations: add 90/180/270-degree rotation classes (Omniglot).
        augment: augmentation of the training episodes (:func:`metakd.data.augmentation`
            name, e.g. ``"miniimagenet"``: random resized crop, flip, colour jitter, as
            PMAML's ``--augment`` for deep teachers), or ``None``.
        model: backbone name in :func:`metakd.nn.create`.
        model_kwargs: extra arguments of the backbone (for example
            ``{"head_init": "xavier"}`` for ``maml_omniglot``).
        inner_lr, inner_steps, test_inner_steps: the inner loop (``alpha`` and step counts).
        first_order: first-order MAML (FOMAML).
        inner_loss_reduction: ``"sum_over_k"`` (the reference) or ``"mean"``.
        meta_lr, meta_batch_size, steps: the outer loop (Adam).
        lr_schedule: ``"constant"`` (the reference) or ``"cosine"``: the meta learning rate
            decays to 0 over ``steps`` or over ``max_seconds``, whichever ends first
            (:class:`metakd.engine.BudgetCosine`).
        clip_grad_value: clip meta-gradient entries (the reference uses 10 on miniImageNet).
        weight_decay: Adam's weight decay (the reference: 0; PMAML: 5e-4).
        lr_milestones: tasks (meta-iterations times ``meta_batch_size``) after which the meta
            learning rate is multiplied by ``lr_gamma`` (PMAML's ``--schedule``); empty: none.
        lr_gamma: the factor at each milestone.
        val_every, val_tasks, test_tasks: validation period and episode counts.
        backend: inner-loop backend of :class:`metakd.meta.MAMLWrapper`.
        compile: ``"auto"`` (``torch.compile`` the meta-gradient from the first meta-batch
            when the run is long: at least :data:`LONG_RUN_STEPS` steps and no
            ``max_seconds`` or one of at least :data:`SHORT_RUN_S`, with batch norm that the
            compiled path takes; eager otherwise), ``"on"`` (compile) or ``"off"`` (eager);
            see ``MAMLWrapper``'s ``compile``. Evaluation is always eager.
        seed: seeds the weights and the task streams.
        test_seed: seed of the test episodes; ``None``: ``seed + 2``. Fix it to test runs of
            different seeds on the same episodes (paired comparisons).
        out_dir: run folder (checkpoints, log, plot, results).
        max_seconds: stop meta-training after this long (then test).
        device: ``"cpu"``, ``"cuda"``...

    A run folder tested at another number of ways (``metakd eval RUN --ways 20``,
    ``load_run(RUN, ways=20)``) gets a zero-initialised ``N``-way final head layer: the
    trained ``N``-way head cannot be reused (see :mod:`metakd.recipes.weights`).

    Example:
        >>> cfg = MAMLConfig.paper("omniglot", ways=20, shots=1)
        >>> cfg.inner_lr, cfg.inner_steps, cfg.meta_batch_size, cfg.queries
        (0.1, 5, 16, 1)
    """

    dataset: str = "omniglot"
    root: str | None = None
    ways: int = 5
    shots: int = 1
    queries: int = 15
    test_queries: int = 15
    image_size: int | None = None
    rotations: bool = True
    augment: str | None = None
    model: str = "maml_omniglot"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    inner_lr: float = 0.4
    inner_steps: int = 1
    test_inner_steps: int = 3
    first_order: bool = False
    inner_loss_reduction: str = "sum_over_k"
    meta_lr: float = 1e-3
    meta_batch_size: int = 32
    steps: int = 60_000
    lr_schedule: str = "constant"
    clip_grad_value: float | None = None
    weight_decay: float = 0.0
    lr_milestones: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    val_every: int = 500
    val_tasks: int = 600
    test_tasks: int = 600
    # vmap, not the wrapper's "auto" (func): inside fit + evaluate on the bundled Omniglot
    # (1 training query, meta-batch 32, 2-core CPU) vmap trained at 56 tasks/s against 34 and
    # evaluated 128 episodes in 4.8 s against 154 s; its extra memory is small at this size.
    backend: str = "vmap"
    compile: str = "auto"
    seed: int = 0
    test_seed: int | None = None
    out_dir: str = "runs/maml"
    max_seconds: float | None = None
    device: str = "cpu"

    @classmethod
    def paper(cls, dataset: str = "omniglot", ways: int = 5, shots: int = 1,
              **overrides: Any) -> MAMLConfig:
        """The reference settings for a data set and episode shape, then ``overrides``.

        Example:
            >>> MAMLConfig.paper("miniimagenet", shots=5).clip_grad_value
            10.0
        """
        key = dataset.lower()
        if key == "omniglot" and ways >= 20:
            key = "omniglot-20way"
        base = dict(_PAPER.get(key, _PAPER["miniimagenet"]))
        if key.startswith("omniglot"):
            # cbfinn/maml main.py: Omniglot meta-trains with K query images per class
            # (update_batch_size); miniImageNet with 15.
            base["queries"] = shots
        return cls(dataset=dataset, ways=ways, shots=shots, **{**base, **overrides})


def _splits(cfg: MAMLConfig) -> tuple[str, str | None, str]:
    """(train, val, test) split names; the bundled Omniglot has no validation split."""
    if cfg.dataset.lower() == "omniglot" and cfg.root is None:
        return "train", None, "test"
    return "train", "val", "test"


_COMPILE_MODES = ("auto", "on", "off")

# A run with a time budget shorter than this does not compile under compile="auto": on the
# 2-core CPU a cold background compile kept the eager loop at about a tenth of its speed for
# 100-150 s (the compiler's Python thread and its C++ builds take both cores and the GIL), so
# a 4-minute demo made 1,700 meta-iterations with it against 2,500 without. The compile now
# runs in the foreground at the first meta-batch, and still costs one to three minutes cold.
SHORT_RUN_S = 600.0
"""Seconds: under ``compile="auto"`` a run with a shorter ``max_seconds`` stays eager."""

# Steps: under compile="auto" a shorter run stays eager. At the eager Omniglot default (about
# 3 meta-iterations/s on the 2-core CPU) 5,000 steps take about half an hour, against one to
# three minutes for a cold compile that then saves 15-40% of every step.
LONG_RUN_STEPS = 5_000


def _compile(cfg: MAMLConfig) -> bool:
    """``MAMLWrapper``'s ``compile`` for ``cfg.compile``: ``"auto"`` compiles long runs only."""
    if cfg.compile not in _COMPILE_MODES:
        raise ValueError(f"compile={cfg.compile!r} is unknown; use 'auto', 'on' or 'off'")
    if cfg.compile != "auto":
        return cfg.compile == "on"
    long_run = cfg.steps >= LONG_RUN_STEPS and (
        cfg.max_seconds is None or cfg.max_seconds >= SHORT_RUN_S
    )
    # The compiled path takes transductive batch norm only (not per-step or running statistics).
    compilable_bn = cfg.model_kwargs.get("bn_mode", "transductive") == "transductive"
    return long_run and compilable_bn and cfg.backend in ("auto", "func", "vmap")


def schedule(cfg: MAMLConfig, optimizer: torch.optim.Optimizer) -> Any:
    """The meta learning-rate scheduler of ``cfg`` (stepped once per meta-iteration), or None.

    ``lr_schedule="cosine"``: :class:`metakd.engine.BudgetCosine`; ``lr_milestones`` (in
    tasks): a step decay by ``lr_gamma`` after each; both at once is an error.
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



def _augment(cfg: MAMLConfig, size: Any) -> Any:
    """The training augmentation of ``cfg.augment`` at ``size``, or ``None``."""
    from metakd.data import augmentation

    if not cfg.augment:
        return None
    if size is None:
        raise ValueError(f"augment={cfg.augment!r} needs image_size: {cfg.dataset} has no "
                         "default image size")
    return augmentation(cfg.augment, size)

def build(cfg: MAMLConfig) -> Parts:
    """Data, model, meta-learner and optimiser of a MAML run (nothing is trained).

    Example:
        >>> parts = build(MAMLConfig(meta_batch_size=2, test_tasks=2, compile="off"))
        >>> type(parts.learner).__name__, parts.model.out_features, parts.val_data
        ('MAMLWrapper', 5, None)
    """
    from metakd.data import few_shot
    from metakd.data.registry import get_dataset
    from metakd.meta import MAMLWrapper
    from metakd.nn import create

    torch.manual_seed(cfg.seed)
    extra: dict[str, Any] = {}
    if cfg.dataset.lower() == "omniglot" and cfg.rotations:
        extra["rotations"] = (0, 90, 180, 270)
    compile_ = _compile(cfg)
    train_split, val_split, test_split = _splits(cfg)
    train_set = get_dataset(cfg.dataset, cfg.root, train_split, **extra)
    test_set = get_dataset(cfg.dataset, cfg.root, test_split, **extra)
    size = cfg.image_size or train_set.default_image_size
    channels = 1 if train_set.image_mode == "L" else 3
    try:
        model = create(cfg.model, in_channels=channels, num_classes=cfg.ways, **cfg.model_kwargs)
    except TypeError as e:  # an option the backbone does not take
        raise ValueError(f"model {cfg.model!r} with options {cfg.model_kwargs}: {e}") from e
    learner = MAMLWrapper(model, inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps,
                          first_order=cfg.first_order, test_inner_steps=cfg.test_inner_steps,
                          inner_loss_reduction=cfg.inner_loss_reduction, backend=cfg.backend,
                          compile=compile_)
    learner.to(cfg.device)
    common: dict[str, Any] = {"image_size": size, "device": cfg.device}
    optimizer = torch.optim.Adam(learner.parameters(), lr=cfg.meta_lr,
                                 weight_decay=cfg.weight_decay)
    scheduler = schedule(cfg, optimizer)
    val_data = None
    if val_split is not None:
        val_set = get_dataset(cfg.dataset, cfg.root, val_split, **extra)
        val_data = few_shot(val_set, cfg.ways, cfg.shots, cfg.test_queries,
                            meta_batch_size=cfg.meta_batch_size, num_tasks=cfg.val_tasks,
                            seed=cfg.seed + 1, **common)
    return Parts(
        learner=learner,
        model=model,
        train_data=few_shot(train_set, cfg.ways, cfg.shots, cfg.queries,
                            meta_batch_size=cfg.meta_batch_size, seed=cfg.seed,
                            augment=_augment(cfg, size),
                            **common),
        val_data=val_data,
        test_data=few_shot(test_set, cfg.ways, cfg.shots, cfg.test_queries,
                           meta_batch_size=cfg.meta_batch_size, num_tasks=cfg.test_tasks,
                           seed=cfg.seed + 2 if cfg.test_seed is None else cfg.test_seed,
                           **common),
        optimizer=optimizer,
        scheduler=scheduler,
        clip_grad_value=cfg.clip_grad_value,
    )


def load_weights(parts: Parts, state: Mapping[str, torch.Tensor], trained: MAMLConfig,
                 cfg: MAMLConfig) -> None:
    """Put a run's weights into ``parts``; at another number of ways, with a zero new head."""
    from metakd.recipes.weights import load_state, load_with_new_head

    if cfg.ways == trained.ways:
        load_state(parts.learner, state, "the run")
    else:
        load_with_new_head(parts.learner, parts.model, state, cfg.ways, "the run")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``metakd train maml`` beyond those every method has."""
    from metakd.recipes.options import KeyValueAction

    paper = "(default: the paper's value for the data set)"
    p.add_argument("--queries", type=int,
                   help="query images per class in training (default: K on Omniglot, else 15)")
    p.add_argument("--model", help=f"backbone name {paper}")
    p.add_argument("--augment", help="augmentation of the training episodes, e.g. miniimagenet "
                                     "(default: none)")
    p.add_argument("--model-arg", dest="model_kwargs", action=KeyValueAction, metavar="KEY=VALUE",
                   help="backbone option, repeatable (e.g. head_init=xavier, bn_scale=true)")
    p.add_argument("--inner-lr", type=float, help=f"inner learning rate alpha {paper}")
    p.add_argument("--inner-steps", type=int, help=f"inner steps in training {paper}")
    p.add_argument("--test-inner-steps", type=int, help=f"inner steps at test {paper}")
    p.add_argument("--first-order", action="store_true", default=None, help="first-order MAML")
    p.add_argument("--inner-loss-reduction", choices=["sum_over_k", "mean"],
                   help="inner loss scale (default: sum_over_k, the reference)")
    p.add_argument("--meta-lr", type=float, help="Adam learning rate (default: 0.001)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"],
                   help="meta learning-rate schedule (default: constant)")
    p.add_argument("--meta-batch-size", type=int, help=f"tasks per meta-batch {paper}")
    p.add_argument("--clip-grad-value", type=float, help=f"meta-gradient clipping {paper}")
    p.add_argument("--weight-decay", type=float, help="Adam weight decay (default: 0)")
    p.add_argument("--lr-milestones", type=int, nargs="+", metavar="TASKS",
                   help="tasks after which the meta learning rate is multiplied by --lr-gamma")
    p.add_argument("--lr-gamma", type=float, help="learning-rate factor at each milestone "
                                                  "(default: 0.1)")
    p.add_argument("--val-tasks", type=int, help="validation episodes (default: 600)")
    p.add_argument("--test-seed", type=int, help="seed of the test episodes (default: --seed "
                                                 "+ 2)")
    p.add_argument("--backend", choices=["auto", "func", "vmap", "learn2learn", "higher"],
                   help="inner-loop backend (default: vmap)")
    p.add_argument("--compile", choices=list(_COMPILE_MODES),
                   help="torch.compile the meta-gradient: auto (from the first meta-batch when "
                        f"--steps is at least {LONG_RUN_STEPS} and --max-seconds, if given, at "
                        f"least {SHORT_RUN_S:g}), on or off (default: auto)")


register("maml", MAMLConfig, build,
         describe="MAML (Finn, Abbeel and Levine, ICML 2017): second-order meta-learned "
                  "initialisation, reference settings of cbfinn/maml",
         title="MAML", step_name="meta-iterations",
         add_arguments=add_arguments, load_weights=load_weights)


def run_maml(cfg: MAMLConfig, progress: bool = True, resume: bool = True) -> dict[str, Any]:
    """:func:`metakd.recipes.run` for a :class:`MAMLConfig` (kept for existing scripts)."""
    from metakd.recipes.runs import run

    return run(cfg, progress=progress, resume=resume, method="maml")
