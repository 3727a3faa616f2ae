"""The default of every progress bar a run shows without being asked (a leaf module).

The data readers (at the bottom of the package) and the engine both read it, so it lives
below both; :mod:`metakd.engine.progress` re-exports it with the training bar.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

__all__ = ["progress_bars", "show_progress"]

_DEFAULT: contextvars.ContextVar[bool] = contextvars.ContextVar("metakd_progress", default=True)


def show_progress(progress: bool | None = None) -> bool:
    """Whether to show a bar: ``progress`` when given, else the current default.

    Example:
        >>> show_progress(), show_progress(False)
        (True, False)
        >>> with progress_bars(False):
        ...     show_progress(), show_progress(True)
        (False, True)
    """
    return _DEFAULT.get() if progress is None else bool(progress)


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Set the default of :func:`show_progress` inside a ``with`` block (restored after).

    Args:
        enabled: ``False`` hides the bars that are not asked for explicitly (data-cache
            decoding, downloads); ``True`` shows them.

    Example:
        >>> with progress_bars(False):
        ...     show_progress()
        False
        >>> show_progress()
        True
    """
    token = _DEFAULT.set(bool(enabled))
    try:
        yield
    finally:
        _DEFAULT.reset(token)
