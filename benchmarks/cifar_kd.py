"""The CIFAR-100 distillation pipeline end to end, on generated data in the real format.

CIFAR-100 cannot be downloaded here, so this writes a small data set in the real
``cifar-100-python`` layout (Python pickles ``train``, ``test``, ``meta``; 32x32 RGB rows of
3,072 bytes; fine and coarse labels) whose images carry a learnable class signal: each class
has a mean colour and an oriented stripe pattern, each image a random phase, a random colour
shift and pixel noise. Then, with :func:`metakd.recipes.run` exactly as ``metakd train
cifar_kd`` runs it:

1. a teacher is trained with plain cross-entropy (``teacher=None``), for twice the
   students' epochs;
2. students are trained from that teacher's run folder: without a teacher (the baseline),
   with mdistiller's KD, mdistiller's DKD and GDA's KD + Fisher-Rao + Sinkhorn, all on the
   same recipe (mdistiller's, shortened: its milestones at the same fractions of the epochs),
   the same seed and the same number of steps;
3. every run folder is tested again with :func:`metakd.recipes.load_run` (top-1 and its 95%
   interval on the generated test set);
4. resume: a KD student trained in two parts (a run stopped after half its steps, then
   started again on the same folder) is compared bit for bit with the uninterrupted one.

    .venv/bin/python -m benchmarks.cifar_kd --quick     # a few minutes on 2 CPU cores
    .venv/bin/python -m benchmarks.cifar_kd --device cuda

The data set is tiny and synthetic: the accuracies show that the pipeline learns, not how
the methods rank on CIFAR-100. The last line of output is one JSON object, also written to
``--out`` (default ``benchmarks/results/cifar_kd_{quick,full}_DEVICE.json``), the log next to
it (``.log``).
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import Clock, finish, out_option, output, result_log, work_folder
from metakd.data.datasets.cifar import CIFAR100_SUPERCLASSES
from metakd.recipes import CifarKDConfig, load_run, run

FINE = sorted(c for cs in CIFAR100_SUPERCLASSES.values() for c in cs)
COARSE = sorted(CIFAR100_SUPERCLASSES)
SUPER_OF = {c: s for s, cs in CIFAR100_SUPERCLASSES.items() for c in cs}


def write_cifar100(root: Path, classes: int, train_per_class: int, test_per_class: int,
                   seed: int = 0) -> None:
    """Write ``root/cifar-100-python/{train,test,meta}`` with a learnable signal per class.

    The first ``classes`` fine class names of CIFAR-100 are used (the ``meta`` file lists
    those); as in the real files, ``data`` is ``uint8 [N, 3072]`` (the red, green and blue
    planes of each 32x32 image in turn) and the labels are lists of ints.
    """
    rng = np.random.default_rng(seed)
    names = FINE[:classes]
    colour = rng.uniform(0.3, 0.7, size=(classes, 3))
    angle = rng.uniform(0, np.pi, size=classes)
    freq = rng.uniform(1.5, 4.0, size=classes) / 32
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    coarse_names = sorted({SUPER_OF[n] for n in names})
    for part, per in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(classes), per)
        rng.shuffle(labels)
        n = len(labels)
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
        proj = (xx[None] * np.cos(angle[labels])[:, None, None]
                + yy[None] * np.sin(angle[labels])[:, None, None])
        stripes = 0.18 * np.sin(2 * np.pi * freq[labels][:, None, None] * proj + phase)
        base = colour[labels] + rng.normal(0, 0.08, size=(n, 3))  # per-image colour shift
        img = base[:, :, None, None] + stripes[:, None] + rng.normal(0, 0.15, (n, 3, 32, 32))
        data = (np.clip(img, 0, 1) * 255).round().astype(np.uint8).reshape(n, 3072)
        obj = {"filenames": [f"img_{i}.png" for i in range(n)], "batch_label": f"{part} batch",
               "fine_labels": labels.tolist(),
               "coarse_labels": [coarse_names.index(SUPER_OF[names[c]]) for c in labels],
               "data": data}
        with open(folder / part, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": coarse_names}, f,
                    protocol=2)


def _weights_equal(a: Path, b: Path) -> bool:
    sa = torch.load(a, map_location="cpu", weights_only=True)["model"]
    sb = torch.load(b, map_location="cpu", weights_only=True)["model"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark; print progress, then the JSON object as the last line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="a few minutes on 2 CPU cores: 10 classes, small models, few epochs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--classes", type=int, help="classes (default: 10 quick, 100 else)")
    p.add_argument("--train-per-class", type=int, help="(default: 48 quick, 500 else)")
    p.add_argument("--test-per-class", type=int, help="(default: 30 quick, 100 else)")
    p.add_argument("--epochs", type=int, help="epochs of every run (default: 4 quick, 30 else)")
    p.add_argument("--teacher-epochs", type=int, help="epochs of the teacher (default: 2 x "
                   "--epochs)")
    p.add_argument("--teacher", help="teacher arch (default: resnet20 quick, resnet56 else)")
    p.add_argument("--student", help="student arch (default: resnet8 quick, resnet20 else)")
    p.add_argument("--batch-size", type=int, help="(default: 32 quick, 64 else)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="folder for the data and the runs (default: a temporary one)")
    out_option(p, "cifar_kd_{quick,full}_DEVICE.json")
    args = p.parse_args(argv)
    device = args.device.split(":")[0]
    out = output(args, f"cifar_kd_full_{device}.json", quick_out=f"cifar_kd_quick_{device}.json")
    with result_log(out) as (log, out), work_folder(args.work, "cifar_kd_bench_") as work:
        finish(pipeline(args, work, log), out, log)


def pipeline(args: argparse.Namespace, work: Path, log: Callable[[str], None] = print
             ) -> dict[str, Any]:
    """Generate the data in ``work``, train and test every run there; the JSON-ready result."""
    q = args.quick
    classes = args.classes or (10 if q else 100)
    train_pc = args.train_per_class or (48 if q else 500)
    test_pc = args.test_per_class or (30 if q else 100)
    epochs = args.epochs or (4 if q else 30)
    teacher_epochs = args.teacher_epochs or 2 * epochs
    teacher_arch = args.teacher or ("resnet20" if q else "resnet56")
    student_arch = args.student or ("resnet8" if q else "resnet20")
    batch = args.batch_size or (32 if q else 64)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    clock = Clock()
    root = work / "data"
    if not (root / "cifar-100-python" / "meta").is_file():
        write_cifar100(root, classes, train_pc, test_pc, seed=args.seed)
    per_epoch = classes * train_pc // batch
    def milestones(n: int) -> list[int]:  # mdistiller's 150/180/210 of 240 epochs
        return sorted({max(1, round(n * f)) for f in (150 / 240, 180 / 240, 210 / 240)})

    common: dict[str, Any] = dict(
        root=str(root), ways=classes, epochs=epochs, batch_size=batch,
        milestones=milestones(epochs),
        recipe="mdistiller", seed=args.seed, device=args.device, test_queries=256,
        val_every=per_epoch, arch=student_arch,
    )
    timings: dict[str, float] = {}
    accuracy: dict[str, Any] = {}

    def train(name: str, folder: str | None = None, **kw: Any) -> dict[str, Any]:
        cfg = CifarKDConfig.paper(**{**common, "out_dir": str(work / (folder or name)), **kw})
        t0 = time.perf_counter()
        res = run(cfg, progress=False, resume=True)
        timings[name] = round(time.perf_counter() - t0, 1)
        log(f"{name:>9}: {res['test_str']} ({res['steps']} steps, {timings[name]} s)")
        return res

    log(f"data: {classes} classes, {train_pc}/{test_pc} train/test images per class, "
        f"batch {batch}, {epochs} epochs ({per_epoch} steps each; the teacher "
        f"{teacher_epochs}); teacher {teacher_arch}, student {student_arch}; {work}")
    train("teacher", arch=teacher_arch, epochs=teacher_epochs,
          milestones=milestones(teacher_epochs))
    teacher = str(work / "teacher")
    train("student", distill="ce")
    train("kd", teacher=teacher, teacher_arch=teacher_arch, distill="mdistiller_kd")
    train("dkd", teacher=teacher, teacher_arch=teacher_arch, distill="mdistiller_dkd")
    train("gda", teacher=teacher, teacher_arch=teacher_arch, distill="gda_kd")
    for name in ("teacher", "student", "kd", "dkd", "gda"):
        t0 = time.perf_counter()
        res = load_run(work / name, device=args.device).evaluate()
        timings[f"eval_{name}"] = round(time.perf_counter() - t0, 1)
        accuracy[name] = {"top1": round(res.mean, 4), "ci95": round(res.ci95, 4),
                          "examples": res.episodes}

    # Resume: the KD student again, stopped after half its steps and started again.
    total = epochs * per_epoch
    kd = dict(teacher=teacher, teacher_arch=teacher_arch, distill="mdistiller_kd")
    train("resume_1", "resume", steps=total // 2, **kd)
    train("resume_2", "resume", steps=total, **kd)
    identical = _weights_equal(work / "kd" / "last.pt", work / "resume" / "last.pt")

    return {
        "benchmark": "cifar_kd",
        "quick": q,
        "device": args.device,
        "data": {"classes": classes, "train_per_class": train_pc, "test_per_class": test_pc,
                 "generated": "cifar-100-python format, colour + stripes + noise"},
        "teacher": teacher_arch, "student": student_arch,
        "recipe": {"name": "mdistiller", "epochs": epochs, "teacher_epochs": teacher_epochs,
                   "batch_size": batch, "milestones": milestones(epochs), "steps": total},
        "accuracy": accuracy,
        "resume_identical": identical,
        "timings_s": {**timings, "total": round(clock.seconds(), 1)},
        "threads": torch.get_num_threads(),
        "machine": platform.machine(), "cpus": os.cpu_count(),
        **clock.record(),
    }


if __name__ == "__main__":
    main()
