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


class MinibatchStream:
    """An endless, resumable stream of ``(x [B, 4], y [B])``: 3 linearly separable classes.

    Batch ``i`` depends only on ``(seed, i)``, so ``state_dict`` is just the position.
    """

    def __init__(self, batch_size: int = 32, seed: int = 0, features: int = 4,
                 classes: int = 3) -> None:
        self.batch_size, self.seed, self.index = batch_size, seed, 0
        g = torch.Generator().manual_seed(1234)
        self.w_true = torch.randn(features, classes, generator=g)
        self.features = features

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)
        x = torch.randn(self.batch_size, self.features, generator=g)
        return x, (x @ self.w_true).argmax(1)

    def __iter__(self):  # type: ignore[no-untyped-def]
        while True:
            b = self.batch(self.index)
            self.index += 1
            yield b

    def state_dict(self) -> dict[str, int]:
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.index = int(state["index"])


class EpisodeStream(MinibatchStream):
    """An endless, resumable stream of tiny random ``TaskBatch``es (2 tasks, 3-way 1-shot)."""

    def batch(self, i: int) -> TaskBatch:  # type: ignore[override]
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)
        t, n, q = 2, 3, 2
        sy = torch.arange(n).repeat(t, 1)
        qy = torch.arange(n).repeat_interleave(q).repeat(t, 1)
        return TaskBatch(torch.randn(t, n, 1, 2, 2, generator=g), sy,
                         torch.randn(t, n * q, 1, 2, 2, generator=g), qy)


class TwoTermMeta(nn.Module):
    """A stand-in meta-learner whose ``meta_loss`` takes ``step`` and reports two named terms."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.steps: list[int] = []

    def meta_loss(self, batch: TaskBatch, training: bool = True, step: int = 0):  # type: ignore[no-untyped-def]
        if training:
            self.steps.append(step)
        logits = self.lin(batch.query_x.flatten(2))  # [T, N*Q, N]
        ce = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        kd = 0.1 * logits.pow(2).mean()
        acc = (logits.argmax(-1) == batch.query_y).double().mean(1)
        return ce + kd, {"accuracy": float(acc.mean()), "task_accuracy": acc.detach(),
                         "terms": {"ce": ce.detach(), "kd": float(kd.detach())},
                         "class_accuracy": torch.rand(3), "inner_steps": 1}


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
