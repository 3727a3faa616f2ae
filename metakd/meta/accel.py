"""The accelerations of MAML's meta-gradient, all in one place: compilation, worker
threads, and the C heap's settings. No module of the core imports this one at module
level: :func:`accelerate` applies it to a built meta-learner, from outside, and
``MAMLWrapper(..., compile=, workers=)`` is a shorthand for that call.

``compile="auto"`` (``MAMLWrapper``'s default)
    Decided once, at the first meta-batch, from the model alone: compiled as with
    ``compile=True`` where the compiled path runs the model (CPU or CUDA; no per-step batch
    norm, no running statistics updated in ``train()``; see :func:`compile_obstacle`), eager
    otherwise or where the environment says so (``METAKD_COMPILE=0``, or PyTorch's
    ``TORCH_COMPILE_DISABLE=1``). If compiling fails before any compiled meta-batch has run,
    the run goes on eager with one warning. Either way the decision holds for the whole run,
    so its numbers never change mid-run.
``compile=True``
    Each unit (one task, or one vmap chunk of tasks) becomes one ``torch.compile``d pure
    function of the meta-parameters: the inner steps with ``torch.func.grad_and_value``, the
    query terms, and their gradient with respect to every meta-parameter, all from
    :func:`metakd.meta.inner.run_task`, so TorchInductor sees one forward graph with no
    autograd around it and fuses the elementwise work of batch norm, ReLU and the backward
    passes. It compiles at the first meta-batch (and waits); Inductor's on-disk cache makes
    later processes skip most of the first compile. A run compiled from step 0 stays compiled:
    its numbers never change mid-run.
The C heap
    On a CPU, ``compile="auto"`` and ``compile=True`` keep the memory a meta-batch frees in
    the process's heap for the next one (:func:`metakd.engine.keep_freed_memory`, set at the
    first meta-batch, once per process, unless the environment says otherwise): with glibc's
    defaults every meta-batch faults its activation maps' pages in again. It changes no
    number; ``compile=False`` leaves the heap alone.
``workers=N``
    ``N`` threads run units concurrently (compiled func units: 2 by default on CPU), each on
    a replica of the model that shares its tensors (``functional_call`` swaps tensors into
    the module it is given, so two threads must not share one), splitting the intra-op
    threads between them.
"""

from __future__ import annotations

import copy
import gc
import itertools
import logging
import os
import threading
import types
import warnings
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from metakd._quiet import drop_cuda_home_warning
from metakd.data.batch import TaskBatch
from metakd.engine.cpu import keep_freed_memory, libc_function
from metakd.meta._backends import buffer_writers, vmap_unsafe
from metakd.meta._checks import check_acceleration
from metakd.meta._func import AutoBackend, FuncBackend, Unit, even_chunk
from metakd.meta.inner import Mode, func_grad, run_task
from metakd.meta.maml import MAMLWrapper
from metakd.meta.objectives import total
from metakd.meta.outer import MetaParams, Terms

__all__ = [
    "CHANNELS_LAST",
    "COMPILED_CHUNK",
    "COMPILED_WORKERS",
    "COMPILE_ENV",
    "COMPILE_OPTIONS",
    "Acceleration",
    "accelerate",
    "compile_disabled",
    "compile_obstacle",
    "compiled",
    "intra_op_threads",
    "release_free_memory",
    "run_threads",
]

M = TypeVar("M", bound=nn.Module)

logger = logging.getLogger(__name__)

COMPILE_ENV = "METAKD_COMPILE"
"""Environment variable: ``0`` (or ``off``/``false``/``no``) keeps ``compile="auto"`` eager in
this process and the processes it starts (the test suite sets it: a compile per test would
make the suite hours long). ``compile=True`` still compiles."""


# Run the compiled graph's 4-d weights and per-task images in channels_last (NHWC) order. On
# the 2-core CPU (maml_omniglot, 15 queries, one task per call) this made a compiled task 1.5x
# faster (59 -> 38 ms): oneDNN's NHWC backward-data kernels are 3.7x faster than NCHW's on the
# second layer's shape, and Inductor stops transposing between its kernels and the convolutions.
CHANNELS_LAST = True

# Inductor options. ``cpp_wrapper``: the whole graph runs as one C++ function that releases
# the GIL, so worker threads overlap their fused kernels (with the Python wrapper they took
# turns holding the GIL): 2 workers, 15 queries, same run, 36.6 vs 31.9 tasks/s.
COMPILE_OPTIONS: dict[str, Any] = {"cpp_wrapper": True}

