"""Batched geometric augmentations: random crop (with padding), horizontal flip, resized crop.

Each image of the batch gets its own crop box / flip, drawn from the generator passed in, and
every op is one vectorised tensor operation over the batch (a gather for crops, ``torch.where``
for flips, one ``F.grid_sample`` for resized crops), not a Python loop over images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from metakd.data.augment.base import Augmentation, ImageSize, pair, uniform

__all__ = ["RandomCrop", "RandomHorizontalFlip", "RandomResizedCrop"]

_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


def _offsets(n: int, room: torch.Tensor | int, generator: torch.Generator | None) -> torch.Tensor:
    """``[n]`` int64 uniform integers in ``[0, room]`` (``room`` per image or shared), on CPU."""
    room = torch.as_tensor(room, dtype=torch.float64)
    u = uniform(n, generator).cpu()
    return torch.minimum((u * (room + 1)).floor(), room).long()


class RandomCrop(Augmentation):
    """Pad every image, then crop a ``size`` window at a random position (one per image).

    Following torchvision's ``RandomCrop``: offsets are uniform over every position where the
    window fits inside the padded image. The recipe of CIFAR training is
    ``RandomCrop(32, padding=4)``.

    Args:
        size: ``H`` or ``(H, W)`` of the crop.
        padding: pixels added on every side (int), ``(left/right, top/bottom)``, or
            ``(left, top, right, bottom)``.
        padding_mode: ``"constant"`` (``fill``), ``"reflect"`` (mirror without repeating the
            edge) or ``"edge"`` (repeat the edge pixel).
        fill: value of constant padding (images are in ``[0, 1]``: ``0.0`` is black).

    Example:
        >>> import torch
        >>> from metakd.data import RandomCrop
        >>> x = torch.rand(4, 3, 32, 32)
        >>> RandomCrop(32, padding=4)(x, torch.Generator().manual_seed(0)).shape
        torch.Size([4, 3, 32, 32])
    """

    def __init__(self, size: ImageSize, padding: int | Sequence[int] = 0,
                 padding_mode: str = "constant", fill: float = 0.0) -> None:
        self.size = pair(size)
        pads: tuple[int, ...]
        if isinstance(padding, int):
            pads = (padding,) * 4
        elif len(padding) == 2:
            pads = (padding[0], padding[1], padding[0], padding[1])
        elif len(padding) == 4:
            pads = tuple(padding)
        else:
            raise ValueError(f"padding must be an int, 2 or 4 ints, got {padding!r}")
        if any(int(p) < 0 for p in pads):
            raise ValueError(f"padding must be >= 0, got {padding!r}")
        if padding_mode not in _PAD_MODES:
            raise ValueError(f"padding_mode must be one of {sorted(_PAD_MODES)}, got {padding_mode!r}")
        self.padding = tuple(int(p) for p in pads)  # left, top, right, bottom
        self.padding_mode = padding_mode
        self.fill = float(fill)

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        left, top, right, bottom = self.padding
        if any(self.padding):
            mode = _PAD_MODES[self.padding_mode]
            if mode == "constant":
                x = F.pad(x, (left, right, top, bottom), mode=mode, value=self.fill)
            else:
                x = F.pad(x, (left, right, top, bottom), mode=mode)
        b, c, hp, wp = x.shape
        h, w = self.size
        if h > hp or w > wp:
            raise ValueError(f"a {h}x{w} crop does not fit in the padded {hp}x{wp} images")
        i = _offsets(b, hp - h, generator)
        j = _offsets(b, wp - w, generator)
        rows = i[:, None] + torch.arange(h)  # [B, h]
        cols = j[:, None] + torch.arange(w)  # [B, w]
        idx = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).to(x.device)
        return x.reshape(b, c, hp * wp).gather(2, idx.expand(b, c, h * w)).view(b, c, h, w)


class RandomHorizontalFlip(Augmentation):
    """Mirror each image left-right with probability ``p`` (an independent coin per image).

    Example:
        >>> import torch
        >>> from metakd.data import RandomHorizontalFlip
        >>> x = torch.arange(3.0).view(1, 1, 1, 3)
        >>> RandomHorizontalFlip(p=1.0)(x, torch.Generator()).flatten().tolist()
        [2.0, 1.0, 0.0]
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        flip = (uniform(x.shape[0], generator) < self.p).to(x.device).view(-1, 1, 1, 1)
        return torch.where(flip, x.flip(-1), x)


