"""MAML meta-training speed and memory: metakd's backends against learn2learn and higher.

Every method computes the same second- (or first-) order MAML meta-gradient on the same
initial weights and the same tasks (random images, fixed seed), for:

- ``maml_omniglot`` (cbfinn's TF Omniglot net), 5-way 1-shot, meta-batch 32, 15 queries and
  1 query per class, 1 and 5 inner steps, second and first order, inner lr 0.4;
- ``maml_miniimagenet`` (84 px, 32 filters), 5-way 1-shot, 15 queries, meta-batch 4,
  5 steps, second order, inner lr 0.01.

Methods: ``metakd:auto`` (``MAMLWrapper``'s defaults: backend ``"auto"``, i.e. vmap over the
whole meta-batch when its tasks are small, else the func backend one task at a time, and
``compile="auto"``: compiled at the first meta-batch, ``first_batch_s`` including the compile,
shorter when Inductor's disk cache already holds the graph), ``metakd:auto:compile=0`` (plain
eager, no threads of its own), ``metakd:auto:compile=1`` (``compile=True``),
``metakd:auto:workers=2`` (worker threads),
and any ``metakd:BACKEND:key=value+key=value`` given with ``--methods`` (``heap=plain``: that
method's process keeps glibc's heap settings, as ``--allocator plain`` does for every method,
so that one run compares the two heaps side by side); all through
``MAMLWrapper.meta_loss(batch)[0].backward()``;
``learn2learn`` (``MAML.clone()``, ``adapt()``, per-task ``backward()``, as in its docs and
examples); ``higher`` (``innerloop_ctx`` with SGD, per-task ``backward()``, as in its docs).
Both run the same metakd module, whose transductive BatchNorm calls the fused native kernel
outside ``vmap``, as ``torch.nn.BatchNorm2d`` in learn2learn's own ``OmniglotCNN`` does.

Each (config, method) runs in a fresh subprocess, so that ``ru_maxrss`` is that method's
peak resident memory; ``peak_rss_mb`` is the absolute peak, ``rss_delta_mb`` the peak minus
the process's resident size just before the first meta-batch (imports, model and data
already there), ``steady_peak_rss_mb`` the peak of the timed meta-batches alone (the
kernel's peak mark, ``VmHWM``, reset before them through ``/proc/self/clear_refs``; for
``metakd:auto`` after its compile, so it leaves out the eager phase and the compiler). On CUDA ``torch.cuda.max_memory_allocated`` is reported instead. The rounds
run the methods interleaved and keep each one's best meta-batch time, because this machine
is shared and other jobs steal cycles; ``warmup_s`` is the first meta-batch's time minus
the best one (compilation, allocator and oneDNN primitive caches).

    .venv/bin/python -m benchmarks.maml_speed [--quick] [--device cpu] [--rounds 2]
        [--allocator own|plain|kept]

``--baseline DIR`` also runs every ``metakd`` method with the package found in ``DIR`` (a
checkout of an earlier commit, for example ``git worktree add /tmp/base e9936d3``), labelled
``base:METHOD``, interleaved with the others in the same rounds: a side-by-side regression
check on the same machine. ``base:metakd:auto`` is then that commit's default.

``--allocator`` sets the workers' C heap (``benchmarks._common.ALLOCATORS``): ``own``, the
default, leaves each method's process as the method sets it itself, as a program that imports
the library has it: ``MAMLWrapper``'s default (``compile="auto"``) keeps freed memory on the
CPU from its first meta-batch (:func:`metakd.engine.keep_freed_memory`), ``compile=False``,
learn2learn and higher leave glibc's defaults; ``plain`` keeps glibc's defaults in every
process; ``kept`` keeps freed memory in every process. Each method records
``keep_freed_memory``, as it stood after its timed meta-batches.

``--cold-start`` adds, per config, a ``"cold_start"`` entry: each method's first meta-batch in
a fresh process with an empty Inductor cache (``TORCHINDUCTOR_CACHE_DIR`` set to a new
folder), then in a second fresh process with the cache the first one filled: what a user's
first run and every later one wait before their first step.

``--roofline`` adds, per config, a ``"roofline"`` entry next to the methods:

- ``flops_per_task``: the arithmetic of one task's meta-gradient, counted with forward hooks
  on the model's ``Conv2d`` and ``Linear`` layers (2 x multiply-accumulates; biases,
  BatchNorm, ReLU, pooling and the loss left out). With ``F`` the forward FLOPs of one image,
  ``S`` support and ``Q`` query images per task and ``K`` inner steps: each inner step is a
  forward and a backward of the support, ``3*F*S`` (a backward = 2 forwards: the input and
  the weight gradients); the query's forward and backward are ``3*F*Q``; second order adds
  the backward through each inner step's forward and backward, at twice their cost,
  ``6*F*S`` a step. So ``K*3*F*S + 3*F*Q``, plus ``K*6*F*S`` in second order (the JSON
  repeats this as ``accounting`` and gives the terms).
- ``achievable``: this machine's rate on the same shapes: ``F.conv2d`` / ``F.linear``
  forward + backward (input, weight and bias gradients) of every layer, best of a few
  repeats each, at a task's support and query batch and at those of a vmap chunk of tasks
  (``metakd.meta``'s auto chunk, through shared weights), with one thread and with torch's
  thread count, the faster kept; the second-order terms are counted at the same rate. The
  bound (``gflop_per_s``, and ``tasks_per_s_bound``: the tasks/s the arithmetic would
  allow) takes a task's support FLOPs at the support batch's rate and its query FLOPs at the
  query batch's, one task at a time or in chunks, whichever is faster.
- ``methods``: each method's ``tasks_per_s x flops_per_task`` (``achieved_gflop_per_s``) and
  its ``roofline_share`` of the achievable rate.
- ``profiles``: for ``metakd:auto`` and ``metakd:auto:compile=0`` (if measured), in a fresh
  process, ``torch.profiler`` over 2 meta-batches after 2 unprofiled ones: the 10 ops with
  the most self CPU time and their share of the profile's total (profiling adds overhead to
  every op, more to small ones; with worker threads the total can exceed the wall time; a
  compiled graph's own kernels are not listed op by op, so its total falls short of the wall
  time, ``self_cpu_vs_wall``).

The last line of output is one JSON object; with ``--out`` it is also written there, the log
next to it (``.log``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._common import (
    ALLOCATORS,
    Clock,
    finish,
    heap_kept,
    keep_heap,
    op_profile,
    out_option,
    output,
    peak_rss_since_reset_mb,
    reset_peak_rss,
    result_log,
    worker_command,
)

DEFAULT_METHODS = (
    "metakd:auto",
    "metakd:auto:compile=0",
    "metakd:auto:workers=2+compile=0",
    "learn2learn",
    "higher",
)


@dataclass(frozen=True)
class Config:
    """One benchmark setting (what every method is run on)."""

    name: str
    model: str = "maml_omniglot"
    image_size: int = 28
    channels: int = 1
    ways: int = 5
    shots: int = 1
    queries: int = 15
    meta_batch: int = 32
    steps: int = 1
    first_order: bool = False
    inner_lr: float = 0.4
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def standard_configs() -> list[Config]:
    """The settings of the report: Omniglot 8 ways to run it, miniImageNet 1."""
    out = []
    for queries in (15, 1):
        for steps in (1, 5):
            for first_order in (False, True):
                order = "fo" if first_order else "so"
                out.append(
                    Config(
                        f"omniglot_q{queries}_s{steps}_{order}",
                        queries=queries,
                        steps=steps,
                        first_order=first_order,
                    )
                )
    out.append(
        Config(
            "miniimagenet_q15_s5_so",
            model="maml_miniimagenet",
            image_size=84,
            channels=3,
            meta_batch=4,
            steps=5,
            inner_lr=0.01,
        )
    )
    return out


def make_model_and_batch(cfg: Config, device: torch.device) -> tuple[nn.Module, Any]:
    """The seeded model and meta-batch of ``cfg`` (identical in every subprocess)."""
    from metakd.data import TaskBatch
    from metakd.nn import create

    torch.manual_seed(0)
    model = create(cfg.model, num_classes=cfg.ways, **cfg.model_kwargs).to(device)
    g = torch.Generator().manual_seed(1)
    t, n, k, q = cfg.meta_batch, cfg.ways, cfg.shots, cfg.queries
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    batch = TaskBatch(
        torch.rand(t, n * k, *shape, generator=g),
        torch.arange(n).repeat_interleave(k).repeat(t, 1),
        torch.rand(t, n * q, *shape, generator=g),
        torch.arange(n).repeat_interleave(q).repeat(t, 1),
    ).to(device)
    return model, batch


def _method_options(method: str) -> str:
    """The ``key=value+key=value`` part of ``metakd:BACKEND:OPTIONS`` (empty without it)."""
    parts = method.split(":")
    return parts[2] if len(parts) > 2 else ""


def _metakd_kwargs(spec: str) -> dict[str, Any]:
    """``key=value+key=value`` -> MAMLWrapper keyword arguments."""
    kwargs: dict[str, Any] = {}
    for item in filter(None, spec.split("+")):
        key, value = item.split("=")
        if key == "heap":  # the worker's environment (_worker_allocator), not an argument
            if value != "plain":
                raise ValueError(f"heap={value!r}: only heap=plain")
        elif key == "compile":
            kwargs[key] = "auto" if value == "auto" else bool(int(value))
        elif key == "compile_after_s":
            kwargs[key] = float(value)
        else:
            kwargs[key] = int(value)
    return kwargs


def make_step(method: str, cfg: Config, model: nn.Module, batch: Any) -> Callable[[], None]:
    """A closure that computes one meta-gradient (into ``.grad``) with ``method``.

    For metakd the closure has a ``maml`` attribute (the wrapper), so that the caller can wait
    for a background compile.
    """
    t = len(batch)
    if method.startswith("base:"):
        method = method[len("base:"):]
    if method.startswith("metakd"):
        from metakd.meta import MAMLWrapper

        parts = method.split(":")
        backend = parts[1] if len(parts) > 1 else "auto"
        kwargs = _metakd_kwargs(_method_options(method))
        maml = MAMLWrapper(
            model, cfg.inner_lr, cfg.steps, first_order=cfg.first_order, backend=backend, **kwargs
        )

        def step() -> None:
            model.zero_grad(set_to_none=True)
            maml.meta_loss(batch)[0].backward()

        step.maml = maml  # type: ignore[attr-defined]
        return step
    if method == "learn2learn":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import learn2learn as l2l
        maml_l2l = l2l.algorithms.MAML(model, lr=cfg.inner_lr, first_order=cfg.first_order)

        def step() -> None:
            model.zero_grad(set_to_none=True)
            for i in range(t):
                learner = maml_l2l.clone()
                for _ in range(cfg.steps):
                    learner.adapt(F.cross_entropy(learner(batch.support_x[i]), batch.support_y[i]))
                (F.cross_entropy(learner(batch.query_x[i]), batch.query_y[i]) / t).backward()

        return step
    if method == "higher":
        import higher

        inner_opt = torch.optim.SGD(model.parameters(), lr=cfg.inner_lr)

        def detach(grads: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
            return [None if g is None else g.detach() for g in grads]

        callback = detach if cfg.first_order else None

        def step() -> None:
            model.zero_grad(set_to_none=True)
            for i in range(t):
                with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (
                    fnet,
                    diffopt,
                ):
                    for _ in range(cfg.steps):
                        loss = F.cross_entropy(fnet(batch.support_x[i]), batch.support_y[i])
                        diffopt.step(loss, grad_callback=callback)
                    (F.cross_entropy(fnet(batch.query_x[i]), batch.query_y[i]) / t).backward()

        return step
    raise ValueError(f"unknown method {method!r}")


def measure(
    method: str, cfg: Config, repeats: int = 3, device: str = "cpu", allocator: str = "own"
) -> dict[str, Any]:
    """Time ``repeats`` meta-batches of ``method`` on ``cfg`` (after one warm-up batch), with
    the C heap set as ``allocator`` says (:func:`benchmarks._common.keep_heap`).

    Returns:
        ``tasks_per_s`` (best batch), ``median_tasks_per_s``, ``first_batch_s``,
        ``keep_freed_memory`` (whether the C heap kept freed memory),
        ``warmup_s``, ``peak_rss_mb``, ``rss_delta_mb`` (CPU) or ``peak_cuda_mb`` (CUDA), and
        the meta-gradient's norm (a cheap check that all methods computed the same thing).
    """
    dev = torch.device(device)
    # own: MAMLWrapper's default keeps the heap itself, nothing else does (no `metakd train`)
    kept = keep_heap(allocator, dev.type, keeps_itself=False)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # torch.func.grad imports torch._dynamo (and sympy) on first use: ~175 MB of Python
    # modules, paid once per process by the vmap backend and compile=True. Import it in every
    # method's process before the baseline so that rss_delta_mb is working memory only; the
    # import's own cost is reported as dynamo_import_mb.
    importlib.import_module("torch._dynamo")

    rss_dynamo = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model, batch = make_model_and_batch(cfg, dev)
    step = make_step(method, cfg, model, batch)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t0
    compile_info: dict[str, Any] = {}
    # Resetting VmHWM also lowers ru_maxrss (both read the kernel's mark): keep the peak so far.
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    steady = dev.type != "cuda" and reset_peak_rss()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    steady_mb = peak_rss_since_reset_mb() if steady else None
    times.sort()
    grad_norm = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    out: dict[str, Any] = {
        "tasks_per_s": len(batch) / times[0],
        "median_tasks_per_s": len(batch) / times[len(times) // 2],
        "first_batch_s": first,
        "warmup_s": max(first - times[0], 0.0),
        "grad_norm": float(grad_norm.norm()),
        "dynamo_import_mb": (rss_dynamo - rss_start) / 1024,
        "keep_freed_memory": heap_kept(kept),
        **compile_info,
    }
    if dev.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak = max(peak_before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        out["peak_rss_mb"] = peak / 1024  # Linux: kilobytes
        out["rss_delta_mb"] = (peak - rss0) / 1024
        out["steady_peak_rss_mb"] = steady_mb
    return out


BASELINE_SRC: str | None = None


def _worker_allocator(method: str, allocator: str) -> str:
    """The C heap of ``method``'s worker: ``plain`` for a ``heap=plain`` method, else
    ``allocator``."""
    return "plain" if "heap=plain" in _method_options(method).split("+") else allocator


def _subprocess(method: str, cfg: Config, repeats: int, device: str,
                allocator: str = "own") -> dict[str, Any]:
    allocator = _worker_allocator(method.removeprefix("base:"), allocator)
    spec = json.dumps({"method": method, "cfg": asdict(cfg), "repeats": repeats, "device": device,
                       "allocator": allocator})
    base = method.startswith("base:")
    if base and BASELINE_SRC is None:
        raise ValueError(f"{method}: pass --baseline DIR")
    command, env = worker_command("benchmarks.maml_speed", spec, BASELINE_SRC if base else None,
                                  allocator)
    proc = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} on {cfg.name} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run_all(
    configs: list[Config], methods: list[str], rounds: int, repeats: int, device: str,
    log: Callable[[str], None] = print, allocator: str = "own",
) -> dict[str, Any]:
    """Measure every method on every config, interleaved over ``rounds`` rounds."""
    results: dict[str, dict[str, Any]] = {}
    for cfg in configs:
        best: dict[str, dict[str, Any]] = {}
        for r in range(rounds):
            order = methods if r % 2 == 0 else methods[::-1]
            for method in order:
                res = _subprocess(method, cfg, repeats, device, allocator)
                prev = best.get(method)
                if prev is None:
                    best[method] = res
                else:  # keep the best speed, the largest memory and warm-up seen
                    for key in ("tasks_per_s", "median_tasks_per_s"):
                        prev[key] = max(prev[key], res[key])
                    for key in ("peak_rss_mb", "rss_delta_mb", "steady_peak_rss_mb",
                                "peak_cuda_mb", "warmup_s"):
                        if key in res:
                            prev[key] = max(prev[key], res[key])
                log(f"{cfg.name:24s} {method:34s} {res['tasks_per_s']:7.1f} tasks/s, first "
                    f"meta-batch {res['first_batch_s']:.1f} s")
        ref = best.get("learn2learn")
        for res in best.values():
            res["tasks_per_s"] = round(res["tasks_per_s"], 2)
            res["median_tasks_per_s"] = round(res["median_tasks_per_s"], 2)
            if ref is not None:
                res["speed_vs_learn2learn"] = round(res["tasks_per_s"] / ref["tasks_per_s"], 3)
                for key in ("peak_rss_mb", "rss_delta_mb", "steady_peak_rss_mb", "peak_cuda_mb"):
                    if key in res and ref.get(key):
                        res[key.replace("_mb", "_vs_learn2learn")] = round(res[key] / ref[key], 3)
            for key in ("first_batch_s", "warmup_s", "peak_rss_mb", "rss_delta_mb",
                        "steady_peak_rss_mb", "grad_norm", "dynamo_import_mb", "compile_s",
                        "eager_tasks_per_s"):
                if key in res:
                    res[key] = round(res[key], 4)
        results[cfg.name] = best
    return results


# ------------------------------------------------------------------------------- roofline
# The arithmetic of one task's meta-gradient, this machine's rate on the same shapes, and a
# profile of where the rest of the time goes (``--roofline``; accounting in the docstring).

ROOFLINE_ACCOUNTING = (
    "F = 2 x MACs of the Conv2d and Linear layers for one image's forward pass (biases, "
    "BatchNorm, ReLU, pooling and the loss not counted); S support and Q query images per "
    "task, K inner steps. Each inner step: forward + backward of the support = 3*F*S "
    "(backward = 2x forward: input and weight gradients). Query: forward + backward = 3*F*Q. "
    "Second order adds the backward through every inner step's forward + backward, at 2x "
    "their cost: 6*F*S per step. FLOPs/task = K*3*F*S + 3*F*Q (+ K*6*F*S in second order)."
)


#: One Conv2d or Linear call: the module, its input's shape and the call's forward FLOPs.
LayerCall = tuple[nn.Module, tuple[int, ...], int]


def trace_layers(model: nn.Module, x: torch.Tensor) -> list[LayerCall]:
    """The Conv2d and Linear calls of ``model(x)``, in order: ``(module, input shape, FLOPs)``.

    FLOPs are 2 x multiply-accumulates of the call (bias additions left out): a convolution
    does ``in_channels / groups * kh * kw`` of them per output element, a linear layer
    ``in_features``.
    """
    calls: list[LayerCall] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs = output.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            assert isinstance(module, nn.Linear)
            macs = output.numel() * module.in_features
        calls.append((module, tuple(inputs[0].shape), 2 * macs))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return calls


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """Forward FLOPs (2 x MACs) of the Conv2d and Linear layers of ``model(x)``."""
    return sum(flops for _, _, flops in trace_layers(model, x))


def _per_image_layers(cfg: Config) -> tuple[nn.Module, list[LayerCall]]:
    """``cfg``'s model and its layer calls for one image (traced on two: BatchNorm in the
    model normalises over the batch)."""
    from metakd.nn import create

    torch.manual_seed(0)
    model = create(cfg.model, num_classes=cfg.ways, **cfg.model_kwargs)
    x = torch.rand(2, cfg.channels, cfg.image_size, cfg.image_size)
    calls = [(m, (1, *shape[1:]), flops // 2) for m, shape, flops in trace_layers(model, x)]
    return model, calls


def task_flops(cfg: Config) -> dict[str, Any]:
    """The FLOPs of one task's meta-gradient under :data:`ROOFLINE_ACCOUNTING`."""
    _, calls = _per_image_layers(cfg)
    f = sum(flops for _, _, flops in calls)
    s, q, k = cfg.ways * cfg.shots, cfg.ways * cfg.queries, cfg.steps
    terms = {
        "inner_steps": k * 3 * f * s,
        "query": 3 * f * q,
        "second_order": 0 if cfg.first_order else k * 6 * f * s,
    }
    return {
        "forward_flops_per_image": f,
        "support_images": s,
        "query_images": q,
        "steps": k,
        "terms": terms,
        "support_flops": terms["inner_steps"] + terms["second_order"],
        "query_flops": terms["query"],
        "flops_per_task": sum(terms.values()),
    }


