"""Data sets, the decode-once image cache, and few-shot episode sampling."""

from metakd.data._io import CorruptFileError, DatasetNotFoundError
from metakd.data.base import ImageArray, ImageClassDataset
from metakd.data.batch import Task, TaskBatch
from metakd.data.datasets import BUNDLED_OMNIGLOT, Omniglot
from metakd.data.tasks import FewShotSampler, few_shot, gather_episodes

__all__ = [
    "BUNDLED_OMNIGLOT",
    "CorruptFileError",
    "DatasetNotFoundError",
    "FewShotSampler",
    "ImageArray",
    "ImageClassDataset",
    "Omniglot",
    "Task",
    "TaskBatch",
    "few_shot",
    "gather_episodes",
]
