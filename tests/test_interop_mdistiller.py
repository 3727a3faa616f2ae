"""mdistiller's trainer checkpoints (``best``/``latest``): the student or the teacher, exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import metakd.nn as mnn
from metakd.distill import load_teacher
from metakd.engine.errors import InputError


def _original(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """metakd's CIFAR ResNet keys in mdistiller's names (the classifier is ``fc``)."""
    return {("fc." + k[5:] if k.startswith("head.") else k): v for k, v in sd.items()}


@pytest.fixture
def trainer_file(tmp_path: Path) -> tuple[Path, torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    student, teacher = mnn.create("resnet8", num_classes=10), mnn.create("resnet20", num_classes=10)
    for net in (student, teacher):  # non-trivial BN statistics
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model = {**{f"module.student.{k}": v for k, v in _original(student.state_dict()).items()},
             **{f"module.teacher.{k}": v for k, v in _original(teacher.state_dict()).items()}}
    path = tmp_path / "latest"  # the trainer's file name, without a suffix
    torch.save({"model": model, "optimizer": {"state": {}}, "epoch": 240, "best_acc": 71.2},
               path)
    return path, student.eval(), teacher.eval()


def test_student_and_teacher_of_a_trainer_checkpoint(
        trainer_file: tuple[Path, torch.nn.Module, torch.nn.Module]) -> None:
    path, student, teacher = trainer_file
    x = torch.randn(4, 3, 32, 32)
    s = load_teacher(path, arch="resnet8")  # the student by default
    t = load_teacher(path, arch="resnet20", part="teacher")
    assert torch.equal(s(x), student(x)) and torch.equal(t(x), teacher(x))


def test_trainer_checkpoint_refusals(
        trainer_file: tuple[Path, torch.nn.Module, torch.nn.Module]) -> None:
    path = trainer_file[0]
    with pytest.raises(InputError, match="does not fit a 'resnet20'"):
        load_teacher(path, arch="resnet20")  # the student is a resnet8
    with pytest.raises(InputError, match="does not name its architectures: pass arch"):
        load_teacher(path)
    with pytest.raises(InputError, match="part='both'"):
        load_teacher(path, arch="resnet8", part="both")
