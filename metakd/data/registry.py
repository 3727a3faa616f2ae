"""Data sets by name, for the command line and the recipes."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from metakd.data.base import ImageClassDataset

__all__ = ["DATASETS", "get_dataset"]


def _omniglot(root: str | None, split: str, **kw: Any) -> ImageClassDataset:
    from metakd.data.datasets import Omniglot

    return Omniglot(root, split=split, **kw)


def _lazy(name: str) -> Callable[..., ImageClassDataset]:
    def build(root: str | None, split: str, **kw: Any) -> ImageClassDataset:
        import metakd.data.datasets as ds

        if root is None:
            raise ValueError(f"dataset {name!r} needs --root (the folder that holds it)")
        return getattr(ds, name)(root, split=split, **kw)

    return build


#: name -> constructor ``(root, split, **kwargs)``.
DATASETS: dict[str, Callable[..., ImageClassDataset]] = {
    "omniglot": _omniglot,
    "miniimagenet": _lazy("MiniImageNet"),
    "cub": _lazy("CUB"),
    "cifarfs": _lazy("CIFARFS"),
    "fc100": _lazy("FC100"),
    "tieredimagenet": _lazy("TieredImageNet"),
    "folder": _lazy("ImageFolderDataset"),
}


def get_dataset(name: str, root: str | os.PathLike[str] | None, split: str,
                **kwargs: Any) -> ImageClassDataset:
    """Build a data set by name (``omniglot`` with ``root=None`` is the bundled copy).

    >>> get_dataset("omniglot", None, "test").classes[0]
    'Japanese_(katakana)/character01'
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[key](None if root is None else str(root), split, **kwargs)
