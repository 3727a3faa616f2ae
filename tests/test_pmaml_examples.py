"""The PMAML reproduction scripts (examples/pmaml/) run end to end on the bundled Omniglot.

Tiny settings (2 meta-iterations of 4 tasks, 8 test tasks of 1 query per class): a Conv-4
teacher, then Conv-1 students with KD at every and at the last meta-iteration. Checks the exit,
the printed record, the CSV, the config each option maps to, and the one-line refusals.
"""

from __future__ import annotations

import csv
import importlib
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "pmaml"
TINY = ["--train-data", "omniglot", "--test-data", "omniglot", "--num-ways", "5",
        "--num-shots", "1", "--test-shots", "1", "--train-tasks", "8", "--batch-tasks", "4",
        "--test-tasks", "8", "--val-tasks", "4", "--validation-tasks", "4"]


def _script(name: str) -> ModuleType:
    """Import ``examples/pmaml/<name>.py`` (its folder on ``sys.path``, as when run directly)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def _row(record: str) -> dict[str, str]:
    """The single data row of a record CSV."""
    with open(record, newline="", encoding="utf-8") as f:
        (row,) = list(csv.DictReader(f))
    return row


def _check_record(out: dict[str, Any], printed: str) -> dict[str, str]:
    """The printed summary, the CSV and the two intervals agree with the run's results."""
    assert re.search(r"^test_acc: \d+\.\d\d; \d+\.\d\d ", printed, re.M)
    assert "test_acc over episodes:" in printed and f"record: {out['record']}" in printed
    record = Path(out["record"])
    assert record.name == "record_omniglot_omniglot_1shot.csv"
    assert record.parent == Path(out["out_dir"])
    row = _row(out["record"])
    assert re.fullmatch(r"\d+\.\d\d; \d+\.\d\d", row["test_acc"])
    assert re.fullmatch(r"\d+\.\d\d; \d+\.\d\d", row["test_acc_episodes"])
    assert row["meta_iterations"] == "2" and row["test_tasks"] == "8"
    results = json.loads((record.parent / "results.json").read_text())
    episodes, batches = out["test_episodes"], out["test_batches"]
    # the re-test of the selected weights sees the run's own test episodes
    assert episodes["episodes"] == 8 and results["test"]["episodes"] == 8
    assert episodes["accuracy"] == pytest.approx(results["test"]["accuracy"], abs=1e-9)
    # two meta-batches of 4 tasks: the mean of batch means is the mean of the episodes
    assert batches["batches"] == 2 and batches["episodes"] == 2
    assert batches["accuracy"] == pytest.approx(episodes["accuracy"], abs=1e-9)
    return row


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Conv-4 teacher run folder made by train_teacher.py."""
    folder = tmp_path_factory.mktemp("pmaml") / "teacher"
    out = _script("train_teacher").main([*TINY, "--backbone", "conv4", "--out-dir", str(folder)])
    assert out is not None and Path(out["record"]).is_file()
    return folder


def test_teacher_script_trains_a_maml_run_and_writes_the_record(
        teacher: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = json.loads((teacher / "config.json").read_text())
    assert cfg["method"] == "maml" and cfg["model"] == "conv4"
    assert (cfg["inner_lr"], cfg["inner_steps"], cfg["meta_batch_size"]) == (0.4, 1, 4)
    assert (cfg["steps"], cfg["queries"], cfg["test_tasks"]) == (2, 1, 8)
    # a fresh run never overwrites a run folder; --resume continues it (here: already done)
    with pytest.raises(SystemExit) as e:
        _script("train_teacher").main([*TINY, "--out-dir", str(teacher)])
    assert e.value.code == 2 and "--resume" in capsys.readouterr().err
    out = _script("train_teacher").main([*TINY, "--resume", "--resume-folder", str(teacher)])
    printed = capsys.readouterr().out
    assert f"resuming {teacher}" in printed and "bundled Omniglot" in printed
    row = _check_record(out, printed)
    assert row["model_name"] == "teacher" and row["selected"] == "last"


def test_student_every_with_the_misspelt_option(
        teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _script("train_student").main(
        [*TINY, "--backbone", "conv1", "--teacher-resume", "--teacher-resume-recoder",
         str(teacher), "--out-dir", str(tmp_path / "every"), "--num-workers", "4"])
    printed = capsys.readouterr().out
    assert "note: --teacher-resume-recoder" in printed and "--num-workers is unused" in printed
    row = _check_record(out, printed)
    assert row["model_name"] == "pmaml_every" and row["teacher_backbone"] == "conv4"
    cfg = json.loads((tmp_path / "every" / "config.json").read_text())
    assert cfg["method"] == "pmaml" and cfg["teacher"] == str(teacher)
    assert (cfg["schedule"], cfg["model"], cfg["temperature"], cfg["trade_lambda"]) == \
        ("every", "conv1", 10.0, 0.9)
    assert (cfg["weight_decay"], cfg["lr_milestones"], cfg["lr_gamma"]) == \
        (5e-4, [15_000, 30_000, 45_000, 60_000], 0.1)
    assert (cfg["kd_reduction"], cfg["teacher_adapt"], cfg["inner_kd"]) == \
        ("mean_elements", False, None)


def test_student_model_name_pmaml_last_selects_the_last_schedule(
        teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _script("train_student").main(
        [*TINY, "--backbone", "conv1", "--model-name", "pmaml_last", "--teacher-resume",
         "--teacher-resume-folder", str(teacher), "--out-dir", str(tmp_path / "last"),
         "--teacher-adapt", "--temperature", "4", "--trade-lambda", "0.5"])
    _check_record(out, capsys.readouterr().out)
    cfg = json.loads((tmp_path / "last" / "config.json").read_text())
    assert (cfg["schedule"], cfg["teacher_adapt"], cfg["temperature"], cfg["trade_lambda"]) == \
        ("last", True, 4.0, 0.5)


@pytest.mark.parametrize(("extra", "message"), [
    ([], "--teacher-resume is required"),
    (["--teacher-resume", "--teacher_backbone", "resnet18"], "holds a conv4 teacher"),
    (["--teacher-resume", "--num-shots", "5"], "5-shot"),
])
def test_student_refuses_a_missing_or_mismatched_teacher(
        teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        extra: list[str], message: str) -> None:
    argv = [*TINY, "--backbone", "conv1", "--teacher-resume-folder", str(teacher),
            "--out-dir", str(tmp_path / "s"), *extra]
    with pytest.raises(SystemExit) as e:
        _script("train_student").main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # refused before anything is written


def test_multi_gpu_trains_under_torchrun(capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """--multi-gpu starts the same script under torch.distributed.run, one process per GPU
    (here 2 pretended GPUs; the launcher call is recorded instead of run), and exits with its
    status; without a GPU it is refused in one line."""
    import subprocess

    import torch

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(SystemExit) as e:
        _script("train_teacher").main([*TINY, "--multi-gpu"])
    assert e.value.code == 2 and "--multi-gpu: this machine has no CUDA device" in \
        capsys.readouterr().err
    calls: list[list[str]] = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    with pytest.raises(SystemExit) as e:
        _script("train_teacher").main([*TINY, "--multi-gpu"])
    assert e.value.code == 0 and len(calls) == 1
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nproc-per-node=2"]
    assert cmd[4].endswith("train_teacher.py") and "--multi-gpu" in cmd and "--use-cuda" in cmd


def test_download_uses_the_archive_placed_by_hand(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """PMAML's manual route: datasets/omniglot/omniglot.tgz, run with --download."""
    import tarfile

    import fixtures_formats as fx

    staging = tmp_path / "staging"
    (staging / "images_evaluation").mkdir(parents=True)
    fx.save_image(staging / "images_evaluation" / "x.png", fx.rand_images(0, 1, c=1)[0, ..., 0])
    folder = tmp_path / "datasets" / "omniglot"
    folder.mkdir(parents=True)
    with tarfile.open(folder / "omniglot.tgz", "w:gz") as tf:
        tf.add(staging / "images_evaluation", arcname="images_evaluation")
    import metakd.data.registry as registry

    reads: list[tuple[str, str, str]] = []  # the readers then open the extracted folder
    monkeypatch.setattr(registry, "get_dataset",
                        lambda name, root, split, download: reads.append((name, root, split)))
    common = _script("_common")
    args = common.parser("teacher", ("conv4",)).parse_args(
        ["--train-data", "omniglot", "--data-folder", str(tmp_path / "datasets"),
         "--download"])
    args.test_data = "omniglot"
    common.download(args)
    assert (folder / "images_evaluation" / "x.png").is_file()  # extracted where it was put
    assert f"--download: using {folder / 'omniglot.tgz'}" in capsys.readouterr().out
    assert reads == [("omniglot", str(folder), s) for s in ("train", "val", "test")]


def test_other_data_sets_need_a_data_folder(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _script("train_teacher").main(["--train-data", "cub"])
    assert "--data-folder is required for cub" in capsys.readouterr().err
