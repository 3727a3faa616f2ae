"""The ``metakd`` command: ``train``, ``eval`` and ``demo``.

* ``metakd train maml --dataset omniglot [--root DIR] --ways 5 --shots 1 ...``: meta-train
  with the paper's settings for that data set (every option shows its default in ``--help``).
* ``metakd eval RUN_DIR``: test a trained run again (600 episodes, 95% interval).
* ``metakd demo``: a few minutes of MAML on the bundled Omniglot, then held-out accuracy,
  the checkpoint, a learning curve and a picture of an episode.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def _save_episode_picture(cfg_dataset_split: tuple[int, int, int], out: Path, seed: int) -> Path:
    from metakd.data import Omniglot, few_shot

    ways, shots, queries = cfg_dataset_split
    batch = next(iter(few_shot(Omniglot(split="test"), ways, shots, queries, num_tasks=1,
                               seed=seed, progress=False)))
    pic = out / "episode.png"
    episode_picture(batch).save(pic)
    return pic


def _print_results(res: dict[str, Any], out: Path) -> None:
    if "test" not in res:  # a rank other than 0 under torchrun: rank 0 tests and reports
        return
    print(f"  meta-trained {res['steps']} meta-iterations"
          + (" (time budget reached)" if res["stopped_early"] else ""))
    print(f"  model: {res['selected']}")
    print(f"  held-out {res['episode']} accuracy on {res['dataset']}: {res['test_str']}")
    print(f"  run folder: {out} (last.pt, log.jsonl, learning_curve.png, results.json)")


def _demo(args: argparse.Namespace) -> int:
    from metakd.recipes import MAMLConfig, run_maml

    out = Path(args.out)
    cfg = MAMLConfig.paper(
        "omniglot", ways=args.ways, shots=args.shots, out_dir=str(out), steps=args.steps,
        max_seconds=args.minutes * 60, test_tasks=args.test_tasks, seed=args.seed,
        meta_batch_size=args.meta_batch, meta_lr=args.meta_lr,
        model_kwargs={"head_init": "xavier", "hidden": args.filters},
        test_inner_steps=args.test_inner_steps,
        **({"queries": args.queries} if args.queries is not None else {}),
    )
    print("metakd demo: MAML on the bundled Omniglot (MIT licence; Lake et al. 2015)")
    print("  meta-train: Balinese, Early_Aramaic, Greek, Korean, Latin (+ rotations); "
          "meta-test: Japanese_(katakana), Sanskrit, Tagalog")
    print(f"  {cfg.ways}-way {cfg.shots}-shot, meta-batch {cfg.meta_batch_size}, inner lr "
          f"{cfg.inner_lr} x {cfg.inner_steps} step (test: {cfg.test_inner_steps}), "
          f"second order, Conv-4 with {args.filters} filters, budget {args.minutes:g} min")
    t0 = time.perf_counter()
    res = run_maml(cfg, progress=not args.no_progress, resume=not args.fresh)
    _print_results(res, out)
    pic = _save_episode_picture((cfg.ways, cfg.shots, 5), out, args.seed)
    print(f"  picture of a test episode (rows: classes; left: support, right: query): {pic}")
    print(f"  total time {time.perf_counter() - t0:.0f} s")
    return 0


def _parse_model_args(items: Sequence[str]) -> dict[str, Any]:
    """``["head_init=xavier", "bn_scale=true", "hidden=32"]`` -> typed keyword arguments."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--model-arg {item!r}: expected KEY=VALUE, e.g. head_init=xavier")
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for cast in (int, float):
                try:
                    value = cast(raw)
                    break
                except ValueError:
                    pass
        out[key.strip().replace("-", "_")] = value
    return out


