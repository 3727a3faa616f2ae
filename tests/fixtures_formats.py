"""Writers of tiny data sets in the real on-disk formats of miniImageNet, CUB, CIFAR and tiered.

Each writer returns the images it wrote (uint8 ``[H, W, C]`` RGB, per class) so tests can
compare what a reader gives back with what is on disk. Images are small and non-square (so a
height/width mix-up shows).
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from metakd.data.datasets.cifar import CIFAR100_SUPERCLASSES

# CIFAR-100's fine and coarse class names, and the super-class of each fine class.
FINE = sorted(c for cs in CIFAR100_SUPERCLASSES.values() for c in cs)
COARSE = sorted(CIFAR100_SUPERCLASSES)
SUPER_OF = {c: s for s, cs in CIFAR100_SUPERCLASSES.items() for c in cs}

H, W = 6, 8  # stored size of array formats (non-square on purpose)


def rand_images(seed: int, n: int, h: int = H, w: int = W, c: int = 3) -> np.ndarray:
    """``n`` random uint8 images ``[n, h, w, c]``."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def save_image(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` as a real image file; the format follows the extension (any case)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}[ext]
    Image.fromarray(arr).save(path, format=fmt)


def encode_png(arr: np.ndarray) -> np.ndarray:
    """PNG bytes of ``arr`` as a uint8 array (how Ren et al. store tieredImageNet)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes pickles the way Python 2 did: ``bytes`` as py2 ``str`` (BINSTRING), numpy under
    ``numpy.core``, so reading them in Python 3 needs ``encoding="latin1"``."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + n.to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def dump_pickle(obj: Any, path: Path, py2: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        if py2:
            Py2Pickler(f, protocol=2).dump(obj)
        else:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)


# --- miniImageNet ---------------------------------------------------------------------------
def mini_csv(root: Path, split: str, classes: Sequence[str], per_class: int = 4,
             seed: int = 0) -> dict[str, list[Path]]:
    """Ravi's layout: ``root/{split}.csv`` + ``root/images/<wnid><8 digits>.jpg`` (10x12)."""
    files: dict[str, list[Path]] = {}
    rows = []
    for k, wnid in enumerate(classes):
        imgs = rand_images(seed + k, per_class, 10, 12)
        files[wnid] = []
        for i in range(per_class):
            name = f"{wnid}{i + 1:08d}.jpg"
            save_image(root / "images" / name, imgs[i])
            files[wnid].append(root / "images" / name)
            rows.append((name, wnid))
    rows.reverse()  # the reader must not rely on the CSV being grouped or sorted
    with open(root / f"{split}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "label"])
        w.writerows(rows)
    return files


def mini_folders(root: Path, split: str, classes: Sequence[str], per_class: int = 3,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """MTL layout: ``root/{split}/<wnid>/*.png`` (lossless, so pixels can be compared)."""
    out = {}
    for k, wnid in enumerate(classes):
        imgs = rand_images(seed + k, per_class)
        for i in range(per_class):
            save_image(root / split / wnid / f"{wnid}_{i:04d}.png", imgs[i])
        out[wnid] = imgs
    return out


def mini_cache_pickle(root: Path, split: str, classes: Sequence[str], per_class: int = 3,
                      seed: int = 0, py2: bool = False) -> dict[str, np.ndarray]:
    """Ren et al.'s ``mini-imagenet-cache-{split}.pkl`` (classes interleaved in the array)."""
    imgs = {c: rand_images(seed + k, per_class) for k, c in enumerate(classes)}
    n = len(classes) * per_class
    data = np.zeros((n, H, W, 3), dtype=np.uint8)
    class_dict: dict[str, list[int]] = {c: [] for c in classes}
    for i in range(per_class):
        for k, c in enumerate(reversed(classes)):
            row = i * len(classes) + k
            data[row] = imgs[c][i]
            class_dict[c].append(row)
    dump_pickle({"image_data": data, "class_dict": class_dict},
                root / f"mini-imagenet-cache-{split}.pkl", py2=py2)
    return imgs


def mini_gidaris(root: Path, tag: str, labels: Sequence[int], seed: int = 0,
                 names: dict[str, int] | None = None, py2: bool = True) -> np.ndarray:
    """Gidaris' ``miniImageNet_category_split_{tag}.pickle`` (Python-2 pickle by default)."""
    data = rand_images(seed, len(labels))
    obj: dict[str, Any] = {"data": data, "labels": list(labels)}
    if names is not None:
        obj["catname2label"] = names
    dump_pickle(obj, root / f"miniImageNet_category_split_{tag}.pickle", py2=py2)
    return data


def torchmeta_hdf5(root: Path, split: str, classes: Sequence[str], per_class: int = 3,
                   seed: int = 0, encoded: bool = False) -> dict[str, np.ndarray]:
    """torchmeta's ``{split}_data.hdf5`` (``/datasets/<class>``) + ``{split}_labels.json``.

    ``encoded``: store PNG bytes as variable-length rows (torchmeta's CUB / tiered layout)
    instead of uint8 arrays (its miniImageNet layout).
    """
    import h5py

    root.mkdir(parents=True, exist_ok=True)
    out = {}
    with h5py.File(root / f"{split}_data.hdf5", "w") as f:
        group = f.create_group("datasets")
        for k, c in enumerate(classes):
            imgs = rand_images(seed + k, per_class)
            out[c] = imgs
            if encoded:
                ds = group.create_dataset(c, (per_class,), dtype=h5py.vlen_dtype(np.uint8))
                for i in range(per_class):
                    ds[i] = encode_png(imgs[i])
            else:
                group.create_dataset(c, data=imgs)
    with open(root / f"{split}_labels.json", "w") as f:
        json.dump(list(reversed(classes)), f)
    return out


# --- CUB ----------------------------------------------------------------------------------------
def cub_images(root: Path, class_ids: Sequence[int], per_class: int = 2, seed: int = 0
               ) -> dict[str, list[Path]]:
    """``root/CUB_200_2011/images/NNN.Bird_k/Bird_k_000i.jpg``."""
    out: dict[str, list[Path]] = {}
    for k in class_ids:
        name = f"{k:03d}.Bird_{k}"
        imgs = rand_images(seed + k, per_class, 9, 7)
        out[name] = []
        for i in range(per_class):
            p = root / "CUB_200_2011" / "images" / name / f"Bird_{k}_{i:04d}_{100 + i}.jpg"
            save_image(p, imgs[i])
            out[name].append(p)
    return out


# --- CIFAR --------------------------------------------------------------------------------------
def cifar100_python(root: Path, fine_names: Sequence[str], coarse_names: Sequence[str],
                    super_of: dict[str, str], train_per_class: int = 2, test_per_class: int = 1,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """``root/cifar-100-python/{train,test,meta}`` as the official Python-2 pickles.

    Returns ``{"train": data, "test": data}`` with ``data`` ``[N, 3072]`` as stored; in each
    file image ``i`` has fine label ``i % 100``.
    """
    folder = root / "cifar-100-python"
    rng = np.random.default_rng(seed)
    out = {}
    for part, per in (("train", train_per_class), ("test", test_per_class)):
        n = per * len(fine_names)
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [i % len(fine_names) for i in range(n)]
        coarse = [coarse_names.index(super_of[fine_names[f]]) for f in fine]
        obj = {"filenames": [f"img_{i}.png".encode() for i in range(n)],
               "batch_label": f"{part} batch".encode(),
               "fine_labels": fine, "coarse_labels": coarse, "data": data}
        dump_pickle(obj, folder / part, py2=True)
        out[part] = data
    dump_pickle({"fine_label_names": list(fine_names), "coarse_label_names": list(coarse_names)},
                folder / "meta", py2=True)
    return out


# --- tieredImageNet -----------------------------------------------------------------------------
def tiered_npz(root: Path, split: str, labels: Sequence[int], seed: int = 0,
               ren_labels: bool = False, compressed: bool = False) -> np.ndarray:
    """Meta-Baseline's ``{split}_images.npz`` (BGR) + ``{split}_labels.pkl``; returns RGB."""
    root.mkdir(parents=True, exist_ok=True)
    rgb = rand_images(seed, len(labels))
    save = np.savez_compressed if compressed else np.savez
    save(root / f"{split}_images.npz", images=rgb[..., ::-1])
    dump_pickle(_tiered_labels(labels, ren_labels), root / f"{split}_labels.pkl",
                py2=ren_labels)
    return rgb


def tiered_png(root: Path, split: str, labels: Sequence[int], seed: int = 0) -> np.ndarray:
    """Ren et al.'s ``{split}_images_png.pkl`` + ``{split}_labels.pkl``; returns RGB."""
    rgb = rand_images(seed, len(labels))
    dump_pickle([encode_png(x) for x in rgb], root / f"{split}_images_png.pkl", py2=True)
    dump_pickle(_tiered_labels(labels, True), root / f"{split}_labels.pkl", py2=True)
    return rgb


def _tiered_labels(labels: Sequence[int], ren: bool) -> dict[str, Any]:
    if not ren:
        return {"labels": list(labels)}
    top = max(labels) + 1
    return {
        "label_specific": np.asarray(labels, dtype=np.int64),
        "label_general": np.asarray([lab // 2 for lab in labels], dtype=np.int64),
        "label_specific_str": [f"n{i:08d}" for i in range(top)],
        "label_general_str": [f"n9{i:07d}" for i in range((top + 1) // 2)],
    }


# --- hostile inputs -----------------------------------------------------------------------------
class Evil:
    """Unpickling this runs ``os.system`` (touching ``marker``) unless the loader refuses it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def evil_tar(path: Path) -> None:
    """A tar whose member ``../evil`` would land outside the extraction folder."""
    data = b"gotcha"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("../evil")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))


def tgz_of(folder: Path, path: Path, arcname: str) -> None:
    """A ``.tgz`` of ``folder`` stored under ``arcname``."""
    with tarfile.open(path, "w:gz") as tf:
        tf.add(folder, arcname=arcname)
