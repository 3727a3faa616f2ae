"""The MAML speed benchmark's core runs on a tiny config (no timings asserted)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import maml_speed
from metakd.engine import keep_freed_memory

TINY = maml_speed.Config("tiny", image_size=8, meta_batch=2, queries=1, steps=1)


@pytest.mark.parametrize("method", ["metakd:auto:compile=0", "metakd:vmap:vmap_chunk=1+compile=0",
                                    "learn2learn",
                                    "higher"])
def test_measure_tiny_config(method: str) -> None:
    if method in ("learn2learn", "higher"):
        pytest.importorskip(method)
    result = maml_speed.measure(method, TINY, repeats=1)
    assert result["tasks_per_s"] > 0 and result["first_batch_s"] > 0
    assert result["peak_rss_mb"] > 0 and result["rss_delta_mb"] >= 0
    json.dumps(result)


@pytest.mark.parametrize(("method", "allocator", "kept"), [
    ("metakd:auto", "own", True),  # MAMLWrapper's default keeps it itself (eager here)
    ("metakd:auto:compile=0", "own", False),  # plain eager leaves it
    ("metakd:auto", "plain", False),  # the worker's environment turns it off
    ("metakd:auto:heap=plain", "own", False),  # so does the method's own option
    ("metakd:auto:compile=0", "kept", True),
])
def test_each_worker_records_its_heap(method: str, allocator: str, kept: bool) -> None:
    if kept and not keep_freed_memory():
        pytest.skip("this C library's heap cannot be set (not glibc)")
    # the worker inherits the suite's METAKD_COMPILE=0: "auto" runs eager
    result = maml_speed._subprocess(method, TINY, 1, "cpu", allocator)
    assert result["keep_freed_memory"] is kept


def test_methods_compute_the_same_meta_gradient() -> None:
    pytest.importorskip("learn2learn")
    norms = {m: maml_speed.measure(m, TINY, repeats=1)["grad_norm"]
             for m in ("metakd:func:compile=0", "learn2learn")}
    assert norms["metakd:func:compile=0"] == pytest.approx(norms["learn2learn"], rel=1e-4)


def test_cold_start_times_the_first_meta_batch_in_two_fresh_processes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each method twice in a fresh process with a new compiler cache folder (cold, then
    warm); the caller's environment is left as it was."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/nonexistent/kept")
    lines: list[str] = []
    out = maml_speed.cold_start([TINY], ["metakd:auto:compile=0"], "cpu", lines.append)
    row = out["tiny"]["metakd:auto:compile=0"]
    assert row["cold_first_batch_s"] > 0 and row["warm_first_batch_s"] > 0
    assert len(lines) == 1 and "cold" in lines[0] and "warm" in lines[0]
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/nonexistent/kept"


def test_standard_configs_cover_the_report() -> None:
    names = {c.name for c in maml_speed.standard_configs()}
    assert {"omniglot_q15_s1_so", "omniglot_q15_s5_so", "omniglot_q1_s1_so",
            "omniglot_q1_s5_fo", "miniimagenet_q15_s5_so"} <= names


def test_count_flops_by_hand() -> None:
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)  # 4 x 5 x 5 outputs, 3 x 3 x 3 MACs each
    assert maml_speed.count_flops(conv, torch.rand(1, 3, 5, 5)) == 2 * 100 * 27
    grouped = torch.nn.Conv2d(4, 8, 3, stride=2, groups=2)  # 8 x 3 x 3 outputs, 2 x 3 x 3 MACs
    assert maml_speed.count_flops(grouped, torch.rand(1, 4, 7, 7)) == 2 * 72 * 18
    linear = torch.nn.Linear(10, 6)  # 2 x 6 outputs, 10 MACs each
    assert maml_speed.count_flops(linear, torch.rand(2, 10)) == 2 * 12 * 10
    net = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(100, 2))
    assert maml_speed.count_flops(net, torch.rand(1, 3, 5, 5)) == 5400 + 2 * 2 * 100


def test_task_flops_accounting() -> None:
    configs = {c.name: c for c in maml_speed.standard_configs()}
    q15, q1 = (maml_speed.task_flops(configs[n]) for n in ("omniglot_q15_s1_so",
                                                              "omniglot_q1_s1_so"))
    f = q1["forward_flops_per_image"]
    assert f > 0 and q15["forward_flops_per_image"] == f
    assert q1["flops_per_task"] == 3 * f * 5 + 3 * f * 5 + 6 * f * 5  # S = Q = 5, K = 1
    assert q15["flops_per_task"] - q1["flops_per_task"] == 3 * f * 70  # 70 more queries
    fo = maml_speed.task_flops(configs["omniglot_q1_s5_fo"])
    assert fo["terms"]["second_order"] == 0 and fo["flops_per_task"] == 3 * f * (5 * 5 + 5)


def test_roofline_tiny_config() -> None:
    rf = maml_speed.roofline(TINY, {"learn2learn": {"tasks_per_s": 1.0}}, repeats=1,
                             log=lambda _: None)
    assert rf["flops_per_task"] > 0 and rf["achievable"]["gflop_per_s"] > 0
    assert set(rf["achievable"]["batches"]) == {"support", "query", "chunk_support",
                                                "chunk_query"}
    assert rf["methods"]["learn2learn"]["roofline_share"] > 0 and rf["profiles"] == {}
    json.dumps(rf)


@pytest.mark.slow
def test_quick_roofline_run(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("learn2learn")
    maml_speed.main(["--quick", "--roofline", "--configs", "omniglot_q1_s1_so",
                     "--methods", "metakd:auto,learn2learn"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rf = out["results"]["omniglot_q1_s1_so"]["roofline"]
    assert {"accounting", "flops_per_task", "terms", "achievable", "methods",
            "profiles"} <= set(rf)
    assert rf["flops_per_task"] > 0 and rf["achievable"]["tasks_per_s_bound"] > 0
    for method in ("metakd:auto", "learn2learn"):
        assert 0 < rf["methods"][method]["roofline_share"] <= 1.5
    assert rf["profiles"]["metakd:auto"]["self_cpu_vs_wall"] > 0
    ops = rf["profiles"]["metakd:auto"]["ops"]
    assert 0 < len(ops) <= 10 and {"op", "self_cpu_ms", "share"} == set(ops[0])
