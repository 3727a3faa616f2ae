"""Storage back-ends shared by the format readers (miniImageNet, CUB, CIFAR, tieredImageNet).

A *source* knows where stored image ``j`` lives (a file, a row of an array, encoded bytes, a row
of an HDF5 data set), how to load it, how to name it in an error, and a cheap fingerprint of the
files it reads; :class:`SourceDataset` plugs a source into
:class:`~metakd.data.base.ImageClassDataset`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from metakd.data._io import CorruptFileError
from metakd.data.base import ImageClassDataset, check_choice

__all__ = ["IMAGE_EXTENSIONS", "SourceDataset", "scan_class_folders"]

#: File name endings read as images (compared case-insensitively).
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
)


def is_image_file(name: str) -> bool:
    """Whether ``name`` is a visible file with an image extension (any case)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_subfolders(folder: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``folder``."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden files and folders skipped), sorted."""
    out: list[Path] = []
    for here, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [Path(here, f) for f in files if is_image_file(f)]
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def stat_files(files: Sequence[str | os.PathLike[str]]) -> list[list[Any]]:
    """``[[name, size, mtime_ns], ...]`` of a few big files (for fingerprints)."""
    out = []
    for f in files:
        st = os.stat(f)
        out.append([os.path.basename(f), st.st_size, st.st_mtime_ns])
    return out


def str_keys(d: Any, path: Path) -> dict[str, Any]:
    """A pickled dict with ``bytes`` keys (Python-2 pickles read as bytes) turned into ``str``."""
    if not isinstance(d, dict):
        raise CorruptFileError(f"{path} holds a {type(d).__name__}, expected a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in d.items()}


def compact_labels(labels: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary integer labels onto ``0..C-1`` in increasing order.

    Returns the new labels and the sorted original label of each new class. For labels that
    are already contiguous this is Meta-Baseline's ``label - min(label)``.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D list of integers, got {arr.dtype} {arr.shape}")
    values, inverse = np.unique(arr, return_inverse=True)
    return inverse.astype(np.int64), values


# --- sources ------------------------------------------------------------------------------------
class Source:
    """Where the stored images of a split live; ``j`` indexes stored images."""

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, j: int) -> Any:
        """Stored image ``j`` as a PIL image or a uint8 ``[H, W]`` / ``[H, W, C]`` array."""
        raise NotImplementedError

    def describe(self, j: int) -> str:
        """Where stored image ``j`` comes from, for error messages."""
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """A small JSON-able identity of the files read."""
        raise NotImplementedError


def _open_image(data: bytes | Path) -> Any:
    from PIL import Image

    if isinstance(data, Path):
        with open(data, "rb") as f:
            img = Image.open(f)
            img.load()
        return img
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


class FileSource(Source):
    """One image file per stored image.

    The fingerprint is a digest of every file's path relative to ``root``, size and
    modification time, so editing, adding or removing an image rebuilds the cache.
    """

    def __init__(self, files: Sequence[Path], root: Path) -> None:
        self.files = list(files)
        self.root = root

    def __len__(self) -> int:
        return len(self.files)

    def load(self, j: int) -> Any:
        return _open_image(self.files[j])

    def describe(self, j: int) -> str:
        return str(self.files[j])

    def fingerprint(self) -> dict[str, Any]:
        h = hashlib.sha256()
        for f in self.files:
            st = os.stat(f)
            rel = os.path.relpath(f, self.root)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return {"files": len(self.files), "sha256": h.hexdigest()}


class ArraySource(Source):
    """Stored images are rows of one uint8 array ``[N, H, W(, C)]`` read from ``files``.

    Args:
        images: the array (in memory or memory-mapped).
        files: the files the array was read from (for the fingerprint).
        origin: how to name the array in errors (e.g. the file name).
        index: row of ``images`` of each stored image (default: all rows in order).
        bgr: the array is stored BGR; loaded images are flipped to RGB.
        chw: rows are ``[C, H, W]`` (the CIFAR layout) rather than ``[H, W, C]``.
    """

    def __init__(
        self,
        images: np.ndarray,
        files: Sequence[Path],
        origin: str,
        index: np.ndarray | None = None,
        bgr: bool = False,
        chw: bool = False,
    ) -> None:
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise CorruptFileError(
                f"{origin}: expected uint8 images [N, H, W(, C)], got {images.dtype} {images.shape}"
            )
        self.images = images
        self.files = [Path(f) for f in files]
        self.origin = origin
        self.index = np.arange(len(images)) if index is None else np.asarray(index, dtype=np.int64)
        self.bgr = bgr
        self.chw = chw

    def __len__(self) -> int:
        return len(self.index)

    def load(self, j: int) -> np.ndarray:
        a = np.asarray(self.images[self.index[j]])
        if self.chw and a.ndim == 3:
            a = a.transpose(1, 2, 0)
        if self.bgr and a.ndim == 3:
            a = a[..., ::-1]
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[..., 0]
        return np.ascontiguousarray(a)

    def describe(self, j: int) -> str:
        return f"row {int(self.index[j])} of {self.origin}"

    def fingerprint(self) -> dict[str, Any]:
        return {"files": stat_files(self.files), "rows": len(self.index), "bgr": self.bgr}


class EncodedSource(Source):
    """Stored images are encoded files (PNG/JPEG bytes) held in memory, e.g. inside a pickle."""

    def __init__(self, blobs: Sequence[Any], files: Sequence[Path], origin: str,
                 index: np.ndarray | None = None) -> None:
        self.blobs = blobs
        self.files = [Path(f) for f in files]
        self.origin = origin
        self.index = np.arange(len(blobs)) if index is None else np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def load(self, j: int) -> Any:
        blob = self.blobs[int(self.index[j])]
        if isinstance(blob, np.ndarray):
            data = blob.tobytes()
        elif isinstance(blob, str):  # a Python-2 str read with encoding="latin1"
            data = blob.encode("latin1")
        else:
            data = bytes(blob)
        return _open_image(data)

    def describe(self, j: int) -> str:
        return f"encoded image {int(self.index[j])} of {self.origin}"

    def fingerprint(self) -> dict[str, Any]:
        return {"files": stat_files(self.files), "rows": len(self.index)}


class HDF5Source(Source):
    """torchmeta's layout: ``<group>/<class>`` data sets, one per class, in an HDF5 file.

    Each data set holds either uint8 arrays ``[n, H, W, C]`` (miniImageNet) or variable-length
    uint8 rows of encoded JPEG/PNG bytes (CUB, tieredImageNet).

    Args:
        path: the ``{split}_data.hdf5`` file.
        classes: the data set names (the class names), in class order.
        extra_files: other files read (the labels JSON), for the fingerprint.
        group: the HDF5 group holding the per-class data sets.
    """

    def __init__(self, path: Path, classes: Sequence[str], extra_files: Sequence[Path] = (),
                 group: str = "datasets") -> None:
        import h5py

        self.path = path
        self.group = group
        self.classes = list(classes)
        self.files = [path, *extra_files]
        self._handle: Any = None
        self._pid = -1
        try:
            with h5py.File(path, "r") as f:
                if group not in f:
                    raise CorruptFileError(f"{path} has no group {group!r} (torchmeta layout)")
                missing = [c for c in self.classes if c not in f[group]]
                if missing:
                    raise CorruptFileError(
                        f"{path}: classes listed in the labels JSON are missing from /{group}: "
                        f"{missing[:5]}{' ...' if len(missing) > 5 else ''}"
                    )
                counts = [int(f[group][c].shape[0]) for c in self.classes]
        except OSError as e:
            raise CorruptFileError(f"cannot read HDF5 file {path}: {e}") from e
        empty = [c for c, n in zip(self.classes, counts) if n == 0]
        if empty:
            raise CorruptFileError(f"{path}: class /{group}/{empty[0]} holds no image"
                                   + (f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""))
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.labels = np.repeat(np.arange(len(self.classes)), self.counts)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, j: int) -> tuple[int, int]:
        k = int(np.searchsorted(self.offsets, j, side="right")) - 1
        return k, j - int(self.offsets[k])

    def _file(self) -> Any:
        import h5py

        if self._handle is None or self._pid != os.getpid():  # reopen in DataLoader workers
            self._handle = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._handle

    def load(self, j: int) -> Any:
        k, i = self._locate(j)
        try:
            row = self._file()[self.group][self.classes[k]][i]
        except (OSError, KeyError) as e:
            raise CorruptFileError(f"cannot read {self.describe(j)}: {e}") from e
        row = np.asarray(row)
        if row.ndim == 1:  # variable-length encoded bytes
            return _open_image(row.astype(np.uint8).tobytes())
        return row

    def describe(self, j: int) -> str:
        k, i = self._locate(j)
        return f"{self.path}:/{self.group}/{self.classes[k]}[{i}]"

    def fingerprint(self) -> dict[str, Any]:
        return {"files": stat_files(self.files), "rows": len(self)}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None, "_pid": -1}


