"""Omniglot (Lake, Salakhutdinov and Tenenbaum, Science 2015), as used for few-shot learning.

Three protocols:

* ``"vinyals"`` (Vinyals et al. 2016; the split of torchmeta and most MAML papers):
  1028 / 172 / 423 characters for train / val / test, drawn from both the background and the
  evaluation alphabets. Val = 5 background alphabets; test = 12 evaluation alphabets plus
  characters 42-45 of Gurmukhi; train = the rest. Add ``rotations=(0, 90, 180, 270)`` for the
  usual 4x class augmentation.
* ``"lake"``: the original split, ``split="background"`` (964 characters) or ``"evaluation"``
  (659 characters).
* ``"bundled"``: the real Omniglot subsets shipped inside metakd (MIT licence, see
  ``metakd/data/assets/omniglot/``): meta-train on Balinese, Early_Aramaic, Greek, Korean and
  Latin (136 characters), meta-test on Japanese_(katakana), Sanskrit and Tagalog (106
  characters). Chosen automatically when ``root`` is ``None``.

Images are 105x105 black-on-white PNGs; by default they are inverted (white strokes on black,
as in the reference MAML code) and resized to 28x28 with a Lanczos filter when cached.
Transparent or 16-bit PNGs (re-exported copies) are read by
:func:`metakd.data.base.to_mode`: composited on white, scaled to 8 bits.

A character folder of the requested split that holds no ``.png`` (an incomplete copy) is an
error naming the folder, never skipped silently.
"""

from __future__ import annotations

import os
import re
import threading
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metakd.data._io import CorruptFileError, DatasetNotFoundError, download_url, extract_archive
from metakd.data.base import ImageClassDataset, to_mode

__all__ = ["BUNDLED_OMNIGLOT", "Omniglot"]

BUNDLED_OMNIGLOT = Path(__file__).resolve().parent.parent / "assets" / "omniglot"
"""The folder of the vendored Omniglot subsets (MIT licence), used when ``root`` is ``None``."""
_BUNDLED_ZIPS = ("images_background_small1.zip", "images_background_small2.zip")
_BUNDLED_SPLITS = {
    "train": ("Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"),
    "test": ("Japanese_(katakana)", "Sanskrit", "Tagalog"),
}
_VINYALS_VAL = ("Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)")
_VINYALS_TEST = (
    "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian", "Old_Church_Slavonic_(Cyrillic)",
    "Oriya", "Sylheti", "Syriac_(Serto)", "Tengwar", "Tibetan", "ULOG",
)
_VINYALS_TEST_GURMUKHI = ("character42", "character43", "character44", "character45")

_URL = "https://github.com/brendenlake/omniglot/raw/master/python/{}.zip"
_MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}

_LAYOUT = """\
expected one of these layouts under {root}:
  {root}/images_background/<Alphabet>/characterNN/<id>_<drawer>.png
  {root}/images_evaluation/<Alphabet>/characterNN/<id>_<drawer>.png
or the zips images_background.zip / images_evaluation.zip in {root}
(get them with Omniglot(root, download=True), or from https://github.com/brendenlake/omniglot,
folder python/); root=None uses the small bundled copy."""


@dataclass(frozen=True)
class _Image:
    alphabet: str
    character: str
    source: str  # a folder path, or a zip path
    member: str  # path inside the zip ("" for folders: source is the file)


