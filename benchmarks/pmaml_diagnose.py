"""Why PMAML's distillation does not help on the bundled Omniglot: gap, T × λ, gradient shares.

On one seed (0), with the data, teacher and student budget of ``benchmarks.pmaml_omniglot``'s
default run (a Conv-4 MAML teacher trained for 1,000 meta-iterations, Conv-2 students for 250
meta-iterations of 4 tasks with 1 training query per class, every model scored on its last
weights on the same 100 fixed held-out episodes), it measures:

1. **The teacher–student gap:** the teacher's held-out accuracy, the Conv-2 student's without
   distillation (``schedule=""``), and the difference in points.
2. **A temperature × λ sweep** of the official schedule (KD at every meta-iteration, teacher
   unadapted): T in {1, 4, 10} × λ in {0.1, 0.5, 0.9}, the loss ``(1 − λ)·CE + λ·T²·KL``
   with ``nn.KLDivLoss()``'s element mean, each arm from the same initial weights and
   episodes as the no-KD arm. Per arm: accuracy with its 95% interval over the episodes, and
   the paired difference from no-KD over the same episodes (mean and t-interval).
3. **The KD term's share of the meta-gradient** of every sweep arm at a few points of its
   training (the start, 10 %, the middle, the end: the run is trained in segments that resume
   bit for bit): on fixed probe meta-batches of the training split (the training shape), the
   gradients of the λ·KD part and of the (1 − λ)·CE part of the student's meta-loss with
   respect to its parameters, each from its own backward pass (:func:`gradient_parts`), their
   norms, ratio and cosine, averaged over the probe batches. Every probe checks that the two
   parts sum to the full loss's gradient (relative error below :data:`SUM_TOLERANCE`).
4. **CE-only controls:** per λ, the KD arm without its KD term, ``(1 − λ)·CE`` alone. Under
   Adam a loss scaled by ``c`` with weight decay ``w`` takes the same steps as the unscaled
   loss with ``w / c`` (up to Adam's ε), so each control is the no-KD student with weight
   decay ``5e-4 / (1 − λ)``. A KD arm minus its control is the KD term's own effect; a
   control minus no-KD is the effect of weighting the cross-entropy by ``1 − λ`` while the
   weight decay stays.

It also reports how the unadapted teacher's query logits look on the probe batches (their
accuracy against the episode labels, and the entropy of ``softmax(z/T)`` over ``log C``).

5. **The adapted teacher** (``every_adapted`` of ``benchmarks.pmaml_omniglot``: the teacher
   adapted on each task's support set before its query logits are taken), at the (T, λ) of
   ``adapted`` (the official T = 10, λ = 0.9 and T = 10, λ = 0.5): each arm trained, probed
   and scored as the sweep's arms (against no-KD and the CE-only control of its λ), and the
   adapted teacher's query logits on the probe batches as for the unadapted one.

    .venv/bin/python -m benchmarks.pmaml_diagnose            # the full run (about 13 min, 1 thread)
    .venv/bin/python -m benchmarks.pmaml_diagnose --quick    # a smoke run (under a minute; no file)
    .venv/bin/python -m benchmarks.pmaml_diagnose --workdir W  # keep run folders, resume
    .venv/bin/python -m benchmarks.pmaml_diagnose --arms adapted  # only the adapted arms, merged

``--arms adapted`` trains the teacher, the no-KD student, the CE-only controls and the adapted
arms only, checks that the first three score exactly as in the existing ``--out`` file (the
same seeds and code path), and adds the adapted arms to that file, with a ``merged`` note.

The last line of output is one JSON object; it is also written to ``--out`` (default
``benchmarks/results/pmaml_diagnose_cpu.json``; with ``--quick`` only when ``--out`` is
given), the log next to it (``.log``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks import pmaml_omniglot as po
from benchmarks._common import (
    Clock,
    budget,
    configure,
    episodes_seen,
    output,
    parser,
    run_logged,
    work_folder,
)
from metakd.data import Omniglot, TaskBatch, few_shot
from metakd.engine import paired_difference

#: Largest relative error ``|g_full − g_ce − g_kd| / max(|g_full|, |g_ce|, |g_kd|)`` a probe
#: accepts (float32 rounding; the largest norm, so that parts that cancel are not flagged).
SUM_TOLERANCE = 1e-4
#: The paper's student training tasks (distillation spec §2.4).
PAPER_TASKS = 60_000
PAPER_QUERIES = 15


@dataclass
class Config:
    """Everything that defines a run (the JSON records it)."""

    #: pmaml_omniglot's default budget: the same teacher, student meta-iterations and test.
    steps: int = 250
    teacher_steps: int = 1000
    meta_batch: int = 4
    queries: int = 1
    test_tasks: int = 100
    seeds: tuple[int, ...] = (0,)
    student: str = "conv2"
    temperatures: tuple[float, ...] = (1.0, 4.0, 10.0)
    lambdas: tuple[float, ...] = (0.1, 0.5, 0.9)
    #: Where the gradients are probed, as fractions of ``steps`` (0: the initial weights).
    probe_at: tuple[float, ...] = (0.0, 0.1, 0.5, 1.0)
    #: Probe meta-batches of the training shape (``meta_batch`` tasks), drawn once.
    probe_batches: int = 8
    probe_seed: int = 20_000
    threads: int = 1
    #: The (T, λ) arms with the teacher adapted on each support set (``every_adapted``).
    adapted: tuple[tuple[float, float], ...] = ((10.0, 0.9), (10.0, 0.5))
    #: ``"all"``, or ``"adapted"``: only the adapted arms (with the teacher, no-KD and the
    #: CE-only controls they are compared with), merged into the existing result file.
    arms: str = "all"


QUICK = {"steps": 20, "teacher_steps": 60, "test_tasks": 40, "temperatures": (4.0,),
         "lambdas": (0.5,), "probe_batches": 2, "adapted": ((4.0, 0.5),)}
OFFICIAL = (10.0, 0.9)


def arm_name(temperature: float, lam: float) -> str:
    return f"T{temperature:g}_lambda{lam:g}"


def base_config(cfg: Config) -> po.Config:
    """pmaml_omniglot's config of this run: the Conv-4 teacher, one student, one seed."""
    if len(cfg.seeds) != 1:
        raise ValueError(f"the diagnosis runs on one seed, got {cfg.seeds}")
    return po.Config(students=(cfg.student,), modes=("no_kd", "every"), resnet_students=(),
                     resnet_modes=(), steps=cfg.steps, teacher_steps=cfg.teacher_steps,
                     meta_batch=cfg.meta_batch, queries=cfg.queries,
                     test_tasks=cfg.test_tasks, seeds=cfg.seeds, threads=cfg.threads)


