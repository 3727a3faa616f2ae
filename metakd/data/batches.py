"""Supervised ``(x, y)`` minibatches over a data set's decoded uint8 cache, for pre-training.

``batches(dataset, batch_size, ...)`` returns a :class:`MiniBatchLoader` that gathers each
minibatch from the same uint8 array as the episodes of :mod:`metakd.data.tasks`
(:meth:`~metakd.data.base.ImageClassDataset.arrays`) in one vectorised step, scales it to
float in ``[0, 1]``, augments it (optional) and normalises it (optional).

The stream is a pure function of its position ``(epoch, index)``: epoch ``e`` visits the
images in the order of a permutation drawn from a ``torch.Generator`` seeded from
``(seed, e)``, and the augmentation of batch ``index`` of epoch ``e`` draws from a generator
seeded from ``(seed, e, index)``. So :meth:`MiniBatchLoader.state_dict` is just the position,
and a resumed loader yields bit-identical batches to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from metakd.data.augment.base import Normalize
from metakd.data.base import ImageArray, ImageClassDataset, ImageSize
from metakd.data.tasks import _take

__all__ = ["MiniBatchLoader", "batches"]


def _derived_seed(*parts: int | str) -> int:
    """A 63-bit seed from ``parts`` (platform-independent, no collisions in practice)."""
    digest = hashlib.sha256(":".join(map(str, ("metakd.batches", *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class MiniBatchLoader:
    """Iterable of ``(x [B, C, H, W] float, y [B] int64)`` minibatches; build it with :func:`batches`.

    ``len(loader)`` is the number of batches per epoch. Iterating continues from the current
    position (:attr:`epoch`, :attr:`index`) and advances it batch by batch: an endless loader
    (``epochs=None``) never stops; a finite one stops after its last epoch and then rewinds to
    the start, so the next pass (e.g. the next validation) yields the whole set again.

    Attributes:
        arrays: the data set as an :class:`~metakd.data.base.ImageArray`.
        num_classes: classes of the data set (labels are global class indices, rotation
            classes included).
        num_samples: images per epoch.
        epoch: the epoch of the next batch.
        index: the position of the next batch within its epoch.

    Example:
        >>> import torch
        >>> from metakd.data import Omniglot, batches
        >>> ds = Omniglot(split="test")
        >>> loader = batches(ds, 100, seed=0, progress=False)
        >>> it = iter(loader)
        >>> _ = [next(it) for _ in range(25)]          # into the second epoch (21 per epoch)
        >>> state = loader.state_dict()
        >>> state["epoch"], state["index"]
        (1, 4)
        >>> resumed = batches(ds, 100, seed=0, progress=False)
        >>> resumed.load_state_dict(state)
        >>> torch.equal(next(iter(resumed))[0], next(it)[0])
        True
    """

    def __init__(
        self,
        dataset: ImageClassDataset | ImageArray,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        epochs: int | None = None,
        image_size: ImageSize | None = None,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        progress: bool | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be >= 1 or None (endless), got {epochs}")
        if isinstance(dataset, ImageArray):
            self.arrays, name = dataset, "the given arrays"
        else:
            self.arrays, name = dataset.arrays(image_size, progress=progress), repr(dataset)
        arr = self.arrays
        valid = arr.class_items >= 0
        items = arr.class_items[valid]
        labels = torch.arange(arr.num_classes)[:, None].expand_as(arr.class_items)[valid]
        order = torch.argsort(items)  # unshuffled order = storage order = the data set's order
        self._items, self._labels = items[order].contiguous(), labels[order].contiguous()
        n = len(self._items)
        if n == 0:
            raise ValueError(f"{name} holds no images: nothing to make batches of")
        if drop_last and batch_size > n:
            raise ValueError(
                f"a batch of {batch_size} is larger than the {n} images of {name}: with "
                "drop_last=True an epoch would hold no batch; use a smaller batch_size or "
                "drop_last=False"
            )
        self.batch_size, self.seed, self.shuffle = batch_size, int(seed), shuffle
        self.drop_last, self.epochs = drop_last, epochs
        self.num_samples, self.num_classes = n, arr.num_classes
        self.augment = augment
        self.dtype = dtype
        self.device = torch.device(device)
        self._normalize = Normalize(*normalize) if normalize is not None else None
        self._np_images = arr.images.numpy()
        self._np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        self.epoch, self.index = 0, 0
        self._perm: tuple[int, torch.Tensor] | None = None  # (epoch, its order), cached

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def _order(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(_derived_seed(self.seed, epoch))
                order = torch.randperm(self.num_samples, generator=g)
            else:
                order = torch.arange(self.num_samples)
            self._perm = (epoch, order)
        return self._perm[1]

    def batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``index`` of epoch ``epoch`` (what iterating yields at that position)."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches per epoch")
        pos = self._order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        x = _take(self._np_images, self._items[pos].view(1, -1), self._np_dtype)[0]
        y = self._labels[pos]
        if self.device.type != "cpu":
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.augment is not None:
            g = torch.Generator().manual_seed(_derived_seed(self.seed, epoch, index, "augment"))
            x = self.augment(x, g)
        if self._normalize is not None:
            x = self._normalize(x)
        return x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        per_epoch = len(self)
        while self.epochs is None or self.epoch < self.epochs:
            out = self.batch(self.epoch, self.index)
            self.index += 1  # the position of the next batch, before this one is handed out
            if self.index >= per_epoch:
                self.epoch, self.index = self.epoch + 1, 0
            yield out
        self.epoch, self.index = 0, 0  # a finished finite stream starts over on the next pass

    def state_dict(self) -> dict[str, Any]:
        """The position of the stream (and what it depends on), for checkpoints."""
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed,
                "batch_size": self.batch_size, "num_samples": self.num_samples,
                "shuffle": self.shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`; the settings it records must match this loader's."""
        for key in ("seed", "batch_size", "num_samples", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume: the saved stream has {key}={state[key]!r}, this loader "
                    f"{key}={getattr(self, key)!r}"
                )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def __repr__(self) -> str:
        return (f"MiniBatchLoader(samples={self.num_samples}, classes={self.num_classes}, "
                f"batch_size={self.batch_size}, epochs={self.epochs}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, epoch={self.epoch}, index={self.index})")