class _ZipReader:
    """Thread-local ``ZipFile`` handles (one per thread and archive)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def read(self, archive: str, member: str) -> bytes:
        handles = self._local.__dict__.setdefault("zips", {})
        zf = handles.get(archive)
        if zf is None:
            zf = handles[archive] = zipfile.ZipFile(archive)
        return zf.read(member)

    def __getstate__(self) -> dict[str, Any]:  # picklable for DataLoader workers
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._local = threading.local()


_PATH_RE = re.compile(r"(?:^|/)(images_[a-z0-9_]+)/([^/]+)/(character\d+)/([^/]+\.png)$")
_DIR_RE = re.compile(r"(?:^|/)(images_[a-z0-9_]+)/([^/]+)/(character\d+)/$")


def _scan_zip(path: Path) -> tuple[list[_Image], list[_Image]]:
    """The images of a zip, and its character folders without images (``member`` = the folder)."""
    out, folders = [], {}
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            m = _PATH_RE.search(name)
            if m:
                out.append(_Image(m.group(2), m.group(3), str(path), name))
            elif d := _DIR_RE.search(name):
                folders[(d.group(2), d.group(3))] = _Image(d.group(2), d.group(3), str(path), name)
    for im in out:
        folders.pop((im.alphabet, im.character), None)
    return out, list(folders.values())


def _scan_folder(path: Path) -> tuple[list[_Image], list[_Image]]:
    """The images under ``path/<alphabet>/characterNN/``, and the character folders without any."""
    out = []
    for png in path.glob("*/character*/*.png"):
        out.append(_Image(png.parent.parent.name, png.parent.name, str(png), ""))
    full = {(im.alphabet, im.character) for im in out}
    empty = [_Image(d.parent.name, d.name, str(d), "") for d in sorted(path.glob("*/character*"))
             if d.is_dir() and (d.parent.name, d.name) not in full]
    return out, empty


class Omniglot(ImageClassDataset):
    """Omniglot characters as classes, 20 drawings each.

    Takes the common arguments ``transform``, ``target_transform``, ``rotations`` and
    ``cache_dir`` of :class:`~metakd.data.ImageClassDataset`.

    Args:
        root: folder with ``images_background``/``images_evaluation`` (folders or zips), or
            ``None`` for the bundled subsets.
        split: ``"train"``, ``"val"``, ``"test"`` (vinyals, bundled has no val) or
            ``"background"``/``"evaluation"`` (lake); ``"all"`` for every character.
        protocol: ``"vinyals"``, ``"lake"`` or ``"bundled"``; default ``"bundled"`` when
            ``root`` is ``None``, else ``"vinyals"``.
        invert: white strokes on black (``True``, as MAML's reference code) or the raw
            black-on-white drawings.
        download: fetch and extract the two official zips into ``root`` if missing. Zips
            already in ``root`` (placed there by hand) are md5-checked and used without the
            network; without ``download`` they are read as they are. Offline, the error
            names the zip to place and where.

    Example:
        >>> from metakd.data import Omniglot
        >>> train = Omniglot(split="train")            # the bundled copy
        >>> len(train.classes), len(train)
        (136, 2720)
        >>> arr = train.arrays(28)                      # doctest: +SKIP
        >>> arr.images.shape                            # doctest: +SKIP
        torch.Size([2720, 1, 28, 28])
    """

    image_mode: str = "L"
    default_image_size: int | tuple[int, int] | None = 28

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        split: str = "train",
        protocol: str | None = None,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        rotations: Sequence[int] = (0,),
        invert: bool = True,
        download: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(root, split, transform, target_transform, rotations, cache_dir)
        protocol = protocol or ("bundled" if root is None else "vinyals")
        valid = {
            "bundled": ("train", "test", "all"),
            "vinyals": ("train", "val", "test", "all"),
            "lake": ("background", "evaluation", "all"),
        }
        if protocol not in valid:
            raise ValueError(f"protocol must be one of {sorted(valid)}, got {protocol!r}")
        if split not in valid[protocol]:
            raise ValueError(
                f"split {split!r} does not exist in the {protocol!r} protocol; "
                f"choose one of {valid[protocol]}"
            )
        self.protocol = protocol
        self.invert = invert
        self._zips = _ZipReader()
        self._empty: list[_Image] = []  # character folders without images (_scan_root)
        if protocol == "bundled":
            if root is not None:
                raise ValueError("the bundled protocol reads the copy inside metakd: pass root=None")
            images = self._scan_bundled()
        else:
            assert self.root is not None
            if download:
                self.download()
            images = self._scan_root(self.root)
        images = [im for im in images if self._in_split(im)]
        empty = [im for im in self._empty if self._in_split(im)]
        if empty:
            where = [f"{im.source}:{im.member}" if im.member else im.source for im in empty]
            raise CorruptFileError(
                f"Omniglot character folder {where[0]} holds no .png image"
                + (f" (and {len(where) - 1} more: {where[1:4]})" if len(where) > 1 else "")
                + "; the copy is incomplete: extract the official zips again"
            )
        keys = sorted({(im.alphabet, im.character) for im in images})
        index = {k: i for i, k in enumerate(keys)}
        images.sort(key=lambda im: (index[(im.alphabet, im.character)], im.member or im.source))
        self._images = images
        self._setup([index[(im.alphabet, im.character)] for im in images],
                    [f"{a}/{c}" for a, c in keys])

    # --- discovery ---------------------------------------------------------------------------
    def _scan_bundled(self) -> list[_Image]:
        seen: set[tuple[str, str, str]] = set()
        out = []
        for name in _BUNDLED_ZIPS:
            for im in _scan_zip(BUNDLED_OMNIGLOT / name)[0]:
                key = (im.alphabet, im.character, im.member.rsplit("/", 1)[-1])
                if key not in seen:  # Greek and Latin are in both zips
                    seen.add(key)
                    out.append(im)
        return out

    def _scan_root(self, root: Path) -> list[_Image]:
        if not root.is_dir():
            raise DatasetNotFoundError(f"Omniglot root {root} is not a folder.\n" + _LAYOUT.format(root=root))
        out: list[_Image] = []
        self._empty = []
        for part in ("images_background", "images_evaluation"):
            folder, archive = root / part, root / f"{part}.zip"
            if folder.is_dir():
                images, empty = _scan_folder(folder)
            elif archive.is_file():
                images, empty = _scan_zip(archive)
            else:
                continue
            out += images
            self._empty += empty
        if not out:
            raise DatasetNotFoundError(f"no Omniglot images found in {root}.\n" + _LAYOUT.format(root=root))
        self._parts = {
            (im.alphabet, im.character): "evaluation" if "images_evaluation" in (im.member or im.source)
            else "background" for im in out + self._empty
        }
        return out

    def _in_split(self, im: _Image) -> bool:
        if self.split == "all":
            return True
        if self.protocol == "bundled":
            return im.alphabet in _BUNDLED_SPLITS[self.split]
        part = self._parts[(im.alphabet, im.character)]
        if self.protocol == "lake":
            return part == self.split
        is_test = part == "evaluation" and (
            im.alphabet in _VINYALS_TEST
            or (im.alphabet == "Gurmukhi" and im.character in _VINYALS_TEST_GURMUKHI)
        )
        is_val = part == "background" and im.alphabet in _VINYALS_VAL
        return {"test": is_test, "val": is_val, "train": not (is_test or is_val)}[self.split]

    def download(self) -> None:
        """Download and extract ``images_background.zip`` and ``images_evaluation.zip``."""
        assert self.root is not None
        self.root.mkdir(parents=True, exist_ok=True)
        for part, md5 in _MD5.items():
            if (self.root / part).is_dir():
                continue
            archive = download_url(_URL.format(part), self.root, md5=md5)
            extract_archive(archive, self.root)

    # --- ImageClassDataset hooks -----------------------------------------------------------
    def _load(self, j: int) -> Any:
        import io

        from PIL import Image, ImageOps

        im = self._images[j]
        src = io.BytesIO(self._zips.read(im.source, im.member)) if im.member else im.source
        with Image.open(src) as raw:
            gray = to_mode(raw, "L")
        return ImageOps.invert(gray) if self.invert else gray

    def _describe(self, j: int) -> str:
        im = self._images[j]
        return f"{im.source}:{im.member}" if im.member else im.source

    def _fingerprint(self) -> Any:
        sources = sorted({im.source for im in self._images} if any(im.member for im in self._images)
                         else {str(Path(im.source).parent.parent) for im in self._images})
        stats = []
        for s in sources:
            st = os.stat(s)
            stats.append([s, st.st_size, st.st_mtime_ns])
        if not any(im.member for im in self._images):
            # Folder layout: a change to any file changes the directory listing or its mtimes.
            files = [im.source for im in self._images]
            stats.append([len(files), sum(os.stat(f).st_mtime_ns for f in files)])
        return {"protocol": self.protocol, "images": len(self._images), "sources": stats}

    def _decode_options(self) -> dict[str, Any]:
        return {"invert": self.invert}
