"""Classifier-Baseline and Meta-Baseline with KD and KD+GDA on the bundled Omniglot (28 px).

Per seed, through :func:`metakd.recipes.run` (``classifier_baseline`` / ``meta_baseline``,
their ``paper("omniglot")`` settings with the sizes below):

* two teachers, trained once per seed and shared by every arm: a **stronger** one (Conv-4
  with 64 filters) and a **weaker** one (Conv-2 with 32 filters), each a plain
  Classifier-Baseline on the 136 training characters (15 drawings each; 5 held out for
  validation and selection, as the original's ``train_phase_val``);
* the student, Conv-4 with 32 filters:

  - stage 1 (Classifier-Baseline): ``plain`` (cross-entropy), ``kd_strong`` / ``kd_weak``
    (CE + T²·KL at T = 1, GDA's effective few-shot values) and ``kdgda_strong`` /
    ``kdgda_weak`` (the same + Fisher-Rao 0.1 + Sinkhorn 0.0008, GDA's stage-1 values);
  - stage 2 (Meta-Baseline), every arm from the **plain** stage-1 student (as GDA does):
    ``plain``, ``kd_*`` and ``kdgda_*`` (Sinkhorn 0.1, GDA's stage-2 value, summed over the
    step's query rows as GDA's code does), and ``kdgdamean_weak``: ``kdgda_weak`` with the
    Sinkhorn term averaged over the rows instead (``sinkhorn_reduction="mean"``, the same
    weight 0.1), which tests whether the sum is what costs the weak-teacher arm its accuracy.
    The teacher is the stage-1 teacher with its own centroids and temperature 10 (GDA's
    default "classifier teacher"). Meta-Baseline trains on 1-shot episodes and is tested on
    1- and 5-shot.

``--arms`` runs a subset: arm names, or ``weak`` (``plain`` and the weaker teacher's arms: 8
of the 13 trainings per seed, about 60% of the training time) or ``strong``; ``plain`` is
always run (stage 2 starts from it, and every difference is paired with it), and only the
teachers the arms need are trained.

Every model is scored by cosine nearest-centroid on the same fixed held-out episodes per shot
setting (the 106 test characters, seeded by ``test_seed``): mean accuracy with its Student-t
95% interval over episodes per seed, the mean over seeds with a t-interval over seeds, and
paired differences (per seed over the shared episodes; pooled over seeds).

    .venv/bin/python -m benchmarks.baseline_omniglot            # the full run (~40 min, 1 thread)
    .venv/bin/python -m benchmarks.baseline_omniglot --quick    # a smoke run (1-2 minutes)
    .venv/bin/python -m benchmarks.baseline_omniglot --arms weak --seeds 0 \
        --out benchmarks/results/baseline_omniglot_weak_cpu_seed0.json   # one seed's weak arms
    .venv/bin/python -m benchmarks.baseline_omniglot --merge \
        benchmarks/results/baseline_omniglot_weak_cpu_seed[012].json \
        --out benchmarks/results/baseline_omniglot_weak_cpu.json     # the seeds in one file

The last line of output is one JSON object; without ``--quick`` it is also written to
``--out`` (default ``benchmarks/results/baseline_omniglot_cpu.json``, with ``--arms weak``
``baseline_omniglot_weak_cpu.json``), the log next to it. The JSON states the training
budget of a student (stage-1 images, stage-2 episodes and their images) next to Meta-Baseline's
miniImageNet budget (``budget``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import (
    RESULTS,
    Clock,
    budget,
    configure,
    episodes_seen,
    finish,
    over_seeds,
    paired_list,
    parser,
    run_logged,
    work_folder,
)
from metakd.data import Omniglot, TaskBatch, few_shot
from metakd.engine import evaluate, paired_difference

WAYS = 5
STAGES = ("classifier", "meta")
#: The arms of each stage: ``plain``, ``kd_<teacher>``, ``kdgda_<teacher>`` (the Sinkhorn
#: term summed over the rows, GDA's code) and ``kdgdamean_<teacher>`` (averaged per row).
STAGE_ARMS = {
    "classifier": ("plain", "kd_strong", "kdgda_strong", "kd_weak", "kdgda_weak"),
    "meta": ("plain", "kd_strong", "kdgda_strong", "kd_weak", "kdgda_weak", "kdgdamean_weak"),
}
#: Every arm, in the order of the tables.
ARMS = STAGE_ARMS["meta"]
#: The names ``--arms`` also takes for a set of arms.
ARM_SETS = {"all": ARMS, "weak": ("plain", "kd_weak", "kdgda_weak", "kdgdamean_weak"),
            "strong": ("plain", "kd_strong", "kdgda_strong")}
TEACHERS = ("teacher_strong", "teacher_weak")
#: Paired differences reported within each stage (where both arms ran): (arm, minus arm).
PAIRS = (("kd_strong", "plain"), ("kdgda_strong", "kd_strong"), ("kdgda_strong", "plain"),
         ("kd_weak", "plain"), ("kdgda_weak", "kd_weak"), ("kdgda_weak", "plain"),
         ("kdgdamean_weak", "kdgda_weak"), ("kdgdamean_weak", "kd_weak"),
         ("kdgdamean_weak", "plain"))
#: Meta-Baseline's budget on miniImageNet, 1-shot (distillation spec, sections 3.2-3.3):
#: stage 1, 100 epochs of the 64 base classes' 38,400 images; stage 2, 20 epochs of 200 steps
#: of 4 episodes, each 5 x (1 + 15) images.
PAPER_BUDGET = {"pretraining_epochs": 100, "pretraining_images": 100 * 38_400,
                **episodes_seen(20 * 200 * 4, 5, 1, 15)}
PAPER_BUDGET_SOURCE = (
    "Meta-Baseline, miniImageNet 5-way 1-shot (distillation spec 3.2-3.3): Classifier-Baseline "
    "100 epochs of 38,400 images (64 classes x 600), Meta-Baseline 20 epochs x 200 steps x 4 "
    "episodes of 5 x (1 + 15) images")


@dataclass
class Config:
    """Everything that defines a run (the JSON records it)."""

    student: str = "conv4"
    student_hidden: int = 32
    strong: str = "conv4"
    strong_hidden: int = 64
    weak: str = "conv2"
    weak_hidden: int = 32
    shots: tuple[int, ...] = (1, 5)
    seeds: tuple[int, ...] = (0, 1, 2)
    #: Sized on the shared 2-core CPU (1 thread): a 64-image step of Conv-4/32 took 0.06 s,
    #: Conv-4/64 0.12 s, Conv-2/32 0.045 s; stage 1 is 8 epochs of 31 steps, stage 2 120
    #: steps of 4 episodes (5 x (1 + 10) images each).
    cb_epochs: int = 8
    cb_lr: float = 0.05
    mb_steps: int = 120
    mb_lr: float = 0.005
    mb_queries: int = 10
    meta_batch: int = 4
    test_queries: int = 15
    test_tasks: int = 250
    test_seed: int = 10_000
    threads: int = 1
    #: The arms run (``plain`` always among them; see :func:`select_arms`).
    arms: tuple[str, ...] = ARMS


QUICK = {"cb_epochs": 1, "mb_steps": 8, "seeds": (0,), "test_tasks": 20}


def select_arms(names: Sequence[str]) -> tuple[str, ...]:
    """The arms of ``names`` (arm names or :data:`ARM_SETS` names), ``plain`` included, in
    the order of :data:`ARMS`.

    Example:
        >>> select_arms(["kdgda_weak"]), select_arms(["weak"])[-1]
        (('plain', 'kdgda_weak'), 'kdgdamean_weak')
    """
    chosen = {"plain"}
    for name in names:
        if name in ARM_SETS:
            chosen.update(ARM_SETS[name])
        elif name in ARMS:
            chosen.add(name)
        else:
            raise ValueError(f"unknown arm {name!r}; use {', '.join(ARMS)} or a set: "
                             f"{', '.join(ARM_SETS)}")
    return tuple(a for a in ARMS if a in chosen)


def arm_settings(arm: str) -> tuple[str | None, bool, str]:
    """``(teacher, gda, sinkhorn_reduction)`` of an arm: the teacher ``"strong"``, ``"weak"``
    or ``None`` (``plain``).

    Example:
        >>> arm_settings("plain"), arm_settings("kdgdamean_weak")
        ((None, False, 'sum'), ('weak', True, 'mean'))
    """
    if arm == "plain":
        return None, False, "sum"
    kind, teacher = arm.split("_")
    return teacher, kind.startswith("kdgda"), "mean" if kind == "kdgdamean" else "sum"


def _model_kwargs(hidden: int) -> dict[str, Any]:
    return {"bn_mode": "running", "hidden": hidden}


def cb_config(cfg: Config, seed: int, arch: str, hidden: int, out_dir: str,
              teacher: str | None = None, gda: bool = False, reduction: str = "sum") -> Any:
    """Stage 1 on the bundled Omniglot, with or without a teacher."""
    from metakd.recipes import ClassifierBaselineConfig

    kw: dict[str, Any] = {}
    if teacher is not None:
        kw = dict(teacher=teacher, distill="kd", gda=gda, sinkhorn_reduction=reduction)
    return ClassifierBaselineConfig.paper(
        "omniglot", ways=WAYS, shots=1, arch=arch, model_kwargs=_model_kwargs(hidden),
        rotations=False, epochs=cfg.cb_epochs, milestones=[max(1, cfg.cb_epochs - 2)],
        lr=cfg.cb_lr, fs_every=0, test_tasks=1, seed=seed, out_dir=out_dir, **kw)


def mb_config(cfg: Config, seed: int, pretrained: str, out_dir: str,
              teacher: str | None = None, gda: bool = False, reduction: str = "sum") -> Any:
    """Stage 2 from ``pretrained`` (the plain stage-1 student), with or without a teacher."""
    from metakd.recipes import MetaBaselineConfig

    kw: dict[str, Any] = {}
    if teacher is not None:
        kw = dict(teacher=teacher, distill="kd", gda=gda, sinkhorn_reduction=reduction)
    return MetaBaselineConfig.paper(
        "omniglot", ways=WAYS, shots=1, arch=cfg.student,
        model_kwargs=_model_kwargs(cfg.student_hidden), rotations=False, pretrained=pretrained,
        pretrained_checkpoint="best", steps=cfg.mb_steps, lr=cfg.mb_lr,
        queries=cfg.mb_queries, meta_batch_size=cfg.meta_batch, test_tasks=1, seed=seed,
        out_dir=out_dir, **kw)


def heldout_episodes(cfg: Config, shots: int) -> list[TaskBatch]:
    """The fixed held-out episodes of a shot setting (seeded by ``test_seed`` only)."""
    return list(few_shot(Omniglot(split="test"), WAYS, shots, cfg.test_queries,
                         meta_batch_size=10, num_tasks=cfg.test_tasks, seed=cfg.test_seed,
                         progress=False))


def score(run_dir: str, episodes: list[TaskBatch]) -> Any:
    """A run's selected weights, as a nearest-centroid classifier, on ``episodes``."""
    from metakd.meta import MetaBaseline
    from metakd.recipes import load_run

    r = load_run(run_dir)
    learner = r.learner if r.method == "meta_baseline" else MetaBaseline(
        r.model, learn_temperature=False)
    return evaluate(learner, episodes)


