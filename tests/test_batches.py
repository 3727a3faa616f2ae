"""Supervised minibatches: shapes, contents, seeded epochs, exact mid-epoch resumption,
rotation classes, augmentation, and clear errors."""

from __future__ import annotations

import doctest
import importlib
import io

import numpy as np
import pytest
import torch

from metakd.data import (
    ImageArray,
    MiniBatchLoader,
    Omniglot,
    RandomCrop,
    RandomHorizontalFlip,
    batches,
)

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def test_set() -> Omniglot:
    return Omniglot(split="test")  # 106 classes x 20 = 2120 images, 28x28


def as_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().to(torch.uint8)


def fingerprint(imgs: torch.Tensor) -> torch.Tensor:
    """One int64 per uint8 image, to compare sets of images."""
    w = torch.arange(1, imgs[0].numel() + 1, dtype=torch.int64) ** 2 % 1000003
    return (imgs.flatten(1).to(torch.int64) * w).sum(1)


def test_shapes_labels_and_len(test_set: Omniglot) -> None:
    loader = batches(test_set, 64, progress=False)
    assert isinstance(loader, MiniBatchLoader)
    assert len(loader) == 2120 // 64 and loader.num_classes == 106 and loader.num_samples == 2120
    assert len(batches(test_set, 64, drop_last=False)) == 34
    x, y = next(iter(loader))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64
    assert x.min() >= 0 and x.max() <= 1 and y.min() >= 0 and y.max() < 106
    targets = torch.tensor(test_set.targets)
    arr = test_set.arrays(28)
    for img, label in zip(as_uint8(x), y):  # every image belongs to its label's class
        hits = (arr.images == img).flatten(1).all(1).nonzero().flatten()
        assert len(hits) and bool((targets[hits] == label).any())


def test_evaluation_set_is_the_data_set_in_order(test_set: Omniglot) -> None:
    loader = batches(test_set, 300, shuffle=False, drop_last=False, epochs=1)
    got = list(loader)
    assert [len(y) for _, y in got] == [300] * 7 + [20]
    x = torch.cat([b[0] for b in got])
    y = torch.cat([b[1] for b in got])
    assert torch.equal(as_uint8(x), test_set.arrays(28).images)
    assert y.tolist() == test_set.targets
    again = list(loader)  # a finished finite stream starts over
    assert len(again) == 8 and torch.equal(again[0][0], got[0][0])


def test_shuffled_epochs_visit_every_image_once_in_a_new_order(test_set: Omniglot) -> None:
    loader = batches(test_set, 500, seed=3, drop_last=False, epochs=2)
    got = list(loader)
    assert len(got) == 10
    want = fingerprint(test_set.arrays(28).images).sort().values
    orders = []
    for e in range(2):
        x = torch.cat([b[0] for b in got[5 * e : 5 * e + 5]])
        y = torch.cat([b[1] for b in got[5 * e : 5 * e + 5]])
        fp = fingerprint(as_uint8(x))
        assert torch.equal(fp.sort().values, want)  # each image exactly once per epoch
        assert torch.bincount(y, minlength=106).tolist() == [20] * 106
        orders.append(fp)
    assert not torch.equal(orders[0], orders[1])


def test_same_seed_same_stream_other_seed_other_stream(test_set: Omniglot) -> None:
    def first(seed: int) -> torch.Tensor:
        return next(iter(batches(test_set, 32, seed=seed)))[1]

    assert torch.equal(first(0), first(0)) and not torch.equal(first(0), first(1))
    loader = batches(test_set, 32, seed=5)
    for e, i in ((0, 3), (2, 0), (7, 65)):
        x, y = loader.batch(e, i)
        x2, y2 = batches(test_set, 32, seed=5).batch(e, i)  # the position alone decides
        assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(IndexError):
        loader.batch(0, len(loader))


@pytest.mark.parametrize("augment", [None, RandomCrop(28, padding=4)], ids=["plain", "augmented"])
def test_resume_mid_epoch_is_bit_identical(test_set: Omniglot, augment) -> None:
    def make() -> MiniBatchLoader:
        return batches(test_set, 600, seed=11, augment=augment, normalize=([0.1], [0.3]))

    uninterrupted = make()
    it = iter(uninterrupted)
    reference = [next(it) for _ in range(9)]  # 3 batches per epoch: crosses two epochs

    for stop in (1, 3, 5):
        first = make()
        it = iter(first)
        for _ in range(stop):
            next(it)
        buf = io.BytesIO()
        torch.save(first.state_dict(), buf)  # a checkpoint, loaded as a trainer would
        buf.seek(0)
        state = torch.load(buf, weights_only=True)
        resumed = make()
        resumed.load_state_dict(state)
        assert (resumed.epoch, resumed.index) == divmod(stop, 3)
        for (wx, wy), (gx, gy) in zip(reference[stop:], resumed):
            assert torch.equal(wx, gx) and torch.equal(wy, gy)


