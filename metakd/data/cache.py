"""Decode-once cache: a data set's images, resized, as one uint8 array in an HDF5 file.

The first use of a data set at a given image size decodes every image (in threads, with a
progress bar) and writes ``[M, C, H, W]`` uint8 to ``<cache_dir>/<name>.h5`` atomically. Later
uses read the array back in one call. The file records a fingerprint of the source files and
the decode options; if either changes, the cache is rebuilt.

The cache folder is ``$METAKD_CACHE`` if set, else ``~/.cache/metakd``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cache_dir", "load_or_build"]

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


def cache_dir() -> Path:
    """The folder that holds decoded-image caches (``$METAKD_CACHE`` or ``~/.cache/metakd``)."""
    env = os.environ.get("METAKD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "metakd"


def _key(meta: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:20]


def load_or_build(
    name: str,
    meta: dict[str, Any],
    count: int,
    decode: Callable[[int], np.ndarray],
    folder: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """Return the ``[count, C, H, W]`` uint8 array of a data set, building the cache if needed.

    Args:
        name: readable prefix of the cache file (data set and split).
        meta: everything the decoded pixels depend on (source fingerprint, size, mode...).
            A different ``meta`` gives a different file.
        count: number of images.
        decode: ``decode(j) -> uint8 [C, H, W]`` for ``j`` in ``range(count)``; all the same shape.
        folder: cache folder (default :func:`cache_dir`).
        progress: show a progress bar while decoding; ``None``: the current default
            (:func:`metakd.engine.show_progress`, off inside ``progress_bars(False)``).
        workers: decoding threads (default: number of CPUs, at most 8).
    """
    import h5py

    meta = {**meta, "count": count, "format": FORMAT_VERSION}
    folder = Path(folder) if folder is not None else cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{_key(meta)}.h5"
    meta_json = json.dumps(meta, sort_keys=True)
    if path.exists():
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("meta") == meta_json:
                    arr = f["images"][()]
                    log.debug("loaded %s %s from cache", name, arr.shape)
                    return arr
        except OSError as e:  # a truncated or foreign file: rebuild it
            log.warning("cache %s unreadable (%s); rebuilding", path, e)
    arr = _decode_all(name, count, decode, progress, workers)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("images", data=arr)
            f.attrs["meta"] = meta_json
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return arr


def _decode_all(
    name: str, count: int, decode: Callable[[int], np.ndarray], progress: bool | None,
    workers: int | None,
) -> np.ndarray:
    from tqdm.auto import tqdm

    from metakd._progress import show_progress

    if count == 0:
        raise ValueError(f"{name}: no images to cache")
    first = decode(0)
    out = np.empty((count, *first.shape), dtype=np.uint8)
    out[0] = first
    workers = workers or min(8, os.cpu_count() or 1)

    def put(j: int) -> None:
        img = decode(j)
        if img.shape != first.shape:
            raise ValueError(
                f"{name}: image {j} decoded to shape {img.shape}, image 0 to {first.shape}; "
                "pass an image_size so that all images are resized to one size"
            )
        out[j] = img

    with tqdm(total=count, desc=f"decoding {name}", unit="img",
              disable=not show_progress(progress)) as bar:
        bar.update(1)
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(put, range(1, count), chunksize=64):
                bar.update(1)
    return out
