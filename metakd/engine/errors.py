"""The classes of failure a run can end with, each with its exit status on the command line.

``metakd`` prints one line for each (``--debug`` shows the traceback) and exits with:

====  ===================================================================================
code  class
====  ===================================================================================
2     :class:`UsageError`: an option or a combination of options cannot run (a negative
      step count, a changed option on resume, an output folder that is an input too)
3     :class:`InputError`: a file or folder given as input is missing, unreadable or of
      another kind (a teacher file that is text, a checkpoint that does not fit the model,
      a malformed config file); the data readers' ``DatasetNotFoundError`` and
      ``CorruptFileError`` count here too
4     :class:`DivergenceError`: training produced a NaN or infinite loss, gradient or weight
5     :class:`RunEnvironmentError`: the machine cannot do what was asked (a full or read-only
      disk, a CUDA device on a machine without one)
====  ===================================================================================

Each class also derives from the built-in exception a caller would catch without metakd
(``ValueError``, ``FloatingPointError``, ``OSError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import errno
import pickle
from typing import ClassVar

__all__ = [
    "DivergenceError",
    "InputError",
    "MetakdError",
    "RunEnvironmentError",
    "UsageError",
    "classify",
]


class MetakdError(Exception):
    """A failure metakd explains in one line; ``exit_code`` is the command's exit status.

    Example:
        >>> UsageError("steps=-1: give 0 or more").exit_code
        2
    """

    exit_code: ClassVar[int] = 1


class UsageError(MetakdError, ValueError):
    """Options that cannot run together or at all (exit status 2).

    Example:
        >>> isinstance(UsageError("x"), ValueError)
        True
    """

    exit_code = 2


class InputError(MetakdError, ValueError):
    """An input file or folder is missing, unreadable or not what was expected (exit status 3).

    Example:
        >>> InputError("teacher.pt is text, not a checkpoint").exit_code
        3
    """

    exit_code = 3


class DivergenceError(MetakdError, FloatingPointError):
    """Training produced a NaN or infinite loss, gradient or weight (exit status 4).

    Example:
        >>> isinstance(DivergenceError("x"), FloatingPointError)
        True
    """

    exit_code = 4


class RunEnvironmentError(MetakdError, OSError):
    """The machine cannot do what was asked: disk full or read-only, no such device (exit 5).

    Example:
        >>> RunEnvironmentError("no CUDA device").exit_code
        5
    """

    exit_code = 5


_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO}


def classify(exc: BaseException) -> int | None:
    """The exit status of a failure that is explained in one line, or ``None`` for a bug.

    :class:`MetakdError` subclasses carry their own; the built-in exceptions that bad input or
    the machine raise map as the table of :mod:`metakd.engine.errors` says: ``ValueError`` 2;
    ``FileNotFoundError``, ``NotADirectoryError``, ``IsADirectoryError`` and unpickling errors
    3; ``FloatingPointError`` 4; a disk ``OSError`` (full, read-only, no permission) and a
    device ``RuntimeError`` (CUDA unavailable) 5.

    Example:
        >>> classify(UsageError("x")), classify(FileNotFoundError("x")), classify(KeyError(1))
        (2, 3, None)
    """
    if isinstance(exc, MetakdError):
        return exc.exit_code
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError,
                        pickle.UnpicklingError)):
        return 3
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
        return 5
    if isinstance(exc, FloatingPointError):
        return 4
    if isinstance(exc, ValueError):
        from metakd.data._io import CorruptFileError

        return 3 if isinstance(exc, CorruptFileError) else 2
    if isinstance(exc, (RuntimeError, AssertionError)) and _is_device_error(str(exc)):
        return 5
    return None


def _is_device_error(message: str) -> bool:
    text = message.lower()
    return any(s in text for s in ("torch not compiled with cuda", "no cuda gpus",
                                   "cuda driver", "found no nvidia driver",
                                   "invalid device ordinal", "cuda is not available"))
