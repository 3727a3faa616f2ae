"""The torch.func paths: ``func`` (task by task) and ``vmap`` (chunks of tasks), and ``auto``.

Both split a meta-batch into *units* (one task for ``func``, ``chunk`` tasks for ``vmap``),
compute each unit's query terms and meta-gradient with :func:`metakd.meta.inner.run_task`,
and hand them to the outer loop (:func:`metakd.meta.outer.accumulate`), which frees each
unit's graph and accumulates. Units run one after the other, eagerly. An
:class:`Accelerator` set on a backend (``backend.accel``, by
:func:`metakd.meta.accel.accelerate`) may run them in threads on model replicas or replace
the eager unit by a compiled one; this module does not import it.

Internal module: use :class:`~metakd.meta.MAMLWrapper`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from metakd.data.batch import TaskBatch
from metakd.meta._backends import Backend, MAMLLearner, task_extras, vmap_unsafe, zero_filled
from metakd.meta.inner import InnerLoop, Mode, autograd_grad, func_grad, run_task
from metakd.meta.objectives import total
from metakd.meta.outer import MetaParams, OuterResult, Terms, accumulate, cat_terms

__all__ = [
    "AUTO_MIN_CHUNK",
    "CHUNK_ELEMENTS",
    "Accelerator",
    "AutoBackend",
    "FuncBackend",
    "Unit",
    "VmapBackend",
    "auto_chunk",
    "even_chunk",
]

# unit(model, batch of the unit's tasks, meta_step) -> (terms {name: [t]}, logits [t, NQ, N],
# d sum_t(total terms) / d inputs)
Unit = Callable[[nn.Module, TaskBatch, Tensor], tuple[Terms, Tensor, Sequence[Tensor | None]]]


class Accelerator(Protocol):
    """What a func or vmap backend asks of its opt-in acceleration (``backend.accel``)."""

    def workers(self, backend: FuncBackend, units: int) -> int:
        """Threads for ``units`` units."""

    def unit_size(self, backend: FuncBackend, batch: TaskBatch) -> int | None:
        """Tasks per unit, or ``None`` for the backend's own choice."""

    def replicas(self, backend: FuncBackend, workers: int) -> list[nn.Module]:
        """One model per worker thread."""

    def unit(self, backend: FuncBackend, steps: int, first_order: bool,
             inputs: MetaParams) -> Unit | None:
        """A unit to run instead of the eager one, or ``None``."""

    def parallel(self, work: Callable[[int], None], workers: int) -> None:
        """Run ``work(0..workers-1)`` concurrently."""

    def after_batch(self) -> None:
        """Called after each meta-batch."""


