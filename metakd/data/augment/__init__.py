"""Batched, seeded augmentation of gathered image tensors, for episodes and minibatches.

Every op is a callable ``op(x, generator) -> x`` on float images ``[..., C, H, W]`` in
``[0, 1]`` (``[B, C, H, W]`` minibatches or ``[T, M, C, H, W]`` episodes): each image gets its
own random draws, all taken from the ``torch.Generator`` passed in, so the same generator
state gives the same output. :func:`~metakd.data.batches` and :func:`~metakd.data.few_shot`
take one as ``augment=`` and call it with their own generator, after the gather and before
normalisation.
"""

from metakd.data.augment.base import Augmentation, Compose, Normalize
from metakd.data.augment.color import ColorJitter
from metakd.data.augment.geometric import RandomCrop, RandomHorizontalFlip, RandomResizedCrop
from metakd.data.augment.presets import AUGMENTATIONS, augmentation

__all__ = [
    "AUGMENTATIONS",
    "Augmentation",
    "ColorJitter",
    "Compose",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "augmentation",
]
