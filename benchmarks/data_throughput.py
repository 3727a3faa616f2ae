"""Episode throughput: metakd's vectorised sampler against learn2learn's TaskDataset.

Both draw 5-way 1-shot 15-query episodes of 28x28 Omniglot (the bundled meta-train split, with
rotation classes) from the same decoded uint8 images, in the same run. learn2learn gets those
images through a plain ``Dataset`` (no file I/O or decoding) and its standard
``NWays, KShots, LoadData, RemapLabels`` pipeline; each ``sample()`` is one episode. metakd is
measured at meta-batch 1 (one episode per call, like learn2learn) and at meta-batch 32 (how
MAML consumes episodes). The reported ratio is the meta-batch-32 rate over learn2learn's.

    .venv/bin/python -m benchmarks.data_throughput [--seconds 3]

The last line of output is one JSON object; with ``--out`` it is also written there, the log
next to it (``.log``).
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from benchmarks._common import Clock, finish, out_option, output, result_log
from metakd.data import Omniglot, few_shot

WAYS, SHOTS, QUERIES = 5, 1, 15


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Episodes per second of ``fn`` (which returns how many episodes it produced)."""
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        n += fn()
    return n / elapsed


def learn2learn_sampler(images: torch.Tensor, targets: list[int]) -> Callable[[], int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import learn2learn as l2l

    class Decoded(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(targets)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return images[i].float().div_(255.0), targets[i]

    ds = Decoded()
    l2i: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        l2i.setdefault(t, []).append(i)
    meta = l2l.data.MetaDataset(ds, labels_to_indices=l2i)
    tasks = l2l.data.TaskDataset(
        meta,
        task_transforms=[
            l2l.data.transforms.NWays(meta, WAYS),
            l2l.data.transforms.KShots(meta, SHOTS + QUERIES),
            l2l.data.transforms.LoadData(meta),
            l2l.data.transforms.RemapLabels(meta),
        ],
        num_tasks=-1,
    )

    def one() -> int:
        x, _y = tasks.sample()
        assert x.shape == (WAYS * (SHOTS + QUERIES), 1, 28, 28)
        return 1

    return one


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    out_option(p)
    args = p.parse_args(argv)
    with result_log(output(args, None)) as (log, out):
        finish(measure(args.seconds, log), out, log)


def measure(seconds: float, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Episodes per second of each sampler, ``seconds`` each; the JSON-ready result."""
    clock = Clock()
    train = Omniglot(split="train", rotations=(0, 90, 180, 270))
    arr = train.arrays(28)
    # learn2learn sees exactly the images metakd samples from (rotation blocks included).
    flat_targets = [0] * arr.images.shape[0]
    for c in range(arr.num_classes):
        for j in arr.class_items[c][: int(arr.class_counts[c])].tolist():
            flat_targets[j] = c

    results: dict[str, float] = {}
    for mb in (1, 32):
        sampler = iter(few_shot(train, WAYS, SHOTS, QUERIES, meta_batch_size=mb, seed=0))
        results[f"metakd_meta_batch_{mb}"] = rate(lambda s=sampler, m=mb: len(next(s)) or m,
                                                  seconds)
    results["learn2learn"] = rate(learn2learn_sampler(arr.images, flat_targets), seconds)
    for k, v in results.items():
        log(f"{k:>24}: {v:10.1f} episodes/s")
    return {
        "benchmark": "data_throughput",
        "task": f"{WAYS}-way {SHOTS}-shot {QUERIES}-query, 28x28 Omniglot (bundled train, rotations)",
        "episodes_per_s": {k: round(v, 1) for k, v in results.items()},
        "ratio_vs_learn2learn": round(results["metakd_meta_batch_32"] / results["learn2learn"], 1),
        "ratio_vs_learn2learn_meta_batch_1": round(
            results["metakd_meta_batch_1"] / results["learn2learn"], 1),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "seconds_per_measurement": seconds,
        **clock.record(),
    }


if __name__ == "__main__":
    main()
