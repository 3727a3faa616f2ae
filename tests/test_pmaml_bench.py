"""The PMAML Omniglot benchmark's core runs end to end on a tiny configuration (a smoke test)."""

from __future__ import annotations

import json

import pytest

from benchmarks import pmaml_omniglot as bench


def test_tiny_run_reports_every_arm(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("metakd.distill")
    cfg = bench.Config(
        students=("conv1",), student_kwargs={"hidden": 8}, conv_teacher_kwargs={"hidden": 8},
        resnet_teacher_kwargs={"width": 4, "bn_mode": "transductive"},
        resnet_students=("conv1",), steps=2, teacher_steps=2, meta_batch=2, queries=1,
        test_queries=2, test_tasks=4, seeds=(0,),
    )
    lines: list[str] = []
    result = bench.run(cfg, log=lines.append, workdir=tmp_path)
    json.loads(json.dumps(result))  # JSON-ready
    for key in ("steps", "teacher_steps", "meta_batch", "seeds", "test_episodes", "test_seed",
                "teachers", "arms", "verdict", "wall_s"):
        assert key in result
    assert result["steps"] == 2 and result["meta_batch"] == 2 and result["seeds"] == [0]
    assert set(result["teachers"]) == {"conv4", "resnet10"}
    for teacher in result["teachers"].values():
        assert 0.0 <= teacher["accuracy"] <= 1.0 and teacher["episodes"] == 4
    expected = {"conv1/no_kd", "conv1/every/conv4", "conv1/every_adapted/conv4",
                "conv1/last/conv4", "conv1/every/resnet10", "conv1/every_adapted/resnet10"}
    assert set(result["arms"]) == expected
    for name, arm in result["arms"].items():
        assert 0.0 <= arm["mean"] <= 1.0
        assert arm["ci95"] is None  # one seed: no interval over seeds
        (seed,) = arm["per_seed"]
        assert 0.0 <= seed["accuracy"] <= 1.0 and seed["ci95"] >= 0.0
        assert seed["episodes"] == 4 and seed["steps"] == 2
        assert ("minus_no_kd" in arm) == (name != "conv1/no_kd")
    assert any(line.startswith("conv1: best") for line in result["verdict"])


@pytest.mark.slow
def test_seeds_in_separate_processes_merge_into_the_one_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Seeds run one at a time in a kept workdir (the teachers trained once, then reused)
    and merged give the arms of one run over both seeds: same accuracies, same paired
    differences, same intervals."""
    cfg = bench.Config(
        students=("conv1",), student_kwargs={"hidden": 8}, conv_teacher_kwargs={"hidden": 8},
        modes=("no_kd", "every", "inner_kd"), resnet_students=(), resnet_modes=(),
        steps=2, teacher_steps=2, meta_batch=2, queries=1, test_queries=2, test_tasks=4,
    )
    from dataclasses import replace

    work = tmp_path / "pieces"
    teachers = bench.run(replace(cfg, seeds=(0,)), log=lambda _: None, workdir=work,
                         teachers_only=True)
    assert set(teachers["teachers"]) == {"conv4"}
    parts = [bench.run(replace(cfg, seeds=(s,)), log=lambda _: None, workdir=work)
             for s in (0, 1)]
    merged = bench.merge(json.loads(json.dumps(parts)))
    whole = bench.run(replace(cfg, seeds=(0, 1)), log=lambda _: None, workdir=tmp_path / "one")
    assert merged["seeds"] == [0, 1] and set(merged["arms"]) == set(whole["arms"])
    for name, arm in whole["arms"].items():
        got = merged["arms"][name]
        assert [r["accuracy"] for r in got["per_seed"]] == \
            [r["accuracy"] for r in arm["per_seed"]]
        assert got["mean"] == pytest.approx(arm["mean"]) and got["ci95"] == pytest.approx(arm["ci95"])
        if "minus_no_kd" in arm:
            assert got["minus_no_kd"]["mean"] == pytest.approx(arm["minus_no_kd"]["mean"])
    assert merged["verdict"] == whole["verdict"]
    with pytest.raises(ValueError, match="repeat seeds"):
        bench.merge([parts[0], parts[0]])
