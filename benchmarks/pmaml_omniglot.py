"""PMAML on the bundled Omniglot, 5-way 1-shot: do MAML students gain from a MAML teacher?

Two teachers are meta-trained once (seed 0) with plain MAML (:class:`metakd.recipes.MAMLConfig`
run through :func:`metakd.recipes.run`): a Conv-4 and a narrow ResNet-10, both with PMAML's
settings (one second-order inner step of 0.4 on the mean support cross-entropy, one step at
test, Adam 1e-3, meta-batch 4, rotations as the recipe sets them). Then Conv-2 and Conv-1
students are meta-trained with :class:`metakd.recipes.PMAMLConfig` (``PMAMLConfig.paper``:
Adam 1e-3 with weight decay 5e-4, KD T = 10, λ = 0.9, element-mean KL) in these arms:

* ``no_kd``: ``schedule=""`` (an empty list of meta-iterations), so the distillation term
  never applies and the teacher is never loaded: the same code path, optimiser, weight decay,
  initial weights and episodes as the KD arms, with the plain MAML query cross-entropy;
* ``every``: KD at every meta-iteration, the teacher unadapted (the official ``pmaml_every``);
* ``every_adapted``: KD at every meta-iteration, the teacher adapted on each support set
  (``teacher_adapt=True``, its own inner rate and step);
* ``last``: KD at the final meta-iteration only (the official ``pmaml_last``: MAML plus one
  distillation step).

The Conv-4 teacher serves every KD arm of both students; the ResNet teacher the ``every``
arms of Conv-2. Every arm of a seed starts from the same initial weights and sees the same
training episodes, for the same number of meta-iterations and the same meta-batch. All
models (teachers too) are scored after their last meta-iteration (there is no validation split
in the bundled copy, so there is no selection) on one fixed set of held-out episodes
(the 3 held-out alphabets, seeded by ``test_seed``, the same for every arm and seed): mean
accuracy with its Student-t 95% interval over episodes, per seed; then the mean over seeds
with a t-interval over seeds, and each KD arm's paired difference from ``no_kd`` (same seed:
per seed a paired t-interval over the shared test episodes; pooled, a t-interval over seeds).

    .venv/bin/python -m benchmarks.pmaml_omniglot            # the full run (26-35 min, 1 thread)
    .venv/bin/python -m benchmarks.pmaml_omniglot --quick    # a smoke run (a few minutes)
    .venv/bin/python -m benchmarks.pmaml_omniglot --measure  # time one meta-iteration of each

At the paper's task counts (``--paper``: teachers on 60,000 tasks with 15 training queries,
students on 20,000) the run takes hours on a CPU; run it in pieces that resume, in a kept
``--workdir`` W::

    python -m benchmarks.pmaml_omniglot --paper --workdir W --stage teachers --out t.json
    python -m benchmarks.pmaml_omniglot --paper --workdir W --seeds 0 --out s0.json  # and 1, 2
    python -m benchmarks.pmaml_omniglot --paper --merge s0.json s1.json s2.json \
        --out benchmarks/results/pmaml_omniglot_cpu_paper.json

The last line of output is one JSON object; it is also written to ``--out`` (default
``benchmarks/results/pmaml_omniglot_cpu.json``, with ``--quick``
``..._cpu_quick.json``), the log next to it (``.log``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import (
    RESULTS,
    Clock,
    configure,
    finish,
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
ROTATIONS = (0, 90, 180, 270)
#: The student arms: the PMAMLConfig fields each one sets.
MODES: dict[str, dict[str, Any]] = {
    "no_kd": {"schedule": "", "teacher_adapt": False},
    "every": {"schedule": "every", "teacher_adapt": False},
    "every_adapted": {"schedule": "every", "teacher_adapt": True},
    "last": {"schedule": "last", "teacher_adapt": False},
    "inner_kd": {"schedule": "every", "teacher_adapt": False, "inner_kd": "every"},
}


@dataclass
class Config:
    """Everything that defines a run (the JSON records it)."""

    shots: int = 1
    students: tuple[str, ...] = ("conv2", "conv1")
    student_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Arms of every student with the Conv-4 teacher.
    modes: tuple[str, ...] = ("no_kd", "every", "every_adapted", "last")
    conv_teacher: str = "conv4"
    conv_teacher_kwargs: dict[str, Any] = field(default_factory=dict)
    resnet_teacher: str = "resnet10"
    resnet_teacher_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"width": 16, "bn_mode": "transductive"})
    #: Students and arms distilled from the ResNet teacher too.
    resnet_students: tuple[str, ...] = ("conv2",)
    resnet_modes: tuple[str, ...] = ("every", "every_adapted")
    #: Sized on the shared 2-core CPU with ``--measure`` (35 min estimated; 26 min measured).
    steps: int = 250
    teacher_steps: int = 1000
    meta_batch: int = 4
    #: Training queries per class: 1 as the MAML reference on Omniglot (PMAML uses 15); at
    #: equal CPU time, 260 meta-iterations with 1 query gave a Conv-2 (no KD) 52 % held-out
    #: against 44 % for 113 with 5.
    queries: int = 1
    #: The teachers' training queries per class (``None``: ``queries``); the original's 15.
    teacher_queries: int | None = None
    test_queries: int = 15
    test_tasks: int = 100
    test_seed: int = 10_000
    teacher_seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    inner_lr: float = 0.4
    meta_lr: float = 1e-3
    #: ``func``: on this 2-core CPU it trained these small conv nets 1.5x and tested them 3x
    #: faster than ``vmap``; the recipes' default ``auto`` picks func for these batches too.
    backend: str = "func"
    threads: int = 1


QUICK = {"steps": 20, "teacher_steps": 60, "seeds": (0,), "test_tasks": 40}
#: The paper's task counts: teachers on 60,000 tasks with the original's 15 training queries,
#: students on 20,000 tasks, every arm (inner-loop KD too), Conv-4 and ResNet-12 teachers.
PAPER = {"teacher_steps": 15_000, "steps": 5_000, "meta_batch": 4, "teacher_queries": 15,
         "queries": 15, "test_tasks": 400,
         "modes": ("no_kd", "every", "every_adapted", "last", "inner_kd"),
         "resnet_teacher": "resnet12", "resnet_teacher_kwargs": {},
         "resnet_students": ("conv2", "conv1"), "resnet_modes": ("every",)}


@dataclass(frozen=True)
class Arm:
    student: str
    mode: str
    teacher: str | None  # None: no_kd (no teacher is used)

    @property
    def name(self) -> str:
        return f"{self.student}/{self.mode}" if self.teacher is None \
            else f"{self.student}/{self.mode}/{self.teacher}"


def arms_of(cfg: Config) -> list[Arm]:
    """The student arms of ``cfg`` (the ``no_kd`` arm once per student, teacher-free)."""
    for m in (*cfg.modes, *cfg.resnet_modes):
        if m not in MODES:
            raise ValueError(f"unknown arm {m!r}; choose from {sorted(MODES)}")
    out: list[Arm] = []
    for s in cfg.students:
        out += [Arm(s, m, None if m == "no_kd" else cfg.conv_teacher) for m in cfg.modes]
    for s in cfg.resnet_students:
        out += [Arm(s, m, cfg.resnet_teacher) for m in cfg.resnet_modes if m != "no_kd"]
        if s not in cfg.students and "no_kd" in cfg.resnet_modes:
            out.append(Arm(s, "no_kd", None))
    return out


# --- configs of the library's recipes --------------------------------------------------------
def teacher_config(cfg: Config, model: str, kwargs: dict[str, Any], out_dir: str) -> Any:
    """The MAML run of a teacher: PMAML's inner loop, Adam 1e-3, the benchmark's episodes."""
    from metakd.recipes import MAMLConfig

    return MAMLConfig(
        dataset="omniglot", root=None, ways=WAYS, shots=cfg.shots,
        queries=cfg.teacher_queries or cfg.queries,
        test_queries=cfg.test_queries, rotations=True, model=model, model_kwargs=dict(kwargs),
        inner_lr=cfg.inner_lr, inner_steps=1, test_inner_steps=1, first_order=False,
        inner_loss_reduction="mean", meta_lr=cfg.meta_lr, meta_batch_size=cfg.meta_batch,
        steps=cfg.teacher_steps, val_every=10**9, test_tasks=cfg.meta_batch,
        backend=cfg.backend, compile="off", seed=cfg.teacher_seed, out_dir=out_dir,
    )


def student_config(cfg: Config, arm: Arm, seed: int, teacher_dir: str, out_dir: str) -> Any:
    """The PMAML run of an arm: ``PMAMLConfig.paper`` with the benchmark's budget."""
    from metakd.recipes import PMAMLConfig

    return PMAMLConfig.paper(
        "omniglot", ways=WAYS, shots=cfg.shots, model=arm.student,
        model_kwargs=dict(cfg.student_kwargs), queries=cfg.queries,
        test_queries=cfg.test_queries, meta_lr=cfg.meta_lr, inner_lr=cfg.inner_lr,
        meta_batch_size=cfg.meta_batch, steps=cfg.steps, val_every=10**9,
        test_tasks=cfg.meta_batch, backend=cfg.backend, seed=seed,
        teacher=teacher_dir, out_dir=out_dir, **MODES[arm.mode],
    )


