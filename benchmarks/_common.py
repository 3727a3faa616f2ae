"""What every accuracy benchmark shares: options, the log file, the JSON line, paired verdicts.

A benchmark module defines a frozen ``Config`` dataclass (with ``seeds``, ``threads`` and its
own budget fields), a ``QUICK`` dict of smoke-run values and ``run(cfg, log, workdir=...)``;
its ``main`` is then::

    p = parser(__doc__, QUICK, "NAME_cpu.json")
    p.add_argument(...)                       # its own budget options
    args = p.parse_args(argv)
    cfg = configure(Config(threads=args.threads), args, QUICK, ("steps", ...))
    with result_log(output(args, "NAME_cpu.json")) as (log, out):
        finish(run(cfg, log, workdir=args.workdir), out, log)

The last line printed is the result as one JSON object; with ``--out`` (or by default, except
with ``--quick``) the result is also written to ``benchmarks/results/NAME_cpu.json`` and every
logged line to ``NAME_cpu.log`` beside it.

A result states its training budget next to the paper's (:func:`budget`, with
:func:`episodes_seen` for the episodic part), computed from the run's config.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from metakd.recipes.runs import write_json

RESULTS = Path(__file__).resolve().parent / "results"

Log = Callable[[str], None]


def parser(doc: str | None, quick: Mapping[str, Any], default_out: str | None,
           shots: bool = True) -> argparse.ArgumentParser:
    """The options every benchmark takes: --quick, --seeds, [--shots,] --test-tasks,
    --threads, --workdir and --out."""
    p = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke run of a few minutes, no result file written: {dict(quick)}")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2)")
    if shots:
        p.add_argument("--shots", type=int, nargs="+", help="shot settings (default 1 5)")
    p.add_argument("--test-tasks", type=int, help="fixed held-out test episodes")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--workdir", help="keep the run folders here (default: a temporary folder, "
                                     "removed at the end)")
    where = f"benchmarks/results/{default_out}" if default_out else "none"
    p.add_argument("--out", type=Path, help=f"JSON result file (default {where}; not written "
                                            "with --quick); the log goes next to it as .log")
    return p


def configure(cfg: Any, args: argparse.Namespace, quick: Mapping[str, Any],
              fields: Iterable[str] = ()) -> Any:
    """``cfg`` with ``QUICK`` applied under --quick, then every given option of ``fields``
    (and ``--test-tasks``, ``--seeds``, ``--shots`` where the config has them)."""
    if args.quick:
        cfg = dataclasses.replace(cfg, **quick)
    names = {f.name for f in dataclasses.fields(cfg)}
    for name in (*fields, "test_tasks"):
        value = getattr(args, name, None)
        if value is not None and name in names:
            cfg = dataclasses.replace(cfg, **{name: value})
    for name in ("seeds", "shots"):
        value = getattr(args, name, None)
        if value and name in names:
            cfg = dataclasses.replace(cfg, **{name: tuple(value)})
    return cfg


def output(args: argparse.Namespace, default_out: str, quick_out: str | None = None
           ) -> Path | None:
    """The result file: ``--out``, else ``default_out`` in benchmarks/results (``quick_out``
    or nothing with --quick)."""
    if args.out is not None:
        return Path(args.out)
    if args.quick:
        return RESULTS / quick_out if quick_out else None
    return RESULTS / default_out


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
    if out is not None:
        write_json(out, result)
        if "wall_s" in result:
            log(f"wall time {result['wall_s']:.0f} s; results in {out}")
    print(json.dumps(result))


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
