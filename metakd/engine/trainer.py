"""The training loop: progress, named loss terms, callbacks, validation, exact resume, NaN guard.

:func:`fit` trains any objective on any batch. Episodes (:class:`metakd.data.TaskBatch`) go
to the learner's ``meta_loss(batch, training=True, step=step)``; ``(x, y)`` minibatches to
:func:`metakd.engine.supervised_loss`; anything else to a ``loss_fn`` (see
:mod:`metakd.engine.objective`). Evaluation lives in :mod:`metakd.engine.evaluation`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from metakd.data.batch import TaskBatch
from metakd.engine._loop import NonFiniteLossError, TrainingRun
from metakd.engine.callbacks import Callback
from metakd.engine.evaluation import evaluate
from metakd.engine.objective import LossFn, Metrics
from metakd.engine.runfolder import RunFolder
from metakd.engine.stats import EvalResult

__all__ = ["FitResult", "MetaLearner", "NonFiniteLossError", "evaluate", "fit"]

log = logging.getLogger(__name__)

@runtime_checkable
class MetaLearner(Protocol):
    """What :func:`fit` needs of a meta-learner for episodes (``step`` may be left out).

    ``meta_loss`` returns ``(loss, metrics)``; :func:`evaluate` needs ``metrics`` to hold
    ``task_accuracy`` (``[T]``), and ``metrics["terms"]`` (named loss terms) is logged.

    Example:
        >>> import torch
        >>> class Stub:
        ...     def meta_loss(self, batch, training=True, step=0):
        ...         return torch.zeros(()), {"task_accuracy": torch.ones(len(batch))}
        >>> isinstance(Stub(), MetaLearner)
        True
    """

    def meta_loss(self, batch: TaskBatch, training: bool = True,
                  step: int = 0) -> tuple[torch.Tensor, Metrics]: ...


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        step: steps completed.
        best_val: the best validation result (``None`` without validation).
        best_step: the step of ``best_val``.
        history: every logged record (training and validation).
        stopped_early: ``True`` if the time budget ended the run before ``steps``.
        checkpoint: path of the last checkpoint (``None`` without ``out_dir``).

    Example:
        >>> FitResult(step=10).stopped_early
        False
    """

    step: int
    best_val: EvalResult | None = None
    best_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    checkpoint: Path | None = None