# --- test ------------------------------------------------------------------------------------
def heldout_episodes(cfg: Config) -> list[TaskBatch]:
    """The fixed held-out episodes every model is scored on (seeded by ``test_seed`` only)."""
    test = Omniglot(split="test", rotations=ROTATIONS)
    return list(few_shot(test, WAYS, cfg.shots, cfg.test_queries,
                         meta_batch_size=cfg.meta_batch,
                         num_tasks=cfg.test_tasks, seed=cfg.test_seed, progress=False))


def score(run_dir: str, episodes: list[TaskBatch]) -> tuple[Any, list[float]]:
    """A run folder's last weights on ``episodes``: its EvalResult and per-episode accuracies."""
    from metakd.recipes import load_run

    learner = load_run(run_dir, checkpoint="last").learner
    result = evaluate(learner, episodes)
    return result, list(result.values or ())


def _params(model: str, kwargs: dict[str, Any]) -> int:
    from metakd.nn import create

    net = create(model, num_classes=WAYS, in_channels=1, **kwargs)
    return sum(p.numel() for p in net.parameters())


def num_params(run_dir: str) -> int:
    from metakd.recipes import load_run

    return sum(p.numel() for p in load_run(run_dir, checkpoint="last").model.parameters())


# --- the benchmark ---------------------------------------------------------------------------
def run(cfg: Config, log: Callable[[str], None] = print,
        workdir: str | os.PathLike[str] | None = None,
        teachers_only: bool = False) -> dict[str, Any]:
    """Train the teachers, then every arm for every seed; the benchmark's JSON-ready result.

    Run folders go to ``workdir`` (kept) or to a temporary folder (removed at the end). In a
    kept ``workdir`` every run resumes where it stopped and a finished one is only scored
    again, so a long benchmark runs in pieces: the teachers first (``teachers_only``), then
    each seed in its own process, merged with :func:`merge`.
    """
    from metakd.recipes import run as run_recipe

    torch.set_num_threads(cfg.threads)
    arms = arms_of(cfg)
    clock = Clock()
    keep = workdir is not None
    with work_folder(workdir, "pmaml_omniglot_") as root:
        episodes = heldout_episodes(cfg)
        log(f"{len(arms)} arms x {len(cfg.seeds)} seeds, {cfg.steps} meta-iterations of "
            f"{cfg.meta_batch} tasks ({cfg.queries} queries/class); teachers "
            f"{cfg.teacher_steps}; test: {cfg.test_tasks} fixed episodes "
            f"(seed {cfg.test_seed}, {cfg.test_queries} queries/class)")

        teachers: dict[str, dict[str, Any]] = {}
        dirs: dict[str, str] = {}
        needed = {a.teacher for a in arms if a.teacher is not None}
        specs = [(cfg.conv_teacher, cfg.conv_teacher_kwargs),
                 (cfg.resnet_teacher, cfg.resnet_teacher_kwargs)]
        for model, kwargs in specs:
            if model not in needed:
                continue
            out = str(root / f"teacher_{model}")
            t0 = time.perf_counter()
            run_recipe(teacher_config(cfg, model, kwargs, out), progress=False, resume=keep)
            secs = time.perf_counter() - t0
            res, _ = score(out, episodes)
            dirs[model] = out
            teachers[model] = {"model": model, "kwargs": kwargs, "params": num_params(out),
                               "seed": cfg.teacher_seed, "steps": cfg.teacher_steps,
                               "train_s": round(secs, 1), "accuracy": res.mean,
                               "ci95": res.ci95, "episodes": res.episodes}
            log(f"teacher {model} {kwargs or ''}: {cfg.teacher_steps} meta-iterations in "
                f"{secs:.0f} s, held-out {res}")
        any_teacher = next(iter(dirs.values()), None)
        if teachers_only:
            return {"benchmark": "pmaml_omniglot_teachers", "teachers": teachers,
                    "config": {**asdict(cfg), "seeds": list(cfg.seeds)},
                    **clock.record()}

        per_seed: dict[str, list[dict[str, Any]]] = {a.name: [] for a in arms}
        per_episode: dict[tuple[str, int], list[float]] = {}
        for seed in cfg.seeds:
            for arm in arms:
                teacher_dir = dirs[arm.teacher] if arm.teacher else any_teacher
                if teacher_dir is None:  # only no_kd arms: PMAML still wants a MAML folder
                    raise ValueError("a no_kd-only run still needs a teacher run folder")
                out = str(root / f"{arm.name.replace('/', '_')}_s{seed}")
                t0 = time.perf_counter()
                trained = run_recipe(student_config(cfg, arm, seed, teacher_dir, out),
                                     progress=False, resume=keep)
                secs = time.perf_counter() - t0
                res, accs = score(out, episodes)
                per_episode[(arm.name, seed)] = accs
                per_seed[arm.name].append({"seed": seed, "accuracy": res.mean, "ci95": res.ci95,
                                           "episodes": res.episodes, "train_s": round(secs, 1),
                                           "steps": trained["steps"]})
                log(f"seed {seed} {arm.name:28s} {res} ({secs:.0f} s)")

        arms_out: dict[str, Any] = {}
        for arm in arms:
            runs = per_seed[arm.name]
            entry: dict[str, Any] = {
                "student": arm.student, "teacher": arm.teacher, "mode": arm.mode,
                "schedule": MODES[arm.mode]["schedule"] or "[] (never)",
                "teacher_adapt": MODES[arm.mode]["teacher_adapt"],
                **over_seeds(runs, "accuracy"),
            }
            base = f"{arm.student}/no_kd"
            if arm.mode != "no_kd" and base in per_seed:
                diffs = []
                for seed in cfg.seeds:
                    d = paired_difference(per_episode[(arm.name, seed)],
                                          per_episode[(base, seed)])
                    diffs.append({"seed": seed, **d.summary()})
                entry["minus_no_kd"] = over_seeds(diffs)
            arms_out[arm.name] = entry
        verdict = _verdict(arms_out, cfg.students + cfg.resnet_students)
        for line in verdict:
            log(line)
        return {
            "benchmark": "pmaml_omniglot",
            "setting": (
                f"bundled Omniglot (5 background alphabets train, 3 held-out test, x4 "
                f"rotations), {WAYS}-way {cfg.shots}-shot, {cfg.queries} training queries per "
                f"class (teachers {cfg.teacher_queries or cfg.queries}); MAML inner loop: 1 second-order step of {cfg.inner_lr} on the mean "
                "support CE, 1 step at test; teachers: plain MAML (Adam "
                f"{cfg.meta_lr}) trained once (seed {cfg.teacher_seed}); students: "
                "PMAMLConfig.paper (Adam, weight decay 5e-4, KD T=10, lambda=0.9, element-mean "
                "KL, the lr milestones beyond the run) for the same meta-iterations and "
                "meta-batch, from the same per-seed weights and episodes; every model scored "
                "on its last weights on the same fixed held-out episodes"),
            "steps": cfg.steps,
            "teacher_steps": cfg.teacher_steps,
            "meta_batch": cfg.meta_batch,
            "train_queries": cfg.queries,
            "seeds": list(cfg.seeds),
            "test_episodes": cfg.test_tasks,
            "test_queries": cfg.test_queries,
            "test_seed": cfg.test_seed,
            "teachers": teachers,
            "students": {s: {"params": _params(s, cfg.student_kwargs)}
                         for s in dict.fromkeys((*cfg.students, *cfg.resnet_students))},
            "arms_note": (
                "no_kd: PMAMLConfig schedule='' (an empty list of meta-iterations): the KD term "
                "never applies and the teacher is never loaded, with the same optimiser "
                "(Adam, weight decay 5e-4), weights and episodes as the KD arms; every: KD at "
                "every meta-iteration, teacher unadapted (official pmaml_every); "
                "every_adapted: the teacher adapted on each support set first; last: KD at "
                "the final meta-iteration only (official pmaml_last); inner_kd: every, with the "
                "KD term in the inner loop's support loss at every inner step too"),
            "tasks": {"teacher": cfg.teacher_steps * cfg.meta_batch,
                      "student": cfg.steps * cfg.meta_batch},
            "arms": arms_out,
            "verdict": verdict,
            "config": {**asdict(cfg), "seeds": list(cfg.seeds)},
            "threads": cfg.threads,
            **clock.record(),
        }


