"""``compile=True`` computes the eager meta-gradients (slow: each case compiles for a minute)."""

from __future__ import annotations

import copy

import pytest
import torch

from metakd.data import TaskBatch
from metakd.meta import MAMLWrapper
from metakd.nn import create

# Tiny tensors: one intra-op thread (see conftest.one_intra_op_thread).
pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _batch() -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4)
    return TaskBatch(
        torch.randn(3, 4, 1, 16, 16, generator=g, dtype=torch.float64),
        y.repeat(3, 1),
        torch.randn(3, 8, 1, 16, 16, generator=g, dtype=torch.float64),
        y.repeat_interleave(2).repeat(3, 1),
    )


def test_compile_argument_checks() -> None:
    net = create("conv4", in_channels=1, hidden=4, num_classes=4)
    with pytest.raises(ValueError, match="compile"):
        MAMLWrapper(net, 0.1, 1, backend="higher", compile=True)
    with pytest.raises(ValueError, match="removed"):
        MAMLWrapper(net, 0.1, 1, compile="auto")  # type: ignore[arg-type]
    per_step = create("conv4", in_channels=1, hidden=4, num_classes=4, bn_mode="per_step",
                      bn_steps=2)
    with pytest.raises(ValueError, match="per-step"):
        MAMLWrapper(per_step, 0.1, 1, compile=True).meta_loss(_batch().to("cpu", torch.float32))


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "first_order", "learn_inner_lr", "workers"),
                         [("func", False, False, 2), ("func", True, True, 1),
                          ("vmap", False, True, 1)])
def test_compiled_meta_gradients_match_eager(
    backend: str, first_order: bool, learn_inner_lr: bool, workers: int
) -> None:
    torch.manual_seed(0)
    net = create("conv4", in_channels=1, hidden=8, num_classes=4).double()
    batch = _batch()
    grads = []
    for compiled in (False, True):
        model = copy.deepcopy(net)
        extra = {"vmap_chunk": 2} if backend == "vmap" else {}
        maml = MAMLWrapper(model, 0.1, 2, first_order=first_order, learn_inner_lr=learn_inner_lr,
                           workers=workers, compile=compiled, backend=backend, **extra)
        for _ in range(2):  # the second batch reuses the compiled function
            maml.zero_grad()
            loss, _ = maml.meta_loss(batch)
            loss.backward()
        grads.append([p.grad for p in maml.parameters()])
    for eager, comp in zip(*grads):
        torch.testing.assert_close(comp, eager, rtol=0, atol=1e-10)
