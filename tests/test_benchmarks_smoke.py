"""The benchmarks' shared harness (``benchmarks._common``), and the data benchmark runs and
prints one JSON object last (smoke tests; no timings asserted)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks import _common as harness


@dataclass(frozen=True)
class _Config:
    steps: int = 10
    arms: tuple[str, ...] = ("a", "b")
    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int = 1


def test_configure_applies_quick_then_the_options_lists_as_tuples() -> None:
    p = harness.parser("A benchmark.", {"steps": 2}, "x_cpu.json", shots=False,
                       test_tasks=False, workdir=False)
    p.add_argument("--steps", type=int)
    p.add_argument("--arms", nargs="+")
    args = p.parse_args(["--quick", "--arms", "b", "--seeds", "4"])
    cfg = harness.configure(_Config(), args, {"steps": 2}, ("steps", "arms"))
    assert cfg == _Config(steps=2, arms=("b",), seeds=(4,))
    assert harness.output(args, "x_cpu.json") is None  # --quick writes no file
    assert harness.output(p.parse_args([]), "x_cpu.json") == harness.RESULTS / "x_cpu.json"
    assert not {"--shots", "--test-tasks", "--workdir"} & set(p._option_string_actions)


def test_output_without_a_default_file_only_prints() -> None:
    p = argparse.ArgumentParser()
    harness.out_option(p)
    assert harness.output(p.parse_args([]), None) is None
    assert harness.output(p.parse_args(["--out", "r.json"]), None) == Path("r.json")


def test_work_folder_keeps_a_given_folder_and_removes_its_own(tmp_path: Path) -> None:
    with harness.work_folder(tmp_path / "kept", "bench_") as root:
        root.mkdir()
    assert (tmp_path / "kept").is_dir()
    with pytest.raises(RuntimeError), harness.work_folder(None, "bench_") as root:
        (root / "run").mkdir()
        raise RuntimeError("a failed run")
    assert not root.exists()  # removed after a failure too


def test_run_logged_writes_the_result_and_its_log_and_prints_it_last(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def run(cfg: _Config, log: harness.Log, workdir: Any = None) -> dict[str, Any]:
        clock = harness.Clock()
        with harness.work_folder(workdir, "bench_") as root:
            log(f"training in {root.name}")
            rows = [{"seed": s, "accuracy": 0.5 + 0.1 * s} for s in cfg.seeds]
            return {"benchmark": "toy", "arm": harness.over_seeds(rows, "accuracy"),
                    **clock.record()}

    out = tmp_path / "results" / "toy_cpu.json"
    result = harness.run_logged(run, _Config(seeds=(0, 1)), out, summary=lambda r: "summary",
                                workdir=tmp_path / "work")
    assert json.loads(out.read_text()) == result
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    log = out.with_suffix(".log").read_text().splitlines()
    assert log[0].startswith("config: ") and json.loads(log[0][8:])["seeds"] == [0, 1]
    assert log[1:3] == ["training in work", "summary"] and log[3].startswith("wall time")
    assert result["arm"]["mean"] == pytest.approx(0.55) and len(result["arm"]["per_seed"]) == 2
    assert set(result["load_average"]) == {"start", "end"} and result["wall_s"] >= 0
    assert {"torch", "platform"} <= set(result)


@pytest.mark.learn2learn
def test_data_throughput_prints_json_last(tmp_path: Path) -> None:
    pytest.importorskip("learn2learn")
    out = tmp_path / "throughput.json"
    printed = subprocess.run(
        [sys.executable, "-m", "benchmarks.data_throughput", "--seconds", "0.2", "--out",
         str(out)],
        check=True, capture_output=True, text=True,
    ).stdout
    result = json.loads(printed.strip().splitlines()[-1])
    assert set(result["episodes_per_s"]) == {"metakd_meta_batch_1", "metakd_meta_batch_32",
                                             "learn2learn"}
    assert all(v > 0 for v in result["episodes_per_s"].values())
    assert json.loads(out.read_text()) == result
    assert "learn2learn" in out.with_suffix(".log").read_text()


def _run_cli(module: str, *args: str) -> dict[str, Any]:
    """``python -m benchmarks.MODULE ARGS``: the JSON object it prints last."""
    printed = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args],
                             check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(printed.strip().splitlines()[-1])
    return result


@pytest.mark.slow  # a minute and more on the loaded CPU: outside the default suite
@pytest.mark.learn2learn
def test_maml_omniglot_writes_the_result_it_prints(tmp_path: Path) -> None:
    pytest.importorskip("learn2learn")
    out = tmp_path / "maml.json"
    result = _run_cli("maml_omniglot", "--seconds", "1", "--test-tasks", "16", "--out", str(out))
    assert json.loads(out.read_text()) == result
    for key in ("budget_s", "metakd", "learn2learn", "accuracy_difference", "test_episodes",
                "load_average", "torch", "wall_s"):
        assert key in result
    assert 0.0 <= result["metakd"]["test_accuracy"] <= 1.0
    assert "learn2learn :" in out.with_suffix(".log").read_text()


@pytest.mark.slow  # about 30 s: seven tiny trainings
def test_cifar_kd_pipeline_writes_the_result_it_prints(tmp_path: Path) -> None:
    out = tmp_path / "cifar.json"
    result = _run_cli("cifar_kd", "--quick", "--classes", "2", "--train-per-class", "8",
                      "--test-per-class", "4", "--epochs", "1", "--teacher", "resnet8",
                      "--student", "resnet8", "--batch-size", "8", "--out", str(out))
    assert json.loads(out.read_text()) == result
    assert set(result["accuracy"]) == {"teacher", "student", "kd", "dkd", "gda"}
    assert result["resume_identical"] is True
    for key in ("recipe", "timings_s", "threads", "machine", "cpus", "torch", "wall_s"):
        assert key in result


def test_conv_batching_times_the_real_layer_shapes_and_writes_what_it_prints(
        tmp_path: Path) -> None:
    from benchmarks.conv_batching import conv_shapes

    shapes = conv_shapes(75)  # maml_omniglot: four 3x3 stride-2 convolutions, 28 px padded
    assert [s["in_shape"] for s in shapes] == [[75, 1, 29, 29], [75, 64, 15, 15],
                                               [75, 64, 9, 9], [75, 64, 5, 5]]
    out = tmp_path / "conv.json"
    result = _run_cli("conv_batching", "--tasks", "2", "--queries", "1", "--threads", "1",
                      "--repeats", "1", "--out", str(out))
    assert json.loads(out.read_text()) == result
    per_set = result["threads"]["1"]
    assert set(per_set) == {"support", "query"}
    for entry in per_set.values():
        assert len(entry["layers"]) == 4 and all(v > 0 for v in entry["total_ms"].values())
    assert "grouped" in out.with_suffix(".log").read_text()


def test_pool_speed_times_the_networks_real_pool_shapes_and_writes_what_it_prints(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import metakd.nn.resnet12 as resnet12
    from benchmarks.pool_speed import NETWORKS
    from metakd.nn import MaxPool2d, create

    def pool_inputs(model: Any, x: Any) -> list[list[int]]:
        found: list[list[int]] = []
        for m in model.modules():
            if isinstance(m, MaxPool2d):
                m.register_forward_pre_hook(lambda _, i: found.append(list(i[0].shape)))
        with torch.no_grad():
            model(x)
        return found

    assert NETWORKS["conv4/64, 28 px"] == pool_inputs(
        create("conv4", in_channels=1, hidden=64), torch.zeros(80, 1, 28, 28))
    assert NETWORKS["conv4/32, 28 px"] == pool_inputs(
        create("conv4", in_channels=1, hidden=32), torch.zeros(80, 1, 28, 28))
    assert NETWORKS["conv4/64, 84 px"] == pool_inputs(
        create("conv4", in_channels=3, hidden=64), torch.zeros(80, 3, 84, 84))
    seen: list[list[int]] = []
    real = resnet12.max_pool2d
    monkeypatch.setattr(resnet12, "max_pool2d",
                        lambda x, *a: (seen.append(list(x.shape)), real(x, *a))[1])
    with torch.no_grad():
        create("resnet12", num_classes=0)(torch.zeros(16, 3, 80, 80))
    assert NETWORKS["resnet12, 80 px"] == seen

    out = tmp_path / "pool.json"
    result = _run_cli("pool_speed", "--quick", "--out", str(out))
    assert json.loads(out.read_text()) == result
    assert set(result["networks"]) == {"conv4/64, 28 px", "conv4/32, 28 px"}
    routes = [p["route"] for p in result["networks"]["conv4/64, 28 px"]["pools"]]
    assert routes == [True, True, True, False]  # the 3x3 map is too small to pay
    assert all(row["route"] for row in result["sweep"])  # the sweep forces the route
    assert "sweep" in out.with_suffix(".log").read_text()


def test_conv_batching_grouped_layout_is_the_per_task_convolution() -> None:
    """The benchmark's grouped call computes the per-task loop's convolutions (float64)."""
    import torch
    import torch.nn.functional as F

    from benchmarks.conv_batching import grouped_conv

    g = torch.Generator().manual_seed(0)
    tasks, m, c_in, c_out = 3, 4, 2, 5
    x = torch.randn(tasks, m, c_in, 9, 9, generator=g, dtype=torch.float64)
    w = torch.randn(tasks, c_out, c_in, 3, 3, generator=g, dtype=torch.float64)
    side = x.transpose(0, 1).reshape(m, tasks * c_in, 9, 9)
    got = grouped_conv(side, w, tasks, stride=2, padding=1)
    loop = torch.stack([F.conv2d(x[t], w[t], stride=2, padding=1) for t in range(tasks)])
    torch.testing.assert_close(got, loop, rtol=1e-12, atol=1e-12)