def _train(args: argparse.Namespace) -> int:
    from metakd.recipes import MAMLConfig, run_maml

    given = {k: v for k, v in vars(args).items()
             if v is not None and k in {f.name for f in dataclasses.fields(MAMLConfig)}}
    given.pop("dataset", None)
    given.pop("ways", None)
    given.pop("shots", None)
    if args.model_arg:
        given["model_kwargs"] = _parse_model_args(args.model_arg)
    cfg = MAMLConfig.paper(args.dataset, args.ways, args.shots, **given)
    res = run_maml(cfg, progress=not args.no_progress, resume=not args.fresh)
    _print_results(res, Path(cfg.out_dir))
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json

    from metakd.engine import evaluate, load_checkpoint
    from metakd.recipes import MAMLConfig
    from metakd.recipes.maml import build

    run = Path(args.run)
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{run} is not a run folder (no config.json); give the --out "
                                "folder of a `metakd train` run")
    cfg = MAMLConfig(**json.loads((run / "config.json").read_text()))
    cfg.test_tasks = args.episodes
    ckpt = run / ("best.pt" if (run / "best.pt").exists() and not args.last else "last.pt")
    parts = build(cfg)
    parts["learner"].load_state_dict(load_checkpoint(ckpt)["model"])
    res = evaluate(parts["learner"], parts["test_tasks"], progress=not args.no_progress)
    print(f"{ckpt}: {cfg.ways}-way {cfg.shots}-shot test accuracy {res}")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="metakd", description="Few-shot meta-learning and distillation.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("demo", help="a few minutes of MAML on the bundled Omniglot")
    d.add_argument("--out", default="runs/demo", help="run folder (default: %(default)s)")
    d.add_argument("--minutes", type=float, default=4.0,
                   help="meta-training time budget (default: %(default)s)")
    d.add_argument("--steps", type=int, default=60_000,
                   help="meta-iterations if the budget allows (default: %(default)s)")
    d.add_argument("--ways", type=int, default=5, help="classes per episode (default: %(default)s)")
    d.add_argument("--shots", type=int, default=1, help="support images per class (default: %(default)s)")
    d.add_argument("--queries", type=int, default=None,
                   help="query images per class in meta-training (default: K, as the reference)")
    d.add_argument("--meta-batch", type=int, default=16, help="tasks per meta-batch (default: %(default)s)")
    d.add_argument("--filters", type=int, default=32,
                   help="filters per conv of the MAML Omniglot net (default: %(default)s)")
    d.add_argument("--meta-lr", type=float, default=3e-3, help="Adam learning rate (default: %(default)s)")
    d.add_argument("--test-inner-steps", type=int, default=10,
                   help="inner steps at test, as the reference code (default: %(default)s)")
    d.add_argument("--test-tasks", type=int, default=600, help="test episodes (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    d.add_argument("--fresh", action="store_true", help="do not resume from the run folder")
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")
    d.set_defaults(func=_demo)

    t = sub.add_parser("train", help="meta-train a method with the paper's settings")
    t.add_argument("method", choices=["maml"], help="the method")
    t.add_argument("--dataset", default="omniglot",
                   help="omniglot, miniimagenet, cub, cifarfs, fc100, tieredimagenet "
                        "(default: %(default)s)")
    t.add_argument("--root", help="data set folder (omniglot without --root: the bundled copy)")
    t.add_argument("--ways", type=int, default=5, help="N (default: %(default)s)")
    t.add_argument("--shots", type=int, default=1, help="K (default: %(default)s)")
    paper = "(default: the paper's value for the data set)"
    t.add_argument("--queries", type=int,
                   help="query images per class in training (default: K on Omniglot, else 15)")
    t.add_argument("--test-queries", type=int, help="query images per class in val/test (default: 15)")
    t.add_argument("--model", help=f"backbone name {paper}")
    t.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="backbone option, repeatable (e.g. head_init=xavier, bn_scale=true)")
    t.add_argument("--inner-lr", type=float, help=f"inner learning rate alpha {paper}")
    t.add_argument("--inner-steps", type=int, help=f"inner steps in training {paper}")
    t.add_argument("--test-inner-steps", type=int, help=f"inner steps at test {paper}")
    t.add_argument("--first-order", action="store_true", default=None, help="first-order MAML")
    t.add_argument("--inner-loss-reduction", choices=["sum_over_k", "mean"],
                   help="inner loss scale (default: sum_over_k, the reference)")
    t.add_argument("--meta-lr", type=float, help="Adam learning rate (default: 0.001)")
    t.add_argument("--lr-schedule", choices=["constant", "cosine"],
                   help="meta learning-rate schedule (default: constant)")
    t.add_argument("--meta-batch-size", type=int, help=f"tasks per meta-batch {paper}")
    t.add_argument("--steps", type=int, help="meta-iterations (default: 60000)")
    t.add_argument("--clip-grad-value", type=float, help=f"meta-gradient clipping {paper}")
    t.add_argument("--val-every", type=int, help="validation period (default: 500)")
    t.add_argument("--val-tasks", type=int, help="validation episodes (default: 600)")
    t.add_argument("--test-tasks", type=int, help="test episodes (default: 600)")
    t.add_argument("--backend", choices=["auto", "func", "vmap", "learn2learn", "higher"],
                   help="inner-loop backend (default: vmap)")
    t.add_argument("--compile", choices=["auto", "on", "off"],
                   help="torch.compile the meta-gradient: auto (in the background after 120 s "
                        "of one task shape), on (at once) or off (default: auto)")
    t.add_argument("--seed", type=int, help="seed (default: 0)")
    t.add_argument("--out-dir", help="run folder (default: runs/maml)")
    t.add_argument("--max-seconds", type=float, help="time budget for meta-training")
    t.add_argument("--device", help="cpu or cuda (default: cpu)")
    t.add_argument("--fresh", action="store_true", help="do not resume from the run folder")
    t.add_argument("--no-progress", action="store_true", help="hide progress bars")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="test a trained run (600 episodes, 95%% interval)")
    e.add_argument("run", help="the run folder of `metakd train` or `metakd demo`")
    e.add_argument("--episodes", type=int, default=600, help="test episodes (default: %(default)s)")
    e.add_argument("--last", action="store_true", help="use last.pt even if best.pt exists")
    e.add_argument("--no-progress", action="store_true", help="hide progress bars")
    e.set_defaults(func=_eval)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metakd`` console script."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as e:  # bad input: one line, no traceback
        msg = " | ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"metakd {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
