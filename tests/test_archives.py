"""Hand-placed data-set archives (PMAML's manual route): found, checked, extracted safely."""

from __future__ import annotations

import dataclasses
import tarfile
from pathlib import Path

import fixtures_formats as fx
import pytest

from metakd.data import MiniImageNet
from metakd.data._io import CorruptFileError, file_digest
from metakd.data.datasets import archives
from metakd.data.datasets.miniimagenet import RAVI_SPLITS


def _mini_archive(tmp_path: Path, name: str) -> tuple[Path, list[str]]:
    """``datasets/miniimagenet/NAME``: Ren et al.'s cache pickles of the test split, tarred."""
    staging = tmp_path / "staging"
    staging.mkdir()
    classes = RAVI_SPLITS["test"][:4]
    fx.mini_cache_pickle(staging, "test", classes)
    folder = tmp_path / "datasets" / "miniimagenet"
    folder.mkdir(parents=True)
    with tarfile.open(folder / name, "w:gz") as tf:
        tf.add(staging / "mini-imagenet-cache-test.pkl", arcname="mini-imagenet-cache-test.pkl")
    return folder / name, classes


def _trust(monkeypatch: pytest.MonkeyPatch, dataset: str, md5: str) -> None:
    """Pretend the published md5 of ``dataset``'s archive is ``md5`` (the fixture's)."""
    known = tuple(dataclasses.replace(k, md5=md5) if k.dataset == dataset else k
                  for k in archives.KNOWN_ARCHIVES)
    monkeypatch.setattr(archives, "KNOWN_ARCHIVES", known)


def test_a_hand_placed_archive_under_the_readme_name_is_checked_and_extracted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, classes = _mini_archive(tmp_path, "miniimagenet.tgz")  # PMAML's README name
    _trust(monkeypatch, "miniimagenet", file_digest(path, "md5"))
    assert archives.unpack_local_archive("miniimagenet", path.parent) == path
    ds = MiniImageNet(path.parent, "test")
    assert ds.format == "pickle" and len(ds.classes) == len(classes)
    marker = path.parent / f".metakd-extracted-{path.name}"
    assert marker.read_text().strip() == file_digest(path, "md5")
    (path.parent / "mini-imagenet-cache-test.pkl").unlink()
    archives.unpack_local_archive("miniimagenet", path.parent)  # extracted once: not again
    assert not (path.parent / "mini-imagenet-cache-test.pkl").exists()


def test_an_archive_with_another_md5_is_refused_naming_both(tmp_path: Path) -> None:
    path, _ = _mini_archive(tmp_path, "mini-imagenet.tar.gz")
    with pytest.raises(CorruptFileError) as info:
        archives.unpack_local_archive("miniimagenet", path.parent)
    msg = str(info.value)
    assert str(path) in msg and file_digest(path, "md5") in msg
    assert "b38f1eb4251fb9459ecc8e7febf9b2eb" in msg
    assert not (path.parent / "mini-imagenet-cache-test.pkl").exists()  # nothing extracted


def test_an_archive_leaving_its_folder_is_refused(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "datasets" / "omniglot"
    folder.mkdir(parents=True)
    fx.evil_tar(folder / "omniglot.tgz")  # no published md5: the content is what is checked
    with pytest.raises(CorruptFileError, match="evil"):
        archives.unpack_local_archive("omniglot", folder)
    assert not (tmp_path / "datasets" / "evil").exists()


def test_no_archive_is_none(tmp_path: Path) -> None:
    assert archives.unpack_local_archive("cub", tmp_path) is None
    assert archives.find_local_archive("cub", tmp_path) is None
