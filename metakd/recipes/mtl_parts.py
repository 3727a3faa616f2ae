"""The builds of the Meta-Transfer Learning recipe (:mod:`metakd.recipes.mtl`): the body, the
pre-training phase, the meta-transfer phase and the fine-tuned head that tests a body.

The config, its checks and the registration are in :mod:`metakd.recipes.mtl`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from metakd.recipes.loops import schedule
from metakd.recipes.parts import (
    EpisodeSplits,
    EpisodeStreams,
    create_backbone,
    supervised_augmentation,
    supervised_batches,
)
from metakd.recipes.registry import Parts

if TYPE_CHECKING:
    from metakd.recipes.mtl import MTLConfig

__all__ = ["FineTuneHead", "body", "build_meta", "build_pre", "checkpoint", "finetune_learner",
           "first_order"]

log = logging.getLogger("metakd.recipes.mtl")


def first_order(cfg: MTLConfig) -> bool:
    """The meta-gradient's order: ``first_order``, else the variant's (PyTorch: first order)."""
    return cfg.variant == "mtl_pytorch" if cfg.first_order is None else bool(cfg.first_order)


def checkpoint(folder: str | Path) -> Path | None:
    """The best weights of a run folder, else its last, else ``None``."""
    for name in ("best.pt", "last.pt"):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def body(cfg: MTLConfig, channels: int, num_classes: int,
          state: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """The backbone with a fresh ``num_classes`` head and, if given, ``state``'s body."""
    model = create_backbone(cfg.model, channels, num_classes, **cfg.model_kwargs)
    if state is not None:
        body = {k: v for k, v in state.items() if not k.startswith("head.")}
        missing, unexpected = model.load_state_dict(body, strict=False)
        wrong = [k for k in missing if not k.startswith("head.")] + list(unexpected)
        if wrong:
            raise ValueError(f"the pre-trained body does not fit {cfg.model}: {wrong[:5]}")
    return model


def finetune_learner(cfg: MTLConfig, state: Mapping[str, torch.Tensor], channels: int
                     ) -> nn.Module:
    """The test learner of a pre-trained body: a fresh zero ``cfg.ways``-way head fine-tuned
    on each support set (``cfg.test_update_step`` steps of ``cfg.base_lr``) over the frozen
    body of ``state``, the pre-train + fine-tune baseline.

    Args:
        cfg: the pre-training run's config.
        state: its model's ``state_dict`` (the ``head.*`` entries are ignored).
        channels: image channels.

    Returns:
        a :class:`metakd.meta.MAMLWrapper` adapting only the head.

    Example:
        >>> from metakd.nn import create
        >>> from metakd.recipes import MTLConfig
        >>> cfg = MTLConfig(model="conv4", model_kwargs={"hidden": 8}, ways=5)
        >>> state = create("conv4", in_channels=1, num_classes=64, hidden=8).state_dict()
        >>> learner = finetune_learner(cfg, state, channels=1)
        >>> float(learner.model.head.weight.detach().abs().sum())
        0.0
    """
    from metakd.meta import MAMLWrapper
    from metakd.recipes.weights import final_linear

    model = body(cfg, channels, cfg.ways, state)
    head = final_linear(model)
    nn.init.zeros_(head.weight)
    if head.bias is not None:
        nn.init.zeros_(head.bias)
    return MAMLWrapper(model, inner_lr=cfg.base_lr, inner_steps=cfg.test_update_step,
                       adapt="head", inner_loss_reduction=cfg.inner_loss_reduction,
                       backend=cfg.backend, compile=False)


class FineTuneHead:
    """``eval_fn`` of a "pre" run: :func:`finetune_learner` on the learner's current body."""

    def __init__(self, cfg: MTLConfig, channels: int) -> None:
        self.cfg, self.channels = cfg, channels

    def __call__(self, learner: nn.Module, data: Any, *, device: Any = None,
                 progress: bool = False) -> Any:
        from metakd.engine import evaluate

        wrapper = finetune_learner(self.cfg, learner.state_dict(), self.channels)
        wrapper.to(next(learner.parameters()).device).train(learner.training)
        return evaluate(wrapper, data, device=device, progress=progress)


