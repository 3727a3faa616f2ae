"""Batched, seeded augmentation: shapes, determinism, exact formulas, per-image independence,
episodes ``[T, M, C, H, W]``, and its wiring into few_shot (resumption stays exact)."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F

import metakd.data.augment.base
import metakd.data.augment.color
import metakd.data.augment.geometric
import metakd.data.augment.presets
from metakd.data import (
    ColorJitter,
    Compose,
    Normalize,
    Omniglot,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    augmentation,
    few_shot,
)

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 16, c: int = 3, h: int = 12, w: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=gen(seed))


ALL_OPS = [
    RandomCrop(8, padding=2),
    RandomCrop((6, 5), padding=(1, 2), padding_mode="reflect"),
    RandomHorizontalFlip(),
    RandomResizedCrop((7, 9)),
    ColorJitter(0.4, 0.4, 0.4, 0.1),
    Normalize([0.5, 0.4, 0.3], [0.2, 0.2, 0.2]),
    augmentation("miniimagenet", 8),
    augmentation("cifar", (12, 10)),
]


@pytest.mark.parametrize("op", ALL_OPS, ids=repr)
def test_shapes_determinism_and_episode_layout(op) -> None:
    x = images()
    out = op(x, gen(1))
    assert out.dtype == x.dtype and out.shape[:2] == x.shape[:2]
    assert torch.equal(out, op(x, gen(1)))  # same seed, same output
    if not isinstance(op, Normalize):
        assert not torch.equal(out, op(x, gen(2)))
    # [T, M, C, H, W] episodes: the same as the flattened batch, leading dims restored
    ep = op(x.view(4, 4, *x.shape[1:]), gen(1))
    assert ep.shape == (4, 4, *out.shape[1:]) and torch.equal(ep.flatten(0, 1), out)
    assert op(x[0], gen(1)).shape == out.shape[1:]  # a single [C, H, W] image


def test_ops_reject_integer_images_and_bad_arguments() -> None:
    with pytest.raises(TypeError, match="float images"):
        RandomHorizontalFlip()(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), gen())
    with pytest.raises(ValueError, match="does not fit"):
        RandomCrop(9)(images(h=8, w=8), gen())
    for bad in (lambda: RandomCrop(0), lambda: RandomCrop(4, padding=-1),
                lambda: RandomCrop(4, padding_mode="wrap"), lambda: RandomHorizontalFlip(1.5),
                lambda: RandomResizedCrop(4, scale=(0.5, 0.1)), lambda: ColorJitter(-0.1),
                lambda: ColorJitter(hue=0.6), lambda: Normalize([0.5], [0.0]),
                lambda: augmentation("imagenet-ish", 32)):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(ValueError, match="channels"):
        Normalize([0.5, 0.5], [1, 1])(images(c=3), gen())


def test_flip_mirrors_exactly_and_independently_per_image() -> None:
    x = images(64)
    assert torch.equal(RandomHorizontalFlip(1.0)(x, gen()), x.flip(-1))
    assert torch.equal(RandomHorizontalFlip(0.0)(x, gen()), x)
    out = RandomHorizontalFlip(0.5)(x, gen(3))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert bool((flipped ^ kept).all())  # every image is either mirrored or untouched
    assert 16 < int(flipped.sum()) < 48  # a coin per image, not one for the batch


def test_full_size_crop_without_padding_is_identity() -> None:
    x = images()
    assert torch.equal(RandomCrop((12, 10))(x, gen()), x)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_crop_is_a_window_of_the_padded_image_at_a_per_image_offset(mode) -> None:
    one = images(1, h=8, w=8)
    x = one.expand(48, -1, -1, -1).contiguous()  # identical images: offsets must still differ
    out = RandomCrop(8, padding=3, padding_mode=mode, fill=0.25)(x, gen(5))
    pmode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode]
    padded = F.pad(one, (3, 3, 3, 3), mode=pmode, **({"value": 0.25} if mode == "constant" else {}))[0]
    offsets = set()
    for img in out:
        hits = [(i, j) for i in range(7) for j in range(7) if torch.equal(img, padded[:, i:i + 8, j:j + 8])]
        assert hits, "the crop is not a window of the padded image"
        offsets.add(hits[0])
    assert len(offsets) > 10


def test_resized_crop_with_full_scale_and_square_ratio_is_identity() -> None:
    x = images(8, h=16, w=16)
    out = RandomResizedCrop(16, scale=(1.0, 1.0), ratio=(1.0, 1.0))(x, gen())
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)


def test_resized_crop_samples_its_drawn_boxes() -> None:
    x = images(32, h=32, w=32).double()
    op = RandomResizedCrop(16, scale=(0.25, 0.25), ratio=(1.0, 1.0))  # every box is 16x16
    boxes = op.boxes(32, 32, 32, gen(7))
    assert (boxes[:, 2:] == 16).all() and len({tuple(b[:2].tolist()) for b in boxes}) > 10
    out = op(x, gen(7))
    for img, crop, (top, left, h, w) in zip(out, x, boxes.tolist()):
        torch.testing.assert_close(img, crop[:, top:top + h, left:left + w], rtol=0, atol=1e-9)


def test_resized_crop_boxes_respect_scale_ratio_and_fallback() -> None:
    op = RandomResizedCrop(8, scale=(0.2, 0.6), ratio=(0.5, 2.0))
    top, left, h, w = op.boxes(500, 40, 30, gen(1)).unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 30).all()
    area = (h * w).double() / (40 * 30)
    assert area.min() > 0.15 and area.max() < 0.66  # within scale, up to rounding of sides
    aspect = w.double() / h
    assert aspect.min() > 0.4 and aspect.max() < 2.5
    # No attempt can fit (the box is always larger than the image): the whole image, clamped.
    whole = RandomResizedCrop(8, scale=(2.0, 3.0), ratio=(1.0, 1.0)).boxes(5, 10, 20, gen())
    assert whole[:, 2:].tolist() == [[10, 10]] * 5


def test_color_jitter_matches_the_formulas() -> None:
    x = images(32, c=3)
    for kind in ("brightness", "contrast", "saturation"):
        op = ColorJitter(**{kind: 0.5})
        f = op.factors(32, gen(4))[kind].float().view(-1, 1, 1, 1)
        assert f.min() >= 0.5 and f.max() <= 1.5 and len(set(f.flatten().tolist())) == 32
        r, g, b = x.unbind(1)
        grey = (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)
        other = {"brightness": torch.zeros_like(x), "contrast": grey.mean((1, 2, 3), keepdim=True),
                 "saturation": grey}[kind]
        want = (f * x + (1 - f) * other).clamp(0, 1)
        torch.testing.assert_close(op(x, gen(4)), want, rtol=0, atol=1e-6)
    # The factors themselves: uniform in [1 - v, 1 + v], one draw per image from the generator.
    f = ColorJitter(brightness=0.4).factors(32, gen(9))["brightness"]
    torch.testing.assert_close(f, 0.6 + 0.8 * torch.rand(32, generator=gen(9), dtype=torch.float64))
    # One channel: brightness and contrast apply, saturation and hue leave images alone.
    g1 = images(4, c=1)
    f = ColorJitter(brightness=(1.5, 1.5)).factors(4, gen())["brightness"]
    torch.testing.assert_close(ColorJitter(brightness=(1.5, 1.5))(g1, gen()), (g1 * 1.5).clamp(0, 1))
    assert f.tolist() == [1.5] * 4
    assert torch.equal(ColorJitter(saturation=0.5, hue=0.2)(g1, gen()), g1)


def test_hue_rotation() -> None:
    x = images(8, c=3)
    torch.testing.assert_close(ColorJitter(hue=(0.0, 0.0))(x, gen()), x, rtol=0, atol=1e-6)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    green = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    torch.testing.assert_close(ColorJitter(hue=(1 / 3, 1 / 3))(red, gen()), green, rtol=0, atol=1e-6)
    grey = torch.full((2, 3, 2, 2), 0.4)
    torch.testing.assert_close(ColorJitter(hue=0.5)(grey, gen()), grey)
    full = ColorJitter(hue=(0.5, 0.5))  # a half turn twice is the identity
    torch.testing.assert_close(full(full(x, gen()), gen()), x, rtol=0, atol=1e-5)


def test_normalize_compose_and_presets() -> None:
    x = images()
    torch.testing.assert_close(Normalize([0.5], [0.25])(x, None), (x - 0.5) / 0.25)
    flip = RandomHorizontalFlip(1.0)
    assert torch.equal(Compose([flip, flip])(x, gen()), x) and len(Compose([flip])) == 1
    assert len(augmentation("none", 12)) == 0 and torch.equal(augmentation("none", 12)(x, gen()), x)
    mini = augmentation("miniimagenet", 84)
    assert [type(op).__name__ for op in mini.ops] == ["RandomResizedCrop", "RandomHorizontalFlip",
                                                      "ColorJitter"]
    assert mini(torch.rand(2, 3, 92, 92), gen()).shape == (2, 3, 84, 84)
    cifar = augmentation("cifar", 32)
    assert cifar.ops[0].padding == (4, 4, 4, 4) and cifar.ops[0].size == (32, 32)


@pytest.fixture(scope="module")
def test_set() -> Omniglot:
    return Omniglot(split="test")


def test_few_shot_augments_support_and_query_and_resumes_exactly(test_set: Omniglot) -> None:
    aug = Compose([RandomCrop(28, padding=3), RandomHorizontalFlip()])
    plain = next(iter(few_shot(test_set, 5, 1, 2, meta_batch_size=2, num_tasks=2, seed=0)))
    fixed = few_shot(test_set, 5, 1, 2, meta_batch_size=2, num_tasks=2, seed=0, augment=aug)
    b = next(iter(fixed))
    assert torch.equal(b.classes, plain.classes)  # same episodes, images augmented
    assert b.support_x.shape == plain.support_x.shape and b.query_x.shape == plain.query_x.shape
    assert not torch.equal(b.support_x, plain.support_x) and not torch.equal(b.query_x, plain.query_x)
    assert torch.equal(next(iter(fixed)).query_x, b.query_x)  # a fixed set: same every pass
    # An empty augmentation draws nothing: the stream is the one without augmentation.
    none = next(iter(few_shot(test_set, 5, 1, 2, meta_batch_size=2, num_tasks=2, seed=0,
                              augment=augmentation("none", 28))))
    assert torch.equal(none.support_x, plain.support_x)

    stream = few_shot(test_set, 5, 1, 2, meta_batch_size=3, seed=1, augment=aug,
                      normalize=([0.5], [0.5]))
    it = iter(stream)
    for _ in range(2):
        next(it)
    state = stream.state_dict()
    want = [next(it) for _ in range(3)]
    resumed = few_shot(test_set, 5, 1, 2, meta_batch_size=3, seed=1, augment=aug,
                       normalize=([0.5], [0.5]))
    resumed.load_state_dict(state)
    got = [b for b, _ in zip(resumed, range(3))]
    for w, g in zip(want, got):
        assert torch.equal(w.support_x, g.support_x) and torch.equal(w.query_x, g.query_x)
        assert torch.equal(w.classes, g.classes)


@pytest.mark.parametrize("module", [metakd.data.augment.base, metakd.data.augment.color,
                                    metakd.data.augment.geometric, metakd.data.augment.presets])
def test_docstring_examples_run(module) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
