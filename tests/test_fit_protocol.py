"""fit() trains every learner on its own objective: the training_loss protocol and meta_loss.

A Distiller passed to ``fit`` without ``loss_fn`` must train on cross-entropy *and* its
distillation term; a plain ``nn.Module`` on cross-entropy; the episodic learners (MAML,
PMAML, Meta-LSTM, Meta-Baseline) on their ``meta_loss``; an explicit ``loss_fn`` wins.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metakd import fit
from metakd.data import TaskBatch
from metakd.distill import PMAML, Distiller, preset
from metakd.engine import HasTrainingLoss, evaluate, supervised_loss
from metakd.engine.objective import Objective
from metakd.meta import MAMLWrapper, MetaBaseline, MetaLSTM
from metakd.nn import create


def _minibatch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)


def _episodes(dim: int | None = 4, tasks: int = 2) -> TaskBatch:
    g = torch.Generator().manual_seed(2)
    shape = (dim,) if dim is not None else (1, 28, 28)
    y = torch.arange(5)
    return TaskBatch(torch.randn(tasks, 5, *shape, generator=g), y.repeat(tasks, 1),
                     torch.randn(tasks, 10, *shape, generator=g),
                     y.repeat_interleave(2).repeat(tasks, 1))


def _one_step_gradient(learner: nn.Module, params: list[nn.Parameter], batch: Any,
                       **kwargs: Any) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """The gradient fit() descended on in one plain SGD step (lr 1), and its training record."""
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=1.0)
    r = fit(learner, itertools.repeat(batch), opt, 1, progress=False, tensorboard=False,
            log_every=1, **kwargs)
    return [b - p.detach() for b, p in zip(before, params)], r.history[0]


def _hand_gradient(student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   kd: bool) -> list[torch.Tensor]:
    """mdistiller's KD by hand: 0.1 CE + 0.9 T^2 KL_batchmean(teacher/T || student/T), T = 4."""
    s = student(x)
    loss = 0.1 * F.cross_entropy(s, y) if kd else F.cross_entropy(s, y)
    if kd:
        with torch.no_grad():
            t = teacher(x)
        kl = F.kl_div(F.log_softmax(s / 4, -1), F.softmax(t / 4, -1), reduction="batchmean")
        loss = loss + 0.9 * 16 * kl
    return list(torch.autograd.grad(loss, list(student.parameters())))


def test_fit_trains_a_distiller_on_its_distillation_loss_without_loss_fn() -> None:
    x, y = _minibatch()
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    expected = _hand_gradient(copy.deepcopy(student), teacher, x, y, kd=True)
    plain_ce = _hand_gradient(copy.deepcopy(student), teacher, x, y, kd=False)
    d = Distiller(student, teacher, "mdistiller_kd")
    assert isinstance(d, HasTrainingLoss)
    got, record = _one_step_gradient(d, list(d.parameters()), (x, y))
    for g, e, c in zip(got, expected, plain_ce):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-5)
        assert not torch.allclose(g, c, atol=1e-4)  # the KD term is in the gradient
    assert {"loss/ce", "loss/kd"} <= set(record)


def test_the_teachers_logits_change_the_gradient() -> None:
    x, y = _minibatch()
    student = nn.Linear(4, 3)
    grads = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        d = Distiller(copy.deepcopy(student), nn.Linear(4, 3), "mdistiller_kd")
        grads.append(_one_step_gradient(d, list(d.parameters()), (x, y))[0])
    assert not torch.allclose(grads[0][0], grads[1][0], atol=1e-4)


def test_explicit_loss_fn_wins_over_the_learners_own() -> None:
    x, y = _minibatch()
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    expected = _hand_gradient(copy.deepcopy(student), teacher, x, y, kd=False)
    d = Distiller(student, teacher, "mdistiller_kd")
    got, record = _one_step_gradient(d, list(d.parameters()), (x, y), loss_fn=supervised_loss)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-5)
    assert "loss/kd" not in record


def test_a_plain_module_still_trains_on_cross_entropy() -> None:
    x, y = _minibatch()
    model = nn.Linear(4, 3)
    expected = _hand_gradient(copy.deepcopy(model), model, x, y, kd=False)
    assert not isinstance(model, HasTrainingLoss)
    got, record = _one_step_gradient(model, list(model.parameters()), (x, y))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-5)
    assert [k for k in record if k.startswith("loss/")] == ["loss/ce"]


