"""Readers for the real on-disk formats of few-shot data sets (torchvision-style signatures)."""

from metakd.data.datasets.cifar import CIFAR100, CIFARFS, FC100
from metakd.data.datasets.cub import CUB
from metakd.data.datasets.folder import ImageFolderDataset
from metakd.data.datasets.miniimagenet import MiniImageNet
from metakd.data.datasets.omniglot import BUNDLED_OMNIGLOT, Omniglot
from metakd.data.datasets.tiered import TieredImageNet

__all__ = [
    "BUNDLED_OMNIGLOT",
    "CIFAR100",
    "CIFARFS",
    "CUB",
    "FC100",
    "ImageFolderDataset",
    "MiniImageNet",
    "Omniglot",
    "TieredImageNet",
]
