"""The MAML speed benchmark's core runs on a tiny config (no timings asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import maml_speed

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


def test_methods_compute_the_same_meta_gradient() -> None:
    pytest.importorskip("learn2learn")
    norms = {m: maml_speed.measure(m, TINY, repeats=1)["grad_norm"]
             for m in ("metakd:func:compile=0", "learn2learn")}
    assert norms["metakd:func:compile=0"] == pytest.approx(norms["learn2learn"], rel=1e-4)


def test_standard_configs_cover_the_report() -> None:
    names = {c.name for c in maml_speed.standard_configs()}
    assert {"omniglot_q15_s1_so", "omniglot_q15_s5_so", "omniglot_q1_s1_so",
            "omniglot_q1_s5_fo", "miniimagenet_q15_s5_so"} <= names
