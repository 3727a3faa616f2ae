"""Training-step speed and memory of metakd's methods against plain loops as the originals write them.

For each method other than plain MAML (``benchmarks.maml_speed`` has MAML), the same training
step is run two ways on the same seeded network weights and inputs:

- ``metakd``: the library's meta-learner, built as its recipe builds it;
- ``reference``: a plain loop in the style of the original project's code.

Methods (sizes in ``benchmarks._method_steps.Config``; the step builders there say what each
reference keeps of its original):

- ``pmaml``: PMAML's meta-training step, 5-way 1-shot Omniglot-sized (28 px) episodes with
  15 queries, meta-batch 4, a Conv-4/32 student with one second-order inner step and a frozen
  Conv-4/64 teacher; metakd ``PMAML`` vs the official code's per-task MAML-Pytorch loop;
- ``mtl``: MTL's meta phase, scale-shift Conv-4/64 body, head-only inner loop of 10 first-order
  steps, 5 queries; metakd ``MAMLWrapper(adapt="head")`` vs the PyTorch MTL project's
  ``meta_forward`` per episode;
- ``meta_lstm``: Meta-LSTM, Conv-4/32 learner, 12 epochs over the 1-shot support set, 15
  queries; metakd ``MetaLSTM`` vs markdtw's ``train_learner`` loop;
- ``meta_baseline``: Meta-Baseline's episodic step, Conv-4/64 encoder, 15 queries; metakd
  ``MetaBaseline`` vs the original ``MetaBaseline.forward`` and training loop;
- ``cifar_kd``: KD on CIFAR-100-sized 32 px images, batch 64, resnet32x4 → resnet8x4; metakd
  ``Distiller`` vs mdistiller's ``train_iter``.

The measurement is ``maml_speed``'s: each (method, implementation) runs in a fresh subprocess,
so ``ru_maxrss`` is its own peak resident memory (``peak_rss_mb``; ``rss_delta_mb`` the peak
minus the resident size just before the first step, with imports, model and data already
there; ``steady_peak_rss_mb`` the peak of the timed steps alone, through
``/proc/self/clear_refs``); on CUDA ``torch.cuda.max_memory_allocated`` (``peak_cuda_mb``).
The rounds run the implementations interleaved and keep each one's best step time
(``per_s``: tasks or images per second); ``first_step_s`` is the first step's time and
``warmup_s`` that minus the process's best one (each the smallest over the rounds; the
memory figures the largest). ``speed_ratio`` is metakd's ``per_s`` over the
reference's in the same run (above 1: metakd faster); ``speed_ratio_per_round`` the ratio
within each round (two processes run one after the other, so under similar load) and
``speed_ratio_median`` their median, the steadier figure on a shared machine. The memory
ratios are metakd's over the reference's. ``equal_work`` compares the loss and the gradient
norm of the first step of both sides (relative difference at most ``TOLERANCE``): the
comparison is of the same computation.

``--baseline DIR`` also runs each method's metakd step with the package found in ``DIR`` (a
checkout of an earlier commit, ``git worktree add /tmp/base COMMIT``), as a third side
``base`` in the same interleaved rounds; ``speed_ratio_vs_base`` (and its per-round median)
is then metakd's speed over that commit's: a side-by-side regression check of the library's
own changes, which also move the reference where both run the same :mod:`metakd.nn` network.

Where the time goes: in the first round each process runs one more step under
``torch.profiler`` (``profile``: the top ops and ``kernel_shares``, the share of the self CPU
time in convolutions, matrix products, batch norm and pooling, and everything else, by
``benchmarks._common.KERNEL_CLASSES``). ``speed_ratio_bound`` is the reference's step time
over metakd's heavy-kernel time alone (its step time times the heavy share): the ratio
metakd would reach if all its other work took no time while its heavy kernels ran as they
do now. Where both sides run the same kernels on the same shapes, that bound is the most any
rewriting of the step can give without running those kernels faster or on less data.

The C heap (``--allocator``): glibc's defaults hand every large freed block back to the OS,
so each step faults its activation maps' pages in again (:mod:`metakd.engine.cpu`).
``metakd train`` keeps freed memory in the heap on the CPU
(:func:`metakd.engine.keep_freed_memory`), and so do the metakd sides by default (``own``),
while the reference runs with glibc's defaults, as its project's script does;
``--allocator kept`` keeps it on every side, so that the ratio is that of the steps' own
work, and ``plain`` on none (its workers run with ``METAKD_KEEP_FREED_MEMORY=0``, so the
library's own setting is off too). Each side records ``keep_freed_memory`` as it stood after
its timed steps.

Each worker runs on ``--threads`` torch threads, 1 by default as the other benchmarks: on
the shared 2-core CPU two threads per worker made single steps up to 25 times slower while
other jobs ran (the threads wait for each other), which swamped the comparison; 1-thread
steps stayed within a few per cent of their best.

    .venv/bin/python -m benchmarks.method_speed [--quick] [--device cpu|cuda] [--rounds N]
        [--threads N] [--allocator own|kept|plain]

``--quick``: one round of one timed step on smaller batches (``_method_steps.QUICK``). The
last line of output is one JSON object; without ``--quick`` it is also written to
``benchmarks/results/method_speed_DEVICE.json`` (or ``--out``), the log next to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
from collections.abc import Callable
from typing import Any

import torch

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
from benchmarks._method_steps import IMPLS, METHODS, QUICK, UNITS, Config, build, time_now

#: The largest relative difference of the first step's loss and gradient norm between the
#: two sides that still counts as the same computation (float32, different op orders).
TOLERANCE = 1e-4

MEMORY_KEYS = ("peak_rss_mb", "rss_delta_mb", "steady_peak_rss_mb", "peak_cuda_mb")


def _maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes


def measure(method: str, impl: str, cfg: Config, repeats: int = 3, device: str = "cpu",
            threads: int | None = None, profile: bool = False,
            allocator: str = "own") -> dict[str, Any]:
    """One warm-up step then ``repeats`` timed steps of ``method`` as ``impl`` runs it
    (and with ``profile``, one more step under ``torch.profiler``: ``profile``, see
    :func:`benchmarks._common.op_profile`), with the C heap set as ``allocator`` says
    (:func:`benchmarks._common.keep_heap`).

    Returns:
        ``per_s`` (best step), ``median_per_s``, ``first_step_s``, ``warmup_s``, the first
        step's ``loss`` and ``grad_norm``, ``keep_freed_memory`` (whether the C heap kept
        freed memory), the memory (``peak_rss_mb``, ``rss_delta_mb``,
        ``steady_peak_rss_mb`` on CPU; ``peak_cuda_mb`` on CUDA) and what the step adds
        (PMAML's metakd side: ``teacher_logits_s``, the teacher's pass alone).
    """
    dev = torch.device(device)
    # own: the metakd side stands for `metakd train`, which keeps the heap; the reference not
    kept = keep_heap(allocator, dev.type, keeps_itself=impl != "reference")
    if threads is not None:
        torch.set_num_threads(threads)
    # torch.func's vmap imports torch._dynamo (and sympy) on first use: import it in every
    # process before the baseline so that rss_delta_mb is working memory on both sides.
    importlib.import_module("torch._dynamo")
    step = build(method, impl, cfg, dev)
    rss0 = _maxrss_kb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time_now(dev)
    loss = step.run()
    first = time_now(dev) - t0
    grads = [p.grad.flatten() for p in step.params if p.grad is not None]
    grad_norm = float(torch.cat(grads).norm()) if grads else 0.0
    loss_value = float(loss)
    # Resetting VmHWM also lowers ru_maxrss (both read the kernel's mark): keep the peak so far.
    peak_before = _maxrss_kb()
    steady = dev.type != "cuda" and reset_peak_rss()
    times = []
    for _ in range(repeats):
        t0 = time_now(dev)
        step.run()
        times.append(time_now(dev) - t0)
    times.sort()
    out: dict[str, Any] = {
        "per_s": step.units / times[0],
        "median_per_s": step.units / times[len(times) // 2],
        "best_step_s": times[0],
        "first_step_s": first,
        "warmup_s": max(first - times[0], 0.0),
        "loss": loss_value,
        "grad_norm": grad_norm,
        "units_per_step": step.units,
        "keep_freed_memory": heap_kept(kept),
    }
    if dev.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        out["steady_peak_rss_mb"] = peak_rss_since_reset_mb() if steady else None
        peak = max(peak_before, _maxrss_kb())
        out["peak_rss_mb"] = peak / 1024
        out["rss_delta_mb"] = (peak - rss0) / 1024
    if step.extra is not None:
        out.update(step.extra())
    if profile:
        out["profile"] = op_profile(step.run, 1, dev.type == "cuda", top=8)
    return out


BASELINE_SRC: str | None = None


def _subprocess(method: str, impl: str, cfg: Config, repeats: int, device: str,
                threads: int | None, profile: bool = False,
                allocator: str = "own") -> dict[str, Any]:
    base = impl == "base"  # metakd's step, with the earlier package first on the path
    if base and BASELINE_SRC is None:
        raise ValueError("the base side needs --baseline DIR")
    spec = json.dumps({"method": method, "impl": "metakd" if base else impl,
                       "cfg": dataclasses.asdict(cfg), "repeats": repeats, "device": device,
                       "threads": threads, "profile": profile, "allocator": allocator})
    command, env = worker_command("benchmarks.method_speed", spec,
                                  BASELINE_SRC if base else None, allocator)
    proc = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} ({impl}) failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def compare(method: str, sides: dict[str, dict[str, Any]],
            rounds: list[dict[str, float]] | None = None) -> dict[str, Any]:
    """The per-method summary: both sides, the ratios and the equal-work check.

    ``rounds``: each round's best ``per_s`` of each side; their ratios (``metakd / reference``
    of one round, the two processes run one right after the other) and the median of those
    are reported next to the ratio of the best speeds, which one quiet moment can tilt on a
    shared machine.
    """
    m, r = sides["metakd"], sides["reference"]
    loss_diff = _relative(m["loss"], r["loss"])
    grad_diff = _relative(m["grad_norm"], r["grad_norm"])
    paired = [x["metakd"] / x["reference"] for x in rounds or []]
    out: dict[str, Any] = {
        "unit": UNITS[method],
        "speed_ratio": round(m["per_s"] / r["per_s"], 3),
        "speed_ratio_per_round": [round(x, 3) for x in paired],
        "speed_ratio_median": round(statistics.median(paired), 3) if paired else None,
        "equal_work": {
            "loss": [m["loss"], r["loss"]],
            "loss_rel_diff": float(f"{loss_diff:.3g}"),
            "grad_norm": [m["grad_norm"], r["grad_norm"]],
            "grad_norm_rel_diff": float(f"{grad_diff:.3g}"),
            "tolerance": TOLERANCE,
            "passed": loss_diff <= TOLERANCE and grad_diff <= TOLERANCE,
        },
    }
    for key in MEMORY_KEYS:
        if m.get(key) and r.get(key):
            out[key.replace("_mb", "_ratio")] = round(m[key] / r[key], 3)
    for impl, res in sides.items():
        out[impl] = {k: (round(v, 4) if isinstance(v, float) and k not in ("loss", "grad_norm")
                         else v) for k, v in res.items()}
    if "teacher_logits_s" in m:
        out["teacher_share_of_step"] = round(m["teacher_logits_s"] / m["best_step_s"], 3)
    if "base" in sides:
        out["speed_ratio_vs_base"] = round(m["per_s"] / sides["base"]["per_s"], 3)
        vs_base = [x["metakd"] / x["base"] for x in rounds or [] if "base" in x]
        out["speed_ratio_vs_base_median"] = (round(statistics.median(vs_base), 3)
                                             if vs_base else None)
    if "profile" in m and "profile" in r:
        heavy = 1.0 - m["profile"]["kernel_shares"]["other"]
        out["kernel_shares"] = {impl: sides[impl]["profile"]["kernel_shares"]
                                for impl in sides if "profile" in sides[impl]}
        out["speed_ratio_bound"] = round(r["best_step_s"] / (m["best_step_s"] * heavy), 3)
    return out


def run_all(methods: list[str], cfg: Config, rounds: int, repeats: int, device: str,
            log: Callable[[str], None] = print, threads: int | None = None,
            impls: tuple[str, ...] = IMPLS, allocator: str = "own") -> dict[str, Any]:
    """Every method's sides (``impls``: metakd, the reference and with ``--baseline`` the
    earlier commit's metakd), interleaved over ``rounds`` rounds (best speed kept)."""
    results: dict[str, Any] = {}
    for method in methods:
        best: dict[str, dict[str, Any]] = {}
        per_round: list[dict[str, float]] = []
        for r in range(rounds):
            order = impls if r % 2 == 0 else impls[::-1]
            per_round.append({})
            for impl in order:
                res = _subprocess(method, impl, cfg, repeats, device, threads,
                                  profile=r == 0 and impl != "base", allocator=allocator)
                per_round[-1][impl] = res["per_s"]
                prev = best.get(impl)
                if prev is None:
                    best[impl] = res
                else:  # the best times (first step too) and the largest memory seen
                    if res["per_s"] > prev["per_s"]:
                        for key in ("per_s", "best_step_s"):
                            prev[key] = res[key]
                    prev["median_per_s"] = max(prev["median_per_s"], res["median_per_s"])
                    for key in MEMORY_KEYS:
                        if res.get(key) is not None and prev.get(key) is not None:
                            prev[key] = max(prev[key], res[key])
                    for key in ("first_step_s", "warmup_s", "teacher_logits_s"):
                        if key in res:
                            prev[key] = min(prev[key], res[key])
                log(f"{method:14s} {impl:10s} round {r + 1}: {res['per_s']:8.1f} "
                    f"{UNITS[method]}/s, first step {res['first_step_s']:.2f} s, "
                    f"loss {res['loss']:.6f}, grad norm {res['grad_norm']:.6f}")
        results[method] = compare(method, best, per_round)
        s = results[method]
        log(f"{method:14s} metakd / reference: speed {s['speed_ratio']:.2f}x (best of each), "
            f"{s['speed_ratio_median']:.2f}x (median of the rounds' ratios), equal work "
            f"{'passed' if s['equal_work']['passed'] else 'FAILED'}")
        if "speed_ratio_vs_base" in s:
            log(f"{method:14s} metakd / base: {s['speed_ratio_vs_base']:.2f}x (best of each), "
                f"{s['speed_ratio_vs_base_median']:.2f}x (median of the rounds' ratios)")
        for impl, shares in s.get("kernel_shares", {}).items():
            log(f"{method:14s} {impl:10s} profile: " + ", ".join(
                f"{k} {v:.0%}" for k, v in shares.items()))
        if "speed_ratio_bound" in s:
            log(f"{method:14s} bound with metakd's heavy kernels as they run now and no other "
                f"time: {s['speed_ratio_bound']:.2f}x")
    return results


