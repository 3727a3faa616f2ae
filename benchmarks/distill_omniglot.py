"""Knowledge distillation on the bundled Omniglot: CE against KD, DKD and KD+GDA, same budget.

Whole-classification of Omniglot characters on the real bundled copy
(``Omniglot(split="all")``, 242 characters of 20 drawings; the first ``--characters`` of them
in the data set's sorted order). Each character's 20 drawings are split once into
``TRAIN_PER_CLASS`` training and ``TEST_PER_CLASS`` held-out drawings by a fixed permutation
(seeded by ``SPLIT_SEED`` and the class index, never by the run's seed), so every seed and
every arm sees the same training images and is tested on the same held-out drawings.

A larger teacher (a ResNet-12, narrowed by default) is trained once overall with plain
cross-entropy (seed ``TEACHER_SEED``), then frozen. A small student (Conv-2 with global average
pooling) is trained from the same initial weights and on the same stream of minibatches (both
fixed by the seed) in four arms and one control, each for the same number of SGD steps:

* ``ce``: cross-entropy only, no teacher;
* ``kd``: ``preset("mdistiller_kd")``: 0.1 CE + 0.9 T²·KL, T = 4;
* ``dkd``: ``preset("mdistiller_dkd")``: CE + DKD (alpha 1, beta 8, T 4), its warm-up scaled to
  the same fraction of training as mdistiller's 20 of 240 epochs (counted in steps);
* ``kd_gda``: ``preset("gda_kd")``: 2.0 CE + 1.0 KD (T 4) + Fisher-Rao 0.02 + Sinkhorn 0.1;
* ``ce_x2``: a control, ``preset("ce", ce_weight=2.0)``: cross-entropy weighted 2.0 as in the
  GDA preset, no teacher. With plain SGD a loss weight scales the step like the learning rate,
  so this separates GDA's teacher terms from its larger CE weight.

Every arm uses SGD (momentum 0.9, weight decay 5e-4) with a cosine decay over the steps, no
augmentation, and is scored once, after its last step, on the held-out drawings (no selection
on the test set). Each arm reports its per-seed top-1 with a binomial 95% interval, the mean
over seeds with a Student-t 95% interval, and its paired difference from ``ce`` (same seed, same
initial weights, same batches) with a t-interval.

    .venv/bin/python -m benchmarks.distill_omniglot            # the full run (~20 min, 1 thread)
    .venv/bin/python -m benchmarks.distill_omniglot --quick    # a smoke run (a few minutes)

The last line of output is one JSON object; it is also written to ``--out`` (default
``benchmarks/results/distill_omniglot_cpu.json``; none for ``--quick`` unless ``--out`` is
given) with the log next to it (``.log``).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._common import (
    Clock,
    configure,
    finish,
    log_config,
    output,
    parser,
    result_log,
)
from metakd.data import ImageArray, Omniglot, batches
from metakd.engine import (
    BudgetCosine,
    EvalResult,
    evaluate,
    fit,
    mean_confidence_interval,
    paired_difference,
)
from metakd.nn import create

ARMS = ("ce", "kd", "dkd", "kd_gda", "ce_x2")
#: The distillation arms (the others train on the labels alone).
DISTILL_ARMS = ("kd", "dkd", "kd_gda")
#: The ``metakd.distill.preset`` name and fixed overrides of each arm but ``ce``.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "kd": ("mdistiller_kd", {}),
    "dkd": ("mdistiller_dkd", {}),
    "kd_gda": ("gda_kd", {}),
    "ce_x2": ("ce", {"ce_weight": 2.0}),
}
#: mdistiller's DKD warm-up: 20 of its 240 CIFAR epochs; ours is the same fraction of training.
DKD_WARMUP_FRACTION = 20 / 240
TRAIN_PER_CLASS, TEST_PER_CLASS = 15, 5
#: Seeds the per-class train/test split of the drawings (independent of the run's seed).
SPLIT_SEED = 20240611
#: Seed of the teacher's initial weights and minibatch stream (trained once overall).
TEACHER_SEED = 1000


@dataclass
class Config:
    """Everything that defines a run (the JSON records it)."""

    characters: int = 100
    image_size: int = 28
    teacher: str = "resnet12"
    teacher_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"channels": [32, 64, 128, 256]})
    student: str = "conv2"
    student_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"hidden": 32, "bn_mode": "running"})
    batch_size: int = 64
    teacher_steps: int = 500
    steps: int = 800
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = ARMS
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    threads: int = 1
    #: Serve the frozen teacher's logits of the training images from a table computed once
    #: (:class:`CachedTeacher`); ``False`` runs the teacher at every step.
    cache_teacher: bool = True


QUICK = {"characters": 30, "teacher_steps": 150, "steps": 100, "seeds": (0, 1)}


# --- data ----------------------------------------------------------------------------------------
def _class_seed(k: int) -> int:
    digest = hashlib.sha256(f"distill_omniglot:{SPLIT_SEED}:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def split_arrays(characters: int, image_size: int = 28) -> tuple[ImageArray, ImageArray]:
    """The first ``characters`` classes of the bundled Omniglot, drawings split train/test.

    Each class's drawings are permuted by a generator seeded from ``SPLIT_SEED`` and the class
    index only; the first ``TRAIN_PER_CLASS`` go to training, the next ``TEST_PER_CLASS`` to
    the test set. Both arrays share the decoded uint8 images; labels are ``0..characters-1``.
    """
    arr = Omniglot(split="all").arrays(image_size, progress=False)
    if not 2 <= characters <= arr.num_classes:
        raise ValueError(f"characters must be in [2, {arr.num_classes}], got {characters}")
    need = TRAIN_PER_CLASS + TEST_PER_CLASS
    train_items, test_items = [], []
    for k in range(characters):
        n = int(arr.class_counts[k])
        if n < need:
            raise ValueError(f"class {arr.class_names[k]} has {n} drawings, needs {need}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(_class_seed(k)))
        items = arr.class_items[k, :n][perm]
        train_items.append(items[:TRAIN_PER_CLASS])
        test_items.append(items[TRAIN_PER_CLASS:need])

    def subset(items: list[torch.Tensor]) -> ImageArray:
        idx = torch.stack(items)
        return ImageArray(
            images=arr.images, class_items=idx,
            class_counts=torch.full((characters,), idx.shape[1], dtype=torch.int64),
            class_rotation=torch.zeros(characters, dtype=torch.int64),
            class_names=list(arr.class_names[:characters]),
        )

    return subset(train_items), subset(test_items)


# --- models and training -------------------------------------------------------------------------
def make_model(name: str, kwargs: dict[str, Any], num_classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    kw = dict(kwargs)
    if "channels" in kw:
        kw["channels"] = tuple(kw["channels"])
    return create(name, num_classes=num_classes, in_channels=1, **kw)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _optimizer(params: Any, cfg: Config, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    return opt, BudgetCosine(opt, steps)


def train_plain(model: nn.Module, train: ImageArray, cfg: Config, steps: int, seed: int) -> float:
    """Cross-entropy training (the teacher and the ``ce`` arm); returns the seconds it took."""
    loader = batches(train, cfg.batch_size, seed=seed, progress=False)
    opt, sched = _optimizer(model.parameters(), cfg, steps)
    t0 = time.perf_counter()
    fit(model, loader, opt, steps, scheduler=sched, progress=False, log_every=10**9,
        tensorboard=False)
    return time.perf_counter() - t0


class CachedTeacher(nn.Module):
    """A frozen teacher whose logits of a fixed image set are computed once, then looked up.

    There is no augmentation and the teacher is frozen in eval mode, so its logits of each
    training image are the same at every step: this module computes them once (in chunks of
    256) and answers ``forward(x)`` by exact lookup of each image's bytes, running the real
    teacher only for a batch holding an image it has not seen (counted in :attr:`misses`).
    The students see the same teacher logits as with a live teacher (to float rounding of
    the batch composition), for a fraction of the cost.
    """

    def __init__(self, teacher: nn.Module, images: torch.Tensor) -> None:
        super().__init__()
        self.teacher = teacher.eval()
        with torch.no_grad():
            logits = torch.cat([teacher(chunk) for chunk in images.split(256)])
        self._table = {img.numpy().tobytes(): row for img, row in zip(images, logits)}
        self.misses = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = [self._table.get(xi.detach().cpu().numpy().tobytes()) for xi in x]
        if any(r is None for r in rows):
            self.misses += 1
            return self.teacher(x)
        return torch.stack(rows).to(x.device)  # type: ignore[arg-type]


def training_images(train: ImageArray) -> torch.Tensor:
    """Every training image as the minibatch loader produces it (float in [0, 1])."""
    loader = batches(train, 256, shuffle=False, drop_last=False, epochs=1, progress=False)
    return torch.cat([x for x, _ in loader])


def dkd_warmup_steps(steps: int) -> float:
    """mdistiller's 20-of-240-epoch DKD warm-up scaled to a run of ``steps`` steps.

    The warm-up is counted in steps (the Distiller's epoch clock ticks once per step,
    ``steps_per_epoch=1``), so the ramp ``min(t / warmup, 1)`` rises over many small increments
    as mdistiller's 20-epoch ramp does, instead of 2-3 coarse epochs of a short run.
    """
    return DKD_WARMUP_FRACTION * steps


def distill_loss(arm: str, steps: int) -> tuple[Any, dict[str, Any]]:
    """The loss of a distillation arm and the overrides given to its preset."""
    from metakd.distill import preset

    name, fixed = PRESETS[arm]
    overrides: dict[str, Any] = dict(fixed)
    if arm == "dkd":
        overrides["warmup"] = dkd_warmup_steps(steps)
    return preset(name, **overrides), overrides


def train_distilled(student: nn.Module, teacher: nn.Module | None, arm: str, train: ImageArray,
                    cfg: Config, steps: int, seed: int) -> float:
    """One arm through the Distiller (same optimiser, schedule, steps, batches as ``ce``)."""
    from metakd.distill import Distiller

    loader = batches(train, cfg.batch_size, seed=seed, progress=False)
    loss, _ = distill_loss(arm, steps)
    d = Distiller(student, teacher, loss, steps_per_epoch=1)  # epoch clock = step (DKD)
    opt, sched = _optimizer(d.parameters(), cfg, steps)
    t0 = time.perf_counter()
    fit(d, loader, opt, steps, loss_fn=Distiller.training_loss, scheduler=sched,
        progress=False, log_every=10**9, tensorboard=False)
    return time.perf_counter() - t0


def heldout_top1(model: nn.Module, test: ImageArray) -> dict[str, Any]:
    """Top-1 on the held-out drawings with its binomial 95% interval."""
    loader = batches(test, 512, shuffle=False, drop_last=False, epochs=1, progress=False)
    r = evaluate(model, loader)
    return {"accuracy": r.mean, "ci95": r.ci95, "examples": r.episodes}


def _digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _pool(r: EvalResult) -> dict[str, Any]:
    """A t-interval over seeds as this benchmark's JSON (``ci95_t``, ``std``)."""
    s = r.summary()
    return {"mean": s["mean"], "ci95_t": s["ci95"], "interval": s["interval"],
            "std": None if math.isnan(r.std) else r.std}


