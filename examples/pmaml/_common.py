"""Options, data and reporting shared by the PMAML reproduction scripts (``examples/pmaml/``).

The option names and defaults are those of the official code (remiMZ/PMAML-ECAI20,
``models/teacher/train.py`` and ``models/pmaml_{every,last}/train.py``). Those that name a
:class:`metakd.recipes.PMAMLConfig` field are generated from their declaration
(:data:`metakd.recipes.originals.PMAML`); the teacher's run is a
:class:`metakd.recipes.MAMLConfig` with the same values. The runs go through
:func:`metakd.recipes.run`. None of the original's defects is reproduced; README.md lists the
differences.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from metakd.recipes import PMAMLConfig
from metakd.recipes.options import add_aliases, add_config_arguments, option_values
from metakd.recipes.originals import PMAML, PMAML_DATASETS

DATASETS = PMAML_DATASETS
METAKD_FIELDS = ("out_dir", "max_seconds", "device", "seed")
SPLITS = {
    "omniglot": "Vinyals et al.'s split: 1028 / 172 / 423 characters for train / val / test, "
                "each x4 with 90-degree rotations",
    "miniimagenet": "Ravi & Larochelle's split: 64 / 16 / 20 classes for train / val / test",
    "cub": "the Closer-Look split (Chen et al. 2019): 100 / 50 / 50 classes for train / val / "
           "test",
}
BUNDLED_NOTE = ("note: the bundled Omniglot (no --data-folder) has only train alphabets (5, "
                "136 characters) and test alphabets (3, 106 characters), no validation split: "
                "--val-tasks and --validation-tasks are unused and the last weights are tested")


def say(*parts: Any) -> None:
    """Print on the main process only (rank 0 under torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        print(*parts, flush=True)


def parser(description: str, backbones: tuple[str, ...]) -> argparse.ArgumentParser:
    """The options both scripts share: the original ones, then metakd's extras."""
    p = argparse.ArgumentParser(description=description)
    add_aliases(p, PMAMLConfig, [dataclasses.replace(a, choices=backbones)
                                 if a.flag == "--backbone" else a for a in PMAML])
    p.add_argument("--test-data", choices=DATASETS, default=None,
                   help="test data (default: --train-data); validation uses --train-data's "
                        "val split")
    p.add_argument("--data-folder", default=None,
                   help="folder holding the data set (or a <name>/ subfolder of it); default: "
                        "the bundled Omniglot subset, required for miniimagenet and cub")
    p.add_argument("--train-tasks", type=int, default=60_000,
                   help="training tasks in all (meta-iterations = train-tasks // batch-tasks; "
                        "default: %(default)s)")
    p.add_argument("--validation-tasks", type=int, default=1000,
                   help="validate every this many training tasks (default: %(default)s)")
    p.add_argument("--augment", action="store_true",
                   help="random resized crop + flip + colour jitter of the training images "
                        "(miniimagenet, cub)")
    p.add_argument("--multi-gpu", action="store_true",
                   help="data-parallel over GPUs: prints the torchrun command to run (under "
                        "torchrun every process takes its share of each meta-batch)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --resume-folder from its last.pt")
    p.add_argument("--resume-folder", default=None,
                   help="the run folder to resume (default: --out-dir)")
    p.add_argument("--download", action="store_true",
                   help="fetch the data set into --data-folder first if missing")
    p.add_argument("--num-workers", type=int, default=None,
                   help="accepted for compatibility; unused (metakd loads episodes in-process)")
    p.add_argument("--use-cuda", action="store_true", help="run on the GPU (cuda)")
    add_config_arguments(p.add_argument_group("metakd options"), PMAMLConfig,
                         only=METAKD_FIELDS)
    return p


def tag(args: argparse.Namespace, backbone: str) -> str:
    """``{train}_{test}_{backbone}_{N}way_{K}shot``: the run-folder name of a configuration."""
    return (f"{args.train_data}_{args.test_data}_{backbone}_{args.num_ways}way_"
            f"{args.num_shots}shot")


def resolve_root(name: str, data_folder: str | None) -> str | None:
    """The folder metakd reads ``name`` from: ``data_folder/name`` if it exists, else itself."""
    if data_folder is None:
        return None
    sub = Path(data_folder) / name
    return str(sub) if sub.is_dir() else data_folder


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace,
               argv: list[str] | None, script: str) -> None:
    """Validate the options, fill derived defaults, handle --multi-gpu and print notes."""
    args.test_data = args.test_data or args.train_data
    for name in {args.train_data, args.test_data}:
        if name != "omniglot" and args.data_folder is None:
            p.error(f"--data-folder is required for {name} (the folder that holds it, or its "
                    f"parent with a {name}/ subfolder); only Omniglot is bundled")
    if args.train_tasks < args.batch_tasks:
        p.error(f"--train-tasks {args.train_tasks} is less than one meta-batch "
                f"(--batch-tasks {args.batch_tasks})")
    if args.device is None:
        args.device = "cuda" if args.use_cuda else "cpu"
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            p.error(f"--device {args.device} / --use-cuda: no CUDA device is available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.multi_gpu and "LOCAL_RANK" not in os.environ:
        import torch

        n = torch.cuda.device_count()
        if n < 1:
            p.error("--multi-gpu: this machine has no CUDA device")
        if args.batch_tasks % n:
            p.error(f"--multi-gpu: --batch-tasks {args.batch_tasks} cannot be split over {n} "
                    "GPUs (one process each)")
        given = list(sys.argv[1:] if argv is None else argv)
        if "--use-cuda" not in given and "--device" not in given:
            given.append("--use-cuda")
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}",
               script, *given]
        say(f"--multi-gpu: training data-parallel on {n} GPUs under torchrun (each process "
            f"takes its share of every meta-batch): {shlex.join(cmd)}")
        raise SystemExit(subprocess.call(cmd))
    if world > 1 and args.batch_tasks % world:
        p.error(f"--batch-tasks {args.batch_tasks} cannot be split over {world} processes")
    if args.num_workers is not None:
        say("note: --num-workers is unused (metakd draws episodes in the training process)")
    if args.train_data == "omniglot" and args.data_folder is None:
        say(BUNDLED_NOTE)
    else:
        say(f"{args.train_data}: {SPLITS[args.train_data]}")
    if args.test_data != args.train_data:
        say(f"note: cross-domain: validation on {args.train_data}'s val split, test on "
            f"{args.test_data}'s test split ({SPLITS[args.test_data]})")
    if args.augment and args.train_data == "omniglot":
        say("note: --augment is ignored on Omniglot (as in the original, whose augmentation "
            "is that of the RGB data sets)")


