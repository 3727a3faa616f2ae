"""metakd: few-shot meta-learning and knowledge distillation primitives for PyTorch.

The public API lives here and in the sub-packages :mod:`metakd.data`, :mod:`metakd.nn`,
:mod:`metakd.meta`. Optional heavy packages (learn2learn, higher) are imported only when a
feature that needs them is used.
"""

from metakd._version import __version__
from metakd.data import (
    CorruptFileError,
    DatasetNotFoundError,
    FewShotSampler,
    ImageClassDataset,
    Omniglot,
    Task,
    TaskBatch,
    few_shot,
)

__all__ = [
    "CorruptFileError",
    "DatasetNotFoundError",
    "FewShotSampler",
    "ImageClassDataset",
    "Omniglot",
    "Task",
    "TaskBatch",
    "__version__",
    "few_shot",
]