def build_pre(cfg: MTLConfig, data: EpisodeSplits, episodes: EpisodeStreams) -> Parts:
    """Phase "pre": whole-classification minibatches of the meta-training split, the body with
    a head over its classes, SGD (PyTorch) or Adam (TF) with a step decay, and the fine-tuned
    head's test (:func:`finetune_learner`) at validation and test."""
    sampler: Any = episodes.train
    size = sampler.arrays.images.shape[-1]
    train, _ = supervised_batches(sampler.arrays, cfg.pre_batch_size, seed=cfg.seed,
                                  device=cfg.device,
                                  augment=supervised_augmentation(cfg.pre_augment, size))
    torch.manual_seed(cfg.seed)
    pre = dataclasses.replace(cfg, model_kwargs={**cfg.model_kwargs, "drop_rate": cfg.pre_dropout}
                              ) if cfg.pre_dropout else cfg
    model = body(pre, data.channels, train.num_classes).to(cfg.device)
    if cfg.variant == "mtl_pytorch":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.pre_lr, momentum=0.9, nesterov=True,
            weight_decay=cfg.pre_weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.pre_lr)
    per_epoch = len(train)
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, max(1, cfg.pre_lr_drop_steps or round(cfg.pre_lr_step * per_epoch)),
        gamma=cfg.pre_lr_gamma)
    return Parts(learner=model, model=model, train_data=train, optimizer=optimizer,
                 val_data=episodes.val, test_data=episodes.test, scheduler=scheduler,
                 eval_fn=FineTuneHead(cfg, data.channels),
                 steps=cfg.pre_steps or cfg.pre_epochs * per_epoch)


def build_meta(cfg: MTLConfig, data: EpisodeSplits, episodes: EpisodeStreams) -> Parts:
    """Phase "meta": the pre-trained body made scale-shift (:func:`metakd.nn.mtl_preset`), a
    fresh head, the head-only inner loop, Adam over two parameter groups (``meta_lr1``,
    ``meta_lr2``) with its schedule, and the hard-task meta-batch when asked for."""
    from metakd.engine import load_checkpoint
    from metakd.interop.mtl import is_original, load_pretrained
    from metakd.meta import HardTaskSampler, MAMLWrapper
    from metakd.nn import mtl_preset

    state, original = None, bool(cfg.pretrained and is_original(cfg.pretrained))
    ckpt = checkpoint(cfg.pretrained) if cfg.pretrained and not original else None
    if ckpt is not None:
        state = load_checkpoint(ckpt)["model"]
    elif not original:  # reading a "meta" run back: its own checkpoint holds the frozen body
        log.info("no pre-trained body (pretrained=%s); the weights must come from a checkpoint",
                 cfg.pretrained)
    torch.manual_seed(cfg.seed)
    model = body(cfg, data.channels, cfg.ways, state)
    names = mtl_preset(model, cfg.variant)
    if original and cfg.pretrained:
        load_pretrained(model, cfg.pretrained, cfg.model, cfg.pretrained_parts == "body")
    model.to(cfg.device)
    learner = MAMLWrapper(model, inner_lr=cfg.base_lr, inner_steps=cfg.update_step,
                          test_inner_steps=cfg.test_update_step, first_order=first_order(cfg),
                          adapt="head", inner_loss_reduction=cfg.inner_loss_reduction,
                          backend=cfg.backend, compile=False)
    params = dict(model.named_parameters())
    groups = [{"params": [params[n] for n in names if not n.startswith("head.")],
               "lr": cfg.meta_lr1},
              {"params": [params[n] for n in names if n.startswith("head.")], "lr": cfg.meta_lr2}]
    optimizer = torch.optim.Adam([g for g in groups if g["params"]],
                                 weight_decay=cfg.weight_decay)
    if cfg.lr_step and (cfg.lr_milestones or cfg.lr_schedule != "constant"):
        raise ValueError("lr_step and lr_milestones / lr_schedule are two schedules: set "
                         "lr_step=0 to use the others")
    if cfg.lr_min and not cfg.lr_step:
        raise ValueError("lr_min is the floor of the lr_step schedule: set lr_step too")
    scheduler = (torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step, gamma=cfg.lr_gamma)
                 if cfg.lr_step else schedule(cfg, optimizer))
    if cfg.lr_min:
        from metakd.recipes.mtl_tf import StepFloor

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [
            StepFloor(cfg.lr_step, cfg.lr_gamma, cfg.lr_min / g["lr"])
            for g in optimizer.param_groups])
    callbacks: list[Any] = []
    if cfg.hard_tasks:
        callbacks.append(HardTaskSampler(episodes.train, hard_tasks=cfg.hard_task_batch,
                                         others=cfg.hard_task_others, mode=cfg.hard_task_mode,
                                         seed=cfg.seed + 3))
    return Parts(learner=learner, model=model, train_data=episodes.train,
                 val_data=episodes.val, test_data=episodes.test, optimizer=optimizer,
                 scheduler=scheduler, callbacks=callbacks, clip_grad_value=cfg.clip_grad_value)
