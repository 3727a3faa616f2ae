"""The CUDA settings a run may turn on: TF32 matmuls and convolutions, cuDNN autotuning, and
pinned host memory with non-blocking copies (the settings MAML-Pytorch's training lists).

They apply only when the run's device is CUDA (on a CPU they are recorded and do nothing), are
set once at the start of a run and never changed during it, and a run folder's
``config.json`` records them under ``runtime`` (TF32 changes the numbers: float32 matmuls and
convolutions then round their inputs to 10 mantissa bits).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CudaSettings", "apply_cuda_settings"]


@dataclass(frozen=True)
class CudaSettings:
    """What to turn on for a run on a CUDA device (``None``: leave PyTorch's default).

    Attributes:
        tf32: TF32 for float32 matmuls and cuDNN convolutions (``--tf32``).
        cudnn_benchmark: let cuDNN time its algorithms for each input shape and keep the
            fastest (``--cudnn-benchmark``); not deterministic across runs.
        pin_memory: copy batches through pinned host memory, without blocking
            (``--pin-memory``).

    Example:
        >>> CudaSettings(tf32=True).as_dict()
        {'tf32': True, 'cudnn_benchmark': None, 'pin_memory': None}
    """

    tf32: bool | None = None
    cudnn_benchmark: bool | None = None
    pin_memory: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (what ``config.json`` records)."""
        return dataclasses.asdict(self)


def apply_cuda_settings(settings: CudaSettings, device: torch.device | str | None) -> bool:
    """Set ``settings`` for a run on ``device``; returns whether batches are to be pinned.

    Does nothing on a device other than CUDA.

    Example:
        >>> apply_cuda_settings(CudaSettings(tf32=True, pin_memory=True), "cpu")
        False
    """
    if device is None or not str(device).startswith("cuda"):
        return False
    if settings.tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = settings.tf32
        torch.backends.cudnn.allow_tf32 = settings.tf32
    if settings.cudnn_benchmark is not None:
        torch.backends.cudnn.benchmark = settings.cudnn_benchmark
    return bool(settings.pin_memory)
