"""The machinery of :func:`metakd.engine.fit`, one job per method of :class:`TrainingRun`.

Resume (restore every state a checkpoint holds), the step (objective, divergence checks,
backward, clipping, optimiser and scheduler), logging, validation with the best model kept,
and checkpoints committed through a :class:`~metakd.engine.runfolder.RunFolder`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

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
    batch_images,
    batch_size,
    loggable_metrics,
    metric_accuracy,
    move_batch,
)
from metakd.engine.progress import TrainingBar
from metakd.engine.runfolder import RunFolder, checkpoint_bytes
from metakd.engine.stats import EvalResult

__all__ = ["NonFiniteLossError", "TrainingRun"]

log = logging.getLogger(__name__)

_RESERVED = frozenset({"kind", "step", "loss", "accuracy", "lr", "elapsed_s", "tasks_per_s",
                       "examples_per_s", "batches_per_s", "images_per_s", "eval_s"})


class NonFiniteLossError(DivergenceError):
    """The loss, a gradient or a weight became NaN or infinite; the run stopped.

    The message names the step, the first non-finite tensor and the last finite checkpoint,
    which is kept as it was (or says that there is none). A :class:`DivergenceError`, so also
    a ``FloatingPointError``.

    Example:
        >>> issubclass(NonFiniteLossError, FloatingPointError)
        True
    """


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



class TrainingRun:
    """One call of :func:`metakd.engine.fit`: its state and the jobs of its loop."""

    def __init__(self, learner: nn.Module, batches: Iterable[Any],
                 optimizer: torch.optim.Optimizer, steps: int, *, loss_fn: LossFn | None,
                 callbacks: Sequence[Callback], val_data: Iterable[Any] | None, val_every: int,
                 scheduler: Any, clip_grad_norm: float | None, clip_grad_value: float | None,
                 out_dir: Any, checkpoint_every: int, log_every: int,
                 device: torch.device | str | None, tensorboard: bool,
                 eval_fn: Callable[..., EvalResult] | None,
                 divergence_factor: float | None, pin_memory: bool = False) -> None:
        self.learner, self.batches, self.optimizer, self.steps = learner, batches, optimizer, steps
        self.loss_fn, self.callbacks, self.scheduler = loss_fn, list(callbacks), scheduler
        self.val_data, self.val_every, self.eval_fn = val_data, val_every, eval_fn
        self.clip_grad_norm, self.clip_grad_value = clip_grad_norm, clip_grad_value
        self.checkpoint_every, self.log_every, self.device = checkpoint_every, log_every, device
        self.divergence_factor = divergence_factor
        self.pin_memory = pin_memory
        self.rank, self.world_size = world()
        self.main_rank = self.rank == 0
        self.folder = (out_dir if isinstance(out_dir, RunFolder)
                       else RunFolder(out_dir) if out_dir is not None else None)
        self.last_path = self.folder.path / "last.pt" if self.folder is not None else None
        self.best: dict[str, Any] = {"accuracy": None, "step": None, "result": None}
        self.history: list[dict[str, Any]] = []
        self.start = self.step = 0
        self.first_loss: tuple[int, float] | None = None
        self.params = [p for p in learner.parameters() if p.requires_grad]
        self.objective = Objective(learner, loss_fn, training=True)
        self.tensorboard = tensorboard
        self.logger: JsonlLogger | None = None
        self.committed_log = 0
        self.t_start = time.perf_counter()
        self._window = (0, self.t_start)
        self._images = 0

    # --- resume, checkpoints, the log ---------------------------------------------------------
    def restore(self, on_resume: Callable[[], None] | None) -> None:
        """Continue from ``last.pt`` (every state it holds); then open the log at that step."""
        if self.last_path is not None and self.last_path.exists():
            ckpt = load_checkpoint(self.last_path)
            _restore(ckpt, self.last_path, self.learner, self.optimizer, self.scheduler,
                     self.batches, self.callbacks)
            self.best = ckpt["best"]
            self.start = self.step = int(ckpt["step"])
            if on_resume is not None:
                on_resume()
            log.info("resumed from %s at step %d", self.last_path, self.start)

    def open_log(self) -> JsonlLogger:
        """The log, cut to the records a resumed run keeps (none for a fresh one)."""
        folder = self.folder.path if self.folder is not None and self.main_rank else None
        self.logger = JsonlLogger(folder, tensorboard=self.tensorboard)
        if self.main_rank:
            self.logger.truncate_after(self.start)
        self.committed_log = self.logger.size()
        return self.logger

    def checkpoint(self, step: int) -> None:
        """Stage ``last.pt`` (and a better ``best.pt``) and commit them with the caller's files;
        the weights are checked first: a non-finite weight never reaches a checkpoint."""
        if self.folder is None or not self.main_rank:
            return
        bad = _first_non_finite(self.learner.state_dict().items())
        if bad is not None:
            raise _non_finite(f"the weight {bad}", step - 1, self.last_path)
        state = _state(self.learner, self.optimizer, self.scheduler, step, self.batches,
                       self.best, self.callbacks)
        self.folder.stage("last.pt", lambda: checkpoint_bytes(state))
        self.folder.commit()
        if self.logger is not None:
            self.committed_log = self.logger.size()

    def roll_back(self) -> None:
        """After a failure: the log back to the last checkpoint, nothing staged kept."""
        if self.main_rank and self.logger is not None:
            self.logger.rollback(self.committed_log)
        if self.folder is not None:
            self.folder.discard()

    def write(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.logger is not None:
            self.logger.write(record)

    # --- validation ----------------------------------------------------------------------------
    def validate(self, step: int) -> None:
        """Evaluate on the validation data; keep the best model (written with the next commit)."""
        if self.val_data is None:
            return
        t0 = time.perf_counter()
        if self.eval_fn is not None:
            res = self.eval_fn(self.learner, self.val_data, device=self.device, progress=False)
        else:
            res = evaluate(self.learner, self.val_data, device=self.device,
                           loss_fn=self.loss_fn, step=step)
        self.write({"kind": "val", "step": step, **res.as_dict(),
                    "eval_s": time.perf_counter() - t0})
        log.info("step %d: validation %s", step, res)
        best = self.best
        if best["accuracy"] is None or res.mean > best["accuracy"]:
            best.update(accuracy=res.mean, step=step, result=res.as_dict())
            if self.folder is not None and self.main_rank:
                weights = {k: v.detach().clone() for k, v in self.learner.state_dict().items()}
                record = {"step": step, "model": weights, "val": res.as_dict()}
                self.folder.stage("best.pt", lambda: checkpoint_bytes(record))

    # --- one step ------------------------------------------------------------------------------
    def draw(self, it: Iterator[Any]) -> Any:
        """The next batch: a callback's own first (hard tasks), else the stream's."""
        for cb in self.callbacks:
            b = cb.next_batch()
            if b is not None:
                return b
        try:
            return next(it)
        except StopIteration:
            raise ValueError(
                f"the batch stream ended at step {self.step} of {self.steps}: fit needs an "
                "endless stream (few_shot(..., num_tasks=None), an endless minibatch loader) or "
                "at least `steps` batches"
            ) from None

    def check_loss(self, value: float) -> None:
        """Stop on a non-finite loss, or one over ``divergence_factor`` times the first."""
        if not math.isfinite(value):
            raise _non_finite(f"the training loss is {value}", self.step, self.last_path)
        if self.first_loss is None:
            self.first_loss = (self.step, value)
            return
        first_step, first = self.first_loss
        if self.divergence_factor is not None and \
                value > self.divergence_factor * max(abs(first), 1.0):
            raise _non_finite(
                f"the training loss {value:.4g} is over {self.divergence_factor:g} times its "
                f"value at step {first_step + 1} ({first:.4g})", self.step, self.last_path)

    def update(self, batch: Any) -> tuple[torch.Tensor, Metrics]:
        """Objective, checks, backward, all-reduce, clipping, optimiser and scheduler steps."""
        loss, metrics = self.objective(batch, self.step)
        self.check_loss(float(loss.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        all_reduce_gradients(self.params)
        if not _grads_finite([p.grad for p in self.params if p.grad is not None]):
            bad = _first_non_finite((f"the gradient of {n}", p.grad)
                                    for n, p in self.learner.named_parameters())
            raise _non_finite(bad or "a gradient is not finite", self.step, self.last_path)
        if self.clip_grad_value is not None:
            torch.nn.utils.clip_grad_value_(self.params, self.clip_grad_value)
        if self.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        return loss.detach(), metrics

    def record(self, loss: torch.Tensor, metrics: Metrics, batch: Any, bar: TrainingBar) -> bool:
        """Count the batch; every ``log_every`` steps (and at the last) log and show a record;
        ``True`` if it did."""
        items, unit = batch_size(batch)
        n, t0 = self._window
        n += items * self.world_size
        self._images += batch_images(batch) * self.world_size
        now = time.perf_counter()
        logged = self.step % self.log_every == 0 or self.step == self.steps
        if logged:
            rate = n / max(now - t0, 1e-9)
            scalars = loggable_metrics(metrics, _RESERVED)
            rec = {"kind": "train", "step": self.step, "loss": float(loss),
                   "accuracy": metric_accuracy(metrics), **scalars, f"{unit}_per_s": rate,
                   "images_per_s": self._images / max(now - t0, 1e-9),
                   "lr": self.optimizer.param_groups[0]["lr"], "elapsed_s": now - self.t_start}
            self._images = 0
            self.write(rec)
            terms = {k[5:]: v for k, v in scalars.items() if k.startswith("loss/")}
            bar.show(rec["loss"], rec["accuracy"], terms, rate, unit)
            n, t0 = 0, now
        self._window = (n, t0)
        return logged

    def start_callbacks(self, max_seconds: float | None) -> None:
        folder = self.folder.path if self.folder is not None else None
        for cb in self.callbacks:
            cb.on_fit_start(FitState(self.learner, self.optimizer, self.scheduler, self.start,
                                     self.steps, folder, self.device, self.rank, self.world_size,
                                     max_seconds))

    def train(self, max_seconds: float | None, progress: bool) -> bool:
        """The loop from ``start`` to ``steps`` (or the time budget); ``True`` if it stopped
        early. Ctrl-C writes a checkpoint first."""
        it: Iterator[Any] = iter(self.batches)
        self.start_callbacks(max_seconds)
        bar = TrainingBar(self.steps, self.start, max_seconds,
                          enabled=progress and self.main_rank)
        self.learner.train()
        self.t_start = time.perf_counter()
        self._window = (0, self.t_start)
        try:
            while self.step < self.steps:
                batch = move_batch(rank_slice(self.draw(it), self.rank, self.world_size),
                                   self.device, self.pin_memory)
                loss, metrics = self.update(batch)
                step = self.step
                for cb in self.callbacks:
                    cb.on_step_end(step, batch, loss, metrics, self.learner)
                logged = self.record(loss, metrics, batch, bar)
                bar.update(step, time.perf_counter() - self.t_start)
                if self.val_data is not None and step % self.val_every == 0 and step != self.steps:
                    self.validate(step)
                if step % self.checkpoint_every == 0:
                    self.checkpoint(step)
                if max_seconds is not None and time.perf_counter() - self.t_start > max_seconds:
                    bar.update(step, time.perf_counter() - self.t_start)  # the budget is used up
                    if not logged:  # the log ends at the step the run ended
                        self.write({"kind": "train", "step": step, "loss": float(loss),
                                    "accuracy": metric_accuracy(metrics),
                                    **loggable_metrics(metrics, _RESERVED),
                                    "lr": self.optimizer.param_groups[0]["lr"],
                                    "elapsed_s": time.perf_counter() - self.t_start})
                    return step < self.steps
        except KeyboardInterrupt:
            log.warning("interrupted at step %d: saving %s before stopping", self.step,
                        self.last_path)
            self.checkpoint(self.step)
            raise
        finally:
            bar.close()
        return False