def probe_steps(cfg: Config) -> list[int]:
    """The meta-iterations after which the gradients are probed (0: before training)."""
    return sorted({min(cfg.steps, max(0, round(f * cfg.steps))) for f in cfg.probe_at})


def probe_episodes(base: po.Config, cfg: Config) -> list[TaskBatch]:
    """Fixed meta-batches of the training split, in the training shape."""
    train = Omniglot(split="train", rotations=po.ROTATIONS)
    return list(few_shot(train, po.WAYS, base.shots, base.queries,
                         meta_batch_size=base.meta_batch,
                         num_tasks=cfg.probe_batches * base.meta_batch, seed=cfg.probe_seed,
                         progress=False))


# --- the two parts of the meta-gradient ------------------------------------------------------
@contextmanager
def only(learner: Any, part: str) -> Iterator[None]:
    """Within the block, ``learner``'s (a :class:`metakd.distill.PMAML`) query loss keeps only
    its ``part``: ``"ce"`` (the weighted cross-entropy), ``"kd"`` (the weighted distillation
    terms) or ``"full"`` (both, unchanged). The weights are restored on leaving."""
    loss = learner.student.objective.loss  # the DistillLoss that training calls
    kept = loss.ce_weight, [t.weight for t in loss.terms]
    if part not in ("full", "ce", "kd"):
        raise ValueError(f"part={part!r}: 'full', 'ce' or 'kd'")
    try:
        if part == "ce":
            for t in loss.terms:
                t.weight = 0.0
        elif part == "kd":
            loss.ce_weight = 0.0
        yield
    finally:
        loss.ce_weight = kept[0]
        for t, w in zip(loss.terms, kept[1]):
            t.weight = w


def gradient_parts(learner: Any, batch: TaskBatch, step: int = 0) -> dict[str, Any]:
    """The flat meta-gradients of a PMAML student's training loss on ``batch`` at
    meta-iteration ``step``: ``full``, and its parts ``ce`` ((1 − λ)·CE) and ``kd`` (λ·KD),
    each from its own backward pass, with the full pass's loss ``terms``."""
    params = [p for p in learner.parameters() if p.requires_grad]
    out: dict[str, Any] = {}
    for part in ("full", "ce", "kd"):
        with only(learner, part):
            loss, metrics = learner.meta_loss(batch, training=True, step=step)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out[part] = torch.cat([(torch.zeros_like(p) if g is None else g.detach()).reshape(-1)
                               for p, g in zip(params, grads)])
        if part == "full":
            out["terms"] = dict(metrics["terms"])
    return out