def fit(
    learner: nn.Module,
    batches: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    steps: int,
    *,
    loss_fn: LossFn | None = None,
    callbacks: Sequence[Callback] = (),
    val_data: Iterable[Any] | None = None,
    val_every: int = 500,
    scheduler: Any = None,
    clip_grad_norm: float | None = None,
    clip_grad_value: float | None = None,
    out_dir: str | os.PathLike[str] | RunFolder | None = None,
    checkpoint_every: int = 100,
    resume: bool = True,
    max_seconds: float | None = None,
    log_every: int = 10,
    progress: bool = True,
    device: torch.device | str | None = None,
    tensorboard: bool = True,
    val_tasks: Iterable[Any] | None = None,
    eval_fn: Callable[..., EvalResult] | None = None,
    on_resume: Callable[[], None] | None = None,
    divergence_factor: float | None = 1000.0,
    pin_memory: bool = False,
) -> FitResult:
    """Train ``learner`` for ``steps`` steps on a stream of episodes or minibatches.

    Each step takes a batch (from the first callback whose ``next_batch()`` returns one, else
    from ``batches``), computes the objective, back-propagates, clips, takes an optimiser step
    and a scheduler step, then calls every callback's ``on_step_end``. The objective is the
    first of (chosen in one place, :mod:`metakd.engine.objective`):

    - ``loss_fn(learner, batch, step) -> (loss, metrics)`` when given (the older two-argument
      ``loss_fn(learner, batch)`` works too);
    - the learner's own ``learner.training_loss(batch, step)`` when it has one
      (:class:`metakd.engine.HasTrainingLoss`; :class:`metakd.distill.Distiller` does, so
      ``fit(Distiller(student, teacher, ...), ...)`` trains on cross-entropy *and* the
      distillation terms);
    - for a :class:`metakd.data.TaskBatch`, ``learner.meta_loss(batch, training=True,
      step=step)`` (without ``step`` when ``meta_loss`` does not take it);
    - for a minibatch ``(x [B, ...], y [B])``, :func:`metakd.engine.supervised_loss`.

    ``step`` is the 0-based index of the step being computed (the number already completed),
    so a resumed run continues it. The training records (every ``log_every`` steps) hold
    ``loss``, ``accuracy``, each named term of ``metrics["terms"]`` as ``loss/NAME``, every
    other scalar metric as is, the throughput (``tasks_per_s`` or ``examples_per_s``, and
    ``images_per_s``), ``lr`` and ``elapsed_s``; a validation record holds its ``eval_s``.

    Every ``val_every`` steps (and at the end) it evaluates on ``val_data`` with
    :func:`metakd.engine.evaluate` (episodes: mean accuracy; minibatches: top-1) and keeps
    ``best.pt`` (the model's ``state_dict`` with the best validation accuracy). Every
    ``checkpoint_every`` steps, on Ctrl-C and at the end it writes ``last.pt`` atomically with
    everything a resume needs: model, optimiser, scheduler, the stream's position (its
    ``state_dict``), every callback's ``state_dict`` and the RNG states. A run started again
    with the same ``out_dir`` continues from ``last.pt``; on CPU it ends with the same weights,
    bit for bit, as a run that was never interrupted.

    Under ``torch.distributed`` (see :mod:`metakd.engine.distributed`) each rank takes its
    slice of every batch (tasks of a meta-batch, examples of a minibatch) and the gradients are
    averaged; rank 0 alone writes files and shows the bar.

    Args:
        learner: the model or meta-learner to train in place.
        batches: an endless stream of batches (``few_shot(..., num_tasks=None)`` or a
            minibatch loader); its ``state_dict`` is saved with the checkpoints.
        optimizer: the optimiser over ``learner``'s parameters.
        steps: total steps (a resumed run counts the ones already done).
        loss_fn: the objective, instead of the defaults above.
        callbacks: :class:`metakd.engine.Callback` s, called in order.
        val_data: a fixed set of validation episodes or labelled minibatches.
        eval_fn: ``eval_fn(learner, val_data, device=..., progress=...) -> EvalResult``
            instead of :func:`evaluate` for validation (for example nearest-centroid
            episodes for a learner trained on minibatches).
        val_every: validation period in steps.
        scheduler: a learning-rate scheduler stepped once per step.
        clip_grad_norm: clip the global gradient norm to this value.
        clip_grad_value: clip every gradient entry to ``[-v, v]`` (the MAML reference uses 10
            on miniImageNet).
        out_dir: run folder for ``last.pt``, ``best.pt`` and ``log.jsonl``; ``None``: no files.
        checkpoint_every: checkpoint period in steps.
        resume: continue from ``out_dir/last.pt`` if it exists.
        max_seconds: stop (with a checkpoint and a final validation) after this much time; the
            progress bar then counts seconds of the budget, not steps.
        log_every: period of the training records.
        progress: show a progress bar (loss, accuracy, named terms, throughput).
        device: where to move each batch.
        tensorboard: also log to TensorBoard when it is installed.
        val_tasks: the former name of ``val_data`` (still accepted).
        on_resume: called after a checkpoint was restored, before training goes on (for
            example to give the optimiser changed hyper-parameters).
        divergence_factor: stop as diverged when the training loss exceeds this many times
            its value at the first step of the call (or this many times 1, when that is
            smaller): a cross-entropy of a thousand means logits a thousand apart, which no
            learning run recovers from. ``None``: only NaN/inf stop a run.
        pin_memory: copy each batch to ``device`` through pinned host memory, without
            blocking (for a CUDA device).

    Returns:
        :class:`FitResult`.

    Every step checks that the loss and the gradients are finite (one fused max over the
    gradients) and that the loss has not exploded (``divergence_factor``); every checkpoint
    checks the weights. A run that fails a check stops before updating, with
    :class:`NonFiniteLossError` naming the step and the first offending tensor.

    Raises:
        NonFiniteLossError: training diverged; nothing is written after the last good
            checkpoint and ``last.pt`` stays as it was.
        ValueError: ``last.pt`` holds a different number of callback states; the stream ended
            before ``steps``; both ``val_data`` and ``val_tasks`` were given.

    Example:
        >>> import itertools, torch
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(64, 2)
        >>> y = (x[:, 0] > 0).long()  # the sign of the first coordinate
        >>> model = nn.Linear(2, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.5)
        >>> r = fit(model, itertools.repeat((x, y)), opt, 50, val_data=[(x, y)], progress=False)
        >>> r.step, r.best_val.mean > 0.9, "loss/ce" in r.history[0]
        (50, True, True)
    """
    if val_tasks is not None:
        if val_data is not None:
            raise ValueError("pass val_data or its former name val_tasks, not both")
        val_data = val_tasks
    if steps < 0 or checkpoint_every < 1 or log_every < 1 or (val_data is not None
                                                              and val_every < 1):
        raise ValueError(f"fit needs steps >= 0 and positive periods; got steps={steps}, "
                         f"checkpoint_every={checkpoint_every}, val_every={val_every}, "
                         f"log_every={log_every}")
    run = TrainingRun(learner, batches, optimizer, steps, loss_fn=loss_fn, callbacks=callbacks,
                      val_data=val_data, val_every=val_every, scheduler=scheduler,
                      clip_grad_norm=clip_grad_norm, clip_grad_value=clip_grad_value,
                      out_dir=out_dir, checkpoint_every=checkpoint_every, log_every=log_every,
                      device=device, tensorboard=tensorboard, eval_fn=eval_fn,
                      divergence_factor=divergence_factor, pin_memory=pin_memory)
    if resume:
        run.restore(on_resume)
    logger = run.open_log()
    try:
        stopped_early = run.train(max_seconds, progress)
        if val_data is not None and run.best["step"] != run.step:
            run.validate(run.step)
        run.checkpoint(run.step)
    except BaseException:
        run.roll_back()
        raise
    finally:
        logger.close()
    best = run.best["result"]
    return FitResult(step=run.step, best_val=EvalResult.from_dict(best) if best else None,
                     best_step=run.best["step"], history=run.history,
                     stopped_early=stopped_early, checkpoint=run.last_path)
