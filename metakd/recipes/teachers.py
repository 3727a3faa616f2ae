"""Teachers named by a recipe's config: a metakd run folder, or a weights file.

A run folder is read by the method that wrote it (:func:`metakd.recipes.load_run`); a weights
file (a state dict, an mdistiller checkpoint) by :func:`metakd.distill.load_teacher`. The
models that distil (:class:`metakd.distill.Distiller`, :class:`metakd.distill.PMAML`,
:class:`metakd.meta.MetaBaseline`) receive the result as a module, or a function that reads
it at the first training step, and never read run folders themselves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from metakd._frozen import freeze

__all__ = ["load_teacher"]


def load_teacher(
    source: str | os.PathLike[str] | nn.Module,
    arch: str | None = None,
    *,
    num_classes: int | None = None,
    checkpoint: str = "best",
    **model_kwargs: Any,
) -> nn.Module:
    """A frozen teacher model from a run folder, a state-dict file or an mdistiller checkpoint.

    A metakd run folder (``config.json`` with ``best.pt`` or ``last.pt``) gives its model,
    rebuilt by its method with the trained weights; anything else goes to
    :func:`metakd.distill.load_teacher` (state-dict files and mdistiller checkpoints).

    Args:
        source: the run folder or file (or an ``nn.Module``, returned frozen).
        arch: the model's registered name (:func:`metakd.nn.create`), required for files; for
            a run folder, if given, it must match the run's (an error otherwise).
        num_classes: for files, the classes of the teacher's head; default: read from the
            weights.
        checkpoint: for a run folder, ``"best"`` or ``"last"``.
        **model_kwargs: for files, further arguments of the model factory.

    Returns:
        The model, eval mode, ``requires_grad=False``.

    Raises:
        FileNotFoundError: ``source`` does not exist (the message lists the layouts).
        ValueError: a run of another ``arch``, an unknown ``checkpoint``, or a file that
            :func:`metakd.distill.load_teacher` refuses (one line naming the file).

    Example:
        >>> from metakd.recipes import MAMLConfig, run
        >>> _ = run(MAMLConfig(steps=1, meta_batch_size=2, test_tasks=2, out_dir="t",
        ...                    compile="off"), progress=False)
        >>> teacher = load_teacher("t")
        >>> type(teacher).__name__, teacher.training
        ('ConvNet', False)
    """
    from metakd.distill import load_teacher as load_weights_file

    path = None if isinstance(source, nn.Module) else Path(source)
    if path is None or not (path / "config.json").is_file():
        return load_weights_file(source, arch, num_classes=num_classes, **model_kwargs)
    from metakd.recipes.runs import load_run, read_config

    _, cfg = read_config(path)
    run_arch = getattr(cfg, "arch", None) or getattr(cfg, "backbone", None)
    if arch is not None and run_arch is not None and arch != run_arch:
        raise ValueError(f"teacher {path} is a {run_arch!r} run, not {arch!r}")
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint={checkpoint!r}: use 'best' or 'last'")
    return freeze(load_run(path, checkpoint="last" if checkpoint == "last" else "best").model)