def _cos(a: Tensor, b: Tensor) -> float:
    na, nb = a.norm().item(), b.norm().item()
    return float("nan") if na == 0 or nb == 0 else float(a @ b) / (na * nb)


def probe(learner: Any, batches: Sequence[TaskBatch], step: int,
          weight_decay: float) -> dict[str, Any]:
    """Norms, ratio and cosine of the λ·KD and (1 − λ)·CE meta-gradients at ``step``, averaged
    over ``batches``; raises when the parts do not sum to the full gradient."""
    learner.train()
    rows = []
    for batch in batches:
        g = gradient_parts(learner, batch, step)
        full, ce, kd = g["full"], g["ce"], g["kd"]
        scale = max(full.norm().item(), ce.norm().item(), kd.norm().item(), 1e-30)
        err = (full - ce - kd).norm().item() / scale
        if not err <= SUM_TOLERANCE:
            raise AssertionError(f"step {step}: the KD and CE parts sum to the full gradient "
                                 f"only within {err:.2e} (tolerance {SUM_TOLERANCE})")
        rows.append({"kd_norm": kd.norm().item(), "ce_norm": ce.norm().item(),
                     "full_norm": full.norm().item(), "cosine": _cos(kd, ce),
                     "cos_full_ce": _cos(full, ce), "sum_error": err,
                     **{f"loss_{k}": float(v) for k, v in g["terms"].items()}})
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k != "sum_error"}
    theta = torch.cat([p.detach().reshape(-1) for p in learner.parameters() if p.requires_grad])
    return {"step": step, **mean,
            "ratio": mean["kd_norm"] / mean["ce_norm"] if mean["ce_norm"] else float("inf"),
            "ratio_per_batch": sum(r["kd_norm"] / r["ce_norm"] for r in rows) / len(rows),
            "weight_decay_norm": weight_decay * theta.norm().item(),
            "max_sum_error": max(r["sum_error"] for r in rows), "batches": len(rows)}


def teacher_view(learner: Any, batches: Sequence[TaskBatch],
                 temperatures: Sequence[float]) -> dict[str, Any]:
    """The teacher's query logits as training sees them (unadapted, or adapted on each
    support set where ``learner.teacher_adapt``): their accuracy against the episode labels,
    and the mean entropy of ``softmax(z/T)`` over ``log C`` per T."""
    hits, count = 0.0, 0
    entropy = {f"{t:g}": 0.0 for t in temperatures}
    for batch in batches:
        z = learner.teacher_logits(batch, "query")  # [T, M, C], no graph
        hits += (z.argmax(-1) == batch.query_y).float().sum().item()
        count += batch.query_y.numel()
        for t in temperatures:
            p = torch.softmax(z / t, -1)
            h = -(p * p.clamp_min(1e-12).log()).sum(-1) / math.log(z.shape[-1])
            entropy[f"{t:g}"] += h.mean().item() / len(batches)
    return {"accuracy": hits / count, "normalized_entropy": entropy, "queries": count}


# --- training --------------------------------------------------------------------------------
def _segment(run_cfg: Any, steps: int) -> None:
    """Train (resume) ``run_cfg``'s folder up to ``steps`` meta-iterations."""
    from metakd.recipes import run as run_recipe

    done = run_recipe(replace(run_cfg, steps=steps), progress=False, resume=True)["steps"]
    if done != steps:
        raise RuntimeError(f"{run_cfg.out_dir} is at meta-iteration {done}, not {steps}: "
                           "remove the folder to train it again")


def train_probed(run_cfg: Any, points: Sequence[int], batches: Sequence[TaskBatch],
                 log: Callable[[str], None]) -> tuple[list[dict[str, Any]], float]:
    """Train a KD arm in segments ending at ``points``, probing after each; the probes and
    the training seconds. Probes are kept in ``probes.json`` of the run folder (resume)."""
    from metakd.recipes import load_run
    from metakd.recipes.registry import method_of

    out = Path(run_cfg.out_dir)
    cache = out / "probes.json"
    done: dict[str, Any] = (json.loads(cache.read_text()) if cache.is_file()
                            else {"probes": [], "train_s": 0.0})
    have = {p["step"] for p in done["probes"]}
    for k in points:
        if k in have:
            continue
        t0 = time.perf_counter()
        if k > 0:
            _segment(run_cfg, k)
            learner = load_run(out, checkpoint="last").learner
        else:  # the run's initial weights: build seeds them as the run does
            learner = method_of(run_cfg).build(run_cfg).learner
        done["train_s"] += time.perf_counter() - t0
        row = probe(learner, batches, k, run_cfg.weight_decay)
        done["probes"].append(row)
        out.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(done))
        log(f"  step {k:4d}: |g_kd| {row['kd_norm']:.3g} |g_ce| {row['ce_norm']:.3g} "
            f"ratio {row['ratio']:.3g} cos {row['cosine']:+.3f}")
    if not points or points[-1] < run_cfg.steps:
        _segment(run_cfg, run_cfg.steps)
    return sorted(done["probes"], key=lambda p: p["step"]), done["train_s"]


