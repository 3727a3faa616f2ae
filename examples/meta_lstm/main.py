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
from metakd.recipes.options import add_config_arguments, option_values
from metakd.recipes.originals import META_LSTM

# The config fields the script takes under their own names (the original spells these as
# metakd does, or they are metakd's); the original's other names are META_LSTM's.
FIELDS = ("dataset", "input_size", "hidden_size", "batch_size", "image_size", "grad_clip",
          "bn_momentum", "bn_eps", "val_every", "attention", "attention_softmax",
          "gate_feedback", "scale_grads", "test_tasks", "out_dir", "max_seconds", "device")


def parser() -> argparse.ArgumentParser:
    """The original options (``None``: the paper's value for the shot count), generated from
    the config's fields and the original's names of them, then the script's own."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["train", "test"], default="train")
    add_config_arguments(p, MetaLSTMConfig, only=FIELDS, aliases=META_LSTM)
    p.add_argument("--resume", default=None,
                   help="a run folder (test mode) or an original meta-learner-*.pth.tar (test: "
                        "test it; train: start from it)")
    p.add_argument("--seed", type=int, default=None,
                   help="weights, episodes (train) and the test episodes (default: 0, or the "
                        "run's own seed in test mode)")
    p.add_argument("--cpu", action="store_true", help="same as --device cpu")
    p.add_argument("--pin-mem", "--n-workers", "--log-freq", dest="unused", default=None,
                   help="accepted for the original's scripts; no effect (no data loader workers"
                        " here; the log has every 10th episode)")
    return p


def config(args: argparse.Namespace) -> MetaLSTMConfig:
    """The run's :class:`MetaLSTMConfig`: ``paper(...)``, then the options given."""
    d = MetaLSTMConfig()
    fields = option_values(args, MetaLSTMConfig, META_LSTM, only=FIELDS)
    dataset = str(fields.pop("dataset", d.dataset)).lower()
    ways, shots = fields.pop("ways", d.ways), fields.pop("shots", d.shots)
    if args.cpu:
        fields["device"] = "cpu"
    elif "device" not in fields:
        import torch

        fields["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    if args.resume and not Path(args.resume).is_dir():
        fields["meta_learner"] = args.resume  # an original meta-learner-*.pth.tar
    seed = 0 if args.seed is None else args.seed
    name = "mlal" if fields.get("attention") else "meta_lstm"
    fields.setdefault("out_dir", f"runs/{name}/{dataset}_{shots}s{ways}c_seed{seed}")
    return MetaLSTMConfig.paper(dataset, ways=ways, shots=shots, seed=seed, **fields)


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
