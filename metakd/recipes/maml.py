"""MAML (Finn, Abbeel and Levine, ICML 2017) end to end: data, model, meta-training, test.

Defaults follow the reference implementation (``cbfinn/maml``), not the popular PyTorch port,
whose known defects are not reproduced: the meta-gradient is truly second order unless
``first_order=True``; the inner loss has the reference scale (support cross-entropy summed and
divided by ``K``, i.e. ``N`` times the mean); Omniglot classes get the 90-degree rotation
augmentation; the model is selected on the validation split, never on the test split; the test
accuracy is a mean over 600 episodes with its 95% confidence interval.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = ["MAMLConfig", "run_maml"]

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
        val_every, val_tasks, test_tasks: validation period and episode counts.
        backend: inner-loop backend of :class:`metakd.meta.MAMLWrapper`.
        compile: ``"auto"`` (compile in the background after 120 s of a task shape, unless
            ``max_seconds`` is under 10 minutes), ``"on"`` (compile at the first meta-batch)
            or ``"off"``; see ``MAMLWrapper``'s ``compile``.
        seed: seeds the weights and the task streams.
        out_dir: run folder (checkpoints, log, plot, results).
        max_seconds: stop meta-training after this long (then test).
        device: ``"cpu"``, ``"cuda"``...
    """

    dataset: str = "omniglot"
    root: str | None = None
    ways: int = 5
    shots: int = 1
    queries: int = 15
    test_queries: int = 15
    image_size: int | None = None
    rotations: bool = True
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
    val_every: int = 500
    val_tasks: int = 600
    test_tasks: int = 600
    # vmap, not the wrapper's "auto" (func): inside fit + evaluate on the bundled Omniglot
    # (1 training query, meta-batch 32, 2-core CPU) vmap trained at 56 tasks/s against 34 and
    # evaluated 128 episodes in 4.8 s against 154 s; its extra memory is small at this size.
    backend: str = "vmap"
    compile: str = "auto"
    seed: int = 0
    out_dir: str = "runs/maml"
    max_seconds: float | None = None
    device: str = "cpu"

    @classmethod
    def paper(cls, dataset: str = "omniglot", ways: int = 5, shots: int = 1,
              **overrides: Any) -> MAMLConfig:
        """The reference settings for a data set and episode shape, then ``overrides``."""
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


_COMPILE_MODES: dict[str, bool | Literal["auto"]] = {"auto": "auto", "on": True, "off": False}

# A run with a time budget shorter than this does not compile under compile="auto": on the
# 2-core CPU a cold background compile kept the eager loop at about a tenth of its speed for
# 100-150 s (the compiler's Python thread and its C++ builds take both cores and the GIL), so
# a 4-minute demo made 1,700 meta-iterations with it against 2,500 without.
SHORT_RUN_S = 600.0


def _compile_mode(cfg: MAMLConfig) -> bool | Literal["auto"]:
    mode = _COMPILE_MODES[cfg.compile]
    if mode == "auto" and cfg.max_seconds is not None and cfg.max_seconds < SHORT_RUN_S:
        return False
    return mode


