"""The readers' shared constructor arguments: their checks, error messages and documentation."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from metakd.data import (
    CIFAR100,
    CIFARFS,
    CUB,
    FC100,
    ImageClassDataset,
    ImageFolderDataset,
    MiniImageNet,
    Omniglot,
    TieredImageNet,
)
from metakd.data.base import check_choice

READERS = [CIFAR100, CIFARFS, CUB, FC100, ImageFolderDataset, MiniImageNet, Omniglot,
           TieredImageNet]
COMMON = ("transform", "target_transform", "rotations", "cache_dir")


def test_check_choice_wording() -> None:
    check_choice("split", "val", ("train", "val"))
    with pytest.raises(ValueError) as e:
        check_choice("split", "tain", ("train", "val", "test"))
    assert str(e.value) == "split must be 'train', 'val' or 'test', got 'tain'"
    with pytest.raises(ValueError, match=r"^mode must be 'L', got 'P'$"):
        check_choice("mode", "P", ("L",))


@pytest.mark.parametrize(("reader", "kwargs", "message"), [
    (CIFAR100, {"split": "val"}, "split must be 'train' or 'test', got 'val'"),
    (CIFARFS, {"split": "all"}, "split must be 'train', 'val' or 'test', got 'all'"),
    (FC100, {"format": "npz"}, "format must be 'auto', 'python', 'pickle' or 'folders', got 'npz'"),
    (CUB, {"split": "x"}, "split must be 'train', 'val', 'test' or 'all', got 'x'"),
    (CUB, {"format": "x"}, "format must be 'auto', 'images' or 'hdf5', got 'x'"),
    (CUB, {"split": "x", "format": "x"}, "split must be 'train', 'val', 'test' or 'all', got 'x'"),
    (TieredImageNet, {"format": "x"},
     "format must be 'auto', 'npz', 'png', 'hdf5' or 'folders', got 'x'"),
    (TieredImageNet, {"label_level": "x"}, "label_level must be 'specific' or 'general', got 'x'"),
    (TieredImageNet, {"channels": "x"}, "channels must be 'auto', 'bgr' or 'rgb', got 'x'"),
    (MiniImageNet, {"format": "x"},
     "format must be 'auto' or one of ('csv', 'folders', 'pickle', 'gidaris', 'hdf5'), got 'x'"),
    (ImageFolderDataset, {"image_mode": "P"}, "image_mode must be 'RGB' or 'L', got 'P'"),
    (CUB, {"rotations": (45,)}, "rotations must be distinct multiples of 90 degrees, got (45,)"),
])
def test_arguments_are_checked_before_anything_is_read(reader: type, kwargs: dict[str, object],
                                                       message: str, tmp_path: Path) -> None:
    """The messages are those the readers gave before the checks were shared."""
    with pytest.raises(ValueError) as e:
        reader(tmp_path / "nothing-here", **kwargs)
    assert str(e.value) == message


@pytest.mark.parametrize("reader", [r for r in READERS if r is not Omniglot])
def test_root_is_required_except_for_the_bundled_omniglot(reader: type) -> None:
    with pytest.raises(TypeError, match=f"{reader.__name__} needs root"):
        reader(None)


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__name__)
def test_common_arguments_are_documented_once(reader: type) -> None:
    """The base class documents the common arguments; each reader names the ones it takes."""
    params = inspect.signature(reader).parameters
    taken = [a for a in COMMON if a in params]
    doc = inspect.getdoc(reader) or ""
    assert ":class:`~metakd.data.ImageClassDataset`" in doc
    for arg in taken:
        assert f"``{arg}``" in doc.split("Args:")[0], f"{reader.__name__}: {arg} not named"
        assert f"\n    {arg}:" not in doc, f"{reader.__name__} documents {arg} again"
    base = inspect.getdoc(ImageClassDataset) or ""
    assert all(f"\n    {arg}: " in base for arg in COMMON)
