"""Run logs: one JSON object per line, TensorBoard when installed, and a learning-curve plot."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["JsonlLogger", "plot_learning_curve", "read_log"]

log = logging.getLogger(__name__)


class JsonlLogger:
    """Append records to ``<folder>/log.jsonl`` (and TensorBoard scalars if available).

    Every numeric, finite value of a record goes to TensorBoard as ``KIND/KEY`` (so a named
    loss term ``loss/kd`` of a training record is the scalar ``train/loss/kd``).

    Args:
        folder: run folder; ``None`` disables writing.
        tensorboard: also write TensorBoard event files when ``torch.utils.tensorboard``
            can be imported.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     logger = JsonlLogger(d, tensorboard=False)
        ...     logger.write({"kind": "train", "step": 10, "loss": 0.5, "loss/ce": 0.5})
        ...     logger.close()
        ...     read_log(f"{d}/log.jsonl")
        [{'kind': 'train', 'step': 10, 'loss': 0.5, 'loss/ce': 0.5}]
    """

    def __init__(self, folder: str | os.PathLike[str] | None, tensorboard: bool = True) -> None:
        self.path = Path(folder) / "log.jsonl" if folder is not None else None
        self._tb: Any = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))
                except ImportError:
                    log.debug("tensorboard not installed; logging to JSON lines only")

    def truncate_after(self, step: int) -> None:
        """Drop records after ``step`` (used on resume so the log matches the checkpoint).

        The file is rewritten atomically, and only when a record is dropped.
        """
        if self.path is None or not self.path.exists():
            return
        records = read_log(self.path)
        keep = [r for r in records if r.get("step", 0) <= step]
        if len(keep) == len(records):
            return
        from metakd.engine.runfolder import atomic_write

        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in keep).encode())

    def size(self) -> int:
        """The log's length in bytes (0 without a file): a mark for :meth:`rollback`."""
        if self.path is None or not self.path.exists():
            return 0
        return self.path.stat().st_size

    def rollback(self, size: int) -> None:
        """Cut the log back to ``size`` bytes (a :meth:`size` mark); needs no free disk space."""
        if self.path is None or not self.path.exists() or self.path.stat().st_size <= size:
            return
        os.truncate(self.path, size)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (a JSON-ready dict with ``kind`` and ``step``)."""
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = int(record.get("step", 0))
            for k, v in record.items():
                if (k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
                        and math.isfinite(v)):
                    self._tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, step)

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` file.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = pathlib.Path(d, "log.jsonl").write_text('{"kind": "val", "step": 5}\\n')
        ...     read_log(f"{d}/log.jsonl")
        [{'kind': 'val', 'step': 5}]
    """
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_learning_curve(log_path: str | os.PathLike[str], png_path: str | os.PathLike[str],
                        title: str = "") -> Path:
    """Plot the training loss (and its named terms) and the accuracies against the step.

    The left panel shows the training ``loss`` and, when a run logs more than one named term,
    each ``loss/NAME`` as a thinner line; the right panel the training accuracy and the
    validation accuracy with its 95% interval.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as d:
        ...     logger = JsonlLogger(d, tensorboard=False)
        ...     for s in (1, 2):
        ...         logger.write({"kind": "train", "step": s, "loss": 1.0 / s, "accuracy": 0.5,
        ...                       "loss/ce": 0.8 / s, "loss/kd": 0.2 / s})
        ...     logger.write({"kind": "val", "step": 2, "accuracy": 0.6, "ci95": 0.05})
        ...     png = plot_learning_curve(f"{d}/log.jsonl", f"{d}/curve.png")
        ...     png.stat().st_size > 0
        True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    nan = float("nan")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        steps = [r["step"] for r in train]
        ax1.plot(steps, [r.get("loss", nan) for r in train], lw=1, label="loss")
        terms = sorted({k for r in train for k in r if k.startswith("loss/")})
        if len(terms) > 1:
            for k in terms:
                ax1.plot(steps, [r.get(k, nan) for r in train], lw=0.7, alpha=0.7, label=k)
            ax1.legend()
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss")
    ax1.grid(alpha=0.3)
    if train:
        ax2.plot([r["step"] for r in train], [100 * r.get("accuracy", nan) for r in train],
                 lw=1, alpha=0.6, label="training")
    if val:
        steps = [r["step"] for r in val]
        acc = [100 * r["accuracy"] for r in val]
        ci = [100 * r["ci95"] for r in val]
        ax2.errorbar(steps, acc, yerr=ci, marker="o", capsize=3, label="validation (95% CI)")
    ax2.set_xlabel("step")
    ax2.set_ylabel("accuracy (%)")
    ax2.grid(alpha=0.3)
    ax2.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    import io

    from metakd.engine.runfolder import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    return atomic_write(png_path, buf.getvalue())
