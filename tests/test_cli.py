"""The ``metakd`` command: the demo runs end to end; bad options give one line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

from metakd.cli import main


def test_demo_prints_a_summary_and_saves_a_picture(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path), "--no-progress", "--ways", "3", "--queries", "2"]) == 0
    out = capsys.readouterr().out
    assert "meta-train: 136 classes" in out and "meta-test:  106 classes" in out
    assert "support_x (32, 3, 1, 28, 28)" in out
    img = Image.open(tmp_path / "episode.png")
    # 3 rows of 56 px (+1 px gaps); 1 support + 2 query columns
    assert img.size[1] == 3 * 57


def test_impossible_request_is_one_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "metakd.cli", "demo", "--ways", "500", "--out",
                        str(tmp_path), "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "500-way episodes need 500 classes" in r.stderr


def test_unknown_option_is_one_line() -> None:
    r = subprocess.run([sys.executable, "-m", "metakd.cli", "demo", "--bogus"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "metakd: error: unrecognized arguments: --bogus (see metakd --help)"
