"""miniImageNet (Vinyals et al. 2016) with the class split of Ravi & Larochelle (ICLR 2017).

100 ILSVRC-2012 classes, 600 images each, split 64 / 16 / 20 classes for train / val / test.
The images are not redistributable: every copy in use was made by someone from ImageNet, in one
of five on-disk formats, all of which :class:`MiniImageNet` reads (``format="auto"`` finds
which one ``root`` holds):

``"csv"``: Ravi & Larochelle's CSVs and one folder of images (MAML, Meta-LSTM)::

    root/train.csv  root/val.csv  root/test.csv     # header "filename,label"
    root/images/n0153282900000005.jpg ...           # row: n0153282900000005.jpg,n01532829

``"folders"``: one folder per class (MTL, markdtw's Meta-LSTM, mini-imagenet-tools)::

    root/{train,val,test}/<wnid>/*.jpg

``"pickle"``: Ren et al.'s caches (``few-shot-ssl-public``)::

    root/mini-imagenet-cache-{train,val,test}.pkl   # {"image_data": uint8 [N,84,84,3],
                                                    #  "class_dict": {wnid: [row, ...]}}

``"gidaris"``: Gidaris & Komodakis' pickles (Meta-Baseline, GDA; Python-2, latin1)::

    root/miniImageNet_category_split_{train_phase_train,train_phase_val,train_phase_test,
                                      val,test}.pickle     # {"data": uint8 [N,84,84,3],
                                                           #  "labels": [int, ...]}

``"hdf5"``: torchmeta's conversion of the pickles (PMAML)::

    root/{train,val,test}_data.hdf5     # /datasets/<wnid>: uint8 [600, 84, 84, 3]
    root/{train,val,test}_labels.json   # ["n01532829", ...]

(``root/miniimagenet/`` is also searched, torchmeta's folder name.)
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metakd.data._io import (
    CorruptFileError,
    DatasetNotFoundError,
    download_url,
    restricted_pickle_load,
)
from metakd.data.datasets._sources import (
    ArraySource,
    FileSource,
    HDF5Source,
    Source,
    SourceDataset,
    compact_labels,
    is_image_file,
    list_subfolders,
    read_labels_json,
    scan_class_folders,
    str_keys,
)

__all__ = ["RAVI_SPLITS", "MiniImageNet"]

log = logging.getLogger(__name__)

#: Ravi & Larochelle's class split (WordNet ids, sorted), from ``twitter/meta-learning-lstm``.
RAVI_SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "n01532829", "n01558993", "n01704323", "n01749939", "n01770081", "n01843383", "n01910747",
        "n02074367", "n02089867", "n02091831", "n02101006", "n02105505", "n02108089", "n02108551",
        "n02108915", "n02111277", "n02113712", "n02120079", "n02165456", "n02457408", "n02606052",
        "n02687172", "n02747177", "n02795169", "n02823428", "n02966193", "n03017168", "n03047690",
        "n03062245", "n03207743", "n03220513", "n03337140", "n03347037", "n03400231", "n03476684",
        "n03527444", "n03676483", "n03838899", "n03854065", "n03888605", "n03908618", "n03924679",
        "n03998194", "n04067472", "n04243546", "n04251144", "n04258138", "n04275548", "n04296562",
        "n04389033", "n04435653", "n04443257", "n04509417", "n04515003", "n04596742", "n04604644",
        "n04612504", "n06794110", "n07584110", "n07697537", "n07747607", "n09246464", "n13054560",
        "n13133613",
    ),
    "val": (
        "n01855672", "n02091244", "n02114548", "n02138441", "n02174001", "n02950826", "n02971356",
        "n02981792", "n03075370", "n03417042", "n03535780", "n03584254", "n03770439", "n03773504",
        "n03980874", "n09256479",
    ),
    "test": (
        "n01930112", "n01981276", "n02099601", "n02110063", "n02110341", "n02116738", "n02129165",
        "n02219486", "n02443484", "n02871525", "n03127925", "n03146219", "n03272010", "n03544143",
        "n03775546", "n04146614", "n04149813", "n04418357", "n04522168", "n07613480",
    ),
}

FORMATS = ("csv", "folders", "pickle", "gidaris", "hdf5")
_SPLITS = ("train", "val", "test")
_GIDARIS_SPLITS = ("train_phase_train", "train_phase_val", "train_phase_test", "val", "test")
_CSV_URL = "https://raw.githubusercontent.com/twitter/meta-learning-lstm/master/data/miniImagenet/{}.csv"

_LAYOUTS = {
    "csv": "{root}/{split}.csv + {root}/images/*.jpg   (Ravi & Larochelle; header filename,label)",
    "folders": "{root}/{split}/<wnid>/*.jpg",
    "pickle": "{root}/mini-imagenet-cache-{split}.pkl   (Ren et al.)",
    "gidaris": "{root}/miniImageNet_category_split_{gsplit}.pickle   (Gidaris & Komodakis)",
    "hdf5": "{root}/{split}_data.hdf5 + {root}/{split}_labels.json   (torchmeta)",
}
_GET = """\
How to get it: the images are not public (ImageNet terms), so nothing can download them.
  * MiniImageNet(root, download=True) fetches the Ravi CSVs ({csv_url});
    build images/ from the ILSVRC-2012 train set (https://image-net.org) with
    https://github.com/yaoyao-liu/mini-imagenet-tools (84x84), or
  * use the pickles of Ren et al. (https://github.com/renmengye/few-shot-ssl-public) or of
    Gidaris & Komodakis (https://github.com/gidariss/FewShotWithoutForgetting) if you have
    access to them, and point root at their folder."""


def _files(folder: Path, split: str, gsplit: str) -> dict[str, list[Path]]:
    return {
        "csv": [folder / f"{split}.csv", folder / "images"],
        "folders": [folder / split],
        "pickle": [folder / f"mini-imagenet-cache-{split}.pkl"],
        "gidaris": [folder / f"miniImageNet_category_split_{gsplit}.pickle"],
        "hdf5": [folder / f"{split}_data.hdf5", folder / f"{split}_labels.json"],
    }


def _present(fmt: str, paths: list[Path]) -> bool:
    if fmt == "csv":
        return paths[0].is_file() and paths[1].is_dir()
    if fmt == "folders":
        return paths[0].is_dir()
    return all(p.is_file() for p in paths)


class MiniImageNet(SourceDataset):
    """miniImageNet, Ravi & Larochelle's 64 / 16 / 20 class split, from any common format.

    Classes are sorted WordNet ids (for the Gidaris pickles: the pickle's labels shifted to
    start at 0, as Meta-Baseline does, which is also sorted-wnid order). Within a class,
    images are sorted by file name (csv, folders) or keep their order in the file (pickle,
    gidaris, hdf5). A class set different from Ravi & Larochelle's is logged as a warning; a
    class folder (``folders`` layout) or HDF5 class without images is an error naming it.

    Takes the common arguments ``transform``, ``target_transform``, ``rotations`` and
    ``cache_dir`` of :class:`~metakd.data.ImageClassDataset`.

    Args:
        root: the folder (see the module docstring for the layouts).
        split: ``"train"``, ``"val"`` or ``"test"``; the Gidaris pickles also have
            ``"train_phase_val"`` and ``"train_phase_test"`` (other images of the 64 train
            classes); ``"train"`` is their ``train_phase_train``.
        format: ``"auto"`` or one of ``"csv"``, ``"folders"``, ``"pickle"``, ``"gidaris"``,
            ``"hdf5"``. With ``"auto"`` the first one found, in this order, is read.
        download: fetch the Ravi CSVs into ``root`` if they are missing. The images are not
            downloadable; the error then says how to make them.

    Attributes:
        format: the format that was read.
        default_image_size: 84, or 80 for the Gidaris pickles (Meta-Baseline's size).

    Example:
        >>> from metakd.data.datasets.miniimagenet import MiniImageNet
        >>> train = MiniImageNet("data/miniimagenet", split="train")   # doctest: +SKIP
        >>> train.format, len(train.classes), len(train)               # doctest: +SKIP
        ('csv', 64, 38400)
        >>> train.arrays(84).images.shape                              # doctest: +SKIP
        torch.Size([38400, 3, 84, 84])

    References:
        Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016.
        Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017.
    """

    image_mode: str = "RGB"
    default_image_size: int | tuple[int, int] | None = 84

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
        super().__init__(root, split, transform=transform, target_transform=target_transform,
                         rotations=rotations, cache_dir=cache_dir)
        if format != "auto" and format not in FORMATS:
            raise ValueError(f"format must be 'auto' or one of {FORMATS}, got {format!r}")
        gidaris_only = split in _GIDARIS_SPLITS and split not in _SPLITS
        if split not in _SPLITS and not gidaris_only:
            raise ValueError(
                f"split must be one of {_SPLITS} (or, for the Gidaris pickles, "
                f"{_GIDARIS_SPLITS[1:3]}), got {split!r}"
            )
        if gidaris_only and format not in ("auto", "gidaris"):
            raise ValueError(f"split {split!r} exists only in the Gidaris pickles (format='gidaris')")
        if download:
            self.download()
        fmt, paths = self._find(format, gidaris_only)
        self.format = fmt
        reader = {
            "csv": self._read_csv, "folders": self._read_folders, "pickle": self._read_pickle,
            "gidaris": self._read_gidaris, "hdf5": self._read_hdf5,
        }[fmt]
        source, labels, names = reader(paths)
        if fmt == "gidaris":
            self.default_image_size = 80  # Meta-Baseline's size
        base_split = "train" if split.startswith("train") else split
        if fmt != "gidaris" and set(names) != set(RAVI_SPLITS[base_split]):
            log.warning(
                "%s: the %d classes of split %r differ from Ravi & Larochelle's %d",
                self.root, len(names), split, len(RAVI_SPLITS[base_split]),
            )
        self._init_source(source, labels, names)

    # --- discovery ---------------------------------------------------------------------------
    def _find(self, format: str, gidaris_only: bool) -> tuple[str, list[Path]]:
        split = self.split
        gsplit = "train_phase_train" if split == "train" else split
        formats = ("gidaris",) if gidaris_only else FORMATS if format == "auto" else (format,)
        for folder in (self.root, self.root / "miniimagenet"):
            candidates = _files(folder, split, gsplit)
            for fmt in formats:
                if _present(fmt, candidates[fmt]):
                    return fmt, candidates[fmt]
        hint = ""
        if (self.root / f"{split}.csv").is_file() and not (self.root / "images").is_dir():
            hint = f"Found {split}.csv but no images/ folder next to it.\n"
        raise DatasetNotFoundError(
            f"no miniImageNet split {split!r} found in {self.root} (nor in its miniimagenet/ "
            "sub-folder). Looked for:\n" + self._layouts(formats, gsplit) + hint + _GET.format(
                csv_url=_CSV_URL.format("{split}"))
        )

    def _layouts(self, formats: Sequence[str], gsplit: str) -> str:
        return "".join(
            f"  {fmt:8s} " + _LAYOUTS[fmt].format(root=self.root, split=self.split, gsplit=gsplit)
            + "\n" for fmt in formats
        )

    def download(self) -> None:
        """Download Ravi & Larochelle's ``train/val/test.csv`` into ``root`` (not the images)."""
        for s in _SPLITS:
            if not (self.root / f"{s}.csv").is_file():
                download_url(_CSV_URL.format(s), self.root, f"{s}.csv")

    # --- readers -----------------------------------------------------------------------------
    def _read_csv(self, paths: list[Path]) -> tuple[Source, Sequence[int] | np.ndarray, list[str]]:
        csv_path, images = paths
        try:
            with open(csv_path, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
        except (OSError, UnicodeDecodeError) as e:
            raise CorruptFileError(f"cannot read {csv_path}: {e}") from e
        if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
            raise CorruptFileError(f"{csv_path}: the first line must be the header 'filename,label'")
        entries = []
        for n, row in enumerate(rows[1:], start=2):
            if not row:
                continue
            if len(row) != 2:
                raise CorruptFileError(f"{csv_path}, line {n}: expected 'filename,label', got {row}")
            entries.append((row[1].strip(), row[0].strip()))
        names = sorted({label for label, _ in entries})
        index = {c: k for k, c in enumerate(names)}
        entries.sort(key=lambda e: (index[e[0]], e[1]))
        present = set(os.listdir(images))
        missing = [name for _, name in entries if name not in present]
        if missing:
            raise DatasetNotFoundError(
                f"{len(missing)} of the {len(entries)} images listed in {csv_path} are missing "
                f"from {images} (e.g. {missing[0]}).\n" + _GET.format(csv_url=_CSV_URL.format("{split}"))
            )
        files = [images / name for _, name in entries]
        return FileSource(files, images), [index[c] for c, _ in entries], names

    def _read_folders(self, paths: list[Path]) -> tuple[Source, Sequence[int] | np.ndarray, list[str]]:
        folder = paths[0]
        if not list_subfolders(folder):
            loose = [f for f in os.listdir(folder) if is_image_file(f)]
            raise DatasetNotFoundError(
                f"{folder} has no class sub-folders"
                + (f" ({len(loose)} loose images: use the csv layout for those)" if loose else "")
                + f"; expected {folder}/<wnid>/*.jpg"
            )
        files, labels, names = scan_class_folders(folder)
        return FileSource(files, folder), labels, names

    def _read_pickle(self, paths: list[Path]) -> tuple[Source, Sequence[int] | np.ndarray, list[str]]:
        path = paths[0]
        d = str_keys(restricted_pickle_load(path), path)
        if "image_data" not in d or "class_dict" not in d:
            raise CorruptFileError(f"{path} must hold 'image_data' and 'class_dict', has {sorted(d)}")
        images = np.asarray(d["image_data"])
        class_dict = str_keys(d["class_dict"], path)
        names = sorted(class_dict)
        rows: list[int] = []
        labels: list[int] = []
        for k, name in enumerate(names):
            idx = [int(i) for i in class_dict[name]]
            if idx and (min(idx) < 0 or max(idx) >= len(images)):
                raise CorruptFileError(f"{path}: class {name} indexes rows outside image_data")
            rows += idx
            labels += [k] * len(idx)
        src = ArraySource(images, [path], path.name, index=np.asarray(rows, dtype=np.int64))
        return src, labels, names

    def _read_gidaris(self, paths: list[Path]) -> tuple[Source, Sequence[int] | np.ndarray, list[str]]:
        path = paths[0]
        d = str_keys(restricted_pickle_load(path, encoding="latin1"), path)
        if "data" not in d or "labels" not in d:
            raise CorruptFileError(f"{path} must hold 'data' and 'labels', has {sorted(d)}")
        try:
            labels, values = compact_labels(d["labels"])
        except ValueError as e:
            raise CorruptFileError(f"{path}: {e}") from e
        names = [str(v) for v in values]
        if "catname2label" in d:
            inv = {int(v): k for k, v in str_keys(d["catname2label"], path).items()}
            names = [inv.get(int(v), str(v)) for v in values]
        images = np.asarray(d["data"])
        if len(images) != len(labels):
            raise CorruptFileError(f"{path}: {len(images)} images but {len(labels)} labels")
        return ArraySource(images, [path], path.name), labels, names

    def _read_hdf5(self, paths: list[Path]) -> tuple[Source, Sequence[int] | np.ndarray, list[str]]:
        data, labels_json = paths
        names = sorted(read_labels_json(labels_json))
        src = HDF5Source(data, names, extra_files=[labels_json])
        return src, src.labels, names
