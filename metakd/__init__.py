"""metakd: few-shot meta-learning and knowledge distillation primitives for PyTorch.

The names a user needs are here; the sub-packages hold the rest, each with its own
``__all__``: :mod:`metakd.data` (data sets, episodes, minibatches, augmentation),
:mod:`metakd.nn` (backbones by name), :mod:`metakd.meta` (update rules, objectives, the
inner loop, meta-learners), :mod:`metakd.distill` (distillation losses, the Distiller,
teachers), :mod:`metakd.engine` (training, evaluation, checkpoints) and
:mod:`metakd.recipes` (one registered method per paper, run folders). Optional packages
(learn2learn, higher) are imported only when a feature that needs them is used.

Example:
    >>> import torch
    >>> import metakd
    >>> tasks = metakd.few_shot(metakd.Omniglot(split="test"), ways=5, shots=1, queries=1,
    ...                         meta_batch_size=2, num_tasks=2, seed=0, progress=False)
    >>> maml = metakd.MAMLWrapper(metakd.create("maml_omniglot", num_classes=5), inner_lr=0.4)
    >>> result = metakd.evaluate(maml, tasks)
    >>> result.episodes
    2
"""

from metakd._version import __version__
from metakd.data import (
    CIFAR100,
    CIFARFS,
    CUB,
    FC100,
    CorruptFileError,
    DatasetNotFoundError,
    ImageFolderDataset,
    MiniImageNet,
    Omniglot,
    TaskBatch,
    TieredImageNet,
    augmentation,
    batches,
    few_shot,
)
from metakd.distill import Distiller, DistillLoss, DistillObjective
from metakd.engine import Callback, EvalResult, evaluate, fit, supervised_loss
from metakd.meta import (
    SGD,
    CrossEntropy,
    MAMLWrapper,
    MetaBaseline,
    MetaLSTM,
    MetaLSTMOptimizer,
    MetaSGD,
    Objective,
    UpdateRule,
    flatten_params,
    functional_forward,
    unflatten_params,
)
from metakd.nn import create
from metakd.recipes import load_run, load_teacher

__all__ = [
    "CIFAR100",
    "CIFARFS",
    "CUB",
    "FC100",
    "SGD",
    "Callback",
    "CorruptFileError",
    "CrossEntropy",
    "DatasetNotFoundError",
    "DistillLoss",
    "DistillObjective",
    "Distiller",
    "EvalResult",
    "ImageFolderDataset",
    "MAMLWrapper",
    "MetaBaseline",
    "MetaLSTM",
    "MetaLSTMOptimizer",
    "MetaSGD",
    "MiniImageNet",
    "Objective",
    "Omniglot",
    "TaskBatch",
    "TieredImageNet",
    "UpdateRule",
    "__version__",
    "augmentation",
    "batches",
    "create",
    "evaluate",
    "few_shot",
    "fit",
    "flatten_params",
    "functional_forward",
    "load_run",
    "load_teacher",
    "supervised_loss",
    "unflatten_params",
]
