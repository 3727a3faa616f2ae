"""The ``metakd`` command: demo, train and eval run end to end; bad options give one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from metakd.cli import main


def test_demo_trains_tests_and_writes_its_outputs(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress", "--steps", "3",
                 "--test-tasks", "10", "--meta-batch", "4"]) == 0
    text = capsys.readouterr().out
    assert "meta-trained 3 meta-iterations" in text
    assert "held-out 5-way 1-shot accuracy on omniglot (bundled)" in text
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == 3 and res["test"]["episodes"] == 10
    assert 0.0 <= res["test"]["accuracy"] <= 1.0
    for f in ("last.pt", "log.jsonl", "learning_curve.png", "episode.png", "config.json"):
        assert (out / f).is_file(), f
    assert Image.open(out / "episode.png").size[1] == 5 * 57  # 5 rows of 56 px + 1 px gaps

    # `metakd eval` reloads the run and tests it again on the same episodes
    assert main(["eval", str(out), "--episodes", "10", "--no-progress"]) == 0
    line = capsys.readouterr().out
    assert f"{100 * res['test']['accuracy']:.2f}" in line


def test_train_resumes_and_uses_paper_defaults(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "maml", "--steps", "2", "--meta-batch-size", "2", "--test-tasks", "4",
            "--out-dir", str(out), "--no-progress"]
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["inner_lr"], cfg["inner_steps"], cfg["test_inner_steps"]) == (0.4, 1, 3)
    assert cfg["queries"] == 1 and cfg["rotations"] and not cfg["first_order"]
    assert main([*args[:2], "--steps", "3", *args[4:]]) == 0  # continues from step 2
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == 3


def _one_line_error(*argv: str) -> str:
    r = subprocess.run([sys.executable, "-m", "metakd.cli", *argv], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    return r.stderr.strip()


def test_bad_options_are_one_line(tmp_path: Path) -> None:
    assert _one_line_error("demo", "--bogus") == (
        "metakd: error: unrecognized arguments: --bogus (see metakd --help)")
    assert "invalid choice: 'reptile'" in _one_line_error("train", "reptile")
    assert "500-way episodes need 500 classes" in _one_line_error(
        "train", "maml", "--ways", "500", "--out-dir", str(tmp_path / "a"), "--no-progress")
    assert "needs --root" in _one_line_error("train", "maml", "--dataset", "miniimagenet",
                                              "--out-dir", str(tmp_path / "b"))
    assert "unknown dataset 'imagenet'" in _one_line_error(
        "train", "maml", "--dataset", "imagenet", "--out-dir", str(tmp_path / "c"))
    assert "expected one of these layouts" in _one_line_error(
        "train", "maml", "--root", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "d"))
    assert "not a run folder" in _one_line_error("eval", str(tmp_path))