def run(cfg: Config, log: Callable[[str], None] = print,
        workdir: str | os.PathLike[str] | None = None, reuse: bool = False) -> dict[str, Any]:
    """The teachers the arms need, then every arm of both stages for every seed; the
    JSON-ready result.

    With ``reuse``, a run folder of ``workdir`` that already holds ``results.json`` is scored
    again without training (its ``train_s`` is then ``None``).
    """
    from metakd.recipes import run as run_recipe

    torch.set_num_threads(cfg.threads)
    clock = Clock()
    arms = select_arms(cfg.arms)
    stage_arms = {s: [a for a in STAGE_ARMS[s] if a in arms] for s in STAGES}
    needed = {arm_settings(a)[0] for a in arms}
    teachers = [t for t in TEACHERS if t.split("_")[1] in needed]
    with work_folder(workdir, "baseline_omniglot_") as root:
        episodes = {k: heldout_episodes(cfg, k) for k in cfg.shots}
        log(f"{len(cfg.seeds)} seeds; stage 1: {cfg.cb_epochs} epochs; stage 2: {cfg.mb_steps} "
            f"steps of {cfg.meta_batch} 1-shot episodes; test: {cfg.test_tasks} fixed episodes "
            f"per shot setting {list(cfg.shots)} (seed {cfg.test_seed}); arms {list(arms)}")
        names = [("teachers", t) for t in teachers] + [(s, a) for s in STAGES
                                                       for a in stage_arms[s]]
        per_seed: dict[tuple[int, str, str], list[dict[str, Any]]] = {
            (k, s, a): [] for k in cfg.shots for s, a in names}
        values: dict[tuple[int, str, str, int], list[float]] = {}

        def train(cfg_: Any) -> tuple[str, float | None, int]:
            done = Path(cfg_.out_dir) / "results.json"
            if reuse and done.is_file():
                return cfg_.out_dir, None, int(json.loads(done.read_text())["steps"])
            t0 = time.perf_counter()
            res = run_recipe(cfg_, progress=False, resume=False)
            return cfg_.out_dir, time.perf_counter() - t0, int(res["steps"])

        def record(stage: str, arm: str, seed: int, out: str, secs: float | None,
                   steps: int) -> None:
            for k in cfg.shots:
                res = score(out, episodes[k])
                values[(k, stage, arm, seed)] = list(res.values or ())
                per_seed[(k, stage, arm)].append({
                    "seed": seed, **res.summary(), "steps": steps,
                    "train_s": None if secs is None else round(secs, 1)})
                took = "reused" if secs is None else f"train {secs:.0f} s"
                log(f"{k}-shot seed {seed} {stage:10s} {arm:14s} {res} ({took})")

        for seed in cfg.seeds:
            def d(name: str, seed: int = seed) -> str:
                return str(root / f"{name}_s{seed}")

            dirs = {}
            for tname in teachers:
                arch, hidden = ((cfg.strong, cfg.strong_hidden) if tname == "teacher_strong"
                                else (cfg.weak, cfg.weak_hidden))
                out, secs, steps = train(cb_config(cfg, seed, arch, hidden, d(tname)))
                dirs[tname.split("_")[1]] = out
                record("teachers", tname, seed, out, secs, steps)
            for arm in stage_arms["classifier"]:
                teacher, gda, reduction = arm_settings(arm)
                out, secs, steps = train(cb_config(
                    cfg, seed, cfg.student, cfg.student_hidden, d(f"cb_{arm}"),
                    None if teacher is None else dirs[teacher], gda, reduction))
                record("classifier", arm, seed, out, secs, steps)
            for arm in stage_arms["meta"]:
                teacher, gda, reduction = arm_settings(arm)
                out, secs, steps = train(mb_config(
                    cfg, seed, d("cb_plain"), d(f"mb_{arm}"),
                    None if teacher is None else dirs[teacher], gda, reduction))
                record("meta", arm, seed, out, secs, steps)

        diff_rows: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for k in cfg.shots:
            for sa, a, sb, b in _pairs(stage_arms):
                diff_rows[(k, f"{sa}:{a}-{sb}:{b}")] = [
                    {"seed": seed, **paired_difference(values[(k, sa, a, seed)],
                                                       values[(k, sb, b, seed)]).summary()}
                    for seed in cfg.seeds]
        settings, verdict = summarise(cfg.shots, per_seed, diff_rows)
        for line in verdict:
            log(line)
        cb_steps = per_seed[(cfg.shots[0], "classifier", "plain")][0]["steps"]
        return {
            "benchmark": "baseline_omniglot",
            "setting": (
                "bundled Omniglot at 28 px, no rotations: 136 training characters (15 drawings "
                "to train, 5 held out for validation and selection), 106 test characters; "
                f"student {cfg.student}/{cfg.student_hidden}, stronger teacher "
                f"{cfg.strong}/{cfg.strong_hidden}, weaker teacher {cfg.weak}/{cfg.weak_hidden}"
                ", running batch norm; every model scored by cosine nearest-centroid on the "
                "same fixed held-out episodes"),
            "arms_note": (
                "classifier: Classifier-Baseline (SGD, momentum 0.9, wd 5e-4, step decay); kd: "
                "CE + T^2 KL at T = 1 (weight 1); kdgda: + Fisher-Rao 0.1 + Sinkhorn (stage 1: "
                "0.0008, stage 2: 0.1) summed over the batch's rows, GDA's effective values "
                "with metakd's numerical fixes; kdgdamean: kdgda with the Sinkhorn term "
                "averaged over the rows (sinkhorn_reduction='mean', same weights); "
                "meta: Meta-Baseline from the plain stage-1 student (best validation weights), "
                "teacher = the stage-1 teacher with its own centroids and temperature 10, "
                "trained on 1-shot episodes"),
            "arms": list(arms),
            "shots": list(cfg.shots),
            "seeds": list(cfg.seeds),
            "test_episodes": cfg.test_tasks,
            "test_queries": cfg.test_queries,
            "test_seed": cfg.test_seed,
            "budget": student_budget(cfg, cb_steps),
            "results": settings,
            "verdict": verdict,
            "config": {**asdict(cfg), "seeds": list(cfg.seeds), "shots": list(cfg.shots),
                       "arms": list(arms)},
            **clock.record(),
        }


