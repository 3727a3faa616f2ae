"""The training loop: progress, named loss terms, callbacks, validation, exact resume, NaN guard.

:func:`fit` trains any objective on any batch. Episodes (:class:`metakd.data.TaskBatch`) go
to the learner's ``meta_loss(batch, training=True, step=step)``; ``(x, y)`` minibatches to
:func:`metakd.engine.supervised_loss`; anything else to a ``loss_fn`` (see
:mod:`metakd.engine.objective`). Evaluation lives in :mod:`metakd.engine.evaluation`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from metakd.data.batch import TaskBatch
from metakd.engine.callbacks import Callback, FitState
from metakd.engine.checkpoint import get_rng_state, load_checkpoint, set_rng_state
from metakd.engine.distributed import all_reduce_gradients, rank_slice, world
from metakd.engine.errors import DivergenceError, InputError
from metakd.engine.evaluation import evaluate
from metakd.engine.logger import JsonlLogger
from metakd.engine.objective import (
    LossFn,
    Metrics,
    Objective,
    batch_size,
    loggable_metrics,
    metric_accuracy,
    move_batch,
)
from metakd.engine.progress import TrainingBar
from metakd.engine.runfolder import RunFolder, checkpoint_bytes
from metakd.engine.stats import EvalResult

__all__ = ["FitResult", "MetaLearner", "NonFiniteLossError", "evaluate", "fit"]

log = logging.getLogger(__name__)

_RESERVED = frozenset({"kind", "step", "loss", "accuracy", "lr", "elapsed_s", "tasks_per_s",
                       "examples_per_s", "batches_per_s"})


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


class NonFiniteLossError(DivergenceError):
    """The loss, a gradient or a weight became NaN or infinite; the run stopped.

    The message names the step, the first non-finite tensor and the last finite checkpoint,
    which is kept as it was (or says that there is none). A :class:`DivergenceError`, so also
    a ``FloatingPointError``.

    Example:
        >>> issubclass(NonFiniteLossError, FloatingPointError)
        True
    """


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


def _state(learner: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, step: int,
           sampler: Any, best: dict[str, Any], callbacks: Sequence[Callback]) -> dict[str, Any]:
    return {
        "step": step,
        "model": learner.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "sampler": sampler.state_dict() if hasattr(sampler, "state_dict") else None,
        "rng": get_rng_state(),
        "best": best,
        "callbacks": [cb.state_dict() for cb in callbacks],
    }


def _non_finite(what: str, step: int, last_path: Path | None) -> NonFiniteLossError:
    """The divergence stop: ``what`` is not finite at (1-based) step ``step + 1``."""
    if last_path is not None and last_path.exists():
        try:
            kept = f"the last finite checkpoint, {last_path} (step {load_checkpoint(last_path)['step']}), is kept"
        except (InputError, KeyError, TypeError):
            kept = f"{last_path} is kept as it was"
    else:
        kept = "there is no checkpoint to keep"
    return NonFiniteLossError(
        f"training diverged at step {step + 1}: {what}; stopped without updating and wrote no "
        f"result; {kept}. Lower the learning rates or clip gradients (clip_grad_norm)"
    )


def _first_non_finite(named: Iterable[tuple[str, torch.Tensor | None]]) -> str | None:
    """The name and kind (``nan``/``inf``) of the first non-finite floating tensor, or None."""
    for name, t in named:
        if t is None or not torch.is_floating_point(t):
            continue
        if not bool(torch.isfinite(t).all()):
            kind = "NaN" if bool(torch.isnan(t).any()) else "infinite"
            return f"{name} is {kind}"
    return None


def _grads_finite(grads: list[torch.Tensor]) -> bool:
    """One fused max-abs over every gradient: finite iff every entry is (NaN propagates)."""
    if not grads:
        return True
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=float("inf"))))


def _restore(ckpt: dict[str, Any], path: Path, learner: nn.Module,
             optimizer: torch.optim.Optimizer, scheduler: Any, batches: Any,
             callbacks: Sequence[Callback]) -> None:
    states = ckpt.get("callbacks", [])
    if len(states) != len(callbacks):
        raise ValueError(
            f"{path} holds the state of {len(states)} callback(s) but fit() got "
            f"{len(callbacks)}: resume with the same callbacks, in the same order, as the run "
            "that wrote it (or pass resume=False, or another out_dir, to start afresh)"
        )
    try:
        learner.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()
        detail = next((ln.strip() for ln in first if "size mismatch" in ln or "Missing" in ln
                       or "Unexpected" in ln), first[0] if first else type(e).__name__)
        raise InputError(f"{path} does not fit the learner built now ({detail}); resume with "
                         "the options that wrote it, or start afresh (--fresh)") from None
    if scheduler is not None and ckpt["scheduler"] is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt["sampler"] is not None and hasattr(batches, "load_state_dict"):
        batches.load_state_dict(ckpt["sampler"])
    elif not hasattr(batches, "load_state_dict"):
        log.warning("the batch stream has no state_dict/load_state_dict: it restarts from its "
                    "beginning, so the resumed run is not the continuation of the first")
    for cb, state in zip(callbacks, states):
        cb.load_state_dict(state)
    set_rng_state(ckpt["rng"])


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
    other scalar metric as is, the throughput (``tasks_per_s`` or ``examples_per_s``), ``lr``
    and ``elapsed_s``.

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
    callbacks = list(callbacks)
    rank, world_size = world()
    main_rank = rank == 0
    run_folder = (out_dir if isinstance(out_dir, RunFolder)
                  else RunFolder(out_dir) if out_dir is not None else None)
    folder = run_folder.path if run_folder is not None else None
    last_path = folder / "last.pt" if folder is not None else None
    best: dict[str, Any] = {"accuracy": None, "step": None, "result": None}
    start = 0
    history: list[dict[str, Any]] = []
    if resume and last_path is not None and last_path.exists():
        ckpt = load_checkpoint(last_path)
        _restore(ckpt, last_path, learner, optimizer, scheduler, batches, callbacks)
        best = ckpt["best"]
        start = int(ckpt["step"])
        if on_resume is not None:
            on_resume()
        log.info("resumed from %s at step %d", last_path, start)
    logger = JsonlLogger(folder if main_rank else None, tensorboard=tensorboard)
    if main_rank:
        logger.truncate_after(start)  # a fresh run starts an empty log; a resumed one its own
    committed_log = logger.size()

    def checkpoint(step: int) -> None:
        """Stage ``last.pt`` (and a better ``best.pt``) and commit them with the caller's files;
        the weights are checked first: a non-finite weight never reaches a checkpoint."""
        nonlocal committed_log
        if run_folder is None or not main_rank:
            return
        bad = _first_non_finite(learner.state_dict().items())
        if bad is not None:
            raise _non_finite(f"the weight {bad}", step - 1, last_path)
        state = _state(learner, optimizer, scheduler, step, batches, best, callbacks)
        run_folder.stage("last.pt", lambda: checkpoint_bytes(state))
        run_folder.commit()
        committed_log = logger.size()

    def validate(step: int) -> None:
        if val_data is None:
            return
        if eval_fn is not None:
            res = eval_fn(learner, val_data, device=device, progress=False)
        else:
            res = evaluate(learner, val_data, device=device, loss_fn=loss_fn, step=step)
        rec = {"kind": "val", "step": step, **res.as_dict()}
        history.append(rec)
        logger.write(rec)
        log.info("step %d: validation %s", step, res)
        if best["accuracy"] is None or res.mean > best["accuracy"]:
            best.update(accuracy=res.mean, step=step, result=res.as_dict())
            if run_folder is not None and main_rank:  # written with the next last.pt
                weights = {k: v.detach().clone() for k, v in learner.state_dict().items()}
                record = {"step": step, "model": weights, "val": res.as_dict()}
                run_folder.stage("best.pt", lambda: checkpoint_bytes(record))

    def draw() -> Any:
        for cb in callbacks:
            b = cb.next_batch()
            if b is not None:
                return b
        try:
            return next(it)
        except StopIteration:
            raise ValueError(
                f"the batch stream ended at step {step} of {steps}: fit needs an endless stream "
                "(few_shot(..., num_tasks=None), an endless minibatch loader) or at least "
                "`steps` batches"
            ) from None

    objective = Objective(learner, loss_fn, training=True)
    params = [p for p in learner.parameters() if p.requires_grad]
    it: Iterator[Any] = iter(batches)
    t_start = time.perf_counter()
    step = start
    stopped_early = False
    first_loss: tuple[int, float] | None = None
    for cb in callbacks:
        cb.on_fit_start(FitState(learner, optimizer, scheduler, start, steps, folder, device,
                                 rank, world_size, max_seconds))
    try:
        bar = TrainingBar(steps, start, max_seconds, enabled=progress and main_rank)
        learner.train()
        window_items, window_t0 = 0, time.perf_counter()
        try:
            while step < steps:
                batch = move_batch(rank_slice(draw(), rank, world_size), device)
                loss, metrics = objective(batch, step)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise _non_finite(f"the training loss is {value}", step, last_path)
                if first_loss is None:
                    first_loss = (step, value)
                elif divergence_factor is not None and \
                        value > divergence_factor * max(abs(first_loss[1]), 1.0):
                    raise _non_finite(
                        f"the training loss {value:.4g} is over {divergence_factor:g} times its "
                        f"value at step {first_loss[0] + 1} ({first_loss[1]:.4g})", step,
                        last_path)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                all_reduce_gradients(params)
                if not _grads_finite([p.grad for p in params if p.grad is not None]):
                    bad = _first_non_finite((f"the gradient of {n}", p.grad)
                                            for n, p in learner.named_parameters())
                    raise _non_finite(bad or "a gradient is not finite", step, last_path)
                if clip_grad_value is not None:
                    torch.nn.utils.clip_grad_value_(params, clip_grad_value)
                if clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                step += 1
                loss = loss.detach()
                for cb in callbacks:
                    cb.on_step_end(step, batch, loss, metrics, learner)
                items, unit = batch_size(batch)
                window_items += items * world_size
                now = time.perf_counter()
                if step % log_every == 0 or step == steps:
                    rate = window_items / max(now - window_t0, 1e-9)
                    window_items, window_t0 = 0, now
                    scalars = loggable_metrics(metrics, _RESERVED)
                    rec = {"kind": "train", "step": step, "loss": float(loss),
                           "accuracy": metric_accuracy(metrics), **scalars,
                           f"{unit}_per_s": rate, "lr": optimizer.param_groups[0]["lr"],
                           "elapsed_s": now - t_start}
                    history.append(rec)
                    logger.write(rec)
                    terms = {k[5:]: v for k, v in scalars.items() if k.startswith("loss/")}
                    bar.show(rec["loss"], rec["accuracy"], terms, rate, unit)
                bar.update(step, now - t_start)
                if val_data is not None and step % val_every == 0 and step != steps:
                    validate(step)
                if step % checkpoint_every == 0:
                    checkpoint(step)
                if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
                    bar.update(step, time.perf_counter() - t_start)  # the budget is used up
                    stopped_early = step < steps
                    if step % log_every != 0:  # the log ends at the step the run ended
                        rec = {"kind": "train", "step": step, "loss": float(loss),
                               "accuracy": metric_accuracy(metrics),
                               **loggable_metrics(metrics, _RESERVED),
                               "lr": optimizer.param_groups[0]["lr"],
                               "elapsed_s": time.perf_counter() - t_start}
                        history.append(rec)
                        logger.write(rec)
                    break
        except KeyboardInterrupt:
            log.warning("interrupted at step %d: saving %s before stopping", step, last_path)
            checkpoint(step)
            raise
        finally:
            bar.close()
        if val_data is not None and (best["step"] != step):
            validate(step)
        checkpoint(step)
    except BaseException:
        if main_rank:  # the log goes back to the last checkpoint, as a resume would read it
            logger.rollback(committed_log)
        if run_folder is not None:
            run_folder.discard()
        raise
    finally:
        logger.close()
    best_res = best["result"]
    return FitResult(
        step=step,
        best_val=EvalResult.from_dict(best_res) if best_res else None,
        best_step=best["step"],
        history=history,
        stopped_early=stopped_early,
        checkpoint=last_path,
    )