# --- the benchmark -------------------------------------------------------------------------------
def run(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the teacher, then every arm for every seed; the benchmark's JSON-ready result."""
    for arm in cfg.arms:
        if arm not in ARMS:
            raise ValueError(f"unknown arm {arm!r}; choose from {ARMS}")
    torch.set_num_threads(cfg.threads)
    clock = Clock()
    train, test = split_arrays(cfg.characters, cfg.image_size)
    k = cfg.characters
    per_epoch = (k * TRAIN_PER_CLASS) // cfg.batch_size
    log(f"{k} characters: {k * TRAIN_PER_CLASS} training / {k * TEST_PER_CLASS} held-out "
        f"drawings, {per_epoch} batches of {cfg.batch_size} per epoch")

    teacher = make_model(cfg.teacher, cfg.teacher_kwargs, k, TEACHER_SEED)
    t_teacher = train_plain(teacher, train, cfg, cfg.teacher_steps, TEACHER_SEED)
    teacher.eval()
    teacher_res = heldout_top1(teacher, test)
    teacher_digest = _digest(teacher)
    log(f"teacher {cfg.teacher} ({num_params(teacher)} params): {cfg.teacher_steps} steps in "
        f"{t_teacher:.0f} s, held-out top-1 {100 * teacher_res['accuracy']:.2f} ± "
        f"{100 * teacher_res['ci95']:.2f} %")

    served: nn.Module = teacher
    if cfg.cache_teacher and any(arm in DISTILL_ARMS for arm in cfg.arms):
        served = CachedTeacher(teacher, training_images(train))

    per_seed: dict[str, list[dict[str, Any]]] = {arm: [] for arm in cfg.arms}
    overrides: dict[str, dict[str, Any]] = {}
    for seed in cfg.seeds:
        for arm in cfg.arms:
            student = make_model(cfg.student, cfg.student_kwargs, k, seed)
            if arm == "ce":
                secs = train_plain(student, train, cfg, cfg.steps, seed)
            else:
                overrides[arm] = distill_loss(arm, cfg.steps)[1]
                t = served if arm in DISTILL_ARMS else None
                secs = train_distilled(student, t, arm, train, cfg, cfg.steps, seed)
            res = {"seed": seed, **heldout_top1(student, test), "train_s": round(secs, 1)}
            per_seed[arm].append(res)
            log(f"seed {seed} {arm:7s}: top-1 {100 * res['accuracy']:.2f} ± "
                f"{100 * res['ci95']:.2f} % ({secs:.0f} s)")
    teacher_unchanged = _digest(teacher) == teacher_digest

    arms_out: dict[str, Any] = {}
    for arm in cfg.arms:
        accs = [r["accuracy"] for r in per_seed[arm]]
        entry: dict[str, Any] = {"preset": PRESETS[arm][0] if arm in PRESETS else "none",
                                 "preset_overrides": overrides.get(arm, {}),
                                 **_pool(mean_confidence_interval(accs)),
                                 "per_seed": per_seed[arm]}
        if arm != "ce" and "ce" in per_seed:
            d = paired_difference(accs, [c["accuracy"] for c in per_seed["ce"]])
            entry["minus_ce"] = {**_pool(d), "per_seed": list(d.values or ())}
        arms_out[arm] = entry
    best = max(cfg.arms, key=lambda a: arms_out[a]["mean"])
    verdict = _verdict(arms_out, best)
    log(verdict)

    student_probe = make_model(cfg.student, cfg.student_kwargs, k, 0)
    return {
        "benchmark": "distill_omniglot",
        "setting": (
            f"bundled Omniglot (real), whole-classification of the first {k} characters of "
            f"Omniglot(split='all'); fixed per-class split {TRAIN_PER_CLASS} train / "
            f"{TEST_PER_CLASS} held-out drawings (seed {SPLIT_SEED}, independent of the run "
            f"seed); {cfg.image_size}x{cfg.image_size} grey, no augmentation; SGD lr {cfg.lr} "
            f"momentum {cfg.momentum} wd {cfg.weight_decay}, cosine over the steps, batch "
            f"{cfg.batch_size}; teacher trained once overall; every arm {cfg.steps} steps from "
            "the same per-seed initial weights and batches; scored after the last step"
        ),
        "characters": k,
        "train_images": k * TRAIN_PER_CLASS,
        "test_images": k * TEST_PER_CLASS,
        "seeds": list(cfg.seeds),
        "steps": cfg.steps,
        "epochs": round(cfg.steps / per_epoch, 2),
        "dkd_warmup_steps": round(dkd_warmup_steps(cfg.steps), 2),
        "dkd_warmup_epochs": round(dkd_warmup_steps(cfg.steps) / per_epoch, 3),
        "dkd_warmup_note": (
            "mdistiller's 20 of 240 epochs scaled to the same fraction of this run (20/240 of "
            "the steps); counted in steps (Distiller steps_per_epoch=1) for a smooth ramp"),
        "teacher": {"model": cfg.teacher, "kwargs": cfg.teacher_kwargs,
                    "params": num_params(teacher), "seed": TEACHER_SEED,
                    "trained": "once overall", "steps": cfg.teacher_steps,
                    "train_s": round(t_teacher, 1), **teacher_res,
                    "unchanged_by_distillation": teacher_unchanged,
                    "logits": ("computed once for the training images, looked up each step "
                               f"({served.misses} batches missed the table)"
                               if isinstance(served, CachedTeacher) else "live every step")},
        "student": {"model": cfg.student, "kwargs": cfg.student_kwargs,
                    "params": num_params(student_probe)},
        "arms": arms_out,
        "best_arm": best,
        "verdict": verdict,
        "config": {**asdict(cfg), "seeds": list(cfg.seeds), "arms": list(cfg.arms)},
        "threads": cfg.threads,
        **clock.record(),
    }


def _verdict(arms: dict[str, Any], best: str) -> str:
    parts = [f"{a} {100 * v['mean']:.2f}" for a, v in arms.items()]
    text = f"best arm: {best} (mean top-1 %: {', '.join(parts)})"
    distill = [a for a in DISTILL_ARMS if a in arms]
    if "ce" not in arms or not distill:
        return text
    top = max(distill, key=lambda a: arms[a]["mean"])
    d = arms[top]["minus_ce"]
    if d["ci95_t"] is None:
        text += f"; best distillation arm {top} - ce = {100 * d['mean']:+.2f} points (one seed)"
    else:
        lo, hi = d["interval"]
        sig = "excludes" if lo > 0 or hi < 0 else "includes"
        text += (f"; best distillation arm {top} - ce = {100 * d['mean']:+.2f} points, paired "
                 f"95% t-interval [{100 * lo:+.2f}, {100 * hi:+.2f}] ({sig} 0)")
    if arms[top]["mean"] <= arms["ce"]["mean"]:
        text += "; no distillation arm beats plain cross-entropy"
    if "ce_x2" in arms and top == "kd_gda":
        gap = arms["kd_gda"]["mean"] - arms["ce_x2"]["mean"]
        text += f"; kd_gda - ce_x2 (same CE weight 2.0, no teacher) = {100 * gap:+.2f} points"
    return text


# --- sizing a time budget ------------------------------------------------------------------------
def _seconds_per_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      teacher: nn.Module | None = None, n: int = 3) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    t0 = 0.0
    for i in range(n + 1):
        if i == 1:
            t0 = time.perf_counter()
        if teacher is not None:
            with torch.no_grad():
                teacher(x)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / n


