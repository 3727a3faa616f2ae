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
from metakd.recipes.options import add_aliases, add_config_arguments, option_values
from metakd.recipes.originals import MTL_PYTORCH

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
    """The original options (those that are one config field generated from
    :data:`metakd.recipes.originals.MTL_PYTORCH`; ``None``: ``MTLConfig.paper``'s), the TF
    project's variables, then metakd's."""
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
    add_config_arguments(p, MTLConfig, only=("variant",))
    add_aliases(p, MTLConfig, MTL_PYTORCH, dashed=True)
    _add(p, "max_epoch", type=int, help="meta-training epochs (100)")
    _add(p, "num_batch", type=int, help="meta-iterations per epoch (100)")
    _add(p, "step_size", type=float, help="meta rates x --gamma every this many epochs (10)")
    _add(p, "init_weights", default=None,
         help="meta: the pre-trained (--phase pre) run folder, or an original checkpoint: "
              "max_acc.pth (PyTorch) or weights.npy / its folder (TF; meta_load's default: "
              "logs/download_weights)")
    _add(p, "eval_weights", default=None,
         help="test_load: the meta run folder to test, or an original meta checkpoint (TF: "
              "the folder of weights/ss_weights/fc_weights.npy, default logs/download_weights)")
    _add(p, "pre_custom_momentum", type=float,
         help="SGD momentum of pre-training: metakd fixes 0.9 (Nesterov)")
    _add(p, "hard_task", action="store_true", help="the hard-task meta-batch (phase meta)")
    _add(p, "gpu", default=None,
         help="GPU ids (CUDA_VISIBLE_DEVICES); given: --device cuda (default: the CPU)")
    tf = p.add_argument_group("the TF project's run_experiment.py variables")
    for o in TF_OPTIONS:
        tf.add_argument(f"--{o.name}", dest=o.name, type=o.type, default=None, help=o.help)
    return p


def _tf(args: argparse.Namespace) -> Any:
    """The TF variables given, as :class:`metakd.recipes.mtl_tf.TFSettings`."""
    return tf_settings({o.name: getattr(args, o.name) for o in TF_OPTIONS})


def config(args: argparse.Namespace) -> MTLConfig:
    """The run's :class:`MTLConfig`: ``MTLConfig.paper``, then the options given."""
    phase = PHASES[args.phase]
    fields = option_values(args, aliases=MTL_PYTORCH)
    ways, shots = fields.pop("ways"), fields.pop("shots")
    paper = MTLConfig.paper(args.dataset, ways=ways, shots=shots, variant=args.variant)
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
    return MTLConfig.paper(args.dataset, ways=ways, shots=shots, variant=args.variant,
                           phase=phase, root=args.dataset_dir, **fields)


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
        overrides = {k: v for k, v in option_values(args, aliases=MTL_PYTORCH).items()
                     if k in ("test_tasks", "test_queries", "device", "seed", "test_update_step")}
        if args.dataset_dir is not None:
            overrides["root"] = args.dataset_dir
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
