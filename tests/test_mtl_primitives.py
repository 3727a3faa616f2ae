"""Meta-Transfer Learning primitives (Sun et al., CVPR 2019): the ``mtl_tf``/``mtl_pytorch``
presets and the hard-task meta-batch (spec ``meta-learning-spec.md`` §2.2, §2.3, §2.6)."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
from torch import nn

from metakd.data import TaskBatch, few_shot
from metakd.data.base import ImageArray
from metakd.engine import FitState
from metakd.meta import HardTaskSampler, MAMLWrapper
from metakd.nn import MTLResNet12, ScaleShiftConv2d, mtl_preset

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # tiny tensors, busy CPU


class Tiny(nn.Module):
    """A stem conv with a bias, a bias-free 3×3 conv, a 1×1 shortcut, both BN kinds, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.down = nn.Conv2d(4, 6, 1, bias=False)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.stem(x)))
        h = torch.relu(self.bn2(self.conv(h)) + self.down(h))
        return self.head(h.mean((2, 3)))


# Written out from the spec's table (§2.3): TF trains SS (scale; shift where a bias exists) of
# the k×k convs and the FC; PyTorch also scales the 1×1 convs and trains the BN affine.
TINY_TRAINED = {
    "mtl_tf": ["conv.scale", "head.bias", "head.weight", "stem.scale", "stem.shift"],
    "mtl_pytorch": ["bn1.bias", "bn1.weight", "bn2.bias", "bn2.weight", "conv.scale",
                    "down.scale", "head.bias", "head.weight", "stem.scale", "stem.shift"],
}


def _small_resnet(seed: int = 0) -> MTLResNet12:
    torch.manual_seed(seed)
    net = MTLResNet12((4, 4, 8, 8), in_channels=1, num_classes=5).double()
    with torch.no_grad():  # non-trivial "pre-trained" biases and BN β
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return net


@pytest.mark.parametrize("preset", ["mtl_tf", "mtl_pytorch"])
def test_tiny_model_trains_exactly_the_preset(preset: str) -> None:
    net = Tiny()
    assert mtl_preset(net, preset) == TINY_TRAINED[preset]
    assert sorted(n for n, p in net.named_parameters() if p.requires_grad) == TINY_TRAINED[preset]
    assert isinstance(net.stem, ScaleShiftConv2d) and isinstance(net.conv, ScaleShiftConv2d)
    assert isinstance(net.down, ScaleShiftConv2d) == (preset == "mtl_pytorch")
    if preset == "mtl_pytorch":  # per-weight scaling of the 1×1 convolution
        assert isinstance(net.down, ScaleShiftConv2d)
        assert net.down.scale.shape == net.down.weight.shape == (6, 4, 1, 1)
    else:
        assert not net.down.weight.requires_grad


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown MTL preset"):
        mtl_preset(Tiny(), "mtl")


@pytest.mark.parametrize("preset", ["mtl_tf", "mtl_pytorch"])
def test_converted_resnet12_is_the_same_function(preset: str) -> None:
    net = _small_resnet()
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    before = net(x)
    names = mtl_preset(net, preset)
    assert torch.equal(net(x), before)
    convs = [n for n, m in net.named_modules() if isinstance(m, ScaleShiftConv2d)]
    assert len(convs) == (12 if preset == "mtl_tf" else 16)
    bn_trained = [n for n in names if ".bn" in n]
    assert bool(bn_trained) == (preset == "mtl_pytorch")
    assert not any("shortcut.shift" in n for n in names)  # the 1×1 shortcuts have no bias
    assert ("layer1.shortcut.scale" in names) == (preset == "mtl_pytorch")


def _episodes(t: int, n: int = 5, k: int = 1, q: int = 2, side: int = 16) -> TaskBatch:
    y = torch.arange(n)
    return TaskBatch(torch.randn(t, n * k, 1, side, side, dtype=torch.float64),
                     y.repeat_interleave(k).repeat(t, 1),
                     torch.randn(t, n * q, 1, side, side, dtype=torch.float64),
                     y.repeat_interleave(q).repeat(t, 1))


@pytest.mark.parametrize("preset", ["mtl_tf", "mtl_pytorch"])
def test_meta_training_changes_only_the_preset(preset: str) -> None:
    net = _small_resnet()
    names = mtl_preset(net, preset)
    start = copy.deepcopy(net.state_dict())
    maml = MAMLWrapper(net, inner_lr=0.1, inner_steps=2, first_order=(preset == "mtl_pytorch"),
                       adapt="head", backend="func")
    assert sorted(maml.adapted_names) == ["head.bias", "head.weight"]
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(1)
    for step in range(2):
        loss, _ = maml.meta_loss(_episodes(2), step=step)
        opt.zero_grad()
        loss.backward()
        for name, p in net.named_parameters():
            assert (p.grad is not None) == (name in names), name
        opt.step()
    end = net.state_dict()
    changed = {k for k in start if not torch.equal(start[k], end[k])}
    frozen = set(start) - set(names)  # conv weights and biases (buffers), shortcuts, BN...
    assert not changed & frozen, sorted(changed & frozen)
    assert {n for n in names if n.endswith(".scale")} <= changed
    assert {"head.weight", "head.bias"} <= changed


# ----------------------------------------------------------------------------- hard tasks


def _arrays(num_classes: int = 10, per_class: int = 20, side: int = 6) -> ImageArray:
    g = torch.Generator().manual_seed(0)
    m = num_classes * per_class
    return ImageArray(torch.randint(0, 256, (m, 1, side, side), dtype=torch.uint8, generator=g),
                      torch.arange(m).view(num_classes, per_class),
                      torch.full((num_classes,), per_class),
                      torch.zeros(num_classes, dtype=torch.long),
                      [f"c{c}" for c in range(num_classes)])