def steps_for_budget(cfg: Config, seconds: float) -> tuple[int, int]:
    """``(teacher_steps, steps)`` in the configured ratio that fit ``seconds`` of training.

    Times a few steps of the teacher and of the student (with a teacher forward when the
    teacher runs live); the distillation losses themselves are not timed, so leave a margin.
    """
    torch.set_num_threads(cfg.threads)
    k = cfg.characters
    x = torch.rand(cfg.batch_size, 1, cfg.image_size, cfg.image_size)
    y = torch.randint(0, k, (cfg.batch_size,))
    teacher = make_model(cfg.teacher, cfg.teacher_kwargs, k, 0)
    t_teacher = _seconds_per_step(teacher, x, y)
    teacher.eval()
    t_ce = _seconds_per_step(make_model(cfg.student, cfg.student_kwargs, k, 0), x, y)
    live = teacher if not cfg.cache_teacher else None
    t_kd = _seconds_per_step(make_model(cfg.student, cfg.student_kwargs, k, 0), x, y, live)
    n_distill = sum(a in DISTILL_ARMS for a in cfg.arms)
    n_ce = len(cfg.arms) - n_distill
    ratio = cfg.teacher_steps / cfg.steps
    per_student_step = ratio * t_teacher + len(cfg.seeds) * (n_ce * t_ce + n_distill * t_kd)
    steps = max(1, int(seconds / per_student_step))
    return max(1, round(ratio * steps)), steps