def read_labels_json(path: Path) -> list[str]:
    """torchmeta's ``{split}_labels.json``: a list of class names."""
    try:
        with open(path, encoding="utf-8") as f:
            labels = json.load(f)
    except (OSError, ValueError) as e:
        raise CorruptFileError(f"cannot read {path}: {e}") from e
    if not isinstance(labels, list) or not all(isinstance(s, str) for s in labels):
        raise CorruptFileError(f"{path} must hold a JSON list of class names")
    return labels


class SourceDataset(ImageClassDataset):
    """An :class:`~metakd.data.base.ImageClassDataset` whose images come from a :class:`Source`.

    Its constructor takes the common arguments (``root`` is required) and the requested
    ``format``, checked against the subclass's ``_formats`` (when it declares them) before
    anything is read; ``split`` is checked against ``_splits``. Subclasses then find and scan
    their format, and call :meth:`_init_source`.

    Attributes:
        format: the on-disk format that was read.
    """

    format: str = ""
    root: Path
    _source: Source
    #: The on-disk formats ``format`` may name besides ``"auto"``; empty: the subclass checks.
    _formats: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        *,
        format: str = "auto",
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        rotations: Sequence[int] = (0,),
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if root is None:
            raise TypeError(f"{type(self).__name__} needs root, the folder holding the data set")
        super().__init__(root, split, transform, target_transform, rotations, cache_dir)
        if self._formats:
            check_choice("format", format, ("auto", *self._formats))

    def _init_source(self, source: Source, labels: Sequence[int] | np.ndarray,
                     classes: Sequence[str]) -> None:
        if len(source) != len(labels):
            raise CorruptFileError(
                f"{type(self).__name__}: {len(source)} images but {len(labels)} labels in {self.root}"
            )
        self._source = source
        self._setup(labels, classes)

    def _load(self, j: int) -> Any:
        return self._source.load(j)

    def _describe(self, j: int) -> str:
        return self._source.describe(j)

    def _fingerprint(self) -> Any:
        return {"format": self.format, **self._source.fingerprint()}


