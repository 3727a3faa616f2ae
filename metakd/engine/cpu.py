"""How a CPU training process keeps the memory it frees: the C heap's settings.

With its default settings, glibc's ``malloc`` serves every large block (from 128 KiB, a
threshold that adapts up to 32 MiB) with its own ``mmap`` and unmaps it when it is freed,
and it hands the top of its heap back to the OS as soon as 128 KiB or more lie free there.
A training step allocates and frees the same large activation maps at every step, so each
step faults all of their pages in again: the kernel maps and zeroes every 4 KiB page before
the first write. On the 2-core CPU with torch 2.14.1 that is a large share of a convolutional
step (``benchmarks.method_speed --allocator``, ``benchmarks.maml_speed --allocator``).

:func:`keep_freed_memory` turns both off, so freed blocks stay in the heap and the next step
reuses them without a fault. It changes no number a run computes. The price is memory: the
process keeps what it frees instead of handing it back, and blocks of the heap that no later
request fits raise its peak resident memory (in the method-speed run of 2026-12-07,
``benchmarks/results/method_speed_cpu_2026-12-07_heap.json``, the peak rose by 0-22%: 1.22x
for Meta-Baseline's 320-image Conv-4 maps).

Who calls it: ``metakd train`` and ``metakd eval`` at the start of a run on the CPU, recorded
under ``runtime`` in the run's ``config.json``; and a :class:`~metakd.meta.MAMLWrapper` with
its default ``compile="auto"`` (or ``compile=True``) at its first meta-batch on the CPU (see
:mod:`metakd.meta.accel`). ``compile=False`` leaves the heap alone. Any other program calls it
before its first step. The environment has the last word: with ``METAKD_KEEP_FREED_MEMORY=0``
(:data:`KEEP_FREED_MEMORY_ENV`), or where it sets glibc's own malloc options
(``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TOP_PAD_``, or ``glibc.malloc`` tunables in ``GLIBC_TUNABLES``), no call changes the
heap.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable

import torch

__all__ = ["KEEP_FREED_MEMORY_ENV", "heap_left_to_environment", "keep_freed_memory",
           "keeps_freed_memory"]

KEEP_FREED_MEMORY_ENV = "METAKD_KEEP_FREED_MEMORY"
"""Environment variable: ``0`` (or ``off``/``false``/``no``) makes :func:`keep_freed_memory`
leave the C heap as glibc sets it, in this process and the processes it starts."""

# glibc reads these at start-up (mallopt's options by environment); a process started with any
# of them has chosen its heap's settings.
_GLIBC_MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                     "MALLOC_TOP_PAD_")

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_NEVER = 2**31 - 1  # the largest value mallopt takes (an int): 2 GiB free at the top


@functools.cache
def libc_function(name: str) -> Callable[..., int] | None:
    """The C library's function ``name`` (through ``ctypes``), or ``None`` where it has none
    (``mallopt`` and ``malloc_trim`` are glibc's)."""
    try:
        fn: Callable[..., int] = getattr(ctypes.CDLL(None), name)
    except (AttributeError, OSError):
        return None
    return fn


def keep_freed_memory(device: torch.device | str | None = "cpu") -> bool:
    """Keep freed memory in the process's C heap for reuse (glibc); returns whether it is kept.

    For a run on ``device``: on a CPU, sets glibc's ``M_MMAP_MAX`` to 0 (no block gets its
    own mapping: large ones come from the heap too) and ``M_TRIM_THRESHOLD`` to its largest
    value (the heap's free top is kept up to 2 GiB), so that the blocks a step frees are
    reused by the next one without page faults; on any other device it does nothing. The
    settings are made once per process. Returns ``False``, having changed nothing, on another
    device, where the environment decides the heap (:func:`heap_left_to_environment`) and
    where the C library has no ``mallopt`` or refuses the settings (not glibc: macOS,
    Windows; musl's ``mallopt`` does nothing and returns 0).

    Example:
        >>> keep_freed_memory("cuda")
        False
        >>> isinstance(keep_freed_memory(), bool)
        True
    """
    return str(device).startswith("cpu") and _keep()


def keeps_freed_memory() -> bool:
    """Whether :func:`keep_freed_memory` has set this process's heap (by any caller).

    Example:
        >>> keep_freed_memory() == keeps_freed_memory()
        True
    """
    return _keep.cache_info().currsize > 0 and _keep()


def heap_left_to_environment() -> str | None:
    """Why the environment keeps :func:`keep_freed_memory` from changing the heap, or ``None``:
    :data:`KEEP_FREED_MEMORY_ENV` (``METAKD_KEEP_FREED_MEMORY``) set to ``0``, or glibc's own
    malloc options set.

    Example:
        >>> import os
        >>> os.environ["METAKD_KEEP_FREED_MEMORY"] = "0"
        >>> heap_left_to_environment()
        'METAKD_KEEP_FREED_MEMORY=0'
        >>> del os.environ["METAKD_KEEP_FREED_MEMORY"]
    """
    value = os.environ.get(KEEP_FREED_MEMORY_ENV, "").strip().lower()
    if value in ("0", "off", "false", "no"):
        return f"{KEEP_FREED_MEMORY_ENV}={value}"
    chosen = [name for name in _GLIBC_MALLOC_ENV if name in os.environ]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        chosen.append("GLIBC_TUNABLES")
    return f"{chosen[0]} is set" if chosen else None


@functools.cache
def _keep() -> bool:
    mallopt = libc_function("mallopt")
    if mallopt is None or heap_left_to_environment() is not None:
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_NEVER))