# --- command line --------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__, QUICK, "distill_omniglot_cpu.json", shots=False, test_tasks=False,
               workdir=False)
    p.add_argument("--characters", type=int, help="first K characters (default 100)")
    p.add_argument("--steps", type=int, help="SGD steps of every student arm (default 800)")
    p.add_argument("--teacher-steps", type=int, help="SGD steps of the teacher (default 500)")
    p.add_argument("--seconds", type=float,
                   help="size the steps (teacher and students, same ratio) to about this many "
                        "seconds of training in total, from a timing of one step of each model")
    p.add_argument("--arms", nargs="+", choices=ARMS, help="arms to run (default all)")
    p.add_argument("--live-teacher", action="store_true",
                   help="run the teacher at every step instead of looking up its logits of the "
                        "training images, computed once (same logits, slower)")
    args = p.parse_args(argv)

    cfg = configure(Config(threads=args.threads, cache_teacher=not args.live_teacher), args,
                    QUICK, ("characters", "steps", "teacher_steps", "arms"))
    with result_log(output(args, "distill_omniglot_cpu.json")) as (log, out):
        if args.seconds is not None:
            teacher_steps, steps = steps_for_budget(cfg, args.seconds)
            cfg = replace(cfg, teacher_steps=teacher_steps, steps=steps)
            log(f"--seconds {args.seconds:g}: teacher {teacher_steps} steps, students {steps} "
                "steps")
        log_config(cfg, log)
        finish(run(cfg, log), out, log)


if __name__ == "__main__":
    main()
