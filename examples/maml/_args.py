"""Command-line options of the MAML-Pytorch port, mapped onto :class:`metakd.recipes.MAMLConfig`.

The option names are those of dragen1860/MAML-Pytorch so its users feel at home, and
``--update_lr`` means what it means there: the step on the *mean* support cross-entropy
(``--inner_loss mean``, the default). ``--inner_loss sum_over_k`` takes it on the reference's
scale instead (cbfinn/maml: support cross-entropy summed and divided by K, N times the mean).
Without ``--update_lr`` the step is the MAML paper's on either scale. The other defaults are
the paper's, and the port's defects are not reproduced (see README.md).
"""

from __future__ import annotations

import argparse

from metakd.recipes import MAMLConfig


def parser(dataset: str, description: str) -> argparse.ArgumentParser:
    ref = MAMLConfig.paper(dataset)
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", default=None, help="data set folder" + (
        " (default: the bundled Omniglot subset)" if dataset == "omniglot" else ""))
    p.add_argument("--n_way", type=int, default=5, help="N classes per task")
    p.add_argument("--k_spt", type=int, default=1, help="K support images per class")
    p.add_argument("--k_qry", type=int, default=15, help="query images per class")
    p.add_argument("--imgsz", type=int, default=28 if dataset == "omniglot" else 84)
    p.add_argument("--task_num", type=int, default=None,
                   help=f"meta-batch size (default: paper, {ref.meta_batch_size} for 5-way)")
    p.add_argument("--meta_lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--update_lr", type=float, default=None,
                   help=f"inner learning rate on the --inner_loss scale (default: the paper's "
                        f"step: {ref.inner_lr} on sum_over_k, {ref.inner_lr} x N on mean)")
    p.add_argument("--update_step", type=int, default=None,
                   help=f"inner steps in meta-training (default: paper, {ref.inner_steps})")
    p.add_argument("--update_step_test", type=int, default=None,
                   help=f"inner steps at test (default: paper, {ref.test_inner_steps})")
    p.add_argument("--epoch", type=int, default=60_000, help="meta-iterations")
    p.add_argument("--first_order", action="store_true", help="first-order MAML")
    p.add_argument("--inner_loss", choices=["mean", "sum_over_k"], default="mean",
                   help="support loss scale --update_lr acts on: mean (MAML-Pytorch's) or "
                        "sum_over_k (the reference's: sum over the support set / K)")
    p.add_argument("--test_tasks", type=int, default=600, help="test episodes")
    p.add_argument("--out", default=f"runs/maml-{dataset}", help="run folder")
    p.add_argument("--max_seconds", type=float, default=None, help="meta-training time budget")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the meta-gradient (auto: from the first meta-batch unless "
                        "--max_seconds is under 10 minutes)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    return p


def config(dataset: str, args: argparse.Namespace) -> MAMLConfig:
    inner_lr = args.update_lr
    if inner_lr is None and args.inner_loss == "mean":  # the paper's step, on the mean scale
        inner_lr = MAMLConfig.paper(dataset, ways=args.n_way).inner_lr * args.n_way
    overrides = {k: v for k, v in {
        "meta_batch_size": args.task_num, "inner_lr": inner_lr,
        "inner_steps": args.update_step, "test_inner_steps": args.update_step_test,
    }.items() if v is not None}
    return MAMLConfig.paper(
        dataset, ways=args.n_way, shots=args.k_spt, root=args.root, queries=args.k_qry,
        image_size=args.imgsz, meta_lr=args.meta_lr, steps=args.epoch,
        first_order=args.first_order, inner_loss_reduction=args.inner_loss,
        test_tasks=args.test_tasks, out_dir=args.out, max_seconds=args.max_seconds,
        device=args.device, seed=args.seed, compile=args.compile, **overrides,
    )


def describe_inner_loss(cfg: MAMLConfig) -> str:
    """The line the scripts print: which support loss scale runs, and the step in both."""
    n = cfg.ways
    if cfg.inner_loss_reduction == "mean":
        return (f"inner loss: mean (MAML-Pytorch's scale): --update_lr {cfg.inner_lr:g} on the "
                f"mean support cross-entropy = {cfg.inner_lr / n:g} on the reference's sum/K "
                f"scale (--inner_loss sum_over_k)")
    return (f"inner loss: sum_over_k (the reference's scale): --update_lr {cfg.inner_lr:g} on "
            f"the support cross-entropy summed and divided by K = {cfg.inner_lr * n:g} on "
            f"MAML-Pytorch's mean scale (--inner_loss mean)")
