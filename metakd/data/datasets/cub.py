"""CUB-200-2011 birds (Wah et al. 2011) with the few-shot split of Chen et al. (ICLR 2019).

200 species, 11,788 images. The few-shot split ("A Closer Look at Few-shot Classification",
also torchmeta's and PMAML's) takes the classes by their 1-based id ``k`` in ``NNN.name``:
train if ``(k - 1) % 4`` is 0 or 2 (100 classes), val if it is 1 (50), test if it is 3 (50).

Layouts read (``format="auto"`` finds which one ``root`` holds):

``"images"``: the official archive, extracted::

    root/CUB_200_2011/images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg
    (or root/images/NNN.name/*.jpg)

``"hdf5"``: torchmeta's conversion (raw JPEG bytes per class)::

    root/{train,val,test}_data.hdf5  + root/{train,val,test}_labels.json   (or root/cub/...)
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from metakd.data._io import DatasetNotFoundError, download_url, extract_archive
from metakd.data.datasets._sources import (
    FileSource,
    HDF5Source,
    SourceDataset,
    list_subfolders,
    read_labels_json,
    scan_class_folders,
)

__all__ = ["CUB", "cub_split_of"]

log = logging.getLogger(__name__)

URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
MD5 = "97eceeb196236b17998738112f37df78"
ARCHIVE = "CUB_200_2011.tgz"
NUM_CLASSES = 200
_CLASS_RE = re.compile(r"^(\d{3})\.")

_HELP = """\
Expected one of these layouts:
  images  {root}/CUB_200_2011/images/NNN.Species_name/*.jpg   (or {root}/images/NNN.*/*.jpg)
  hdf5    {root}/{split}_data.hdf5 + {root}/{split}_labels.json   (torchmeta; or {root}/cub/)
How to get it: CUB(root, download=True) downloads and extracts the official archive
  {url} (md5 {md5}, 1.1 GB);
  or download it by hand and place it as {root}/CUB_200_2011.tgz."""


def cub_split_of(class_id: int) -> str:
    """The few-shot split of CUB class ``class_id`` (1-based, the ``NNN`` of ``NNN.name``).

    Example:
        >>> [cub_split_of(k) for k in (1, 2, 3, 4, 5)]
        ['train', 'val', 'train', 'test', 'train']
    """
    if not 1 <= class_id <= NUM_CLASSES:
        raise ValueError(f"CUB class ids run from 1 to {NUM_CLASSES}, got {class_id}")
    return ("train", "val", "train", "test")[(class_id - 1) % 4]


class CUB(SourceDataset):
    """CUB-200-2011, 100 / 50 / 50 classes for train / val / test (Chen et al. 2019).

    Classes are the ``NNN.name`` folders of the split, sorted (so by id); images sorted by
    file name. Images are RGB of various sizes (a few are grayscale and are converted);
    :meth:`arrays` resizes them to 84x84 by default. A class folder of the split that holds
    no image is an error (``CorruptFileError``) naming it.

    Takes the common arguments ``transform``, ``target_transform``, ``rotations`` and
    ``cache_dir`` of :class:`~metakd.data.ImageClassDataset`.

    Args:
        root: the folder holding ``CUB_200_2011/`` (or the torchmeta files).
        split: ``"train"``, ``"val"``, ``"test"``, or ``"all"`` (the 200 classes).
        format: ``"auto"``, ``"images"`` or ``"hdf5"``.
        download: download and extract the official archive into ``root`` if no layout is
            found (checked md5; archive members leaving ``root`` are refused). An archive
            placed by hand as ``root/CUB_200_2011.tgz`` is md5-checked and extracted without
            the network, with or without ``download``; a wrong checksum is an error naming
            both. Offline, the error names the file to place and where.

    Example:
        >>> from metakd.data.datasets.cub import CUB
        >>> test = CUB("data/cub", split="test", download=True)   # doctest: +SKIP
        >>> len(test.classes)                                     # doctest: +SKIP
        50

    References:
        Wah et al., "The Caltech-UCSD Birds-200-2011 Dataset", CNS-TR-2011-001, 2011.
        Chen et al., "A Closer Look at Few-shot Classification", ICLR 2019.
    """

    image_mode: str = "RGB"
    default_image_size: int | tuple[int, int] | None = 84
    _splits = ("train", "val", "test", "all")
    _formats = ("images", "hdf5")

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        format: str = "auto",
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        rotations: Sequence[int] = (0,),
        download: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(root, split, format=format, transform=transform,
                         target_transform=target_transform, rotations=rotations,
                         cache_dir=cache_dir)
        found = self._find(format)
        if found is None and (download or (self.root / ARCHIVE).is_file()):
            self.download()  # a hand-placed archive is checked and extracted, not downloaded
            found = self._find(format)
        if found is None:
            raise DatasetNotFoundError(
                f"no CUB-200-2011 data found in {self.root}.\n"
                + _HELP.format(root=self.root, split=split if split != "all" else "train",
                               url=URL, md5=MD5)
            )
        self.format, path = found
        if self.format == "images":
            classes = self._split_classes(path)
            files, labels, names = scan_class_folders(path, classes)
            self._init_source(FileSource(files, path), labels, names)
        else:
            if split == "all":
                raise ValueError("the torchmeta hdf5 layout has no 'all' split")
            labels_json = path.with_name(f"{split}_labels.json")
            names = sorted(read_labels_json(labels_json))
            src = HDF5Source(path, names, extra_files=[labels_json])
            self._init_source(src, src.labels, names)

    def _find(self, format: str) -> tuple[str, Path] | None:
        if format in ("auto", "images"):
            for images in (self.root / "CUB_200_2011" / "images", self.root / "images"):
                if images.is_dir():
                    return "images", images
        if format in ("auto", "hdf5") and self.split != "all":
            for folder in (self.root, self.root / "cub"):
                data = folder / f"{self.split}_data.hdf5"
                if data.is_file() and data.with_name(f"{self.split}_labels.json").is_file():
                    return "hdf5", data
        return None

    def _split_classes(self, images: Path) -> list[str]:
        names = []
        for name in list_subfolders(images):
            m = _CLASS_RE.match(name)
            if m is None:
                log.debug("ignoring %s: not a NNN.name class folder", images / name)
                continue
            if self.split == "all" or cub_split_of(int(m.group(1))) == self.split:
                names.append(name)
        if not names:
            raise DatasetNotFoundError(
                f"{images} holds no NNN.name class folders of split {self.split!r}.\n"
                + _HELP.format(root=self.root, split=self.split, url=URL, md5=MD5)
            )
        ids = sorted(int(n[:3]) for n in names)
        if len(set(ids)) != len(ids):
            raise DatasetNotFoundError(f"{images}: two class folders share an id: {names}")
        return names

    def download(self) -> None:
        """Download ``CUB_200_2011.tgz`` (md5-checked) and extract it into ``root``."""
        archive = download_url(URL, self.root, ARCHIVE, md5=MD5)
        extract_archive(archive, self.root)
