"""Data as users actually get it: hand-placed archives, offline downloads, safe extraction into
an existing folder, empty class folders, 16-bit and transparent images."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
import traceback
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import ClassVar

import fixtures_formats as fx
import h5py
import numpy as np
import pytest
from conftest import png_bytes, write_omniglot
from PIL import Image

from metakd.data import (
    CIFAR100,
    CUB,
    FC100,
    CorruptFileError,
    DatasetNotFoundError,
    DownloadError,
    ImageFolderDataset,
    MiniImageNet,
    Omniglot,
)
from metakd.data._io import download_url, extract_archive
from metakd.data.base import to_mode
from metakd.data.datasets import cifar as cifar_mod
from metakd.data.datasets import cub as cub_mod
from metakd.data.datasets import omniglot as omniglot_mod
from metakd.data.datasets.miniimagenet import RAVI_SPLITS

FINE, COARSE, SUPER_OF = fx.FINE, fx.COARSE, fx.SUPER_OF


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METAKD_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was used although the file is in place")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def offline(error: BaseException):
    def urlopen(*args, **kwargs):
        raise error

    return urlopen


OFFLINE_ERRORS = [
    urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution")),
    OSError(101, "Network is unreachable"),
    TimeoutError("timed out"),  # socket.timeout
    ConnectionResetError(104, "Connection reset by peer"),
]


# --- hand-placed archives -------------------------------------------------------------------------
@pytest.fixture
def cub_archive(tmp_path) -> Path:
    fx.cub_images(tmp_path / "src", [1, 2, 3, 4])
    archive = tmp_path / "CUB_200_2011.tgz"
    fx.tgz_of(tmp_path / "src" / "CUB_200_2011", archive, "CUB_200_2011")
    return archive


@pytest.mark.parametrize("download", [False, True])
def test_hand_placed_cub_archive_is_checked_and_extracted_offline(
        tmp_path, monkeypatch, no_network, cub_archive, download):
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("mine")  # the folder exists and holds other things
    placed = data / "CUB_200_2011.tgz"
    placed.write_bytes(cub_archive.read_bytes())
    monkeypatch.setattr(cub_mod, "MD5", md5(cub_archive))
    ds = CUB(data, "train", download=download)
    assert ds.classes == ["001.Bird_1", "003.Bird_3"] and len(ds) == 4
    assert (data / "notes.txt").read_text() == "mine" and placed.is_file()
    assert CUB(data, "test").classes == ["004.Bird_4"]  # already extracted: read as it is


def test_hand_placed_archive_with_another_checksum_names_file_and_both_sums(
        tmp_path, monkeypatch, no_network, cub_archive):
    data = tmp_path / "data"
    data.mkdir()
    placed = data / "CUB_200_2011.tgz"
    placed.write_bytes(cub_archive.read_bytes()[:-100])  # an interrupted browser download
    monkeypatch.setattr(cub_mod, "MD5", md5(cub_archive))
    for download in (False, True):
        with pytest.raises(CorruptFileError) as e:
            CUB(data, "train", download=download)
        msg = str(e.value)
        assert str(placed) in msg and md5(cub_archive) in msg and md5(placed) in msg
    assert placed.is_file()  # the user's file is left alone


def test_hand_placed_cifar_archive(tmp_path, monkeypatch, no_network):
    fx.cifar100_python(tmp_path / "src", FINE, COARSE, SUPER_OF)
    data = tmp_path / "data"
    data.mkdir()
    fx.tgz_of(tmp_path / "src" / "cifar-100-python", data / "cifar-100-python.tar.gz",
              "cifar-100-python")
    monkeypatch.setattr(cifar_mod, "MD5", "f" * 32)
    with pytest.raises(CorruptFileError, match="f" * 32):
        FC100(data, "val")
    monkeypatch.setattr(cifar_mod, "MD5", md5(data / "cifar-100-python.tar.gz"))
    assert len(FC100(data, "val").classes) == 20
    assert len(CIFAR100(data, "test")) == 100


def test_hand_placed_omniglot_zips_with_download(tmp_path, monkeypatch, no_network):
    root = write_omniglot(tmp_path / "omni", {"images_background": {"Latin": 2},
                                              "images_evaluation": {"Kannada": 1}},
                          as_zip=True, drawers=2, size=8)
    sums = {p: md5(root / f"{p}.zip") for p in ("images_background", "images_evaluation")}
    monkeypatch.setattr(omniglot_mod, "_MD5", sums)
    ds = Omniglot(root, split="all", download=True)
    assert len(ds.classes) == 3 and (root / "images_evaluation" / "Kannada").is_dir()
    other = write_omniglot(tmp_path / "other", {"images_background": {"Latin": 1}}, as_zip=True,
                           drawers=1, size=8)
    with pytest.raises(CorruptFileError) as e:
        Omniglot(other, split="all", download=True)
    assert "images_background.zip" in str(e.value) and sums["images_background"] in str(e.value)


# --- offline downloads ------------------------------------------------------------------------------
@pytest.mark.parametrize("error", OFFLINE_ERRORS, ids=lambda e: type(e).__name__)
def test_offline_download_is_one_line_naming_file_folder_and_url(tmp_path, monkeypatch, error):
    monkeypatch.setattr(urllib.request, "urlopen", offline(error))
    data = tmp_path / "data"
    with pytest.raises(DownloadError) as e:
        CUB(data, "train", download=True)
    msg = str(e.value)
    assert "\n" not in msg
    assert "CUB_200_2011.tgz" in msg and str(data) in msg and cub_mod.URL in msg
    assert cub_mod.MD5 in msg
    assert isinstance(e.value, DatasetNotFoundError)
    shown = "".join(traceback.format_exception(e.value))
    assert type(error).__name__ + ":" not in shown and "During handling" not in shown
    assert [p.name for p in data.iterdir()] == []  # no partial file left


def test_offline_download_of_every_downloadable_set(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", offline(OFFLINE_ERRORS[0]))
    cases = [
        (lambda r: CIFAR100(r, "train", download=True), "cifar-100-python.tar.gz"),
        (lambda r: Omniglot(r, split="train", download=True), "images_background.zip"),
        (lambda r: MiniImageNet(r, "train", download=True), "train.csv"),
    ]
    for k, (build, name) in enumerate(cases):
        root = tmp_path / f"d{k}"
        with pytest.raises(DownloadError, match=f"place it as {name} in the folder {root}$"):
            build(root)


def test_connection_lost_mid_download(tmp_path, monkeypatch):
    class Broken(io.BytesIO):
        headers: ClassVar[dict[str, str]] = {"Content-Length": "100"}

        def read(self, *args):
            raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Broken())
    with pytest.raises(DownloadError, match="Connection reset by peer"):
        download_url("https://example.org/a.zip", tmp_path, md5="0" * 32)
    assert list(tmp_path.iterdir()) == []


# --- extraction into an existing folder -------------------------------------------------------------
def test_extraction_into_an_existing_folder_refuses_escapes(tmp_path):
    target = tmp_path / "data"
    outside = tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    (target / "keep.txt").write_text("kept")
    fx.evil_tar(tmp_path / "evil.tgz")
    with pytest.raises(CorruptFileError, match="outside"):
        extract_archive(tmp_path / "evil.tgz", target)
    assert not (tmp_path / "evil").exists()
    # A link already inside the target that points outside it must not be followed.
    os.symlink(outside, target / "escape")
    with tarfile.open(tmp_path / "via_link.tgz", "w:gz") as tf:
        info = tarfile.TarInfo("escape/planted.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    with zipfile.ZipFile(tmp_path / "via_link.zip", "w") as zf:
        zf.writestr("escape/planted.txt", b"bad")
    for archive in ("via_link.tgz", "via_link.zip"):
        with pytest.raises(CorruptFileError, match="outside"):
            extract_archive(tmp_path / archive, target)
    assert list(outside.iterdir()) == []
    # A hard link whose target (relative to the archive root) leaves the folder.
    with tarfile.open(tmp_path / "hard.tgz", "w:gz") as tf:
        info = tarfile.TarInfo("a/b/link")
        info.type = tarfile.LNKTYPE
        info.linkname = "../../outside/x"
        tf.addfile(info)
    with pytest.raises(CorruptFileError, match="outside"):
        extract_archive(tmp_path / "hard.tgz", target)
    # A well-formed archive extracts next to what the folder already holds.
    with zipfile.ZipFile(tmp_path / "good.zip", "w") as zf:
        zf.writestr("sub/file.txt", b"ok")
    extract_archive(tmp_path / "good.zip", target)
    assert (target / "sub/file.txt").read_bytes() == b"ok" and (target / "keep.txt").is_file()


# --- empty class folders: always an error naming the folder -----------------------------------------
def test_empty_class_folder_in_image_folder(tmp_path):
    for k, name in enumerate(["ant", "bee"]):
        fx.save_image(tmp_path / name / "0.png", fx.rand_images(k, 1)[0])
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"junk")
    with pytest.raises(CorruptFileError) as e:
        ImageFolderDataset(tmp_path)
    assert str(tmp_path / "cat") in str(e.value) and "1 more" in str(e.value) and "dog" in str(e.value)


def test_empty_class_folder_in_miniimagenet_folders(tmp_path):
    fx.mini_folders(tmp_path, "train", RAVI_SPLITS["train"][:2])
    (tmp_path / "train" / RAVI_SPLITS["train"][2]).mkdir()
    with pytest.raises(CorruptFileError, match=RAVI_SPLITS["train"][2]):
        MiniImageNet(tmp_path, "train")


def test_empty_class_in_torchmeta_hdf5(tmp_path):
    fx.torchmeta_hdf5(tmp_path, "val", list(RAVI_SPLITS["val"][:2]))
    with h5py.File(tmp_path / "val_data.hdf5", "a") as f:
        f["datasets"].create_dataset(RAVI_SPLITS["val"][2], shape=(0, fx.H, fx.W, 3), dtype=np.uint8)
    (tmp_path / "val_labels.json").write_text(
        '["' + '", "'.join(RAVI_SPLITS["val"][:3]) + '"]')
    with pytest.raises(CorruptFileError, match=f"{RAVI_SPLITS['val'][2]} holds no image"):
        MiniImageNet(tmp_path, "val")


def test_empty_class_folder_in_cub(tmp_path):
    fx.cub_images(tmp_path, [1, 2, 3])
    images = tmp_path / "CUB_200_2011" / "images"
    (images / "005.Bird_5").mkdir()  # a train class
    with pytest.raises(CorruptFileError, match="005.Bird_5"):
        CUB(tmp_path, "train")
    assert CUB(tmp_path, "val").classes == ["002.Bird_2"]  # not a class of this split


def test_empty_character_folder_in_omniglot(tmp_path):
    tree = {"images_background": {"Latin": 2}, "images_evaluation": {"Kannada": 1}}
    root = write_omniglot(tmp_path / "omni", tree, drawers=2, size=8)
    (root / "images_background/Latin/character03").mkdir()
    with pytest.raises(CorruptFileError, match="Latin/character03 holds no .png"):
        Omniglot(root, split="all")
    with pytest.raises(CorruptFileError, match="character03"):
        Omniglot(root, protocol="lake", split="background")
    assert len(Omniglot(root, protocol="lake", split="evaluation").classes) == 1

    zroot = write_omniglot(tmp_path / "zipped", tree, as_zip=True, drawers=2, size=8)
    with zipfile.ZipFile(zroot / "images_background.zip", "a") as zf:
        zf.writestr("images_background/Latin/character07/", b"")  # a folder entry, no files
    with pytest.raises(CorruptFileError, match=r"images_background\.zip:images_background/Latin/character07/"):
        Omniglot(zroot, split="all")


# --- 16-bit and transparent images ------------------------------------------------------------------
def scaled(v: np.ndarray) -> np.ndarray:
    return np.round(np.clip(v.astype(np.float64), 0, 65535) * 255 / 65535).astype(np.uint8)


def test_16_bit_images_are_scaled_not_clipped():
    v = np.arange(0, 65536, 257 // 2, dtype=np.int64)[None, :]  # halves included
    for arr in (v.astype(np.uint16), v.astype(">u2")):
        img = Image.fromarray(arr)
        assert img.mode in ("I;16", "I;16B")
        np.testing.assert_array_equal(np.asarray(to_mode(img, "L")), scaled(v))
    wide = np.array([[-5, 0, 300, 65535, 70000]], dtype=np.int32)
    img = Image.fromarray(wide)
    assert img.mode == "I"
    np.testing.assert_array_equal(np.asarray(to_mode(img, "L")), scaled(wide))
    rgb = np.asarray(to_mode(img, "RGB"))
    assert rgb.shape == (1, 5, 3) and (rgb == scaled(wide)[..., None]).all()


def test_16_bit_png_files(tmp_path):
    tmp_path = tmp_path / "imgs"  # the cache lives in tmp_path/cache
    v = np.random.default_rng(0).integers(0, 65536, size=(2, 5, 7)).astype(np.uint16)
    for k in range(2):
        path = tmp_path / ("a", "b")[k] / "deep.png"
        path.parent.mkdir(parents=True)
        Image.fromarray(v[k]).save(path)
        assert Image.open(path).mode in ("I;16", "I;16B", "I")
    gray = ImageFolderDataset(tmp_path, image_mode="L").arrays(progress=False).images.numpy()
    np.testing.assert_array_equal(gray[:, 0], scaled(v))
    rgb = ImageFolderDataset(tmp_path, image_mode="RGB").arrays(progress=False).images.numpy()
    np.testing.assert_array_equal(rgb, np.repeat(scaled(v)[:, None], 3, axis=1))


def on_white(rgba: np.ndarray) -> np.ndarray:
    c, a = rgba[..., :-1].astype(np.float64), rgba[..., -1:].astype(np.float64)
    return np.round((c * a + 255 * (255 - a)) / 255).astype(np.uint8)


def test_transparent_images_are_composited_on_white(tmp_path):
    tmp_path = tmp_path / "imgs"
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, size=(6, 5, 4), dtype=np.uint8)
    rgba[0, :, 3] = 0  # fully transparent: whatever colour is hidden becomes white
    rgba[1, :, 3] = 255
    la = rng.integers(0, 256, size=(6, 5, 2), dtype=np.uint8)
    pal = Image.fromarray(rng.integers(0, 4, size=(6, 5), dtype=np.uint8), mode="P")
    pal.putpalette([10, 20, 30, 200, 100, 0, 0, 0, 0, 90, 90, 90])
    files = {"rgba": Image.fromarray(rgba), "la": Image.fromarray(la, mode="LA"), "p": pal}
    for name, img in files.items():
        path = tmp_path / name / "img.png"
        path.parent.mkdir(parents=True)
        img.save(path, **({"transparency": 2} if name == "p" else {}))
    ds = ImageFolderDataset(tmp_path, image_mode="RGB")
    assert ds.classes == ["la", "p", "rgba"]
    got = ds.arrays(progress=False).images.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(got[2], on_white(rgba))
    assert (got[2][0] == 255).all()
    np.testing.assert_array_equal(got[0], np.repeat(on_white(la), 3, axis=2))
    idx = np.asarray(pal)
    want = np.array([[10, 20, 30], [200, 100, 0], [255, 255, 255], [90, 90, 90]], np.uint8)[idx]
    np.testing.assert_array_equal(got[1], want)
    grey = ImageFolderDataset(tmp_path, image_mode="L")
    expected = np.asarray(Image.fromarray(on_white(rgba)).convert("L"))
    np.testing.assert_array_equal(np.asarray(grey[2][0]), expected)


def test_transparent_omniglot_drawing(tmp_path):
    strokes = np.zeros((8, 8, 4), dtype=np.uint8)  # black everywhere, opaque only on strokes
    strokes[2:5, 3, 3] = 255
    path = tmp_path / "images_background/Latin/character01/0001_01.png"
    path.parent.mkdir(parents=True)
    path.write_bytes(png_bytes(strokes))
    raw = np.asarray(Omniglot(tmp_path, split="all", invert=False)[0][0])
    want = np.full((8, 8), 255, np.uint8)
    want[2:5, 3] = 0
    np.testing.assert_array_equal(raw, want)  # black on white, not black on black
    inverted = Omniglot(tmp_path, split="all").arrays(8, progress=False).images[0, 0].numpy()
    np.testing.assert_array_equal(inverted, 255 - want)
