"""Meta-LSTM (and MLAL's attention variant) against MAML on the bundled Omniglot at 28 px.

Per seed and shot setting (5-way 1-shot and 5-shot), four arms train for the **same
compute time** (``train_seconds`` each, one thread) on the same learner architecture, the
PMAML/MAML Conv-4 with 32 filters and a flattened 32-d embedding (``conv4``, ``hidden=32``,
``head="flatten"``: 28,485 parameters at 5 ways), through :func:`metakd.recipes.run`:

* ``meta_lstm``: :class:`metakd.recipes.MetaLSTMConfig` (``paper("omniglot")``: 12 epochs of
  minibatches of 5 for 1-shot, 8 of 25 for 5-shot, LSTM of 20 units, pre-sigmoid gate
  feedback, clip 0.25, one episode per meta-iteration, running batch norm reset per episode
  and the support's statistics on the query at test);
* ``meta_lstm_attention``: the same with ``attention=True`` (MLAL: 4 LSTM units, its 1-shot
  16 epochs of 25, self-attention over the LSTM states sized from the learner, the
  cross-attention front end on each image itself: no query image or label read while
  adapting);
* ``meta_lstm_attention_softmax``: the same with ``attention_softmax=True``, the softmax over
  the attention scores that MLAL's code defines but never applies;
* ``maml``: :class:`metakd.recipes.MAMLConfig`, second order, one inner step of 0.4 in
  training and three at test on the mean support cross-entropy, meta-batch 4, Adam 1e-3,
  transductive batch norm (MAML's usual protocol).

Equal time, as a fixed number of meta-iterations: before training, each arm's seconds per
meta-iteration are measured side by side in this process, from the training log of a run of
``calib_steps`` meta-iterations (the time between its records at iteration 10 and at the
last one, so start-up, the first slow iterations and the test do not count). Each arm then
trains for ``round(train_seconds / seconds_per_iteration)`` meta-iterations with every seed. A wall-clock limit per run would instead give every seed a
different number of updates on a shared machine (14 to 58 in a first run of this benchmark),
and its results would not be reproducible. The JSON records the measured costs and counts.

Deviations from the original Meta-LSTM settings, because the budget is minutes, not the
original 50,000-75,000 episodes: Adam 5e-3 instead of 1e-3, and the gradients are not divided
again by the batch size (``scale_grads=False``); both are recorded in the JSON. All arms train
on 5 query images per class. Every model is scored on its last weights (the bundled copy has no
validation split) on one fixed set of held-out episodes per shot setting (3 held-out alphabets x
4 rotations, 15 queries per class, seeded by ``test_seed``, the same for every arm and seed):
mean accuracy with a Student-t 95% interval over episodes per seed, the mean over seeds with a
t-interval over seeds, and paired differences (each attention arm minus ``meta_lstm`` and
minus ``maml``, ``meta_lstm - maml``, and the softmax arm minus the arm without it): per seed
over the shared episodes (:func:`metakd.engine.paired_difference`), pooled over seeds.

    .venv/bin/python -m benchmarks.meta_lstm_omniglot            # the full run (~45 min)
    .venv/bin/python -m benchmarks.meta_lstm_omniglot --quick    # a smoke run (2-3 minutes)

The last line of output is one JSON object; without ``--quick`` it is also written to
``--out`` (default ``benchmarks/results/meta_lstm_omniglot_cpu.json``), the log next to it.
The JSON states each arm's training budget (episodes and their images) next to its paper's
(``budget``).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import (
    Clock,
    budget,
    configure,
    episodes_seen,
    output,
    over_seeds,
    paired_list,
    parser,
    run_logged,
    work_folder,
)
from metakd.data import Omniglot, TaskBatch, few_shot
from metakd.engine import evaluate, paired_difference

WAYS = 5
IMAGE_SIZE = 28
ROTATIONS = (0, 90, 180, 270)
#: The arms; ``meta_lstm_attention_softmax`` is MLAL with the softmax its code defines but
#: never applies.
ARMS = ("meta_lstm", "meta_lstm_attention", "meta_lstm_attention_softmax", "maml")
PAIRS = (("meta_lstm", "maml"), ("meta_lstm_attention", "maml"),
         ("meta_lstm_attention", "meta_lstm"), ("meta_lstm_attention_softmax", "maml"),
         ("meta_lstm_attention_softmax", "meta_lstm"),
         ("meta_lstm_attention_softmax", "meta_lstm_attention"))
#: Each arm's paper budget in training episodes per shot setting, with its query images per
#: class (meta-learning spec: Meta-LSTM 3.5, 75,000 1-shot and 50,000 5-shot episodes; MLAL's
#: scripts 3.9, 50,000; MAML 1.2, Omniglot 5-way: 60,000 meta-iterations of 32 tasks, whose
#: query count the spec does not fix).
PAPER_EPISODES: dict[str, tuple[dict[int, int], int | None, str]] = {
    "meta_lstm": ({1: 75_000, 5: 50_000}, 15,
                  "Meta-LSTM, miniImageNet 5-way (meta-learning spec 3.5): 75,000 1-shot / "
                  "50,000 5-shot episodes of 5 x (K + 15) images"),
    "meta_lstm_attention": ({1: 50_000, 5: 50_000}, 15,
                            "MLAL's scripts, miniImageNet 5-way (meta-learning spec 3.9): 50,000 "
                            "episodes of 5 x (K + 15) images"),
    "maml": ({1: 60_000 * 32, 5: 60_000 * 32}, None,
             "MAML, Omniglot 5-way (meta-learning spec 1.2): 60,000 meta-iterations of 32 tasks"),
}
PAPER_EPISODES["meta_lstm_attention_softmax"] = PAPER_EPISODES["meta_lstm_attention"]
LEARNER = {"hidden": 32, "head": "flatten"}


@dataclass
class Config:
    """Everything that defines a run (the JSON records it)."""

    arms: tuple[str, ...] = ARMS
    shots: tuple[int, ...] = (1, 5)
    seeds: tuple[int, ...] = (0, 1, 2)
    #: Seconds of meta-training per arm (one thread, on the shared 2-core CPU). Sized from a
    #: timing run: a Meta-LSTM test episode took 0.7 s (0.45 s with attention), MAML's 0.05-0.1
    #: s, so 3 seeds x 2 shot settings x (4 x 60 s + tests of 100 episodes) is about 45 min.
    train_seconds: float = 60.0
    #: Meta-iterations of the timing run per arm (a multiple of 10, at least 20): the
    #: iterations after the 10th are timed.
    calib_steps: int = 30
    queries: int = 5
    test_queries: int = 15
    test_tasks: int = 100
    test_seed: int = 10_000
    meta_lstm_lr: float = 5e-3
    meta_lstm_scale_grads: bool = False
    maml_inner_lr: float = 0.4
    maml_meta_lr: float = 1e-3
    maml_meta_batch: int = 4
    threads: int = 1


QUICK = {"train_seconds": 8.0, "seeds": (0,), "shots": (1,), "test_tasks": 10,
         "calib_steps": 20}


def arm_config(cfg: Config, arm: str, shots: int, seed: int, out_dir: str,
               steps: int) -> Any:
    """The recipe config of one arm, trained for ``steps`` meta-iterations."""
    from metakd.recipes import MAMLConfig, MetaLSTMConfig

    common: dict[str, Any] = dict(
        ways=WAYS, shots=shots, queries=cfg.queries, test_queries=cfg.test_queries,
        image_size=IMAGE_SIZE, rotations=True, model="conv4", model_kwargs=dict(LEARNER),
        steps=steps, val_every=10**9, test_tasks=1, seed=seed,
        test_seed=cfg.test_seed, out_dir=out_dir)
    if arm == "maml":
        return MAMLConfig(dataset="omniglot", root=None, inner_lr=cfg.maml_inner_lr,
                          inner_steps=1, test_inner_steps=3, first_order=False,
                          inner_loss_reduction="mean", meta_lr=cfg.maml_meta_lr,
                          meta_batch_size=cfg.maml_meta_batch, backend="func", compile="off",
                          **{**common, "model_kwargs": {**LEARNER, "image_size": IMAGE_SIZE}})
    return MetaLSTMConfig.paper("omniglot", attention=arm.startswith("meta_lstm_attention"),
                                attention_softmax=arm.endswith("_softmax"),
                                meta_lr=cfg.meta_lstm_lr, scale_grads=cfg.meta_lstm_scale_grads,
                                **common)


def heldout_episodes(cfg: Config, shots: int) -> list[TaskBatch]:
    """The fixed held-out episodes of a shot setting (seeded by ``test_seed`` only)."""
    test = Omniglot(split="test", rotations=ROTATIONS)
    return list(few_shot(test, WAYS, shots, cfg.test_queries, meta_batch_size=5,
                         num_tasks=cfg.test_tasks, image_size=IMAGE_SIZE, seed=cfg.test_seed,
                         progress=False))


def seconds_per_iteration(cfg: Config, arms: Sequence[str], shots: int, root: Path,
                          log: Callable[[str], None] = print) -> dict[str, float]:
    """Each arm's seconds per meta-iteration, measured side by side (see the module doc)."""
    from metakd.engine import read_log
    from metakd.recipes import run as run_recipe

    n = cfg.calib_steps
    if n < 20 or n % 10:
        raise ValueError(f"calib_steps must be a multiple of 10, at least 20, got {n}")
    per: dict[str, float] = {}
    for arm in arms:
        out = root / f"calib_{arm}_{shots}shot"
        run_recipe(arm_config(cfg, arm, shots, 0, str(out), steps=n), progress=False,
                   resume=False)
        at = {r["step"]: r["elapsed_s"] for r in read_log(out / "log.jsonl")
              if r.get("kind") == "train"}
        per[arm] = (at[n] - at[10]) / (n - 10)
        shutil.rmtree(out, ignore_errors=True)
    log(f"{shots}-shot seconds per meta-iteration: "
        + ", ".join(f"{a} {v:.3f}" for a, v in per.items()))
    return per


