"""The Meta-Baseline benchmark's pipeline runs end to end on a tiny configuration (a smoke test)."""

from __future__ import annotations

import json

import pytest

from benchmarks import baseline_omniglot as bench


@pytest.mark.slow  # a couple of minutes on the loaded CPU: outside the default suite
def test_tiny_run_reports_every_arm(tmp_path) -> None:
    cfg = bench.Config(cb_epochs=1, mb_steps=2, seeds=(0,), shots=(1,), test_tasks=10)
    result = bench.run(cfg, log=lambda _msg: None, workdir=tmp_path)
    json.loads(json.dumps(result))  # JSON-ready
    (setting,) = result["results"].values()
    assert set(setting["teachers"]) == set(bench.TEACHERS)
    for stage in bench.STAGES:
        assert set(setting[stage]) == set(bench.ARMS)
        for entry in setting[stage].values():
            assert 0.0 <= entry["mean"] <= 1.0 and entry["ci95"] is None  # one seed
            (seed,) = entry["per_seed"]
            assert seed["ci95"] >= 0.0
    assert len(setting["paired_differences"]) == 2 * len(bench.PAIRS) + 1
    assert "| meta | kdgda_weak |" in bench.table(result)
