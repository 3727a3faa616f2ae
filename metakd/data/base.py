"""The base of every metakd data set: images grouped into classes, decoded on demand or once.

A data set subclass scans its on-disk format and calls :meth:`ImageClassDataset._setup` with the
class of every stored image; it implements :meth:`~ImageClassDataset._load` (one stored image as a
PIL image or a uint8 array) and :meth:`~ImageClassDataset._fingerprint` (a cheap identity of the
source files). Everything else is shared:

* the torchvision-style constructor arguments every reader takes (``root``, ``split``,
  ``transform``, ``target_transform``, ``rotations``, ``cache_dir``), their checks and their
  documentation (:class:`ImageClassDataset`); :func:`check_choice` words every "must be one
  of" error the same way;
* ``dataset[i] -> (image, target)`` like torchvision, so a ``DataLoader`` (classification
  pre-training) and learn2learn's ``MetaDataset`` work on it directly;
* :meth:`~ImageClassDataset.arrays` returns the whole split, resized, as one uint8 tensor
  (decoded once into the HDF5 cache of :mod:`metakd.data.cache`), which the episode sampler of
  :mod:`metakd.data.tasks` gathers from in one vectorised step;
* optional rotation classes (Santoro et al. 2016; Vinyals et al. 2016): every class rotated by
  90, 180 and 270 degrees becomes a new class.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from metakd.data._io import CorruptFileError

__all__ = ["BACKGROUND", "ImageArray", "ImageClassDataset", "check_choice", "to_mode"]

ImageSize = int | tuple[int, int]

#: Colour transparent images are composited on: white (Omniglot and most line art are dark
#: strokes on a white page; PIL's ``convert`` would instead keep the hidden colour values).
BACKGROUND = 255
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
#: Version of the decoding rules (:func:`to_mode`), part of the cache key: 2 = 16-bit images
#: scaled and transparent images composited on white (1 clipped and dropped alpha).
_DECODER_VERSION = 2


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``, naming them all.

    The one wording of the readers' argument errors: ``"split must be 'train', 'val' or
    'test', got 'tain'"``.

    Example:
        >>> check_choice("format", "hdf5", ("auto", "images", "hdf5"))
        >>> check_choice("split", "tain", ("train", "test"))
        Traceback (most recent call last):
            ...
        ValueError: split must be 'train' or 'test', got 'tain'
    """
    if value in choices:
        return
    quoted = [repr(c) for c in choices]
    listed = quoted[-1] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    raise ValueError(f"{name} must be {listed}, got {value!r}")


