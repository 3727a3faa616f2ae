"""Meta-Transfer Learning on the bundled Omniglot at 28 px: does meta-transfer beat its baselines?

Per seed, on the same Conv-4 backbone (``MTLConfig.paper("omniglot", ...)``: 28 px, rotations,
meta-batch 4, 5 training queries per class, PyTorch variant), these arms are run through
:func:`metakd.recipes.run`:

* ``pretrain_finetune``: phase ``"pre"`` (whole-classification pre-training of the body on
  every training class, ``pre_epochs`` epochs), tested as the recipe does: a zero classifier
  fine-tuned on each support set (``test_update_step`` steps of ``base_lr``) over the frozen
  pre-trained body. Pre-training does not depend on the episode shape, so one pre-training
  run per seed serves both shot settings (and both meta-transfer arms);
* ``mtl``: phase ``"meta"`` on that body (``pretrained=`` the pre run folder), scale-shift and
  batch-norm parameters and the classifier's initialisation meta-learned for ``steps``
  meta-iterations, classifier-only inner loop, without the hard-task meta-batch;
* ``mtl_hard``: the same with ``hard_tasks=True`` (the recipe's defaults: normal and hard
  meta-batches alternate, the other classes drawn at random);
* ``maml``: :class:`metakd.recipes.MAMLConfig` from scratch on Conv-4 with the same episodes
  (5-way, same shots, 5 queries, meta-batch 4), the same ``steps`` meta-iterations, MAML's
  Omniglot inner loop (one second-order step of 0.4 in training, three at test, mean support
  cross-entropy) and Adam 1e-3. MAML gets **no pre-training budget**: it is matched to the
  meta phase in meta-iterations, not to pre-training + meta-training (a pre-training
  minibatch and a meta-iteration are different units; each arm's training seconds are
  reported so its compute is visible).

All models are scored on their last weights (the bundled copy has no validation split, so
there is no selection) on one fixed set of held-out episodes per shot setting (the 3 held-out
alphabets x 4 rotations, seeded by ``test_seed``, the same for every arm and seed): mean
accuracy with its Student-t 95% interval over episodes per seed; then the mean over seeds
with a t-interval over seeds; and paired differences (``mtl - pretrain_finetune``,
``mtl - maml``, ``mtl_hard - mtl``, ``mtl_hard - maml``): per seed a paired t-interval over the
shared episodes, pooled a t-interval over seeds.

    .venv/bin/python -m benchmarks.mtl_omniglot            # the full run (~32 min, 1 thread)
    .venv/bin/python -m benchmarks.mtl_omniglot --quick    # a smoke run (2-3 minutes)

The last line of output is one JSON object; without ``--quick`` it is also written to
``--out`` (default ``benchmarks/results/mtl_omniglot_cpu.json``), the log next to it
(``.log``). The JSON states the ``mtl`` arm's training budget per shot setting (pre-training
images, tasks and their images) next to MTL's (``budget``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
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
ARMS = ("pretrain_finetune", "mtl", "mtl_hard", "maml")
#: Paired differences reported: (arm, minus arm).
PAIRS = (("mtl", "pretrain_finetune"), ("mtl", "maml"), ("mtl_hard", "mtl"),
         ("mtl_hard", "maml"), ("pretrain_finetune", "maml"))
#: MTL's budget in its TF code, the one its author gives for the paper (meta-learning spec,
#: section 2.5): pre-training 10,000 iterations of 64 images (the checkpoint meta-training
#: starts from), then 20,000 meta-iterations of 2 tasks with 15 queries per class.
PAPER_PRETRAINING_IMAGES = 10_000 * 64
PAPER_TASKS = 20_000 * 2
PAPER_QUERIES = 15
PAPER_BUDGET_SOURCE = (
    "MTL's TF code, miniImageNet 5-way (meta-learning spec 2.5): pre-training 10,000 "
    "iterations of 64 images, meta-training 20,000 meta-iterations of 2 tasks of "
    "5 x (K + 15) images")


@dataclass
class Config:
    """Everything that defines a run (the JSON records it)."""

    model: str = "conv4"
    shots: tuple[int, ...] = (1, 5)
    seeds: tuple[int, ...] = (0, 1, 2)
    #: Sized on the shared 2-core CPU (1 thread) from a 100-step 5-shot timing run: per
    #: meta-iteration mtl / mtl_hard 0.29 s, maml 0.56 s (5-shot; 1-shot less); one
    #: pre-training epoch (170 minibatches of 64) 19 s; a 100-episode test 5-12 s. Estimated
    #: full run: 3 seeds x (5 epochs + 250 x ~1.9 s + 8 tests) = about 32 minutes.
    steps: int = 250
    #: Pre-training epochs over the training split (``MTLConfig.paper``: 10).
    pre_epochs: int = 5
    meta_batch: int = 4
    queries: int = 5
    test_queries: int = 15
    test_tasks: int = 100
    test_seed: int = 10_000
    maml_inner_lr: float = 0.4
    maml_inner_steps: int = 1
    maml_test_inner_steps: int = 3
    maml_meta_lr: float = 1e-3
    maml_backend: str = "func"
    threads: int = 1


QUICK = {"steps": 15, "pre_epochs": 1, "seeds": (0,), "shots": (1,), "test_tasks": 20}


# --- configs of the library's recipes --------------------------------------------------------
def pre_config(cfg: Config, seed: int, out_dir: str) -> Any:
    """Phase "pre": ``MTLConfig.paper("omniglot")`` with the benchmark's epochs."""
    from metakd.recipes import MTLConfig

    return MTLConfig.paper("omniglot", ways=WAYS, shots=cfg.shots[0], phase="pre",
                           model=cfg.model, pre_epochs=cfg.pre_epochs, val_every=10**9,
                           test_tasks=cfg.meta_batch, seed=seed, out_dir=out_dir)


