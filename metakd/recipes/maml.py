"""MAML (Finn, Abbeel and Levine, ICML 2017) end to end: data, model, meta-training, test.

Defaults follow the reference implementation (``cbfinn/maml``), not the popular PyTorch port,
whose known defects are not reproduced: the meta-gradient is truly second order unless
``first_order=True``; the inner loss has the reference scale (support cross-entropy summed and
divided by ``K``, i.e. ``N`` times the mean); Omniglot classes get the 90-degree rotation
augmentation; the model is selected on the validation split, never on the test split; the test
accuracy is a mean over 600 episodes with its 95% confidence interval.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from metakd.recipes.fields import compose_doc
from metakd.recipes.loops import InnerLoop, MetaAdam, schedule
from metakd.recipes.parts import Backbone, EpisodeData, EpisodeSplits, RunSettings, create_backbone
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


@compose_doc
@dataclass
class MAMLConfig(RunSettings, MetaAdam, InnerLoop, Backbone, EpisodeData):
    """Everything a MAML run depends on. :meth:`paper` gives the reference settings.

    Composed of :class:`~metakd.recipes.parts.EpisodeData`,
    :class:`~metakd.recipes.parts.Backbone`, :class:`~metakd.recipes.loops.InnerLoop`,
    :class:`~metakd.recipes.loops.MetaAdam` and :class:`~metakd.recipes.parts.RunSettings`.

    Attributes:
        compile: ``"auto"`` (``torch.compile`` the meta-gradient from the first meta-batch
            when the run is long: at least :data:`LONG_RUN_STEPS` steps and no ``max_seconds``
            or one of at least :data:`SHORT_RUN_S`, with batch norm that the compiled path takes;
            eager otherwise), ``"on"`` (compile) or ``"off"`` (eager); see
            ``MAMLWrapper``'s ``compile``. Evaluation is always eager.

    A run folder tested at another number of ways (``metakd eval RUN --ways 20``,
    ``load_run(RUN, ways=20)``) gets a zero-initialised ``N``-way final head layer: the
    trained ``N``-way head cannot be reused (see :mod:`metakd.recipes.weights`).

    Example:
        >>> cfg = MAMLConfig.paper("omniglot", ways=20, shots=1)
        >>> cfg.inner_lr, cfg.inner_steps, cfg.meta_batch_size, cfg.queries
        (0.1, 5, 16, 1)
    """

    compile: Literal["auto", "on", "off"] = "auto"

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


def build(cfg: MAMLConfig) -> Parts:
    """Data, model, meta-learner and optimiser of a MAML run (nothing is trained).

    Example:
        >>> parts = build(MAMLConfig(meta_batch_size=2, test_tasks=2, compile="off"))
        >>> type(parts.learner).__name__, parts.model.out_features, parts.val_data
        ('MAMLWrapper', 5, None)
    """
    from metakd.meta import MAMLWrapper

    torch.manual_seed(cfg.seed)
    compile_ = _compile(cfg)
    data = EpisodeSplits(cfg, device=cfg.device)
    model = create_backbone(cfg.model, data.channels, cfg.ways, **cfg.model_kwargs)
    learner = MAMLWrapper(model, inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps,
                          first_order=cfg.first_order, test_inner_steps=cfg.test_inner_steps,
                          inner_loss_reduction=cfg.inner_loss_reduction, backend=cfg.backend,
                          compile=compile_)
    learner.to(cfg.device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=cfg.meta_lr,
                                 weight_decay=cfg.weight_decay)
    episodes = data.streams(cfg.meta_batch_size)
    return Parts(learner=learner, model=model, train_data=episodes.train,
                 val_data=episodes.val, test_data=episodes.test, optimizer=optimizer,
                 scheduler=schedule(cfg, optimizer), clip_grad_value=cfg.clip_grad_value)


def load_weights(parts: Parts, state: Mapping[str, torch.Tensor], trained: Any,
                 cfg: Any) -> None:
    """Put a run's weights into ``parts``; at another number of ways (``cfg.ways`` against
    the ``trained`` config's), with a zero new head (MAML, PMAML, MTL's meta phase)."""
    from metakd.recipes.weights import load_state, load_with_new_head

    if cfg.ways == trained.ways:
        load_state(parts.learner, state, "the run")
    else:
        load_with_new_head(parts.learner, parts.model, state, cfg.ways, "the run")


register("maml", MAMLConfig, build,
         describe="MAML (Finn, Abbeel and Levine, ICML 2017): second-order meta-learned "
                  "initialisation, reference settings of cbfinn/maml",
         title="MAML", step_name="meta-iterations", load_weights=load_weights)


def run_maml(cfg: MAMLConfig, progress: bool = True, resume: bool = True) -> dict[str, Any]:
    """:func:`metakd.recipes.run` for a :class:`MAMLConfig` (kept for existing scripts)."""
    from metakd.recipes.runs import run

    return run(cfg, progress=progress, resume=resume, method="maml")
