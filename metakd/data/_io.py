"""File helpers for data sets: checked downloads, safe archive extraction, restricted unpickling."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "CorruptFileError",
    "DatasetNotFoundError",
    "DownloadError",
    "download_url",
    "extract_archive",
    "file_digest",
    "restricted_pickle_load",
]

log = logging.getLogger(__name__)


class DatasetNotFoundError(FileNotFoundError):
    """The data set is not where it was looked for; the message names the expected layout."""


class CorruptFileError(ValueError):
    """A file of a data set cannot be decoded; the message names the file."""


class DownloadError(DatasetNotFoundError):
    """A download failed (offline, unreachable host, HTTP error).

    The message is one line naming the URL, the file to download by hand and the folder to
    put it in.
    """


class _NetworkError(Exception):
    """Internal: the network side of a download failed (wraps the original exception)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None) or e  # URLError keeps the socket error in .reason
    return " ".join(str(reason).split()) or type(e).__name__


def file_digest(path: str | os.PathLike[str], algorithm: str = "md5", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_url(
    url: str,
    folder: str | os.PathLike[str],
    filename: str | None = None,
    md5: str | None = None,
    progress: bool | None = None,
) -> Path:
    """Download ``url`` into ``folder`` (atomically) and check its md5.

    A file already at ``folder/filename`` (downloaded earlier, or placed there by hand, as the
    original projects advise on slow connections) is used without touching the network if
    its md5 matches (or none is given); if it does not match, ``CorruptFileError`` names the
    file and both checksums, and the file is left alone. A downloaded file with the wrong md5
    is not kept.

    Raises:
        DownloadError: the network is unreachable or the server refuses; the one-line message
            names the URL, the file to download by hand and the folder to put it in.
        CorruptFileError: a checksum mismatch.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (filename or url.rstrip("/").rsplit("/", 1)[-1])
    if target.exists():
        if md5 is None:
            log.info("using existing %s", target)
            return target
        got = file_digest(target)
        if got == md5:
            log.info("using existing %s (md5 matches)", target)
            return target
        raise CorruptFileError(
            f"{target} has md5 {got}, expected {md5}: it is not the expected file (incomplete "
            f"or a different version). Replace it with a complete copy of {url}, or delete it "
            "and download again"
        )
    log.info("downloading %s to %s", url, target)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=60)
            except (OSError, http.client.HTTPException) as e:
                raise _NetworkError(e) from None
            with resp:
                total = int(resp.headers.get("Content-Length") or 0)
                _copy_with_progress(resp, out, total, target.name, progress)
        if md5 is not None and (got := file_digest(tmp)) != md5:
            raise CorruptFileError(
                f"download of {url} has md5 {got}, expected {md5}; the file was not kept"
            )
        os.replace(tmp, target)
    except _NetworkError as e:
        checksum = f" (md5 {md5})" if md5 else ""
        raise DownloadError(
            f"cannot download {url}: {_reason(e.error)}. Without network access, download it "
            f"by hand{checksum} and place it as {target.name} in the folder {folder}"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _copy_with_progress(src: BinaryIO, dst: BinaryIO, total: int, name: str,
                        progress: bool | None) -> None:
    from tqdm.auto import tqdm

    from metakd._progress import show_progress

    with tqdm(total=total or None, unit="B", unit_scale=True, desc=name,
              disable=not show_progress(progress)) as bar:
        while True:
            try:
                block = src.read(1 << 20)
            except (OSError, http.client.HTTPException) as e:  # connection lost mid-way
                raise _NetworkError(e) from None
            if not block:
                break
            dst.write(block)
            bar.update(len(block))


def _inside(root: Path, name: str) -> Path:
    dest = (root / name).resolve()
    if dest != root and root not in dest.parents:
        raise CorruptFileError(f"archive member {name!r} would be written outside {root}; refusing")
    return dest


def extract_archive(archive: str | os.PathLike[str], folder: str | os.PathLike[str]) -> Path:
    """Extract a zip or tar archive into ``folder``, refusing members that leave it.

    ``folder`` may already exist (a data folder holding the hand-placed archive itself):
    members are checked against its real location, links already inside it followed.
    Absolute paths, ``..`` components, and links pointing outside ``folder`` raise
    ``CorruptFileError`` before anything is written. Without tarfile's ``data`` filter
    (Python < 3.11.4) tar links are refused altogether, since a chain of links could only be
    judged after extraction.
    """
    archive = Path(archive)
    root = Path(folder).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _inside(root, info.filename)
            zf.extractall(root)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            safe_filter = hasattr(tarfile, "data_filter")
            for m in members:
                _inside(root, m.name)
                if (m.issym() or m.islnk()) and not safe_filter:
                    raise CorruptFileError(f"archive member {m.name!r} is a link; refusing")
                if m.issym():  # relative to the link's folder
                    _inside(root, os.path.join(os.path.dirname(m.name), m.linkname))
                elif m.islnk():  # relative to the archive's root
                    _inside(root, m.linkname)
                if m.isdev():
                    raise CorruptFileError(f"archive member {m.name!r} is a device file; refusing")
            if safe_filter:  # Python >= 3.11.4 / 3.12: checks links as written, drops setuid bits
                try:
                    tf.extractall(root, members=members, filter="data")
                except tarfile.FilterError as e:
                    raise CorruptFileError(f"{archive}: {e}; refusing") from e
            else:
                tf.extractall(root, members=members)
    else:
        raise CorruptFileError(f"{archive} is neither a zip nor a tar archive")
    return root


_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "str"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "bytes"),
    ("builtins", "bytearray"),
    ("__builtin__", "list"),
    ("__builtin__", "dict"),
    ("__builtin__", "set"),
    ("copy_reg", "_reconstructor"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            if module == "__builtin__":
                module = "builtins"
            if module == "copy_reg":
                module = "copyreg"
            if module.startswith("numpy.core") and not hasattr(__import__("numpy"), "core"):
                module = module.replace("numpy.core", "numpy._core")
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to unpickle {module}.{name}: data-set pickles may only hold arrays, "
            "lists, dicts, numbers and strings"
        )


def restricted_pickle_load(path: str | os.PathLike[str], encoding: str = "latin1") -> Any:
    """Load a data-set pickle, admitting only numpy arrays, containers, numbers and strings.

    Python-2 pickles (miniImageNet caches, the Gidaris pickles) need ``encoding="latin1"``.
    Anything else (a class, a function, ``os.system``) raises ``pickle.UnpicklingError``.
    """
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, encoding=encoding).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise CorruptFileError(f"cannot read pickle {path}: {e}") from e


def copy_atomic(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy a file so that ``dst`` is either absent or complete."""
    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
