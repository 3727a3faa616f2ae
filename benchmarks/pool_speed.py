"""Max pooling on the CPU: ``metakd.nn.pool.max_pool2d`` against ``torch.nn.functional.max_pool2d``.

For each feature map a few-shot network pools (its real shape for one task or batch), the
benchmark times a 2×2 pool forward plus backward (``f+b``) and forward alone under
``torch.no_grad`` (``fwd``) both ways, interleaved over ``--rounds`` rounds, each figure the
best of its calls. ``route`` says whether metakd took its channels-last route there (maps of
at most ``FAST_MAX_ELEMENTS`` values per image); elsewhere both sides make the same call.
``ratio`` is PyTorch's time over metakd's (above 1: metakd faster). The ``sweep`` section
times the route on 64-channel maps from 16 to 84 px on a side at 20 images, and from 44 to
84 px at 80, whatever their size: where it stops paying for its two copies, which is what
``FAST_MAX_ELEMENTS`` is set from. The ``steps`` section times whole networks, forward and
backward, three ways in turn: the route as shipped, never, and on every map; a pool timed
alone can pay where, inside the network, the copies cost the other layers more.

    .venv/bin/python -m benchmarks.pool_speed [--quick] [--threads 1] [--rounds 3] [--out F]

The last line is one JSON object; ``--out`` writes it (and a ``.log``) as well.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks._common import Clock, best_ms, finish, out_option, result_log

# name → the input shapes of the network's pools: a 5-way 1-shot task with 15 queries (80
# images) for the Conv-4s, a batch of 16 for ResNet-12.
NETWORKS: dict[str, list[list[int]]] = {
    "conv4/64, 28 px": [[80, 64, s, s] for s in (28, 14, 7, 3)],
    "conv4/32, 28 px": [[80, 32, s, s] for s in (28, 14, 7, 3)],
    "conv4/64, 84 px": [[80, 64, s, s] for s in (84, 42, 21, 10)],
    "resnet12, 80 px": [[16, 64, 80, 80], [16, 128, 40, 40], [16, 256, 20, 20],
                        [16, 512, 10, 10]],
}
SWEEP: list[list[int]] = [[20, 64, s, s] for s in (16, 24, 28, 32, 36, 40, 44, 48, 52, 56, 64, 84)
                          ] + [[80, 64, s, s] for s in (44, 56, 84)]
_ALWAYS = 1 << 62  # a size limit no map reaches


@contextmanager
def route_limits(max_per_image: int, min_total: int) -> Iterator[None]:
    """Within the block, metakd's pooling takes its channels-last route on maps of at most
    ``max_per_image`` values per image and at least ``min_total`` in all."""
    from metakd.nn import pool

    shipped = pool.FAST_MAX_ELEMENTS, pool._MIN_ELEMENTS
    pool.FAST_MAX_ELEMENTS, pool._MIN_ELEMENTS = max_per_image, min_total
    try:
        yield
    finally:
        pool.FAST_MAX_ELEMENTS, pool._MIN_ELEMENTS = shipped


def time_shape(shape: list[int], rounds: int, repeats: int, forced: bool = False
               ) -> dict[str, Any]:
    """Forward + backward and no-grad forward of both pools on ``shape``, in ms (``forced``:
    metakd's side always takes the channels-last route)."""
    from metakd.nn import pool

    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g).relu_().requires_grad_()
    grad = torch.randn(*shape[:2], shape[2] // 2, shape[3] // 2, generator=g)
    sides = {"torch": F.max_pool2d, "metakd": pool.max_pool2d}
    best = {f"{side}_{kind}": float("inf") for side in sides for kind in ("fb", "fwd")}
    with route_limits(_ALWAYS, 0) if forced else nullcontext():
        route = pool._fast_route(x.detach())
        for _ in range(rounds):
            for side, fn in sides.items():
                best[f"{side}_fb"] = min(best[f"{side}_fb"],
                                         best_ms(lambda f=fn: f(x, 2).backward(grad), repeats))
                with torch.no_grad():
                    best[f"{side}_fwd"] = min(best[f"{side}_fwd"],
                                              best_ms(lambda f=fn: f(x, 2), repeats))
    return {"shape": shape, "route": route,
            "ms": {k: round(v, 3) for k, v in best.items()},
            "ratio_fb": round(best["torch_fb"] / best["metakd_fb"], 3),
            "ratio_fwd": round(best["torch_fwd"] / best["metakd_fwd"], 3)}


# name → (factory, its arguments, the input batch) of the whole-network steps.
STEPS: dict[str, tuple[str, dict[str, Any], list[int]]] = {
    "conv4/64, 28 px": ("conv4", {"in_channels": 1, "hidden": 64}, [80, 1, 28, 28]),
    "conv4/64, 84 px": ("conv4", {"in_channels": 3, "hidden": 64}, [80, 3, 84, 84]),
    "resnet12, 80 px": ("resnet12", {"num_classes": 0}, [16, 3, 80, 80]),
}
# The route's size limit per image in each arm of the whole-network steps.
ARMS = {"as_shipped": None, "never": 0, "always": _ALWAYS}


def time_network(name: str, rounds: int) -> dict[str, Any]:
    """A whole network's forward and backward (mean square of its output) in each of
    :data:`ARMS`, interleaved over ``rounds`` rounds of 2 timed steps; best and median, in s."""
    import statistics

    from metakd.nn import create, pool

    factory, kwargs, shape = STEPS[name]
    torch.manual_seed(0)
    model = create(factory, **kwargs)
    x = torch.randn(*shape)

    def step() -> None:
        model.zero_grad()
        model(x).square().mean().backward()

    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for _ in range(rounds):
        for arm, limit in ARMS.items():
            with route_limits(pool.FAST_MAX_ELEMENTS if limit is None else limit,
                              pool._MIN_ELEMENTS):
                step()
                times[arm].append(best_ms(step, 2, warmup=0) / 1e3)
    return {"input": shape,
            "best_s": {a: round(min(t), 4) for a, t in times.items()},
            "median_s": {a: round(statistics.median(t), 4) for a, t in times.items()}}


def run(threads: int, rounds: int, repeats: int, log: Any, quick: bool = False
        ) -> dict[str, Any]:
    """Every network's pools and the sweep (``quick``: the 28 px networks and three shapes)."""
    from metakd.nn.pool import FAST_MAX_ELEMENTS

    clock = Clock()
    torch.set_num_threads(threads)
    networks: dict[str, Any] = {}
    chosen = {k: v for k, v in NETWORKS.items() if "28 px" in k} if quick else NETWORKS
    for name, shapes in chosen.items():
        rows = [time_shape(s, rounds, repeats) for s in shapes]
        total = {k: round(sum(r["ms"][k] for r in rows), 3) for k in rows[0]["ms"]}
        networks[name] = {"pools": rows, "total_ms": total,
                          "ratio_fb": round(total["torch_fb"] / total["metakd_fb"], 3),
                          "ratio_fwd": round(total["torch_fwd"] / total["metakd_fwd"], 3)}
        log(f"{name:16s} f+b: torch {total['torch_fb']:8.2f} ms, metakd "
            f"{total['metakd_fb']:8.2f} ms ({networks[name]['ratio_fb']:.2f}x); no-grad "
            f"forward {networks[name]['ratio_fwd']:.2f}x")
    sweep = []
    for shape in SWEEP[:3] if quick else SWEEP:
        row = time_shape(shape, rounds, repeats, forced=True)
        row["elements_per_image"] = shape[1] * shape[2] * shape[3]
        sweep.append(row)
        log(f"sweep {shape} ({row['elements_per_image']:6d} per image): route forced, "
            f"f+b {row['ratio_fb']:.2f}x, no-grad forward {row['ratio_fwd']:.2f}x")
    steps = {}
    for name in list(STEPS)[:1] if quick else STEPS:
        steps[name] = time_network(name, rounds)
        b = steps[name]["best_s"]
        log(f"step {name:16s} route as shipped {b['as_shipped']:.3f} s, never "
            f"{b['never']:.3f} s, on every map {b['always']:.3f} s (best)")
    return {"benchmark": "pool_speed", "quick": quick, "steps": steps, "threads": threads, "rounds": rounds,
            "repeats": repeats, "fast_max_elements": FAST_MAX_ELEMENTS,
            "cpu_count": os.cpu_count(),
            "networks": networks, "sweep": sweep, **clock.record()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per round and side; "
                                                          "the best is kept (default 5)")
    p.add_argument("--quick", action="store_true", help="the 28 px networks and three sweep "
                   "shapes, 1 round of 1 call (a smoke run of seconds)")
    out_option(p)
    args = p.parse_args(argv)
    rounds, repeats = (1, 1) if args.quick else (args.rounds, args.repeats)
    with result_log(args.out) as (log, out):
        finish(run(args.threads, rounds, repeats, log, args.quick), out, log)


if __name__ == "__main__":
    main()