def scan_class_folders(folder: Path, classes: Sequence[str] | None = None
                       ) -> tuple[list[Path], list[int], list[str]]:
    """Images of ``folder/<class>/...``: files, class index of each, sorted class names.

    An empty class folder is never skipped: a class folder without image files (hidden files
    and other extensions do not count) raises ``CorruptFileError`` naming it, and how many
    others are empty too. Remove the folder (or restore its images) to go on.

    Args:
        folder: the folder holding one sub-folder per class.
        classes: read only these classes (in this order); default every visible sub-folder,
            sorted.

    Raises:
        CorruptFileError: a class folder holds no image.
    """
    names = list_subfolders(folder) if classes is None else list(classes)
    files: list[Path] = []
    labels: list[int] = []
    empty: list[Path] = []
    for k, name in enumerate(names):
        imgs = list_images(folder / name)
        if not imgs:
            empty.append(folder / name)
        files += imgs
        labels += [k] * len(imgs)
    if empty:
        more = f" (and {len(empty) - 1} more empty class folders: {[p.name for p in empty[1:6]]})"
        raise CorruptFileError(
            f"class folder {empty[0]} holds no image" + (more if len(empty) > 1 else "")
            + f"; every class needs images with one of the extensions {', '.join(IMAGE_EXTENSIONS)}"
        )
    return files, labels, names
