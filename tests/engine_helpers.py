"""A tiny, real meta-learner for engine tests: one-step MAML on a linear classifier."""

from __future__ import annotations

import math
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

from metakd.data import TaskBatch


class LinearMAML(nn.Module):
    """Second-order one-step MAML on ``logits = x.flatten() @ W.T + b`` (hand-written)."""

    def __init__(self, features: int, ways: int, inner_lr: float = 0.5) -> None:
        super().__init__()
        self.lin = nn.Linear(features, ways)
        self.inner_lr = inner_lr
        self.nan_at: int | None = None
        self.calls = 0

    def meta_loss(self, batch: TaskBatch, training: bool = True):  # type: ignore[no-untyped-def]
        self.calls += 1
        losses, accs = [], []
        for t in batch:
            w, b = self.lin.weight, self.lin.bias
            xs, xq = t.support_x.flatten(1), t.query_x.flatten(1)
            inner = F.cross_entropy(xs @ w.T + b, t.support_y)
            gw, gb = torch.autograd.grad(inner, (w, b), create_graph=training)
            w2, b2 = w - self.inner_lr * gw, b - self.inner_lr * gb
            logits = xq @ w2.T + b2
            losses.append(F.cross_entropy(logits, t.query_y))
            accs.append((logits.argmax(1) == t.query_y).double().mean())
        loss = torch.stack(losses).mean()
        if self.nan_at is not None and self.calls >= self.nan_at and training:
            loss = loss * math.nan
        acc = torch.stack(accs)
        return loss, {"accuracy": float(acc.mean()), "task_accuracy": acc.detach()}


def build(seed: int = 0):  # type: ignore[no-untyped-def]
    """The objects of a deterministic little run on the bundled Omniglot (8x8 images)."""
    from metakd.data import Omniglot, few_shot

    torch.manual_seed(seed)
    train = few_shot(Omniglot(split="train"), 3, 1, 2, meta_batch_size=4, image_size=8,
                     seed=seed, progress=False)
    val = few_shot(Omniglot(split="test"), 3, 1, 2, meta_batch_size=4, num_tasks=8,
                   image_size=8, seed=1, progress=False)
    model = LinearMAML(64, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
    return model, train, val, opt, sched


if __name__ == "__main__":  # a run that a test kills with SIGKILL
    import time

    from metakd.engine import fit

    out, steps = sys.argv[1], int(sys.argv[2])
    model, train, val, opt, sched = build()

    def slow(m, b):  # type: ignore[no-untyped-def]
        time.sleep(0.15)
        return m.meta_loss(b)

    fit(model, train, opt, steps, val_tasks=val, val_every=4, scheduler=sched, out_dir=out,
        checkpoint_every=1, progress=False, loss_fn=slow, tensorboard=False)
    os._exit(0)
