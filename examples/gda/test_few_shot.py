"""Few-shot test of a Classifier-Baseline or Meta-Baseline run (the original ``test_few_shot.py``).

    python examples/gda/test_few_shot.py --config examples/gda/configs/test_few_shot.yaml --shot 1
    python examples/gda/test_few_shot.py --load save/meta_mini-imagenet-1shot_meta-baseline-resnet36_bottle --shot 5

The YAML's ``load`` (a Meta-Baseline run) or ``load_encoder`` (a Classifier-Baseline run)
names the run folder (``<run>/epoch-last.pth`` or ``<run>/max-va.pth`` pick its last or best
checkpoint); ``--load`` overrides it. The test is cosine nearest-centroid on 5-way episodes
with 15 queries, ``--test-epochs`` x 800 episodes (the original: 10 x 200 batches of 4), one
fixed seed. The interval is over episodes (the original's is over batches of 4 episodes,
narrower by about half). ``--sauc`` is not provided.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from metakd.recipes import load_run
from metakd.recipes.baseline_options import dataset_name, launch_gpus, read_original, run_folder


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="a YAML with load or load_encoder (and dataset)")
    p.add_argument("--load", help="the run folder to test (overrides the YAML)")
    p.add_argument("--shot", type=int, default=1)
    p.add_argument("--way", type=int, default=5)
    p.add_argument("--test-epochs", type=int, default=10, help="x 800 episodes (default 10)")
    p.add_argument("--sauc", action="store_true", help="not provided")
    p.add_argument("--gpu", help="a GPU id (testing runs in one process)")
    p.add_argument("--root", help="the data set's folder (default: the run's)")
    p.add_argument("--out_root", default=os.environ.get("OUT_PATH", "save"))
    p.add_argument("--seed", type=int, default=0, help="seed of the test episodes")
    args = p.parse_args(argv)
    if args.sauc:
        p.error("--sauc (single-class AUC) is not provided")
    c = read_original(args.config, "test") if args.config else {}
    path = args.load or c.get("load") or c.get("load_encoder")
    if not path:
        p.error("give --load RUN_DIR or a --config with load / load_encoder")
    folder, which = run_folder(str(path), args.out_root)
    device = "cuda" if launch_gpus(args.gpu.split(",")[0] if args.gpu else None) != "cpu" \
        else "cpu"
    overrides = {"shots": args.shot, "ways": args.way, "test_tasks": 800 * args.test_epochs,
                 "test_queries": 15, "test_seed": args.seed, "device": device}
    if args.root:
        overrides["root"] = args.root
    if c.get("dataset"):
        overrides["dataset"] = dataset_name(str(c["dataset"]))
        overrides.setdefault("root", args.root)
    try:
        r = load_run(folder, checkpoint=which, **overrides)
    except (FileNotFoundError, ValueError) as e:
        p.error(f"{folder}: {e}")
    if r.method not in ("classifier_baseline", "meta_baseline"):
        p.error(f"{folder} is a {r.method!r} run, not a Classifier- or Meta-Baseline run")
    result = r.evaluate(progress=sys.stderr.isatty())
    print(f"{r.method} {folder} ({r.checkpoint.name}), {args.way}-way {args.shot}-shot: "
          f"test {result}", flush=True)


if __name__ == "__main__":
    from metakd.cli import guarded

    raise SystemExit(guarded(main, "test_few_shot.py"))