PMAML_TEACHER_NOTE = (
    "PMAML.teacher_logits (unadapted teacher, the official setting) runs the frozen teacher "
    "through MAMLWrapper.forward_tasks: on the CPU task by task (one forward per task, "
    "stacked; measured 2x faster there than one vmap pass over the meta-batch), on an "
    "accelerator in one batched pass; either way each task's transductive batch norm sees "
    "that task's set alone, as the student's does. teacher_logits_s is that pass alone on the "
    "metakd side; teacher_share_of_step its share of the best step.")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"one round, one timed step, smaller batches: {QUICK}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed steps per process after the warm-up step (default 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of each worker (default 1; 0: torch's default)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--baseline", default=None, metavar="DIR",
                        help="also run metakd's steps with the package in DIR (an earlier "
                             "commit's checkout) in the same rounds")
    parser.add_argument("--allocator", default="own", choices=ALLOCATORS,
                        help="own (default): the metakd sides keep freed memory in the C "
                             "heap as `metakd train` does on the CPU, the reference runs "
                             "with glibc's defaults as its script does; kept: every side "
                             "keeps it (the steps' own work alone); plain: no side does")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    out_option(parser, "method_speed_cpu.json", "method_speed_DEVICE.json for another device; "
                                                "not written with --quick")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        result = measure(spec["method"], spec["impl"], Config(**spec["cfg"]), spec["repeats"],
                         spec["device"], spec.get("threads"), spec.get("profile", False),
                         spec.get("allocator", "own"))
        print(json.dumps(result))
        return

    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; use {', '.join(METHODS)}")
    cfg = Config(**QUICK) if args.quick else Config()
    rounds, repeats = (1, 1) if args.quick else (args.rounds, args.repeats)
    device = torch.device(args.device).type
    with result_log(output(args, f"method_speed_{device}.json")) as (log, out):
        clock = Clock()
        log(f"config: {json.dumps(dataclasses.asdict(cfg))}")
        threads = args.threads or None
        impls = IMPLS
        if args.baseline:
            global BASELINE_SRC
            BASELINE_SRC = os.path.abspath(args.baseline)
            impls = (*IMPLS, "base")
            log(f"baseline: the metakd package in {BASELINE_SRC}")
        log(f"allocator: {args.allocator}")
        results = run_all(methods, cfg, rounds, repeats, args.device, log, threads, impls,
                          args.allocator)
        summary = {
            "benchmark": "method_speed",
            "device": args.device,
            "quick": bool(args.quick),
            "threads": threads or torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_avg_1m_end": round(os.getloadavg()[0], 2),
            "rounds": rounds,
            "repeats": repeats,
            "baseline": BASELINE_SRC,
            "allocator": args.allocator,
            "config": dataclasses.asdict(cfg),
            **clock.record(),
            "equal_work_passed": all(r["equal_work"]["passed"] for r in results.values()),
            "notes": {"pmaml_teacher_logits": PMAML_TEACHER_NOTE},
            "results": results,
        }
        finish(summary, out, log)


if __name__ == "__main__":
    main()

