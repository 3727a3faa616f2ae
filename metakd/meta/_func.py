"""The torch.func backends: ``func`` (task by task) and ``vmap`` (chunks of tasks).

Both split a meta-batch into *units* (one task for ``func``, ``chunk`` tasks for ``vmap``),
compute each unit's query losses and meta-gradient, free its graph, and accumulate. Units
run one after the other or, with ``workers > 1``, in threads (each on its own replica of the
model, because ``functional_call`` swaps tensors into the module it is given). With
``compile=True`` a unit is one ``torch.compile``d pure function (see ``_compiled.py``).

Internal module: use :class:`~metakd.meta.MAMLWrapper`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from metakd.data.batch import TaskBatch
from metakd.meta._autocompile import (
    AUTO_COMPILE_AFTER_S,
    AutoCompiler,
    CompileEntry,
    release_free_memory,
)
from metakd.meta._backends import (
    Backend,
    InnerProblem,
    MAMLLearner,
    Mode,
    accuracy,
    buffer_writers,
    sgd_step,
    vmap_unsafe,
)
from metakd.meta._params import replicate

CompileMode = bool | Literal["auto"]

__all__ = [
    "AUTO_MIN_CHUNK",
    "CHUNK_ELEMENTS",
    "AutoBackend",
    "FuncBackend",
    "Unit",
    "VmapBackend",
    "auto_chunk",
]

# unit(model, batch of the unit's tasks) -> (losses [t], logits [t, NQ, N], d sum(losses)/d inputs)
Unit = Callable[[nn.Module, TaskBatch], tuple[Tensor, Tensor, Sequence[Tensor | None]]]


class FuncBackend(Backend):
    """``functional_call`` + ``torch.autograd.grad``, task after task (or in ``workers`` threads)."""

    name = "func"

    def __init__(
        self,
        problem: InnerProblem,
        workers: int | None = None,
        compile: CompileMode = False,
        compile_after_s: float = AUTO_COMPILE_AFTER_S,
    ) -> None:
        super().__init__(problem)
        self.workers = workers
        self.compile = compile
        self._replicas: list[nn.Module] = []
        self._replica_key: tuple[int, ...] = ()
        self.compiled: dict[Hashable, Callable[..., Any]] = {}
        self.auto_compiler = AutoCompiler(compile_after_s) if compile == "auto" else None

    # ------------------------------------------------------------------------------- adapt
    def adapt(
        self,
        sx: Tensor,
        sy: Tensor,
        steps: int,
        lrs: Mapping[str, float | Tensor],
        scale: float,
        mode: Mode,
        model: nn.Module | None = None,
    ) -> MAMLLearner:
        pb = self.problem
        model = pb.model if model is None else model
        meta = dict(model.named_parameters())
        params: dict[str, Tensor] = {n: meta[n] for n in pb.adapted}
        if mode == "none":
            params = {n: p.detach().requires_grad_() for n, p in params.items()}
        if steps > 0:
            with torch.enable_grad():
                h = None
                if not pb.per_step_bn:  # ANIL: features once; without a meta-graph at eval
                    with torch.no_grad() if mode == "none" else contextlib.nullcontext():
                        h = pb.encode(model, sx)
                for k in range(steps):
                    pb.set_step(model, k)
                    hk = pb.encode(model, sx) if h is None else h
                    loss = pb.inner_objective(pb.decode(model, params, hk), sy, scale)
                    grads = torch.autograd.grad(
                        loss,
                        list(params.values()),
                        create_graph=mode == "second",
                        allow_unused=True,
                    )
                    params = sgd_step(params, grads, lrs, mode)

        def forward(x: Tensor, _p: dict[str, Tensor] = params) -> Tensor:
            pb.set_step(model, steps - 1)
            return pb.decode(model, _p, pb.encode(model, x))

        return MAMLLearner(forward, params)

    # ---------------------------------------------------------------------- meta-gradients
    def unit_size(self, batch: TaskBatch, kept_steps: int = 1) -> int:
        """Tasks per unit for ``batch`` (``kept_steps``: see :func:`auto_chunk`)."""
        return 1

    def eager_unit(
        self,
        steps: int,
        lrs: Mapping[str, float | Tensor],
        scale: float,
        first_order: bool,
        inputs: Sequence[Tensor],
    ) -> Unit:
        mode: Mode = "first" if first_order else "second"
        pb = self.problem

        def unit(model: nn.Module, b: TaskBatch) -> tuple[Tensor, Tensor, Sequence[Tensor | None]]:
            learner = self.adapt(b.support_x[0], b.support_y[0], steps, lrs, scale, mode, model)
            logits = learner(b.query_x[0])
            loss = pb.loss_fn(logits, b.query_y[0])
            grads = torch.autograd.grad(loss, list(inputs), allow_unused=True)
            return loss[None], logits[None], grads

        return unit

    def meta_gradients(
        self,
        batch: TaskBatch,
        steps: int,
        lrs: Mapping[str, float | Tensor],
        scale: float,
        first_order: bool,
        inputs: Sequence[Tensor],
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        n = len(batch)
        size = self.unit_size(batch, 1 if first_order else steps)
        units = batch.slice_tasks_by(size)
        workers = self._resolve_workers(len(units))
        models = self._get_replicas(workers) if workers > 1 else [self.problem.model]
        auto, key = self.auto_compiler, None
        first_compiled: CompileEntry | None = None
        unit: Unit | None = None
        if self.compile is True:
            from metakd.meta._compiled import compiled_unit

            unit = compiled_unit(self, steps, lrs, scale, first_order, inputs)
        elif auto is not None:
            key = self._signature(batch, size, steps, lrs, scale, first_order, workers)
            entry = auto.ready(key)
            if entry is not None and entry.param_ids != self._param_ids():
                auto.invalidate(key)  # the model's tensors were replaced since the compile
            elif entry is not None:
                from metakd.meta._compiled import compiled_unit

                unit = compiled_unit(
                    self, steps, lrs, scale, first_order, inputs, cache=entry.cache
                )
                models, key = entry.models, None
                units, workers = batch.slice_tasks_by(entry.unit_size), len(entry.models)
                if not entry.released:
                    first_compiled = entry
        if unit is None:
            unit = self.eager_unit(steps, lrs, scale, first_order, inputs)
        started = time.perf_counter()
        results: list[tuple[Tensor, Tensor] | None] = [None] * len(units)
        partial = [[torch.zeros_like(t) for t in inputs] for _ in range(workers)]

        def work(w: int) -> None:
            for u in range(w, len(units), workers):
                b = units[u]
                losses, logits, grads = unit(models[w], b)
                for acc, g in zip(partial[w], grads):
                    if g is not None:
                        acc.add_(g, alpha=1.0 / n)
                results[u] = (losses.detach(), accuracy(logits.detach(), b.query_y))

        if workers > 1:
            run_threads(work, workers)
        else:
            work(0)
        grads = partial[0] if workers == 1 else [torch.stack(g).sum(0) for g in zip(*partial)]
        done = [r for r in results if r is not None]
        if first_compiled is not None:  # the eager phase's freed memory goes back to the OS
            first_compiled.released = True
            release_free_memory()
        if auto is not None and key is not None:

            def prepare() -> Callable[[CompileEntry], None] | None:
                # Called only when the signature crosses the threshold, not on every batch.
                c_size, c_workers = self.compiled_layout(batch, size, workers)
                if not self._compilable(batch, c_size):
                    return None
                sample = batch.slice_tasks_by(c_size)[0]
                return self._compile_job(steps, lrs, scale, first_order, inputs, sample, c_workers)

            auto.record(key, time.perf_counter() - started, prepare)
        return torch.cat([r[0] for r in done]), torch.cat([r[1] for r in done]), grads

    # ----------------------------------------------------------------- compile="auto" policy
    def compiled_layout(self, batch: TaskBatch, size: int, workers: int) -> tuple[int, int]:
        """(tasks per unit, worker threads) of the compiled units: here the eager ones."""
        return size, workers

    def _param_ids(self) -> tuple[int, ...]:
        model = self.problem.model
        return tuple(id(t) for t in (*model.parameters(), *model.buffers()))

    def _signature(
        self,
        batch: TaskBatch,
        size: int,
        steps: int,
        lrs: Mapping[str, float | Tensor],
        scale: float,
        first_order: bool,
        workers: int,
    ) -> Hashable:
        """What a compiled unit is specialised to (``dynamic=False``: shapes included)."""
        learned = any(isinstance(v, Tensor) for v in lrs.values())
        lr_key = "learned" if learned else tuple(sorted((n, float(v)) for n, v in lrs.items()))
        x = batch.support_x
        # The whole shapes, task count included: the compiled units' layout depends on it.
        return (
            self.name, size, workers, steps, first_order, scale, lr_key,
            tuple(x.shape), tuple(batch.query_x.shape), x.dtype, x.device.type,
        )

    def _compilable(self, batch: TaskBatch, size: int) -> bool:
        """Whether ``compile="auto"`` may compile this meta-batch's units.

        Not for per-step or running-statistics BatchNorm (``compile=True`` refuses them),
        not when the last unit would be smaller (a second shape to compile), and only on
        CPU, the one device measured.
        """
        pb = self.problem
        if pb.per_step_bn or buffer_writers(pb.model) or len(batch) % size:
            return False
        if self.name == "vmap" and vmap_unsafe(pb.model) is not None:
            return False
        return all(p.device.type == "cpu" for p in pb.model.parameters())

    def _compile_job(
        self,
        steps: int,
        lrs: Mapping[str, float | Tensor],
        scale: float,
        first_order: bool,
        inputs: Sequence[Tensor],
        sample: TaskBatch,
        workers: int,
    ) -> Callable[[CompileEntry], None]:
        """Make replicas here, in the calling thread (``functional_call`` is not running on
        the model now), and return the background job that compiles the unit on them by
        running it once on each."""
        param_ids = self._param_ids()
        models = [replicate(self.problem.model) for _ in range(workers)]
        for model in models:
            model.train(self.problem.model.training)
        # The intra-op threads the units will run with (run_threads splits them over the
        # workers): Dynamo guards on torch.get_num_threads(), so a unit compiled under another
        # count would be compiled again on its first real call, in the training loop.
        threads = torch.get_num_threads()
        intra = max(1, threads // workers) if workers > 1 else threads

        def job(entry: CompileEntry) -> None:
            from metakd.meta._compiled import compiled_unit

            unit = compiled_unit(self, steps, lrs, scale, first_order, inputs, cache=entry.cache)
            with _intra_op_threads(intra):
                for model in models:
                    unit(model, sample)
            entry.models, entry.param_ids, entry.unit_size = models, param_ids, len(sample)

        return job

    def _resolve_workers(self, units: int) -> int:
        """How many threads to use for ``units`` units (see ``MAMLWrapper``'s ``workers``)."""
        model = self.problem.model
        writers = buffer_writers(model)
        if self.workers is None:
            on_cpu = all(p.device.type == "cpu" for p in model.parameters())
            # Two workers on CPU: measured faster than one (benchmarks/maml_speed.py); more
            # would multiply the memory held by task graphs for little gain.
            workers = 2 if on_cpu and torch.get_num_threads() >= 2 and not writers else 1
        else:
            workers = self.workers
            if workers > 1 and writers:
                raise ValueError(
                    f"workers={workers}: {writers} update running BatchNorm statistics in "
                    "train() mode, which concurrent tasks would race on; use workers=1, "
                    "bn_mode='transductive' or model.eval()"
                )
        return max(1, min(workers, units))

    def _get_replicas(self, workers: int) -> list[nn.Module]:
        model = self.problem.model
        key = tuple(id(t) for t in (*model.parameters(), *model.buffers()))
        if key != self._replica_key or len(self._replicas) < workers:
            self._replicas = [replicate(model) for _ in range(workers)]
            self._replica_key = key
            self.compiled.clear()
        for r in self._replicas:
            r.train(model.training)
        return self._replicas


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

# Most tasks per compiled vmap chunk (VmapBackend.compiled_layout).
COMPILED_CHUNK = 8


def auto_chunk(batch: TaskBatch, kept_steps: int = 1) -> int:
    """Tasks per vmap call for ``batch``: as many as fit in :data:`CHUNK_ELEMENTS` inputs.

    ``kept_steps`` is the number of inner steps whose graph the meta-gradient keeps (the
    inner steps in second order, else 1); each counts the support images once. The tasks
    are then spread evenly: 32 tasks with room for 10 a chunk run as 4 chunks of 8.
    """
    per_task = batch.support_x[0].numel() * max(kept_steps, 1) + batch.query_x[0].numel()
    return _even_chunk(len(batch), CHUNK_ELEMENTS // max(per_task, 1))


def _even_chunk(tasks: int, most: int) -> int:
    """Tasks per chunk when ``tasks`` are spread evenly over chunks of at most ``most``."""
    most = max(1, min(tasks, most))
    chunks = -(-tasks // most)
    return -(-tasks // chunks)


@contextmanager
def _intra_op_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_threads(work: Callable[[int], None], workers: int) -> None:
    """Run ``work(0..workers-1)`` in threads that share the intra-op threads; re-raise errors.

    Task-level parallelism scales better than intra-op parallelism here: a task's tensors are
    small (5 to 75 images), so each op's OpenMP fork/join and the idle core at every barrier
    cost a good part of the op itself.
    """
    errors: list[BaseException] = []
    per_worker = max(1, torch.get_num_threads() // workers)

    def target(w: int) -> None:
        try:
            with _intra_op_threads(per_worker):
                work(w)
        except BaseException as e:  # re-raised in the calling thread below
            errors.append(e)

    with _intra_op_threads(per_worker):
        threads = [threading.Thread(target=target, args=(w,)) for w in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]


class VmapBackend(FuncBackend):
    """``torch.func.vmap`` over chunks of tasks, ``torch.func.grad`` for the inner steps.

    Single-task :meth:`adapt` is the func backend's.
    """

    name = "vmap"

    def __init__(
        self,
        problem: InnerProblem,
        chunk: int | None = None,
        workers: int | None = None,
        compile: CompileMode = False,
        compile_after_s: float = AUTO_COMPILE_AFTER_S,
    ) -> None:
        super().__init__(problem, workers, compile=compile, compile_after_s=compile_after_s)
        self.chunk = chunk

    def unit_size(self, batch: TaskBatch, kept_steps: int = 1) -> int:
        if self.chunk is not None:
            return self.chunk
        return auto_chunk(batch, kept_steps)

    def compiled_layout(self, batch: TaskBatch, size: int, workers: int) -> tuple[int, int]:
        """Compiled chunks of at most :data:`COMPILED_CHUNK` tasks, one at a time.

        Eager vmap is fastest in one wide chunk (fewer, larger ops); compiled, the per-op
        overhead is gone and smaller chunks were as fast or faster, with a fraction of the
        graph in memory. Measured in one run (maml_omniglot, 1 query per class, meta-batch
        32, second order, best of 2 interleaved rounds; tasks/s and peak RSS against
        learn2learn): 1 step, chunks of 8 one at a time 182.0 (3.24x, 1.04x), chunks of 8 in
        2 threads 147.1 (2.62x, 1.12x), one chunk of 32 141.5 (2.52x, 1.22x); 5 steps,
        33.7 (2.81x, 1.18x), 36.6 (3.05x, 1.39x) and 36.8 (3.07x, 1.70x). A ``vmap_chunk``
        or ``workers`` given by the user is kept.
        """
        if self.chunk is not None or self.workers is not None or size <= COMPILED_CHUNK:
            return size, workers
        c_size = _even_chunk(len(batch), COMPILED_CHUNK)
        if len(batch) % c_size:
            return size, workers
        return c_size, 1

    def _resolve_workers(self, units: int) -> int:
        # A chunk is already a batch of tasks: by default one chunk at a time, which keeps
        # memory at one chunk's graph.
        if self.workers is None:
            return 1
        return super()._resolve_workers(units)

    def task_fn(
        self,
        model: nn.Module,
        steps: int,
        lrs: Mapping[str, float | Tensor],
        scale: float,
        first_order: bool,
    ) -> Callable[..., tuple[Tensor, Tensor]]:
        """``vmap`` of one task's ``(query loss, query logits)`` over the tasks of a chunk."""
        reason = vmap_unsafe(model)
        if reason is not None:
            raise ValueError(f"backend='vmap': {reason}")
        pb = self.problem
        meta = dict(model.named_parameters())
        init: dict[str, Tensor] = {n: meta[n] for n in pb.adapted}

        def task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
            hs = None if pb.per_step_bn else pb.encode(model, sx)

            def inner(p: dict[str, Tensor]) -> Tensor:
                h = pb.encode(model, sx) if hs is None else hs
                return pb.inner_objective(pb.decode(model, p, h), sy, scale)

            p = init
            for k in range(steps):
                pb.set_step(model, k)
                g = torch.func.grad(inner)(p)
                p = {n: p[n] - lrs[n] * (g[n].detach() if first_order else g[n]) for n in p}
            pb.set_step(model, steps - 1)
            logits = pb.decode(model, p, pb.encode(model, qx))
            return pb.loss_fn(logits, qy), logits

        return torch.func.vmap(task, randomness="different")

    def eager_unit(
        self,
        steps: int,
        lrs: Mapping[str, float | Tensor],
        scale: float,
        first_order: bool,
        inputs: Sequence[Tensor],
    ) -> Unit:
        fns: dict[int, Callable[..., tuple[Tensor, Tensor]]] = {}

        def unit(model: nn.Module, b: TaskBatch) -> tuple[Tensor, Tensor, Sequence[Tensor | None]]:
            fn = fns.get(id(model))
            if fn is None:
                fn = fns[id(model)] = self.task_fn(model, steps, lrs, scale, first_order)
            losses, logits = fn(b.support_x, b.support_y, b.query_x, b.query_y)
            grads = torch.autograd.grad(losses.sum(), list(inputs), allow_unused=True)
            return losses, logits, grads

        return unit

    def evaluate(
        self,
        batch: TaskBatch,
        steps: int,
        lrs: Mapping[str, float | Tensor],
        scale: float,
    ) -> tuple[Tensor, Tensor]:
        fn = self.task_fn(self.problem.model, steps, lrs, scale, first_order=True)
        losses, accs = [], []
        # torch.func.grad ignores an outer no_grad, so the inner steps still get gradients.
        with torch.no_grad():
            for b in batch.slice_tasks_by(self.unit_size(batch)):
                loss, logits = fn(b.support_x, b.support_y, b.query_x, b.query_y)
                losses.append(loss)
                accs.append(accuracy(logits, b.query_y))
        return torch.cat(losses), torch.cat(accs)


# A meta-batch goes to vmap when at least this many tasks fit in one chunk (auto_chunk).
AUTO_MIN_CHUNK = 8


class AutoBackend(Backend):
    """``backend="auto"``: ``vmap`` for meta-batches of small tasks, ``func`` otherwise.

    Measured on the 2-core CPU (maml_omniglot, second order, meta-batch 32, eager, same run;
    figures in :func:`metakd.meta.default_backend` and docs/benchmarks.md): with 1 query per
    class one vmap chunk of 32 tasks is 2.2-2.5x faster than func, with 15 queries func in 2
    threads is 1.6x faster than vmap in chunks of 4.
    Small tasks are overhead-bound and a wide vmap turns 32 small ops into one; large ones are
    compute-bound and the per-task path wins. So a batch goes to vmap when
    :func:`auto_chunk` puts at least :data:`AUTO_MIN_CHUNK` tasks in a chunk and the model is
    vmap-safe (no running-statistics BatchNorm in ``train()``), else to func.
    """

    name = "auto"

    def __init__(
        self,
        problem: InnerProblem,
        workers: int | None = None,
        compile: CompileMode = False,
        compile_after_s: float = AUTO_COMPILE_AFTER_S,
    ) -> None:
        super().__init__(problem)
        self.func = FuncBackend(
            problem, workers=workers, compile=compile, compile_after_s=compile_after_s
        )
        self.vmap = VmapBackend(
            problem, chunk=None, workers=None, compile=compile, compile_after_s=compile_after_s
        )

    def pick(self, batch: TaskBatch, kept_steps: int = 1) -> FuncBackend:
        """The backend that runs ``batch`` (``kept_steps``: see :func:`auto_chunk`)."""
        if (
            auto_chunk(batch, kept_steps) >= AUTO_MIN_CHUNK
            and vmap_unsafe(self.problem.model) is None
        ):
            return self.vmap
        return self.func

    def adapt(
        self,
        sx: Tensor,
        sy: Tensor,
        steps: int,
        lrs: Mapping[str, float | Tensor],
        scale: float,
        mode: Mode,
    ) -> MAMLLearner:
        return self.func.adapt(sx, sy, steps, lrs, scale, mode)

    def meta_gradients(
        self,
        batch: TaskBatch,
        steps: int,
        lrs: Mapping[str, float | Tensor],
        scale: float,
        first_order: bool,
        inputs: Sequence[Tensor],
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        backend = self.pick(batch, 1 if first_order else steps)
        return backend.meta_gradients(batch, steps, lrs, scale, first_order, inputs)

    def evaluate(
        self,
        batch: TaskBatch,
        steps: int,
        lrs: Mapping[str, float | Tensor],
        scale: float,
    ) -> tuple[Tensor, Tensor]:
        return self.pick(batch).evaluate(batch, steps, lrs, scale)
