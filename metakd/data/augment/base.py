"""The shared shape of batched augmentations: ``op(x, generator) -> x``, plus Compose, Normalize.

Every augmentation takes gathered float images ``[..., C, H, W]`` (a minibatch ``[B, C, H, W]``
or a meta-batch of episodes ``[T, M, C, H, W]``), flattens the leading dimensions into one batch
of images, gives every image its own random draws, and restores the leading dimensions. All
randomness comes from the ``torch.Generator`` passed in, so the same generator state gives the
same output, whatever the device the images are on (draws are made on the generator's device,
then moved).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

__all__ = ["Augmentation", "Compose", "ImageSize", "Normalize"]

ImageSize = int | tuple[int, int]


def pair(size: ImageSize, name: str = "size") -> tuple[int, int]:
    """``H`` or ``(H, W)`` as ``(H, W)``, checked positive."""
    if isinstance(size, int):
        h = w = size
    else:
        try:
            h, w = (int(s) for s in size)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an int or (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive, got {size!r}")
    return h, w


def uniform(n: int, generator: torch.Generator | None, low: float = 0.0, high: float = 1.0,
            attempts: int | None = None) -> torch.Tensor:
    """``[n]`` (or ``[n, attempts]``) float64 draws in ``[low, high)``, on the generator's device."""
    device = generator.device if generator is not None else torch.device("cpu")
    shape = (n,) if attempts is None else (n, attempts)
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    return low + (high - low) * u


class Augmentation:
    """Base class of a batched, seeded augmentation: ``op(x, generator) -> x``.

    Subclasses implement :meth:`apply` on ``[B, C, H, W]``; calling the op accepts any number
    of leading dimensions. ``generator=None`` draws from torch's global generator (seeded by
    ``torch.manual_seed``); pass a ``torch.Generator`` for reproducible streams.
    """

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Augment ``x [B, C, H, W]`` (float) with one independent draw per image."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim < 3:
            raise ValueError(f"{type(self).__name__} needs images [..., C, H, W], got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(
                f"{type(self).__name__} works on float images in [0, 1], got {x.dtype}; "
                "gather and scale them first (few_shot and batches do)"
            )
        lead = x.shape[:-3]
        flat = x.reshape(-1, *x.shape[-3:])
        out = self.apply(flat, generator)
        return out.reshape(*lead, *out.shape[1:])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Compose:
    """Apply augmentations in order, all drawing from the same generator.

    Args:
        ops: callables ``op(x, generator) -> x``.

    Example:
        >>> import torch
        >>> from metakd.data import Compose, RandomCrop, RandomHorizontalFlip
        >>> aug = Compose([RandomCrop(32, padding=4), RandomHorizontalFlip()])
        >>> x = torch.rand(8, 3, 32, 32)
        >>> y = aug(x, torch.Generator().manual_seed(0))
        >>> y.shape, torch.equal(y, aug(x, torch.Generator().manual_seed(0)))
        (torch.Size([8, 3, 32, 32]), True)
    """

    def __init__(self, ops: Iterable[Callable[..., torch.Tensor]]) -> None:
        self.ops = list(ops)
        for op in self.ops:
            if not callable(op):
                raise TypeError(f"Compose takes callables op(x, generator), got {op!r}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for op in self.ops:
            x = op(x, generator)
        return x

    def __len__(self) -> int:
        return len(self.ops)

    def __repr__(self) -> str:
        return f"Compose([{', '.join(map(repr, self.ops))}])"


class Normalize(Augmentation):
    """Per-channel ``(x - mean) / std`` (no randomness; the generator is ignored).

    Apply it last: the other augmentations expect images in ``[0, 1]``.

    Args:
        mean: ``C`` values (or one, for every channel).
        std: ``C`` non-zero values (or one).

    Example:
        >>> import torch
        >>> from metakd.data import Normalize
        >>> Normalize([0.5], [0.25])(torch.full((2, 1, 3, 3), 0.75))[0, 0, 0, 0].item()
        1.0
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        if not self.mean or len(self.mean) != len(self.std):
            raise ValueError(f"mean and std need the same, non-zero length; got {mean!r}, {std!r}")
        if any(s == 0 for s in self.std):
            raise ValueError(f"std must be non-zero, got {std!r}")

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        c = x.shape[1]
        if len(self.mean) not in (1, c):
            raise ValueError(f"Normalize has {len(self.mean)} channels, the images have {c}")
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std
