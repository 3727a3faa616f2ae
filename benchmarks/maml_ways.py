"""MAML's two Omniglot settings, 5-way and 20-way 1-shot, on the bundled held-out alphabets.

Finn et al. (2017) report 98.7 % (5-way 1-shot) and 95.8 % (20-way 1-shot) on Omniglot's
full evaluation split after 60,000 meta-iterations (meta-batch 32 and 16). This benchmark
trains ``metakd train maml`` with the paper's settings of each shape (``MAMLConfig.paper``:
5-way: one inner step of 0.4, meta-batch 32; 20-way: five inner steps of 0.1, meta-batch 16;
second order, 1 training query per class as the reference code, Adam 1e-3) for a budget
stated in training tasks, on the bundled Omniglot (5 background alphabets to meta-train, the
3 held-out alphabets to test, x4 rotations), and tests every run on the same fixed held-out
episodes (15 queries per class): the mean and 95% t-interval over episodes per seed, and over
seeds.

    .venv/bin/python -m benchmarks.maml_ways            # 2,000 tasks per run, 3 seeds (~35 min)
    .venv/bin/python -m benchmarks.maml_ways --quick    # a smoke run (a few minutes)

The last line of output is one JSON object; it is also written to ``--out`` (default
``benchmarks/results/maml_ways_cpu.json``), the log next to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from benchmarks._common import (
    Clock,
    configure,
    output,
    over_seeds,
    parser,
    run_logged,
    work_folder,
)
from metakd.data import Omniglot, few_shot
from metakd.engine import evaluate

ROTATIONS = (0, 90, 180, 270)
#: The paper's figures (Finn et al. 2017, Table 1; Omniglot's full evaluation split).
PAPER = {5: 0.987, 20: 0.958}


@dataclass(frozen=True)
class Config:
    """Everything that defines a run (the JSON records it)."""

    ways: tuple[int, ...] = (5, 20)
    #: Training tasks of every run (meta-iterations = tasks / meta-batch of the shape).
    tasks: int = 2_000
    seeds: tuple[int, ...] = (0, 1, 2)
    test_tasks: int = 200
    test_queries: int = 15
    test_seed: int = 10_000
    threads: int = 1


QUICK = {"tasks": 320, "seeds": (0,), "test_tasks": 20}


def run(cfg: Config, log: Callable[[str], None] = print, workdir: str | None = None
        ) -> dict[str, Any]:
    """Train and test every (ways, seed); the JSON-ready result."""
    from metakd.recipes import MAMLConfig, load_run
    from metakd.recipes import run as run_recipe

    torch.set_num_threads(cfg.threads)
    clock = Clock()
    keep = workdir is not None
    results: dict[str, Any] = {}
    with work_folder(workdir, "maml_ways_") as root:
        test = Omniglot(split="test", rotations=ROTATIONS)
        for ways in cfg.ways:
            paper = MAMLConfig.paper("omniglot", ways, 1)
            steps = cfg.tasks // paper.meta_batch_size
            episodes = list(few_shot(test, ways, 1, cfg.test_queries, meta_batch_size=8,
                                     num_tasks=cfg.test_tasks, seed=cfg.test_seed,
                                     progress=False))
            rows = []
            for seed in cfg.seeds:
                out = str(root / f"maml_{ways}way_s{seed}")
                t0 = time.perf_counter()
                run_recipe(MAMLConfig.paper("omniglot", ways, 1, steps=steps, seed=seed,
                                            test_tasks=8, out_dir=out),
                           progress=False, resume=keep)
                secs = time.perf_counter() - t0
                res = evaluate(load_run(out, checkpoint="last").learner, episodes)
                rows.append({"seed": seed, "accuracy": res.mean, "ci95": res.ci95,
                             "episodes": res.episodes, "train_s": round(secs, 1)})
                log(f"{ways}-way 1-shot seed {seed}: {steps} meta-iterations "
                    f"({steps * paper.meta_batch_size} tasks) in {secs:.0f} s, held-out {res}")
            summary = over_seeds(rows, "accuracy")
            results[f"{ways}way1shot"] = {
                "meta_iterations": steps, "meta_batch": paper.meta_batch_size,
                "tasks": steps * paper.meta_batch_size,
                "paper_tasks": 60_000 * paper.meta_batch_size,
                "inner": f"{paper.inner_steps} x {paper.inner_lr} (test {paper.test_inner_steps})",
                **summary, "paper": PAPER[ways]}
            log(f"{ways}-way 1-shot: {100 * summary['mean']:.2f} % over seeds "
                f"(paper {100 * PAPER[ways]:.1f} % after {60_000 * paper.meta_batch_size} "
                "tasks on the full evaluation split)")
    return {"benchmark": "maml_ways",
            "setting": ("bundled Omniglot (5 background alphabets train, 3 held-out test, x4 "
                        "rotations), 1-shot, MAMLConfig.paper of each shape, second order, "
                        "1 training query per class; every run tested on its last weights "
                        "on the same held-out episodes"),
            "results": results, "config": asdict(cfg), "threads": cfg.threads,
            **clock.record()}


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__, QUICK, "maml_ways_cpu.json", shots=False)
    p.add_argument("--tasks", type=int, help="training tasks per run (default 2,000)")
    p.add_argument("--ways", type=int, nargs="+", help="episode shapes (default 5 20)")
    args = p.parse_args(argv)
    cfg = configure(Config(threads=args.threads), args, QUICK, ("tasks", "ways"))
    run_logged(run, cfg, output(args, "maml_ways_cpu.json"), workdir=args.workdir)


if __name__ == "__main__":
    main()
