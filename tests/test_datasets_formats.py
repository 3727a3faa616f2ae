"""The format readers (miniImageNet, CUB, CIFAR-100 / CIFAR-FS / FC100, tieredImageNet, folders)
on tiny fixtures written in each real on-disk format, plus the split definitions of the real
data sets and hostile inputs."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import urllib.request
import zipfile
from pathlib import Path

import fixtures_formats as fx
import numpy as np
import pytest
from PIL import Image

from metakd.data._io import (
    CorruptFileError,
    DatasetNotFoundError,
    extract_archive,
    restricted_pickle_load,
)
from metakd.data.datasets import cifar as cifar_mod
from metakd.data.datasets import cub as cub_mod
from metakd.data.datasets.cifar import (
    CIFAR100,
    CIFAR100_SUPERCLASSES,
    CIFARFS,
    CIFARFS_SPLITS,
    FC100,
    FC100_SPLITS,
)
from metakd.data.datasets.cub import CUB, cub_split_of
from metakd.data.datasets.folder import ImageFolderDataset
from metakd.data.datasets.miniimagenet import RAVI_SPLITS, MiniImageNet
from metakd.data.datasets.tiered import TIERED_SPLIT_SIZES, TieredImageNet

TRAIN3 = RAVI_SPLITS["train"][:3]
VAL3 = RAVI_SPLITS["val"][:3]
FINE, COARSE, SUPER_OF = fx.FINE, fx.COARSE, fx.SUPER_OF


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METAKD_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def decodes(monkeypatch):
    """Names of the caches built (decoded) during the test."""
    import metakd.data.cache as cache

    calls: list[str] = []
    real = cache._decode_all

    def counting(name, *args, **kwargs):
        calls.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(cache, "_decode_all", counting)
    return calls


def chw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x).transpose(2, 0, 1))


def by_hand(path: Path, size: tuple[int, int]) -> np.ndarray:
    """What the cache should hold for an image file: RGB, Lanczos-resized, [C, H, W]."""
    img = Image.open(path).convert("RGB").resize((size[1], size[0]), Image.Resampling.LANCZOS)
    return chw(np.asarray(img))


def arrays_of(ds, size) -> np.ndarray:
    return ds.arrays(size, progress=False).images.numpy()


def check_common(ds, n_classes: int, n_items: int) -> None:
    assert len(ds.classes) == n_classes
    assert len(ds) == n_items == len(ds.targets)
    assert ds.classes == sorted(ds.classes)
    assert sorted(ds.labels_to_indices) == list(range(n_classes))
    assert all(ds.targets[i] <= ds.targets[i + 1] for i in range(n_items - 1))  # class-major


# --- miniImageNet -------------------------------------------------------------------------------
def test_mini_csv(tmp_path, caplog):
    files = fx.mini_csv(tmp_path, "train", TRAIN3)
    with caplog.at_level(logging.WARNING):
        ds = MiniImageNet(tmp_path, "train")
    assert "differ from Ravi" in caplog.text  # 3 classes, not the 64 of the real split
    assert ds.format == "csv"
    check_common(ds, 3, 12)
    assert ds.classes == sorted(TRAIN3)
    img, target = ds[5]
    assert img.mode == "RGB" and img.size == (12, 10) and target == 1
    arr = arrays_of(ds, None)
    assert arr.shape == (12, 3, 84, 84) and arr.dtype == np.uint8
    expected = [by_hand(p, (84, 84)) for c in sorted(TRAIN3) for p in sorted(files[c])]
    np.testing.assert_array_equal(arr, np.stack(expected))


def test_mini_cache_reused_then_rebuilt_when_a_file_changes(tmp_path, decodes):
    files = fx.mini_csv(tmp_path, "train", TRAIN3)
    first = arrays_of(MiniImageNet(tmp_path, "train"), 84)
    assert len(decodes) == 1
    again = arrays_of(MiniImageNet(tmp_path, "train"), 84)
    assert len(decodes) == 1  # read back from the HDF5 cache
    np.testing.assert_array_equal(first, again)

    changed = sorted(files[sorted(TRAIN3)[0]])[0]
    fx.save_image(changed, np.full((10, 12, 3), 200, dtype=np.uint8))
    st = os.stat(changed)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))
    rebuilt = arrays_of(MiniImageNet(tmp_path, "train"), 84)
    assert len(decodes) == 2
    np.testing.assert_array_equal(rebuilt[0], by_hand(changed, (84, 84)))
    np.testing.assert_array_equal(rebuilt[1:], first[1:])


def test_mini_folders_with_rotations(tmp_path):
    imgs = fx.mini_folders(tmp_path, "val", VAL3)
    (tmp_path / "val" / VAL3[0] / ".DS_Store").write_bytes(b"junk")
    ds = MiniImageNet(tmp_path, "val", rotations=(0, 90))
    assert ds.format == "folders"
    assert ds.classes[:3] == sorted(VAL3) and ds.classes[3:] == [f"{c}@90" for c in sorted(VAL3)]
    assert len(ds) == 18
    img, _ = ds[0]
    assert img.size == (fx.W, fx.H)
    rot, _ = ds[9]  # first image of the first class, turned 90 degrees
    np.testing.assert_array_equal(np.asarray(rot), np.rot90(imgs[sorted(VAL3)[0]][0]))
    a = ds.arrays((8, 8), progress=False)  # square: rotated copies keep the shape
    assert a.images.shape == (18, 3, 8, 8)
    assert a.class_rotation.tolist() == [0, 0, 0, 1, 1, 1]
    first, turned = a.images[a.class_items[0, 0]], a.images[a.class_items[3, 0]]
    np.testing.assert_array_equal(turned.numpy(), np.rot90(first.numpy(), axes=(1, 2)))
    plain = MiniImageNet(tmp_path, "val")
    expected = np.concatenate([imgs[c] for c in sorted(VAL3)])
    np.testing.assert_array_equal(arrays_of(plain, (fx.H, fx.W)), expected.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("py2", [False, True])
def test_mini_cache_pickle(tmp_path, py2):
    classes = RAVI_SPLITS["test"][:4]
    imgs = fx.mini_cache_pickle(tmp_path, "test", classes, py2=py2)
    ds = MiniImageNet(tmp_path, "test")
    assert ds.format == "pickle"
    check_common(ds, 4, 12)
    expected = np.concatenate([imgs[c] for c in sorted(classes)])
    np.testing.assert_array_equal(arrays_of(ds, (fx.H, fx.W)), expected.transpose(0, 3, 1, 2))
    assert arrays_of(ds, None).shape == (12, 3, 84, 84)


def test_mini_gidaris(tmp_path, decodes):
    labels = [64, 65, 66, 64, 65, 66]  # val pickles start at 64
    data = fx.mini_gidaris(tmp_path, "val", labels, names={w: 64 + i for i, w in enumerate(VAL3)})
    fx.mini_gidaris(tmp_path, "train_phase_train", [0, 1, 0, 1], seed=1)
    fx.mini_gidaris(tmp_path, "train_phase_val", [1, 0], seed=2)

    val = MiniImageNet(tmp_path, "val")
    assert val.format == "gidaris" and val.classes == list(VAL3)
    assert val.targets == [0, 1, 2, 0, 1, 2]  # shifted by min, order of the file kept
    assert arrays_of(val, None).shape == (6, 3, 80, 80)  # Meta-Baseline's size
    np.testing.assert_array_equal(arrays_of(val, (fx.H, fx.W)), data.transpose(0, 3, 1, 2))

    train = MiniImageNet(tmp_path, "train")  # "train" is train_phase_train
    assert train.classes == ["0", "1"] and len(train) == 4
    assert len(MiniImageNet(tmp_path, "train_phase_val")) == 2
    with pytest.raises(ValueError, match="Gidaris"):
        MiniImageNet(tmp_path, "train_phase_val", format="csv")

    built = len(decodes)
    fx.mini_gidaris(tmp_path, "val", labels, seed=9)  # a new file: the cache is rebuilt
    arrays_of(MiniImageNet(tmp_path, "val"), (fx.H, fx.W))
    assert len(decodes) == built + 1


def test_mini_torchmeta_hdf5(tmp_path):
    imgs = fx.torchmeta_hdf5(tmp_path / "miniimagenet", "train", TRAIN3)
    ds = MiniImageNet(tmp_path, "train")  # torchmeta's sub-folder is searched too
    assert ds.format == "hdf5"
    check_common(ds, 3, 9)
    expected = np.concatenate([imgs[c] for c in sorted(TRAIN3)])
    np.testing.assert_array_equal(arrays_of(ds, (fx.H, fx.W)), expected.transpose(0, 3, 1, 2))
    assert "train_data.hdf5:/datasets/" in ds._describe(0)


def test_mini_auto_order_and_explicit_format(tmp_path):
    fx.mini_csv(tmp_path, "train", TRAIN3)
    fx.mini_cache_pickle(tmp_path, "train", TRAIN3[:2])
    assert MiniImageNet(tmp_path, "train").format == "csv"
    assert len(MiniImageNet(tmp_path, "train", format="pickle").classes) == 2
    with pytest.raises(ValueError, match="format"):
        MiniImageNet(tmp_path, "train", format="zip")
    with pytest.raises(ValueError, match="split"):
        MiniImageNet(tmp_path, "training")


def test_mini_missing_root_names_every_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        MiniImageNet(tmp_path / "nowhere", "test")
    msg = str(e.value)
    for expected in ("test.csv", "images", "test/<wnid>", "mini-imagenet-cache-test.pkl",
                     "miniImageNet_category_split_test.pickle", "test_data.hdf5",
                     "test_labels.json", "not public", "mini-imagenet-tools"):
        assert expected in msg, expected


class _FakeResponse(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def test_mini_download_fetches_csvs_and_explains_images(tmp_path, monkeypatch):
    urls: list[str] = []

    def fake_urlopen(url, timeout=None):
        urls.append(url)
        return _FakeResponse(b"filename,label\nn0153282900000001.jpg,n01532829\n")

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(DatasetNotFoundError, match="no images/ folder") as e:
        MiniImageNet(tmp_path, "train", download=True)
    assert "not public" in str(e.value)
    assert sorted(p.name for p in tmp_path.glob("*.csv")) == ["test.csv", "train.csv", "val.csv"]
    assert all(u.startswith("https://raw.githubusercontent.com/twitter/meta-learning-lstm/")
               for u in urls)


def test_mini_csv_missing_and_corrupt_images(tmp_path):
    files = fx.mini_csv(tmp_path, "train", TRAIN3)
    bad = sorted(files[sorted(TRAIN3)[1]])[2]
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    ds = MiniImageNet(tmp_path, "train")
    with pytest.raises(CorruptFileError, match=bad.name):
        ds[6]
    with pytest.raises(CorruptFileError, match=bad.name):
        ds.arrays(84, progress=False)
    bad.unlink()
    with pytest.raises(DatasetNotFoundError, match=bad.name):
        MiniImageNet(tmp_path, "train")


def test_mini_csv_bad_header(tmp_path):
    fx.mini_csv(tmp_path, "train", TRAIN3)
    (tmp_path / "train.csv").write_text("file,class\na.jpg,n01532829\n")
    with pytest.raises(CorruptFileError, match="filename,label"):
        MiniImageNet(tmp_path, "train")


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "mini-imagenet-cache-train.pkl"
    with open(path, "wb") as f:
        pickle.dump({"image_data": fx.Evil(marker), "class_dict": {}}, f, protocol=2)
    with pytest.raises(CorruptFileError, match="refusing"):
        MiniImageNet(tmp_path, "train")
    with pytest.raises(CorruptFileError, match="system"):
        restricted_pickle_load(path)
    assert not marker.exists()


def test_ravi_split_definition():
    sizes = {k: len(v) for k, v in RAVI_SPLITS.items()}
    assert sizes == {"train": 64, "val": 16, "test": 20}
    all_ = [w for v in RAVI_SPLITS.values() for w in v]
    assert len(set(all_)) == 100 and all(len(w) == 9 and w[0] == "n" for w in all_)
    assert all(list(v) == sorted(v) for v in RAVI_SPLITS.values())
    assert RAVI_SPLITS["test"][:3] == ("n01930112", "n01981276", "n02099601")


# --- CUB ----------------------------------------------------------------------------------------
def test_cub_split_rule_gives_100_50_50():
    splits = [cub_split_of(k) for k in range(1, 201)]
    assert {s: splits.count(s) for s in ("train", "val", "test")} == {
        "train": 100, "val": 50, "test": 50}
    assert [k for k in range(1, 13) if cub_split_of(k) == "val"] == [2, 6, 10]
    assert [k for k in range(1, 13) if cub_split_of(k) == "test"] == [4, 8, 12]
    with pytest.raises(ValueError):
        cub_split_of(201)


def test_cub_images(tmp_path):
    files = fx.cub_images(tmp_path, range(1, 9))
    (tmp_path / "CUB_200_2011" / "images" / "attributes").mkdir()  # not a class folder
    sizes = {s: len(CUB(tmp_path, s).classes) for s in ("train", "val", "test", "all")}
    assert sizes == {"train": 4, "val": 2, "test": 2, "all": 8}
    ds = CUB(tmp_path, "test")
    assert ds.format == "images" and ds.classes == ["004.Bird_4", "008.Bird_8"]
    check_common(ds, 2, 4)
    img, _ = ds[0]
    assert img.mode == "RGB" and img.size == (7, 9)
    expected = [by_hand(p, (84, 84)) for c in ds.classes for p in files[c]]
    np.testing.assert_array_equal(arrays_of(ds, None), np.stack(expected))


def test_cub_torchmeta_hdf5_encoded(tmp_path):
    classes = ["002.Laysan_Albatross", "006.Least_Auklet"]
    imgs = fx.torchmeta_hdf5(tmp_path / "cub", "val", classes, encoded=True)
    ds = CUB(tmp_path, "val")
    assert ds.format == "hdf5" and ds.classes == classes
    expected = np.concatenate([imgs[c] for c in classes])
    np.testing.assert_array_equal(arrays_of(ds, (fx.H, fx.W)), expected.transpose(0, 3, 1, 2))


def test_cub_download_checks_md5_and_extracts(tmp_path, monkeypatch):
    src = tmp_path / "src"
    fx.cub_images(src, [1, 2, 3, 4])
    archive = tmp_path / "CUB_200_2011.tgz"
    fx.tgz_of(src / "CUB_200_2011", archive, "CUB_200_2011")
    monkeypatch.setattr(cub_mod, "URL", archive.as_uri())  # a local "download"
    monkeypatch.setattr(cub_mod, "MD5", "0" * 32)
    with pytest.raises(CorruptFileError, match="md5"):
        CUB(tmp_path / "data", "train", download=True)
    monkeypatch.setattr(cub_mod, "MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    ds = CUB(tmp_path / "data", "train", download=True)
    assert ds.classes == ["001.Bird_1", "003.Bird_3"]


def test_cub_missing_root(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        CUB(tmp_path, "train")
    assert "CUB_200_2011/images/NNN." in str(e.value)
    assert cub_mod.URL in str(e.value) and cub_mod.MD5 in str(e.value)


# --- CIFAR --------------------------------------------------------------------------------------
@pytest.fixture
def cifar_root(tmp_path):
    data = fx.cifar100_python(tmp_path, FINE, COARSE, SUPER_OF)
    return tmp_path, data


def test_cifar100(cifar_root):
    root, data = cifar_root
    train, test = CIFAR100(root, "train"), CIFAR100(root, "test")
    assert train.classes == FINE and len(train) == 200 and len(test) == 100
    assert train.targets[:3] == [0, 1, 2]  # the official order is kept
    assert COARSE[train.coarse_targets[1]] == SUPER_OF[FINE[1]]
    img, target = train[101]
    assert img.mode == "RGB" and img.size == (32, 32) and target == 1
    np.testing.assert_array_equal(np.asarray(img), data["train"][101].reshape(3, 32, 32).transpose(1, 2, 0))
    np.testing.assert_array_equal(arrays_of(test, None), data["test"].reshape(-1, 3, 32, 32))
    with pytest.raises(ValueError):
        CIFAR100(root, "val")


def test_cifarfs_pools_train_and_test_files(cifar_root):
    root, data = cifar_root
    ds = CIFARFS(root, "val")
    assert ds.format == "python" and ds.classes == list(CIFARFS_SPLITS["val"])
    check_common(ds, 16, 48)  # 2 train + 1 test image per class
    arr = arrays_of(ds, None)
    assert arr.shape == (48, 3, 32, 32)
    k = FINE.index(ds.classes[0])
    expected = np.stack([data["train"][k], data["train"][100 + k], data["test"][k]])
    np.testing.assert_array_equal(arr[:3], expected.reshape(3, 3, 32, 32))


def test_fc100_by_superclass(cifar_root):
    root, _ = cifar_root
    ds = FC100(root, "test")
    assert len(ds.classes) == 20 and len(ds) == 60
    assert {SUPER_OF[c] for c in ds.classes} == set(FC100_SPLITS["test"])
    assert len(FC100(root, "train").classes) == 60


def test_cifar_superclass_mismatch_is_corrupt(tmp_path):
    wrong = dict(SUPER_OF, apple="trees")
    fx.cifar100_python(tmp_path, FINE, COARSE, wrong)
    with pytest.raises(CorruptFileError, match="superclasses"):
        FC100(tmp_path, "train")


def test_cifarfs_metaoptnet_pickle_and_folders(tmp_path):
    val = CIFARFS_SPLITS["val"]
    labels = [FINE.index(c) for c in val] * 2
    data = fx.rand_images(0, len(labels), 32, 32)
    fx.dump_pickle({"data": data, "labels": labels}, tmp_path / "CIFAR_FS_val.pickle", py2=True)
    ds = CIFARFS(tmp_path, "val")
    assert ds.format == "pickle" and ds.classes == list(val)
    np.testing.assert_array_equal(arrays_of(ds, None), data.transpose(0, 3, 1, 2))

    r2d2 = tmp_path / "r2d2"
    for i, c in enumerate(val):
        fx.save_image(r2d2 / "data" / c / f"{c}_{i}.png", fx.rand_images(i, 1, 32, 32)[0])
    fx.save_image(r2d2 / "data" / "apple" / "apple_0.png", fx.rand_images(99, 1, 32, 32)[0])
    ds = CIFARFS(r2d2, "val")
    assert ds.format == "folders" and ds.classes == list(val) and len(ds) == 16


def test_cifar_download_checks_md5(tmp_path, monkeypatch):
    src = tmp_path / "src"
    fx.cifar100_python(src, FINE, COARSE, SUPER_OF)
    archive = tmp_path / "cifar-100-python.tar.gz"
    fx.tgz_of(src / "cifar-100-python", archive, "cifar-100-python")
    monkeypatch.setattr(cifar_mod, "URL", archive.as_uri())
    monkeypatch.setattr(cifar_mod, "MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    assert len(FC100(tmp_path / "data", "val", download=True).classes) == 20


def test_cifar_missing_root(tmp_path):
    for cls in (CIFAR100, CIFARFS, FC100):
        with pytest.raises(DatasetNotFoundError) as e:
            cls(tmp_path / "nowhere", "test")
        assert "cifar-100-python/{train,test,meta}" in str(e.value)
        assert "download=True" in str(e.value) and cifar_mod.MD5 in str(e.value)


def test_cifarfs_split_definition():
    sizes = {k: len(v) for k, v in CIFARFS_SPLITS.items()}
    assert sizes == {"train": 64, "val": 16, "test": 20}
    pooled = [c for v in CIFARFS_SPLITS.values() for c in v]
    assert sorted(pooled) == FINE  # disjoint, and all 100 CIFAR-100 classes


def test_fc100_split_definition():
    assert {k: len(v) for k, v in FC100_SPLITS.items()} == {"train": 12, "val": 4, "test": 4}
    assert sorted(s for v in FC100_SPLITS.values() for s in v) == COARSE
    assert all(len(v) == 5 for v in CIFAR100_SUPERCLASSES.values())
    assert len(set(FINE)) == 100
    sizes = {k: len(FC100.classes_of_split(k)) for k in FC100_SPLITS}
    assert sizes == {"train": 60, "val": 20, "test": 20}


# --- tieredImageNet -----------------------------------------------------------------------------
def test_tiered_npz_meta_baseline(tmp_path):
    labels = [5, 6, 7, 5, 6, 7, 5]
    rgb = fx.tiered_npz(tmp_path, "val", labels)
    ds = TieredImageNet(tmp_path, "val")
    assert ds.format == "npz" and ds.bgr and ds.classes == ["5", "6", "7"]
    assert ds.targets == [0, 1, 2, 0, 1, 2, 0]  # file order kept, labels shifted by min
    assert isinstance(ds._source.images, np.memmap)  # not read into memory
    np.testing.assert_array_equal(arrays_of(ds, (fx.H, fx.W)), rgb.transpose(0, 3, 1, 2))
    assert arrays_of(ds, None).shape == (7, 3, 84, 84)
    raw = TieredImageNet(tmp_path, "val", channels="rgb")  # as stored: BGR
    np.testing.assert_array_equal(np.asarray(raw[0][0]), rgb[0][..., ::-1])


def test_tiered_npz_compressed_and_ren_labels(tmp_path):
    rgb = fx.tiered_npz(tmp_path, "test", [0, 1, 2, 3], ren_labels=True, compressed=True)
    ds = TieredImageNet(tmp_path, "test")
    assert ds.classes == ["n00000000", "n00000001", "n00000002", "n00000003"]
    np.testing.assert_array_equal(np.asarray(ds[3][0]), rgb[3])
    general = TieredImageNet(tmp_path, "test", label_level="general")
    assert general.classes == ["n90000000", "n90000001"] and general.targets == [0, 0, 1, 1]


def test_tiered_png_pickles(tmp_path):
    rgb = fx.tiered_png(tmp_path, "train", [1, 0, 1, 0])
    ds = TieredImageNet(tmp_path, "train")
    assert ds.format == "png" and not ds.bgr
    assert ds.classes == ["n00000000", "n00000001"] and ds.targets == [1, 0, 1, 0]
    np.testing.assert_array_equal(arrays_of(ds, (fx.H, fx.W)), rgb.transpose(0, 3, 1, 2))


def test_tiered_torchmeta_hdf5(tmp_path):
    imgs = fx.torchmeta_hdf5(tmp_path, "test", ["n01", "n02"], encoded=True)
    ds = TieredImageNet(tmp_path, "test")
    assert ds.format == "hdf5" and len(ds) == 6
    np.testing.assert_array_equal(np.asarray(ds[4][0]), imgs["n02"][1])


def test_tiered_missing_and_hostile(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="cannot be downloaded") as e:
        TieredImageNet(tmp_path, "train", download=True)
    assert "train_images.npz" in str(e.value) and "train_images_png.pkl" in str(e.value)
    np.savez(tmp_path / "train_images.npz", images=np.array([{"a": 1}], dtype=object))
    fx.dump_pickle({"labels": [0]}, tmp_path / "train_labels.pkl")
    with pytest.raises(CorruptFileError, match="objects"):
        TieredImageNet(tmp_path, "train")


def test_tiered_split_definition():
    assert sum(c for c, _ in TIERED_SPLIT_SIZES.values()) == 608
    assert sum(g for _, g in TIERED_SPLIT_SIZES.values()) == 34


# --- generic folders ----------------------------------------------------------------------------
def test_image_folder(tmp_path):
    root = tmp_path / "birds"
    px = fx.rand_images(0, 5)
    fx.save_image(root / "train" / "dog" / "b.JPG", px[0])
    fx.save_image(root / "train" / "dog" / "a.png", px[1])
    fx.save_image(root / "train" / "cat" / "z.JpEg", px[2])
    fx.save_image(root / "train" / "cat" / "nested" / "y.PNG", px[3])
    fx.save_image(root / "train" / "cat" / ".hidden.png", px[4])
    fx.save_image(root / "train" / "cat" / ".ipynb_checkpoints" / "x.png", px[4])
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / ".cache").mkdir()
    ds = ImageFolderDataset(root, "train")
    assert ds.classes == ["cat", "dog"] and ds.targets == [0, 0, 1, 1]
    assert [p.name for p in ds._source.files] == ["y.PNG", "z.JpEg", "a.png", "b.JPG"]
    gray = ImageFolderDataset(root, "train", image_mode="L", image_size=(4, 5))
    assert gray[0][0].mode == "L"
    assert gray.arrays(progress=False).images.shape == (4, 1, 4, 5)
    np.testing.assert_array_equal(
        arrays_of(ds, (fx.H, fx.W))[0], px[3].transpose(2, 0, 1))
    with pytest.raises(DatasetNotFoundError, match="<class>"):
        ImageFolderDataset(root, "val")


# --- archives -----------------------------------------------------------------------------------
def test_extract_archive_refuses_members_leaving_the_folder(tmp_path):
    bad_tar = tmp_path / "evil.tgz"
    fx.evil_tar(bad_tar)
    out = tmp_path / "a" / "out"
    with pytest.raises(CorruptFileError, match="outside"):
        extract_archive(bad_tar, out)
    assert not (tmp_path / "a" / "evil").exists()

    bad_zip = tmp_path / "evil.zip"
    with zipfile.ZipFile(bad_zip, "w") as zf:
        zf.writestr("../evil", b"gotcha")
    with pytest.raises(CorruptFileError, match="outside"):
        extract_archive(bad_zip, out)
    assert not (tmp_path / "a" / "evil").exists()
