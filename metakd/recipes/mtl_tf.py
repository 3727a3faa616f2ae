"""The TF MTL project's settings as metakd's: its ``run_experiment.py`` variables, its meta
learning-rate floor.

``yaoyao-liu/meta-transfer-learning : tensorflow/run_experiment.py`` (commit ``7f71fdd``) sets
the experiment through module variables (``PRE_LR``, ``SHOT_NUM``, ``META_LR_MIN`` ...) that it
turns into ``main.py`` flags. :data:`TF_OPTIONS` declares, once, what each becomes here: a
field of :class:`metakd.recipes.MTLConfig` (with a unit conversion where the TF code counts
otherwise) or a run setting (``SAVE_STEP`` is the checkpoint period of
:func:`metakd.recipes.run`; the data folders are one ``root``). :func:`tf_settings` applies the
table; ``examples/mtl/main.py`` makes command-line options of it.

Example:
    >>> s = tf_settings({"PRE_LR": 0.001, "PRE_TRA_DROP": 0.9, "META_LR": 0.001,
    ...                  "SAVE_STEP": 100, "META_TRA_DIR": "data/mini/train"})
    >>> s.fields["pre_dropout"], s.fields["meta_lr1"], s.fields["root"], s.checkpoint_every
    (0.09999999999999998, 0.001, 'data/mini', 100)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metakd.engine.errors import UsageError

__all__ = ["TF_OPTIONS", "StepFloor", "TFOption", "TFSettings", "tf_settings"]


@dataclass(frozen=True)
class TFOption:
    """One ``run_experiment.py`` variable.

    Attributes:
        name: the variable's name (``"PRE_LR"``).
        type: how its value is parsed (``int``, ``float``, ``str``).
        fields: the :class:`~metakd.recipes.MTLConfig` fields it sets (``()``: a run setting,
            see :func:`tf_settings`).
        help: what it means in the TF code, and the TF default.
        convert: the TF value → the field's value.
    """

    name: str
    type: Callable[[str], Any]
    fields: tuple[str, ...]
    help: str
    convert: Callable[[Any], Any] | None = None


def _keep_to_drop(keep: float) -> float:
    if not 0.0 < keep <= 1.0:
        raise UsageError(f"PRE_TRA_DROP={keep} is a keep rate: give one in (0, 1]")
    return 1.0 - keep


TF_OPTIONS: tuple[TFOption, ...] = (
    TFOption("LOG_DIR", str, ("out_dir",), "the run folder (TF: logs/<LOG_DIR>)"),
    TFOption("GPU_ID", str, (), "GPU id (TF: 1): CUDA_VISIBLE_DEVICES, device cuda"),
    TFOption("NET_ARCH", str, (), "backbone (TF: resnet12): only resnet12 (mtl_resnet12)"),
    TFOption("PRE_TRA_LABEL", str, (), "label of the pre-training run folder (TF: normal)"),
    TFOption("PRE_TRA_ITER_MAX", int, ("pre_steps",),
             "pre-training iterations (TF: 20000): pre_steps"),
    TFOption("PRE_TRA_DROP", float, ("pre_dropout",),
             "dropout keep rate of pre-training (TF: 0.9): pre_dropout = 1 - keep",
             _keep_to_drop),
    TFOption("PRE_DROP_STEP", int, ("pre_lr_drop_steps",),
             "halve the pre-training rate every this many iterations (TF: 5000)"),
    TFOption("PRE_LR", float, ("pre_lr",), "pre-training Adam rate (TF: 0.001)"),
    TFOption("SHOT_NUM", int, ("shots",), "K, support images per class (TF: 1)"),
    TFOption("WAY_NUM", int, ("ways",), "N, classes per task (TF: 5)"),
    TFOption("MAX_ITER", int, ("steps",), "meta-training iterations (TF: 20000)"),
    TFOption("MAX_MAX_ITER", int, ("steps",), "the README's name of MAX_ITER"),
    TFOption("META_BATCH_SIZE", int, ("meta_batch_size",), "tasks per meta-update (TF: 2)"),
    TFOption("PRE_ITER", int, (),
             "which pre-training snapshot (weights_<PRE_ITER>.npy) starts meta-training "
             "(TF: 10000)"),
    TFOption("UPDATE_NUM", int, ("update_step",),
             "inner steps in meta-training (TF: 20; at test 100)"),
    TFOption("SAVE_STEP", int, (), "checkpoint every this many iterations (TF: 100)"),
    TFOption("META_LR", float, ("meta_lr1", "meta_lr2"),
             "meta Adam rate of the scaling and the classifier (TF: 0.001)"),
    TFOption("META_LR_MIN", float, ("lr_min",), "floor of the meta rate (TF: 0.0001)"),
    TFOption("LR_DROP_STEP", int, ("lr_step",),
             "halve the meta rate every this many iterations (TF: 1000)"),
    TFOption("BASE_LR", float, ("base_lr",), "inner-loop rate (TF: 0.001)"),
    TFOption("PRE_TRA_DIR", str, (), "pre-training images: <root>/train"),
    TFOption("META_TRA_DIR", str, (), "meta-training images: <root>/train"),
    TFOption("META_VAL_DIR", str, (), "meta-validation images: <root>/val"),
    TFOption("META_TES_DIR", str, (), "meta-test images: <root>/test"),
)

_DIRS = {"PRE_TRA_DIR": "train", "META_TRA_DIR": "train", "META_VAL_DIR": "val",
         "META_TES_DIR": "test"}


@dataclass
class TFSettings:
    """What the TF variables given amount to.

    Attributes:
        fields: :class:`~metakd.recipes.MTLConfig` fields (``root`` from the data folders).
        checkpoint_every: ``SAVE_STEP`` (the ``checkpoint_every`` of
            :func:`metakd.recipes.run`), or ``None``.
        pre_iter: ``PRE_ITER``, or ``None``.
        gpu: ``GPU_ID``, or ``None``.
        label: ``PRE_TRA_LABEL``, or ``None``.
    """

    fields: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int | None = None
    pre_iter: int | None = None
    gpu: str | None = None
    label: str | None = None


def tf_settings(values: Mapping[str, Any]) -> TFSettings:
    """Apply :data:`TF_OPTIONS` to the variables given (``{name: value}``, ``None``: not given).

    Raises:
        UsageError: a variable that cannot map (another ``NET_ARCH``, data folders that are not
            ``<root>/train``, ``<root>/val``, ``<root>/test`` of one ``root``, an unknown name).

    Example:
        >>> tf_settings({"SHOT_NUM": 5, "MAX_ITER": 200, "LR_DROP_STEP": 50}).fields
        {'shots': 5, 'steps': 200, 'lr_step': 50}
    """
    known = {o.name: o for o in TF_OPTIONS}
    given = {k: v for k, v in values.items() if v is not None}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise UsageError(f"{unknown} are not run_experiment.py variables")
    out = TFSettings()
    for name, v in given.items():
        opt = known[name]
        for f in opt.fields:
            out.fields[f] = opt.convert(v) if opt.convert is not None else v
    if given.get("NET_ARCH") not in (None, "resnet12"):
        raise UsageError(f"NET_ARCH={given['NET_ARCH']}: only resnet12 (mtl_resnet12) is "
                         "provided; the TF code's resnet18 is not")
    if "SAVE_STEP" in given and int(given["SAVE_STEP"]) < 1:
        raise UsageError(f"SAVE_STEP={given['SAVE_STEP']}: give 1 or more")
    out.checkpoint_every = given.get("SAVE_STEP")
    out.pre_iter, out.label = given.get("PRE_ITER"), given.get("PRE_TRA_LABEL")
    out.gpu = None if given.get("GPU_ID") is None else str(given["GPU_ID"])
    roots = {}
    for name, split in _DIRS.items():
        if name in given:
            p = Path(given[name])
            if p.name != split:
                raise UsageError(f"{name}={given[name]}: metakd reads one data folder with "
                                 f"train/val/test sub-folders, so {name} must end in /{split}")
            roots[name] = p.parent
    if len(set(roots.values())) > 1:
        raise UsageError(f"the data folders {sorted(str(given[n]) for n in roots)} are not the "
                         "train/val/test sub-folders of one folder")
    if roots:
        out.fields["root"] = str(next(iter(roots.values())))
    return out


class StepFloor:
    """A step decay with a floor, as a ``LambdaLR`` factor: ``max(gamma^(t // step), floor)``.

    The TF MTL code halves its meta rate every ``LR_DROP_STEP`` iterations and floors it
    (``tensorflow/trainer/meta.py``; that code floors at ``0.1 * META_LR`` whatever
    ``META_LR_MIN`` says, the same value with its defaults); here the floor is ``META_LR_MIN``
    (``MTLConfig.lr_min``) as the option promises, per parameter group:
    ``floor = lr_min / the group's initial rate``.

    Args:
        step: the decay period in steps.
        gamma: the factor per period.
        floor: the smallest factor.

    Example:
        >>> f = StepFloor(2, 0.5, 0.3)
        >>> [f(t) for t in range(6)]
        [1.0, 1.0, 0.5, 0.5, 0.3, 0.3]
    """

    def __init__(self, step: int, gamma: float, floor: float) -> None:
        if step < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        self.step, self.gamma, self.floor = int(step), float(gamma), float(floor)

    def __call__(self, t: int) -> float:
        return max(self.gamma ** (t // self.step), self.floor)
