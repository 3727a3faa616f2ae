"""What the benchmarks share: options, the log file, the JSON line, the run record, verdicts.

A benchmark module defines a frozen ``Config`` dataclass (with ``seeds``, ``threads`` and its
own budget fields), a ``QUICK`` dict of smoke-run values and ``run(cfg, log, workdir=...)``;
its ``main`` is then::

    p = parser(__doc__, QUICK, "NAME_cpu.json")
    p.add_argument(...)                       # its own budget options
    args = p.parse_args(argv)
    cfg = configure(Config(threads=args.threads), args, QUICK, ("steps", ...))
    run_logged(run, cfg, output(args, "NAME_cpu.json"), workdir=args.workdir)

and its ``run`` starts a :class:`Clock`, trains in :func:`work_folder` and ends its result
with ``**clock.record()`` (load average, torch, platform, wall time). A timing benchmark with
options of its own adds just ``--out`` (:func:`out_option`) and goes through the same
:func:`result_log` and :func:`finish`.

The last line printed is the result as one JSON object; with ``--out`` (or by default, except
with ``--quick``) the result is also written to ``benchmarks/results/NAME_cpu.json`` and every
logged line to ``NAME_cpu.log`` beside it.

A result states its training budget next to the paper's (:func:`budget`, with
:func:`episodes_seen` for the episodic part), computed from the run's config.

Importing this module loads no part of metakd (only torch and the standard library): a timing
benchmark's worker processes measure the memory of what they import themselves.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"

Log = Callable[[str], None]


def parser(doc: str | None, quick: Mapping[str, Any], default_out: str | None,
           shots: bool = True, test_tasks: bool = True, workdir: bool = True
           ) -> argparse.ArgumentParser:
    """The options every benchmark takes: --quick, --seeds, [--shots,] [--test-tasks,]
    --threads, [--workdir] and --out."""
    p = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke run of a few minutes, no result file written: {dict(quick)}")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2)")
    if shots:
        p.add_argument("--shots", type=int, nargs="+", help="shot settings (default 1 5)")
    if test_tasks:
        p.add_argument("--test-tasks", type=int, help="fixed held-out test episodes")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    if workdir:
        p.add_argument("--workdir", help="keep the run folders here (default: a temporary "
                                         "folder, removed at the end)")
    out_option(p, default_out, "not written with --quick")
    return p


def out_option(p: argparse.ArgumentParser, default_out: str | None = None,
               note: str = "") -> None:
    """Add ``--out``, the JSON result file (``default_out`` in benchmarks/results, or none:
    then the result is only printed); the log goes next to it."""
    where = f"benchmarks/results/{default_out}" if default_out else "none, printed only"
    p.add_argument("--out", type=Path, help=f"JSON result file (default {where}"
                                            f"{'; ' + note if note else ''}); the log goes "
                                            "next to it as .log")


def configure(cfg: Any, args: argparse.Namespace, quick: Mapping[str, Any],
              fields: Iterable[str] = ()) -> Any:
    """``cfg`` with ``QUICK`` applied under --quick, then every given option of ``fields``
    (and ``--test-tasks``, ``--seeds``, ``--shots`` where the config has them); the values of
    an option that takes several (a list) as a tuple."""
    if args.quick:
        cfg = dataclasses.replace(cfg, **quick)
    names = {f.name for f in dataclasses.fields(cfg)}
    for name in (*fields, "test_tasks", "seeds", "shots"):
        value = getattr(args, name, None)
        if value is not None and name in names:
            value = tuple(value) if isinstance(value, list) else value
            cfg = dataclasses.replace(cfg, **{name: value})
    return cfg


def output(args: argparse.Namespace, default_out: str | None, quick_out: str | None = None
           ) -> Path | None:
    """The result file: ``--out``, else ``default_out`` in benchmarks/results (``quick_out``
    or nothing with --quick; nothing without ``default_out``)."""
    if args.out is not None:
        return Path(args.out)
    if getattr(args, "quick", False):
        return RESULTS / quick_out if quick_out else None
    return RESULTS / default_out if default_out else None


class Clock:
    """A run's wall time and the machine's load average, from the moment it is made.

    Example:
        >>> record = Clock().record()
        >>> sorted(record), len(record["load_average"]["start"])
        (['load_average', 'platform', 'torch', 'wall_s'], 3)
    """

    def __init__(self) -> None:
        self.t_start = time.perf_counter()
        self.load_start = os.getloadavg()

    def seconds(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self.t_start

    def record(self) -> dict[str, Any]:
        """What every result states about its run: the load average at the start and now,
        the torch version, the platform and the wall time in seconds."""
        return {"load_average": {"start": _rounded(self.load_start),
                                 "end": _rounded(os.getloadavg())},
                "torch": torch.__version__,
                "platform": platform.platform(),
                "wall_s": round(self.seconds(), 1)}


def best_ms(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    """The fastest of ``repeats`` calls of ``fn`` after ``warmup`` calls, in milliseconds."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(v, 2) for v in values]