def _layer_seconds(
    module: nn.Module, shape: tuple[int, ...], images: int, dev: torch.device, repeats: int
) -> float:
    """The fastest, in seconds, of at least ``repeats`` single calls (up to ``10 * repeats``
    within ``0.2 * repeats`` s) of the forward + backward (input, weight and bias gradients)
    of ``module``'s operation on a batch of ``images`` inputs of ``shape[1:]``."""
    w = module.weight.detach().to(dev).requires_grad_()
    b = None if module.bias is None else module.bias.detach().to(dev).requires_grad_()
    x = torch.randn(images, *shape[1:], device=dev, requires_grad=True)
    wrt = [t for t in (x, w, b) if t is not None]

    def fwd() -> torch.Tensor:
        if isinstance(module, nn.Conv2d):
            return F.conv2d(x, w, b, module.stride, module.padding, module.dilation,
                            module.groups)
        return F.linear(x, w, b)

    with torch.no_grad():
        grad_out = torch.randn_like(fwd())

    def timed() -> float:
        t0 = time.perf_counter()
        torch.autograd.grad(fwd(), wrt, grad_out)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0

    timed()
    timed()
    # Single calls, the fastest kept: on a shared machine an average over many calls mostly
    # measures the other jobs (a descheduled or throttled intra-op thread stalls a whole
    # call, here for up to ~100 ms).
    best, start, samples = float("inf"), time.perf_counter(), 0
    budget = 0.2 * repeats
    while samples < repeats or (samples < 10 * repeats and time.perf_counter() - start < budget):
        best = min(best, timed())
        samples += 1
    return best


