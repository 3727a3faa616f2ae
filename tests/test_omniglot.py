"""Omniglot: the bundled copy, both official on-disk layouts, the three split protocols."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_omniglot
from PIL import Image, ImageOps

from metakd.data import BUNDLED_OMNIGLOT, CorruptFileError, DatasetNotFoundError, Omniglot
from metakd.data.datasets import omniglot as omniglot_mod


def test_bundled_splits_match_the_documented_alphabets() -> None:
    train, test = Omniglot(split="train"), Omniglot(split="test")
    assert (len(train.classes), len(test.classes)) == (136, 106)
    assert (len(train), len(test)) == (136 * 20, 106 * 20)
    assert {c.split("/")[0] for c in train.classes} == {
        "Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"}
    assert {c.split("/")[0] for c in test.classes} == {"Japanese_(katakana)", "Sanskrit", "Tagalog"}
    # Greek and Latin are in both zips: each character still has exactly 20 drawings.
    assert np.bincount(train.targets).tolist() == [20] * 136
    assert len(Omniglot(split="all").classes) == 242
    assert (BUNDLED_OMNIGLOT / "LICENSE").read_text().startswith("The MIT License")


def test_getitem_is_an_inverted_105px_drawing() -> None:
    ds = Omniglot(split="test")
    img, target = ds[25]
    assert img.mode == "L" and img.size == (105, 105) and target == 1
    a = np.asarray(img)
    assert (a == 0).mean() > 0.5  # inverted: background black, strokes white
    raw, _ = Omniglot(split="test", invert=False)[25]
    assert np.array_equal(np.asarray(raw), 255 - a)


def test_arrays_equal_lanczos_resize_of_each_image() -> None:
    ds = Omniglot(split="test")
    arr = ds.arrays(28, progress=False)
    assert arr.images.shape == (2120, 1, 28, 28) and arr.images.dtype == torch.uint8
    for j in (0, 777, 2119):
        want = np.asarray(ds.get_image(j).resize((28, 28), Image.Resampling.LANCZOS))
        assert np.array_equal(arr.images[j, 0].numpy(), want)
    assert arr.class_counts.tolist() == [20] * 106
    # class_items lists each class's own images
    targets = np.asarray(ds.targets)
    for c in (0, 50, 105):
        assert set(targets[arr.class_items[c].numpy()]) == {c}


def _tree() -> dict[str, dict[str, int]]:
    return {
        "images_background": {"Latin": 2, "Armenian": 2},
        "images_evaluation": {"Gurmukhi": 43, "Kannada": 1, "Angelic": 1},
    }


@pytest.mark.parametrize("as_zip", [False, True])
def test_vinyals_and_lake_splits_on_both_layouts(tmp_path: Path, as_zip: bool) -> None:
    root = write_omniglot(tmp_path / "omni", _tree(), as_zip=as_zip, drawers=2, size=12)
    train = Omniglot(root, split="train")
    val = Omniglot(root, split="val")
    test = Omniglot(root, split="test")
    assert val.classes == ["Armenian/character01", "Armenian/character02"]
    assert test.classes == ["Gurmukhi/character42", "Gurmukhi/character43", "Kannada/character01"]
    assert "Gurmukhi/character41" in train.classes and "Angelic/character01" in train.classes
    assert len(train.classes) == 2 + 41 + 1
    assert len(Omniglot(root, split="background", protocol="lake").classes) == 4
    assert len(Omniglot(root, split="evaluation", protocol="lake").classes) == 45
    img, _ = test[0]
    assert img.size == (12, 12)


def test_rotation_classes_are_rotated_copies() -> None:
    plain = Omniglot(split="test")
    rot = Omniglot(split="test", rotations=(0, 90, 180, 270))
    assert len(rot.classes) == 4 * 106 and len(rot) == 4 * len(plain)
    assert rot.classes[106] == plain.classes[0] + "@90"
    n = len(plain)
    a0 = np.asarray(rot.get_image(3))
    for k in (1, 2, 3):
        assert np.array_equal(np.asarray(rot.get_image(k * n + 3)), np.rot90(a0, k))
    arr = rot.arrays(28, progress=False)
    base = plain.arrays(28, progress=False)
    assert arr.class_rotation.tolist() == [0] * 106 + [1] * 106 + [2] * 106 + [3] * 106
    for k in (1, 2, 3):
        items = arr.class_items[k * 106 + 7]
        orig = base.class_items[7]
        assert torch.equal(arr.images[items], torch.rot90(base.images[orig], k, dims=(-2, -1)))


def test_cache_is_reused_then_rebuilt_when_a_source_changes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("METAKD_CACHE", str(tmp_path / "cache"))
    root = write_omniglot(tmp_path / "omni", {"images_background": {"Latin": 2}}, drawers=3, size=20)
    first = Omniglot(root, split="all").arrays(10, progress=False).images.clone()

    def fail(self, j, image_size=None):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(Omniglot, "decode", fail)
    assert torch.equal(Omniglot(root, split="all").arrays(10, progress=False).images, first)
    monkeypatch.undo()
    monkeypatch.setenv("METAKD_CACHE", str(tmp_path / "cache"))
    f = root / "images_background/Latin/character01/0001_01.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(f)
    os.utime(f, ns=(1, 1))
    again = Omniglot(root, split="all").arrays(10, progress=False).images
    assert not torch.equal(again, first)
    assert torch.equal(again[0, 0], torch.full((10, 10), 255, dtype=torch.uint8))  # inverted black


def test_missing_root_names_the_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="images_background/<Alphabet>/characterNN"):
        Omniglot(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="download=True"):
        Omniglot(tmp_path / "empty")


def test_bad_split_and_protocol_say_what_exists() -> None:
    with pytest.raises(ValueError, match=r"choose one of \('train', 'test', 'all'\)"):
        Omniglot(split="val")
    with pytest.raises(ValueError, match="protocol must be one of"):
        Omniglot(protocol="nope")


def test_corrupt_image_names_its_file(tmp_path: Path) -> None:
    root = write_omniglot(tmp_path / "omni", {"images_background": {"Latin": 1}}, drawers=2, size=10)
    bad = root / "images_background/Latin/character01/0001_02.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    ds = Omniglot(root, split="all")
    with pytest.raises(CorruptFileError, match="0001_02.png"):
        ds.arrays(8, progress=False)
    with pytest.raises(CorruptFileError, match="0001_02.png"):
        ds[1]


def test_download_fetches_both_zips_with_checksums_and_extracts(tmp_path: Path, monkeypatch) -> None:
    src = write_omniglot(tmp_path / "src", _tree(), as_zip=True, drawers=1, size=8)
    calls = []

    def fake_download(url, folder, filename=None, md5=None, progress=True):
        calls.append((url, md5))
        name = url.rsplit("/", 1)[-1]
        target = Path(folder) / name
        target.write_bytes((src / name).read_bytes())
        return target

    monkeypatch.setattr(omniglot_mod, "download_url", fake_download)
    ds = Omniglot(tmp_path / "dl", split="test", download=True)
    assert [u.rsplit("/", 1)[-1] for u, _ in calls] == ["images_background.zip", "images_evaluation.zip"]
    assert all(u.startswith("https://github.com/brendenlake/omniglot/") and m for u, m in calls)
    assert (tmp_path / "dl/images_evaluation/Kannada/character01").is_dir()
    assert len(ds.classes) == 3
    Omniglot(tmp_path / "dl", split="test", download=True)  # present: nothing fetched again
    assert len(calls) == 2


def test_inversion_matches_pil(tmp_path: Path) -> None:
    root = write_omniglot(tmp_path / "o", {"images_background": {"Latin": 1}}, drawers=1, size=9)
    f = next(root.rglob("*.png"))
    img, _ = Omniglot(root, split="all")[0]
    assert np.array_equal(np.asarray(img), np.asarray(ImageOps.invert(Image.open(f).convert("L"))))
