"""The torch.func paths: ``func`` (task by task) and ``vmap`` (chunks of tasks), and ``auto``.

Both split a meta-batch into *units* (one task for ``func``, ``chunk`` tasks for ``vmap``),
compute each unit's query terms and meta-gradient with :func:`metakd.meta.inner.run_task`,
free its graph, and accumulate. Units run one after the other; ``workers > 1`` (opt-in) and
``compile=True`` (opt-in) are the accelerations of :mod:`metakd.meta.accel`.

Internal module: use :class:`~metakd.meta.MAMLWrapper`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from metakd.data.batch import TaskBatch
from metakd.meta import accel
from metakd.meta._backends import (
    Backend,
    MAMLLearner,
    Terms,
    buffer_writers,
    cat_terms,
    task_extras,
    vmap_unsafe,
)
from metakd.meta.inner import InnerLoop, Mode, autograd_grad, func_grad, run_task
from metakd.meta.objectives import total

__all__ = [
    "AUTO_MIN_CHUNK",
    "CHUNK_ELEMENTS",
    "AutoBackend",
    "FuncBackend",
    "MetaInputs",
    "Unit",
    "VmapBackend",
    "auto_chunk",
]

# unit(model, batch of the unit's tasks, meta_step) -> (terms {name: [t]}, logits [t, NQ, N],
# d sum_t(total terms) / d inputs)
Unit = Callable[[nn.Module, TaskBatch, Tensor], tuple[Terms, Tensor, Sequence[Tensor | None]]]


class MetaInputs:
    """The meta-parameters a meta-gradient is taken with respect to, grouped by the module
    they belong to (``model``, ``rule``, ``support``, ``objective``), each tensor once."""

    def __init__(self, groups: Mapping[str, Mapping[str, Tensor]]) -> None:
        seen: set[int] = set()
        self.groups: dict[str, dict[str, Tensor]] = {}
        for g, named in groups.items():
            kept = {}
            for n, t in named.items():
                if id(t) not in seen:
                    seen.add(id(t))
                    kept[n] = t
            self.groups[g] = kept
        self.flat: list[Tensor] = [t for named in self.groups.values() for t in named.values()]

    def __len__(self) -> int:
        return len(self.flat)


class FuncBackend(Backend):
    """``torch.autograd.grad`` task after task (or in ``workers`` threads, opt-in)."""

    name = "func"

    def __init__(self, loop: InnerLoop, workers: int | None = None, compile: bool = False) -> None:
        super().__init__(loop)
        self.workers = workers
        self.compile = compile
        self.threads = accel.TaskThreads(loop.model)
        self.compiled = accel.CompiledUnits()

    def __getstate__(self) -> dict[str, object]:
        # copy.deepcopy / pickle: replicas and compiled functions are rebuilt on demand.
        state = dict(self.__dict__)
        state["threads"] = accel.TaskThreads(self.loop.model)
        state["compiled"] = accel.CompiledUnits()
        return state

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

    def eager_unit(self, steps: int, first_order: bool, inputs: MetaInputs) -> Unit:
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
        inputs: MetaInputs,
        meta_step: Tensor,
    ) -> tuple[Terms, Tensor, list[Tensor]]:
        n = len(batch)
        units = batch.slice_tasks_by(self.unit_size(batch, 1 if first_order else steps))
        workers = self._resolve_workers(len(units))
        models = self.threads.replicas(workers) if workers > 1 else [self.loop.model]
        if self.compile:
            unit = self.compiled.unit(self, steps, first_order, inputs)
        else:
            unit = self.eager_unit(steps, first_order, inputs)
        results: list[tuple[Terms, Tensor] | None] = [None] * len(units)
        partial = [[torch.zeros_like(t) for t in inputs.flat] for _ in range(workers)]

        def work(w: int) -> None:
            for u in range(w, len(units), workers):
                terms, logits, grads = unit(models[w], units[u], meta_step)
                for acc, g in zip(partial[w], grads):
                    if g is not None:
                        acc.add_(g, alpha=1.0 / n)
                results[u] = ({k: v.detach() for k, v in terms.items()}, logits.detach())

        if workers > 1:
            accel.run_threads(work, workers)
        else:
            work(0)
        if self.compile:
            self.compiled.after_first_batch()
        grads = partial[0] if workers == 1 else [torch.stack(g).sum(0) for g in zip(*partial)]
        done = [r for r in results if r is not None]
        return cat_terms([r[0] for r in done]), torch.cat([r[1] for r in done]), grads

    def _resolve_workers(self, units: int) -> int:
        """Threads for ``units`` units: ``workers`` when given; else 1 eager (the default path
        starts no threads of its own) and :data:`accel.COMPILED_WORKERS` compiled on CPU."""
        workers = self.workers
        if workers is None:
            model = self.loop.model
            on_cpu = all(p.device.type == "cpu" for p in model.parameters())
            workers = 1
            if self.compile and on_cpu and torch.get_num_threads() >= 2 and not buffer_writers(model):
                workers = accel.COMPILED_WORKERS
        if workers > 1:
            writers = buffer_writers(self.loop.model)
            if writers:
                raise ValueError(
                    f"workers={workers}: {writers} update running BatchNorm statistics in "
                    "train() mode, which concurrent tasks would race on; use workers=1, "
                    "bn_mode='transductive' or model.eval()"
                )
        return max(1, min(workers, units))


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
    return accel.even_chunk(len(batch), CHUNK_ELEMENTS // max(per_task, 1))


class VmapBackend(FuncBackend):
    """``torch.func.vmap`` over chunks of tasks, ``torch.func.grad_and_value`` for the inner
    steps. Single-task :meth:`adapt` is the func backend's."""

    name = "vmap"

    def __init__(
        self, loop: InnerLoop, chunk: int | None = None, workers: int | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(loop, workers, compile=compile)
        self.chunk = chunk

    def unit_size(self, batch: TaskBatch, kept_steps: int = 1) -> int:
        if self.chunk is not None:
            return self.chunk
        if self.compile:  # compiled: the per-op overhead is gone, small chunks are as fast
            return accel.even_chunk(len(batch), accel.COMPILED_CHUNK)
        return auto_chunk(batch, kept_steps)

    def _resolve_workers(self, units: int) -> int:
        # A chunk is already a batch of tasks: by default one chunk at a time, compiled too
        # (see accel.COMPILED_CHUNK), which keeps memory at one chunk's graph.
        if self.workers is None:
            return 1
        return super()._resolve_workers(units)

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

    def eager_unit(self, steps: int, first_order: bool, inputs: MetaInputs) -> Unit:
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

    def __init__(self, loop: InnerLoop, workers: int | None = None, compile: bool = False) -> None:
        super().__init__(loop)
        self.func = FuncBackend(loop, workers=workers, compile=compile)
        self.vmap = VmapBackend(loop, chunk=None, workers=None, compile=compile)

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
        self, batch: TaskBatch, steps: int, first_order: bool, inputs: MetaInputs,
        meta_step: Tensor,
    ) -> tuple[Terms, Tensor, list[Tensor]]:
        backend = self.pick(batch, 1 if first_order else steps)
        return backend.meta_gradients(batch, steps, first_order, inputs, meta_step)

    def predict(self, batch: TaskBatch, steps: int, meta_step: Tensor) -> tuple[Terms, Tensor]:
        return self.pick(batch).predict(batch, steps, meta_step)