class RandomResizedCrop(Augmentation):
    """Crop a random box of random area and aspect ratio from each image, resized to ``size``.

    The box follows torchvision's ``RandomResizedCrop``: area ``s * H * W`` with ``s`` uniform
    in ``scale``, aspect ratio ``w / h`` log-uniform in ``ratio``; of 10 attempts per image the
    first that fits is used, and if none fits, the largest centred box of clamped aspect
    ratio. The position is uniform over where the box fits. All boxes are resampled at once
    with ``F.grid_sample`` (sampling at output pixel centres, edges clamped), with
    ``interpolation`` ``"bilinear"`` (no antialiasing: boxes are usually enlarged),
    ``"bicubic"`` or ``"nearest"``.

    Args:
        size: ``H`` or ``(H, W)`` of the output.
        scale: range of the box area, as a fraction of the image.
        ratio: range of the box aspect ratio (width / height).
        interpolation: how pixels are resampled.

    Example:
        >>> import torch
        >>> from metakd.data import RandomResizedCrop
        >>> x = torch.rand(2, 5, 3, 84, 84)                      # [T, M, C, H, W] episodes
        >>> RandomResizedCrop(64)(x, torch.Generator().manual_seed(0)).shape
        torch.Size([2, 5, 3, 64, 64])
    """

    attempts = 10

    def __init__(self, size: ImageSize, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 interpolation: str = "bilinear") -> None:
        self.size = pair(size)
        lo, hi = (float(s) for s in scale)
        if not 0 < lo <= hi:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale!r}")
        rlo, rhi = (float(r) for r in ratio)
        if not 0 < rlo <= rhi:
            raise ValueError(f"ratio must be (low, high) with 0 < low <= high, got {ratio!r}")
        if interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"interpolation must be bilinear, bicubic or nearest, got {interpolation!r}")
        self.scale = (lo, hi)
        self.ratio = (rlo, rhi)
        self.interpolation = interpolation

    def boxes(self, n: int, height: int, width: int,
              generator: torch.Generator | None) -> torch.Tensor:
        """``[n, 4]`` int64 boxes ``(top, left, height, width)`` drawn for ``n`` images."""
        area = height * width
        target = area * uniform(n, generator, *self.scale, attempts=self.attempts).cpu()
        log_r = uniform(n, generator, math.log(self.ratio[0]), math.log(self.ratio[1]),
                        attempts=self.attempts).cpu()
        aspect = torch.exp(log_r)
        w = torch.round(torch.sqrt(target * aspect))
        h = torch.round(torch.sqrt(target / aspect))
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = fits.to(torch.uint8).argmax(1, keepdim=True)  # first attempt that fits
        # Fallback (no attempt fits): the whole image, aspect ratio clamped into `ratio`.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fw, fh = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            fw, fh = round(height * self.ratio[1]), height
        else:
            fw, fh = width, height
        ok = fits.any(1)
        bh = torch.where(ok, h.gather(1, first)[:, 0], float(fh)).long()
        bw = torch.where(ok, w.gather(1, first)[:, 0], float(fw)).long()
        top = _offsets(n, height - bh, generator)
        left = _offsets(n, width - bw, generator)
        return torch.stack([top, left, bh, bw], 1)

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        b, c, height, width = x.shape
        top, left, bh, bw = self.boxes(b, height, width, generator).double().unbind(1)
        # Output pixel centre u in [-1, 1] maps to input x = left + (u + 1) * bw / 2 (pixels),
        # i.e. normalised u * bw / W + (2 * left + bw) / W - 1 (align_corners=False).
        theta = torch.zeros(b, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = bw / width
        theta[:, 0, 2] = (2 * left + bw) / width - 1
        theta[:, 1, 1] = bh / height
        theta[:, 1, 2] = (2 * top + bh) / height - 1
        oh, ow = self.size
        grid = F.affine_grid(theta.to(x.device, x.dtype), [b, c, oh, ow], align_corners=False)
        return F.grid_sample(x, grid, mode=self.interpolation, padding_mode="border",
                             align_corners=False)
