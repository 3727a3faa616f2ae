"""The ``metakd`` command.

``metakd demo`` builds the bundled Omniglot data set, samples a 5-way episode, prints a
summary of it and saves a picture of its support and query sets.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from metakd.data import TaskBatch

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """Bad options give a one-line error and exit status 2, not a traceback."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def episode_picture(batch: TaskBatch, task: int = 0, scale: int = 2, gap: int = 4) -> Image.Image:
    """A PIL image of one episode: one row per class, support images left, queries right."""
    from PIL import Image

    t = batch[task]
    n, k, q = batch.ways, batch.shots, batch.queries
    c, h, w = t.support_x.shape[1:]
    cell_h, cell_w = h * scale, w * scale
    width = (k + q) * (cell_w + 1) + gap * 3
    height = n * (cell_h + 1)
    canvas = Image.new("RGB", (width, height), (40, 90, 160))

    def paste(img: torch.Tensor, row: int, col: int, offset: int) -> None:
        arr = (img.clamp(0, 1) * 255).round().byte()
        arr = arr.expand(3, -1, -1) if c == 1 else arr[:3]
        pil = Image.fromarray(arr.permute(1, 2, 0).numpy()).resize((cell_w, cell_h), Image.Resampling.NEAREST)
        canvas.paste(pil, (offset + col * (cell_w + 1), row * (cell_h + 1)))

    for i in range(n * k):
        paste(t.support_x[i], int(t.support_y[i]), i % k, 0)
    for i in range(n * q):
        paste(t.query_x[i], int(t.query_y[i]), i % q, k * (cell_w + 1) + gap * 3)
    return canvas


def _demo(args: argparse.Namespace) -> int:
    from metakd.data import Omniglot, few_shot

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train = Omniglot(split="train", rotations=(0, 90, 180, 270) if args.rotations else (0,))
    test = Omniglot(split="test")
    tasks = few_shot(train, args.ways, args.shots, args.queries, meta_batch_size=args.meta_batch,
                     seed=args.seed, progress=not args.no_progress)
    few_shot(test, args.ways, args.shots, args.queries, num_tasks=1, progress=not args.no_progress)
    build = time.perf_counter() - t0
    batch = next(iter(tasks))
    print("metakd demo: bundled Omniglot (MIT licence; Lake et al. 2015)")
    print(f"  meta-train: {len(train.classes)} classes, {len(train)} images "
          f"({', '.join(sorted({c.split('/')[0] for c in train.classes}))})")
    print(f"  meta-test:  {len(test.classes)} classes, {len(test)} images "
          f"({', '.join(sorted({c.split('/')[0] for c in test.classes}))})")
    print(f"  decoded into the uint8 cache and checked in {build:.2f} s")
    print(f"  meta-batch: {len(batch)} tasks of {args.ways}-way {args.shots}-shot "
          f"{args.queries}-query")
    print(f"    support_x {tuple(batch.support_x.shape)} {batch.support_x.dtype}, "
          f"support_y {tuple(batch.support_y.shape)}")
    print(f"    query_x   {tuple(batch.query_x.shape)}, query_y {tuple(batch.query_y.shape)}")
    print("  task 0 classes:")
    assert batch.classes is not None
    for n, c in enumerate(batch.classes[0].tolist()):
        print(f"    label {n} = {train.classes[c]}")
    t0 = time.perf_counter()
    reps = 20
    for _, _b in zip(range(reps), tasks):
        pass
    rate = reps * args.meta_batch / (time.perf_counter() - t0)
    print(f"  sampling speed: {rate:,.0f} episodes/s")
    pic = out / "episode.png"
    episode_picture(batch).save(pic)
    print(f"  picture of task 0 (rows: classes; left: support, right: query): {pic}")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="metakd", description="Few-shot meta-learning and distillation.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    d = sub.add_parser("demo", help="sample episodes from the bundled Omniglot and save a picture")
    d.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    d.add_argument("--ways", type=int, default=5, help="classes per episode (default: %(default)s)")
    d.add_argument("--shots", type=int, default=1, help="support images per class (default: %(default)s)")
    d.add_argument("--queries", type=int, default=15, help="query images per class (default: %(default)s)")
    d.add_argument("--meta-batch", type=int, default=32, help="tasks per meta-batch (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="episode seed (default: %(default)s)")
    d.add_argument("--rotations", action="store_true", help="add 90/180/270-degree rotation classes")
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")
    d.set_defaults(func=_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metakd`` console script."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as e:
        print(f"metakd {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