# Most tasks per compiled vmap chunk. Eager vmap is fastest in one wide chunk (fewer, larger
# ops); compiled, the per-op overhead is gone and smaller chunks were as fast or faster with a
# fraction of the graph in memory. Measured in one run (maml_omniglot, 1 query per class,
# meta-batch 32, second order; tasks/s and peak RSS against learn2learn): 1 step, chunks of 8
# one at a time 182.0 (3.24x, 1.04x), one chunk of 32 141.5 (2.52x, 1.22x); 5 steps, 33.7
# (2.81x, 1.18x) and 36.8 (3.07x, 1.70x).
COMPILED_CHUNK = 8


# Worker threads of compiled per-task (func) units on a CPU with at least 2 intra-op threads
# when the user gives no ``workers``: Inductor's C++ wrapper releases the GIL, so two threads
# overlap their fused kernels. Measured side by side (2-core CPU, maml_omniglot, 15 queries,
# second order, meta-batch 32): 5 steps, one thread 18.8 tasks/s, two 21.2.
COMPILED_WORKERS = 2


# ------------------------------------------------------------------------------- threads
@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_threads(work: Callable[[int], None], workers: int) -> None:
    """Run ``work(0..workers-1)`` in threads that share the intra-op threads; re-raise errors.

    Task-level parallelism can scale better than intra-op parallelism on small tasks: each
    op's OpenMP fork/join and the idle core at every barrier cost a good part of the op.
    """
    errors: list[BaseException] = []
    per_worker = max(1, torch.get_num_threads() // workers)

    def target(w: int) -> None:
        try:
            with intra_op_threads(per_worker):
                work(w)
        except BaseException as e:  # re-raised in the calling thread below
            errors.append(e)

    with intra_op_threads(per_worker):
        threads = [threading.Thread(target=target, args=(w,)) for w in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]


def replicate(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` that shares its parameter and buffer tensors."""
    memo: dict[int, object] = {id(t): t for t in model.parameters()}
    memo.update({id(t): t for t in model.buffers()})
    return copy.deepcopy(model, memo)


# ------------------------------------------------------------------------ memory release
def release_free_memory() -> bool:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc ``malloc_trim``).

    Called once after the first compiled meta-batch: the compiler's transient memory sits free
    in the heap, and glibc keeps freed memory for reuse instead of returning it. Returns
    ``False`` where the C library has no ``malloc_trim`` (not glibc).
    """
    gc.collect()
    trim = libc_function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


# ------------------------------------------------------------------------------ compile
def _nhwc(t: Tensor) -> Tensor:
    """A 4-d tensor in ``channels_last`` memory order (other tensors as they are)."""
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _bind(fn: Any, params: Mapping[str, Tensor]) -> Any:
    """``fn`` with its learnable tensors replaced by ``params`` (explicit compiled inputs)."""
    if not isinstance(fn, nn.Module) or not params:
        return fn

    def call(*args: Any) -> Any:
        return torch.func.functional_call(fn, dict(params), args, strict=False)

    return call


def _build(backend: FuncBackend, model: nn.Module, steps: int, first_order: bool,
           vmapped: bool) -> Callable[..., Any]:
    loop = backend.loop
    mode: Mode = "first" if first_order else "second"

    def one_task(p: dict[str, dict[str, Tensor]], sx: Tensor, sy: Tensor, qx: Tensor,
                 qy: Tensor, extras: dict[str, Tensor], meta_step: Tensor) -> tuple[Terms, Tensor]:
        fns = (_bind(loop.rule, p["rule"]), _bind(loop.support, p["support"]),
               _bind(loop.objective, p["objective"]))
        _, terms, logits = run_task(loop, model, sx, sy, qx, qy, extras, steps, mode,
                                    func_grad, meta_step, meta=p["model"], fns=fns)
        assert terms is not None and logits is not None
        return terms, logits

    task = torch.func.vmap(one_task, in_dims=(None, 0, 0, 0, 0, 0, None), randomness="different")

    def outer(p: dict[str, dict[str, Tensor]], sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor,
              extras: dict[str, Tensor], meta_step: Tensor) -> Any:
        if CHANNELS_LAST:
            p = {**p, "model": {n: _nhwc(t) for n, t in p["model"].items()}}
        if vmapped:
            terms, logits = task(p, sx, sy, qx, qy, extras, meta_step)
        else:
            t, lg = one_task(p, _nhwc(sx[0]), sy[0], _nhwc(qx[0]), qy[0],
                             {k: v[0] for k, v in extras.items()}, meta_step)
            terms, logits = {k: v[None] for k, v in t.items()}, lg[None]
        return total(terms).sum(), (terms, logits)

    def unit_meta(p: dict[str, dict[str, Tensor]], *data: Any) -> Any:
        grads, (_, (terms, logits)) = torch.func.grad_and_value(outer, has_aux=True)(p, *data)
        return grads, terms, logits

    drop_cuda_home_warning()  # Inductor's C++ build imports torch.utils.cpp_extension
    return torch.compile(_own_code(unit_meta), fullgraph=True, dynamic=False,
                         options=COMPILE_OPTIONS)


_UNITS = itertools.count()


def _own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with a code object of its own.

    Dynamo keeps its compiled graphs per code object, with a limit of 8
    (``torch._dynamo.config.recompile_limit``): every unit built from the one ``unit_meta``
    of this module would share that budget, so the ninth compiled unit of a process (another
    wrapper, inner-step count or model replica) would hit the limit. A copy of the code object
    per unit gives each unit its own cache.
    """
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{next(_UNITS)}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__,
                              fn.__closure__)


# --------------------------------------------------------------------- compile="auto"
def compile_disabled() -> str | None:
    """Why the environment keeps ``compile="auto"`` eager (:data:`COMPILE_ENV`, or PyTorch's
    ``TORCH_COMPILE_DISABLE``), or ``None``."""
    value = os.environ.get(COMPILE_ENV, "").strip().lower()
    if value in ("0", "off", "false", "no"):
        return f"{COMPILE_ENV}={value}"
    if os.environ.get("TORCH_COMPILE_DISABLE", "").strip() not in ("", "0"):
        return "TORCH_COMPILE_DISABLE is set"
    return None


def _model_obstacle(backend: FuncBackend) -> str | None:
    """What in ``backend``'s model the compiled path cannot take, or ``None``."""
    loop = backend.loop
    if loop.per_step_bn:
        return "per-step batch norm"
    writers = buffer_writers(loop.model)
    if writers:
        return f"{writers} update running BatchNorm statistics in train() mode"
    if backend.name == "vmap":
        reason = vmap_unsafe(loop.model)
        if reason is not None:
            return f"backend='vmap': {reason}"
    return None


def compile_obstacle(backend: FuncBackend) -> str | None:
    """Why ``compile="auto"`` runs ``backend`` eager, or ``None`` (then it compiles).

    The model: per-step batch norm, running statistics updated in ``train()``, a vmap backend
    the model cannot run under, parameters on a device other than CPU or CUDA; then the
    environment (:func:`compile_disabled`). With ``compile=True`` the model's reasons are
    errors.
    """
    reason = _model_obstacle(backend)
    if reason is not None:
        return reason
    devices = sorted({t.device.type for t in backend.loop.model.parameters()} - {"cpu", "cuda"})
    if devices:
        return f"parameters on {devices[0]}"
    return compile_disabled()


# ---------------------------------------------------------------------------- applying it
class Acceleration:
    """The accelerations of one func or vmap backend (its ``accel``): worker threads on model
    replicas, and compiled units, one per model replica and (inner steps, order), their shapes
    specialised by Dynamo (``dynamic=False``).

    Args:
        compile: run compiled units instead of the eager ones; ``"auto"``: decided at the
            first meta-batch (:func:`compile_obstacle`), eager if compiling fails then.
        workers: threads; ``None``: 1, or :data:`COMPILED_WORKERS` for compiled per-task
            units on a CPU with at least 2 intra-op threads (vmap chunks: 1).
    """

    def __init__(self, compile: bool | str = False, workers: int | None = None) -> None:
        self.compile: bool | str = compile if compile == "auto" else bool(compile)
        self.requested_workers = workers
        self.fns: dict[Hashable, Callable[..., Any]] = {}
        self.released = False
        self.planned: bool | None = None  # compile or not, fixed at the first meta-batch
        self.failed = False  # compile="auto" fell back to eager
        self.compiled_once = False
        self._lock = threading.Lock()
        self._replicas: list[nn.Module] = []
        self._key: tuple[int, ...] = ()

    def __getstate__(self) -> dict[str, object]:
        # copy.deepcopy / pickle: replicas, compiled functions and the decision are rebuilt.
        state = {**self.__dict__, "fns": {}, "released": False, "_replicas": [], "_key": (),
                 "planned": None, "failed": False, "compiled_once": False}
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def plan(self, backend: FuncBackend) -> bool:
        """Whether ``backend``'s units compile: ``compile`` itself, or for ``"auto"`` the
        decision taken at the first meta-batch and kept (also if compiling then fails, so
        the unit sizes and threads of the run stay those of its first meta-batch). At that
        first call, with ``compile`` set and the model on the CPU, keeps freed memory in the
        C heap (see the module's docstring)."""
        if self.planned is None:
            if self.compile and all(p.device.type == "cpu"
                                    for p in backend.loop.model.parameters()):
                keep_freed_memory("cpu")
            if self.compile == "auto":
                reason = compile_obstacle(backend)
                self.planned = reason is None
                logger.debug("compile='auto' on the %s backend: %s", backend.name,
                             "compiled" if reason is None else f"eager ({reason})")
            else:
                self.planned = bool(self.compile)
        return self.planned

    def workers(self, backend: FuncBackend, units: int) -> int:
        """Threads for ``units`` units of ``backend`` (refused with running statistics)."""
        workers = self.requested_workers
        model = backend.loop.model
        if workers is None:
            if backend.name == "vmap":  # a chunk is already a batch of tasks: one at a time
                return 1
            on_cpu = all(p.device.type == "cpu" for p in model.parameters())
            workers = 1
            if (self.plan(backend) and on_cpu and torch.get_num_threads() >= 2
                    and not buffer_writers(model)):
                workers = COMPILED_WORKERS
        if workers > 1:
            writers = buffer_writers(model)
            if writers:
                raise ValueError(
                    f"workers={workers}: {writers} update running BatchNorm statistics in "
                    "train() mode, which concurrent tasks would race on; use workers=1, "
                    "bn_mode='transductive' or model.eval()"
                )
        return max(1, min(workers, units))

    def unit_size(self, backend: FuncBackend, batch: TaskBatch) -> int | None:
        """Compiled vmap chunks of at most :data:`COMPILED_CHUNK` tasks (the per-op overhead
        is gone, small chunks are as fast); otherwise the backend's own choice."""
        if backend.name == "vmap" and self.plan(backend):
            return even_chunk(len(batch), COMPILED_CHUNK)
        return None

    def replicas(self, backend: FuncBackend, workers: int) -> list[nn.Module]:
        """Replicas of the model sharing its tensors, rebuilt when its tensors change."""
        model = backend.loop.model
        key = tuple(id(t) for t in (*model.parameters(), *model.buffers()))
        if key != self._key or len(self._replicas) < workers:
            self._replicas = [replicate(model) for _ in range(workers)]
            self._key = key
        for r in self._replicas:
            r.train(model.training)
        return self._replicas[:workers]

    def unit(self, backend: FuncBackend, steps: int, first_order: bool,
             inputs: MetaParams) -> Unit | None:
        """The compiled unit (the contract of ``FuncBackend.eager_unit``), or ``None``."""
        if not self.plan(backend) or self.failed:
            return None
        reason = _model_obstacle(backend)
        if reason is not None:  # compile=True, or a model changed after "auto" chose to compile
            raise ValueError(f"compile={self.compile!r}: {reason}; use compile=False, "
                             "bn_mode='transductive' or model.eval()")
        vmapped = backend.name == "vmap"
        groups = {g: inputs.groups.get(g, {}) for g in ("model", "rule", "support", "objective")}
        values = {g: {n: t.detach() for n, t in named.items()} for g, named in groups.items()}
        order = [(g, n) for g, named in inputs.groups.items() for n in named]

        eager: list[Unit] = []

        def unit(model: nn.Module, b: TaskBatch, meta_step: Tensor) -> tuple[Terms, Tensor, Any]:
            if not self.failed:
                key = (id(model), steps, first_order)
                try:
                    fn = self.fns.get(key)
                    if fn is None:
                        fn = self.fns[key] = _build(backend, model, steps, first_order, vmapped)
                    grads, terms, logits = fn(values, b.support_x, b.support_y, b.query_x,
                                              b.query_y, dict(b.extras), meta_step)
                except Exception as e:
                    if self.compile != "auto" or self.compiled_once:
                        raise
                    self._fall_back(e)
                else:
                    self.compiled_once = True
                    return terms, logits, [grads[g][n] for g, n in order]
            if not eager:
                eager.append(backend.eager_unit(steps, first_order, inputs))
            return eager[0](model, b, meta_step)

        return unit

    def _fall_back(self, error: Exception) -> None:
        """``compile="auto"``: compiling failed before any compiled meta-batch; go on eager."""
        with self._lock:
            if self.failed:
                return
            self.failed = True
            self.fns.clear()
        first = (str(error).strip().splitlines() or [""])[0][:300]
        warnings.warn(f"compile='auto': compiling the meta-gradient failed "
                      f"({type(error).__name__}: {first}); this run goes on eager. "
                      "Pass compile=False to skip the attempt", RuntimeWarning, stacklevel=2)

    def parallel(self, work: Callable[[int], None], workers: int) -> None:
        """Run ``work(0..workers-1)`` in threads (:func:`run_threads`)."""
        run_threads(work, workers)

    def after_batch(self) -> None:
        """Once compiled, hand the compiler's freed memory back to the OS, once."""
        if self.planned and not self.released:
            self.released = True
            release_free_memory()


def accelerate(learner: M, *, compile: bool | str = False, workers: int | None = None) -> M:
    """Set the accelerations of every :class:`~metakd.meta.MAMLWrapper` in ``learner``
    (with the defaults: plain eager, one thread); returns ``learner``.

    Applies to the ``func``, ``vmap`` and ``auto`` backends (under ``auto``, ``workers``
    applies to the per-task path; vmap chunks run one at a time), including a
    :class:`~metakd.distill.PMAML`'s student. ``MAMLWrapper(..., compile=, workers=)``
    calls it.

    Args:
        learner: a :class:`~metakd.meta.MAMLWrapper`, or a module that holds some.
        compile: ``torch.compile`` each unit's whole meta-gradient, compiled at the first
            meta-batch (on a 2-core CPU 40-95 s the first time, 5-12 s in a later process
            from Inductor's disk cache). Not with per-step batch norm or running statistics
            in ``train()``. Evaluation stays eager. ``"auto"`` (``MAMLWrapper``'s default):
            compiled where the model allows it, decided at the first meta-batch (see the
            module's docstring).
        workers: threads running units concurrently on model replicas (see
            :class:`Acceleration`).

    Example:
        >>> import torch
        >>> from metakd.meta import MAMLWrapper
        >>> maml = accelerate(MAMLWrapper(torch.nn.Linear(4, 3), inner_lr=0.1), compile=True)
        >>> maml.compile_mode
        True
    """
    wrappers = [m for m in learner.modules() if isinstance(m, MAMLWrapper)]
    if not wrappers:
        raise ValueError(f"accelerate applies to MAMLWrapper and modules holding one, not "
                         f"{type(learner).__name__}")
    for maml in wrappers:
        backend = maml._backend
        check_acceleration(backend.name, compile, workers)
        if isinstance(backend, AutoBackend):
            targets: list[tuple[FuncBackend, int | None]] = [(backend.func, workers),
                                                               (backend.vmap, None)]
        elif isinstance(backend, FuncBackend):
            targets = [(backend, workers)]
        else:
            raise ValueError(f"accelerate applies to the 'func', 'vmap' and 'auto' backends, "
                             f"not {backend.name!r}")
        for b, w in targets:
            b.accel = Acceleration(compile, w) if compile or w is not None else None
        maml.compile_mode = compile if compile == "auto" else bool(compile)
    return learner


def compiled(learner: nn.Module) -> bool:
    """Whether a meta-batch of any :class:`~metakd.meta.MAMLWrapper` in ``learner`` ran
    compiled (under ``compile="auto"``: the model allowed it and compiling worked).

    Example:
        >>> import torch
        >>> from metakd.meta import MAMLWrapper
        >>> compiled(MAMLWrapper(torch.nn.Linear(4, 3), inner_lr=0.1, compile=False))
        False
    """
    for maml in (m for m in learner.modules() if isinstance(m, MAMLWrapper)):
        backend: Any = maml._backend
        for b in (getattr(backend, "func", None), getattr(backend, "vmap", None), backend):
            accel = getattr(b, "accel", None)
            if isinstance(accel, Acceleration) and accel.compiled_once:
                return True
    return False
