"""The distillation benchmark's core runs end to end on a tiny configuration (a smoke test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import distill_omniglot as bench


def test_split_is_fixed_disjoint_and_seed_independent() -> None:
    train, test = bench.split_arrays(4)
    assert train.class_items.shape == (4, bench.TRAIN_PER_CLASS)
    assert test.class_items.shape == (4, bench.TEST_PER_CLASS)
    for k in range(4):
        assert not set(train.class_items[k].tolist()) & set(test.class_items[k].tolist())
    torch.manual_seed(123)  # the split never depends on the global RNG
    again_train, again_test = bench.split_arrays(6)
    assert torch.equal(again_train.class_items[:4], train.class_items)
    assert torch.equal(again_test.class_items[:4], test.class_items)


def test_tiny_run_reports_every_arm() -> None:
    pytest.importorskip("metakd.distill")
    cfg = bench.Config(
        characters=5, teacher_kwargs={"channels": [8, 8, 8, 8]},
        student_kwargs={"hidden": 8, "bn_mode": "running"}, batch_size=16,
        teacher_steps=4, steps=4, seeds=(0,),
    )
    result = bench.run(cfg, log=lambda _msg: None)
    json.loads(json.dumps(result))  # JSON-ready
    for key in ("characters", "seeds", "steps", "teacher", "student", "arms", "best_arm",
                "verdict", "wall_s", "dkd_warmup_steps"):
        assert key in result
    assert result["characters"] == 5 and result["seeds"] == [0]
    assert set(result["arms"]) == set(bench.ARMS)
    assert 0.0 <= result["teacher"]["accuracy"] <= 1.0
    assert result["teacher"]["unchanged_by_distillation"]
    for arm, entry in result["arms"].items():
        assert 0.0 <= entry["mean"] <= 1.0
        assert entry["ci95_t"] is None  # one seed: no interval over seeds
        (seed,) = entry["per_seed"]
        assert 0.0 <= seed["accuracy"] <= 1.0 and seed["ci95"] >= 0.0
        assert seed["examples"] == 5 * bench.TEST_PER_CLASS
        if arm != "ce":
            assert "minus_ce" in entry
    assert result["best_arm"] in bench.ARMS


def test_cached_teacher_serves_the_live_teachers_logits() -> None:
    train, _ = bench.split_arrays(5)
    teacher = bench.make_model("resnet12", {"channels": [8, 8, 8, 8]}, 5, seed=0).eval()
    cached = bench.CachedTeacher(teacher, bench.training_images(train))
    x, _ = next(iter(bench.batches(train, 16, seed=3, progress=False)))
    with torch.no_grad():
        assert torch.allclose(cached(x), teacher(x), atol=1e-5)
    assert cached.misses == 0
    with torch.no_grad():
        cached(torch.rand(2, 1, 28, 28))  # an unseen image: the live teacher answers
    assert cached.misses == 1


def test_command_line_writes_the_result_and_its_log(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("metakd.distill")
    out = tmp_path / "distill.json"
    bench.main(["--characters", "5", "--steps", "2", "--teacher-steps", "2", "--seeds", "0",
                "--arms", "ce", "kd", "--out", str(out)])
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert result["config"]["arms"] == ["ce", "kd"] and result["seeds"] == [0]
    assert result["steps"] == 2 and result["teacher"]["steps"] == 2
    for key in ("torch", "platform", "load_average", "wall_s"):
        assert key in result
    log = out.with_suffix(".log").read_text()
    assert log.startswith("config: ") and result["verdict"] in log