def test_endless_and_finite_streams(test_set: Omniglot) -> None:
    endless = batches(test_set, 1000, seed=0)  # 2 batches per epoch
    got = [y for _, (_, y) in zip(range(7), endless)]  # range first: no 8th batch drawn
    assert len(got) == 7 and (endless.epoch, endless.index) == (3, 1)
    finite = batches(test_set, 1000, epochs=3)
    assert len(list(finite)) == 6 and (finite.epoch, finite.index) == (0, 0)


def test_load_state_dict_refuses_another_stream(test_set: Omniglot) -> None:
    state = batches(test_set, 32, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed=1"):
        batches(test_set, 32, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size"):
        batches(test_set, 16, seed=1).load_state_dict(state)


def test_rotation_classes(test_set: Omniglot) -> None:
    rot = Omniglot(split="test", rotations=(0, 90, 180, 270))
    loader = batches(rot, 256, seed=0)
    assert loader.num_classes == 424 and loader.num_samples == 4 * 2120
    x, y = next(iter(loader))
    assert y.max() >= 106  # rotation classes are drawn
    base = test_set.arrays(28).images
    targets = torch.tensor(test_set.targets)
    for img, label in zip(as_uint8(x), y.tolist()):
        k, c = divmod(label, 106)
        upright = torch.rot90(img, -k, dims=(-2, -1))
        hits = (base == upright).flatten(1).all(1).nonzero().flatten()
        assert len(hits) and bool((targets[hits] == c).any())


def test_augment_normalize_dtype(test_set: Omniglot) -> None:
    plain = batches(test_set, 16, seed=2)
    flipped = batches(test_set, 16, seed=2, augment=RandomHorizontalFlip(1.0))
    (x, y), (fx, fy) = next(iter(plain)), next(iter(flipped))
    assert torch.equal(fx, x.flip(-1)) and torch.equal(fy, y)
    norm = batches(test_set, 16, seed=2, normalize=([0.5], [0.25]), dtype=torch.float64)
    nx, _ = next(iter(norm))
    assert nx.dtype == torch.float64
    torch.testing.assert_close(nx, (x.double() - 0.5) / 0.25, rtol=0, atol=1e-6)


def test_image_array_input_and_errors(test_set: Omniglot) -> None:
    arr = test_set.arrays(28)
    assert batches(arr, 10).num_classes == 106
    with pytest.raises(ValueError, match="batch_size"):
        batches(test_set, 0)
    with pytest.raises(ValueError, match="epochs"):
        batches(test_set, 8, epochs=0)
    with pytest.raises(ValueError, match="larger than the 2120 images"):
        batches(test_set, 2121)
    assert len(batches(test_set, 2121, drop_last=False)) == 1
    empty = ImageArray(torch.zeros(0, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, 0, dtype=torch.int64),
                       torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64), ["a", "b"])
    with pytest.raises(ValueError, match="holds no images"):
        batches(empty, 4)
    # Labels follow class_items (a class's images need not be contiguous).
    items = torch.tensor([[2, 0], [1, -1]])
    odd = ImageArray(torch.arange(3, dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous(),
                     items, torch.tensor([2, 1]), torch.zeros(2, dtype=torch.int64), ["a", "b"])
    x, y = next(iter(batches(odd, 3, shuffle=False)))
    assert y.tolist() == [0, 1, 0] and np.allclose(x[:, 0, 0, 0].numpy() * 255, [0, 1, 2])


def test_docstring_example_runs() -> None:
    module = importlib.import_module("metakd.data.batches")  # the attribute is the function
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0


def test_split_items_partitions_every_class_disjointly() -> None:
    from metakd.data import Omniglot

    arr = Omniglot(split="test").arrays(progress=False)
    for seed in (None, 3):
        train, test = arr.split_items(15, seed=seed)
        assert train.num_classes == test.num_classes == arr.num_classes
        for k in range(arr.num_classes):
            a = set(train.class_items[k][train.class_items[k] >= 0].tolist())
            b = set(test.class_items[k][test.class_items[k] >= 0].tolist())
            whole = set(arr.class_items[k][arr.class_items[k] >= 0].tolist())
            assert len(a) == 15 and a.isdisjoint(b) and a | b == whole
    fixed, _ = arr.split_items(15)
    assert fixed.class_items[0].tolist() == arr.class_items[0, :15].tolist()
    with pytest.raises(ValueError, match="smallest class has 20"):
        arr.split_items(20)
