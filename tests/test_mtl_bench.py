"""The MTL benchmark: its budget, and its core end to end on a tiny configuration (a smoke
test)."""

from __future__ import annotations

import json

import pytest

from benchmarks import mtl_omniglot as bench


def test_budget_is_computed_from_the_config() -> None:
    cfg = bench.Config(steps=250, meta_batch=4, queries=5, pre_epochs=5)
    b = bench.mtl_budget(cfg, 5, pre_minibatches=850)
    assert b["run"]["pretraining_images"] == 850 * 64
    assert (b["run"]["tasks"], b["run"]["task_images"]) == (1_000, 1_000 * 5 * (5 + 5))
    assert (b["paper"]["tasks"], b["paper"]["images_per_task"]) == (40_000, 5 * (5 + 15))
    assert b["paper"]["pretraining_images"] == 640_000
    assert b["fraction_of_paper"]["tasks"] == 0.025
    assert b["run"]["images"] == 850 * 64 + 50_000


@pytest.mark.slow  # about 30 s: kept out of the default suite, which is near its 10-minute limit
def test_tiny_run_reports_every_arm(tmp_path) -> None:
    cfg = bench.Config(steps=2, pre_epochs=1, seeds=(0,), shots=(1,), test_tasks=8)
    result = bench.run(cfg, log=lambda _msg: None, workdir=tmp_path)
    json.loads(json.dumps(result))  # JSON-ready
    for key in ("benchmark", "setting", "arms_note", "budget_note", "budget", "shots", "steps",
                "pre_epochs", "pre_training", "seeds", "test_episodes", "test_seed", "results",
                "verdict", "config", "wall_s"):
        assert key in result
    assert result["seeds"] == [0] and result["shots"] == [1]
    (setting,) = result["results"].values()
    assert set(setting["arms"]) == set(bench.ARMS)
    for entry in setting["arms"].values():
        assert 0.0 <= entry["mean"] <= 1.0
        assert entry["ci95"] is None  # one seed: no interval over seeds
        (seed,) = entry["per_seed"]
        assert 0.0 <= seed["accuracy"] <= 1.0 and seed["ci95"] >= 0.0
        assert seed["episodes"] == 8
    assert set(setting["paired_differences"]) == {f"{a}-{b}" for a, b in bench.PAIRS}
    for d in setting["paired_differences"].values():
        assert -1.0 <= d["mean"] <= 1.0
        assert d["per_seed"][0]["ci95"] is not None
    budget = result["budget"]["5way1shot"]
    assert budget["run"]["tasks"] == 2 * cfg.meta_batch
    assert budget["run"]["pretraining_steps"] == result["pre_training"][0]["minibatches"]
