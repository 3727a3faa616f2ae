"""mdistiller (megvii-research/mdistiller): the trainer's ``best``/``latest`` checkpoints.

mdistiller's trainer saves ``{"model": DataParallel(distiller).state_dict(), "optimizer": ...,
"epoch": ..., "best_acc": ...}``: every key starts ``module.student.`` or ``module.teacher.``
(the distiller holds both networks). This format reads the network ``part`` names
(``"student"`` by default, or ``"teacher"``) with mdistiller's classifier names mapped onto
metakd's (:func:`metakd.nn.rename_original_keys`). Its released teachers (``{"model":
state_dict}`` of one network) are plain state dicts, read by
:func:`metakd.distill.load_teacher` without a format.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from metakd.engine.errors import InputError
from metakd.interop import Converted, Format, register_format

__all__ = ["convert", "detect"]

_PARTS = ("student", "teacher")


def _model_state(obj: Any) -> Mapping[str, Any] | None:
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        return obj["model"]
    return None


def _strip(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def detect(obj: Any) -> bool:
    """A trainer checkpoint: ``model`` keys all under ``[module.]student.``/``teacher.``.

    Example:
        >>> detect({"model": {"module.student.fc.weight": 0, "module.teacher.fc.weight": 0}})
        True
        >>> detect({"model": {"fc.weight": 0}})
        False
    """
    state = _model_state(obj)
    if not state:
        return False
    heads = {_strip(str(k)).split(".", 1)[0] for k in state}
    return heads <= set(_PARTS) and "student" in heads


def convert(obj: Any, arch: str | None, part: str = "student", **_: Any) -> Converted:
    """The ``part`` network of a trainer checkpoint, as ``arch``.

    Raises:
        InputError: no ``arch`` (the file does not name it), or an unknown ``part``, or the
            file holds no such part.
    """
    import metakd.nn as mnn

    if part not in _PARTS:
        raise InputError(f"part={part!r}: an mdistiller trainer checkpoint holds 'student' "
                         "and 'teacher'")
    if arch is None:
        raise InputError("an mdistiller trainer checkpoint does not name its architectures: "
                         f"pass arch=... (the {part}'s, for example 'resnet8x4')")
    state = _model_state(obj) or {}
    prefix = part + "."
    own = {_strip(k)[len(prefix):]: v for k, v in state.items()
           if _strip(k).startswith(prefix)}
    if not own:
        raise InputError(f"the mdistiller checkpoint holds no {part} network")
    extras = {k: obj[k] for k in ("epoch", "best_acc") if k in obj
              and isinstance(obj[k], (int, float))}
    return Converted(arch, mnn.rename_original_keys(own, arch), {}, "mdistiller_trainer",
                     {**extras, "part": part})


register_format(Format("mdistiller_trainer", "mdistiller (megvii-research/mdistiller) trainer "
                       "checkpoints", detect, convert, priority=10))
