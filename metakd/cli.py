"""The ``metakd`` command: ``train``, ``eval``, ``convert``, ``methods``, ``models`` and ``demo``.

* ``metakd train METHOD --dataset omniglot [--root DIR] --ways 5 --shots 1 ...``: train a
  registered method (``metakd methods`` lists them) with the paper's settings for that data
  set; ``metakd train METHOD --help`` shows the method's options and their defaults.
* ``metakd eval RUN_DIR [--dataset D] [--root R] [--ways N] [--shots K] ...``: test a trained
  run of any method again (600 episodes, 95% interval), on its episode shape or another one;
  the result also goes to ``RUN_DIR/eval-<settings>.json``.
* ``metakd convert SRC --arch NAME --to DEST [--format F] [--part student|teacher]``: an
  original project's checkpoint (MAML-Pytorch, PMAML, learn2learn, mdistiller... see
  :mod:`metakd.interop`) as a metakd state dict (``DEST`` ending in ``.pt``/``.pth``) or as a
  run folder that ``metakd eval DEST`` tests (MAML-Pytorch checkpoints).
* ``metakd methods``: the registered methods, one line each.
* ``metakd models [PATTERN] [--family F]``: the model zoo (:func:`metakd.nn.describe_models`),
  one line each: name, family and description; ``PATTERN`` is a glob (``"resnet*"``).
* ``metakd demo``: a few minutes of MAML on the bundled Omniglot, then held-out accuracy,
  the checkpoint, a learning curve and a picture of an episode.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from metakd.data import TaskBatch

__all__ = ["guarded", "main", "report_failure"]


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
    unit = res.get("step_name", "meta-iterations")
    verb = "meta-trained" if unit == "meta-iterations" else "trained"
    print(f"  {verb} {res['steps']} {unit}" + (" (time budget reached)" if res["stopped_early"] else ""))
    print(f"  model: {res['selected']}")
    print(f"  held-out {res['episode']} accuracy on {res['dataset']}: {res['test_str']}")
    files = [n for n in ("last.pt", "best.pt", "log.jsonl", "learning_curve.png", "results.json")
             if (out / n).is_file()]
    print(f"  run folder: {out} ({', '.join(files)})")


def _demo(args: argparse.Namespace) -> int:
    from metakd.recipes import MAMLConfig, run

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
    res = run(cfg, progress=not args.no_progress, resume=not args.fresh, method="maml")
    _print_results(res, out)
    pic = _save_episode_picture((cfg.ways, cfg.shots, 5), out, args.seed)
    print(f"  picture of a test episode (rows: classes; left: support, right: query): {pic}")
    print(f"  total time {time.perf_counter() - t0:.0f} s")
    return 0


# Parsed options that are not config fields, whatever a method's config holds.
_NOT_CONFIG = ("command", "func", "method", "fresh", "no_progress", "debug", "checkpoint_every",
               "override", "tf32", "cudnn_benchmark", "pin_memory")


def _train(args: argparse.Namespace) -> int:
    from metakd.recipes import get_method, run
    from metakd.recipes.options import option_values

    method = get_method(args.method)
    d = method.config_cls()
    given = {k: v for k, v in option_values(args, method.config_cls, method.aliases).items()
             if k not in _NOT_CONFIG}
    dataset, ways, shots = (given.pop(k, getattr(d, k)) for k in ("dataset", "ways", "shots"))
    cfg = method.config_cls.paper(dataset, ways, shots, **given)
    from metakd.engine.cuda import CudaSettings

    cuda = CudaSettings(tf32=args.tf32, cudnn_benchmark=args.cudnn_benchmark,
                        pin_memory=args.pin_memory)
    res = run(cfg, progress=not args.no_progress, resume=not args.fresh, method=method.name,
              checkpoint_every=args.checkpoint_every, override=args.override, cuda=cuda)
    _print_results(res, Path(cfg.out_dir))
    return 0


def _eval_name(cfg: Any, episodes: int, checkpoint: str) -> str:
    """``eval-omniglot-20way-5shot-15query-600ep-seed0-best.json``: what the result depends on
    (``best`` or ``last``: the checkpoint tested)."""
    dataset = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(cfg.dataset).lower())
    return (f"eval-{dataset}-{cfg.ways}way-{cfg.shots}shot-{cfg.test_queries}query-"
            f"{episodes}ep-seed{cfg.seed}-{checkpoint}.json")


def _eval(args: argparse.Namespace) -> int:
    from metakd.recipes import get_method, load_run
    from metakd.recipes.runs import write_json

    overrides = {k: v for k, v in {
        "dataset": args.dataset, "root": args.root, "ways": args.ways, "shots": args.shots,
        "test_queries": args.test_queries, "test_tasks": args.episodes, "seed": args.seed,
        "device": args.device,
    }.items() if v is not None}
    from metakd.engine import progress_bars
    from metakd.engine.cpu import keep_freed_memory

    with progress_bars(not args.no_progress):  # the data load_run builds, too
        r = load_run(args.run, checkpoint="last" if args.last else "best", **overrides)
        keep_freed_memory(r.config.device)
        res = r.evaluate(progress=not args.no_progress)
    cfg, trained = r.config, r.trained_config
    where = cfg.dataset if cfg.root else f"{cfg.dataset} (bundled)"
    task = get_method(r.method).task_of(cfg)
    print(f"{r.checkpoint}: {task} test accuracy on {where}: {res}")
    record = {
        "method": r.method,
        "run": str(r.folder),
        "checkpoint": r.checkpoint.name,
        "dataset": where,
        "episode": task,
        "test_queries": cfg.test_queries,
        "seed": cfg.seed,
        "trained": {"dataset": trained.dataset, "ways": trained.ways, "shots": trained.shots},
        "test": res.as_dict(),
        "test_str": str(res),
    }
    path = write_json(r.folder / _eval_name(cfg, cfg.test_tasks, r.checkpoint.stem), record)
    print(f"  written to {path}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from metakd.recipes.convert import convert_file

    res = convert_file(args.src, args.to, args.arch, format=args.format, part=args.part)
    options = ", ".join(f"{k}={v}" for k, v in res["model_kwargs"].items())
    print(f"{args.src} ({res['format']}) -> {res['arch']}" + (f" ({options})" if options else ""))
    if res["kind"] == "run folder":
        print(f"  run folder: {res['dest']} ({', '.join(res['files'])})")
        print(f"  test it: metakd eval {res['dest']}")
    else:
        print(f"  state dict: {res['dest']}")
    return 0


def _methods(args: argparse.Namespace) -> int:
    from metakd.recipes import methods

    found = methods()
    width = max((len(m.name) for m in found), default=0)
    for m in found:
        print(f"{m.name:<{width}}  {m.describe}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from metakd.engine.errors import UsageError
    from metakd.nn import describe_models
    from metakd.recipes.fields import plain

    found = describe_models(args.pattern, family=args.family)
    if not found:
        which = f"{args.family} model" if args.family else "model"
        raise UsageError(f"no {which} matches {args.pattern or '*'!r} "
                         "(`metakd models` lists them all)")
    name_w = max(len(m.name) for m in found)
    family_w = max(len(m.family) for m in found)
    for m in found:
        print(f"{m.name:<{name_w}}  {m.family:<{family_w}}  {plain(m.description)}".rstrip())
    return 0


def _shown_config(method: Any, argv: Sequence[str]) -> Any:
    """The config ``metakd train METHOD ARGV`` would start from: the paper's values for the
    data set, ways and shots given (the class defaults where they fail)."""
    from metakd.recipes.options import add_config_arguments, option_values

    d = method.config_cls()
    shape = ("dataset", "ways", "shots")
    aliases = [a for a in method.aliases if set(a.fields) <= set(shape)]
    pre = argparse.ArgumentParser(add_help=False)
    add_config_arguments(pre, method.config_cls, only=shape, aliases=aliases)
    try:
        known, _ = pre.parse_known_args(list(argv))
        given = option_values(known, method.config_cls, aliases)
        return method.config_cls.paper(*(given.get(k, getattr(d, k)) for k in shape))
    except (ValueError, TypeError, SystemExit):
        return d


def _add_train_parser(sub: Any, method: Any, argv: Sequence[str] = ()) -> None:
    """``metakd train NAME``: one option per config field, with the field's help (and the
    method's other names of them, its ``aliases``), the run's switches, then the method's
    options that are not config fields (its ``add_arguments``)."""
    from metakd.recipes.options import add_config_arguments, finish_help

    t = sub.add_parser(method.name, help=method.describe, description=method.describe)
    add_config_arguments(t, method.config_cls, aliases=method.aliases)
    t.add_argument("--checkpoint-every", type=int, default=100, metavar="N",
                   help="write last.pt every N steps and at the end (default: %(default)s)")
    t.add_argument("--fresh", action="store_true",
                   help="start afresh; a run already in the folder is kept as OUT_DIR.old-N")
    t.add_argument("--override", action="store_true",
                   help="resume although options changed; the new values are recorded and used")
    t.add_argument("--no-progress", action="store_true", help="hide progress bars")
    t.add_argument("--tf32", action=argparse.BooleanOptionalAction,
                   help="on CUDA: TF32 float32 matmuls and convolutions (default: PyTorch's)")
    t.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction,
                   help="on CUDA: cuDNN times its algorithms per shape (default: PyTorch's)")
    t.add_argument("--pin-memory", action=argparse.BooleanOptionalAction,
                   help="on CUDA: batches copied through pinned memory, without blocking")
    _add_debug(t)
    if method.add_arguments is not None:
        method.add_arguments(t)
    if "-h" in argv or "--help" in argv:  # the help of the values that would run
        finish_help(t, _shown_config(method, argv), f"{method.name} options")
    t.set_defaults(func=_train)


def _add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of a failure instead of one line")


def _add_demo_parser(sub: Any) -> None:
    """``metakd demo``: its budget, episode shape, network and run-folder options."""
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
    _add_debug(d)
    d.set_defaults(func=_demo)


def _add_train_parsers(sub: Any, argv: Sequence[str]) -> None:
    """``metakd train METHOD``: one sub-command per registered method (only the one ``argv``
    names gets the help of the values it would run)."""
    from metakd.recipes import methods

    t = sub.add_parser("train", help="train a registered method with the paper's settings",
                       description="Train a registered method with the paper's settings for "
                                   "the data set; `metakd train METHOD --help` lists its options.")
    per_method = t.add_subparsers(dest="method", required=True, metavar="METHOD",
                                  parser_class=_Parser)
    for method in methods():
        _add_train_parser(per_method, method,
                          argv if method.name in argv[:3] else ())


def _add_eval_parser(sub: Any) -> None:
    """``metakd eval RUN_DIR``: the test episodes' settings that may differ from the run's."""
    e = sub.add_parser("eval", help="test a trained run (600 episodes, 95%% interval)",
                       description="Test a run folder of any method again, on its episode shape "
                                   "or another one; the result also goes to "
                                   "RUN_DIR/eval-<settings>.json.")
    e.add_argument("run", help="the run folder of `metakd train` or `metakd demo`")
    e.add_argument("--dataset", help="test on another data set (default: the run's)")
    e.add_argument("--root", help="that data set's folder (default: the run's, or the bundled "
                                  "Omniglot with --dataset omniglot)")
    e.add_argument("--ways", type=int, help="N of the test episodes (default: the run's; another "
                                            "N gets a zero-initialised N-way head)")
    e.add_argument("--shots", type=int, help="K of the test episodes (default: the run's)")
    e.add_argument("--test-queries", type=int,
                   help="query images per class (default: the run's)")
    e.add_argument("--episodes", type=int, default=600, help="test episodes (default: %(default)s)")
    e.add_argument("--seed", type=int, help="seed of the test episodes (default: the run's)")
    e.add_argument("--device", help="cpu or cuda (default: the run's)")
    e.add_argument("--last", action="store_true", help="use last.pt even if best.pt exists")
    e.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_debug(e)
    e.set_defaults(func=_eval)


def _add_convert_parser(sub: Any) -> None:
    """``metakd convert SRC --to DEST``: the checkpoint, its format and the network to read."""
    c = sub.add_parser("convert", help="an original project's checkpoint as a metakd state dict "
                                       "or run folder",
                       description="Read an original project's checkpoint (weights only; "
                                   "MAML-Pytorch, PMAML, learn2learn, mdistiller, or a plain "
                                   "state dict of --arch), build the metakd model, load the "
                                   "weights strictly and write them: DEST ending in .pt/.pth "
                                   "gets {name: tensor}, any other DEST becomes a run folder "
                                   "that `metakd eval DEST` tests (MAML-Pytorch checkpoints).")
    c.add_argument("src", help="the checkpoint file")
    c.add_argument("--arch", help="metakd model name (default: the one the file's format says)")
    c.add_argument("--to", required=True, metavar="DEST", help="state-dict file or new run folder")
    c.add_argument("--format", help="checkpoint format, e.g. maml_pytorch, pmaml, learn2learn "
                                    "(default: detected)")
    c.add_argument("--part", choices=["student", "teacher"],
                   help="the network of a file holding several (a distiller's checkpoint)")
    _add_debug(c)
    c.set_defaults(func=_convert)


def _add_methods_parser(sub: Any) -> None:
    """``metakd methods``: no options."""
    m = sub.add_parser("methods", help="list the registered methods")
    m.set_defaults(func=_methods)


def _add_models_parser(sub: Any) -> None:
    """``metakd models [PATTERN]``: a glob of the names and a family to keep."""
    from metakd.nn.registry import FAMILIES

    m = sub.add_parser("models", help="list the model zoo (name, family, description)",
                       description="List the registered models (the names that "
                                   "metakd.nn.create and the --arch options take): name, "
                                   "family and description, one line each.")
    m.add_argument("pattern", nargs="?", metavar="PATTERN",
                   help="a glob the names match, e.g. 'resnet*' (default: every model)")
    m.add_argument("--family", choices=FAMILIES,
                   help="only the models of this family (default: all)")
    _add_debug(m)
    m.set_defaults(func=_models)


def _build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    p = _Parser(prog="metakd", description="Few-shot meta-learning and distillation. Exit "
                "status: 0 done, 2 usage, 3 data or input file, 4 training diverged, 5 disk or "
                "device.")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of a failure instead of one line")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_demo_parser(sub)
    _add_train_parsers(sub, argv)
    _add_eval_parser(sub)
    _add_convert_parser(sub)
    _add_methods_parser(sub)
    _add_models_parser(sub)
    return p


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its lines joined with `` | ``)."""
    text = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or type(exc).__name__


