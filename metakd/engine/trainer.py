"""The meta-training loop: progress, validation, best checkpoint, exact resume, NaN guard.

Any meta-learner works if it has ``meta_loss(batch, training) -> (loss, metrics)`` where
``metrics`` holds ``"accuracy"`` (mean over tasks, a float) and ``"task_accuracy"`` (a ``[T]``
tensor); :class:`metakd.meta.MAMLWrapper` does. Other objectives plug in through ``loss_fn``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from metakd.data.batch import TaskBatch
from metakd.engine.checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from metakd.engine.distributed import all_reduce_gradients, rank_slice, world
from metakd.engine.logger import JsonlLogger
from metakd.engine.stats import EvalResult, mean_confidence_interval

__all__ = ["FitResult", "MetaLearner", "NonFiniteLossError", "evaluate", "fit"]

log = logging.getLogger(__name__)
Metrics = dict[str, Any]


class MetaLearner(Protocol):
    def meta_loss(self, batch: TaskBatch, training: bool = True) -> tuple[torch.Tensor, Metrics]: ...


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run stopped and its last good checkpoint was kept."""


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        step: meta-iterations completed.
        best_val: the best validation result (``None`` without validation).
        best_step: the step of ``best_val``.
        history: every logged record (training and validation).
        stopped_early: ``True`` if the time budget ended the run before ``steps``.
        checkpoint: path of the last checkpoint (``None`` without ``out_dir``).
    """

    step: int
    best_val: EvalResult | None = None
    best_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    checkpoint: Path | None = None


def _task_accuracies(metrics: Metrics, tasks: int) -> list[float]:
    acc = metrics.get("task_accuracy")
    if acc is None:
        raise KeyError(
            "evaluate() needs per-episode accuracies: the meta-learner's metrics must contain "
            "'task_accuracy', a tensor of one accuracy per task"
        )
    values = torch.as_tensor(acc).detach().flatten().double().tolist()
    if len(values) != tasks:
        raise ValueError(f"'task_accuracy' has {len(values)} entries for {tasks} tasks")
    return values


def evaluate(
    learner: nn.Module,
    tasks: Iterable[TaskBatch],
    device: torch.device | str | None = None,
    progress: bool = False,
    loss_fn: Callable[[nn.Module, TaskBatch], tuple[torch.Tensor, Metrics]] | None = None,
) -> EvalResult:
    """Mean query accuracy over episodes with a Student-t 95% confidence interval.

    Args:
        learner: a meta-learner (``meta_loss(batch, training=False)``).
        tasks: the evaluation episodes, typically ``few_shot(..., num_tasks=600, seed=...)``.
        device: where to run.
        progress: show a progress bar.
        loss_fn: ``loss_fn(learner, batch) -> (loss, metrics)`` instead of ``meta_loss``.

    Returns:
        :class:`EvalResult` with ``mean``, ``ci95``, ``std`` and ``episodes``.
    """
    from tqdm.auto import tqdm

    accs: list[float] = []
    losses: list[float] = []
    was_training = learner.training
    learner.eval()
    try:
        total = len(tasks) if hasattr(tasks, "__len__") else None  # type: ignore[arg-type]
        for batch in tqdm(tasks, total=total, desc="evaluate", disable=not progress, leave=False):
            if device is not None:
                batch = batch.to(device)
            if loss_fn is not None:
                loss, metrics = loss_fn(learner, batch)
            else:
                loss, metrics = learner.meta_loss(batch, training=False)  # type: ignore[operator]
            accs += _task_accuracies(metrics, len(batch))
            losses.append(float(loss.detach()) * len(batch))
    finally:
        learner.train(was_training)
    return mean_confidence_interval(accs, loss=math.fsum(losses) / max(len(accs), 1))


def _state(learner: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, step: int,
           sampler: Any, best: dict[str, Any]) -> dict[str, Any]:
    return {
        "step": step,
        "model": learner.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "sampler": sampler.state_dict() if hasattr(sampler, "state_dict") else None,
        "rng": get_rng_state(),
        "best": best,
    }


def fit(
    learner: nn.Module,
    train_tasks: Iterable[TaskBatch],
    optimizer: torch.optim.Optimizer,
    steps: int,
    *,
    val_tasks: Iterable[TaskBatch] | None = None,
    val_every: int = 500,
    scheduler: Any = None,
    clip_grad_norm: float | None = None,
    clip_grad_value: float | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 100,
    resume: bool = True,
    max_seconds: float | None = None,
    log_every: int = 10,
    progress: bool = True,
    device: torch.device | str | None = None,
    loss_fn: Callable[[nn.Module, TaskBatch], tuple[torch.Tensor, Metrics]] | None = None,
    tensorboard: bool = True,
) -> FitResult:
    """Meta-train ``learner`` for ``steps`` meta-iterations.

    Each step draws a :class:`TaskBatch`, computes the meta-loss, back-propagates, clips,
    takes an optimiser step and a scheduler step. Every ``val_every`` steps (and at the end)
    it evaluates on ``val_tasks`` and keeps ``best.pt`` (the model's ``state_dict`` with the
    best validation accuracy). Every ``checkpoint_every`` steps, on Ctrl-C and at the end it
    writes ``last.pt`` atomically with everything a resume needs: model, optimiser, scheduler,
    the task stream's position and the RNG states. A run started again with the same
    ``out_dir`` continues from ``last.pt``; on CPU it ends with the same weights, bit for bit,
    as a run that was never interrupted.

    Under ``torch.distributed`` (see :mod:`metakd.engine.distributed`) each rank takes its
    slice of every meta-batch and the meta-gradients are averaged; rank 0 alone writes files.

    Args:
        learner: the meta-learner (``meta_loss(batch, training=True)``) to train in place.
        train_tasks: an endless stream of meta-batches (``few_shot(..., num_tasks=None)``);
            its ``state_dict`` is saved with the checkpoints.
        optimizer: the meta-optimiser over ``learner``'s parameters.
        steps: total meta-iterations (a resumed run counts the ones already done).
        val_tasks: a fixed set of validation episodes.
        val_every: validation period in steps.
        scheduler: a learning-rate scheduler stepped once per meta-iteration.
        clip_grad_norm: clip the global gradient norm to this value.
        clip_grad_value: clip every gradient entry to ``[-v, v]`` (the MAML reference uses 10
            on miniImageNet).
        out_dir: run folder for ``last.pt``, ``best.pt`` and ``log.jsonl``; ``None``: no files.
        checkpoint_every: checkpoint period in steps.
        resume: continue from ``out_dir/last.pt`` if it exists.
        max_seconds: stop (with a checkpoint and a final validation) after this much time.
        log_every: period of the training records in ``log.jsonl``.
        progress: show a progress bar (loss, accuracy, tasks/s, ETA).
        device: where to move each batch.
        loss_fn: ``loss_fn(learner, batch) -> (loss, metrics)`` instead of ``meta_loss``.
        tensorboard: also log to TensorBoard when it is installed.

    Returns:
        :class:`FitResult`.

    Raises:
        NonFiniteLossError: the loss became NaN/inf; nothing is written after the last good
            step and ``last.pt`` stays as it was.
    """
    from tqdm.auto import tqdm

    rank, world_size = world()
    main_rank = rank == 0
    folder = Path(out_dir) if out_dir is not None else None
    last_path = folder / "last.pt" if folder is not None else None
    logger = JsonlLogger(folder if main_rank else None, tensorboard=tensorboard)
    best: dict[str, Any] = {"accuracy": None, "step": None, "result": None}
    start = 0
    history: list[dict[str, Any]] = []

    if resume and last_path is not None and last_path.exists():
        ckpt = load_checkpoint(last_path)
        learner.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt["scheduler"] is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["sampler"] is not None and hasattr(train_tasks, "load_state_dict"):
            train_tasks.load_state_dict(ckpt["sampler"])
        set_rng_state(ckpt["rng"])
        best = ckpt["best"]
        start = int(ckpt["step"])
        if main_rank:
            logger.truncate_after(start)
        log.info("resumed from %s at step %d", last_path, start)

    def checkpoint(step: int) -> None:
        if last_path is not None and main_rank:
            save_checkpoint(_state(learner, optimizer, scheduler, step, train_tasks, best),
                            last_path)

    def validate(step: int) -> None:
        if val_tasks is None:
            return
        res = evaluate(learner, val_tasks, device=device, loss_fn=loss_fn)
        rec = {"kind": "val", "step": step, **res.as_dict()}
        history.append(rec)
        logger.write(rec)
        log.info("step %d: validation %s", step, res)
        if best["accuracy"] is None or res.mean > best["accuracy"]:
            best.update(accuracy=res.mean, step=step, result=res.as_dict())
            if folder is not None and main_rank:
                save_checkpoint({"step": step, "model": learner.state_dict(),
                                 "val": res.as_dict()}, folder / "best.pt")

    params = [p for p in learner.parameters() if p.requires_grad]
    it: Iterator[TaskBatch] = iter(train_tasks)
    t_start = time.perf_counter()
    step = start
    stopped_early = False
    bar = tqdm(total=steps, initial=start, desc="meta-train", disable=not (progress and main_rank),
               dynamic_ncols=True)
    learner.train()
    window_tasks, window_t0 = 0, time.perf_counter()
    try:
        while step < steps:
            batch = rank_slice(next(it), rank, world_size)
            if device is not None:
                batch = batch.to(device)
            if loss_fn is not None:
                loss, metrics = loss_fn(learner, batch)
            else:
                loss, metrics = learner.meta_loss(batch, training=True)  # type: ignore[operator]
            if not torch.isfinite(loss.detach()).all():
                raise NonFiniteLossError(
                    f"meta-loss is {float(loss)} at step {step + 1}; stopped without updating. "
                    f"The last good checkpoint ({last_path}, step "
                    f"{load_checkpoint(last_path)['step'] if last_path and last_path.exists() else 'none'}"
                    ") is kept. Lower the learning rates or clip gradients (clip_grad_norm)."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            all_reduce_gradients(params)
            if clip_grad_value is not None:
                torch.nn.utils.clip_grad_value_(params, clip_grad_value)
            if clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            window_tasks += len(batch) * world_size
            if step % log_every == 0 or step == steps:
                now = time.perf_counter()
                rate = window_tasks / max(now - window_t0, 1e-9)
                window_tasks, window_t0 = 0, now
                rec = {"kind": "train", "step": step, "loss": float(loss.detach()),
                       "accuracy": float(metrics.get("accuracy", float("nan"))),
                       "tasks_per_s": rate, "lr": optimizer.param_groups[0]["lr"],
                       "elapsed_s": now - t_start}
                history.append(rec)
                logger.write(rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['accuracy']:.3f}",
                                tasks_s=f"{rate:.0f}")
            bar.update(1)
            if val_tasks is not None and step % val_every == 0 and step != steps:
                validate(step)
            if step % checkpoint_every == 0:
                checkpoint(step)
            if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
                stopped_early = step < steps
                break
    except KeyboardInterrupt:
        log.warning("interrupted at step %d: saving %s before stopping", step, last_path)
        checkpoint(step)
        raise
    finally:
        bar.close()
    if val_tasks is not None and (best["step"] != step):
        validate(step)
    checkpoint(step)
    logger.close()
    best_res = best["result"]
    return FitResult(
        step=step,
        best_val=EvalResult(**{k: best_res[k] for k in ("ci95", "std", "episodes", "loss")},
                            mean=best_res["accuracy"]) if best_res else None,
        best_step=best["step"],
        history=history,
        stopped_early=stopped_early,
        checkpoint=last_path,
    )
