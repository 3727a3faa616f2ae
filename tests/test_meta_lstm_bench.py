"""The Meta-LSTM benchmark's arms and the budget it states (its pipeline end to end is
``test_meta_lstm_recipe.py::test_benchmark_tiny_run``)."""

from __future__ import annotations

import pytest

from benchmarks import meta_lstm_omniglot as bench


def test_the_softmax_arm_is_a_default_arm() -> None:
    assert bench.Config().arms == bench.ARMS
    assert "meta_lstm_attention_softmax" in bench.ARMS
    pairs = {f"{a}-{b}" for a, b in bench.PAIRS}
    assert {"meta_lstm_attention_softmax-meta_lstm_attention",
            "meta_lstm_attention_softmax-meta_lstm"} <= pairs
    cfg = bench.arm_config(bench.Config(), "meta_lstm_attention_softmax", 1, 0, "out", 3)
    assert cfg.attention and cfg.attention_softmax
    assert not bench.arm_config(bench.Config(), "meta_lstm_attention", 1, 0, "out", 3
                                ).attention_softmax
    assert set(bench.PAPER_EPISODES) == set(bench.ARMS)


def test_budget_is_computed_from_the_run() -> None:
    cfg = bench.Config(queries=5, maml_meta_batch=4)
    b = bench.arm_budget(cfg, "meta_lstm", 5, 114)
    assert (b["run"]["tasks"], b["run"]["task_images"]) == (114, 114 * 5 * (5 + 5))
    assert (b["paper"]["tasks"], b["paper"]["images_per_task"]) == (50_000, 5 * (5 + 15))
    assert b["fraction_of_paper"]["tasks"] == pytest.approx(114 / 50_000)
    m = bench.arm_budget(cfg, "maml", 1, 478)
    assert m["run"]["tasks"] == 478 * 4 and m["paper"]["tasks"] == 60_000 * 32
    assert "images" not in m["paper"] and "task_images" not in m["fraction_of_paper"]
    assert bench.arm_budget(cfg, "meta_lstm_attention_softmax", 1, 10)["paper"]["tasks"] == 50_000