def batches(
    dataset: ImageClassDataset | ImageArray,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    epochs: int | None = None,
    image_size: ImageSize | None = None,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    progress: bool | None = None,
) -> MiniBatchLoader:
    """Whole-classification ``(x, y)`` minibatches of a data set, in seeded shuffled epochs.

    The images come from the data set's decoded uint8 cache (the one episodes use), gathered
    in one vectorised step per batch. Labels are global class indices ``0..num_classes-1``
    (rotation classes included). The stream is determined by ``(seed, epoch, index)`` only;
    see :class:`MiniBatchLoader` for iteration and resumption.

    Args:
        dataset: a metakd data set (or its :class:`~metakd.data.base.ImageArray`).
        batch_size: ``B`` images per batch.
        seed: seed of the epoch permutations and of the augmentation draws.
        shuffle: visit each epoch in a fresh random order (else in the data set's order).
        drop_last: drop each epoch's last, incomplete batch (training); keep it for
            evaluation.
        epochs: ``None`` for an endless stream (training), or stop after this many epochs
            (an evaluation set: ``epochs=1, shuffle=False, drop_last=False``).
        image_size: side (or ``(H, W)``) of the cached images; default the data set's.
        normalize: ``(mean, std)`` per channel, applied after augmentation.
        augment: ``augment(x [B, C, H, W], generator) -> x`` on the float images in
            ``[0, 1]`` (see :mod:`metakd.data.augment`).
        dtype: floating type of the images.
        device: where to put the batches (augmentation runs there).
        progress: progress bar while the cache is built (first use only); ``None``: the
            current default (:func:`metakd.engine.show_progress`).

    Returns:
        A :class:`MiniBatchLoader` yielding ``(x [B, C, H, W], y [B] int64)``.

    Raises:
        ValueError: ``batch_size < 1``, an empty data set, or (with ``drop_last``) a batch
            larger than the data set.

    References:
        Chen et al., "A Closer Look at Few-shot Classification", ICLR 2019, and Chen et al.,
        "Meta-Baseline: Exploring Simple Meta-Learning for Few-Shot Learning", ICCV 2021
        (whole-classification pre-training on the meta-train classes).

    Example:
        >>> from metakd.data import Omniglot, batches
        >>> train = batches(Omniglot(split="train"), 64, seed=0, progress=False)
        >>> len(train), train.num_classes
        (42, 136)
        >>> x, y = next(iter(train))
        >>> x.shape, y.shape, y.dtype
        (torch.Size([64, 1, 28, 28]), torch.Size([64]), torch.int64)
    """
    return MiniBatchLoader(
        dataset, batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last, epochs=epochs,
        image_size=image_size, normalize=normalize, augment=augment, dtype=dtype,
        device=device, progress=progress,
    )
