"""``benchmarks.method_speed``: both sides of each method compute the same step, and the
benchmark's ``--quick`` run prints one JSON object last (no timings asserted)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import _method_steps as steps
from benchmarks import method_speed
from benchmarks._common import keep_heap, worker_command
from metakd.engine import keep_freed_memory

ROOT = Path(__file__).resolve().parents[1]

TINY = steps.Config(meta_batch=2, queries=2, image_size=28, pmaml_student_hidden=8,
                    pmaml_teacher_hidden=8, pmaml_inner_steps=2, mtl_hidden=8,
                    mtl_update_step=2, mtl_queries=2, meta_lstm_hidden=8, meta_lstm_epochs=2,
                    meta_lstm_batch_size=3, baseline_hidden=8, cifar_student="resnet8",
                    cifar_teacher="resnet8", cifar_batch=4, cifar_classes=10)


def _first_step(method: str, impl: str) -> tuple[float, float]:
    step = steps.build(method, impl, TINY, torch.device("cpu"))
    loss = float(step.run())
    grads = [p.grad.flatten() for p in step.params if p.grad is not None]
    assert grads, f"{method} ({impl}) computed no gradient"
    return loss, float(torch.cat(grads).norm())


@pytest.mark.parametrize("method", steps.METHODS)
def test_metakd_and_the_reference_compute_the_same_first_step(method: str) -> None:
    loss_m, grad_m = _first_step(method, "metakd")
    loss_r, grad_r = _first_step(method, "reference")
    assert loss_m == pytest.approx(loss_r, rel=method_speed.TOLERANCE)
    assert grad_m == pytest.approx(grad_r, rel=method_speed.TOLERANCE)


def test_compare_flags_unequal_work() -> None:
    side = {"per_s": 2.0, "loss": 1.0, "grad_norm": 3.0, "best_step_s": 1.0,
            "peak_rss_mb": 100.0}
    same = method_speed.compare("mtl", {"metakd": dict(side), "reference": dict(side)})
    assert same["equal_work"]["passed"] and same["speed_ratio"] == 1.0
    other = method_speed.compare("mtl", {"metakd": dict(side),
                                         "reference": {**side, "grad_norm": 3.1}})
    assert not other["equal_work"]["passed"]


def test_bound_is_the_reference_time_over_metakds_heavy_kernel_time() -> None:
    def side(step_s: float, other: float) -> dict:
        shares = {"convolution": 1.0 - other, "matmul": 0.0, "norm_pool": 0.0, "other": other}
        return {"per_s": 1 / step_s, "loss": 1.0, "grad_norm": 3.0, "best_step_s": step_s,
                "profile": {"kernel_shares": shares}}

    out = method_speed.compare("mtl", {"metakd": side(0.8, 0.25), "reference": side(1.2, 0.5)})
    assert out["speed_ratio"] == 1.5
    assert out["speed_ratio_bound"] == pytest.approx(1.2 / (0.8 * 0.75), abs=1e-3)
    assert out["kernel_shares"]["reference"]["other"] == 0.5


def test_op_profile_sorts_the_kernels_into_their_classes() -> None:
    from benchmarks._common import KERNEL_CLASSES, op_profile

    conv, x = torch.nn.Conv2d(3, 8, 3), torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        prof = op_profile(lambda: torch.tanh(conv(x)).sum(), batches=2)
    shares = prof["kernel_shares"]
    assert set(shares) == {*KERNEL_CLASSES, "other"}
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert shares["convolution"] > 0 and shares["other"] > 0 and shares["matmul"] == 0
    assert prof["ops"][0]["share"] >= prof["ops"][-1]["share"]


def test_quick_sizes_are_config_fields() -> None:
    names = {f.name for f in dataclasses.fields(steps.Config)}
    assert set(steps.QUICK) <= names


@pytest.mark.slow
def test_quick_run_prints_every_method_with_equal_work() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.method_speed", "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "method_speed" and result["quick"] is True
    assert {"load_average", "threads", "wall_s", "results", "notes"} <= set(result)
    assert set(result["results"]) == set(steps.METHODS)
    for method, res in result["results"].items():
        assert res["unit"] == steps.UNITS[method]
        assert {"speed_ratio", "speed_ratio_median", "equal_work", "metakd", "reference",
                "peak_rss_ratio"} <= set(res)
        for side in ("metakd", "reference"):
            assert {"per_s", "first_step_s", "warmup_s", "peak_rss_mb", "loss",
                    "grad_norm"} <= set(res[side])
        assert res["equal_work"]["passed"], (method, res["equal_work"])
        assert res["speed_ratio_bound"] > 0 and set(res["kernel_shares"]) == {"metakd",
                                                                               "reference"}
    assert result["equal_work_passed"] is True
    assert "teacher_logits_s" in result["results"]["pmaml"]["metakd"]
    # the default: metakd keeps freed memory as `metakd train` does, the reference does not
    assert result["allocator"] == "own"
    for res in result["results"].values():
        assert res["metakd"]["keep_freed_memory"] is keep_freed_memory()
        assert res["reference"]["keep_freed_memory"] is False


def test_allocator_sets_each_side_of_the_heap() -> None:
    kept = keep_freed_memory()
    assert keep_heap("own", "cpu", keeps_itself=False) is False
    assert keep_heap("kept", "cpu", keeps_itself=False) is kept
    assert keep_heap("own", "cpu", keeps_itself=True) is kept
    assert keep_heap("own", "cuda", keeps_itself=True) is False
    assert keep_heap("plain", "cpu", keeps_itself=True) is False
    with pytest.raises(ValueError, match="allocator"):
        keep_heap("other", "cpu", keeps_itself=True)


def test_a_baseline_worker_takes_the_baseline_package_and_this_harness(tmp_path: Path) -> None:
    checkout = tmp_path / "old"
    for package in ("metakd", "benchmarks"):
        (checkout / package).mkdir(parents=True)
        (checkout / package / "__init__.py").write_text("")
    command, env = worker_command("benchmarks.method_speed", "{}", str(checkout))
    probe = [command[0], "-P", "-c",
             "import metakd, benchmarks; print(metakd.__file__); print(benchmarks.__file__)"]
    out = subprocess.run(probe, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    package, harness = out.stdout.split()
    assert Path(package).resolve() == (checkout / "metakd" / "__init__.py").resolve()
    assert Path(harness).resolve() == (ROOT / "benchmarks" / "__init__.py").resolve()
    with pytest.raises(FileNotFoundError, match="no metakd package"):
        worker_command("benchmarks.method_speed", "{}", str(tmp_path))


@pytest.mark.slow
def test_baseline_runs_metakd_from_another_checkout_as_a_third_side() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.method_speed", "--quick",
                           "--methods", "mtl", "--baseline", str(ROOT)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    res = result["results"]["mtl"]
    assert result["baseline"] == str(ROOT)
    assert res["base"]["loss"] == res["metakd"]["loss"]  # the same package: the same step
    assert res["speed_ratio_vs_base"] > 0 and res["speed_ratio_vs_base_median"] > 0
    assert "base" not in res["kernel_shares"]
