"""A MAMLWrapper on any backend survives copy.deepcopy and a pickle round trip.

The copy must give the same meta-gradient as the original on a fixed batch, into its own
parameters (not the original's).
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

from metakd.data import TaskBatch
from metakd.meta import MAMLWrapper
from metakd.nn import create

BACKENDS = [
    pytest.param("learn2learn", marks=pytest.mark.learn2learn),
    "higher",
    "func",
]


def _batch() -> TaskBatch:
    g = torch.Generator().manual_seed(3)
    y = torch.arange(5)
    return TaskBatch(torch.randn(2, 5, 1, 28, 28, generator=g), y.repeat(2, 1),
                     torch.randn(2, 10, 1, 28, 28, generator=g),
                     y.repeat_interleave(2).repeat(2, 1))


def _meta_gradient(maml: MAMLWrapper, batch: TaskBatch) -> list[torch.Tensor]:
    maml.zero_grad(set_to_none=True)
    loss, _ = maml.meta_loss(batch, step=0)
    loss.backward()
    return [p.grad.clone() for p in maml.parameters() if p.requires_grad]  # type: ignore[union-attr]


def _round_trip(maml: MAMLWrapper) -> MAMLWrapper:
    buf = io.BytesIO()
    pickle.dump(maml, buf)
    buf.seek(0)
    copied: MAMLWrapper = pickle.load(buf)
    return copied


@pytest.mark.parametrize("learn_inner_lr", [False, True], ids=["sgd", "meta_sgd"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_copies_give_the_same_meta_gradient(backend: str, learn_inner_lr: bool) -> None:
    torch.manual_seed(0)
    maml = MAMLWrapper(create("maml_omniglot", num_classes=5, hidden=8), inner_lr=0.4,
                       inner_steps=2, backend=backend, learn_inner_lr=learn_inner_lr)
    batch = _batch()
    want = _meta_gradient(maml, batch)
    for copied in (copy.deepcopy(maml), _round_trip(maml)):
        assert copied.backend_name == backend
        maml.zero_grad(set_to_none=True)
        got = _meta_gradient(copied, batch)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)
        assert all(p.grad is None for p in maml.parameters())  # the copy's own parameters


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_copy_trains_independently(backend: str) -> None:
    torch.manual_seed(0)
    maml = MAMLWrapper(create("maml_omniglot", num_classes=5, hidden=8), inner_lr=0.4,
                       backend=backend)
    copied = copy.deepcopy(maml)
    before = [p.detach().clone() for p in maml.parameters()]
    opt = torch.optim.SGD(copied.parameters(), lr=0.5)
    _meta_gradient(copied, _batch())
    opt.step()
    assert all(torch.equal(b, p) for b, p in zip(before, maml.parameters()))
    assert not all(torch.equal(b, p) for b, p in zip(before, copied.parameters()))
    # the copy adapts its own model: its learner's parameters follow the copy's weights
    learner = copied.adapt(_batch().support_x[0], _batch().support_y[0], steps=0)
    for name, p in copied.model.named_parameters():
        torch.testing.assert_close(learner.params[name], p)