def _mine(ht: HardTaskSampler, batch: TaskBatch, acc: torch.Tensor) -> None:
    ht.on_step_end(1, batch, torch.tensor(0.0), {"class_accuracy": acc}, None)


def _class_images(batch: TaskBatch, t: int, cls: int) -> torch.Tensor:
    label = int((batch.classes[t] == cls).nonzero())  # type: ignore[index]
    return torch.cat([batch.support_x[t][batch.support_y[t] == label],
                      batch.query_x[t][batch.query_y[t] == label]])


def test_hard_tasks_contain_the_lowest_accuracy_class_with_fresh_images() -> None:
    tasks = few_shot(_arrays(), ways=5, shots=1, queries=3, meta_batch_size=2, seed=0)
    ht = HardTaskSampler(tasks, seed=3)
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ht.on_fit_start(FitState(model, opt, None, 0, 10, None, None, 0, 1, None))
    with pytest.raises(ValueError, match="single process"):
        ht.on_fit_start(FitState(model, opt, None, 0, 10, None, None, 0, 2, None))
    assert ht.next_batch() is None
    batch = next(iter(tasks))
    assert batch.classes is not None
    acc = torch.tensor([[1.0, 2 / 3, 1 / 3, 1 / 3, 1.0], [0.0, 1.0, 1.0, 1.0, 1.0]])
    _mine(ht, batch, acc)
    failures = [int(batch.classes[0, 2]), int(batch.classes[1, 0])]  # tie 2/3 → lower label
    hard = ht.next_batch()
    assert hard is not None and hard.classes is not None
    assert hard.support_x.shape == batch.support_x.shape
    assert hard.query_x.shape == batch.query_x.shape
    for j in range(len(hard)):
        row = hard.classes[j].tolist()
        assert failures[j] in row and len(set(row)) == 5
        assert not torch.equal(_class_images(hard, j, failures[j]),
                               _class_images(batch, j, failures[j]))
    # alternate: the hard step is not mined; the next step is a normal one
    _mine(ht, hard, torch.zeros(2, 5))
    assert ht.next_batch() is None


def test_hard_task_options() -> None:
    tasks = few_shot(_arrays(), ways=5, shots=1, queries=3, meta_batch_size=2, seed=0)
    ht = HardTaskSampler(tasks, hard_tasks=6, others="failures", mode="every")
    hard = ht.hard_batch(torch.tensor([7, 2]))
    assert hard.classes is not None and hard.classes.shape == (6, 5)
    for j, row in enumerate(hard.classes.tolist()):
        assert [7, 2][j % 2] in row and {7, 2} <= set(row)
    _mine(ht, hard, torch.zeros(6, 5))  # "every": hard batches are mined too
    again = ht.next_batch()
    assert again is not None and again.classes is not None
    assert hard.classes[0, 0] in again.classes[0]
    with pytest.raises(ValueError, match="mode"):
        HardTaskSampler(tasks, mode="average")
    with pytest.raises(ValueError, match="others"):
        HardTaskSampler(tasks, others="hardest")


def test_hard_task_state_round_trip() -> None:
    tasks = few_shot(_arrays(), ways=5, shots=2, queries=2, meta_batch_size=3, seed=1)
    ht = HardTaskSampler(tasks, seed=5)
    batch = next(iter(tasks))
    _mine(ht, batch, torch.rand(3, 5))
    buf = io.BytesIO()
    torch.save(ht.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    first = ht.next_batch()
    resumed = HardTaskSampler(tasks, seed=99)
    resumed.load_state_dict(state)
    second = resumed.next_batch()
    assert first is not None and second is not None
    for a, b in ((first.support_x, second.support_x), (first.query_x, second.query_x),
                 (first.classes, second.classes), (first.support_y, second.support_y)):
        assert torch.equal(a, b)  # type: ignore[arg-type]


def _fit_run(out_dir: Path, steps: int) -> tuple[dict[str, torch.Tensor], list[list[int]]]:
    from metakd.engine import fit

    torch.manual_seed(0)
    net = MTLResNet12((2, 2, 2, 2), in_channels=1, num_classes=5)
    mtl_preset(net, "mtl_pytorch")
    maml = MAMLWrapper(net, inner_lr=0.1, inner_steps=1, first_order=True, adapt="head",
                       backend="func")
    tasks = few_shot(_arrays(side=16), ways=5, shots=1, queries=2, meta_batch_size=2, seed=0)
    seen: list[list[int]] = []

    class Record(HardTaskSampler):
        def on_step_end(self, step, batch, loss, metrics, learner):
            seen.append(batch.classes.flatten().tolist())
            super().on_step_end(step, batch, loss, metrics, learner)

    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    fit(maml, tasks, opt, steps, callbacks=[Record(tasks, seed=2)], out_dir=out_dir,
        checkpoint_every=2, progress=False, tensorboard=False)
    return {k: v.clone() for k, v in maml.state_dict().items()}, seen


def test_fit_resume_with_hard_tasks_is_exact(tmp_path: Path) -> None:
    root = tmp_path
    full, seen = _fit_run(root / "a", 4)
    _fit_run(root / "b", 2)
    resumed, seen_b = _fit_run(root / "b", 4)  # continues from last.pt at step 2
    assert seen_b == seen[2:]
    assert all(torch.equal(full[k], resumed[k]) for k in full)