def train_teacher(base: po.Config, root: Path, keep: bool,
                  log: Callable[[str], None], episodes: list[TaskBatch]
                  ) -> tuple[str, dict[str, Any]]:
    """pmaml_omniglot's Conv-4 teacher, trained (or resumed) and scored."""
    from metakd.recipes import run as run_recipe

    out = str(root / f"teacher_{base.conv_teacher}")
    t0 = time.perf_counter()
    run_recipe(po.teacher_config(base, base.conv_teacher, {}, out), progress=False,
               resume=keep)
    secs = time.perf_counter() - t0
    res, _ = po.score(out, episodes)
    log(f"teacher {base.conv_teacher}: {base.teacher_steps} meta-iterations in {secs:.0f} s, "
        f"held-out {res}")
    return out, {"model": base.conv_teacher, "params": po.num_params(out),
                 "steps": base.teacher_steps, "seed": base.teacher_seed,
                 "train_s": round(secs, 1), "accuracy": res.mean, "ci95": res.ci95,
                 "episodes": res.episodes}


def scored(out: str, episodes: list[TaskBatch], baselines: dict[str, list[float]]
           ) -> tuple[dict[str, Any], list[float]]:
    """A run folder's held-out accuracy (95% interval over episodes) and its paired
    difference from each baseline's per-episode accuracies (``{key: accuracies}``: the row
    gets ``key``) over the same episodes."""
    res, accs = po.score(out, episodes)
    row: dict[str, Any] = {"accuracy": res.mean, "ci95": res.ci95,
                           "interval": list(res.interval) if res.interval else None,
                           "episodes": res.episodes}
    for key, base_accs in baselines.items():
        row[key] = paired_difference(accs, base_accs).summary()
    return row, accs


def train_no_kd(base: po.Config, seed: int, teacher_dir: str, out: str, keep: bool,
                episodes: list[TaskBatch], baselines: dict[str, list[float]],
                weight_decay: float | None = None) -> tuple[dict[str, Any], list[float]]:
    """A no-KD student (``schedule=""``; ``weight_decay`` instead of the paper's where
    given), trained and scored."""
    from metakd.recipes import run as run_recipe

    run_cfg = po.student_config(base, po.Arm(base.students[0], "no_kd", None), seed,
                                teacher_dir, out)
    if weight_decay is not None:
        run_cfg = replace(run_cfg, weight_decay=weight_decay)
    t0 = time.perf_counter()
    run_recipe(run_cfg, progress=False, resume=keep)
    secs = time.perf_counter() - t0
    row, accs = scored(out, episodes, baselines)
    return {**row, "weight_decay": run_cfg.weight_decay, "train_s": round(secs, 1)}, accs


def train_ce_only(cfg: Config, base: po.Config, teacher_dir: str, root: Path, keep: bool,
                  episodes: list[TaskBatch], no_kd_accs: list[float],
                  log: Callable[[str], None]) -> tuple[dict[str, Any], dict[float, list[float]]]:
    """Per λ, the KD arm without its KD term: ``(1 − λ)·CE`` alone. Adam's update is the
    same for a loss scaled by ``c`` with weight decay ``w`` as for the loss with ``w / c``
    (up to its ε), so this is the no-KD student with weight decay ``5e-4 / (1 − λ)``."""
    seed = cfg.seeds[0]
    rows: dict[str, Any] = {}
    accs: dict[float, list[float]] = {}
    paper_wd = po.student_config(base, po.Arm(cfg.student, "no_kd", None), seed, teacher_dir,
                                 "").weight_decay  # PMAMLConfig.paper's 5e-4
    for lam in cfg.lambdas:
        if not 0 <= lam < 1:
            continue
        out = str(root / f"{cfg.student}_ce_only_lambda{lam:g}_s{seed}")
        row, accs[lam] = train_no_kd(base, seed, teacher_dir, out, keep, episodes,
                                     {"minus_no_kd": no_kd_accs}, paper_wd / (1 - lam))
        rows[f"lambda{lam:g}"] = {"lambda": lam, "ce_weight": 1 - lam, **row}
        d = row["minus_no_kd"]
        log(f"ce_only lambda={lam:g} (weight decay {paper_wd / (1 - lam):.3g}): held-out "
            f"{100 * row['accuracy']:.2f} %, minus no-KD {_points(d)}")
    return rows, accs


