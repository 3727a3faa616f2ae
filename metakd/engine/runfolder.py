"""Atomic files and run-folder transactions: a failed call leaves a run folder as it was.

Every file metakd writes into a run folder goes through :func:`atomic_write`: the bytes go to
a temporary file in the same folder, are flushed to the disk (``fsync``), and the temporary
file is renamed over the target, so a reader (or a run killed with ``kill -9``) sees the old
file or the new one, never a part. Files get the mode a plain ``open`` would give them (0666
less the umask), not the 0600 of a temporary file.

A :class:`RunFolder` groups the files that must change together: :func:`metakd.engine.fit`
stages ``last.pt`` (and ``best.pt`` when validation found a better model) and the caller
stages ``config.json``; :meth:`RunFolder.commit` writes every staged file to its temporary
name first and renames them only when all were written, so a full disk in the middle of a
commit changes nothing.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from metakd.engine.errors import RunEnvironmentError

__all__ = ["RunFolder", "atomic_write", "file_mode"]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def file_mode() -> int:
    """The permission bits of every file in a run folder: 0666 less the process umask.

    Example:
        >>> oct(file_mode()) in ("0o644", "0o664", "0o666", "0o600", "0o640", "0o660")
        True
    """
    return 0o666 & ~_UMASK


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_temp(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new temporary file beside ``path`` (fsynced) and return its path."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _disk_error(path: Path, exc: BaseException) -> RunEnvironmentError:
    reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or "unexpected pos" in str(exc) or "No space" in str(exc):
        try:
            free = shutil.disk_usage(path.parent).free
            reason = f"the disk is full ({free / 2**20:.1f} MiB free)"
        except OSError:
            reason = "the disk is full"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        reason = f"the folder is not writable ({reason})"
    return RunEnvironmentError(f"could not write {path}: {reason}; free space or choose another "
                               "--out-dir (the files already there are unchanged)")


def atomic_write(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace ``path`` by ``data`` atomically (temporary file, ``fsync``, rename).

    Raises:
        RunEnvironmentError: the disk is full or the folder is not writable; ``path`` is as it
            was before the call.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = atomic_write(f"{d}/a.txt", b"hello")
        ...     p.read_bytes()
        b'hello'
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _write_temp(path, data)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if isinstance(e, RunEnvironmentError):
            raise
        raise _disk_error(path, e) from e
    _fsync_dir(path.parent)
    return path


def checkpoint_bytes(state: Any) -> bytes:
    """``torch.save(state)`` into memory (the checkpoint format of ``last.pt``/``best.pt``)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


class RunFolder:
    """A run folder whose files change together or not at all.

    Stage files with :meth:`stage` (bytes, or a function returning them, called at commit
    time) and :meth:`remove` (names deleted by the commit), then :meth:`commit`. Until the
    commit nothing in the folder changes; a commit that fails (disk full, read-only folder)
    removes its temporary files and leaves every file as it was.

    Args:
        path: the folder (created at the first commit if missing).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     run = RunFolder(d)
        ...     run.stage("config.json", b"{}")
        ...     run.stage("last.pt", lambda: checkpoint_bytes({"step": 1}))
        ...     sorted(p.name for p in run.commit())
        ['config.json', 'last.pt']
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._staged: dict[str, bytes | Callable[[], bytes]] = {}
        self._removed: set[str] = set()
        self.commits = 0

    def stage(self, name: str, data: bytes | Callable[[], bytes]) -> None:
        """Write ``name`` (bytes, or a function giving them) at the next :meth:`commit`."""
        self._staged[name] = data
        self._removed.discard(name)

    def remove(self, names: Iterable[str]) -> None:
        """Delete these files (when present) at the next :meth:`commit`."""
        for name in names:
            self._staged.pop(name, None)
            self._removed.add(name)

    @property
    def pending(self) -> list[str]:
        """The names the next commit writes."""
        return list(self._staged)

    def commit(self) -> list[Path]:
        """Write every staged file, all or none; returns the paths written.

        Raises:
            RunEnvironmentError: a file could not be written; nothing changed.
        """
        written: list[tuple[Path, Path]] = []
        target = self.path
        current = target
        try:
            target.mkdir(parents=True, exist_ok=True)
            for name, data in self._staged.items():
                current = target / name
                blob = data() if callable(data) else data
                written.append((_write_temp(current, blob), current))
        except (OSError, RuntimeError) as e:
            for tmp, _ in written:
                tmp.unlink(missing_ok=True)
            if isinstance(e, RunEnvironmentError):
                raise
            raise _disk_error(current, e) from e
        except BaseException:
            for tmp, _ in written:
                tmp.unlink(missing_ok=True)
            raise
        for tmp, final in written:  # renames need no space: they cannot fail on a full disk
            os.replace(tmp, final)
        for name in self._removed:
            (target / name).unlink(missing_ok=True)
        if self.commits == 0:  # temporary files a killed process left behind
            for stale in target.glob(".*.tmp"):
                if stale not in {tmp for tmp, _ in written}:
                    stale.unlink(missing_ok=True)
        _fsync_dir(target)
        self._staged.clear()
        self._removed.clear()
        self.commits += 1
        return [final for _, final in written]

    def discard(self) -> None:
        """Forget what is staged (nothing was written)."""
        self._staged.clear()
        self._removed.clear()