def _time_layers(
    calls: list[LayerCall], images: int, dev: torch.device,
    repeats: int,
) -> float:
    """Seconds for forward + backward of every layer in ``calls`` at a batch of ``images``:
    the sum over layers of each one's best of ``repeats``."""
    return sum(_layer_seconds(m, shape, images, dev, repeats) for m, shape, _ in calls)


def achievable_rate(cfg: Config, device: str = "cpu", repeats: int = 5) -> dict[str, Any]:
    """This machine's rate (GFLOP/s) on the forward + backward of ``cfg``'s Conv2d and Linear
    layers, at the batches the paths use: one task's support and query images (``func``,
    learn2learn, higher) and those of a vmap chunk of tasks (``metakd.meta``'s auto chunk,
    timed as one batch through shared weights).

    On CPU each batch is timed with one thread and with torch's thread count, and the faster
    is kept: on a shared machine an op split over two threads often waits ~100 ms for a
    descheduled peer, which one thread never does.
    """
    from metakd.meta._func import auto_chunk

    dev = torch.device(device)
    _, calls = _per_image_layers(cfg)
    f = sum(flops for _, _, flops in calls)
    _, batch = make_model_and_batch(cfg, torch.device("cpu"))
    chunk = auto_chunk(batch, 1 if cfg.first_order else cfg.steps)
    s, q = cfg.ways * cfg.shots, cfg.ways * cfg.queries
    sizes = {"support": s, "query": q, "chunk_support": chunk * s, "chunk_query": chunk * q}
    threads = torch.get_num_threads()
    rates: dict[str, Any] = {}
    try:
        for name, images in sizes.items():
            by_threads = {}
            for n in sorted({1, threads}) if dev.type == "cpu" else [threads]:
                torch.set_num_threads(n)
                by_threads[n] = _time_layers(calls, images, dev, repeats)
            n, seconds = min(by_threads.items(), key=lambda item: item[1])
            rates[name] = {
                "images": images, "ms": round(seconds * 1e3, 4), "threads": n,
                "gflop_per_s": round(3 * f * images / seconds / 1e9, 3),
                "gflop_per_s_by_threads": {str(k): round(3 * f * images / v / 1e9, 3)
                                           for k, v in by_threads.items()},
            }
    finally:
        torch.set_num_threads(threads)
    return {"chunk_tasks": chunk, "batches": rates}


