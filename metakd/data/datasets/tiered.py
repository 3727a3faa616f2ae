"""tieredImageNet (Ren et al., ICLR 2018): 608 ILSVRC-2012 classes in 34 categories.

The split is by category, 20 / 6 / 8 categories = 351 / 97 / 160 classes for train / val /
test (779,165 images at 84x84), so that train and test classes are far apart in WordNet.

Layouts read (``format="auto"`` finds which one ``root`` holds):

``"npz"``: the arrays Meta-Baseline, MetaOptNet and most code bases use::

    root/{train,val,test}_images.npz   # key "images": uint8 [N, 84, 84, 3], stored **BGR**
    root/{train,val,test}_labels.pkl   # dict with "labels" (Meta-Baseline) or
                                       # "label_specific" [+ "label_general", "*_str"] (Ren)

``"png"``: Ren et al.'s original release::

    root/{train,val,test}_images_png.pkl   # list of PNG-encoded images (uint8 byte arrays)
    root/{train,val,test}_labels.pkl       # "label_specific", "label_general", "*_str"

``"hdf5"``: torchmeta's conversion::

    root/{split}_data.hdf5 (/datasets/<class>: PNG bytes) + root/{split}_labels.json
    (or under root/tieredimagenet/)

``"folders"``: one folder per class, as Meta-Transfer Learning's ``tiered_imagenet.tar``
(``yaoyao-liu/meta-transfer-learning``, its README's download page) and
``tiered-imagenet-tools`` write it::

    root/{train,val,test}/<class>/*.jpg   (or under root/tiered_imagenet/)

Channel order: the npz arrays were made with OpenCV's ``imdecode`` and hold BGR pixels;
Meta-Baseline flips them (``data[:, :, :, ::-1]``). ``channels="auto"`` does the same (BGR for
npz, RGB for the PNG-based layouts); pass ``channels="rgb"`` for an npz you wrote yourself in
RGB.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metakd.data._io import CorruptFileError, DatasetNotFoundError, restricted_pickle_load
from metakd.data.base import check_choice
from metakd.data.datasets._sources import (
    ArraySource,
    EncodedSource,
    FileSource,
    HDF5Source,
    Source,
    SourceDataset,
    compact_labels,
    read_labels_json,
    scan_class_folders,
    str_keys,
)

__all__ = ["TIERED_SPLIT_SIZES", "TieredImageNet"]

log = logging.getLogger(__name__)

#: (classes, categories) of each split (Ren et al. 2018).
TIERED_SPLIT_SIZES: dict[str, tuple[int, int]] = {
    "train": (351, 20), "val": (97, 6), "test": (160, 8),
}

_HELP = """\
Expected one of these layouts in {root}:
  npz    {root}/{split}_images.npz + {root}/{split}_labels.pkl   (Meta-Baseline, MetaOptNet)
  png    {root}/{split}_images_png.pkl + {root}/{split}_labels.pkl   (Ren et al.)
  hdf5   {root}/{split}_data.hdf5 + {root}/{split}_labels.json   (torchmeta; or {root}/tieredimagenet/)
  folders {root}/{split}/<class>/*.jpg   (MTL's tiered_imagenet.tar; or {root}/tiered_imagenet/)
How to get it: the images come from ILSVRC-2012 and are not downloadable here. Build them with
  https://github.com/renmengye/few-shot-ssl-public (tiered_imagenet.py, from the ImageNet train
  set), or use the tiered-imagenet archive linked from Meta-Baseline's README
  (https://github.com/yinboc/few-shot-meta-baseline) if you have access to it."""


def load_npz_array(path: Path, key: str) -> np.ndarray:
    """Array ``key`` of an ``.npz``, memory-mapped when stored uncompressed (no pickles).

    ``np.load`` reads a whole npz member into memory (9.5 GB for tieredImageNet's train
    split); an uncompressed member is instead mapped from the file.
    """
    member = f"{key}.npy"
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(member)
            mappable = info.compress_type == zipfile.ZIP_STORED
            if mappable:
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    mappable = version in ((1, 0), (2, 0))
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                    header_len = f.tell()
            if mappable:
                with open(path, "rb") as raw:  # the member's data follows its local header
                    raw.seek(info.header_offset)
                    local = raw.read(30)
                    name_len = int.from_bytes(local[26:28], "little")
                    extra_len = int.from_bytes(local[28:30], "little")
                offset = info.header_offset + 30 + name_len + extra_len + header_len
                if dtype.hasobject:
                    raise CorruptFileError(f"{path}:{member} holds Python objects; refusing")
                return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                                 order="F" if fortran else "C")
        with np.load(path, allow_pickle=False) as z:
            return z[key]
    except KeyError as e:
        raise CorruptFileError(f"{path} has no array {key!r}") from e
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise CorruptFileError(f"cannot read {path}: {e}") from e


class TieredImageNet(SourceDataset):
    """tieredImageNet, 351 / 97 / 160 classes for train / val / test (Ren et al. 2018).

    Labels are the file's labels mapped to ``0..C-1`` in increasing order (Meta-Baseline's
    ``label - min(label)`` when they are contiguous). Class names are the ``*_str`` names of
    Ren's label files when present (e.g. ``n01530575``), else the label numbers.

    Takes the common arguments ``transform``, ``target_transform``, ``rotations`` and
    ``cache_dir`` of :class:`~metakd.data.ImageClassDataset`.

    Args:
        root: the folder (see the module docstring for the layouts).
        split: ``"train"``, ``"val"`` or ``"test"``.
        format: ``"auto"``, ``"npz"``, ``"png"``, ``"hdf5"`` or ``"folders"``.
        label_level: ``"specific"`` (the 608 classes) or ``"general"`` (the 34 categories;
            needs Ren's ``label_general``).
        channels: channel order of the stored arrays: ``"auto"`` (BGR for npz, as
            Meta-Baseline assumes, RGB otherwise), ``"bgr"`` or ``"rgb"``. Images come out RGB.
        download: not possible (the data is not publicly hosted); raises with instructions.

    Example:
        >>> from metakd.data.datasets.tiered import TieredImageNet
        >>> train = TieredImageNet("data/tiered-imagenet", split="train")   # doctest: +SKIP
        >>> len(train.classes), train.format                              # doctest: +SKIP
        (351, 'npz')

    References:
        Ren et al., "Meta-Learning for Semi-Supervised Few-Shot Classification", ICLR 2018.
        Chen et al., "Meta-Baseline: Exploring Simple Meta-Learning for Few-Shot Learning",
        ICCV 2021.
    """

    image_mode: str = "RGB"
    default_image_size: int | tuple[int, int] | None = 84
    _splits = tuple(TIERED_SPLIT_SIZES)
    _formats = ("npz", "png", "hdf5", "folders")

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        format: str = "auto",
        label_level: str = "specific",
        channels: str = "auto",
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        rotations: Sequence[int] = (0,),
        download: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(root, split, format=format, transform=transform,
                         target_transform=target_transform, rotations=rotations,
                         cache_dir=cache_dir)
        check_choice("label_level", label_level, ("specific", "general"))
        check_choice("channels", channels, ("auto", "bgr", "rgb"))
        self.label_level = label_level
        found = self._find(format)
        if found is None:
            prefix = "tieredImageNet cannot be downloaded automatically. " if download else ""
            raise DatasetNotFoundError(
                f"{prefix}no tieredImageNet split {split!r} found in {self.root}.\n"
                + _HELP.format(root=self.root, split=split)
            )
        self.format, paths = found
        self.bgr = channels == "bgr" or (channels == "auto" and self.format == "npz")
        if self.format == "folders":
            if label_level != "specific":
                raise ValueError("the folders layout has only the specific labels")
            files, classes, folders = scan_class_folders(paths[0])
            self._check_count(paths[0], len(folders))
            self._init_source(FileSource(files, paths[0]), classes, folders)
            return
        if self.format == "hdf5":
            if label_level != "specific":
                raise ValueError("the torchmeta hdf5 layout has only the specific labels")
            names = sorted(read_labels_json(paths[1]))
            h5 = HDF5Source(paths[0], names, extra_files=[paths[1]])
            self._init_source(h5, h5.labels, names)
            return
        images_path, labels_path = paths
        labels, names = self._read_labels(labels_path)
        if self.format == "npz":
            arr = load_npz_array(images_path, "images")
            if len(arr) != len(labels):
                raise CorruptFileError(
                    f"{images_path} holds {len(arr)} images, {labels_path} {len(labels)} labels")
            src: Source = ArraySource(arr, [images_path, labels_path], images_path.name,
                                      bgr=self.bgr)
        else:
            blobs = restricted_pickle_load(images_path, encoding="latin1")
            if not isinstance(blobs, (list, tuple, np.ndarray)) or len(blobs) != len(labels):
                raise CorruptFileError(
                    f"{images_path} must hold a list of {len(labels)} encoded images")
            src = EncodedSource(list(blobs), [images_path, labels_path], images_path.name)
        self._init_source(src, labels, names)

    def _find(self, format: str) -> tuple[str, list[Path]] | None:
        s = self.split
        for folder in (self.root, self.root / "tieredimagenet", self.root / "tiered_imagenet"):
            options = {
                "npz": [folder / f"{s}_images.npz", folder / f"{s}_labels.pkl"],
                "png": [folder / f"{s}_images_png.pkl", folder / f"{s}_labels.pkl"],
                "hdf5": [folder / f"{s}_data.hdf5", folder / f"{s}_labels.json"],
            }
            for fmt, paths in options.items():
                if format in ("auto", fmt) and all(p.is_file() for p in paths):
                    return fmt, paths
            if format in ("auto", "folders") and (folder / s).is_dir():
                return "folders", [folder / s]
        return None

    def _check_count(self, path: Path, count: int) -> None:
        """Warn when a split's class count differs from Ren et al.'s."""
        expected = TIERED_SPLIT_SIZES[self.split][0 if self.label_level == "specific" else 1]
        if count != expected:
            log.warning("%s: %d %s classes in split %r, Ren et al.'s has %d",
                        path, count, self.label_level, self.split, expected)

    def _read_labels(self, path: Path) -> tuple[np.ndarray, list[str]]:
        d = str_keys(restricted_pickle_load(path, encoding="latin1"), path)
        key = "label_general" if self.label_level == "general" else next(
            (k for k in ("labels", "label_specific") if k in d), "label_specific")
        if key not in d:
            raise CorruptFileError(f"{path} has no {key!r} (keys: {sorted(d)})")
        try:
            labels, values = compact_labels(np.asarray(d[key]).reshape(-1))
        except ValueError as e:
            raise CorruptFileError(f"{path}: {e}") from e
        strs = d.get(f"{key}_str") if key != "labels" else d.get("label_specific_str")
        names = [str(v) for v in values]
        if strs is not None and len(strs) > int(values.max()) and values.min() >= 0:
            names = [_text(strs[int(v)]) for v in values]
        self._check_count(path, len(names))
        return labels, names

    def _decode_options(self) -> dict[str, Any]:
        return {"bgr": self.bgr}


def _text(s: Any) -> str:
    return s.decode("latin1") if isinstance(s, bytes) else str(s)
