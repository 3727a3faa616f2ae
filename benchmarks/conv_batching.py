"""Can batching the tasks of a meta-batch speed up MAML's convolutions? Per-task weights three ways.

After its inner steps every task of a meta-batch has its own weights, so its query pass is a
convolution per task. This benchmark times, for each convolution of the MAML Omniglot network
(``maml_omniglot``, 64 filters) on its real input shape, forward plus backward (input and
weight gradients) of a meta-batch's tasks:

- ``loop``: one call per task with that task's weights (what the ``func`` backend does);
- ``grouped``: one call with the tasks' weights stacked as groups (``groups=T``, the tasks'
  images side by side in the channel axis: what a vmap over per-task weights lowers to);
- ``shared``: one call of all the tasks' images through one weight. Not the same maths (the
  tasks share weights only before their first inner step); the rate a batched pass would
  reach if per-task weights cost nothing, and what a roofline measured on shared weights
  assumes.

Each is the best of ``--repeats`` calls after warm-up calls, at 1 thread and at 2 (or the
given ``--threads``), on the support set and on the query set.

    .venv/bin/python -m benchmarks.conv_batching [--tasks 4] [--queries 15] [--out F]

The last line is one JSON object; ``--out`` writes it (and a ``.log``) as well.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks._common import Clock, best_ms, finish, out_option, result_log

WAYS, SHOTS, IMAGE = 5, 1, 28


def conv_shapes(images: int) -> list[dict[str, Any]]:
    """Each ``Conv2d`` of ``maml_omniglot`` (64 filters) with its input shape for ``images``."""
    from metakd.nn import create

    model = create("maml_omniglot", num_classes=WAYS, hidden=64)
    found: list[dict[str, Any]] = []

    def hook(m: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        assert isinstance(m, nn.Conv2d)
        found.append({"in_shape": list(inputs[0].shape), "out_channels": m.out_channels,
                      "kernel": list(m.kernel_size), "stride": list(m.stride),
                      "padding": list(m.padding)})

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_pre_hook(hook)
    with torch.no_grad():
        model(torch.zeros(images, 1, IMAGE, IMAGE))
    return found


def grouped_conv(x_side: Tensor, weights: Tensor, tasks: int, **kw: Any) -> Tensor:
    """Every task's convolution with its own weights in one call: ``x_side`` ``[M, T*C_in,
    H, W]`` (the tasks side by side in the channel axis), ``weights`` ``[T, C_out, C_in, kh,
    kw]``; returns ``[T, M, C_out, H', W']``, what ``conv2d(x[t], weights[t])`` gives per task."""
    t, c_out, c_in, kh, kw_ = weights.shape
    y = F.conv2d(x_side, weights.reshape(t * c_out, c_in, kh, kw_), groups=tasks, **kw)
    return y.reshape(y.shape[0], t, c_out, *y.shape[2:]).transpose(0, 1)


def time_layer(spec: dict[str, Any], tasks: int, repeats: int) -> dict[str, float]:
    """``loop``, ``grouped`` and ``shared`` forward + backward of one layer, in ms."""
    m, c_in, h, w = spec["in_shape"]
    c_out, (kh, kw) = spec["out_channels"], spec["kernel"]
    stride, padding = tuple(spec["stride"]), tuple(spec["padding"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tasks, m, c_in, h, w, generator=g).requires_grad_()
    weights = torch.randn(tasks, c_out, c_in, kh, kw, generator=g).requires_grad_()
    # the same images with the tasks side by side in the channel axis: [M, T * C_in, H, W]
    x_side = x.detach().transpose(0, 1).reshape(m, tasks * c_in, h, w).requires_grad_()
    x_all = x.detach().reshape(tasks * m, c_in, h, w).requires_grad_()
    shared_w = weights.detach()[0].clone().requires_grad_()

    def loop() -> None:
        for t in range(tasks):
            F.conv2d(x[t], weights[t], stride=stride, padding=padding).sum().backward()

    def grouped() -> None:
        grouped_conv(x_side, weights, tasks, stride=stride, padding=padding).sum().backward()

    def shared() -> None:
        F.conv2d(x_all, shared_w, stride=stride, padding=padding).sum().backward()

    return {name: round(best_ms(fn, repeats), 3)
            for name, fn in (("loop", loop), ("grouped", grouped), ("shared", shared))}


def run(tasks: int, queries: int, threads: list[int], repeats: int, log: Any) -> dict[str, Any]:
    """Every layer, set and thread count; totals and the ratios of the three ways."""
    clock = Clock()
    sets = {"support": WAYS * SHOTS, "query": WAYS * queries}
    out: dict[str, Any] = {}
    for n in threads:
        torch.set_num_threads(n)
        per_set: dict[str, Any] = {}
        for set_name, images in sets.items():
            layers = [{**spec, "ms": time_layer(spec, tasks, repeats)}
                      for spec in conv_shapes(images)]
            total = {k: round(sum(layer["ms"][k] for layer in layers), 3)
                     for k in ("loop", "grouped", "shared")}
            per_set[set_name] = {"images_per_task": images, "layers": layers, "total_ms": total,
                                 "loop_over_grouped": round(total["loop"] / total["grouped"], 3),
                                 "loop_over_shared": round(total["loop"] / total["shared"], 3)}
            log(f"{n} thread(s), {set_name:7s} ({images:3d} images x {tasks} tasks): "
                f"loop {total['loop']:7.2f} ms, grouped {total['grouped']:7.2f} ms, "
                f"shared {total['shared']:7.2f} ms")
        out[str(n)] = per_set
    return {"benchmark": "conv_batching", "network": "maml_omniglot, 64 filters, 28 px",
            "tasks": tasks, "queries": queries, "ways": WAYS, "shots": SHOTS,
            "repeats": repeats, "threads": out, **clock.record()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=4, help="tasks per call (default 4: the "
                   "chunk metakd's auto backend would take at 15 queries)")
    p.add_argument("--queries", type=int, default=15, help="query images per class")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=20, help="timed calls; the best is kept")
    out_option(p)
    args = p.parse_args(argv)
    with result_log(args.out) as (log, out):
        result = run(args.tasks, args.queries, args.threads, args.repeats, log)
        finish(result, out, log)


if __name__ == "__main__":
    main()
