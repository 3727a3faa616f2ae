"""Data sets, the decode-once image cache, few-shot episodes, minibatches and augmentation."""

from metakd.data._io import CorruptFileError, DatasetNotFoundError, DownloadError
from metakd.data.augment import (
    ColorJitter,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    augmentation,
)
from metakd.data.base import ImageArray, ImageClassDataset
from metakd.data.batch import Task, TaskBatch
from metakd.data.batches import MiniBatchLoader, batches
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
    "ColorJitter",
    "Compose",
    "CorruptFileError",
    "DatasetNotFoundError",
    "DownloadError",
    "FewShotSampler",
    "ImageArray",
    "ImageClassDataset",
    "ImageFolderDataset",
    "MiniBatchLoader",
    "MiniImageNet",
    "Normalize",
    "Omniglot",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Task",
    "TaskBatch",
    "TieredImageNet",
    "augmentation",
    "batches",
    "episode_indices",
    "few_shot",
]
