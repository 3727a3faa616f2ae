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

    Args:
        folder: run folder; ``None`` disables writing (records are still kept in memory).
        tensorboard: also write TensorBoard event files when ``torch.utils.tensorboard``
            can be imported.
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
        """Drop records after ``step`` (used on resume so the log matches the checkpoint)."""
        if self.path is None or not self.path.exists():
            return
        keep = [r for r in read_log(self.path) if r.get("step", 0) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = int(record.get("step", 0))
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_learning_curve(log_path: str | os.PathLike[str], png_path: str | os.PathLike[str],
                        title: str = "") -> Path:
    """Plot training loss/accuracy and validation accuracy (with CI) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        ax1.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    ax1.set_xlabel("meta-iteration")
    ax1.set_ylabel("meta-training query loss")
    ax1.grid(alpha=0.3)
    if train:
        ax2.plot([r["step"] for r in train], [100 * r["accuracy"] for r in train], lw=1,
                 alpha=0.6, label="meta-train query")
    if val:
        steps = [r["step"] for r in val]
        acc = [100 * r["accuracy"] for r in val]
        ci = [100 * r["ci95"] for r in val]
        ax2.errorbar(steps, acc, yerr=ci, marker="o", capsize=3, label="validation (95% CI)")
    ax2.set_xlabel("meta-iteration")
    ax2.set_ylabel("accuracy (%)")
    ax2.grid(alpha=0.3)
    ax2.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png = Path(png_path)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