@contextmanager
def work_folder(path: str | os.PathLike[str] | None, prefix: str) -> Iterator[Path]:
    """``path`` (kept), or a new temporary folder named ``prefix...`` that is removed at the
    end, also when the run fails."""
    if path is not None:
        yield Path(path)
        return
    tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def result_log(out: Path | None) -> Iterator[tuple[Log, Path | None]]:
    """A ``log(msg)`` that prints each line and appends it to ``out``'s ``.log`` file (started
    empty), and ``out`` itself."""
    log_path = None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        log_path = out.with_suffix(".log")
        log_path.write_text("")

    def log(msg: str) -> None:
        print(msg, flush=True)
        if log_path is not None:
            with log_path.open("a") as f:
                f.write(msg + "\n")

    yield log, out


def log_config(cfg: Any, log: Log) -> None:
    """The first logged line: the config as JSON."""
    log(f"config: {json.dumps(dataclasses.asdict(cfg), default=list)}")


def finish(result: dict[str, Any], out: Path | None, log: Log) -> None:
    """Write the result (atomically) when ``out`` is set and print it as the last line."""
    from metakd.recipes.runs import write_json

    if out is not None:
        write_json(out, result)
        if "wall_s" in result:
            log(f"wall time {result['wall_s']:.0f} s; results in {out}")
    print(json.dumps(result))


def over_seeds(rows: list[dict[str, Any]], key: str = "mean") -> dict[str, Any]:
    """The mean of ``key`` over the per-seed ``rows`` with its t-interval over seeds
    (``mean_confidence_interval(...).summary()``), and the rows as ``per_seed``.

    Example:
        >>> s = over_seeds([{"seed": 0, "accuracy": 0.5}], "accuracy")
        >>> s["mean"], s["ci95"], s["per_seed"][0]["seed"]
        (0.5, None, 0)
    """
    from metakd.engine import mean_confidence_interval

    return {**mean_confidence_interval([r[key] for r in rows]).summary(), "per_seed": rows}


def run_logged(run: Callable[..., dict[str, Any]], cfg: Any, out: Path | None,
               summary: Callable[[dict[str, Any]], str] | None = None, **kwargs: Any
               ) -> dict[str, Any]:
    """A benchmark's run from its command line: the config logged (:func:`log_config`),
    ``run(cfg, log, **kwargs)``, ``summary(result)`` logged where given, and the result
    written to ``out`` and printed (:func:`finish`), with the log in :func:`result_log`."""
    with result_log(out) as (log, out):
        log_config(cfg, log)
        result = run(cfg, log, **kwargs)
        if summary is not None:
            log(summary(result))
        finish(result, out, log)
    return result


def paired(name: str, d: Mapping[str, Any]) -> str:
    """``NAME +1.23 [+0.45, +2.01]`` (points and 95% interval) of a paired difference
    summary (``mean_confidence_interval(...).summary()``), or ``(1 seed)`` without one."""
    if d.get("interval") is None:
        return f"{name} {100 * d['mean']:+.2f} (1 seed)"
    lo, hi = d["interval"]
    return f"{name} {100 * d['mean']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"


def paired_list(diffs: Mapping[str, Mapping[str, Any]], sep: str = ", ") -> str:
    """Every paired difference of ``diffs`` formatted by :func:`paired`."""
    return sep.join(paired(k, d) for k, d in diffs.items())


