"""Meta-LSTM (Ravi & Larochelle, ICLR 2017) and MLAL with the options of the original projects.

    # 5-shot 5-class miniImageNet in data/miniImagenet/{train,val,test}/<class>/*.jpg
    python examples/meta_lstm/main.py --mode train --data-root data/miniImagenet \
        --n-shot 5 --n-eval 15 --n-class 5 --episode 50000 --episode-val 100 --epoch 8 \
        --batch-size 25 --image-size 84 --lr 1e-3 --grad-clip 0.25 --bn-momentum 0.95 \
        --bn-eps 1e-3 --out-dir runs/meta_lstm/5s5c
    python examples/meta_lstm/main.py --mode test --resume runs/meta_lstm/5s5c --seed 719
    # a meta-learner saved by markdtw's code (meta-learner-<episode>.pth.tar)
    python examples/meta_lstm/main.py --mode test --data-root data/miniImagenet \
        --resume logs-719/ckpts/meta-learner-42000.pth.tar --seed 719
    # MLAL (attention, without its query-label leak)
    python examples/meta_lstm/main.py --mode train --data-root data/miniImagenet --attention
    # a few minutes on the bundled Omniglot
    python examples/meta_lstm/main.py --mode train --dataset omniglot --n-shot 1 --episode 300

A thin front-end: the options are mapped onto :class:`metakd.recipes.MetaLSTMConfig`
(defaults: ``MetaLSTMConfig.paper`` for the shot count), trained with
:func:`metakd.recipes.run` (the best validation checkpoint is kept), or, with ``--mode test``,
read back with :func:`metakd.recipes.load_run` and tested; a ``--resume`` file of the original
code (``meta-learner-*.pth.tar``) is converted (:mod:`metakd.interop.meta_lstm`) and tested, or,
with ``--mode train``, trained further. ``train_5s_5c.sh`` and ``eval_5s_5c.sh`` are the
original's scripts. ``metakd train meta_lstm`` takes the same options. README.md lists what
differs from the original codes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from metakd.recipes import MetaLSTMConfig, get_method, load_run, run


def parser() -> argparse.ArgumentParser:
    """The original options (``None``: the paper's value for the shot count), then metakd's."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["train", "test"], default="train")
    p.add_argument("--data-root", default=None,
                   help="train/val/test/<class>/*.jpg folder (omniglot: optional)")
    p.add_argument("--dataset", "--data", default="miniimagenet",
                   help="miniimagenet (folder layout), omniglot, cub, ... (default miniimagenet)")
    p.add_argument("--n-shot", type=int, default=5, help="K support images per class")
    p.add_argument("--n-eval", type=int, help="query images per class (15)")
    p.add_argument("--n-class", type=int, default=5, help="N classes per episode")
    p.add_argument("--input-size", type=int, help="meta-learner input (4)")
    p.add_argument("--hidden-size", type=int, help="meta-learner LSTM units (20; --attention 4)")
    p.add_argument("--lr", type=float, help="Adam learning rate (1e-3)")
    p.add_argument("--episode", type=int, help="training episodes (1-shot 75000, 5-shot 50000)")
    p.add_argument("--episode-val", type=int, help="validation episodes (100)")
    p.add_argument("--epoch", type=int, help="passes over the support set (1-shot 12, 5-shot 8)")
    p.add_argument("--batch-size", type=int, help="support minibatch (1-shot 5, 5-shot 25)")
    p.add_argument("--image-size", type=int, help="image side (84; omniglot 28)")
    p.add_argument("--grad-clip", type=float, help="meta-gradient norm clip (0.25)")
    p.add_argument("--bn-momentum", type=float, help="learner BN momentum (0.9 / 0.95)")
    p.add_argument("--bn-eps", type=float, help="learner BN eps (1e-3)")
    p.add_argument("--resume", default=None,
                   help="a run folder (test mode) or an original meta-learner-*.pth.tar (test: "
                        "test it; train: start from it)")
    p.add_argument("--seed", type=int, default=None,
                   help="weights, episodes (train) and the test episodes (default: 0, or the "
                        "run's own seed in test mode)")
    p.add_argument("--save", default=None, help="the run folder (same as --out-dir)")
    p.add_argument("--cpu", action="store_true", help="same as --device cpu")
    p.add_argument("--val-freq", "--val-every", dest="val_every", type=int,
                   help="validate every this many episodes (1000)")
    p.add_argument("--pin-mem", "--n-workers", "--log-freq", dest="unused", default=None,
                   help="accepted for the original's scripts; no effect (no data loader workers"
                        " here; the log has every 10th episode)")
    p.add_argument("--attention", action="store_true",
                   help="MLAL: attention in the meta-learner and in front of the learner")
    g = p.add_argument_group("metakd options")
    g.add_argument("--attention-softmax", action="store_true",
                   help="apply the softmax MLAL defines but does not apply")
    g.add_argument("--gate-feedback", choices=["logit", "sigmoid"],
                   help="previous gates fed back pre-sigmoid (the code) or post (the paper)")
    g.add_argument("--no-scale-grads", action="store_true",
                   help="do not divide the gradients by the batch size again")
    g.add_argument("--test-tasks", type=int,
                   help="test episodes (default: --episode-val in test mode, else 600)")
    g.add_argument("--out-dir", default=None, help="run folder (default runs/meta_lstm/...)")
    g.add_argument("--max-seconds", type=float, help="training time budget, then test")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    return p


def config(args: argparse.Namespace) -> MetaLSTMConfig:
    """The run's :class:`MetaLSTMConfig`: ``paper(...)``, then the options given."""
    pairs = {"n_eval": "queries", "input_size": "input_size", "hidden_size": "hidden_size",
             "lr": "meta_lr", "episode": "steps", "episode_val": "val_tasks",
             "epoch": "epochs", "batch_size": "batch_size", "image_size": "image_size",
             "grad_clip": "grad_clip", "bn_momentum": "bn_momentum", "bn_eps": "bn_eps",
             "gate_feedback": "gate_feedback", "val_every": "val_every",
             "test_tasks": "test_tasks", "max_seconds": "max_seconds"}
    fields: dict[str, Any] = {f: getattr(args, o) for o, f in pairs.items()
                              if getattr(args, o) is not None}
    if args.n_eval is not None:
        fields["test_queries"] = args.n_eval
    if args.attention:
        fields["attention"] = True
    if args.attention_softmax:
        fields["attention_softmax"] = True
    if args.no_scale_grads:
        fields["scale_grads"] = False
    if args.cpu:
        fields["device"] = "cpu"
    elif args.device is None:
        import torch

        fields["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        fields["device"] = args.device
    if args.resume and not Path(args.resume).is_dir():
        fields["meta_learner"] = args.resume  # an original meta-learner-*.pth.tar
    dataset = args.dataset.lower()
    seed = 0 if args.seed is None else args.seed
    name = "mlal" if args.attention else "meta_lstm"
    fields.setdefault("out_dir", args.out_dir or args.save or
                      f"runs/{name}/{dataset}_{args.n_shot}s{args.n_class}c_seed{seed}")
    return MetaLSTMConfig.paper(dataset, ways=args.n_class, shots=args.n_shot,
                                root=args.data_root, seed=seed, **fields)


def test(args: argparse.Namespace) -> dict[str, Any]:
    """``--mode test``: a run folder read back, or an original file converted; then tested on
    ``--test-tasks`` (default ``--episode-val``, as the original) episodes of seed ``--seed``."""
    from metakd.engine import evaluate

    tasks = args.test_tasks or args.episode_val
    if Path(args.resume).is_dir():
        overrides = {k: v for k, v in {"test_tasks": tasks, "root": args.data_root,
                                       "device": "cpu" if args.cpu else args.device,
                                       "seed": args.seed}.items() if v is not None}
        r = load_run(args.resume, **overrides)
        res, what, seed = r.evaluate(progress=True), r.checkpoint.name, r.config.seed
    else:
        args.test_tasks = tasks
        cfg = config(args)
        parts = get_method("meta_lstm").build(cfg)
        assert parts.test_data is not None
        res = evaluate(parts.learner, parts.test_data, device=cfg.device, progress=True)
        what, seed = "original meta-learner", cfg.seed
    print(f"Meta-LSTM test {args.resume} ({what}), seed {seed}: {res}", flush=True)
    return {"test": res.as_dict(values=True)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    if args.mode == "test":
        if not args.resume:
            parser().error("--mode test needs --resume RUN_DIR (a trained run folder) or FILE "
                           "(an original meta-learner-*.pth.tar)")
        if not Path(args.resume).exists():
            parser().error(f"--resume {args.resume} does not exist")
        return test(args)
    cfg = config(args)
    print(f"Meta-LSTM{' + attention (MLAL)' if cfg.attention else ''} {cfg.dataset} "
          f"{cfg.ways}-way {cfg.shots}-shot, {cfg.steps} episodes, {cfg.epochs} epochs x "
          f"batch {cfg.batch_size} -> {cfg.out_dir}", flush=True)
    result = run(cfg, progress=True)
    print(f"test {result['test_str']}" if "test_str" in result else f"result {result}",
          flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
