"""The standard augmentation recipes of the few-shot and distillation literature, by name."""

from __future__ import annotations

from metakd.data.augment.base import Compose, ImageSize, pair
from metakd.data.augment.color import ColorJitter
from metakd.data.augment.geometric import RandomCrop, RandomHorizontalFlip, RandomResizedCrop

__all__ = ["AUGMENTATIONS", "augmentation"]

AUGMENTATIONS = ("cifar", "miniimagenet", "none")
"""Names accepted by :func:`augmentation`."""


def augmentation(name: str, image_size: ImageSize) -> Compose:
    """A standard training augmentation, by name.

    * ``"cifar"``: ``RandomCrop(image_size, padding=4)`` + ``RandomHorizontalFlip()`` (the
      CIFAR recipe of He et al. 2016, used by CIFAR-FS / FC100 pre-training and distillation);
    * ``"miniimagenet"``: ``RandomResizedCrop(image_size)`` + ``RandomHorizontalFlip()`` +
      ``ColorJitter(0.4, 0.4, 0.4)`` (the ImageNet-style recipe of Meta-Baseline /
      RFS pre-training on mini- and tieredImageNet);
    * ``"none"``: no augmentation (an empty :class:`Compose`, which draws nothing).

    Normalisation is not part of a recipe: pass ``normalize=`` to the loader.

    Args:
        name: one of :data:`AUGMENTATIONS`.
        image_size: ``H`` or ``(H, W)`` of the output images.

    Example:
        >>> import torch
        >>> from metakd.data import augmentation
        >>> aug = augmentation("cifar", 32)
        >>> aug
        Compose([RandomCrop(size=(32, 32), padding=(4, 4, 4, 4), padding_mode='constant', fill=0.0), RandomHorizontalFlip(p=0.5)])
        >>> aug(torch.rand(8, 3, 32, 32), torch.Generator().manual_seed(0)).shape
        torch.Size([8, 3, 32, 32])
    """
    size = pair(image_size, "image_size")
    if name == "cifar":
        return Compose([RandomCrop(size, padding=4), RandomHorizontalFlip()])
    if name == "miniimagenet":
        return Compose([RandomResizedCrop(size), RandomHorizontalFlip(),
                        ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)])
    if name == "none":
        return Compose([])
    raise ValueError(f"unknown augmentation {name!r}; choose one of {AUGMENTATIONS}")
