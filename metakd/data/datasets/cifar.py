"""CIFAR-100 (Krizhevsky 2009) and its two few-shot splits, CIFAR-FS and FC100.

* :class:`CIFAR100`: the 100-class classification data set (50,000 train / 10,000 test
  images, fine labels), for whole-classification pre-training and distillation.
* :class:`CIFARFS` (Bertinetto et al., ICLR 2019): 64 / 16 / 20 fine classes picked at random.
* :class:`FC100` (Oreshkin et al., TADAM, NeurIPS 2018): split by superclass, 12 / 4 / 4
  superclasses = 60 / 20 / 20 fine classes, so that train and test share no superclass.

The few-shot splits pool the images of a class from the official train *and* test files (600
images per class). Images are 32x32 RGB.

Layouts read:

``"python"``: the official python archive (all three classes)::

    root/cifar-100-python/{train,test,meta}      (or root/{train,test,meta})

``"pickle"``: MetaOptNet's pickles (Gidaris format: ``data`` uint8 [N,32,32,3], ``labels``)::

    root/CIFAR_FS_{train,val,test}.pickle   |   root/FC100_{train,val,test}.pickle

``"folders"``: one folder per class (MTL's FC100, learn2learn's / R2D2's CIFAR-FS)::

    root/{train,val,test}/<class>/*.png     (or root/data/<class>/*.png, all 100 classes)

A class folder without images is an error naming it, never skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from metakd.data._io import (
    CorruptFileError,
    DatasetNotFoundError,
    download_url,
    extract_archive,
    restricted_pickle_load,
)
from metakd.data.datasets._sources import (
    ArraySource,
    FileSource,
    Source,
    SourceDataset,
    compact_labels,
    scan_class_folders,
    str_keys,
)

__all__ = [
    "CIFAR100",
    "CIFAR100_SUPERCLASSES",
    "CIFARFS",
    "CIFARFS_SPLITS",
    "FC100",
    "FC100_SPLITS",
]

log = logging.getLogger(__name__)

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
ARCHIVE = "cifar-100-python.tar.gz"

#: CIFAR-100's 20 superclasses and their 5 fine classes each (names as in the ``meta`` file).
CIFAR100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
_SUPER_OF = {c: s for s, cs in CIFAR100_SUPERCLASSES.items() for c in cs}

#: Bertinetto et al.'s CIFAR-FS class split (``splits/bertinetto/*.txt`` of R2D2; the same
#: lists as torchmeta's ``assets/cifar100/cifar-fs``), sorted.
CIFARFS_SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "apple", "aquarium_fish", "bear", "bee", "bottle", "bowl", "bridge", "bus", "can",
        "castle", "caterpillar", "chair", "clock", "cloud", "cockroach", "couch", "cup",
        "dinosaur", "dolphin", "elephant", "forest", "girl", "boy", "hamster", "house",
        "kangaroo", "keyboard", "lawn_mower", "lion", "lizard", "lobster", "mountain", "mouse",
        "mushroom", "oak_tree", "orange", "orchid", "palm_tree", "pear", "pine_tree", "plate",
        "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "seal", "shrew", "skunk",
        "skyscraper", "snake", "spider", "squirrel", "streetcar", "sunflower", "tank", "tiger",
        "train", "trout", "tulip", "turtle", "willow_tree", "wolf",
    ),
    "val": (
        "beaver", "beetle", "butterfly", "camel", "cattle", "crab", "crocodile", "flatfish",
        "lamp", "maple_tree", "motorcycle", "otter", "sea", "shark", "television", "tractor",
    ),
    "test": (
        "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain",
        "poppy", "rocket", "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe",
        "whale", "woman", "worm",
    ),
}
CIFARFS_SPLITS = {k: tuple(sorted(v)) for k, v in CIFARFS_SPLITS.items()}

#: Oreshkin et al.'s FC100 split by superclass (TADAM; torchmeta ``assets/cifar100/fc100``).
FC100_SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "fish", "flowers", "food_containers", "fruit_and_vegetables",
        "household_electrical_devices", "household_furniture", "large_man-made_outdoor_things",
        "large_natural_outdoor_scenes", "reptiles", "trees", "vehicles_1", "vehicles_2",
    ),
    "val": ("large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates",
            "small_mammals"),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}

_HELP = """\
Expected one of these layouts:
  python   {root}/cifar-100-python/{{train,test,meta}}   (the official python version)
{extra}How to get it: {name}(root, download=True) downloads and extracts
  {url} (md5 {md5}, 161 MB);
  or download it by hand and place it as {root}/cifar-100-python.tar.gz."""


def _python_folder(root: Path) -> Path | None:
    for folder in (root / "cifar-100-python", root):
        if all((folder / f).is_file() for f in ("train", "test", "meta")):
            return folder
    return None


def _download(root: Path) -> None:
    """Extract the official archive into ``root``: a hand-placed copy (md5-checked), else downloaded."""
    if _python_folder(root) is None:
        archive = download_url(URL, root, ARCHIVE, md5=MD5)
        extract_archive(archive, root)


def _placed(root: Path) -> bool:
    """Whether the official archive was placed in ``root`` by hand (and not yet extracted)."""
    return (root / ARCHIVE).is_file() and _python_folder(root) is None


class _Cifar:
    """The decoded python archive: images ``[N, 3, 32, 32]`` and labels of one or both parts."""

    def __init__(self, folder: Path, parts: Sequence[str]) -> None:
        meta = str_keys(restricted_pickle_load(folder / "meta"), folder / "meta")
        try:
            self.fine_names = [str(s) for s in meta["fine_label_names"]]
            self.coarse_names = [str(s) for s in meta["coarse_label_names"]]
        except KeyError as e:
            raise CorruptFileError(f"{folder / 'meta'} has no {e}") from e
        images, fine, coarse = [], [], []
        self.files = [folder / "meta"]
        for part in parts:
            path = folder / part
            d = str_keys(restricted_pickle_load(path), path)
            try:
                data = np.asarray(d["data"], dtype=np.uint8)
                images.append(data.reshape(len(data), 3, 32, 32))
                fine.append(np.asarray(d["fine_labels"], dtype=np.int64))
                coarse.append(np.asarray(d["coarse_labels"], dtype=np.int64))
            except (KeyError, ValueError) as e:
                raise CorruptFileError(f"{path} is not a CIFAR-100 python file: {e}") from e
            if len(fine[-1]) != len(images[-1]):
                raise CorruptFileError(f"{path}: {len(images[-1])} images, {len(fine[-1])} labels")
            self.files.append(path)
        self.images = images[0] if len(images) == 1 else np.concatenate(images)
        self.fine = np.concatenate(fine)
        self.coarse = np.concatenate(coarse)
        self.origin = "+".join(str(folder / p) for p in parts)
        if self.fine.size and (self.fine.min() < 0 or self.fine.max() >= len(self.fine_names)):
            raise CorruptFileError(f"{self.origin}: fine labels outside the {len(self.fine_names)} names")


class CIFAR100(SourceDataset):
    """CIFAR-100 for classification: 100 fine classes, 50,000 train / 10,000 test images.

    Items keep the order of the official files, and class ``i`` is ``fine_label_names[i]``
    (alphabetical), so indices and labels match torchvision's ``CIFAR100``.

    Takes the common arguments ``transform``, ``target_transform`` and ``cache_dir`` of
    :class:`~metakd.data.ImageClassDataset` (no rotation classes).

    Args:
        root: folder holding ``cifar-100-python/``.
        split: ``"train"`` or ``"test"``.
        download: download and extract the official archive (md5-checked) if missing. An
            archive placed by hand as ``root/cifar-100-python.tar.gz`` is md5-checked and
            extracted without the network, with or without ``download``.

    Attributes:
        coarse_targets: superclass index of every item (into ``coarse_classes``).

    Example:
        >>> from metakd.data.datasets.cifar import CIFAR100
        >>> train = CIFAR100("data/cifar", split="train", download=True)   # doctest: +SKIP
        >>> len(train), train.classes[:2]                                 # doctest: +SKIP
        (50000, ['apple', 'aquarium_fish'])

    References:
        Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009.
    """

    image_mode: str = "RGB"
    default_image_size: int | tuple[int, int] | None = 32
    _splits = ("train", "test")

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        download: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(root, split, transform=transform, target_transform=target_transform,
                         cache_dir=cache_dir)
        if download or _placed(self.root):
            _download(self.root)
        folder = _python_folder(self.root)
        if folder is None:
            raise DatasetNotFoundError(
                f"no CIFAR-100 found in {self.root}.\n"
                + _HELP.format(root=self.root, extra="", name="CIFAR100", url=URL, md5=MD5)
            )
        data = _Cifar(folder, [split])
        self.format = "python"
        self.coarse_classes = data.coarse_names
        self.coarse_targets = data.coarse.tolist()
        src = ArraySource(data.images, data.files, data.origin, chw=True)
        self._init_source(src, data.fine, data.fine_names)


class _FewShotCifar(SourceDataset):
    """Shared reader of CIFAR-FS and FC100 (see those classes)."""

    image_mode: str = "RGB"
    default_image_size: int | tuple[int, int] | None = 32
    _pickle_prefix: ClassVar[str] = ""
    _splits = ("train", "val", "test")
    _formats = ("python", "pickle", "folders")

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
        self.split_classes = tuple(sorted(self.classes_of_split(split)))
        found = self._find(format)
        if found is None and (download or _placed(self.root)) and format in ("auto", "python"):
            _download(self.root)
            found = self._find(format)
        if found is None:
            raise DatasetNotFoundError(self._help())
        self.format, path = found
        reader = {"python": self._read_python, "pickle": self._read_pickle,
                  "folders": self._read_folders}[self.format]
        source, labels, names = reader(path)
        self._init_source(source, labels, names)

    @staticmethod
    def classes_of_split(split: str) -> tuple[str, ...]:
        """The fine CIFAR-100 classes of ``split``."""
        raise NotImplementedError

    # --- discovery ---------------------------------------------------------------------------
    def _candidates(self) -> dict[str, list[Path]]:
        return {
            "python": [self.root / "cifar-100-python", self.root],
            "pickle": [self.root / f"{self._pickle_prefix}_{self.split}.pickle"],
            "folders": [self.root / self.split, self.root / "data"],
        }

    def _find(self, format: str) -> tuple[str, Path] | None:
        for fmt, paths in self._candidates().items():
            if format not in ("auto", fmt):
                continue
            if fmt == "python":
                folder = _python_folder(self.root)
                if folder is not None:
                    return fmt, folder
            for p in paths:
                if fmt == "pickle" and p.is_file():
                    return fmt, p
                if fmt == "folders" and p.is_dir():
                    return fmt, p
        return None

    def _help(self) -> str:
        name = type(self).__name__
        c = self._candidates()
        extra = (
            f"  pickle   {c['pickle'][0]}   (MetaOptNet)\n"
            f"  folders  {c['folders'][0]}/<class>/*.png   (or {c['folders'][1]}/<class>/*.png)\n"
        )
        return (f"no {name} split {self.split!r} found in {self.root}.\n"
                + _HELP.format(root=self.root, extra=extra, name=name, url=URL, md5=MD5))

    # --- readers -----------------------------------------------------------------------------
    def _check_split(self, names: Sequence[str], where: Path) -> None:
        if set(names) != set(self.split_classes):
            log.warning("%s: the %d classes of split %r differ from %s's %d",
                        where, len(names), self.split, type(self).__name__, len(self.split_classes))

    def _read_python(self, folder: Path) -> tuple[Source, Sequence[int] | np.ndarray, list[str]]:
        data = _Cifar(folder, ["train", "test"])
        expected = np.array([data.coarse_names.index(_SUPER_OF[n]) if _SUPER_OF.get(n) in
                             data.coarse_names else -1 for n in data.fine_names])
        if not np.array_equal(expected[data.fine], data.coarse):
            raise CorruptFileError(f"{data.origin}: superclasses do not match CIFAR-100's")
        missing = [c for c in self.split_classes if c not in data.fine_names]
        if missing:
            raise CorruptFileError(f"{folder / 'meta'} lacks the classes {missing}")
        lookup = np.full(len(data.fine_names), -1, dtype=np.int64)
        for k, c in enumerate(self.split_classes):
            lookup[data.fine_names.index(c)] = k
        labels = lookup[data.fine]
        rows = np.flatnonzero(labels >= 0)
        rows = rows[np.argsort(labels[rows], kind="stable")]  # class-major, file order within
        src = ArraySource(data.images, data.files, data.origin, index=rows, chw=True)
        return src, labels[rows], list(self.split_classes)

    def _read_pickle(self, path: Path) -> tuple[Source, Sequence[int] | np.ndarray, list[str]]:
        d = str_keys(restricted_pickle_load(path, encoding="latin1"), path)
        if "data" not in d or "labels" not in d:
            raise CorruptFileError(f"{path} must hold 'data' and 'labels', has {sorted(d)}")
        try:
            labels, values = compact_labels(d["labels"])
        except ValueError as e:
            raise CorruptFileError(f"{path}: {e}") from e
        fine = sorted(c for cs in CIFAR100_SUPERCLASSES.values() for c in cs)
        names = [str(v) for v in values]
        if values.min() >= 0 and values.max() < 100:  # CIFAR-100 fine ids?
            as_fine = [fine[int(v)] for v in values]
            if set(as_fine) == set(self.split_classes):
                names = as_fine
        self._check_split(names, path)
        images = np.asarray(d["data"])
        if len(images) != len(labels):
            raise CorruptFileError(f"{path}: {len(images)} images but {len(labels)} labels")
        return ArraySource(images, [path], path.name), labels, names

    def _read_folders(self, folder: Path) -> tuple[Source, Sequence[int] | np.ndarray, list[str]]:
        classes = list(self.split_classes) if folder.name == "data" else None
        if classes is not None:
            missing = [c for c in classes if not (folder / c).is_dir()]
            if missing:
                raise DatasetNotFoundError(f"{folder} lacks the class folders {missing}\n" + self._help())
        files, labels, names = scan_class_folders(folder, classes)
        self._check_split(names, folder)
        return FileSource(files, folder), labels, names


class CIFARFS(_FewShotCifar):
    """CIFAR-FS (Bertinetto et al. 2019): 64 / 16 / 20 CIFAR-100 classes, 600 images each.

    Classes are sorted by name (:data:`CIFARFS_SPLITS`); the images of a class are those of the
    official train file followed by those of the test file.

    Takes the common arguments ``transform``, ``target_transform``, ``rotations`` and
    ``cache_dir`` of :class:`~metakd.data.ImageClassDataset`.

    Args:
        root: folder holding ``cifar-100-python/`` (or MetaOptNet's ``CIFAR_FS_{split}.pickle``,
            or ``{split}/<class>/`` / ``data/<class>/`` folders).
        split: ``"train"``, ``"val"`` or ``"test"``.
        format: ``"auto"``, ``"python"``, ``"pickle"`` or ``"folders"``.
        download: download the official CIFAR-100 archive (md5-checked) if nothing is found.
            An archive placed by hand as ``root/cifar-100-python.tar.gz`` is md5-checked and
            extracted without the network, with or without ``download``.

    Example:
        >>> from metakd.data.datasets.cifar import CIFARFS
        >>> val = CIFARFS("data/cifar", split="val", download=True)   # doctest: +SKIP
        >>> len(val.classes), len(val)                                # doctest: +SKIP
        (16, 9600)

    References:
        Bertinetto, Henriques, Torr and Vedaldi, "Meta-learning with differentiable closed-form
        solvers", ICLR 2019.
    """

    _pickle_prefix: ClassVar[str] = "CIFAR_FS"

    @staticmethod
    def classes_of_split(split: str) -> tuple[str, ...]:
        return CIFARFS_SPLITS[split]


class FC100(_FewShotCifar):
    """FC100 (Oreshkin et al. 2018): CIFAR-100 split by superclass, 60 / 20 / 20 classes.

    The superclasses of each split are :data:`FC100_SPLITS`; their fine classes (5 each,
    :data:`CIFAR100_SUPERCLASSES`) are the classes, sorted by name; 600 images each (official
    train file, then test file).

    Takes the common arguments ``transform``, ``target_transform``, ``rotations`` and
    ``cache_dir`` of :class:`~metakd.data.ImageClassDataset`.

    Args:
        root: folder holding ``cifar-100-python/`` (or MetaOptNet's ``FC100_{split}.pickle``,
            or MTL's ``{split}/<class>/`` folders).
        split: ``"train"``, ``"val"`` or ``"test"``.
        format: ``"auto"``, ``"python"``, ``"pickle"`` or ``"folders"``.
        download: download the official CIFAR-100 archive (md5-checked) if nothing is found.
            An archive placed by hand as ``root/cifar-100-python.tar.gz`` is md5-checked and
            extracted without the network, with or without ``download``.

    Example:
        >>> from metakd.data.datasets.cifar import FC100
        >>> test = FC100("data/cifar", split="test", download=True)   # doctest: +SKIP
        >>> len(test.classes)                                         # doctest: +SKIP
        20

    References:
        Oreshkin, Rodriguez and Lacoste, "TADAM: Task dependent adaptive metric for improved
        few-shot learning", NeurIPS 2018.
    """

    _pickle_prefix: ClassVar[str] = "FC100"

    @staticmethod
    def classes_of_split(split: str) -> tuple[str, ...]:
        return tuple(sorted(c for s in FC100_SPLITS[split] for c in CIFAR100_SUPERCLASSES[s]))
