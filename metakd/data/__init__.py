"""Data sets, the decode-once image cache, and few-shot episode sampling."""

from metakd.data._io import CorruptFileError, DatasetNotFoundError
from metakd.data.base import ImageArray, ImageClassDataset
from metakd.data.batch import Task, TaskBatch
from metakd.data.datasets import (
    BUNDLED_OMNIGLOT,
    CIFAR100,
    CIFARFS,
    CUB,
    FC100,
    ImageFolderDataset,
    MiniImageNet,
    Omniglot,
    TieredImageNet,
)
from metakd.data.tasks import FewShotSampler, episode_indices, few_shot

__all__ = [
    "BUNDLED_OMNIGLOT",
    "CIFAR100",
    "CIFARFS",
    "CUB",
    "FC100",
    "CorruptFileError",
    "DatasetNotFoundError",
    "FewShotSampler",
    "ImageArray",
    "ImageClassDataset",
    "ImageFolderDataset",
    "MiniImageNet",
    "Omniglot",
    "Task",
    "TaskBatch",
    "TieredImageNet",
    "episode_indices",
    "few_shot",
]
