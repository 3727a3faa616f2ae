"""The PMAML diagnosis: the KD and CE parts of the meta-gradient, and the benchmark's smoke run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from benchmarks import pmaml_diagnose as diag
from metakd.data import TaskBatch
from metakd.distill import PMAML, preset
from metakd.meta import MAMLWrapper

ROOT = Path(__file__).resolve().parents[1]


def _tiny(lam: float, seed: int = 0) -> tuple[PMAML, TaskBatch]:
    """A linear PMAML student and teacher on 8x8 images, 5-way 1-shot, 2 tasks."""
    torch.manual_seed(seed)

    def net() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 5))

    teacher = MAMLWrapper(net(), inner_lr=0.4)
    loss = preset("pmaml", temperature=4.0, kd_weight=lam, ce_weight=1.0 - lam)
    learner = PMAML(net(), teacher, inner_lr=0.4, schedule="every", loss=loss)
    y = torch.arange(5)
    batch = TaskBatch(torch.randn(2, 5, 1, 8, 8), y.repeat(2, 1),
                      torch.randn(2, 10, 1, 8, 8), y.repeat_interleave(2).repeat(2, 1))
    return learner, batch


def _trained_gradient(learner: PMAML, batch: TaskBatch) -> torch.Tensor:
    """The gradient training descends on: ``meta_loss(...).backward()`` into ``.grad``."""
    learner.zero_grad()
    loss, _ = learner.meta_loss(batch, training=True, step=3)
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in learner.parameters() if p.grad is not None])


def test_the_kd_and_ce_parts_sum_to_the_training_gradient() -> None:
    learner, batch = _tiny(0.9)
    g = diag.gradient_parts(learner, batch, step=3)
    torch.testing.assert_close(g["full"], _trained_gradient(learner, batch))
    torch.testing.assert_close(g["ce"] + g["kd"], g["full"], rtol=1e-5, atol=1e-7)
    assert g["kd"].norm() > 0 and g["ce"].norm() > 0
    assert sorted(g["terms"]) == ["ce", "kd"]
    objective: Any = learner.student.objective
    loss = objective.loss  # its weights are restored after each part
    assert loss.ce_weight == pytest.approx(0.1) and loss.terms[0].weight == pytest.approx(0.9)
    row = diag.probe(learner, [batch, batch], step=3, weight_decay=5e-4)
    assert row["max_sum_error"] <= diag.SUM_TOLERANCE and -1.0 <= row["cosine"] <= 1.0
    assert row["ratio"] == pytest.approx(row["kd_norm"] / row["ce_norm"])


def test_with_lambda_zero_the_kd_part_is_zero() -> None:
    learner, batch = _tiny(0.0)
    g = diag.gradient_parts(learner, batch)
    assert torch.count_nonzero(g["kd"]) == 0
    torch.testing.assert_close(g["ce"], g["full"])


@pytest.mark.slow  # about a minute on the loaded 2-core CPU
def test_quick_run_prints_and_writes_its_result(tmp_path: Path) -> None:
    out = tmp_path / "diag.json"
    printed = subprocess.run(
        [sys.executable, "-m", "benchmarks.pmaml_diagnose", "--quick", "--out", str(out)],
        check=True, capture_output=True, text=True, cwd=ROOT).stdout
    result: dict[str, Any] = json.loads(printed.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == result and out.with_suffix(".log").is_file()
    for key in ("teacher", "no_kd", "ce_only", "gap", "sweep", "sum_check",
                "teacher_on_probe", "budget", "verdict", "config", "wall_s"):
        assert key in result, key
    assert result["sum_check"]["passed"] is True
    assert result["sum_check"]["max_relative_error"] <= diag.SUM_TOLERANCE
    assert set(result["sweep"]) == {"T4_lambda0.5"}
    for acc in (result["teacher"]["accuracy"], result["no_kd"]["accuracy"],
                result["gap"]["teacher"], result["gap"]["no_kd"],
                *(a["accuracy"] for a in result["sweep"].values())):
        assert 0.0 <= acc <= 1.0
    control = result["ce_only"]["lambda0.5"]
    assert control["weight_decay"] == pytest.approx(1e-3) and 0.0 <= control["accuracy"] <= 1.0
    arm = result["sweep"]["T4_lambda0.5"]
    assert [p["step"] for p in arm["probes"]] == result["probe"]["steps"] == [0, 2, 10, 20]
    assert -1.0 <= arm["minus_no_kd"]["mean"] <= 1.0
    assert -1.0 <= arm["minus_ce_only"]["mean"] <= 1.0
    for p in arm["probes"]:
        assert p["kd_norm"] > 0 and p["ce_norm"] > 0 and -1.0 <= p["cosine"] <= 1.0
    adapted = result["adapted"]["T4_lambda0.5"]  # the teacher adapted on each support set
    assert adapted["teacher_adapt"] is True and 0.0 <= adapted["accuracy"] <= 1.0
    assert -1.0 <= adapted["minus_no_kd"]["mean"] <= 1.0
    assert -1.0 <= adapted["minus_ce_only"]["mean"] <= 1.0
    assert [p["step"] for p in adapted["probes"]] == [0, 2, 10, 20]
    assert result["sum_check_adapted"]["passed"] is True
    for view in (result["teacher_on_probe"], result["teacher_adapted_on_probe"]):
        assert 0.0 <= view["accuracy"] <= 1.0
        assert all(0.0 <= h <= 1.0 for h in view["normalized_entropy"].values())
    assert set(result["teacher_adapted_on_probe"]["normalized_entropy"]) == {"1", "4", "10"}
    # --arms adapted trains the adapted arms again (and what they are compared with), checks
    # the shared parts score as in the file, and merges: the same arm, the same numbers
    subprocess.run(
        [sys.executable, "-m", "benchmarks.pmaml_diagnose", "--quick", "--arms", "adapted",
         "--out", str(out)], check=True, capture_output=True, text=True, cwd=ROOT)
    again: dict[str, Any] = json.loads(out.read_text())
    assert "merged" in again and again["sweep"] == result["sweep"]
    assert again["adapted"]["T4_lambda0.5"]["accuracy"] == adapted["accuracy"]
    assert again["no_kd"] == result["no_kd"]
