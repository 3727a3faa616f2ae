"""The Meta-Baseline benchmark: its arms, budget and merge, and its pipeline end to end on a
tiny configuration (a smoke test)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks import baseline_omniglot as bench


def test_arm_sets_and_settings() -> None:
    assert bench.select_arms(["weak"]) == ("plain", "kd_weak", "kdgda_weak", "kdgdamean_weak")
    assert bench.select_arms(["kdgda_strong"]) == ("plain", "kdgda_strong")
    assert bench.select_arms(["all"]) == bench.ARMS
    with pytest.raises(ValueError, match="unknown arm"):
        bench.select_arms(["kdgda_medium"])
    assert bench.arm_settings("kdgda_weak") == ("weak", True, "sum")
    assert bench.arm_settings("kdgdamean_weak") == ("weak", True, "mean")
    assert bench.arm_settings("kd_strong") == ("strong", False, "sum")
    # the mean arm is a stage-2 arm: stage 1 runs the five arms of the first results
    assert "kdgdamean_weak" not in bench.STAGE_ARMS["classifier"]
    assert bench.default_out(bench.ARMS) == "baseline_omniglot_cpu.json"
    assert bench.default_out(bench.select_arms(["weak"])) == "baseline_omniglot_weak_cpu.json"
    with pytest.raises(ValueError, match="give --out"):
        bench.default_out(("plain", "kd_weak"))


def test_the_mean_arm_passes_the_reduction_to_the_recipe() -> None:
    cfg = bench.Config()
    mb = bench.mb_config(cfg, 0, "pre", "out", "teacher", *bench.arm_settings("kdgdamean_weak")[1:])
    assert (mb.gda, mb.sinkhorn_reduction, mb.sinkhorn_weight) == (True, "mean", 0.1)
    assert bench.mb_config(cfg, 0, "pre", "out").sinkhorn_reduction == "sum"


def test_budget_is_computed_from_the_config() -> None:
    cfg = bench.Config(cb_epochs=8, mb_steps=120, meta_batch=4, mb_queries=10)
    b = bench.student_budget(cfg, cb_steps=248)
    assert b["run"]["pretraining_images"] == 248 * 64
    assert (b["run"]["tasks"], b["run"]["images_per_task"]) == (480, 5 * (1 + 10))
    assert b["run"]["images"] == 248 * 64 + 480 * 55
    assert (b["paper"]["tasks"], b["paper"]["task_images"]) == (16_000, 16_000 * 80)
    assert b["paper"]["pretraining_images"] == 100 * 38_400
    assert b["fraction_of_paper"]["tasks"] == pytest.approx(480 / 16_000)
    assert "miniImageNet" in b["paper"]["source"]


def _part(seed: int, arms: tuple[str, ...]) -> dict[str, Any]:
    """A one-seed result of ``arms`` shaped as :func:`bench.run` writes it."""
    per_seed = {(1, "teachers", "teacher_weak"): [{"seed": seed, "mean": 0.6}]}
    for stage in bench.STAGES:
        for arm in arms:
            if arm in bench.STAGE_ARMS[stage]:
                per_seed[(1, stage, arm)] = [{"seed": seed, "mean": 0.8 + 0.01 * seed}]
    diffs = {(1, "meta:plain-classifier:plain"): [{"seed": seed, "mean": 0.01 * seed}]}
    settings, verdict = bench.summarise([1], per_seed, diffs)
    config = {**bench.asdict(bench.Config(seeds=(seed,), shots=(1,))), "arms": list(arms)}
    return {"seeds": [seed], "shots": [1], "arms": list(arms), "results": settings,
            "verdict": verdict, "config": config, "wall_s": 10.0 + seed,
            "load_average": {"start": [1.0], "end": [1.0]}}


def test_merge_pools_seeds_and_refuses_mixed_runs() -> None:
    weak = bench.select_arms(["weak"])
    merged = bench.merge([_part(1, weak), _part(0, weak)])
    assert merged["seeds"] == [0, 1] and merged["wall_s"] == 11.0
    block = merged["results"]["5way1shot"]
    assert list(block["meta"]) == list(weak)
    assert list(block["classifier"]) == ["plain", "kd_weak", "kdgda_weak"]
    assert [r["seed"] for r in block["meta"]["kdgdamean_weak"]["per_seed"]] == [0, 1]
    assert block["meta"]["plain"]["ci95"] is not None  # two seeds: an interval over seeds
    with pytest.raises(ValueError, match="different arms"):
        bench.merge([_part(0, weak), _part(1, bench.ARMS)])
    with pytest.raises(ValueError, match="share seeds"):
        bench.merge([_part(0, weak), _part(0, weak)])


def test_the_command_line_refuses_a_subset_without_a_file(capsys) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--arms", "kd_weak"])
    assert "give --out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--arms", "nope", "--quick"])


@pytest.mark.slow  # a couple of minutes on the loaded CPU: outside the default suite
def test_tiny_run_reports_every_arm(tmp_path) -> None:
    cfg = bench.Config(cb_epochs=1, mb_steps=2, seeds=(0,), shots=(1,), test_tasks=10)
    result = bench.run(cfg, log=lambda _msg: None, workdir=tmp_path)
    json.loads(json.dumps(result))  # JSON-ready
    (setting,) = result["results"].values()
    assert set(setting["teachers"]) == set(bench.TEACHERS)
    for stage in bench.STAGES:
        assert list(setting[stage]) == list(bench.STAGE_ARMS[stage])
        for entry in setting[stage].values():
            assert 0.0 <= entry["mean"] <= 1.0 and entry["ci95"] is None  # one seed
            (seed,) = entry["per_seed"]
            assert seed["ci95"] >= 0.0
    n_pairs = sum(a in bench.STAGE_ARMS[s] and b in bench.STAGE_ARMS[s]
                  for s in bench.STAGES for a, b in bench.PAIRS)
    assert len(setting["paired_differences"]) == n_pairs + 1
    assert "| meta | kdgdamean_weak |" in bench.table(result)
    assert result["budget"]["run"]["tasks"] == 2 * cfg.meta_batch
    assert result["budget"]["run"]["pretraining_steps"] == setting["classifier"]["plain"][
        "per_seed"][0]["steps"]


@pytest.mark.slow  # about a minute: the weak-teacher arms alone
def test_tiny_run_of_the_weak_arms(tmp_path) -> None:
    cfg = bench.Config(cb_epochs=1, mb_steps=2, seeds=(0,), shots=(1,), test_tasks=4,
                       arms=("weak",))
    result = bench.run(cfg, log=lambda _msg: None, workdir=tmp_path)
    (setting,) = result["results"].values()
    assert list(setting["teachers"]) == ["teacher_weak"]
    assert list(setting["meta"]) == list(bench.select_arms(["weak"]))
    assert result["arms"] == list(bench.select_arms(["weak"]))
    assert "meta:kdgdamean_weak-meta:kdgda_weak" in setting["paired_differences"]
    assert not (tmp_path / "teacher_strong_s0").exists()