def test_validation_of_a_distiller_scores_the_student() -> None:
    x, y = _minibatch()
    d = Distiller(nn.Linear(4, 3), nn.Linear(4, 3), "mdistiller_kd")
    r = evaluate(d, [(x, y)])
    acc = (d.student(x).argmax(-1) == y).double().mean().item()
    assert r.mean == pytest.approx(acc)
    assert d.training  # evaluate restores the mode


def _episodic_learners() -> dict[str, tuple[Any, set[str]]]:
    torch.manual_seed(0)
    teacher = MAMLWrapper(nn.Linear(4, 5), inner_lr=0.4)
    enc = lambda: nn.Sequential(nn.Flatten(), nn.Linear(4, 6))  # noqa: E731
    return {
        "maml": (MAMLWrapper(nn.Linear(4, 5), inner_lr=0.4, backend="func"), {"ce"}),
        "pmaml": (PMAML(nn.Linear(4, 5), teacher, inner_lr=0.4, schedule="every",
                        backend="func"), {"ce", "kd"}),
        "meta_baseline": (MetaBaseline(enc(), teacher=MetaBaseline(enc()),
                                       loss=preset("gda_fewshot_kd")),
                          {"ce", "kd", "fisher_rao", "sinkhorn"}),
    }


@pytest.mark.parametrize("name", ["maml", "pmaml", "meta_baseline"])
def test_episodic_learners_train_on_their_meta_loss(name: str) -> None:
    learner, terms = _episodic_learners()[name]
    batch = _episodes()
    assert not isinstance(learner, HasTrainingLoss)
    want, _ = copy.deepcopy(learner).meta_loss(batch, training=True, step=0)
    got, metrics = Objective(learner, None, training=True)(batch, 0)
    torch.testing.assert_close(got.detach(), want.detach())
    assert set(metrics["terms"]) == terms
    params = [p for p in learner.parameters() if p.requires_grad]
    _, record = _one_step_gradient(learner, params, batch)
    assert {f"loss/{t}" for t in terms} <= set(record)


def test_meta_lstm_trains_on_its_meta_loss() -> None:
    net = create("conv4", in_channels=1, hidden=4, bn_mode="running")
    meta = MetaLSTM(net, epochs=1, batch_size=5)
    batch = _episodes(dim=None, tasks=1)
    params = [p for p in meta.parameters() if p.requires_grad]
    grads, record = _one_step_gradient(meta, params, batch)
    assert record["loss/ce"] > 0 and any(g.abs().sum() > 0 for g in grads)


class _Both(nn.Module):
    """A learner with a training_loss and a meta_loss: training takes the first, evaluation
    the second."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.calls: list[str] = []

    def training_loss(self, batch: Any, step: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
        self.calls.append(f"training_loss {self.training}")
        return self.w * 2, {"terms": {"own": 2.0},
                            "task_accuracy": torch.ones(len(batch))}

    def meta_loss(self, batch: TaskBatch, training: bool = True,
                  step: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
        self.calls.append(f"meta_loss {training}")
        return self.w * 3, {"task_accuracy": torch.zeros(len(batch))}


def test_training_loss_is_preferred_in_training_and_meta_loss_in_evaluation() -> None:
    learner = _Both()
    batch = _episodes()
    opt = torch.optim.SGD(learner.parameters(), lr=0.1)
    fit(learner, itertools.repeat(batch), opt, 1, progress=False, tensorboard=False)
    assert learner.calls == ["training_loss True"]
    learner.calls.clear()
    assert evaluate(learner, [batch]).mean == 0.0
    assert learner.calls == ["meta_loss False"]


def test_evaluation_falls_back_on_training_loss_without_meta_loss() -> None:
    class Own(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def training_loss(self, batch: Any, step: int = 0) -> tuple[torch.Tensor, Any]:
            acc = torch.full((len(batch),), 0.5 if self.training else 0.25)
            return self.w * 1.0, {"task_accuracy": acc}

    assert evaluate(Own(), [_episodes()]).mean == 0.25  # called in eval mode


def test_a_module_without_any_objective_for_episodes_says_what_to_do() -> None:
    with pytest.raises(TypeError, match="training_loss"):
        Objective(nn.Linear(4, 5), None, training=True)(_episodes(), 0)