def student_budget(cfg: Config, cb_steps: int) -> dict[str, Any]:
    """The training budget of a Meta-Baseline student next to the paper's (:data:`PAPER_BUDGET`).

    Stage 1 (the plain student every stage-2 arm starts from; every stage-1 arm and teacher
    has the same): ``cb_steps`` minibatches of the recipe's batch size; stage 2: ``mb_steps``
    steps of ``meta_batch`` 1-shot episodes of 5 x (1 + ``mb_queries``) images.

    Example:
        >>> b = student_budget(Config(), 248)
        >>> b["run"]["pretraining_images"], b["run"]["tasks"], b["run"]["task_images"]
        (15872, 480, 26400)
    """
    batch = cb_config(cfg, 0, cfg.student, cfg.student_hidden, "unused").batch_size
    run = {"pretraining_epochs": cfg.cb_epochs, "pretraining_steps": cb_steps,
           "pretraining_batch": batch, "pretraining_images": cb_steps * batch,
           "steps": cfg.mb_steps, "episodes_per_step": cfg.meta_batch,
           **episodes_seen(cfg.mb_steps * cfg.meta_batch, WAYS, 1, cfg.mb_queries)}
    out = budget(run, PAPER_BUDGET, PAPER_BUDGET_SOURCE)
    out["note"] = ("one student: tasks are stage-2 episodes, images the stage-1 minibatches' "
                   "plus the stage-2 episodes'; each teacher and stage-1 arm had the same "
                   "stage-1 budget")
    return out


