"""MAML on the bundled Omniglot: metakd against learn2learn, same tasks, same time budget.

Both meta-train the same network (``maml_omniglot``: the reference 4 x conv3x3-stride-2 net,
with the demo's 32 filters and Xavier head) from the same initial weights, with the settings
of ``metakd demo`` (5-way 1-shot, 1 query per class in training as in the reference code,
meta-batch 16, second order, one inner step of 0.4 on the support loss summed over the
support set and divided by K as in the reference, Adam 3e-3) on the same stream of training
episodes, each for the same wall-clock budget. Both are then tested on the same 600 held-out
episodes (10 inner steps as in the reference code, 15 queries per class) with the same code
path for the accuracy and its 95% interval.

learn2learn is used as its documentation shows: ``MAML(model, lr)``, then per task
``clone()``, ``adapt(loss)``, and the query loss back-propagated into the shared model.

    .venv/bin/python -m benchmarks.maml_omniglot [--seconds 120]

The last line of output is one JSON object; with ``--out`` it is also written there, the log
next to it (``.log``).
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks._common import Clock, finish, out_option, output, result_log
from metakd.data import Omniglot, TaskBatch, few_shot
from metakd.engine import evaluate, fit, mean_confidence_interval
from metakd.meta import MAMLWrapper
from metakd.meta.accel import compiled
from metakd.nn import create
from metakd.recipes.maml import SHORT_RUN_S

WAYS, SHOTS, META_BATCH = 5, 1, 16
TEST_QUERIES = 15
INNER_LR, TRAIN_STEPS, TEST_STEPS, META_LR = 0.4, 1, 10, 3e-3
MODEL_KWARGS = {"hidden": 32, "head_init": "xavier"}


def reference_inner_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Support cross-entropy summed and divided by K (the reference MAML scale)."""
    return F.cross_entropy(logits, y, reduction="sum") / SHOTS


def train_learn2learn(model: torch.nn.Module, tasks, seconds: float):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import learn2learn as l2l

    maml = l2l.algorithms.MAML(model, lr=INNER_LR, first_order=False)
    opt = torch.optim.Adam(maml.parameters(), lr=META_LR)
    it = iter(tasks)
    steps, n_tasks, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        batch: TaskBatch = next(it)
        opt.zero_grad()
        total = 0.0
        for task in batch:
            learner = maml.clone()
            for _ in range(TRAIN_STEPS):
                learner.adapt(reference_inner_loss(learner(task.support_x), task.support_y))
            loss = F.cross_entropy(learner(task.query_x), task.query_y) / len(batch)
            loss.backward()
            total += float(loss.detach())
        opt.step()
        steps += 1
        n_tasks += len(batch)
    elapsed = time.perf_counter() - t0
    return maml, steps, n_tasks / elapsed


def test_learn2learn(maml, tasks):  # type: ignore[no-untyped-def]
    accs = []
    for batch in tasks:
        for task in batch:
            learner = maml.clone(first_order=True)
            for _ in range(TEST_STEPS):
                learner.adapt(reference_inner_loss(learner(task.support_x), task.support_y))
            with torch.no_grad():
                accs.append(float((learner(task.query_x).argmax(1) == task.query_y).double().mean()))
    return mean_confidence_interval(accs)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=120.0, help="meta-training budget of each")
    p.add_argument("--test-tasks", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--queries", type=int, default=1, help="query images per class in training")
    p.add_argument("--compile", choices=("default", "on", "off", "recipe"), default="default",
                   help="metakd's compile: MAMLWrapper's default ('auto'), on, off, or the "
                   "MAML recipe's rule for the budget (default: default)")
    out_option(p)
    args = p.parse_args(argv)
    with result_log(output(args, None)) as (log, out):
        finish(compare(args, log), out, log)


def compare(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and test both on the same tasks and budget; the JSON-ready result."""
    clock = Clock()

    train = Omniglot(split="train", rotations=(0, 90, 180, 270))
    test = Omniglot(split="test", rotations=(0, 90, 180, 270))
    torch.manual_seed(args.seed)
    init = create("maml_omniglot", num_classes=WAYS, **MODEL_KWARGS)

    def stream():  # the same training episodes for both
        return few_shot(train, WAYS, SHOTS, args.queries, meta_batch_size=META_BATCH,
                        seed=args.seed)

    test_tasks = few_shot(test, WAYS, SHOTS, TEST_QUERIES, meta_batch_size=META_BATCH,
                          num_tasks=args.test_tasks, seed=args.seed + 2)

    # --compile default: MAMLWrapper's default ("auto", compiled at the first meta-batch, the
    # compile counted in the budget); "recipe": the MAML recipe's rule (compile only budgets of
    # at least SHORT_RUN_S).
    compile_: bool | str = {"default": "auto", "on": True, "off": False,
                            "recipe": args.seconds >= SHORT_RUN_S}[args.compile]
    ours = MAMLWrapper(copy.deepcopy(init), inner_lr=INNER_LR, inner_steps=TRAIN_STEPS,
                       test_inner_steps=TEST_STEPS, inner_loss_reduction="sum_over_k",
                       compile=compile_)
    opt = torch.optim.Adam(ours.parameters(), lr=META_LR)
    t0 = time.perf_counter()
    res = fit(ours, stream(), opt, 10**9, max_seconds=args.seconds, progress=False,
              log_every=10**9)
    ours_rate = res.step * META_BATCH / (time.perf_counter() - t0)
    ours_test = evaluate(ours, test_tasks)

    l2l_model, l2l_steps, l2l_rate = train_learn2learn(copy.deepcopy(init), stream(), args.seconds)
    l2l_test = test_learn2learn(l2l_model, test_tasks)

    log(f"metakd      : {res.step:5d} meta-iterations, {ours_rate:6.1f} tasks/s, test {ours_test}")
    log(f"learn2learn : {l2l_steps:5d} meta-iterations, {l2l_rate:6.1f} tasks/s, test {l2l_test}")
    return {
        "benchmark": "maml_omniglot",
        "setting": f"bundled Omniglot, 5-way 1-shot, {args.queries} training queries per class, "
                   f"meta-batch {META_BATCH}, 2nd order, 1 inner step ({TEST_STEPS} at test, 15 test "
                   "queries), Conv-4 with 32 filters, same "
                   "tasks and time budget",
        "budget_s": args.seconds,
        "metakd": {"test_accuracy": ours_test.mean, "ci95": ours_test.ci95,
                   "meta_iterations": res.step, "tasks_per_s": round(ours_rate, 1),
                   "backend": ours.backend_name, "compile": args.compile,
                   "compiled": compiled(ours)},
        "learn2learn": {"test_accuracy": l2l_test.mean, "ci95": l2l_test.ci95,
                        "meta_iterations": l2l_steps, "tasks_per_s": round(l2l_rate, 1)},
        "accuracy_difference": ours_test.mean - l2l_test.mean,
        "test_episodes": args.test_tasks,
        **clock.record(),
    }


if __name__ == "__main__":
    main()
