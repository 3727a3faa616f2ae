"""How a CPU training process keeps the memory it frees: the C heap's settings.

With its default settings, glibc's ``malloc`` serves every large block (from 128 KiB, a
threshold that adapts up to 32 MiB) with its own ``mmap`` and unmaps it when it is freed,
and it hands the top of its heap back to the OS as soon as 128 KiB or more lie free there.
A training step allocates and frees the same large activation maps at every step, so each
step faults all of their pages in again: the kernel maps and zeroes every 4 KiB page before
the first write. On the 2-core CPU with torch 2.14.1 that is a large share of a convolutional
step (``benchmarks.method_speed --allocator``).

:func:`keep_freed_memory` turns both off, so freed blocks stay in the heap and the next step
reuses them without a fault. It changes no number a run computes. The price is memory: the
process keeps what it frees instead of handing it back, and blocks of the heap that no later
request fits raise its peak resident memory (in the method-speed run of 2026-12-07,
``benchmarks/results/method_speed_cpu_2026-12-07_heap.json``, the peak rose by 0-22%: 1.22x
for Meta-Baseline's 320-image Conv-4 maps). ``metakd train`` and ``metakd eval`` call it at
the start of a run on the CPU, once, and record it under ``runtime`` in the run's
``config.json``; a program that drives the library itself calls it (or sets
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`` in the environment) before its first
step.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import torch

__all__ = ["keep_freed_memory"]

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
    device and where the C library has no ``mallopt`` or refuses the settings (not glibc:
    macOS, Windows; musl's ``mallopt`` does nothing and returns 0).

    Example:
        >>> keep_freed_memory("cuda")
        False
        >>> isinstance(keep_freed_memory(), bool)
        True
    """
    return str(device).startswith("cpu") and _keep()


@functools.cache
def _keep() -> bool:
    mallopt = libc_function("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_NEVER))