def _pairs(stage_arms: Mapping[str, Sequence[str]]) -> list[tuple[str, str, str, str]]:
    """The paired differences of the arms that ran: within each stage, then stage 2's plain
    arm minus stage 1's."""
    pairs = [(s, a, s, b) for s in STAGES for a, b in PAIRS
             if a in stage_arms[s] and b in stage_arms[s]]
    pairs.append(("meta", "plain", "classifier", "plain"))
    return pairs


def summarise(shots: Sequence[int], per_seed: dict[tuple[int, str, str], list[dict[str, Any]]],
              diff_rows: dict[tuple[int, str], list[dict[str, Any]]]
              ) -> tuple[dict[str, Any], list[str]]:
    """Per shot setting: every arm (those of ``per_seed``, in its order) and paired
    difference, per seed and over seeds."""
    settings: dict[str, Any] = {}
    verdict: list[str] = []
    for k in shots:
        block: dict[str, Any] = {}
        for stage in ("teachers", *STAGES):
            arms = [a for kk, s, a in per_seed if kk == k and s == stage]
            block[stage] = {a: over_seeds(per_seed[(k, stage, a)]) for a in arms}
        diffs = {name: over_seeds(rows) for (kk, name), rows in diff_rows.items() if kk == k}
        block["paired_differences"] = diffs
        settings[f"{WAYS}way{k}shot"] = block
        verdict.append(_verdict(k, diffs))
    return settings, verdict


