"""The terminal stays clean: no bars when progress is off, no import banners or CUDA notices.

- the data layer's bars (cache decoding, downloads) follow ``progress_bars`` / ``run``'s
  ``progress`` / ``--no-progress`` unless a call asks for a bar explicitly;
- importing the learn2learn backend does not print gym's banner;
- ``torch.utils.cpp_extension``'s "No CUDA runtime is found, using CUDA_HOME" notice (Inductor
  imports it on CPU) is dropped, and other warnings of that logger are not.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from metakd.data import Omniglot, few_shot
from metakd.data._io import _copy_with_progress
from metakd.data.cache import load_or_build
from metakd.engine import progress_bars, show_progress

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "METAKD_CACHE": str(tmp_path / "cache"), "CUDA_VISIBLE_DEVICES": "",
               **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path,
                          env=environ, capture_output=True, text=True, timeout=600)


def _decode(folder: Path, progress: bool | None = None) -> None:
    load_or_build("tiny", {"case": str(folder)}, 40,
                  lambda j: np.full((1, 2, 2), j, dtype=np.uint8), folder=folder,
                  progress=progress)


def test_the_default_follows_progress_bars() -> None:
    assert show_progress() is True
    with progress_bars(False):
        assert show_progress() is False
        assert show_progress(True) is True  # an explicit request wins
        with progress_bars(True):
            assert show_progress() is True
        assert show_progress() is False
    assert show_progress() is True


def test_cache_decoding_bar_follows_the_default(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with progress_bars(False):
        _decode(tmp_path / "quiet")
    assert "decoding tiny" not in capsys.readouterr().err
    _decode(tmp_path / "shown")
    assert "decoding tiny" in capsys.readouterr().err
    with progress_bars(False):
        _decode(tmp_path / "asked", progress=True)
    assert "decoding tiny" in capsys.readouterr().err


def test_few_shot_builds_its_cache_quietly_inside_progress_bars(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with progress_bars(False):
        batch = next(iter(few_shot(Omniglot(split="test", cache_dir=tmp_path), 5, 1, 1,
                                   num_tasks=1, seed=0)))
    assert len(batch) == 1
    assert "decoding" not in capsys.readouterr().err


def test_download_bar_follows_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_bars(False):
        _copy_with_progress(io.BytesIO(b"x" * 100), io.BytesIO(), 100, "file.zip", None)
    assert "file.zip" not in capsys.readouterr().err
    _copy_with_progress(io.BytesIO(b"x" * 100), io.BytesIO(), 100, "file.zip", None)
    assert "file.zip" in capsys.readouterr().err


@pytest.mark.learn2learn
def test_metakd_train_no_progress_leaves_stderr_empty(tmp_path: Path) -> None:
    """A whole run from an empty cache, on the learn2learn backend, with a CUDA_HOME set."""
    (tmp_path / "cuda").mkdir()
    cli = Path(sys.executable).with_name("metakd")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "metakd.cli"]
    environ = {**os.environ, "METAKD_CACHE": str(tmp_path / "cache"),
               "CUDA_HOME": str(tmp_path / "cuda"), "CUDA_VISIBLE_DEVICES": ""}
    args = ["train", "maml", "--dataset", "omniglot", "--ways", "5", "--shots", "1",
            "--steps", "1", "--test-tasks", "2", "--backend", "learn2learn", "--compile", "off",
            "--out-dir", str(tmp_path / "run"), "--no-progress"]
    r = subprocess.run([*command, *args], cwd=tmp_path, env=environ, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert "held-out 5-way 1-shot accuracy" in r.stdout


@pytest.mark.learn2learn
def test_the_learn2learn_backend_prints_no_gym_banner(tmp_path: Path) -> None:
    r = _python("""
        import sys
        from torch import nn
        from metakd.meta import MAMLWrapper
        MAMLWrapper(nn.Linear(4, 5), inner_lr=0.4, backend="learn2learn")
        assert "gym" in sys.modules  # learn2learn did import it
        print("built")
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "built"
    assert "Gym has been unmaintained" not in r.stderr and "Gymnasium" not in r.stderr, r.stderr


def test_a_failing_gym_import_still_reports_what_it_printed(tmp_path: Path) -> None:
    (tmp_path / "gym").mkdir()
    (tmp_path / "gym" / "__init__.py").write_text(
        "import sys\nprint('a real problem', file=sys.stderr)\nraise RuntimeError('broken')\n")
    r = _python("""
        import sys
        sys.path.insert(0, ".")
        from metakd._quiet import import_quietly
        import_quietly("json")
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "a real problem" in r.stderr


_CPP_EXTENSION = """
    import logging
    {quiet}
    import torch.utils.cpp_extension
    logging.getLogger("torch.utils.cpp_extension").warning("another warning")
"""


def test_the_cuda_home_notice_is_dropped_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "cuda").mkdir()
    cuda_home = str(tmp_path / "cuda")
    loud = _python(_CPP_EXTENSION.format(quiet=""), tmp_path, CUDA_HOME=cuda_home)
    assert "No CUDA runtime is found" in loud.stderr  # the notice this machine would print
    quiet = _python(_CPP_EXTENSION.format(
        quiet="from metakd._quiet import drop_cuda_home_warning; drop_cuda_home_warning()"),
        tmp_path, CUDA_HOME=cuda_home)
    assert quiet.returncode == 0, quiet.stderr
    assert "CUDA_HOME" not in quiet.stderr
    assert "another warning" in quiet.stderr


@pytest.mark.slow
def test_compiled_maml_on_cpu_prints_no_cuda_home_notice(tmp_path: Path) -> None:
    (tmp_path / "cuda").mkdir()
    r = _python("""
        import torch
        from torch import nn
        from metakd.data import TaskBatch
        from metakd.meta import MAMLWrapper
        y = torch.arange(5)
        batch = TaskBatch(torch.randn(2, 5, 4), y.repeat(2, 1), torch.randn(2, 5, 4),
                          y.repeat(2, 1))
        maml = MAMLWrapper(nn.Linear(4, 5), inner_lr=0.4, backend="func", compile=True)
        loss, _ = maml.meta_loss(batch)
        loss.backward()
        import sys
        assert "torch.utils.cpp_extension" in sys.modules  # Inductor did import it
    """, tmp_path, CUDA_HOME=str(tmp_path / "cuda"))
    assert r.returncode == 0, r.stderr
    assert "CUDA_HOME" not in r.stderr, r.stderr