def episodes_seen(tasks: int, ways: int, shots: int, queries: int) -> dict[str, int]:
    """The episodic part of a training budget: ``tasks`` episodes of ``ways`` x (``shots`` +
    ``queries``) images each.

    Example:
        >>> episodes_seen(480, 5, 1, 10)
        {'tasks': 480, 'images_per_task': 55, 'task_images': 26400}
    """
    per = ways * (shots + queries)
    return {"tasks": tasks, "images_per_task": per, "task_images": tasks * per}


SHARED = ("tasks", "task_images", "pretraining_images", "images")
"""The budget counts whose run-to-paper ratio :func:`budget` reports."""


def budget(run: Mapping[str, Any], paper: Mapping[str, Any], paper_source: str
           ) -> dict[str, Any]:
    """A run's training budget next to the paper's, and the run's share of each count.

    ``run`` and ``paper`` hold counts such as ``tasks`` (training episodes), ``task_images``
    (their images), ``pretraining_images`` and any detail (epochs, steps). ``images`` (every
    image seen in training, pre-training included) is added to each that counts images and
    does not give it; ``fraction_of_paper`` divides each count of :data:`SHARED` that both
    hold.

    Example:
        >>> b = budget({"tasks": 480, "task_images": 26400},
        ...            {"tasks": 16000, "task_images": 1280000}, "spec")
        >>> b["run"]["images"], b["fraction_of_paper"]["tasks"]
        (26400, 0.03)
    """
    def total(counts: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(counts)
        parts = [out[k] for k in ("task_images", "pretraining_images") if k in out]
        if parts:
            out.setdefault("images", int(sum(parts)))
        return out

    mine, theirs = total(run), total(paper)
    share = {k: float(f"{mine[k] / theirs[k]:.6g}") for k in SHARED
             if mine.get(k) is not None and theirs.get(k)}
    return {"run": mine, "paper": {**theirs, "source": paper_source},
            "fraction_of_paper": share}


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (``VmHWM``; Linux 4.0 and later)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peak_rss_since_reset_mb() -> float:
    """This process's peak resident memory in MiB since :func:`reset_peak_rss` (``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


#: The profiler's op names of the heavy kernels, by class: the work a step cannot shed by
#: being written differently (only by running these kernels faster or on less data).
#: Everything else (elementwise ops, copies, small reductions, dispatch) is "other".
KERNEL_CLASSES: dict[str, tuple[str, ...]] = {
    "convolution": ("aten::mkldnn_convolution", "aten::convolution_backward",
                    "aten::_convolution", "aten::_slow_conv2d_forward",
                    "aten::_slow_conv2d_backward"),
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mv",
               "aten::addmv_", "aten::dot"),
    "norm_pool": ("aten::native_batch_norm", "aten::native_batch_norm_backward",
                  "aten::var_mean", "aten::max_pool2d_with_indices",
                  "aten::max_pool2d_with_indices_backward", "aten::avg_pool2d",
                  "aten::avg_pool2d_backward", "aten::adaptive_avg_pool2d"),
}


def op_profile(step: Callable[[], Any], batches: int = 1, cuda: bool = False,
               top: int = 10) -> dict[str, Any]:
    """``torch.profiler`` over ``batches`` calls of ``step`` (warm it up first).

    Returns the ``top`` ops by self CPU time with their share of the profile's total self
    CPU time, ``self_cpu_vs_wall`` (that total over the wall time: well under 1 where work
    runs outside profiled ops, as a compiled graph's kernels), and ``kernel_shares``: the
    share of each class of :data:`KERNEL_CLASSES` and of everything else. Profiling adds a
    fixed cost per op, so the shares of many small ops read high.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(batches):
            step()
        if cuda:
            torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_us = sum(e.self_cpu_time_total for e in events) or 1.0
    ops = [{"op": e.key, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 2),
            "share": round(e.self_cpu_time_total / total_us, 4)} for e in events[:top]]
    shares = {name: 0.0 for name in (*KERNEL_CLASSES, "other")}
    for e in events:
        cls = next((c for c, names in KERNEL_CLASSES.items() if e.key in names), "other")
        shares[cls] += e.self_cpu_time_total / total_us
    return {
        "batches": batches,
        "wall_ms": round(wall * 1e3, 1),
        "total_self_cpu_ms": round(total_us / 1e3, 1),
        "self_cpu_vs_wall": round(total_us / 1e6 / wall, 3),
        "top_share": round(sum(o["share"] for o in ops), 4),
        "ops": ops,
        "kernel_shares": {k: round(v, 4) for k, v in shares.items()},
    }


ALLOCATORS = ("plain", "own", "kept")
"""How a timing benchmark's workers set the C heap (``--allocator``): ``plain``, glibc's
defaults on every side (worker processes run with ``METAKD_KEEP_FREED_MEMORY=0``, so the
library does not change them either); ``own``, each side as it sets its heap itself:
:class:`metakd.meta.MAMLWrapper`'s default keeps freed memory on the CPU at its first
meta-batch, ``metakd train`` at the start of a run (:func:`metakd.engine.keep_freed_memory`),
and the other projects' scripts leave glibc's defaults; ``kept``, every side keeps it, so
that a ratio is that of the steps' own work."""


def keep_heap(allocator: str, device: str, *, keeps_itself: bool) -> bool:
    """Set this worker's C heap as ``allocator`` says (:data:`ALLOCATORS`); whether this call
    keeps freed memory. ``keeps_itself``: the side stands for a program that keeps it itself
    (``metakd train``), so ``own`` keeps it here. A metakd package from before
    :func:`metakd.engine.keep_freed_memory` (an earlier commit's ``--baseline``) runs with
    glibc's defaults."""
    if allocator not in ALLOCATORS:
        raise ValueError(f"allocator={allocator!r}; use one of {ALLOCATORS}")
    if allocator == "plain" or (allocator == "own" and not keeps_itself):
        return False
    try:
        from metakd.engine.cpu import keep_freed_memory
    except ImportError:  # a package from before it
        return False
    return keep_freed_memory(device)


def heap_kept(set_here: bool) -> bool:
    """Whether this process's heap keeps freed memory now: :func:`keep_heap`'s answer
    (``set_here``), or the library's own setting (a metakd package from before
    :func:`metakd.engine.keeps_freed_memory` sets it only where ``keep_heap`` does)."""
    try:
        from metakd.engine.cpu import keeps_freed_memory
    except ImportError:
        return set_here
    return set_here or keeps_freed_memory()


_LINKS: dict[str, str] = {}


def _package_link(checkout: str) -> str:
    """A temporary folder (one per checkout and process) whose only entry, ``metakd``, links
    to ``checkout``'s package: on the path it brings that package without the checkout's
    other top-level folders (its ``benchmarks``)."""
    checkout = os.path.abspath(checkout)
    if checkout not in _LINKS:
        package = os.path.join(checkout, "metakd")
        if not os.path.isdir(package):
            raise FileNotFoundError(f"--baseline {checkout}: no metakd package there (expected "
                                    f"a checkout of this repository, with {package})")
        folder = tempfile.mkdtemp(prefix="metakd-baseline-")
        os.symlink(package, os.path.join(folder, "metakd"))
        _LINKS[checkout] = folder
    return _LINKS[checkout]


def worker_command(module: str, spec: str, baseline: str | None = None,
                   allocator: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a timing benchmark's worker process.

    ``python -m MODULE --worker SPEC``; with ``baseline`` (a checkout of an earlier commit)
    that checkout's ``metakd`` package comes first on the path while this checkout's harness
    (``benchmarks``) stays the same: the path's first folder holds a link to the baseline's
    ``metakd`` alone (:func:`_package_link`), then comes this checkout. ``-P``: without it
    ``-m`` puts the working directory (this checkout) before ``PYTHONPATH``. With
    ``allocator="plain"`` the worker runs with ``METAKD_KEEP_FREED_MEMORY=0``: nothing in it
    changes glibc's heap settings.
    """
    from metakd.engine.cpu import KEEP_FREED_MEMORY_ENV

    env, python = dict(os.environ), [sys.executable]
    if allocator == "plain":
        env[KEEP_FREED_MEMORY_ENV] = "0"
    if baseline is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_package_link(baseline), os.getcwd(),
                                                          env.get("PYTHONPATH")]))
        python.append("-P")
    return [*python, "-m", module, "--worker", spec], env