def meta_config(cfg: Config, shots: int, seed: int, pre_dir: str, hard: bool,
                out_dir: str) -> Any:
    """Phase "meta" on ``pre_dir``'s body, with or without the hard-task meta-batch."""
    from metakd.recipes import MTLConfig

    return MTLConfig.paper("omniglot", ways=WAYS, shots=shots, phase="meta",
                           pretrained=pre_dir, model=cfg.model, queries=cfg.queries,
                           test_queries=cfg.test_queries, meta_batch_size=cfg.meta_batch,
                           steps=cfg.steps, hard_tasks=hard, val_every=10**9,
                           test_tasks=cfg.meta_batch, seed=seed, out_dir=out_dir)


def maml_config(cfg: Config, shots: int, seed: int, out_dir: str) -> Any:
    """MAML from scratch on the same backbone, episodes and meta-iterations."""
    from metakd.recipes import MAMLConfig

    return MAMLConfig(
        dataset="omniglot", root=None, ways=WAYS, shots=shots, queries=cfg.queries,
        test_queries=cfg.test_queries, image_size=IMAGE_SIZE, rotations=True, model=cfg.model,
        inner_lr=cfg.maml_inner_lr, inner_steps=cfg.maml_inner_steps,
        test_inner_steps=cfg.maml_test_inner_steps, first_order=False,
        inner_loss_reduction="mean", meta_lr=cfg.maml_meta_lr,
        meta_batch_size=cfg.meta_batch, steps=cfg.steps, val_every=10**9,
        test_tasks=cfg.meta_batch, backend=cfg.maml_backend, compile="off", seed=seed,
        test_seed=cfg.test_seed, out_dir=out_dir)


def mtl_budget(cfg: Config, shots: int, pre_minibatches: int) -> dict[str, Any]:
    """The training budget of the ``mtl`` arm of a shot setting next to the paper's.

    Pre-training: ``pre_minibatches`` of the recipe's pre-training batch size; meta-training:
    ``steps`` meta-iterations of ``meta_batch`` tasks of 5 x (``shots`` + ``queries``) images.

    Example:
        >>> b = mtl_budget(Config(), 1, 850)
        >>> b["run"]["pretraining_images"], b["run"]["tasks"], b["fraction_of_paper"]["tasks"]
        (54400, 1000, 0.025)
    """
    batch = pre_config(cfg, 0, "unused").pre_batch_size
    run = {"pretraining_epochs": cfg.pre_epochs, "pretraining_steps": pre_minibatches,
           "pretraining_batch": batch, "pretraining_images": pre_minibatches * batch,
           "steps": cfg.steps, "tasks_per_step": cfg.meta_batch,
           **episodes_seen(cfg.steps * cfg.meta_batch, WAYS, shots, cfg.queries)}
    paper = {"pretraining_images": PAPER_PRETRAINING_IMAGES,
             **episodes_seen(PAPER_TASKS, WAYS, shots, PAPER_QUERIES)}
    out = budget(run, paper, PAPER_BUDGET_SOURCE)
    out["note"] = ("the mtl and mtl_hard arms; pretrain_finetune had the pre-training only, "
                   "maml the same tasks and no pre-training")
    return out


