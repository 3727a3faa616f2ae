"""Episode sampling: shapes, label remapping, seeding, resumption, and request validation."""

from __future__ import annotations

import pytest
import torch

from metakd.data import Omniglot, TaskBatch, few_shot


@pytest.fixture(scope="module")
def test_set() -> Omniglot:
    return Omniglot(split="test")


def _find(arr_images: torch.Tensor, img: torch.Tensor) -> int:
    """Index of the stored image equal to ``img`` (uint8 [C,H,W])."""
    hits = (arr_images == img).flatten(1).all(1).nonzero().flatten()
    assert len(hits) >= 1
    return int(hits[0])


def test_batch_shapes_labels_and_contents(test_set: Omniglot) -> None:
    tasks = few_shot(test_set, ways=5, shots=2, queries=3, meta_batch_size=4, num_tasks=8, seed=1)
    assert len(tasks) == 2
    batches = list(tasks)
    assert len(batches) == 2
    b = batches[0]
    assert isinstance(b, TaskBatch) and len(b) == 4
    assert b.support_x.shape == (4, 10, 1, 28, 28) and b.query_x.shape == (4, 15, 1, 28, 28)
    assert b.support_x.dtype == torch.float32 and b.support_x.min() >= 0 and b.support_x.max() <= 1
    assert b.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert b.query_y[0].tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3 + [4] * 3
    assert (b.ways, b.shots, b.queries) == (5, 2, 3)
    arr = test_set.arrays(28)
    targets = torch.tensor(test_set.targets)
    for t in range(4):
        cls = b.classes[t]
        assert len(set(cls.tolist())) == 5  # distinct classes
        seen = []
        for x, y in [(b.support_x[t], b.support_y[t]), (b.query_x[t], b.query_y[t])]:
            for img, label in zip(x, y):
                j = _find(arr.images, (img * 255).round().to(torch.uint8))
                assert targets[j] == cls[label]  # the image belongs to its episode class
                seen.append(j)
        assert len(set(seen)) == len(seen)  # no image twice in an episode (support/query disjoint)


def test_same_seed_same_episodes_fixed_set_every_pass(test_set: Omniglot) -> None:
    a = few_shot(test_set, 5, 1, 5, meta_batch_size=3, num_tasks=7, seed=3)
    first = list(a)
    assert [len(b) for b in first] == [3, 3, 1]
    second = list(a)
    third = list(few_shot(test_set, 5, 1, 5, meta_batch_size=3, num_tasks=7, seed=3))
    for x, y, z in zip(first, second, third):
        assert torch.equal(x.support_x, y.support_x) and torch.equal(x.classes, z.classes)
        assert torch.equal(x.query_x, z.query_x)
    other = next(iter(few_shot(test_set, 5, 1, 5, meta_batch_size=3, num_tasks=7, seed=4)))
    assert not torch.equal(other.classes, first[0].classes)


def test_endless_stream_resumes_from_its_state(test_set: Omniglot) -> None:
    s = few_shot(test_set, 5, 1, 1, meta_batch_size=2, seed=0)
    with pytest.raises(TypeError, match="endless"):
        len(s)
    it = iter(s)
    for _ in range(3):
        next(it)
    state = s.state_dict()
    want = [next(it).classes for _ in range(3)]
    r = few_shot(test_set, 5, 1, 1, meta_batch_size=2, seed=0)
    r.load_state_dict(state)
    got = [b.classes for b, _ in zip(r, range(3))]
    assert all(torch.equal(x, y) for x, y in zip(want, got))


def test_classes_and_images_are_drawn_uniformly(test_set: Omniglot) -> None:
    s = few_shot(test_set, 5, 1, 1, meta_batch_size=500, seed=0)
    classes = next(iter(s)).classes.flatten()
    counts = torch.bincount(classes, minlength=106).float()
    # 2500 draws over 106 classes: expected 23.6 each; all classes appear, none dominates.
    assert counts.min() > 5 and counts.max() < 50


def test_rotation_classes_yield_rotated_images() -> None:
    plain = Omniglot(split="test")
    rot = Omniglot(split="test", rotations=(0, 90, 180, 270))
    b = next(iter(few_shot(rot, 5, 1, 0, meta_batch_size=64, seed=0)))
    base = plain.arrays(28).images
    checked = 0
    for t in range(64):
        for n in range(5):
            c = int(b.classes[t, n])
            k = c // 106
            if k == 0:
                continue
            img = (b.support_x[t, n] * 255).round().to(torch.uint8)
            j = _find(base, torch.rot90(img, -k, dims=(-2, -1)))
            assert plain.targets[j] == c % 106
            checked += 1
    assert checked > 100


def test_normalize_and_device_options(test_set: Omniglot) -> None:
    raw = next(iter(few_shot(test_set, 3, 1, 1, num_tasks=1, seed=0)))
    norm = next(iter(few_shot(test_set, 3, 1, 1, num_tasks=1, seed=0,
                              normalize=([0.5], [0.25]), dtype=torch.float64, device="cpu")))
    assert norm.support_x.dtype == torch.float64
    torch.testing.assert_close(norm.support_x, (raw.support_x.double() - 0.5) / 0.25,
                               rtol=0, atol=1e-6)  # raw was scaled in float32


def test_impossible_requests_say_why(test_set: Omniglot) -> None:
    with pytest.raises(ValueError, match="107-way episodes need 107 classes, but .* has only 106"):
        few_shot(test_set, 107, 1, 1)
    with pytest.raises(ValueError, match=r"need 21 images per class, but class 0 \('Japanese"
                       r"_\(katakana\)/character01'\) .* has only 20 \(and 105 more"):
        few_shot(test_set, 5, 1, 20)
    with pytest.raises(ValueError, match="shots >= 1"):
        few_shot(test_set, 5, 0, 1)
    with pytest.raises(ValueError, match="num_tasks"):
        few_shot(test_set, 5, 1, 1, num_tasks=0)


def test_taskbatch_checks_and_helpers() -> None:
    b = TaskBatch(torch.zeros(4, 5, 1, 2, 2), torch.arange(5).repeat(4, 1),
                  torch.zeros(4, 10, 1, 2, 2), torch.arange(5).repeat_interleave(2).repeat(4, 1))
    assert [len(p) for p in b.split(3)] == [2, 2]
    assert b[1].support_x.shape == (5, 1, 2, 2)
    assert len(list(b)) == 4
    with pytest.raises(ValueError, match="tasks along dim 0"):
        TaskBatch(torch.zeros(4, 5, 1), torch.zeros(3, 5), torch.zeros(4, 5, 1), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="query_y"):
        TaskBatch(torch.zeros(4, 5, 1), torch.zeros(4, 5), torch.zeros(4, 5, 1), torch.zeros(4, 6))