def run(cfg: Config, log: Callable[[str], None] = print,
        workdir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Every arm for every seed and shot setting; the JSON-ready result."""
    from metakd.recipes import load_run
    from metakd.recipes import run as run_recipe

    torch.set_num_threads(cfg.threads)
    clock = Clock()
    with work_folder(workdir, "meta_lstm_omniglot_") as root:
        episodes = {k: heldout_episodes(cfg, k) for k in cfg.shots}
        arms = tuple(cfg.arms)
        unknown = [a for a in arms if a not in ARMS]
        if unknown:
            raise ValueError(f"unknown arms {unknown}; choose from {ARMS}")
        pairs = [(a, b) for a, b in PAIRS if a in arms and b in arms]
        log(f"{len(arms)} arms x {len(cfg.seeds)} seeds x shots {list(cfg.shots)}: "
            f"{cfg.train_seconds:g} s of meta-training each; test: {cfg.test_tasks} fixed "
            f"episodes (seed {cfg.test_seed}, {cfg.test_queries} queries/class)")
        cost = {k: seconds_per_iteration(cfg, arms, k, root, log) for k in cfg.shots}
        steps = {k: {a: max(1, round(cfg.train_seconds / cost[k][a])) for a in arms}
                 for k in cfg.shots}
        for k in cfg.shots:
            log(f"{k}-shot meta-iterations per arm for {cfg.train_seconds:g} s: {steps[k]}")
        results: dict[tuple[int, str, int], Any] = {}
        per_seed: dict[int, dict[str, list[dict[str, Any]]]] = {
            k: {a: [] for a in arms} for k in cfg.shots}
        for seed in cfg.seeds:
            for shots in cfg.shots:
                for arm in arms:
                    out = str(root / f"{arm}_{shots}shot_s{seed}")
                    t0 = time.perf_counter()
                    res = run_recipe(arm_config(cfg, arm, shots, seed, out,
                                                steps[shots][arm]),
                                     progress=False, resume=False)
                    secs = time.perf_counter() - t0
                    learner = load_run(out, checkpoint="last").learner
                    t1 = time.perf_counter()
                    r = evaluate(learner, episodes[shots])
                    results[(shots, arm, seed)] = r
                    per_seed[shots][arm].append(
                        {"seed": seed, "accuracy": r.mean, "ci95": r.ci95,
                         "episodes": r.episodes, "steps": res["steps"],
                         "run_s": round(secs, 1), "test_s": round(time.perf_counter() - t1, 1)})
                    log(f"{shots}-shot seed {seed} {arm:27s} {r} ({res['steps']} "
                        f"meta-iterations in {secs:.0f} s with set-up and a 1-task test)")
        settings: dict[str, Any] = {}
        verdict: list[str] = []
        for shots in cfg.shots:
            arms_out = {a: {**over_seeds(per_seed[shots][a], "accuracy"),
                            "seconds_per_iteration": cost[shots][a],
                            "meta_iterations": steps[shots][a]} for a in arms}
            diffs_out: dict[str, Any] = {}
            for a, b in pairs:
                per = [{"seed": s, **paired_difference(results[(shots, a, s)],
                                                       results[(shots, b, s)]).summary()}
                       for s in cfg.seeds]
                diffs_out[f"{a}-{b}"] = over_seeds(per)
            settings[f"{WAYS}way{shots}shot"] = {"arms": arms_out,
                                                 "paired_differences": diffs_out}
            verdict.append(_verdict(shots, arms, arms_out, diffs_out))
        for line in verdict:
            log(line)
        return {
            "benchmark": "meta_lstm_omniglot",
            "setting": (
                f"bundled Omniglot at {IMAGE_SIZE} px (5 background alphabets train, 3 held-out "
                f"test, x4 rotations), {WAYS}-way; every arm the conv4 learner with 32 filters "
                "and a flattened 32-d embedding (28,485 parameters), the same training "
                f"time ({cfg.train_seconds:g} s, {cfg.threads} thread, as a fixed number of "
                "meta-iterations from each arm's measured cost), scored on its last "
                "weights on the same fixed held-out episodes per shot setting"),
            "arms_note": (
                "meta_lstm: MetaLSTMConfig.paper('omniglot') (1-shot 12 epochs x batch 5, "
                "5-shot 8 x 25; LSTM 20; clip 0.25; 1 episode per meta-iteration; running BN "
                f"reset per episode), Adam {cfg.meta_lstm_lr:g}, scale_grads="
                f"{cfg.meta_lstm_scale_grads}; meta_lstm_attention: the same with "
                "attention=True (MLAL: LSTM 4, 1-shot 16 x 25, attention sized from the learner, "
                "front end on each image itself); meta_lstm_attention_softmax: the same with "
                "attention_softmax=True (the softmax MLAL's code defines but never applies); "
                "maml: second order, 1 inner step of "
                f"{cfg.maml_inner_lr} (3 at test), meta-batch {cfg.maml_meta_batch}, Adam "
                f"{cfg.maml_meta_lr:g}, transductive BN"),
            "shots": list(cfg.shots),
            "seeds": list(cfg.seeds),
            "train_seconds": cfg.train_seconds,
            "train_queries": cfg.queries,
            "test_episodes": cfg.test_tasks,
            "test_queries": cfg.test_queries,
            "test_seed": cfg.test_seed,
            "budget": {f"{WAYS}way{k}shot": {a: arm_budget(cfg, a, k, steps[k][a])
                                             for a in arms} for k in cfg.shots},
            "results": settings,
            "verdict": verdict,
            "arms": list(arms),
            "config": {**asdict(cfg), "seeds": list(cfg.seeds), "shots": list(cfg.shots),
                       "arms": list(arms)},
            **clock.record(),
        }


def arm_budget(cfg: Config, arm: str, shots: int, meta_iterations: int) -> dict[str, Any]:
    """An arm's training budget for a shot setting next to its paper's (:data:`PAPER_EPISODES`):
    ``meta_iterations`` of one episode (MAML: ``maml_meta_batch``) of 5 x (``shots`` +
    ``queries``) images; no pre-training.

    Example:
        >>> b = arm_budget(Config(), "meta_lstm", 1, 76)
        >>> b["run"]["tasks"], b["run"]["task_images"], b["paper"]["tasks"]
        (76, 2280, 75000)
    """
    per_step = cfg.maml_meta_batch if arm == "maml" else 1
    run = {"steps": meta_iterations, "tasks_per_step": per_step,
           **episodes_seen(meta_iterations * per_step, WAYS, shots, cfg.queries)}
    episodes, queries, source = PAPER_EPISODES[arm]
    paper: dict[str, Any] = {"tasks": episodes[shots]}
    if queries is not None:
        paper = episodes_seen(episodes[shots], WAYS, shots, queries)
    return budget(run, paper, source)


def _verdict(shots: int, names: Sequence[str], arms: dict[str, Any], diffs: dict[str, Any]
             ) -> str:
    """Each arm's mean and each paired difference (points, 95% over seeds)."""
    text = f"{WAYS}-way {shots}-shot: " + ", ".join(
        f"{a} {100 * arms[a]['mean']:.2f} %" for a in names)
    return text + "; paired, points [95% t over seeds]: " + paired_list(diffs)


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__, QUICK, "meta_lstm_omniglot_cpu.json")
    p.add_argument("--arms", nargs="+", choices=ARMS, metavar="ARM",
                   help=f"arms (default {' '.join(ARMS)})")
    p.add_argument("--train-seconds", type=float,
                   help="meta-training seconds per arm (60), as measured meta-iterations")
    args = p.parse_args(argv)
    cfg = configure(Config(threads=args.threads), args, QUICK, ("train_seconds", "arms"))
    run_logged(run, cfg, output(args, "meta_lstm_omniglot_cpu.json"), workdir=args.workdir)


if __name__ == "__main__":
    main()