def profile_ops(
    method: str, cfg: Config, device: str = "cpu", batches: int = 2, top: int = 10
) -> dict[str, Any]:
    """``torch.profiler`` over ``batches`` meta-batches of ``method`` (after two unprofiled
    ones: compilation and caches): the ``top`` ops by self CPU time and their share of the
    profile's total self CPU time. ``self_cpu_vs_wall`` is that total over the wall time:
    well under 1 where the work runs outside profiled ops (a compiled graph's own kernels,
    which the profiler does not list one by one)."""
    dev = torch.device(device)
    model, batch = make_model_and_batch(cfg, dev)
    step = make_step(method, cfg, model, batch)
    for _ in range(2):
        step()
    return op_profile(step, batches, dev.type == "cuda", top)


def _profile_subprocess(method: str, cfg: Config, device: str) -> dict[str, Any]:
    spec = json.dumps({"method": method, "cfg": asdict(cfg), "device": device, "profile": True})
    command, env = worker_command("benchmarks.maml_speed", spec)
    proc = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"profile of {method} on {cfg.name} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


PROFILED_METHODS = ("metakd:auto", "metakd:auto:compile=0")


def roofline(
    cfg: Config, measured: dict[str, dict[str, Any]], device: str = "cpu", repeats: int = 5,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The roofline of ``cfg``: FLOPs per task, the achievable rate, each measured method's
    share of it, and a profile of the metakd default (and its compiled path, if measured).

    The bound: a task's support FLOPs at the support batch's rate plus its query FLOPs at the
    query batch's rate, one task at a time or in vmap chunks, whichever is faster.
    """
    flops = task_flops(cfg)
    rate = achievable_rate(cfg, device, repeats)
    r = rate["batches"]

    def seconds(support: str, query: str) -> float:
        return (flops["support_flops"] / (r[support]["gflop_per_s"] * 1e9)
                + flops["query_flops"] / (r[query]["gflop_per_s"] * 1e9))

    per_task, chunked = seconds("support", "query"), seconds("chunk_support", "chunk_query")
    bound_s = min(per_task, chunked)
    achievable = flops["flops_per_task"] / bound_s / 1e9
    methods = {}
    for method, res in measured.items():
        gflops = res["tasks_per_s"] * flops["flops_per_task"] / 1e9
        methods[method] = {"tasks_per_s": res["tasks_per_s"], "achieved_gflop_per_s":
                           round(gflops, 3), "roofline_share": round(gflops / achievable, 4)}
    profiles = {m: _profile_subprocess(m, cfg, device) for m in PROFILED_METHODS if m in measured}
    out = {
        "accounting": ROOFLINE_ACCOUNTING,
        **flops,
        "achievable": {
            **rate,
            "per_task_gflop_per_s": round(flops["flops_per_task"] / per_task / 1e9, 3),
            "chunked_gflop_per_s": round(flops["flops_per_task"] / chunked / 1e9, 3),
            "gflop_per_s": round(achievable, 3),
            "tasks_per_s_bound": round(1 / bound_s, 2),
        },
        "methods": methods,
        "profiles": profiles,
    }
    log_roofline(cfg.name, out, log)
    return out


def log_roofline(name: str, rf: dict[str, Any], log: Callable[[str], None] = print) -> None:
    """A short human table of one config's roofline."""
    a = rf["achievable"]
    rates = ", ".join(f"{k} ({v['images']} img) {v['gflop_per_s']:.1f}"
                      for k, v in a["batches"].items())
    log(f"roofline {name}: {rf['flops_per_task'] / 1e6:.2f} MFLOP/task "
        f"({rf['forward_flops_per_image'] / 1e6:.3f} MFLOP forward/image); achievable GFLOP/s: "
        f"{rates}; bound {a['gflop_per_s']:.1f} GFLOP/s = {a['tasks_per_s_bound']:.0f} tasks/s")
    log(f"  {'method':34s} {'tasks/s':>8s} {'GFLOP/s':>8s} {'share':>6s}")
    for method, m in rf["methods"].items():
        log(f"  {method:34s} {m['tasks_per_s']:8.1f} {m['achieved_gflop_per_s']:8.2f} "
            f"{m['roofline_share']:6.1%}")
    for method, p in rf["profiles"].items():
        log(f"  profile {method}: {p['batches']} meta-batches, {p['wall_ms']:.0f} ms wall, "
            f"{p['total_self_cpu_ms']:.0f} ms self CPU in profiled ops "
            f"({p['self_cpu_vs_wall']:.0%} of wall); top ops:")
        for o in p["ops"]:
            log(f"    {o['share']:6.1%} {o['self_cpu_ms']:9.1f} ms  {o['op']}")


def cold_start(configs: list[Config], methods: list[str], device: str,
               log: Callable[[str], None]) -> dict[str, Any]:
    """Each method's first meta-batch in a fresh process with an empty Inductor cache (cold),
    then in a second fresh process with the cache the first one filled (warm)."""
    out: dict[str, Any] = {}
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        for cfg in configs:
            row: dict[str, Any] = {}
            for method in methods:
                with tempfile.TemporaryDirectory(prefix="inductor-cold-") as cache:
                    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
                    first = [_subprocess(method, cfg, 1, device)["first_batch_s"]
                             for _ in range(2)]
                row[method] = {"cold_first_batch_s": round(first[0], 2),
                               "warm_first_batch_s": round(first[1], 2)}
                log(f"{cfg.name:24s} {method:34s} first meta-batch: cold {first[0]:6.1f} s, "
                    f"warm {first[1]:6.1f} s")
            out[cfg.name] = row
    finally:
        if old is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round, one repeat, 3 configs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--configs", default="", help="comma-separated config names")
    parser.add_argument("--baseline", default=None, metavar="DIR",
                        help="also run the metakd methods with the package in DIR (base:...)")
    parser.add_argument("--roofline", action="store_true",
                        help="also count each config's FLOPs per task, time the machine's "
                             "conv/linear rate on its shapes and profile metakd:auto")
    parser.add_argument("--cold-start", action="store_true",
                        help="also time each method's first meta-batch with an empty Inductor "
                             "cache and again with the cache filled (two fresh processes)")
    parser.add_argument("--allocator", default="own", choices=ALLOCATORS,
                        help="own (default): each method's process as the method sets its "
                             "C heap itself (MAMLWrapper's default keeps freed memory on the "
                             "CPU); plain: glibc's defaults everywhere; kept: every method "
                             "keeps freed memory")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    out_option(parser)
    args = parser.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        if spec.get("profile"):
            print(json.dumps(profile_ops(spec["method"], Config(**spec["cfg"]), spec["device"])))
            return
        result = measure(spec["method"], Config(**spec["cfg"]), spec["repeats"], spec["device"],
                         spec.get("allocator", "own"))
        print(json.dumps(result))
        return

    from metakd.meta import default_backend

    configs = standard_configs()
    rounds, repeats = args.rounds, args.repeats
    if args.quick:
        configs = [c for c in configs if c.name in (
            "omniglot_q15_s1_so", "omniglot_q1_s1_so", "miniimagenet_q15_s5_so")]
        rounds, repeats = 1, 1
    if args.configs:
        wanted = args.configs.split(",")
        configs = [c for c in configs if c.name in wanted]
    methods = args.methods.split(",")
    if args.baseline:
        global BASELINE_SRC
        BASELINE_SRC = os.path.abspath(args.baseline)
        methods += [f"base:{m}" for m in methods if m.startswith("metakd")]
    with result_log(output(args, None)) as (log, out):
        clock = Clock()
        log(f"allocator: {args.allocator}")
        results = run_all(configs, methods, rounds, repeats, args.device, log, args.allocator)
        if args.cold_start:
            for name, row in cold_start(configs, [m for m in methods if not m.startswith(
                    "base:")], args.device, log).items():
                results[name]["cold_start"] = row
        if args.roofline:
            for cfg in configs:
                results[cfg.name]["roofline"] = roofline(
                    cfg, results[cfg.name], args.device, 2 if args.quick else 5, log)
        summary = {
            "benchmark": "maml_speed",
            "device": args.device,
            "default_backend": default_backend(args.device),
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "load_avg_1m_end": round(os.getloadavg()[0], 2),
            "rounds": rounds,
            "repeats": repeats,
            "allocator": args.allocator,
            **clock.record(),
            "results": results,
        }
        finish(summary, out, log)


if __name__ == "__main__":
    main()
