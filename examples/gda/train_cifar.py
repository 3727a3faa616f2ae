"""CIFAR-100 distillation with the options of GDA's image-classification ``train.py``.

The options are those of ``Logit-Distillation-GDA/Image Classification/train.py``; they are
mapped onto :class:`metakd.recipes.CifarKDConfig` (the ``gda`` recipe: GDA's
``configs/cifar_v0.yaml``) and run with :func:`metakd.recipes.run`:

    # a teacher (no --teacher-pretrained: plain cross-entropy)
    torchrun --nproc-per-node=6 examples/gda/train_cifar.py --data_dir data/cifar \\
        --model resnet56 --output runs/gda/resnet56
    # ResNet-56 -> ResNet-20 with KD + GDA (the weights of GDA's train.sh)
    torchrun --nproc-per-node=6 examples/gda/train_cifar.py --data_dir data/cifar \\
        --model resnet20 --distiller kd --teacher resnet56 \\
        --teacher-pretrained runs/gda/resnet56 --gt-loss-weight 2.0 --kd-loss-weight 1.0 \\
        --fisher-rao-lamda 0.02 --sinkhorn-lamda 0.1 --kd-temperature 4.0

As in the original, ``--batch-size`` is per process (GDA's 6 GPUs x 128 = 768 per step) and
flags left out take the original argparse defaults. ``--teacher-pretrained`` takes a metakd
run folder, a state-dict file, an mdistiller checkpoint or a checkpoint of GDA's own
``train.py`` (timm's ``CheckpointSaver`` file, whose ``args.model`` must be ``--teacher``).
``--model`` and ``--teacher`` take GDA's timm names (``cifar_resnet50``, ``mobilenetv2``,
``shufflenetv1`` ...: :data:`metakd.interop.gda.CIFAR_MODELS`) or metakd's.
"""

import argparse
import json
import os

from metakd.interop.gda import CIFAR_MODELS
from metakd.recipes import CifarKDConfig, run
from metakd.recipes.baseline_options import read_yaml

# cifar_v0.yaml keys this script maps (others are reported and ignored).
YAML_KEYS = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
             "warmup_epochs": "warmup_epochs", "warmup_lr": "warmup_lr", "min_lr": "min_lr",
             "weight_decay": "weight_decay", "momentum": "momentum", "seed": "seed"}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data_dir", required=True, help="folder holding cifar-100-python/")
    p.add_argument("--config", help="a YAML of GDA's configs/cifar_v*.yaml (optional)")
    p.add_argument("--model", default="resnet20", help="the student (trained model)")
    p.add_argument("--teacher", default="resnet56", help="the teacher's architecture")
    p.add_argument("--teacher-pretrained", help="the teacher; omitted: train --model with CE")
    p.add_argument("--distiller", choices=["kd", "dkd"], default="kd")
    p.add_argument("--gt-loss-weight", type=float, default=1.0)
    p.add_argument("--kd-loss-weight", type=float, default=0.5)
    p.add_argument("--fisher-rao-lamda", type=float, default=0.1, help="kd only")
    p.add_argument("--sinkhorn-lamda", type=float, default=0.1)
    p.add_argument("--kd-temperature", type=float, default=1.0)
    p.add_argument("--dkd-alpha", type=float, default=1.0)
    p.add_argument("--dkd-beta", type=float, default=1.0)
    p.add_argument("--dkd-temperature", type=float, default=4.0)
    p.add_argument("--epochs", type=int, help="default: the config's, else 240")
    p.add_argument("--batch-size", type=int, help="per process; default: the config's, else 128")
    p.add_argument("--lr", type=float, help="default: the config's, else 0.2")
    p.add_argument("--seed", type=int, help="default: the config's, else 42")
    p.add_argument("--output", default="runs/gda", help="run folder")
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--max-seconds", type=float, help="training time budget")
    return p.parse_args()


def config(args: argparse.Namespace) -> CifarKDConfig:
    import torch

    values = {}
    if args.config:
        loaded = read_yaml(args.config)
        values = {YAML_KEYS[k]: v for k, v in loaded.items() if k in YAML_KEYS}
        ignored = sorted(k for k in loaded if k not in YAML_KEYS)
        if ignored:
            print(f"{args.config}: ignoring {ignored} (the gda recipe fixes them)")
    given = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
             "seed": args.seed}
    values.update({k: v for k, v in given.items() if v is not None})
    world = int(os.environ.get("WORLD_SIZE", 1))
    values["batch_size"] = int(values.get("batch_size", 128)) * world  # per process -> global
    if args.teacher_pretrained is None:
        loss = {"distill": "ce"}
    elif args.distiller == "kd":
        loss = {"distill": "gda_kd", "temperature": args.kd_temperature,
                "fisher_rao_weight": args.fisher_rao_lamda}
    else:  # GDA's dkd distiller: no Fisher-Rao term, no warm-up
        loss = {"distill": "gda_dkd", "temperature": args.dkd_temperature,
                "dkd_alpha": args.dkd_alpha, "dkd_beta": args.dkd_beta}
    if args.teacher_pretrained is not None:
        loss.update(ce_weight=args.gt_loss_weight, kd_weight=args.kd_loss_weight,
                    sinkhorn_weight=args.sinkhorn_lamda, teacher=args.teacher_pretrained,
                    teacher_arch=CIFAR_MODELS.get(args.teacher, args.teacher))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return CifarKDConfig.paper(
        root=args.data_dir, arch=CIFAR_MODELS.get(args.model, args.model), recipe="gda",
        out_dir=args.output,
        device=device, max_seconds=args.max_seconds,
        **{"seed": 42, **values, **loss},
    )


if __name__ == "__main__":
    from metakd.cli import guarded

    raise SystemExit(guarded(lambda: print(json.dumps(run(config(parse())), indent=2)),
                             "train_cifar.py"))