# --- test ------------------------------------------------------------------------------------
def heldout_episodes(cfg: Config, shots: int) -> list[TaskBatch]:
    """The fixed held-out episodes of a shot setting (seeded by ``test_seed`` only)."""
    test = Omniglot(split="test", rotations=ROTATIONS)
    return list(few_shot(test, WAYS, shots, cfg.test_queries, meta_batch_size=cfg.meta_batch,
                         num_tasks=cfg.test_tasks, image_size=IMAGE_SIZE, seed=cfg.test_seed,
                         progress=False))


def _finetune_learner(run_dir: str) -> Any:
    """A pre run's test learner, as the recipe's own test of a phase "pre" run."""
    from metakd.recipes import load_run
    from metakd.recipes.mtl import finetune_learner

    r = load_run(run_dir, checkpoint="last")
    return finetune_learner(r.config, r.model.state_dict(), channels=1)


def score(run_dir: str, episodes: list[TaskBatch], finetune: bool = False
          ) -> tuple[Any, list[float]]:
    """A run folder's last weights on ``episodes``: its EvalResult and per-episode accuracies."""
    from metakd.recipes import load_run

    learner = (_finetune_learner(run_dir) if finetune
               else load_run(run_dir, checkpoint="last").learner)
    result = evaluate(learner, episodes)
    return result, list(result.values or ())


