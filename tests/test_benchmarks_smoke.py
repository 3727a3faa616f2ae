"""The data benchmark runs and prints one JSON object last (a smoke test; no timings asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.learn2learn
def test_data_throughput_prints_json_last() -> None:
    pytest.importorskip("learn2learn")
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.data_throughput", "--seconds", "0.2"],
        check=True, capture_output=True, text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result["episodes_per_s"]) == {"metakd_meta_batch_1", "metakd_meta_batch_32",
                                             "learn2learn"}
    assert all(v > 0 for v in result["episodes_per_s"].values())
