"""PMAML stage 1: a MAML teacher, with the options of the official ``models/teacher/train.py``.

    # bundled Omniglot subset, Conv-4 teacher, 5-way 1-shot, the official settings
    python examples/pmaml/train_teacher.py --train-data omniglot --test-data omniglot
    # CUB, ResNet-18 teacher with augmentation
    python examples/pmaml/train_teacher.py --train-data cub --test-data cub \\
        --data-folder data --backbone resnet18 --augment --use-cuda

The run folder (``--out-dir``, default ``runs/pmaml/teacher_{train}_{test}_{backbone}_{N}way_
{K}shot``) is a metakd MAML run: it is the ``--teacher-resume-folder`` of train_student.py.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from _common import check_args, common_fields, download, paper, parser, report, run_folder, tag

from metakd.recipes import MAMLConfig, PMAMLConfig, run

TEACHERS = ("conv4", "conv6", "conv8", "resnet10", "resnet18", "resnet12")


def config(args: Any, out_dir: str) -> MAMLConfig:
    """The teacher's :class:`MAMLConfig`: PMAML's official settings, then the options (the
    fields MAML and PMAML share: the same parts)."""
    official = paper(PMAMLConfig, common_fields(args, out_dir))
    names = {f.name for f in dataclasses.fields(MAMLConfig)}
    return MAMLConfig(**{f.name: getattr(official, f.name)
                         for f in dataclasses.fields(PMAMLConfig) if f.name in names})


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Parse ``argv`` (default: the command line), train and test the teacher, print the record."""
    p = parser(__doc__.splitlines()[0], TEACHERS)
    args = p.parse_args(argv)
    check_args(p, args, argv, __file__)
    out_dir, resume = run_folder(p, args, f"runs/pmaml/teacher_{tag(args, args.backbone)}")
    download(args)
    cfg = config(args, out_dir)
    results = run(cfg, progress=sys.stderr.isatty(), resume=resume, method="maml")
    if "rank" in results:  # another process under torchrun: rank 0 reports
        return None
    return report(args, results, out_dir, f"MAML teacher {args.backbone}",
                  {"model_name": "teacher", "backbone": args.backbone})


if __name__ == "__main__":
    main()
