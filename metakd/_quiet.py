"""Two notices that optional dependencies print on import, kept off the terminal.

Only these two messages are dropped; every other line and warning still reaches the terminal.

- **gym's banner.** learn2learn imports ``gym``, whose ``__init__`` prints a notice to
  ``sys.stderr`` (the text of ``gym_notices`` for the installed version) every time a process
  imports it. :func:`import_quietly` imports gym first with ``sys.stderr`` captured, removes
  that notice from what was captured and writes the rest back.
- **CUDA_HOME.** ``torch.utils.cpp_extension`` logs "No CUDA runtime is found, using
  CUDA_HOME=..." when it is imported on a machine with a CUDA toolkit (``CUDA_HOME``, ``nvcc``
  or ``/usr/local/cuda``) but no GPU. Inductor imports it to compile C++ on the CPU
  (``MAMLWrapper(compile=True)``), where that is no news. :func:`drop_cuda_home_warning`
  filters that one record on that module's logger.

Internal module.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import io
import logging
import sys
from types import ModuleType

__all__ = ["drop_cuda_home_warning", "import_quietly"]

_CUDA_HOME_NOTICE = "No CUDA runtime is found"


class _DropCudaHomeNotice(logging.Filter):
    """Drops the CUDA_HOME record of ``torch.utils.cpp_extension``; passes every other."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_CUDA_HOME_NOTICE)


def drop_cuda_home_warning() -> None:
    """Filter ``torch.utils.cpp_extension``'s CUDA_HOME notice (idempotent; call before the
    module is first imported, which is when it logs).

    Example:
        >>> import logging
        >>> drop_cuda_home_warning(); drop_cuda_home_warning()
        >>> logger = logging.getLogger("torch.utils.cpp_extension")
        >>> sum(isinstance(f, _DropCudaHomeNotice) for f in logger.filters)
        1
    """
    logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _DropCudaHomeNotice) for f in logger.filters):
        logger.addFilter(_DropCudaHomeNotice())


def _gym_notice() -> str | None:
    """The notice the installed gym prints on import, or ``None``."""
    try:
        from gym_notices.notices import notices

        notice = notices.get(importlib.metadata.version("gym"))
    except Exception:  # no gym_notices, no gym metadata, another layout: nothing to drop
        return None
    return str(notice) if notice else None


def _import_gym_without_notice() -> None:
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            importlib.import_module("gym")
    except Exception:  # the importer of learn2learn meets the same error, with its own message
        pass
    finally:
        text = captured.getvalue()
        notice = _gym_notice()
        if notice:
            text = text.replace(notice + "\n", "", 1)
        if text:
            sys.stderr.write(text)


def import_quietly(name: str) -> ModuleType:
    """``importlib.import_module(name)`` without gym's banner (learn2learn imports gym).

    Example:
        >>> import_quietly("json").__name__
        'json'
    """
    if "gym" not in sys.modules and importlib.util.find_spec("gym") is not None:
        _import_gym_without_notice()
    return importlib.import_module(name)