def _arms_of(result: Mapping[str, Any]) -> list[str]:
    """The arms of a result (a file written before ``--arms`` existed ran stage 1's five)."""
    return list(result.get("arms") or result["config"].get("arms") or STAGE_ARMS["classifier"])


def merge(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs of the same config and arms on different seeds (run in parallel).

    Raises:
        ValueError: the parts ran different arms, shot settings or budgets, or share a seed.
    """
    first = parts[0]
    same = ("cb_epochs", "mb_steps", "mb_queries", "meta_batch", "shots", "test_tasks",
            "test_seed")
    for part in parts[1:]:
        if _arms_of(part) != _arms_of(first):
            raise ValueError(f"cannot merge runs of different arms: {_arms_of(first)} and "
                             f"{_arms_of(part)}")
        differ = [k for k in same if part["config"].get(k) != first["config"].get(k)]
        if differ:
            raise ValueError(f"cannot merge runs whose {', '.join(differ)} differ")
    seeds = sorted(s for p in parts for s in p["seeds"])
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the runs share seeds: {seeds}")
    shots = first["shots"]
    per_seed: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    diff_rows: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for part in sorted(parts, key=lambda r: r["seeds"][0]):
        for k in shots:
            block = part["results"][f"{WAYS}way{k}shot"]
            for stage in ("teachers", *STAGES):
                for arm, entry in block[stage].items():
                    per_seed.setdefault((k, stage, arm), []).extend(entry["per_seed"])
            for name, entry in block["paired_differences"].items():
                diff_rows.setdefault((k, name), []).extend(entry["per_seed"])
    settings, verdict = summarise(shots, per_seed, diff_rows)
    return {**first, "seeds": seeds, "results": settings, "verdict": verdict,
            "config": {**first["config"], "seeds": seeds},
            "merged_from": [{"seeds": p["seeds"], "wall_s": p["wall_s"],
                             "load_average": p["load_average"]} for p in parts],
            "wall_s": max(p["wall_s"] for p in parts)}


def default_out(arms: Sequence[str]) -> str:
    """The default result file of a run of ``arms``: ``baseline_omniglot_cpu.json`` for every
    arm, ``baseline_omniglot_<set>_cpu.json`` for a set of :data:`ARM_SETS`, else ``None``
    (``--out`` is then needed, so a subset never replaces the full result).

    Example:
        >>> default_out(ARMS), default_out(select_arms(["weak"]))
        ('baseline_omniglot_cpu.json', 'baseline_omniglot_weak_cpu.json')
    """
    for name, members in ARM_SETS.items():
        if tuple(arms) == select_arms(members):
            return "baseline_omniglot_cpu.json" if name == "all" else \
                f"baseline_omniglot_{name}_cpu.json"
    raise ValueError(f"arms {list(arms)} are not one of the sets {', '.join(ARM_SETS)}: "
                     "give --out")


def _verdict(shots: int, diffs: dict[str, Any]) -> str:
    """Each paired difference of a shot setting, in points with its 95% interval over seeds."""
    return (f"{WAYS}-way {shots}-shot, paired (points, 95% t over seeds): "
            + paired_list(diffs, "; "))


def table(result: dict[str, Any]) -> str:
    """A Markdown table of the mean accuracy (and 95% interval over seeds) of every arm."""
    shots = result["shots"]
    lines = ["| stage | arm | " + " | ".join(f"{WAYS}-way {k}-shot" for k in shots) + " |",
             "|---|---|" + "---|" * len(shots)]
    first = result["results"][f"{WAYS}way{shots[0]}shot"]
    for stage in ("teachers", *STAGES):
        for arm in first[stage]:
            cells = []
            for k in shots:
                e = result["results"][f"{WAYS}way{k}shot"][stage][arm]
                ci = "" if e["ci95"] is None else f" ± {100 * e['ci95']:.2f}"
                cells.append(f"{100 * e['mean']:.2f}{ci}")
            lines.append(f"| {stage} | {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__, QUICK, "baseline_omniglot_cpu.json")
    p.add_argument("--arms", nargs="+", metavar="ARM",
                   help=f"arms to run (default all; plain is always run): {' '.join(ARMS)}, "
                        f"or a set: {' '.join(ARM_SETS)}")
    p.add_argument("--cb-epochs", type=int, help="Classifier-Baseline epochs (default 8)")
    p.add_argument("--mb-steps", type=int, help="Meta-Baseline steps (default 120)")
    p.add_argument("--reuse", action="store_true",
                   help="score finished run folders of --workdir again instead of training")
    p.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                   help="merge result files of single-seed runs into --out (default: the "
                        "arms' file in benchmarks/results), and stop")
    args = p.parse_args(argv)
    if args.merge:
        result = merge([json.loads(f.read_text()) for f in args.merge])
        print(table(result))
        for line in result["verdict"]:
            print(line)
        finish(result, args.out or RESULTS / default_out(_arms_of(result)), print)
        return
    cfg = configure(Config(threads=args.threads), args, QUICK, ("cb_epochs", "mb_steps"))
    if args.arms:
        try:
            cfg = replace(cfg, arms=select_arms(args.arms))
        except ValueError as e:
            p.error(str(e))
    out_path = args.out
    if out_path is None and not args.quick:  # output()'s rule, with the arms' default file
        try:
            out_path = RESULTS / default_out(cfg.arms)
        except ValueError as e:
            p.error(str(e))
    run_logged(run, cfg, out_path, summary=table, workdir=args.workdir, reuse=args.reuse)


if __name__ == "__main__":
    main()