# --- the benchmark ---------------------------------------------------------------------------
def run(cfg: Config, log: Callable[[str], None] = print,
        workdir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Pre-train, then every arm for every seed and shot setting; the JSON-ready result.

    Run folders go to ``workdir`` (kept) or to a temporary folder (removed at the end).
    """
    from metakd.recipes import run as run_recipe

    torch.set_num_threads(cfg.threads)
    clock = Clock()
    with work_folder(workdir, "mtl_omniglot_") as root:
        episodes = {k: heldout_episodes(cfg, k) for k in cfg.shots}
        log(f"{len(ARMS)} arms x {len(cfg.seeds)} seeds x shots {list(cfg.shots)}: "
            f"{cfg.pre_epochs} pre-training epochs, {cfg.steps} meta-iterations of "
            f"{cfg.meta_batch} tasks ({cfg.queries} queries/class); test: {cfg.test_tasks} "
            f"fixed episodes (seed {cfg.test_seed}, {cfg.test_queries} queries/class)")

        per_seed: dict[int, dict[str, list[dict[str, Any]]]] = {
            k: {a: [] for a in ARMS} for k in cfg.shots}
        per_episode: dict[tuple[int, str, int], list[float]] = {}
        pre_info: list[dict[str, Any]] = []

        def record(shots: int, arm: str, seed: int, out: str, secs: float, steps: int,
                   finetune: bool = False) -> None:
            res, accs = score(out, episodes[shots], finetune=finetune)
            per_episode[(shots, arm, seed)] = accs
            per_seed[shots][arm].append({"seed": seed, "accuracy": res.mean, "ci95": res.ci95,
                                         "episodes": res.episodes, "train_s": round(secs, 1),
                                         "steps": steps})
            log(f"{shots}-shot seed {seed} {arm:18s} {res} (train {secs:.0f} s)")

        for seed in cfg.seeds:
            pre_dir = str(root / f"pre_s{seed}")
            t0 = time.perf_counter()
            pre = run_recipe(pre_config(cfg, seed, pre_dir), progress=False, resume=False)
            pre_s = time.perf_counter() - t0
            pre_info.append({"seed": seed, "minibatches": pre["steps"],
                             "train_s": round(pre_s, 1)})
            log(f"seed {seed}: pre-training {pre['steps']} minibatches in {pre_s:.0f} s")
            for shots in cfg.shots:
                record(shots, "pretrain_finetune", seed, pre_dir, pre_s, pre["steps"],
                       finetune=True)
                for arm, hard in (("mtl", False), ("mtl_hard", True)):
                    out = str(root / f"{arm}_{shots}shot_s{seed}")
                    t0 = time.perf_counter()
                    res = run_recipe(meta_config(cfg, shots, seed, pre_dir, hard, out),
                                     progress=False, resume=False)
                    record(shots, arm, seed, out, time.perf_counter() - t0, res["steps"])
                out = str(root / f"maml_{shots}shot_s{seed}")
                t0 = time.perf_counter()
                res = run_recipe(maml_config(cfg, shots, seed, out), progress=False,
                                 resume=False)
                record(shots, "maml", seed, out, time.perf_counter() - t0, res["steps"])

        settings: dict[str, Any] = {}
        verdict: list[str] = []
        for shots in cfg.shots:
            arms_out: dict[str, Any] = {a: over_seeds(per_seed[shots][a], "accuracy")
                                        for a in ARMS}
            diffs_out: dict[str, Any] = {}
            for a, b in PAIRS:
                diffs = []
                for seed in cfg.seeds:
                    d = paired_difference(per_episode[(shots, a, seed)],
                                          per_episode[(shots, b, seed)])
                    diffs.append({"seed": seed, **d.summary()})
                diffs_out[f"{a}-{b}"] = over_seeds(diffs)
            settings[f"{WAYS}way{shots}shot"] = {"arms": arms_out, "paired_differences": diffs_out}
            verdict.append(_verdict(shots, arms_out, diffs_out))
        for line in verdict:
            log(line)
        return {
            "benchmark": "mtl_omniglot",
            "setting": (
                f"bundled Omniglot at {IMAGE_SIZE} px (5 background alphabets train, 3 held-out "
                f"test, x4 rotations), {WAYS}-way, {cfg.model} for every arm; MTLConfig.paper("
                "'omniglot') (PyTorch variant: first order, classifier-only inner loop of 10 "
                "steps of 0.1, 20 at test; scale-shift + batch norm Adam 1e-3, head init Adam "
                "1e-3, rates halved every 500); every model scored on its last weights on the "
                "same fixed held-out episodes per shot setting"),
            "arms_note": (
                "pretrain_finetune: phase 'pre' (one run per seed, shared by both shot "
                "settings and by mtl/mtl_hard), tested by fine-tuning a zero classifier on "
                "each support set over the frozen body; mtl: phase 'meta' on that body, no "
                "hard tasks; mtl_hard: the same with hard_tasks=True (alternate, others "
                "random); maml: MAMLConfig from scratch, one second-order inner step of "
                f"{cfg.maml_inner_lr} ({cfg.maml_test_inner_steps} at test), Adam "
                f"{cfg.maml_meta_lr}, the same episodes and meta-iterations"),
            "budget_note": (
                f"mtl and mtl_hard: {cfg.pre_epochs} pre-training epochs + {cfg.steps} "
                f"meta-iterations; maml: {cfg.steps} meta-iterations and NO pre-training "
                "budget (matched to the meta phase in meta-iterations; the per-arm train_s "
                "shows the compute each arm used; pretrain_finetune's train_s is the shared "
                "pre-training run's)"),
            "budget": {f"{WAYS}way{k}shot": mtl_budget(cfg, k, pre_info[0]["minibatches"])
                       for k in cfg.shots},
            "shots": list(cfg.shots),
            "steps": cfg.steps,
            "pre_epochs": cfg.pre_epochs,
            "pre_training": pre_info,
            "meta_batch": cfg.meta_batch,
            "train_queries": cfg.queries,
            "seeds": list(cfg.seeds),
            "test_episodes": cfg.test_tasks,
            "test_queries": cfg.test_queries,
            "test_seed": cfg.test_seed,
            "results": settings,
            "verdict": verdict,
            "config": {**asdict(cfg), "seeds": list(cfg.seeds), "shots": list(cfg.shots)},
            "threads": cfg.threads,
            **clock.record(),
        }


def _verdict(shots: int, arms: dict[str, Any], diffs: dict[str, Any]) -> str:
    """The best arm of a shot setting and each paired difference (points, 95% over seeds)."""
    best = max(arms, key=lambda k: arms[k]["mean"])
    text = f"{WAYS}-way {shots}-shot: best {best} {100 * arms[best]['mean']:.2f} %"
    return text + "; paired, points [95% t over seeds]: " + paired_list(diffs)


# --- command line ----------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__, QUICK, "mtl_omniglot_cpu.json")
    p.add_argument("--steps", type=int, help="meta-iterations of mtl, mtl_hard and maml")
    p.add_argument("--pre-epochs", type=int, help="pre-training epochs (default 5)")
    args = p.parse_args(argv)
    cfg = configure(Config(threads=args.threads), args, QUICK, ("steps", "pre_epochs"))
    run_logged(run, cfg, output(args, "mtl_omniglot_cpu.json"), workdir=args.workdir)


if __name__ == "__main__":
    main()