def to_mode(img: Any, mode: str) -> Any:
    """A PIL image as 8-bit ``mode`` (``"L"`` or ``"RGB"``), the one decoding rule of metakd.

    On top of PIL's ``convert``:

    * 16-bit images (PIL modes ``"I;16"``, ``"I;16B"``, ``"I;16L"``, ``"I;16N"``, and ``"I"``,
      which is how 16-bit PNGs may open) are scaled to 8 bits, ``round(v * 255 / 65535)``
      (values of ``"I"`` images outside ``[0, 65535]`` are clamped first), instead of being
      clipped at 255;
    * transparent images (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa`` / ``La``, and
      palette / grey / RGB images with a transparent colour) are alpha-composited on a white
      background (:data:`BACKGROUND`): ``round((c * a + 255 * (255 - a)) / 255)`` per
      channel, so fully transparent pixels become white whatever colour they hide.

    Example:
        >>> import numpy as np
        >>> from PIL import Image
        >>> from metakd.data.base import to_mode
        >>> deep = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
        >>> np.asarray(to_mode(deep, "L")).tolist()
        [[0, 128, 255]]
    """
    from PIL import Image

    img.load()  # decode now: the caller may close the file once this returns
    if img.mode in _WIDE_MODES:
        wide = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        img = Image.fromarray(((wide * 2 + 257) // 514).astype(np.uint8))  # round(v / 257)
    elif img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint32)
        colour, alpha = rgba[..., :3], rgba[..., 3:]
        mixed = colour * alpha + BACKGROUND * (255 - alpha)
        img = Image.fromarray(((mixed * 2 + 255) // 510).astype(np.uint8))  # round(mixed / 255)
    return img if img.mode == mode else img.convert(mode)


@dataclass(frozen=True)
class ImageArray:
    """A split of a data set as arrays, ready for vectorised episode sampling.

    Attributes:
        images: ``[M, C, H, W]`` uint8 stored images.
        class_items: ``[num_classes, max_items]`` int64 index into ``images`` of each item of
            each class, padded with ``-1``.
        class_counts: ``[num_classes]`` int64 items per class.
        class_rotation: ``[num_classes]`` int64 quarter turns (counter-clockwise) of the
            images of each class. Rotated copies are stored in ``images`` (one block of the
            stored images per rotation), so ``class_items`` already points at rotated pixels.
        class_names: the name of each class.
    """

    images: torch.Tensor
    class_items: torch.Tensor
    class_counts: torch.Tensor
    class_rotation: torch.Tensor
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split_items(self, first: int, seed: int | None = None) -> tuple[ImageArray, ImageArray]:
        """Split every class's images in two: ``first`` of each class, and the rest.

        The whole-classification split of few-shot data (train on some drawings of every
        character, test on the others): both parts keep all classes with the same indices
        and share the decoded ``images``. Without ``seed`` each class's first ``first`` items
        in stored order form the first part; with ``seed`` a seeded permutation of each
        class's items is split instead (the same for every run with that seed).

        Raises:
            ValueError: a class has at most ``first`` images (its second part would be empty).

        Example:
            >>> from metakd.data import Omniglot
            >>> arr = Omniglot(split="test").arrays(progress=False)
            >>> train, test = arr.split_items(15)
            >>> train.class_counts[:3].tolist(), test.class_counts[:3].tolist()
            ([15, 15, 15], [5, 5, 5])
        """
        counts = self.class_counts
        if first < 1 or bool((counts <= first).any()):
            smallest = int(counts.min())
            raise ValueError(f"cannot keep {first} images of every class and test on the rest: "
                             f"the smallest class has {smallest} (need first in 1..{smallest - 1})")
        items = self.class_items.clone()
        if seed is not None:
            g = torch.Generator().manual_seed(seed)
            for k in range(items.shape[0]):
                n = int(counts[k])
                items[k, :n] = items[k, :n][torch.randperm(n, generator=g)]
        width = items.shape[1]
        rest = torch.full((items.shape[0], width - first), -1, dtype=torch.int64)
        for k in range(items.shape[0]):
            n = int(counts[k])
            rest[k, : n - first] = items[k, first:n]
        part = torch.full_like(counts, first)
        return (
            ImageArray(self.images, items[:, :first].contiguous(), part, self.class_rotation,
                       list(self.class_names)),
            ImageArray(self.images, rest, counts - first, self.class_rotation,
                       list(self.class_names)),
        )


def _norm_size(size: ImageSize | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


class ImageClassDataset(Dataset):
    """Base class: a split of a labelled image data set.

    The readers (:class:`~metakd.data.Omniglot`, :class:`~metakd.data.MiniImageNet`,
    :class:`~metakd.data.CUB` ...) have torchvision's constructor,
    ``Reader(root, split, ..., transform=None, target_transform=None, rotations=(0,),
    download=False, cache_dir=None)``. The arguments below mean the same in every reader,
    which documents only its own: the layouts of ``root``, its splits, its ``format`` and
    what ``download`` fetches.

    Args:
        root: the data set's folder (see each reader for its layouts).
        split: which split (each reader lists its own).
        transform: torchvision-style transform of the PIL image in ``__getitem__``.
        target_transform: transform of the class index in ``__getitem__``.
        rotations: degrees, multiples of 90, each making a copy of every class; ``(0,)`` means
            no rotation classes, ``(0, 90, 180, 270)`` quadruples the classes.
        cache_dir: where the decoded-image cache goes (default ``$METAKD_CACHE`` or
            ``~/.cache/metakd``).

    Attributes:
        classes: class names (rotated classes get a ``"@90"``-style suffix).
        targets: class index of every item, ``len(targets) == len(self)``.
    """

    #: "L" (grayscale) or "RGB": the mode images are converted to.
    image_mode: str = "RGB"
    #: Image size used by :meth:`arrays` when none is given (``None``: the stored size).
    default_image_size: ImageSize | None = None
    #: The splits the constructor accepts (checked before anything is read); empty: the
    #: subclass checks ``split`` itself.
    _splits: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        split: str,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        rotations: Sequence[int] = (0,),
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root).expanduser() if root is not None else None
        self.split = split
        self.transform = transform
        self.target_transform = target_transform
        rot = tuple(int(r) for r in rotations)
        if not rot or any(r % 90 for r in rot) or len(set(rot)) != len(rot):
            raise ValueError(f"rotations must be distinct multiples of 90 degrees, got {rotations}")
        if self._splits:
            check_choice("split", split, self._splits)
        self.rotations = rot
        self.cache_dir = cache_dir
        self._arrays: dict[tuple[int, int] | None, ImageArray] = {}

    # --- to be provided by subclasses -------------------------------------------------------
    def _load(self, j: int) -> Any:
        """Stored image ``j`` as a PIL image or a uint8 array ``[H, W]`` / ``[H, W, C]``."""
        raise NotImplementedError

    def _describe(self, j: int) -> str:
        """Where stored image ``j`` comes from (for error messages)."""
        return f"image {j} of {type(self).__name__}({self.root}, split={self.split!r})"

    def _fingerprint(self) -> Any:
        """A JSON-able identity of the source data (paths, sizes, modification times)."""
        raise NotImplementedError

    def _decode_options(self) -> dict[str, Any]:
        """Options that change decoded pixels (for the cache key); extend in subclasses."""
        return {}

    # --- setup -------------------------------------------------------------------------------
    def _setup(self, store_labels: Sequence[int] | np.ndarray, base_classes: Sequence[str]) -> None:
        """Record the class of every stored image; call at the end of a subclass's ``__init__``."""
        labels = np.asarray(store_labels, dtype=np.int64)
        if labels.size == 0:
            raise CorruptFileError(
                f"{type(self).__name__}: no images found for split {self.split!r} in {self.root}"
            )
        self._store_labels = labels
        self._base_classes = list(base_classes)
        c = len(self._base_classes)
        names = []
        for r in self.rotations:
            names += [n if r == 0 else f"{n}@{r}" for n in self._base_classes]
        self.classes = names
        self.targets = np.concatenate([labels + i * c for i in range(len(self.rotations))]).tolist()

    # --- torchvision-style access ---------------------------------------------------------------
    @property
    def num_stored(self) -> int:
        """Number of stored (unrotated) images."""
        return int(self._store_labels.shape[0])

    def __len__(self) -> int:
        return self.num_stored * len(self.rotations)

    def get_image(self, i: int) -> Any:
        """Item ``i`` as a PIL image in :attr:`image_mode`, rotated if it is a rotation class."""
        from PIL import Image

        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        r, j = divmod(i, self.num_stored)
        img = self._load_pil(j)
        turns = (self.rotations[r] // 90) % 4
        if turns:
            img = img.transpose(
                [Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270][
                    turns - 1
                ]
            )
        return img

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        img = self.get_image(i)
        target: Any = self.targets[i]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def _load_pil(self, j: int) -> Any:
        from PIL import Image, UnidentifiedImageError

        try:
            img = self._load(j)
            if isinstance(img, np.ndarray):
                img = Image.fromarray(img)
            img.load()
            return to_mode(img, self.image_mode)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            if isinstance(e, CorruptFileError):
                raise
            raise CorruptFileError(f"cannot decode {self._describe(j)}: {e}") from e

    # --- learn2learn's MetaDataset protocol --------------------------------------------------
    @property
    def labels_to_indices(self) -> dict[int, list[int]]:
        """``{class: [item indices]}``, as ``learn2learn.data.MetaDataset`` expects."""
        out: dict[int, list[int]] = {c: [] for c in range(len(self.classes))}
        for i, t in enumerate(self.targets):
            out[t].append(i)
        return out

    @property
    def indices_to_labels(self) -> dict[int, int]:
        """``{item index: class}``, as ``learn2learn.data.MetaDataset`` expects."""
        return dict(enumerate(self.targets))

    # --- arrays for episode sampling --------------------------------------------------------------
    def decode(self, j: int, image_size: ImageSize | None = None) -> np.ndarray:
        """Stored image ``j`` as uint8 ``[C, H, W]``, resized (Lanczos) to ``image_size``."""
        from PIL import Image

        img = self._load_pil(j)
        size = _norm_size(image_size)
        if size is not None and img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.Resampling.LANCZOS)
        arr = np.asarray(img, dtype=np.uint8)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return np.ascontiguousarray(arr)

    def arrays(self, image_size: ImageSize | None = None,
               progress: bool | None = None) -> ImageArray:
        """The split as an :class:`ImageArray`, decoded once into the HDF5 cache.

        Args:
            image_size: ``H`` (square) or ``(H, W)``; default :attr:`default_image_size`.
            progress: show a progress bar if the cache has to be built; ``None``: the
                current default (:func:`metakd.engine.show_progress`).
        """
        from metakd.data.cache import load_or_build

        size = _norm_size(image_size if image_size is not None else self.default_image_size)
        if size in self._arrays:
            return self._arrays[size]
        meta = {
            "dataset": type(self).__name__,
            "split": self.split,
            "source": self._fingerprint(),
            "size": size,
            "mode": self.image_mode,
            "decoder": _DECODER_VERSION,
            **self._decode_options(),
        }
        name = f"{type(self).__name__.lower()}-{self.split}-{'x'.join(map(str, size or ('native',)))}"
        images = load_or_build(
            name, meta, self.num_stored, lambda j: self.decode(j, size),
            folder=self.cache_dir, progress=progress,
        )
        c = len(self._base_classes)
        counts = np.bincount(self._store_labels, minlength=c)
        order = np.argsort(self._store_labels, kind="stable")
        items = np.full((c, int(counts.max())), -1, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        for k in range(c):
            items[k, : counts[k]] = order[starts[k] : starts[k] + counts[k]]
        turns = [(r // 90) % 4 for r in self.rotations]
        base = torch.from_numpy(images)
        if turns == [0]:
            stacked = base
        elif base.shape[-1] != base.shape[-2] and any(k % 2 for k in turns):
            raise ValueError(
                f"90/270-degree rotation classes need square images, but {self!r} decodes to "
                f"{tuple(base.shape[-2:])}; pass a square image_size"
            )
        else:  # one block of pre-rotated images per rotation: episodes need no per-class rot90
            stacked = torch.cat([torch.rot90(base, k, dims=(-2, -1)) for k in turns])
        m = self.num_stored
        block_items = [np.where(items >= 0, items + b * m, -1) for b in range(len(turns))]
        arr = ImageArray(
            images=stacked.contiguous(),
            class_items=torch.from_numpy(np.concatenate(block_items)),
            class_counts=torch.from_numpy(np.tile(counts.astype(np.int64), len(turns))),
            class_rotation=torch.tensor([k for k in turns for _ in range(c)], dtype=torch.int64),
            class_names=list(self.classes),
        )
        self._arrays[size] = arr
        return arr

    def __repr__(self) -> str:
        n = getattr(self, "classes", None)
        nc = len(n) if n is not None else "?"
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"classes={nc}, items={len(self) if n is not None else '?'})"
        )