def even_chunk(tasks: int, most: int) -> int:
    """Tasks per chunk when ``tasks`` are spread evenly over chunks of at most ``most``."""
    most = max(1, min(tasks, most))
    chunks = -(-tasks // most)
    return -(-tasks // chunks)


class FuncBackend(Backend):
    """``torch.autograd.grad`` task after task."""

    name = "func"

    def __init__(self, loop: InnerLoop) -> None:
        super().__init__(loop)
        self.accel: Accelerator | None = None  # set by metakd.meta.accel.accelerate

    # ------------------------------------------------------------------------------- adapt
    def adapt(
        self, sx: Tensor, sy: Tensor, extras: Mapping[str, Tensor], steps: int, mode: Mode,
        model: nn.Module | None = None,
    ) -> MAMLLearner:
        loop = self.loop
        model = loop.model if model is None else model
        grad = autograd_grad(create_graph=mode == "second" and not loop.constant_grads)
        with torch.enable_grad():
            params, _, _ = run_task(loop, model, sx, sy, None, None, extras, steps, mode, grad)

        def forward(x: Tensor, _p: dict[str, Tensor] = params) -> Tensor:
            loop.set_step(model, steps - 1)
            return loop.decode(model, _p, loop.encode(model, x, None), None)

        return MAMLLearner(forward, params)

    # ---------------------------------------------------------------------- meta-gradients
    def unit_size(self, batch: TaskBatch, kept_steps: int = 1) -> int:
        """Tasks per unit for ``batch`` (``kept_steps``: see :func:`auto_chunk`)."""
        return 1

    def eager_unit(self, steps: int, first_order: bool, inputs: MetaParams) -> Unit:
        mode: Mode = "first" if first_order else "second"
        loop = self.loop
        grad = autograd_grad(create_graph=mode == "second" and not loop.constant_grads)

        def unit(model: nn.Module, b: TaskBatch, meta_step: Tensor) -> tuple[Terms, Tensor, Sequence[Tensor | None]]:
            _, terms, logits = run_task(
                loop, model, b.support_x[0], b.support_y[0], b.query_x[0], b.query_y[0],
                task_extras(b, 0), steps, mode, grad, meta_step,
            )
            assert terms is not None and logits is not None
            grads = torch.autograd.grad(total(terms), inputs.flat, allow_unused=True)
            return {k: v[None] for k, v in terms.items()}, logits[None], grads

        return unit

    def meta_gradients(
        self,
        batch: TaskBatch,
        steps: int,
        first_order: bool,
        inputs: MetaParams,
        meta_step: Tensor,
    ) -> OuterResult:
        n = len(batch)
        units = batch.slice_tasks_by(self.unit_size(batch, 1 if first_order else steps))
        workers = self._resolve_workers(len(units))
        acc = self.accel
        models = acc.replicas(self, workers) if acc is not None and workers > 1 else [
            self.loop.model]
        unit = None if acc is None else acc.unit(self, steps, first_order, inputs)
        fn = self.eager_unit(steps, first_order, inputs) if unit is None else unit

        def run(w: int, b: TaskBatch) -> tuple[Terms, Tensor, Sequence[Tensor | None]]:
            return fn(models[w], b, meta_step)

        result = accumulate(units, run, inputs.flat, weight=1.0 / n, workers=workers,
                            parallel=None if acc is None else acc.parallel)
        if acc is not None:
            acc.after_batch()
        return zero_filled(result, inputs.flat)

    def _resolve_workers(self, units: int) -> int:
        """Threads for ``units`` units: 1 unless an accelerator says otherwise (the default
        path starts no threads of its own)."""
        return 1 if self.accel is None else self.accel.workers(self, units)


# Input elements (images x channels x pixels) per vmap chunk when ``chunk=None``: 320 Omniglot
# images of 28 x 28, where a second-order task counts its support images once per inner step
# (the graph of every step is kept for the meta-gradient). Measured in one run on random 28 px
# tasks (2-core CPU, maml_omniglot, meta-batch 32, second order):
# - speed, 1 inner step: with 1 query per class (10 images a task) chunks of 8/16/32 tasks ran
#   at 71/81/89 tasks/s; with 15 queries (80 images a task) chunks of 2/4/8/16 ran at
#   18.6/18.3/16.9/15.2. Small tasks gain from wide vmaps (fewer, larger ops); large ones lose
#   (the grouped convolutions and their graphs outgrow the caches).
# - memory, 5 inner steps, 1 query per class: a chunk of 32 tasks ran at 30.0 tasks/s with a
#   peak RSS of 1,523 MB (1.90x learn2learn's 804 MB), chunks of 8 at 25.4 tasks/s and 968 MB
#   (1.20x); learn2learn 16.2 tasks/s. Counting the support once per step gives chunks of 8.
CHUNK_ELEMENTS = 320 * 28 * 28


def auto_chunk(batch: TaskBatch, kept_steps: int = 1) -> int:
    """Tasks per vmap call for ``batch``: as many as fit in :data:`CHUNK_ELEMENTS` inputs.

    ``kept_steps`` is the number of inner steps whose graph the meta-gradient keeps (the
    inner steps in second order, else 1); each counts the support images once. The tasks
    are then spread evenly: 32 tasks with room for 10 a chunk run as 4 chunks of 8.
    """
    per_task = batch.support_x[0].numel() * max(kept_steps, 1) + batch.query_x[0].numel()
    return even_chunk(len(batch), CHUNK_ELEMENTS // max(per_task, 1))


class VmapBackend(FuncBackend):
    """``torch.func.vmap`` over chunks of tasks, ``torch.func.grad_and_value`` for the inner
    steps. Single-task :meth:`adapt` is the func backend's."""

    name = "vmap"

    def __init__(self, loop: InnerLoop, chunk: int | None = None) -> None:
        super().__init__(loop)
        self.chunk = chunk

    def unit_size(self, batch: TaskBatch, kept_steps: int = 1) -> int:
        if self.chunk is not None:
            return self.chunk
        size = None if self.accel is None else self.accel.unit_size(self, batch)
        return auto_chunk(batch, kept_steps) if size is None else size

    def task_fn(self, model: nn.Module, steps: int, mode: Mode) -> Callable[..., tuple[Terms, Tensor]]:
        """``vmap`` of one task's ``(query terms, query logits)`` over the tasks of a chunk."""
        reason = vmap_unsafe(model)
        if reason is not None:
            raise ValueError(f"backend='vmap': {reason}")
        loop = self.loop

        def task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, extras: dict[str, Tensor],
                 meta_step: Tensor) -> tuple[Terms, Tensor]:
            _, terms, logits = run_task(
                loop, model, sx, sy, qx, qy, extras, steps, mode, func_grad, meta_step
            )
            assert terms is not None and logits is not None
            return terms, logits

        return torch.func.vmap(task, in_dims=(0, 0, 0, 0, 0, None), randomness="different")

    def eager_unit(self, steps: int, first_order: bool, inputs: MetaParams) -> Unit:
        fns: dict[int, Callable[..., tuple[Terms, Tensor]]] = {}
        mode: Mode = "first" if first_order else "second"

        def unit(model: nn.Module, b: TaskBatch, meta_step: Tensor) -> tuple[Terms, Tensor, Sequence[Tensor | None]]:
            fn = fns.get(id(model))
            if fn is None:
                fn = fns[id(model)] = self.task_fn(model, steps, mode)
            terms, logits = fn(b.support_x, b.support_y, b.query_x, b.query_y, dict(b.extras),
                               meta_step)
            grads = torch.autograd.grad(total(terms).sum(), inputs.flat, allow_unused=True)
            return terms, logits, grads

        return unit

    def predict(self, batch: TaskBatch, steps: int, meta_step: Tensor) -> tuple[Terms, Tensor]:
        fn = self.task_fn(self.loop.model, steps, "none")
        terms, logits = [], []
        # torch.func.grad ignores an outer no_grad, so the inner steps still get gradients.
        with torch.no_grad():
            for b in batch.slice_tasks_by(auto_chunk(batch)):
                t, lg = fn(b.support_x, b.support_y, b.query_x, b.query_y, dict(b.extras),
                           meta_step)
                terms.append(t)
                logits.append(lg)
        return cat_terms(terms), torch.cat(logits)


# A meta-batch goes to vmap when at least this many tasks fit in one chunk (auto_chunk).
AUTO_MIN_CHUNK = 8


class AutoBackend(Backend):
    """``backend="auto"``: ``vmap`` for meta-batches of small tasks, ``func`` otherwise.

    Measured on the 2-core CPU (maml_omniglot, second order, meta-batch 32, eager, same run;
    figures in :func:`metakd.meta.default_backend` and docs/benchmarks.md): with 1 query per
    class one vmap chunk of 32 tasks is 2.2-2.5x faster than func, with 15 queries func is
    faster than vmap in chunks of 4. Small tasks are overhead-bound and a wide vmap turns 32
    small ops into one; large ones are compute-bound and the per-task path wins. So a batch
    goes to vmap when :func:`auto_chunk` puts at least :data:`AUTO_MIN_CHUNK` tasks in a chunk
    and the model is vmap-safe (no running-statistics BatchNorm in ``train()``), else to
    func. The choice depends on the batch's shapes only, so a run's numbers never change.
    """

    name = "auto"

    def __init__(self, loop: InnerLoop) -> None:
        super().__init__(loop)
        self.func = FuncBackend(loop)
        self.vmap = VmapBackend(loop, chunk=None)

    def pick(self, batch: TaskBatch, kept_steps: int = 1) -> FuncBackend:
        """The backend that runs ``batch`` (``kept_steps``: see :func:`auto_chunk`)."""
        if (
            auto_chunk(batch, kept_steps) >= AUTO_MIN_CHUNK
            and vmap_unsafe(self.loop.model) is None
        ):
            return self.vmap
        return self.func

    def adapt(
        self, sx: Tensor, sy: Tensor, extras: Mapping[str, Tensor], steps: int, mode: Mode
    ) -> MAMLLearner:
        return self.func.adapt(sx, sy, extras, steps, mode)

    def meta_gradients(
        self, batch: TaskBatch, steps: int, first_order: bool, inputs: MetaParams,
        meta_step: Tensor,
    ) -> OuterResult:
        backend = self.pick(batch, 1 if first_order else steps)
        return backend.meta_gradients(batch, steps, first_order, inputs, meta_step)

    def predict(self, batch: TaskBatch, steps: int, meta_step: Tensor) -> tuple[Terms, Tensor]:
        return self.pick(batch).predict(batch, steps, meta_step)

