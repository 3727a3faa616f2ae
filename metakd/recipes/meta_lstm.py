"""The Meta-LSTM (Ravi & Larochelle, ICLR 2017) and its attention variant MLAL, end to end.

Defaults are the original code's (``twitter/meta-learning-lstm`` configs, as ported by
``markdtw/meta-learning-lstm-pytorch``; spec ``meta-learning-spec.md`` §3.5): 5-way
miniImageNet at 84 px, the 32-filter Conv-4 learner (32,901 parameters at ``N = 5``) with
batch norm eps 1e-3 and momentum 0.9 (1-shot) / 0.95 (5-shot), 12 epochs of minibatches of 5
(1-shot) or 8 epochs of 25 (5-shot), an LSTM of 20 units, Adam 1e-3, the meta-gradient
clipped to global norm 0.25, one episode per meta-iteration, 15 query images per class,
validation on 100 episodes every 1,000. ``attention=True`` gives MLAL's settings (4 LSTM
units; 1-shot: 16 epochs of 25). Unlike the originals, the checkpoint kept is the best on
validation, and the attention learner never reads query images or labels while adapting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from metakd.recipes.fields import compose_doc
from metakd.recipes.loops import MetaAdam, schedule
from metakd.recipes.originals import META_LSTM
from metakd.recipes.parts import Backbone, EpisodeData, EpisodeSplits, RunSettings, create_backbone
from metakd.recipes.registry import Parts, register

__all__ = ["MetaLSTMConfig"]

log = logging.getLogger(__name__)


@compose_doc
@dataclass
class MetaLSTMConfig(RunSettings, MetaAdam, Backbone, EpisodeData):
    """A Meta-LSTM run (Ravi & Larochelle, ICLR 2017), or MLAL's with ``attention=True``.

    The data, the learner's backbone, the outer loop (Adam over the meta-learner and the
    learner's initial weights, one episode per meta-iteration by default) and the run are the
    parts MAML has too (:mod:`metakd.recipes.parts`, :mod:`metakd.recipes.loops`); the inner
    loop is the meta-learner's own:

    Attributes:
        epochs: passes over the support set per episode (1-shot 12, 5-shot 8).
        batch_size: support minibatch size (1-shot 5, 5-shot 25).
        test_epochs: passes at validation and test (default: ``epochs``).
        hidden_size: the meta-learner's first LSTM layer (20; MLAL 4).
        input_size: the meta-learner's input width; must be 4 (preprocessed loss and gradient).
        grad_clip: the meta-gradient's global-norm clip (0.25).
        bn_momentum: the learner's batch-norm momentum (1-shot 0.9, 5-shot 0.95).
        bn_eps: the learner's batch-norm eps (1e-3).
        scale_grads: divide the gradients by ``batch_size`` as both codes do.
        gate_feedback: ``"logit"`` (pre-sigmoid gates fed back, the code) or ``"sigmoid"``
            (the paper).
        attention: MLAL: self-attention in the meta-learner and the cross-attention front end
            of the learner.
        attention_softmax: apply the softmax MLAL defines but never applies.
        attention_chunk: learner coordinates per attention row (default from the learner).
        meta_learner: an original meta-learner to start from: the
            ``meta-learner-<episode>.pth.tar`` of ``markdtw/meta-learning-lstm-pytorch`` (its
            LSTM, gates and ``cI``, the learner's initial weights;
            :mod:`metakd.interop.meta_lstm`). With ``steps=0`` the run only tests it (and its
            folder is then read by ``metakd eval``).

    Example:
        >>> cfg = MetaLSTMConfig.paper("miniimagenet", ways=5, shots=1)
        >>> cfg.epochs, cfg.batch_size, cfg.bn_momentum, cfg.steps, cfg.grad_clip
        (12, 5, 0.9, 75000, 0.25)
        >>> MetaLSTMConfig.paper("miniimagenet", shots=1, attention=True).hidden_size
        4
    """

    dataset: str = "miniimagenet"
    model: str = "conv4"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"hidden": 32, "head": "flatten"})
    image_size: int | None = 84
    rotations: bool = False
    shots: int = 5
    queries: int = 15
    meta_batch_size: int = 1
    meta_lr: float = 1e-3
    steps: int = 50_000
    val_every: int = 1000
    val_tasks: int = 100
    test_tasks: int = 600
    epochs: int = 8
    batch_size: int = 25
    test_epochs: int | None = None
    hidden_size: int = 20
    input_size: int = 4
    grad_clip: float = 0.25
    bn_momentum: float = 0.95
    bn_eps: float = 1e-3
    scale_grads: bool = True
    gate_feedback: Literal["logit", "sigmoid"] = "logit"
    attention: bool = False
    attention_softmax: bool = False
    attention_chunk: int | None = None
    meta_learner: str | None = None
    out_dir: str = "runs/meta_lstm"

    @classmethod
    def paper(cls, dataset: str = "miniimagenet", ways: int = 5, shots: int = 5,
              **overrides: Any) -> MetaLSTMConfig:
        """The original code's settings for the shot count (MLAL's with ``attention=True``),
        then ``overrides``. The bundled Omniglot gets 28 px, rotations and 5,000 episodes.

        Example:
            >>> cfg = MetaLSTMConfig.paper("omniglot", shots=1)
            >>> cfg.image_size, cfg.rotations, cfg.epochs, cfg.batch_size
            (28, True, 12, 5)
        """
        base: dict[str, Any] = (
            dict(epochs=12, batch_size=5, bn_momentum=0.9, steps=75_000) if shots == 1
            else dict(epochs=8, batch_size=25, bn_momentum=0.95, steps=50_000))
        if overrides.get("attention"):
            base.update(hidden_size=4, bn_momentum=0.95)
            if shots == 1:
                base.update(epochs=16, batch_size=25)
        if dataset.lower() == "omniglot":
            base.update(image_size=28, rotations=True, steps=5000, val_every=500)
        return cls(dataset=dataset, ways=ways, shots=shots, **{**base, **overrides})


def check(cfg: MetaLSTMConfig) -> None:
    """Refuse, in one line, options the Meta-LSTM cannot take.

    Example:
        >>> check(MetaLSTMConfig(input_size=3))
        Traceback (most recent call last):
        ...
        ValueError: input_size must be 4 (preprocessed loss and gradient, 2 values each), got 3
    """
    if cfg.input_size != 4:
        raise ValueError("input_size must be 4 (preprocessed loss and gradient, 2 values each), "
                         f"got {cfg.input_size}")
    if cfg.gate_feedback not in ("logit", "sigmoid"):
        raise ValueError(f"gate_feedback={cfg.gate_feedback!r}; use 'logit' or 'sigmoid'")
    if cfg.grad_clip is not None and cfg.grad_clip <= 0:
        raise ValueError(f"grad_clip must be positive, got {cfg.grad_clip}")
    fresh = not (Path(cfg.out_dir) / "last.pt").is_file()  # else the weights are in last.pt
    if cfg.meta_learner and fresh and not Path(cfg.meta_learner).is_file():
        from metakd.engine.errors import InputError

        raise InputError(f"meta_learner {cfg.meta_learner} does not exist")


def build(cfg: MetaLSTMConfig) -> Parts:
    """Data, learner (with running batch norm), Meta-LSTM and optimiser of a run.

    Example:
        >>> parts = build(MetaLSTMConfig.paper("omniglot", shots=1, test_tasks=2))
        >>> type(parts.learner).__name__, parts.clip_grad_norm
        ('MetaLSTM', 0.25)
        >>> sum(p.numel() for p in parts.model.parameters())
        28485
    """
    from metakd.meta import AttentionLearner, MetaLSTM

    check(cfg)
    data = EpisodeSplits(cfg, device=cfg.device)
    channels, size = data.channels, int(data.size)
    kwargs = dict(cfg.model_kwargs)
    if kwargs.get("head") == "flatten":
        kwargs.setdefault("image_size", size)
    kwargs.update(bn_mode="running", bn_momentum=cfg.bn_momentum, bn_eps=cfg.bn_eps)
    torch.manual_seed(cfg.seed)
    model = create_backbone(cfg.model, channels, cfg.ways, **kwargs)
    if cfg.attention:
        model = AttentionLearner(model, channels, size, eps=cfg.bn_eps)
    model.to(cfg.device)
    learner = MetaLSTM(model, epochs=cfg.epochs, batch_size=cfg.batch_size,
                       test_epochs=cfg.test_epochs, hidden_size=cfg.hidden_size,
                       gate_feedback=cfg.gate_feedback, scale_grads=cfg.scale_grads,
                       attention=cfg.attention, attention_softmax=cfg.attention_softmax,
                       attention_chunk=cfg.attention_chunk)
    if cfg.meta_learner and Path(cfg.meta_learner).exists():
        from metakd.interop.meta_lstm import load_meta_learner

        load_meta_learner(learner, cfg.meta_learner)
    elif cfg.meta_learner:  # a run read back: its checkpoint holds the weights
        log.warning("meta_learner %s is not there any more: the weights must come from a "
                    "checkpoint", cfg.meta_learner)
    learner.to(cfg.device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=cfg.meta_lr,
                                 weight_decay=cfg.weight_decay)
    episodes = data.streams(cfg.meta_batch_size)
    return Parts(learner=learner, model=model, train_data=episodes.train,
                 val_data=episodes.val, test_data=episodes.test, optimizer=optimizer,
                 scheduler=schedule(cfg, optimizer), clip_grad_value=cfg.clip_grad_value,
                 clip_grad_norm=cfg.grad_clip)


register("meta_lstm", MetaLSTMConfig, build,
         describe="Meta-LSTM (Ravi and Larochelle, ICLR 2017): an LSTM meta-learner whose cell "
                  "state is the learner's parameters; --attention: MLAL (Liao and Zhai), "
                  "without its query-label leak",
         title="Meta-LSTM", step_name="episodes", aliases=META_LSTM, check=check)