def download(args: argparse.Namespace) -> None:
    """With --download: the archive placed by hand in the data folder (the README's manual
    route: checked against its published md5 where there is one, extracted safely), else the
    library's md5-checked download of what the run reads."""
    if not args.download:
        return
    from metakd.data.datasets.archives import unpack_local_archive
    from metakd.data.registry import get_dataset

    for name in sorted({args.train_data, args.test_data}):
        root = resolve_root(name, args.data_folder)
        if root is None:
            say("note: --download: the bundled Omniglot needs no download")
            continue
        archive = unpack_local_archive(name, root)  # the README's hand-placed archive
        if archive is not None:
            say(f"--download: using {archive}")
        splits = ("train", "val") if name == args.train_data else ()
        splits += ("test",) if name == args.test_data else ()
        for split in splits:
            get_dataset(name, root, split, download=True)


def run_folder(p: argparse.ArgumentParser, args: argparse.Namespace,
               default: str) -> tuple[str, bool]:
    """(run folder, resume): --resume continues ``last.pt``; a fresh run never overwrites one."""
    out = args.out_dir or default
    if args.resume:
        out = args.resume_folder or out
        if not (Path(out) / "last.pt").is_file():
            p.error(f"--resume: {out} holds no last.pt to resume (give the run folder with "
                    "--resume-folder)")
        say(f"resuming {out} from its last.pt")
        return out, True
    if args.resume_folder is not None:
        p.error("--resume-folder needs --resume")
    if (Path(out) / "last.pt").is_file():
        p.error(f"{out} already holds a run: pass --resume to continue it, or another --out-dir")
    return out, False


