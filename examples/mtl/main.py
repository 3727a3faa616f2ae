"""Meta-Transfer Learning with the options of the official code's ``main.py``.

    # bundled Omniglot (Conv-4, 28 px): pre-train, meta-train on it, test the meta run
    python examples/mtl/main.py --phase pre --dataset omniglot --out-dir runs/mtl/pre
    python examples/mtl/main.py --phase meta --dataset omniglot --init_weights runs/mtl/pre \
        --out-dir runs/mtl/meta
    python examples/mtl/main.py --phase test_load --eval_weights runs/mtl/meta
    # miniImageNet, the PyTorch project's settings
    python examples/mtl/main.py --phase pre --dataset MiniImageNet --dataset_dir data/mini --gpu 0
    # the TF project's run_experiment.py variables, and its released weights
    python examples/mtl/main.py --phase META_LOAD --SHOT_NUM 1 --META_LR_MIN 0.0001 \
        --META_TRA_DIR data/mini/train --META_VAL_DIR data/mini/val \
        --META_TES_DIR data/mini/test --init_weights logs/download_weights
    python examples/mtl/main.py --phase TEST_LOAD --dataset_dir data/mini \
        --eval_weights logs/download_weights

A thin front-end: the options are mapped onto :class:`metakd.recipes.MTLConfig` (defaults:
``MTLConfig.paper``, the PyTorch project's; the TF project's with a TF variable or TF weights),
the TF variables through :func:`metakd.recipes.mtl_tf.tf_settings`, run with
:func:`metakd.recipes.run`, or, for ``test_load``, read back with
:func:`metakd.recipes.load_run` (an original checkpoint: converted by
:mod:`metakd.interop.mtl`) and tested. README.md lists the mapping and what differs from the
original codes.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from metakd.engine.errors import MetakdError, UsageError
from metakd.interop.mtl import is_original, original_fields
from metakd.recipes import MTLConfig, get_method, load_run, run
from metakd.recipes.mtl_tf import TF_OPTIONS, tf_settings

DATASETS = {"miniimagenet": "miniimagenet", "fc100": "fc100",
            "tieredimagenet": "tieredimagenet", "omniglot": "omniglot"}
# the phases of the TF project's run_experiment.py, and the PyTorch project's names
PHASES = {"pre": "pre", "meta": "meta", "meta_load": "meta", "test_load": "test_load",
          "pre_train": "pre", "meta_train": "meta", "meta_eval": "test_load"}


def say(*parts: Any) -> None:
    """Print a line at once."""
    print(*parts, flush=True)


def _add(p: Any, name: str, **kwargs: Any) -> None:
    """``--name`` (the original's underscore spelling) and its dashed spelling."""
    flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    p.add_argument(*flags, dest=name, **kwargs)


def parser() -> argparse.ArgumentParser:
    """The original options (defaults ``None``: ``MTLConfig.paper``'s), then metakd's."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _add(p, "phase", default="pre", type=str.lower, choices=sorted(PHASES),
         help="pre: pre-train; meta / meta_load: meta-train a pre-trained run (--init_weights);"
              " test_load: test a meta run (--eval_weights)")
    _add(p, "dataset", default="MiniImageNet", type=str.lower, choices=sorted(DATASETS),
         help="data set (case-insensitive); omniglot without --dataset_dir: the bundled copy")
    _add(p, "dataset_dir", default=None, help="the data set's folder (required but for omniglot)")
    _add(p, "model_type", default="ResNet", choices=["ResNet"],
         help="ResNet: mtl_resnet12 (conv4 on Omniglot); a PyTorch max_acc.pth: its "
              "ResNet-25, mtl_resnet25")
    _add(p, "variant", default=None, choices=["mtl_pytorch", "mtl_tf"],
         help="the PyTorch project's settings or the TF (paper) code's (default: mtl_tf with a "
              "TF variable or TF weights, else mtl_pytorch)")
    _add(p, "way", type=int, default=5, help="N classes per task")
    _add(p, "shot", type=int, default=1, help="K support images per class")
    _add(p, "train_query", type=int, help="query images per class in meta-training (15)")
    _add(p, "val_query", type=int, help="query images per class at validation and test (15)")
    _add(p, "max_epoch", type=int, help="meta-training epochs (100)")
    _add(p, "num_batch", type=int, help="meta-iterations per epoch (100)")
    _add(p, "meta_batch", type=int, help="tasks per meta-iteration (1; TF: 2)")
    _add(p, "update_step", type=int, help="inner steps, train and test (100; TF: 20 / 100)")
    _add(p, "base_lr", type=float, help="inner learning rate (0.01)")
    _add(p, "meta_lr1", type=float, help="Adam rate of scale-shift and batch norm (1e-4)")
    _add(p, "meta_lr2", type=float, help="Adam rate of the classifier's init (1e-3)")
    _add(p, "step_size", type=float, help="meta rates x --gamma every this many epochs (10)")
    _add(p, "gamma", type=float, help="meta learning-rate factor (0.5)")
    _add(p, "init_weights", default=None,
         help="meta: the pre-trained (--phase pre) run folder, or an original checkpoint: "
              "max_acc.pth (PyTorch) or weights.npy / its folder (TF; meta_load's default: "
              "logs/download_weights)")
    _add(p, "eval_weights", default=None,
         help="test_load: the meta run folder to test, or an original meta checkpoint (TF: "
              "the folder of weights/ss_weights/fc_weights.npy, default logs/download_weights)")
    _add(p, "pre_max_epoch", type=int, help="pre-training epochs (110)")
    _add(p, "pre_batch_size", type=int, help="pre-training minibatch (128)")
    _add(p, "pre_lr", type=float, help="pre-training learning rate (0.1)")
    _add(p, "pre_gamma", type=float, help="pre-training rate factor (0.2)")
    _add(p, "pre_step_size", type=float, help="pre-training rate x --pre_gamma every this "
                                              "many epochs (30)")
    _add(p, "pre_custom_momentum", type=float,
         help="SGD momentum of pre-training: metakd fixes 0.9 (Nesterov)")
    _add(p, "pre_custom_weight_decay", type=float, help="pre-training weight decay (5e-4)")
    _add(p, "hard_task", action="store_true", help="the hard-task meta-batch")
    _add(p, "seed", type=int, default=0, help="weights, task streams and test episodes")
    _add(p, "gpu", default=None,
         help="GPU ids (CUDA_VISIBLE_DEVICES); given: --device cuda (default: the CPU)")
    tf = p.add_argument_group("the TF project's run_experiment.py variables")
    for o in TF_OPTIONS:
        tf.add_argument(f"--{o.name}", dest=o.name, type=o.type, default=None, help=o.help)
    g = p.add_argument_group("metakd options")
    _add(g, "out_dir", default=None, help="run folder (default: runs/mtl/<phase>_<data>...)")
    _add(g, "max_seconds", type=float, default=None, help="training time budget, then test")
    _add(g, "test_update_step", type=int, help="inner steps at validation and test "
                                               "(default: --update_step)")
    _add(g, "val_tasks", type=int, help="episodes per validation (600)")
    _add(g, "test_tasks", type=int, help="test episodes (600)")
    _add(g, "device", default=None, help="torch device (default: cuda with --gpu, else cpu)")
    return p


def _given(args: argparse.Namespace, pairs: dict[str, str]) -> dict[str, Any]:
    """``{field: value}`` of the options given (not ``None``), by ``{option: field}``."""
    return {f: getattr(args, o) for o, f in pairs.items() if getattr(args, o) is not None}


def _tf(args: argparse.Namespace) -> Any:
    """The TF variables given, as :class:`metakd.recipes.mtl_tf.TFSettings`."""
    return tf_settings({o.name: getattr(args, o.name) for o in TF_OPTIONS})


def config(args: argparse.Namespace) -> MTLConfig:
    """The run's :class:`MTLConfig`: ``MTLConfig.paper``, then the options given."""
    phase = PHASES[args.phase]
    fields = _given(args, {
        "train_query": "queries", "val_query": "test_queries", "meta_batch": "meta_batch_size",
        "base_lr": "base_lr", "meta_lr1": "meta_lr1", "meta_lr2": "meta_lr2",
        "gamma": "lr_gamma", "pre_max_epoch": "pre_epochs", "pre_batch_size": "pre_batch_size",
        "pre_lr": "pre_lr", "pre_gamma": "pre_lr_gamma", "pre_step_size": "pre_lr_step",
        "pre_custom_weight_decay": "pre_weight_decay", "val_tasks": "val_tasks",
        "test_tasks": "test_tasks", "max_seconds": "max_seconds"})
    if args.update_step is not None:  # the PyTorch code uses it at train and test alike
        fields.update(update_step=args.update_step, test_update_step=args.update_step)
    if args.test_update_step is not None:
        fields["test_update_step"] = args.test_update_step
    paper = MTLConfig.paper(args.dataset, ways=args.way, shots=args.shot, variant=args.variant)
    num_batch = args.num_batch or paper.val_every
    if args.num_batch is not None or args.max_epoch is not None:
        max_epoch = args.max_epoch or max(1, paper.steps // num_batch)
        fields.update(steps=max_epoch * num_batch, val_every=num_batch)
    if args.step_size is not None:
        fields["lr_step"] = max(1, round(args.step_size * num_batch))
    if phase == "meta":
        fields.update(pretrained=args.init_weights, hard_tasks=args.hard_task)
    fields.update(args.original)
    tf = {k: v for k, v in _tf(args).fields.items()
          if k not in ("root", "out_dir", "ways", "shots")}  # check_args put those in args
    twice = sorted(set(tf) & set(fields))
    if twice:
        raise UsageError(f"{twice} set both by a TF variable and by another option: give one")
    fields.update(tf)
    return MTLConfig.paper(args.dataset, ways=args.way, shots=args.shot, variant=args.variant,
                           phase=phase, root=args.dataset_dir, seed=args.seed,
                           device=args.device, out_dir=args.out_dir, **fields)


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad combinations in one line, fill derived defaults and print the notes."""
    args.dataset = DATASETS[args.dataset]
    phase = PHASES[args.phase]
    try:
        tf = _tf(args)
    except MetakdError as e:
        p.error(str(e))
    downloaded = "logs/download_weights"
    if args.phase == "meta_load" and not args.init_weights and is_original(downloaded):
        args.init_weights = downloaded  # the TF code's META_LOAD reads it there
    if phase == "test_load" and not args.eval_weights and is_original(downloaded):
        args.eval_weights = downloaded
    if phase == "meta" and not args.init_weights:
        p.error(f"--phase {args.phase} needs --init_weights RUN_DIR, the folder of a "
                "--phase pre run")
    if phase == "test_load" and not args.eval_weights:
        p.error("--phase test_load needs --eval_weights RUN_DIR, the folder of a --phase meta run")
    weights = args.init_weights if phase == "meta" else args.eval_weights \
        if phase == "test_load" else None
    args.original = {}
    if weights and is_original(weights):
        try:  # the file says the backbone, its depth and widths, and the project
            args.original = original_fields(weights, tf.pre_iter)
        except MetakdError as e:
            p.error(f"{weights}: {e}")
        variant = args.original.pop("variant")
        args.variant = args.variant or variant
        if args.phase == "meta_load":  # the TF code's META_LOAD: the pre-trained network only
            args.original["pretrained_parts"] = "body"
    elif tf.pre_iter is not None and phase == "meta":
        p.error(f"PRE_ITER picks weights_<PRE_ITER>.npy of a TF pre-training folder; "
                f"{weights} is a metakd run folder (its best, else last, weights are used)")
    if args.variant is None:
        given_tf = any(getattr(args, o.name) is not None for o in TF_OPTIONS)
        args.variant = "mtl_tf" if given_tf else "mtl_pytorch"
    root = tf.fields.get("root")
    if root and args.dataset_dir and str(root).rstrip("/") != args.dataset_dir.rstrip("/"):
        p.error(f"--dataset_dir {args.dataset_dir} and the TF data folders ({root}) differ")
    args.dataset_dir = args.dataset_dir or root
    args.way, args.shot = tf.fields.get("ways", args.way), tf.fields.get("shots", args.shot)
    args.out_dir = args.out_dir or tf.fields.get("out_dir")
    if args.dataset != "omniglot" and args.dataset_dir is None and (
            phase != "test_load" or args.original):
        p.error(f"--dataset_dir is required for {args.dataset}; only Omniglot is bundled")
    gpu = args.gpu if args.gpu is not None else tf.gpu
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        say(f"note: --gpu {gpu}: CUDA_VISIBLE_DEVICES={gpu}, --device cuda")
    args.device = args.device or ("cuda" if gpu is not None else "cpu")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            p.error(f"--device {args.device}: no CUDA device is available")
    if args.pre_custom_momentum not in (None, 0.9):
        p.error("--pre_custom_momentum: metakd's pre-training SGD has momentum 0.9 (Nesterov) "
                "only")
    if phase != "test_load" and not args.original:
        backbone = "conv4" if args.dataset == "omniglot" else "mtl_resnet12"
        say(f"note: --model_type {args.model_type}: backbone {backbone} (the PyTorch "
            "project's ResNet-25 is mtl_resnet25, which its own checkpoints select)")
    if args.out_dir is None:
        name = f"pre_{args.dataset}_{args.variant}" + (f"_{tf.label}" if tf.label else "")
        if phase == "meta":
            name = (f"meta_{args.dataset}_{args.variant}_{args.way}way_{args.shot}shot"
                    + ("_ht" if args.hard_task else ""))
        args.out_dir = f"runs/mtl/{name}"


def test_original(args: argparse.Namespace) -> dict[str, Any]:
    """``test_load`` of an original meta checkpoint: converted, then tested as a meta run."""
    from metakd.engine import evaluate

    args.init_weights = args.eval_weights
    args.phase = "meta"
    cfg = config(args)
    parts = get_method("mtl").build(cfg)
    assert parts.test_data is not None
    result = evaluate(parts.learner, parts.test_data, device=cfg.device,
                      progress=sys.stderr.isatty())
    say(f"MTL test_load {args.eval_weights} (original {cfg.variant} weights, {cfg.model}): "
        f"test {result}")
    return {"test": result.as_dict(), "out_dir": None}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` (default: the command line), run the phase, print the result line."""
    p = parser()
    args = p.parse_args(argv)
    check_args(p, args)
    if PHASES[args.phase] == "test_load" and args.original:
        return test_original(args)
    if PHASES[args.phase] == "test_load":
        overrides = _given(args, {"test_tasks": "test_tasks", "val_query": "test_queries",
                                  "dataset_dir": "root", "device": "device",
                                  "seed": "seed"})
        if args.update_step is not None or args.test_update_step is not None:
            overrides["test_update_step"] = args.test_update_step or args.update_step
        try:
            loaded = load_run(args.eval_weights, **overrides)
        except (FileNotFoundError, ValueError) as e:
            p.error(f"--eval_weights {args.eval_weights}: {e}")
        if loaded.method != "mtl" or loaded.config.phase != "meta":
            say(f"note: {args.eval_weights} is a {loaded.method} run of phase "
                f"{getattr(loaded.config, 'phase', '?')}, not an MTL meta run")
        result = loaded.evaluate(progress=sys.stderr.isatty())
        say(f"MTL test_load {args.eval_weights} ({loaded.checkpoint.name}): test {result}")
        return {"test": result.as_dict(), "out_dir": str(loaded.folder)}
    try:
        cfg = config(args)
    except UsageError as e:
        p.error(str(e))
    every = _tf(args).checkpoint_every or 100
    try:
        results = run(cfg, progress=sys.stderr.isatty(), resume=True, method="mtl",
                      checkpoint_every=every)
    except ValueError as e:  # e.g. an --init_weights folder that is no phase "pre" run
        p.error(str(e))
    say(f"MTL {cfg.phase} ({cfg.variant}) {cfg.dataset} {cfg.ways}-way {cfg.shots}-shot, "
        f"{results['steps']} {results.get('step_name', 'steps')}, {results['selected']} "
        f"weights: test {results['test_str']}  [{cfg.out_dir}]")
    return {**results, "out_dir": cfg.out_dir}


if __name__ == "__main__":
    main()