def report_failure(exc: Exception, prog: str, debug: bool = False) -> int:
    """Print a failure as ``PROG: error: MESSAGE`` on one line and return its exit status.

    Re-raises it (with its traceback) under ``debug`` or when it is not one of the classes
    of :mod:`metakd.engine.errors` (a bug, not bad input).

    Example:
        >>> from metakd.engine.errors import UsageError
        >>> report_failure(UsageError("steps=-1 (--steps) must be >= 0"), "metakd train")
        2
    """
    from metakd.engine.errors import classify

    code = classify(exc)
    if code is None or debug:
        raise exc
    print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
    return code


def guarded(fn: Callable[[], Any], prog: str) -> int:
    """Run an example script's ``main``: 0 when it returns, else :func:`report_failure`'s
    status (the environment variable ``METAKD_DEBUG=1`` shows the traceback instead).

    Example:
        >>> guarded(lambda: None, "demo.py")
        0
    """
    import os

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        fn()
    except Exception as e:
        return report_failure(e, prog, debug=os.environ.get("METAKD_DEBUG", "") not in ("", "0"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metakd`` console script.

    A failure prints one line, ``metakd COMMAND: error: what, where and how to fix it``, and
    exits with its class's status (:mod:`metakd.engine.errors`: 2 usage, 3 data or input, 4
    divergence, 5 disk or device); ``--debug`` re-raises it with its traceback. An unexpected
    exception (a bug) keeps its traceback.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as e:
        return report_failure(e, f"metakd {args.command}", debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