def common_fields(args: argparse.Namespace, out_dir: str) -> dict[str, Any]:
    """The :class:`metakd.recipes.PMAMLConfig` fields both scripts set from the options: the
    original's that name a field, metakd's, then those counted in tasks, converted."""
    return {
        **option_values(args, PMAMLConfig, PMAML, only=METAKD_FIELDS),
        "root": resolve_root(args.train_data, args.data_folder),
        "steps": args.train_tasks // args.batch_tasks,
        "val_every": max(1, args.validation_tasks // args.batch_tasks),
        "augment": "miniimagenet" if args.augment and args.train_data != "omniglot" else None,
        "out_dir": out_dir,
    }


def paper(cls: Any, fields: dict[str, Any]) -> Any:
    """``cls.paper(dataset, ways, shots, **the other fields)``."""
    rest = dict(fields)
    return cls.paper(rest.pop("dataset"), rest.pop("ways"), rest.pop("shots"), **rest)


def _fmt(mean: float, ci: float) -> str:
    """``"mean; ci"`` in %, the original record's format."""
    return f"{100 * mean:.2f}; {100 * ci:.2f}"


def report(args: argparse.Namespace, results: dict[str, Any], out_dir: str, title: str,
           extra: dict[str, Any]) -> dict[str, Any]:
    """Print and write the record of a finished run, from its test's per-episode accuracies.

    The run's own test (``results["test"]``) is reused; the selected weights are tested again
    only on another data set (``--test-data``).

    Writes ``record_{train}_{test}_{k}shot.csv`` into the run folder, with ``test_acc`` as the
    original (``"mean; ci"`` in %, interval over meta-batch means) and ``test_acc_episodes``
    (metakd's, over episodes).
    """
    from metakd.engine import EvalResult, evaluate
    from metakd.recipes import load_run
    from metakd.recipes.pmaml import meta_batch_interval

    checkpoint = "best" if str(results.get("selected", "")).startswith("best") else "last"
    overrides: dict[str, Any] = {}
    if args.test_data != args.train_data:
        overrides = dict(dataset=args.test_data,
                         root=resolve_root(args.test_data, args.data_folder),
                         rotations=args.test_data == "omniglot")
    if overrides or not (results.get("test") or {}).get("values"):
        loaded = load_run(out_dir, checkpoint=checkpoint, **overrides)
        episodes = evaluate(loaded.learner, loaded.parts.test_data, device=loaded.config.device)
    else:
        episodes = EvalResult.from_dict(results["test"])
    batches, n = meta_batch_interval(episodes, args.batch_tasks)
    best_val = (results.get("best_val") or {}).get("accuracy")
    row = {
        **extra,
        "train_data": args.train_data, "test_data": args.test_data,
        "num_ways": args.num_ways, "num_shots": args.num_shots, "test_shots": args.test_shots,
        "train_tasks": args.train_tasks, "batch_tasks": args.batch_tasks,
        "meta_iterations": results["steps"], "selected": results["selected"],
        "best_val_acc": "" if best_val is None else f"{100 * best_val:.2f}",
        "test_tasks": episodes.episodes,
        "test_acc": _fmt(batches.mean, batches.ci95),
        "test_acc_episodes": _fmt(episodes.mean, episodes.ci95),
    }
    record = Path(out_dir) / f"record_{args.train_data}_{args.test_data}_{args.num_shots}shot.csv"
    with open(record, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    say(f"{title}: {args.train_data} -> {args.test_data}, {args.num_ways}-way "
        f"{args.num_shots}-shot, {results['steps']} meta-iterations, {results['selected']} "
        "weights")
    say(f"test_acc: {row['test_acc']}  (%: mean; 95% interval over {n} meta-batch means of "
        f"{args.batch_tasks} tasks, the original's)")
    say(f"test_acc over episodes: {episodes}  (metakd's)")
    say(f"record: {record}")
    return {"results": results, "test_episodes": episodes.as_dict(),
            "test_batches": {**batches.as_dict(), "batches": n}, "record": str(record),
            "row": row, "out_dir": out_dir}
