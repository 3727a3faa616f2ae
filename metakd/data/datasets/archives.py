"""Data-set archives placed by hand, as the original projects' READMEs tell users to.

PMAML's README (remiMZ/PMAML-ECAI20) says: create ``datasets/<name>``, put the archive there
(``CUB-200-2011.tgz``, ``miniimagenet.tgz``, ``omniglot.tgz``, from its Google Drive links)
and run with ``--download``. :func:`unpack_local_archive` does that step for metakd's readers:
it finds the archive under any of the names it is known by, checks its md5 where one is
published, and extracts it safely (no member may leave the folder; see
:func:`metakd.data._io.extract_archive`); the reader then finds its layout as usual. An
archive is extracted once: a marker file records the md5 of what was extracted.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from metakd.data._io import CorruptFileError, extract_archive, file_digest

__all__ = ["KNOWN_ARCHIVES", "KnownArchive", "find_local_archive", "unpack_local_archive"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnownArchive:
    """An archive of a data set that users download by hand.

    Attributes:
        dataset: metakd's data-set name.
        names: the file names it is found under (the original's name first).
        md5: its published md5, or ``None`` where none is published (its content is then
            checked by the data set's reader alone, and the md5 is logged).
        source: where it comes from, for messages.
    """

    dataset: str
    names: tuple[str, ...]
    md5: str | None
    source: str


KNOWN_ARCHIVES: tuple[KnownArchive, ...] = (
    KnownArchive("miniimagenet", ("mini-imagenet.tar.gz", "miniimagenet.tgz",
                                  "miniimagenet.tar.gz"),
                 "b38f1eb4251fb9459ecc8e7febf9b2eb",
                 "Ren et al.'s cache pickles (Google Drive 16V_ZlkW4SsnNDtnGmaBRq2OoPmUOc5mY, "
                 "linked by PMAML and torchmeta)"),
    KnownArchive("cub", ("CUB_200_2011.tgz",), "97eceeb196236b17998738112f37df78",
                 "the official CUB-200-2011 archive (Caltech)"),
    KnownArchive("cub", ("CUB-200-2011.tgz",), None,
                 "PMAML's CUB link (Google Drive 1hbzc_P1FuxMkcabkgn9ZKinBwW683j45)"),
    KnownArchive("omniglot", ("omniglot.tgz", "omniglot.tar.gz"), None,
                 "PMAML's Omniglot link (Google Drive 1INlOTyPtnCJgm0hBVvtRLu5a0itk8bjs)"),
)
"""The hand-placed archives metakd recognises, by data set."""

_MARKER = ".metakd-extracted-{}"


def find_local_archive(dataset: str, folder: str | os.PathLike[str]
                       ) -> tuple[Path, KnownArchive] | None:
    """The archive of ``dataset`` placed in ``folder``, and what it is; ``None`` if none is.

    Example:
        >>> find_local_archive("miniimagenet", "nowhere") is None
        True
    """
    root = Path(folder)
    for known in KNOWN_ARCHIVES:
        if known.dataset != dataset:
            continue
        for name in known.names:
            if (root / name).is_file():
                return root / name, known
    return None


def unpack_local_archive(dataset: str, folder: str | os.PathLike[str]) -> Path | None:
    """Check and extract the hand-placed archive of ``dataset`` in ``folder`` (once).

    Returns:
        The archive's path, or ``None`` when ``folder`` holds none.

    Raises:
        CorruptFileError: the archive's md5 is not the published one (a damaged or another
            file: the message names both checksums), or a member would leave ``folder``.

    Example:
        >>> unpack_local_archive("omniglot", "nowhere") is None
        True
    """
    found = find_local_archive(dataset, folder)
    if found is None:
        return None
    path, known = found
    md5 = file_digest(path, "md5")
    if known.md5 is not None and md5 != known.md5:
        raise CorruptFileError(f"{path}: md5 {md5}, but {known.source} has md5 {known.md5}: the "
                               "file is damaged or another archive; download it again")
    marker = path.parent / _MARKER.format(path.name)
    if marker.is_file() and marker.read_text().strip() == md5:
        return path
    if known.md5 is None:
        log.warning("%s: %s publishes no checksum; extracting it (md5 %s) and checking its "
                    "content by the %s reader", path, known.source, md5, dataset)
    else:
        log.info("%s: md5 matches %s; extracting", path, known.source)
    extract_archive(path, path.parent)
    marker.write_text(md5 + "\n")
    return path