def build(cfg: MAMLConfig) -> dict[str, Any]:
    """Data, model, meta-learner and optimiser of a run (nothing is trained)."""
    from metakd.data import few_shot
    from metakd.data.registry import get_dataset
    from metakd.meta import MAMLWrapper
    from metakd.nn import create

    torch.manual_seed(cfg.seed)
    extra: dict[str, Any] = {}
    if cfg.dataset.lower() == "omniglot" and cfg.rotations:
        extra["rotations"] = (0, 90, 180, 270)
    if cfg.compile not in _COMPILE_MODES:
        raise ValueError(f"compile={cfg.compile!r} is unknown; use 'auto', 'on' or 'off'")
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
                          compile=_compile_mode(cfg))
    learner.to(cfg.device)
    common: dict[str, Any] = {"image_size": size, "device": cfg.device}
    out: dict[str, Any] = {
        "learner": learner,
        "train_tasks": few_shot(train_set, cfg.ways, cfg.shots, cfg.queries,
                                meta_batch_size=cfg.meta_batch_size, seed=cfg.seed, **common),
        "test_tasks": few_shot(test_set, cfg.ways, cfg.shots, cfg.test_queries,
                               meta_batch_size=cfg.meta_batch_size, num_tasks=cfg.test_tasks,
                               seed=cfg.seed + 2, **common),
        "val_tasks": None,
        "optimizer": torch.optim.Adam(learner.parameters(), lr=cfg.meta_lr),
        "scheduler": None,
    }
    if cfg.lr_schedule == "cosine":
        from metakd.engine import BudgetCosine

        out["scheduler"] = BudgetCosine(out["optimizer"], cfg.steps, cfg.max_seconds)
    elif cfg.lr_schedule != "constant":
        raise ValueError(f"lr_schedule={cfg.lr_schedule!r} is unknown; use 'constant' or 'cosine'")
    if val_split is not None:
        val_set = get_dataset(cfg.dataset, cfg.root, val_split, **extra)
        out["val_tasks"] = few_shot(val_set, cfg.ways, cfg.shots, cfg.test_queries,
                                    meta_batch_size=cfg.meta_batch_size,
                                    num_tasks=cfg.val_tasks, seed=cfg.seed + 1, **common)
    return out


def run_maml(cfg: MAMLConfig, progress: bool = True, resume: bool = True) -> dict[str, Any]:
    """Meta-train, pick the best validation checkpoint, test, write results and a plot.

    Writes ``last.pt``, ``best.pt`` (when validating), ``log.jsonl``, ``learning_curve.png``
    and ``results.json`` into ``cfg.out_dir``. Returns the content of ``results.json``.
    """
    import os

    import torch.distributed as dist

    from metakd.engine import (
        evaluate,
        fit,
        init_distributed,
        load_checkpoint,
        plot_learning_curve,
        shutdown_distributed,
    )

    own_group = not (dist.is_available() and dist.is_initialized())
    rank, world_size = init_distributed()  # torchrun: each rank takes a slice of every meta-batch
    if world_size > 1 and cfg.device == "cuda":
        cfg = dataclasses.replace(cfg, device=f"cuda:{os.environ.get('LOCAL_RANK', 0)}")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    parts = build(cfg)
    learner = parts["learner"]
    result = fit(learner, parts["train_tasks"], parts["optimizer"], cfg.steps,
                 val_tasks=parts["val_tasks"], val_every=cfg.val_every,
                 scheduler=parts["scheduler"],
                 clip_grad_value=cfg.clip_grad_value, out_dir=out, resume=resume,
                 max_seconds=cfg.max_seconds, progress=progress, device=cfg.device)
    if world_size > 1 and own_group:
        shutdown_distributed()  # every rank is done training; leave the group together
    if rank != 0:  # rank 0 alone tests and writes the results
        return {"rank": rank, "steps": result.step, "stopped_early": result.stopped_early}
    selected = "last"
    if parts["val_tasks"] is not None and (out / "best.pt").exists():
        learner.load_state_dict(load_checkpoint(out / "best.pt")["model"])
        selected = f"best validation (step {result.best_step})"
    test = evaluate(learner, parts["test_tasks"], device=cfg.device, progress=progress)
    results = {
        "method": "MAML",
        "dataset": cfg.dataset if cfg.root else f"{cfg.dataset} (bundled)",
        "episode": f"{cfg.ways}-way {cfg.shots}-shot",
        "steps": result.step,
        "stopped_early": result.stopped_early,
        "selected": selected,
        "test": test.as_dict(),
        "test_str": str(test),
        "best_val": result.best_val.as_dict() if result.best_val else None,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot_learning_curve(out / "log.jsonl", out / "learning_curve.png",
                        title=f"MAML {cfg.ways}-way {cfg.shots}-shot, {results['dataset']}: "
                              f"test {test}")
    return results
