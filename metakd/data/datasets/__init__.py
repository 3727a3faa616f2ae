"""Readers for the real on-disk formats of few-shot data sets (torchvision-style signatures)."""

from metakd.data.datasets.omniglot import BUNDLED_OMNIGLOT, Omniglot

__all__ = ["BUNDLED_OMNIGLOT", "Omniglot"]