def _points(d: dict[str, Any]) -> str:
    """``+1.23 [+0.45, +2.01]`` points of a paired difference summary."""
    if d.get("interval") is None:
        return f"{100 * d['mean']:+.2f}"
    return f"{100 * d['mean']:+.2f} [{100 * d['interval'][0]:+.2f}, {100 * d['interval'][1]:+.2f}]"


def _train_arms(cfg: Config, base: po.Config, teacher_dir: str, root: Path,
                episodes: list[TaskBatch], no_kd_accs: list[float],
                ce_only: dict[float, list[float]], log: Callable[[str], None], mode: str,
                pairs: Sequence[tuple[float, float]], view_temperatures: Sequence[float]
                ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The (T, λ) ``pairs`` of PMAML ``mode`` (``every`` or ``every_adapted``), each probed
    and scored against no-KD and the CE-only control of its λ; and the teacher's logits as
    the first arm saw them on the probe batches."""
    from metakd.recipes import load_run

    seed, batches, points = cfg.seeds[0], probe_episodes(base, cfg), probe_steps(cfg)
    arm = po.Arm(cfg.student, mode, base.conv_teacher)
    adapted = mode == "every_adapted"
    prefix = "adapted " if adapted else ""
    rows: dict[str, Any] = {}
    view = None
    for temperature, lam in pairs:
        name = arm_name(temperature, lam)
        out = str(root / f"{cfg.student}_{mode}_{name}_s{seed}")
        run_cfg = replace(po.student_config(base, arm, seed, teacher_dir, out),
                          temperature=temperature, trade_lambda=lam)
        log(f"{prefix}{name}: probing at {points}")
        probes, secs = train_probed(run_cfg, points, batches, log)
        baselines = {"minus_no_kd": no_kd_accs}
        if lam in ce_only:
            baselines["minus_ce_only"] = ce_only[lam]
        row, _ = scored(out, episodes, baselines)
        log(f"{prefix}{name}: held-out {100 * row['accuracy']:.2f} ± "
            f"{100 * row['ci95']:.2f} %, minus no-KD {_points(row['minus_no_kd'])}, minus "
            f"CE-only {_points(row['minus_ce_only']) if 'minus_ce_only' in row else '-'} points")
        rows[name] = {"temperature": temperature, "lambda": lam,
                      **({"teacher_adapt": True} if adapted else {}),
                      "effective_kd_weight": lam * temperature ** 2 / po.WAYS,
                      **row, "train_s": round(secs, 1), "probes": probes}
        if view is None:
            view = teacher_view(load_run(out, checkpoint="last").learner, batches,
                                view_temperatures)
    return rows, view


def train_sweep(cfg: Config, base: po.Config, teacher_dir: str, root: Path,
                episodes: list[TaskBatch], no_kd_accs: list[float],
                ce_only: dict[float, list[float]], log: Callable[[str], None]
                ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Every (T, λ) arm of the official schedule (teacher unadapted); see :func:`_train_arms`."""
    pairs = [(t, lam) for t in cfg.temperatures for lam in cfg.lambdas]
    return _train_arms(cfg, base, teacher_dir, root, episodes, no_kd_accs, ce_only, log,
                       "every", pairs, cfg.temperatures)


def train_adapted(cfg: Config, base: po.Config, teacher_dir: str, root: Path,
                  episodes: list[TaskBatch], no_kd_accs: list[float],
                  ce_only: dict[float, list[float]], log: Callable[[str], None]
                  ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Every (T, λ) arm of ``cfg.adapted`` with the teacher adapted on each support set
    (``every_adapted``); see :func:`_train_arms`."""
    return _train_arms(cfg, base, teacher_dir, root, episodes, no_kd_accs, ce_only, log,
                       "every_adapted", cfg.adapted, sorted({1.0, 4.0, 10.0, *cfg.temperatures}))


def _sum_check(sweep: dict[str, Any]) -> dict[str, Any]:
    errs = [p["max_sum_error"] for a in sweep.values() for p in a["probes"]]
    worst = max(errs) if errs else None
    return {"passed": bool(errs) and worst is not None and worst <= SUM_TOLERANCE,
            "max_relative_error": worst, "tolerance": SUM_TOLERANCE,
            "probes": len(errs),
            "what": "|g_full - g_ce - g_kd| / max(|g_full|, |g_ce|, |g_kd|) on every probe "
                    "batch, g_ce and g_kd from separate backward passes with the other part's "
                    "weight set to 0"}


def _verdict(result: dict[str, Any]) -> list[str]:
    """The gap, the sweep against no-KD, the CE-only controls, the KD term's own effect,
    the gradient shares and the teacher's logits."""
    gap, sweep = result["gap"], result["sweep"]
    lines = [f"gap: teacher {100 * gap['teacher']:.2f} %, {result['student']} no-KD "
             f"{100 * gap['no_kd']:.2f} %: {gap['points']:.1f} points"]
    below = [k for k, a in sweep.items() if _upper(a["minus_no_kd"]) < 0]
    above = [k for k, a in sweep.items() if _lower(a["minus_no_kd"]) > 0]
    best = max(sweep, key=lambda k: sweep[k]["accuracy"])
    lines.append(f"sweep: {len(below)} of {len(sweep)} KD arms below no-KD (95% interval "
                 f"under 0), {len(above)} above; best {best} "
                 f"{_points(sweep[best]['minus_no_kd'])} points")
    if result["ce_only"]:
        lines.append("CE-only controls minus no-KD: " + ", ".join(
            f"{k} {_points(c['minus_no_kd'])}" for k, c in result["ce_only"].items()))
        lines.append("KD term's own effect (KD arm minus the CE-only control of its lambda): "
                     + ", ".join(f"{k} {_points(a['minus_ce_only'])}"
                                 for k, a in sweep.items() if "minus_ce_only" in a))
    for name, arm in sweep.items():
        shares = ", ".join(f"step {p['step']}: {p['ratio']:.2f} (cos {p['cosine']:+.2f})"
                           for p in arm["probes"])
        lines.append(f"{name}: |g_kd|/|g_ce| {shares}")
    view = result.get("teacher_on_probe")
    if view:
        ent = ", ".join(f"T={t}: {h:.4f}" for t, h in view["normalized_entropy"].items())
        lines.append(f"unadapted teacher on the probe queries: {100 * view['accuracy']:.1f} % "
                     f"against the episode labels (chance {100 / po.WAYS:.0f} %); entropy of "
                     f"softmax(z/T) over log C: {ent}")
    return lines + _verdict_adapted(result)


def _verdict_adapted(result: dict[str, Any]) -> list[str]:
    """The adapted-teacher arms against no-KD and their CE-only controls, their gradient
    shares, and the adapted teacher's logits."""
    lines = []
    for name, arm in result.get("adapted", {}).items():
        own = _points(arm["minus_ce_only"]) if "minus_ce_only" in arm else "-"
        shares = ", ".join(f"step {p['step']}: {p['ratio']:.2f} (cos {p['cosine']:+.2f})"
                           for p in arm["probes"])
        lines.append(f"adapted {name}: {100 * arm['accuracy']:.2f} %, minus no-KD "
                     f"{_points(arm['minus_no_kd'])}, minus CE-only {own}; |g_kd|/|g_ce| "
                     f"{shares}")
    view = result.get("teacher_adapted_on_probe")
    if view:
        ent = ", ".join(f"T={t}: {h:.4f}" for t, h in view["normalized_entropy"].items())
        lines.append(f"adapted teacher on the probe queries: {100 * view['accuracy']:.1f} % "
                     f"against the episode labels; entropy of softmax(z/T) over log C: {ent}")
    return lines


def _upper(d: dict[str, Any]) -> float:
    return d["interval"][1] if d.get("interval") else d["mean"]


def _lower(d: dict[str, Any]) -> float:
    return d["interval"][0] if d.get("interval") else d["mean"]


def _budget(base: po.Config) -> dict[str, Any]:
    b = budget(episodes_seen(base.steps * base.meta_batch, po.WAYS, base.shots, base.queries),
               episodes_seen(PAPER_TASKS, po.WAYS, base.shots, PAPER_QUERIES),
               "distillation spec §2.4 (official code: 60,000 tasks of 15 queries per class)")
    same = base.steps == 250 and base.teacher_steps == 1000 and base.test_tasks == 100
    b["note"] = ("every student arm has the budget of pmaml_omniglot's default run (250 "
                 "meta-iterations of 4 tasks, teacher 1,000), not reduced" if same else
                 f"reduced from pmaml_omniglot's default run: students {base.steps} "
                 f"meta-iterations, teacher {base.teacher_steps}, {base.test_tasks} test "
                 "episodes")
    return b


def _train_all(cfg: Config, base: po.Config, root: Path, keep: bool,
               log: Callable[[str], None]) -> dict[str, Any]:
    """The teacher, the no-KD student, the CE-only controls and the probed sweep."""
    episodes = po.heldout_episodes(base)
    log(f"seed {cfg.seeds[0]}: {cfg.student} students, {cfg.steps} meta-iterations of "
        f"{cfg.meta_batch} tasks; teacher {cfg.teacher_steps}; {len(cfg.temperatures)} T "
        f"x {len(cfg.lambdas)} lambda KD arms, no-KD and CE-only controls; test "
        f"{cfg.test_tasks} episodes")
    teacher_dir, teacher = train_teacher(base, root, keep, log, episodes)
    seed = cfg.seeds[0]
    no_kd, no_kd_accs = train_no_kd(base, seed, teacher_dir,
                                    str(root / f"{cfg.student}_no_kd_s{seed}"), keep,
                                    episodes, {})
    log(f"no_kd: held-out {100 * no_kd['accuracy']:.2f} ± {100 * no_kd['ci95']:.2f} %")
    ce_only, ce_accs = train_ce_only(cfg, base, teacher_dir, root, keep, episodes,
                                     no_kd_accs, log)
    sweep, view = (train_sweep(cfg, base, teacher_dir, root, episodes, no_kd_accs, ce_accs,
                               log) if cfg.arms == "all" else ({}, None))
    adapted, adapted_view = train_adapted(cfg, base, teacher_dir, root, episodes, no_kd_accs,
                                          ce_accs, log)
    return {"teacher": teacher, "no_kd": no_kd, "ce_only": ce_only, "sweep": sweep,
            "teacher_on_probe": view, "adapted": adapted,
            "teacher_adapted_on_probe": adapted_view}


CONTROLS_NOTE = (
    "no_kd: PMAMLConfig schedule='' (plain MAML query CE, weight 1), the same optimiser "
    "(Adam 1e-3, weight decay 5e-4), initial weights and episodes as the KD arms; ce_only "
    "lambdaL: the KD arm of that lambda without its KD term, (1 - lambda) CE alone, run as "
    "no_kd with weight decay 5e-4 / (1 - lambda) (Adam's update of a loss scaled by c with "
    "weight decay w equals that of the unscaled loss with w / c, up to its epsilon); "
    "minus_ce_only of a KD arm: the KD term's own effect at its lambda; minus_no_kd of a "
    "ce_only arm: the effect of down-weighting the CE under Adam's L2 weight decay")


def _result(cfg: Config, base: po.Config, parts: dict[str, Any],
            clock: Clock) -> dict[str, Any]:
    """A full run's JSON-ready result (without the verdict)."""
    official = arm_name(*OFFICIAL)
    teacher, no_kd, sweep = parts["teacher"], parts["no_kd"], parts["sweep"]
    return {
        "benchmark": "pmaml_diagnose",
        "setting": (
            "bundled Omniglot (5 background alphabets train, 3 held-out test, x4 rotations), "
            f"{po.WAYS}-way {base.shots}-shot, {base.queries} training query per class; the "
            "Conv-4 MAML teacher and the held-out episodes of pmaml_omniglot; students: "
            "PMAMLConfig.paper (Adam 1e-3, weight decay 5e-4, element-mean KL) with KD at "
            "every meta-iteration, teacher unadapted, at each (T, lambda); one seed; every "
            "model scored on its last weights"),
        "student": cfg.student, "seed": cfg.seeds[0], "steps": cfg.steps,
        "teacher_steps": cfg.teacher_steps, "meta_batch": cfg.meta_batch,
        "train_queries": cfg.queries, "test_episodes": cfg.test_tasks,
        "test_queries": base.test_queries, "test_seed": base.test_seed,
        "probe": {"steps": probe_steps(cfg), "batches": cfg.probe_batches,
                  "tasks_per_batch": cfg.meta_batch, "seed": cfg.probe_seed,
                  "split": "train"},
        "budget": _budget(base), "controls_note": CONTROLS_NOTE,
        "gap": _gap(teacher, no_kd),
        **parts, "official": official if official in sweep else None,
        "sum_check": _sum_check(sweep), "sum_check_adapted": _sum_check(parts["adapted"]),
        "adapted_note": ADAPTED_NOTE,
        "config": asdict(cfg), "threads": cfg.threads, **clock.record(),
    }


ADAPTED_NOTE = (
    "adapted: the arms of pmaml_omniglot's every_adapted mode (teacher_adapt=True: the "
    "teacher adapted on each task's support set, its own inner rate and steps, before its "
    "query logits are taken), otherwise as the sweep's arms (same initial weights, episodes, "
    "probes and controls); teacher_adapted_on_probe: the adapted teacher's query logits on "
    "the probe batches")
#: The parts a run with ``arms="adapted"`` trains again and checks against the existing file.
SHARED = ("teacher", "no_kd", "ce_only", "gap")


def _gap(teacher: dict[str, Any], no_kd: dict[str, Any]) -> dict[str, Any]:
    return {"teacher": teacher["accuracy"], "no_kd": no_kd["accuracy"],
            "points": 100 * (teacher["accuracy"] - no_kd["accuracy"])}


def _scores(value: Any) -> Any:
    """``value`` as JSON holds it, without its (timing) ``train_s`` entries."""
    if isinstance(value, dict):
        return {k: _scores(v) for k, v in value.items() if k != "train_s"}
    return json.loads(json.dumps(value))


def merged(existing: dict[str, Any], parts: dict[str, Any], cfg: Config,
           clock: Clock) -> dict[str, Any]:
    """``existing`` (a full run's result) with the adapted arms of ``parts`` added; raises
    unless the teacher, no-KD and the CE-only controls trained again score exactly as there."""
    again = {**parts, "gap": _gap(parts["teacher"], parts["no_kd"])}
    for key in SHARED:
        if _scores(again[key]) != _scores(existing[key]):
            raise AssertionError(f"{key} does not reproduce the existing result")
    keep = {k: v for k, v in existing.items() if k not in ("verdict", "config")}
    return {**keep, "adapted": parts["adapted"],
            "teacher_adapted_on_probe": parts["teacher_adapted_on_probe"],
            "sum_check_adapted": _sum_check(parts["adapted"]), "adapted_note": ADAPTED_NOTE,
            "config": {**existing["config"], "adapted": [list(a) for a in cfg.adapted]},
            "merged": {"note": "the adapted arms were run alone (--arms adapted) and merged "
                               "into the full run's result; the teacher, no_kd and ce_only "
                               "trained again in that run scored exactly as here (checked)",
                       "checked": list(SHARED), "config": asdict(cfg), **clock.record()}}


def run(cfg: Config, log: Callable[[str], None] = print,
        workdir: str | Path | None = None, merge_into: Path | None = None) -> dict[str, Any]:
    """The teacher, the no-KD student, the CE-only controls and every (T, λ) arm, probed;
    the JSON-ready result. With ``cfg.arms == "adapted"``: only the adapted arms (and what
    they are compared with), merged into the result in ``merge_into``."""
    if cfg.arms not in ("all", "adapted"):
        raise ValueError(f"arms={cfg.arms!r}: 'all' or 'adapted'")
    if cfg.arms == "adapted" and (merge_into is None or not merge_into.is_file()):
        raise ValueError(f"arms='adapted' merges into an existing result file, not {merge_into}")
    torch.set_num_threads(cfg.threads)
    base = base_config(cfg)
    clock = Clock()
    with work_folder(workdir, "pmaml_diagnose_") as root:
        parts = _train_all(cfg, base, root, workdir is not None, log)
    if cfg.arms == "adapted" and merge_into is not None:
        result = merged(json.loads(merge_into.read_text()), parts, cfg, clock)
    else:
        result = _result(cfg, base, parts, clock)
    result["verdict"] = _verdict(result)
    for line in result["verdict"]:
        log(line)
    for check in ("sum_check", "sum_check_adapted"):
        if not result[check]["passed"]:
            raise AssertionError(f"gradient parts check failed: {result[check]}")
    return result


# --- command line ----------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__, QUICK, "pmaml_diagnose_cpu.json", shots=False)
    p.add_argument("--steps", type=int, help="meta-iterations of every student arm")
    p.add_argument("--teacher-steps", type=int, help="meta-iterations of the teacher")
    p.add_argument("--temperatures", type=float, nargs="+", help="KD temperatures T")
    p.add_argument("--lambdas", type=float, nargs="+", help="KD weights lambda")
    p.add_argument("--probe-batches", type=int, help="probe meta-batches (default 8)")
    p.add_argument("--arms", choices=("all", "adapted"), default="all",
                   help="all (default), or only the adapted-teacher arms, merged into --out")
    args = p.parse_args(argv)
    cfg = configure(Config(threads=args.threads, arms=args.arms), args, QUICK,
                    ("steps", "teacher_steps", "temperatures", "lambdas", "probe_batches"))
    out = output(args, "pmaml_diagnose_cpu.json")
    old_log = (out.with_suffix(".log").read_text()
               if cfg.arms == "adapted" and out is not None and out.with_suffix(".log").is_file()
               else None)
    run_logged(run, cfg, out, workdir=args.workdir,
               merge_into=out if cfg.arms == "adapted" else None)
    if old_log is not None and out is not None:  # the full run's log, then the merged run's
        log_path = out.with_suffix(".log")
        log_path.write_text(old_log + "\n--- merged: --arms adapted ---\n"
                            + log_path.read_text())


if __name__ == "__main__":
    main()
