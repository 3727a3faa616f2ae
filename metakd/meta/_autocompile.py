"""``compile="auto"``: compile a meta-gradient in the background once a run has shown it is long.

``torch.compile`` makes a MAML task about 1.5 to 3x faster on CPU (``benchmarks/maml_speed``)
but its first compile of a (steps, order, task shape) signature takes one to three minutes
(seconds when Inductor's disk cache already holds the graph). Paying that up front would make
every short run, test and notebook cell slower, so the default is tiered, as in a JIT:

1. every meta-batch first runs eager, and the eager seconds spent on its signature are summed;
2. once a signature has cost ``after_s`` seconds of eager time (a run that has lasted that long
   is likely to last as long again, the rent-or-buy rule), a daemon thread compiles it on
   replicas of the model of its own, running one real unit to trigger the compile, while the
   training loop goes on eager;
3. when the thread is done, later meta-batches of that signature run compiled.

A run shorter than ``after_s`` never compiles, and no call waits for a compile, but while a
cold compile runs the eager loop slows to about a tenth of its speed on a 2-core CPU (see
:data:`AUTO_COMPILE_AFTER_S`). A compile that fails leaves the signature eager and emits a
:class:`RuntimeWarning` with the error.

Internal module: use ``MAMLWrapper(..., compile="auto")`` (the default).
"""

from __future__ import annotations

import ctypes
import functools
import gc
import threading
import time
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

__all__ = ["AUTO_COMPILE_AFTER_S", "AutoCompiler", "CompileEntry", "release_free_memory"]

# Eager seconds on one signature before its background compile starts: about what a cold
# compile costs. On the 2-core CPU a cold compile of maml_omniglot's meta-gradient took
# 50-320 s, and while it ran the eager loop went at about a tenth of its speed (the compiler's
# Python thread holds the GIL and its C++ builds take the other core): a compile is nearly a
# stop of that length. Starting it once the signature has cost as much eager time bounds the
# loss at 2x in the worst case (the rent-or-buy rule); a warm disk cache makes it seconds.
AUTO_COMPILE_AFTER_S = 120.0

State = Literal["eager", "compiling", "compiled", "failed"]


@functools.cache
def _libc_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    return trim


def release_free_memory() -> bool:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc ``malloc_trim``).

    Called twice per compile: when the background compile ends (its transient memory sits
    free in that thread's heap arena) and after the first compiled meta-batch (the eager
    meta-batches' memory sits free in the arenas of the threads that ran them). glibc keeps
    freed memory of each thread's arena for reuse by that arena alone, so without it the
    process holds the peaks of the eager phase, of the compiler and of the compiled phase at
    once. Returns ``False`` where the C library has no ``malloc_trim`` (not glibc).
    """
    gc.collect()
    trim = _libc_malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@dataclass
class CompileEntry:
    """What is known about one meta-gradient signature."""

    eager_s: float = 0.0
    state: State = "eager"
    models: list[nn.Module] = field(default_factory=list)
    cache: dict[Hashable, Callable[..., object]] = field(default_factory=dict)
    param_ids: tuple[int, ...] = ()
    unit_size: int = 1
    compile_s: float | None = None
    error: str | None = None
    thread: threading.Thread | None = None
    released: bool = False  # free memory handed back after the first compiled meta-batch


class AutoCompiler:
    """Per-signature bookkeeping and background compiles for one backend."""

    def __init__(self, after_s: float = AUTO_COMPILE_AFTER_S) -> None:
        if after_s < 0:
            raise ValueError(f"compile_after_s must be >= 0, got {after_s}")
        self.after_s = float(after_s)
        self.entries: dict[Hashable, CompileEntry] = {}
        self._lock = threading.Lock()

    def ready(self, key: Hashable) -> CompileEntry | None:
        """The entry of ``key`` if its compiled unit can be used now."""
        entry = self.entries.get(key)
        return entry if entry is not None and entry.state == "compiled" else None

    def record(
        self,
        key: Hashable,
        eager_s: float,
        prepare: Callable[[], Callable[[CompileEntry], None] | None],
    ) -> None:
        """Add ``eager_s`` seconds to ``key``; start its compile once over the threshold.

        ``prepare()`` runs in the calling thread when the threshold is crossed and returns
        the job for the background thread: ``job(entry)`` fills ``entry.models`` (replicas
        of the model for the compiled unit alone) and ``entry.cache`` (their compiled
        functions) by running one unit on each. ``prepare()`` returns ``None`` when the
        signature cannot be compiled now: it stays eager (and is asked again next time).
        """
        with self._lock:
            entry = self.entries.setdefault(key, CompileEntry())
            entry.eager_s += eager_s
            if entry.state != "eager" or entry.eager_s < self.after_s:
                return
            start = prepare()
            if start is None:
                return
            entry.state = "compiling"
        thread = threading.Thread(
            target=self._compile, args=(entry, start), name="metakd-compile", daemon=True
        )
        entry.thread = thread
        thread.start()

    def _compile(self, entry: CompileEntry, start: Callable[[CompileEntry], None]) -> None:
        t0 = time.perf_counter()
        try:
            start(entry)
        except Exception as e:  # reported as a warning; the signature stays eager
            entry.error = f"{type(e).__name__}: {e}"
        compile_s = time.perf_counter() - t0
        release_free_memory()  # the compiler's transient memory, whether it succeeded or not
        if entry.error is not None:
            entry.state = "failed"
            warnings.warn(
                f"metakd: the background torch.compile of a MAML meta-gradient failed, "
                f"training goes on eager (pass compile=False to skip it): {entry.error}",
                RuntimeWarning,
                stacklevel=1,
            )
            return
        entry.compile_s = compile_s
        entry.state = "compiled"

    def invalidate(self, key: Hashable) -> None:
        """Forget the compiled unit of ``key`` (the model's tensors were replaced)."""
        with self._lock:
            self.entries[key] = CompileEntry()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the compiles under way; ``True`` if none is still running."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        for entry in list(self.entries.values()):
            thread = entry.thread
            if thread is None:
                continue
            left = None if deadline is None else max(0.0, deadline - time.perf_counter())
            thread.join(left)
            if thread.is_alive():
                return False
        return True

    def status(self) -> list[dict[str, object]]:
        """One dict per signature: state, eager seconds, compile seconds, error."""
        return [
            {
                "signature": key,
                "state": e.state,
                "eager_s": round(e.eager_s, 3),
                "compile_s": None if e.compile_s is None else round(e.compile_s, 3),
                "error": e.error,
            }
            for key, e in self.entries.items()
        ]
