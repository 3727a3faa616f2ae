"""Class-per-folder image data sets: ``root[/split]/<class>/<image>``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from metakd.data._io import DatasetNotFoundError
from metakd.data.base import check_choice
from metakd.data.datasets._sources import (
    IMAGE_EXTENSIONS,
    FileSource,
    SourceDataset,
    scan_class_folders,
)

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset"]


class ImageFolderDataset(SourceDataset):
    """Any class-per-folder image collection: ``root[/split]/<class>/<image>``.

    Classes are the sub-folders, in sorted order; images are read recursively inside each
    class folder, in sorted order. Image extensions are matched case-insensitively
    (:data:`IMAGE_EXTENSIONS`); hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints``)
    are ignored. A class folder without images is an error naming it (``CorruptFileError``),
    never skipped silently: remove it or restore its images.

    Expected layout:

    ```text
    root/                      # split=None
      <class_a>/img001.jpg
      <class_b>/...
    root/train/<class>/...     # split="train" (any split name)
    ```

    Takes the common arguments ``transform``, ``target_transform``, ``rotations`` and
    ``cache_dir`` of :class:`~metakd.data.ImageClassDataset`.

    Args:
        root: the folder.
        split: a sub-folder of ``root`` to read (``None``: ``root`` itself).
        image_mode: ``"RGB"`` or ``"L"``: what images are converted to.
        image_size: default size of :meth:`arrays` (``None``: the stored size, which must then
            be the same for all images).

    Example:
        >>> from metakd.data.datasets.folder import ImageFolderDataset
        >>> ds = ImageFolderDataset("data/my_birds", split="train", image_size=84)  # doctest: +SKIP
        >>> ds.classes[:2], len(ds)                                                # doctest: +SKIP
        (['albatross', 'auklet'], 1200)
    """

    image_mode: str = "RGB"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | None = None,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        rotations: Sequence[int] = (0,),
        image_mode: str = "RGB",
        image_size: int | tuple[int, int] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(root, split or "all", transform=transform,
                         target_transform=target_transform, rotations=rotations,
                         cache_dir=cache_dir)
        check_choice("image_mode", image_mode, ("RGB", "L"))
        # Per-instance overrides of the class-level defaults of ImageClassDataset.
        self.image_mode = image_mode
        self.default_image_size = image_size
        folder = self.root / split if split else self.root
        if not folder.is_dir():
            raise DatasetNotFoundError(
                f"image folder {folder} does not exist.\nExpected layout:\n"
                f"  {self.root}/{split + '/' if split else ''}<class>/<image>.jpg|png|..."
            )
        files, labels, names = scan_class_folders(folder)
        if not names:
            raise DatasetNotFoundError(
                f"{folder} holds no class sub-folders.\nExpected layout:\n  {folder}/<class>/<image>"
            )
        self.format = "folders"
        self._init_source(FileSource(files, folder), labels, names)
