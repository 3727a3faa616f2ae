"""Batched colour jitter with torchvision's adjustment formulas, a random factor per image."""

from __future__ import annotations

import torch

from metakd.data.augment.base import Augmentation, uniform

__all__ = ["ColorJitter"]

_LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _factor_range(value: float | tuple[float, float], name: str, centre: float = 1.0,
                  bound: tuple[float, float] = (0.0, float("inf"))) -> tuple[float, float] | None:
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
        lo, hi = max(centre - value, bound[0]), centre + value
    else:
        lo, hi = (float(v) for v in value)
    if not bound[0] <= lo <= hi <= bound[1]:
        raise ValueError(f"{name} range must satisfy {bound[0]} <= low <= high <= {bound[1]}, "
                         f"got {value!r}")
    return None if lo == hi == centre else (lo, hi)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` luma ``0.2989 R + 0.587 G + 0.114 B`` of ``[B, 3, H, W]`` images."""
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor | float, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * other).clamp(0, 1)


def shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of ``[B, 3, H, W]`` RGB images by ``shift [B]`` turns (HSV round trip)."""
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    delta = v - x.min(1).values
    s = delta / torch.where(v > 0, v, torch.ones_like(v))
    d = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (v - r) / d, (v - g) / d, (v - b) / d
    h = torch.where(v == r, bc - gc, torch.where(v == g, 2 + rc - bc, 4 + gc - rc))
    h = torch.where(delta > 0, (h / 6) % 1.0, torch.zeros_like(h))
    h = (h + shift.view(-1, 1, 1)) % 1.0
    h6 = h * 6
    sector = h6.floor()
    f = h6 - sector
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    k = (sector.long() % 6).unsqueeze(0)  # [1, B, H, W]
    pick = [  # (R, G, B) of each of the six hue sectors
        torch.stack([v, q, p, p, t, v]), torch.stack([t, v, v, q, p, p]),
        torch.stack([p, p, t, v, v, q]),
    ]
    return torch.stack([c.gather(0, k)[0] for c in pick], 1).clamp(0, 1)


class ColorJitter(Augmentation):
    """Random brightness, contrast, saturation and hue, with a factor drawn per image.

    The adjustments are torchvision's, on float images in ``[0, 1]``, each followed by
    clamping to ``[0, 1]``:

    * brightness ``f``: ``x * f``;
    * contrast ``f``: ``f * x + (1 - f) * mean``, ``mean`` the image's mean grey level
      (luma ``0.2989 R + 0.587 G + 0.114 B`` for RGB, the pixel mean for one channel);
    * saturation ``f``: ``f * x + (1 - f) * grey``, ``grey`` the per-pixel luma (RGB only);
    * hue ``h``: hue rotated by ``h`` turns through HSV (RGB only).

    They are applied in that fixed order (torchvision shuffles the order per call; a fixed
    order keeps the batched draws simple). A value ``v`` for brightness, contrast or
    saturation draws factors uniformly in ``[max(0, 1 - v), 1 + v]``; hue ``h`` (at most 0.5)
    draws shifts in ``[-h, h]``; ``(low, high)`` gives the range directly. Factors are drawn
    (per enabled adjustment, in the order above) even for one-channel images, so the stream
    of draws does not depend on the channels.

    Example:
        >>> import torch
        >>> from metakd.data import ColorJitter
        >>> jitter = ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)
        >>> jitter(torch.rand(4, 3, 8, 8), torch.Generator().manual_seed(0)).shape
        torch.Size([4, 3, 8, 8])
    """

    def __init__(self, brightness: float | tuple[float, float] = 0.0,
                 contrast: float | tuple[float, float] = 0.0,
                 saturation: float | tuple[float, float] = 0.0,
                 hue: float | tuple[float, float] = 0.0) -> None:
        self.brightness = _factor_range(brightness, "brightness")
        self.contrast = _factor_range(contrast, "contrast")
        self.saturation = _factor_range(saturation, "saturation")
        self.hue = _factor_range(hue, "hue", centre=0.0, bound=(-0.5, 0.5))

    def factors(self, n: int, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """The ``[n]`` float64 factors of each enabled adjustment, in application order."""
        out = {}
        for name in ("brightness", "contrast", "saturation", "hue"):
            rng = getattr(self, name)
            if rng is not None:
                out[name] = uniform(n, generator, *rng)
        return out

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        b, c = x.shape[:2]
        rgb = c == 3
        if c not in (1, 3):
            raise ValueError(f"ColorJitter needs 1 or 3 channels, got {c}")
        for name, f in self.factors(b, generator).items():
            f = f.to(x.device, x.dtype)
            fb = f.view(-1, 1, 1, 1)
            if name == "brightness":
                x = _blend(x, 0.0, fb)
            elif name == "contrast":
                grey = grayscale(x) if rgb else x
                x = _blend(x, grey.mean((-3, -2, -1), keepdim=True), fb)
            elif name == "saturation" and rgb:
                x = _blend(x, grayscale(x), fb)
            elif name == "hue" and rgb:
                x = shift_hue(x, f)
        return x