def merge(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs of the same config on different seeds (separate processes).

    Per arm, the per-seed rows are joined and the mean and interval over seeds computed again,
    as are the paired differences from ``no_kd`` (their per-seed rows are kept in each part).
    """
    parts = sorted(parts, key=lambda r: r["seeds"][0])
    first = parts[0]
    seeds = sorted(x for p in parts for x in p["seeds"])
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the parts repeat seeds: {seeds}")
    arms: dict[str, Any] = {}
    for name, entry in first["arms"].items():
        rows = [r for p in parts for r in p["arms"][name]["per_seed"]]
        merged = {**entry, **over_seeds(rows, "accuracy")}
        if "minus_no_kd" in entry:
            diffs = [d for p in parts for d in p["arms"][name]["minus_no_kd"]["per_seed"]]
            merged["minus_no_kd"] = over_seeds(diffs)
        arms[name] = merged
    verdict = _verdict(arms, [*first["config"]["students"], *first["config"]["resnet_students"]])
    return {**first, "seeds": seeds, "arms": arms, "verdict": verdict,
            "config": {**first["config"], "seeds": seeds},
            "merged_from": [{"seeds": p["seeds"], "wall_s": p["wall_s"],
                             "load_average": p["load_average"]} for p in parts],
            "wall_s": max(p["wall_s"] for p in parts)}


def _verdict(arms: dict[str, Any], students: Sequence[str]) -> list[str]:
    """Per student: the best arm, and each KD arm against ``no_kd`` (points, interval)."""
    lines = []
    for s in dict.fromkeys(students):
        own = {k: v for k, v in arms.items() if v["student"] == s}
        if not own:
            continue
        best = max(own, key=lambda k: own[k]["mean"])
        text = f"{s}: best {best} {100 * own[best]['mean']:.2f} %"
        diffs = {k: v["minus_no_kd"] for k, v in own.items() if v.get("minus_no_kd")}
        if diffs:
            text += "; KD minus no_kd, points [95% t over seeds]: " + paired_list(diffs)
        lines.append(text)
    return lines


# --- timing one meta-iteration of each configuration -----------------------------------------
def measure(cfg: Config, log: Callable[[str], None] = print, n: int = 2) -> dict[str, Any]:
    """Seconds per meta-iteration of each teacher and arm (untrained teachers, same shapes),
    the test's seconds per episode, and the full run's estimated wall time."""
    from metakd.recipes import run as run_recipe

    torch.set_num_threads(cfg.threads)
    arms = arms_of(cfg)
    tiny = replace(cfg, teacher_steps=1, steps=n + 1)
    per_step: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="pmaml_measure_") as root:
        dirs = {}
        for model, kwargs in ((cfg.conv_teacher, cfg.conv_teacher_kwargs),
                              (cfg.resnet_teacher, cfg.resnet_teacher_kwargs)):
            dirs[model] = f"{root}/t_{model}"
            run_recipe(teacher_config(tiny, model, kwargs, dirs[model]), progress=False,
                       resume=False)
            per_step[f"teacher/{model}"] = _step_seconds(
                teacher_config(cfg, model, kwargs, ""), n)
        for arm in arms:
            sc = student_config(cfg, arm, 0, dirs[arm.teacher or cfg.conv_teacher], "")
            per_step[arm.name] = _step_seconds(sc, n)
        for s in cfg.students:  # a student run folder of each model, for the test's timing
            dirs[s] = f"{root}/s_{s}"
            run_recipe(student_config(replace(cfg, steps=1), Arm(s, "no_kd", None), 0,
                                      dirs[cfg.conv_teacher], dirs[s]),
                       progress=False, resume=False)
        episodes = heldout_episodes(replace(cfg, test_tasks=2 * cfg.meta_batch))
        t_eval: dict[str, float] = {}
        for model in (*cfg.students, cfg.conv_teacher, cfg.resnet_teacher):
            t0 = time.perf_counter()
            score(dirs[model], episodes)
            t_eval[model] = (time.perf_counter() - t0) / (2 * cfg.meta_batch)
    seeds = len(cfg.seeds)
    est_teachers = cfg.teacher_steps * (per_step[f"teacher/{cfg.conv_teacher}"]
                                        + per_step[f"teacher/{cfg.resnet_teacher}"])
    est_students = seeds * cfg.steps * sum(per_step[a.name] for a in arms)
    est_test = cfg.test_tasks * (seeds * sum(t_eval[a.student] for a in arms)
                                 + t_eval[cfg.conv_teacher] + t_eval[cfg.resnet_teacher])
    out = {"benchmark": "pmaml_omniglot_measure", "seconds_per_meta_iteration": per_step,
           "test_seconds_per_episode": t_eval,
           "estimate_s": {"teachers": round(est_teachers), "students": round(est_students),
                          "test": round(est_test),
                          "total": round(est_teachers + est_students + est_test)},
           "config": {**asdict(cfg), "seeds": list(cfg.seeds)},
           "load_average": [round(v, 2) for v in os.getloadavg()]}
    for k, v in per_step.items():
        log(f"{k:32s} {v:.3f} s / meta-iteration")
    log(f"estimate: {out['estimate_s']}")
    return out


def _step_seconds(run_cfg: Any, n: int) -> float:
    """Seconds per meta-iteration of a recipe config (``n`` timed after one warm-up)."""
    from metakd.recipes.registry import method_of

    parts = method_of(run_cfg).build(run_cfg)
    learner, opt = parts.learner, parts.optimizer
    it = iter(parts.train_data)
    learner.train()
    t0 = 0.0
    for i in range(n + 1):
        if i == 1:
            t0 = time.perf_counter()
        loss, _ = learner.meta_loss(next(it), step=i)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / n


# --- command line ----------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__, QUICK, "pmaml_omniglot_cpu.json", shots=False)
    p.add_argument("--paper", action="store_true",
                   help=f"the paper's task counts (teachers 60,000 tasks, students 20,000): "
                        f"{PAPER}; run it in pieces with --workdir, --stage and --seeds")
    p.add_argument("--stage", choices=("all", "teachers"), default="all",
                   help="teachers: train (or resume) and score the teachers only")
    p.add_argument("--shot", type=int, help="K of the episodes (default 1)")
    p.add_argument("--measure", action="store_true",
                   help="time one meta-iteration of each teacher and arm (and the test), "
                        "estimate the run's wall time, and stop")
    p.add_argument("--steps", type=int, help="meta-iterations of every student arm")
    p.add_argument("--teacher-steps", type=int, help="meta-iterations of each teacher")
    p.add_argument("--meta-batch", type=int, help="tasks per meta-iteration (default 4)")
    p.add_argument("--queries", type=int, help="training query images per class (default 1)")
    p.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                   help="merge result files of runs on other seeds into --out, and stop")
    args = p.parse_args(argv)
    if args.merge:
        result = merge([json.loads(f.read_text()) for f in args.merge])
        for line in result["verdict"]:
            print(line)
        finish(result, args.out or RESULTS / "pmaml_omniglot_cpu.json", print)
        return
    cfg = Config(threads=args.threads)
    if args.paper:
        cfg = replace(cfg, **PAPER)
    if args.shot is not None:
        cfg = replace(cfg, shots=args.shot)
    cfg = configure(cfg, args, QUICK, ("steps", "teacher_steps", "meta_batch", "queries"))
    if args.measure:
        print(json.dumps(measure(cfg)))
        return
    name = "pmaml_omniglot_cpu" + ("_paper" if args.paper else "")
    out = output(args, f"{name}.json", quick_out="pmaml_omniglot_cpu_quick.json")
    run_logged(run, cfg, out, workdir=args.workdir, teachers_only=args.stage == "teachers")


if __name__ == "__main__":
    main()
