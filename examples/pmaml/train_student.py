"""PMAML stage 2: a MAML student distilled from a teacher, options of ``models/pmaml_*/train.py``.

    # the teacher first (train_teacher.py), then a Conv-2 student with KD at every meta-iteration
    python examples/pmaml/train_student.py --train-data omniglot --test-data omniglot \\
        --backbone conv2 --teacher_backbone conv4 --teacher-resume
    # KD at the last meta-iteration only, from a teacher in another folder
    python examples/pmaml/train_student.py --train-data omniglot --test-data omniglot \\
        --backbone conv1 --model-name pmaml_last --teacher-resume \\
        --teacher-resume-folder runs/pmaml/teacher_omniglot_omniglot_conv4_5way_1shot

``--teacher-resume-folder`` is the teacher's metakd run folder (default: the folder
train_teacher.py writes for ``--teacher_backbone``); ``--teacher-resume`` is required.
"""

from __future__ import annotations

import sys
from typing import Any

from _common import (
    check_args,
    common_fields,
    download,
    paper,
    parser,
    report,
    run_folder,
    say,
    tag,
)

from metakd.recipes import PMAMLConfig, get_method, read_config, run
from metakd.recipes.options import add_aliases, add_config_arguments, option_values
from metakd.recipes.originals import PMAML_STUDENT

STUDENTS = ("conv1", "conv2", "conv4")
TEACHERS = ("conv4", "conv6", "conv8", "resnet10", "resnet18", "resnet12")
SCHEDULES = {"pmaml_every": "every", "pmaml_last": "last"}
METAKD_FIELDS = ("teacher_adapt", "inner_kd")  # metakd's options: the fields' own


def add_student_options(p: Any) -> None:
    """The distillation options of the original student scripts, then metakd's."""
    p.add_argument("--teacher_backbone", choices=TEACHERS, default="conv4",
                   help="the teacher's backbone (checked against its run folder)")
    add_aliases(p, PMAMLConfig, PMAML_STUDENT)
    p.add_argument("--teacher-resume", action="store_true",
                   help="load the trained teacher (required: the original silently used a "
                        "random teacher without it)")
    p.add_argument("--teacher-resume-folder", default=None,
                   help="the teacher's metakd run folder (default: runs/pmaml/teacher_{train}_"
                        "{test}_{teacher_backbone}_{N}way_{K}shot)")
    p.add_argument("--teacher-resume-recoder", default=None, metavar="FOLDER",
                   help="the original README's misspelling of --teacher-resume-folder")
    p.add_argument("--model-name", choices=sorted(SCHEDULES), default="pmaml_every",
                   help="pmaml_every: KD at every meta-iteration; pmaml_last: at the last only")
    add_config_arguments(p.add_argument_group("metakd distillation options"), PMAMLConfig,
                         only=METAKD_FIELDS)


def teacher_folder(p: Any, args: Any) -> str:
    """The teacher's run folder from the options; refuses, in one line, a missing teacher."""
    if args.teacher_resume_recoder is not None:
        say("note: --teacher-resume-recoder (the original README's spelling) is read as "
            "--teacher-resume-folder")
        if args.teacher_resume_folder not in (None, args.teacher_resume_recoder):
            p.error("--teacher-resume-recoder and --teacher-resume-folder disagree")
        args.teacher_resume_folder = args.teacher_resume_recoder or None  # '' -> the default
    if not args.teacher_resume:
        p.error("--teacher-resume is required: PMAML distils a trained teacher (without it the "
                "original silently used a randomly initialised one). Train one with "
                "examples/pmaml/train_teacher.py, then pass --teacher-resume "
                "[--teacher-resume-folder RUN_DIR]")
    folder = args.teacher_resume_folder or f"runs/pmaml/teacher_{tag(args, args.teacher_backbone)}"
    try:
        method, teacher = read_config(folder)
    except (FileNotFoundError, ValueError) as e:
        p.error(f"--teacher-resume-folder: {e}; train the teacher with "
                f"examples/pmaml/train_teacher.py --backbone {args.teacher_backbone} and the "
                "same --train-data, --num-ways and --num-shots")
    if method.name == "maml" and teacher.model != args.teacher_backbone:
        p.error(f"--teacher_backbone {args.teacher_backbone}, but {folder} holds a "
                f"{teacher.model} teacher: pass --teacher_backbone {teacher.model}")
    return folder


def config(args: Any, out_dir: str, teacher: str) -> PMAMLConfig:
    """The student's :class:`PMAMLConfig`: the official settings, then the options."""
    return paper(PMAMLConfig, {
        **common_fields(args, out_dir),
        **option_values(args, PMAMLConfig, PMAML_STUDENT, only=METAKD_FIELDS),
        "teacher": teacher, "schedule": SCHEDULES[args.model_name]})


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Parse ``argv`` (default: the command line), train and test the student, print the record."""
    p = parser(__doc__.splitlines()[0], STUDENTS)
    add_student_options(p)
    args = p.parse_args(argv)
    check_args(p, args, argv, __file__)
    teacher = teacher_folder(p, args)
    name = f"{args.model_name}_{tag(args, args.backbone)}_from_{args.teacher_backbone}"
    out_dir, resume = run_folder(p, args, f"runs/pmaml/{name}")
    cfg = config(args, out_dir, teacher)
    try:
        get_method("pmaml").check(cfg)  # a teacher of another episode shape, data or size
    except ValueError as e:
        p.error(str(e))
    download(args)
    results = run(cfg, progress=sys.stderr.isatty(), resume=resume, method="pmaml")
    if "rank" in results:  # another process under torchrun: rank 0 reports
        return None
    title = (f"PMAML student {args.backbone} ({args.model_name}) from a {args.teacher_backbone} "
             "teacher")
    return report(args, results, out_dir, title,
                  {"model_name": args.model_name, "backbone": args.backbone,
                   "teacher_backbone": args.teacher_backbone, "teacher": teacher,
                   "temperature": args.temperature, "trade_lambda": args.trade_lambda})


if __name__ == "__main__":
    main()
