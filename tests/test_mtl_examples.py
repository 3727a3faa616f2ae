"""The MTL example (examples/mtl/main.py) runs its three phases end to end on the bundled Omniglot.

Tiny settings: a few pre-training minibatches (time-capped), 2 meta-iterations of 2 tasks with
1 inner step, 4 test episodes. Checks the printed result lines, the config each phase maps
to, and the one-line refusal of a meta phase without --init_weights.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "mtl"
COMMON = ["--dataset", "Omniglot", "--update_step", "1", "--test_tasks", "4", "--val_tasks", "2"]


def _script() -> ModuleType:
    """Import ``examples/mtl/main.py`` as the module ``main`` (its folder on ``sys.path``)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module("main")


def test_pre_meta_test_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = _script().main
    pre, meta = tmp_path / "pre", tmp_path / "meta"
    main(["--phase", "pre", *COMMON, "--pre_max_epoch", "1", "--pre-batch-size", "1024",
          "--max-seconds", "1", "--out-dir", str(pre)])
    out = capsys.readouterr().out
    assert "MTL pre (mtl_pytorch) omniglot 5-way 1-shot" in out and "test " in out
    cfg = json.loads((pre / "config.json").read_text())
    assert cfg["phase"] == "pre" and cfg["pre_batch_size"] == 1024 and cfg["model"] == "conv4"

    res = main(["--phase", "meta", *COMMON, "--init_weights", str(pre), "--max_epoch", "1",
                "--num_batch", "2", "--meta_batch", "2", "--train_query", "1",
                "--val_query", "1", "--hard-task", "--out-dir", str(meta)])
    out = capsys.readouterr().out
    assert "MTL meta (mtl_pytorch) omniglot 5-way 1-shot, 2 steps" in out
    assert res["test"]["episodes"] == 4
    cfg = json.loads((meta / "config.json").read_text())
    assert (cfg["phase"], cfg["pretrained"], cfg["steps"], cfg["val_every"]) == (
        "meta", str(pre), 2, 2)
    assert (cfg["update_step"], cfg["test_update_step"], cfg["hard_tasks"]) == (1, 1, True)
    assert (cfg["queries"], cfg["test_queries"], cfg["meta_batch_size"]) == (1, 1, 2)

    res = main(["--phase", "test_load", "--eval_weights", str(meta), "--test_tasks", "4"])
    out = capsys.readouterr().out
    assert f"MTL test_load {meta}" in out and "test " in out
    assert res["test"]["episodes"] == 4


def test_meta_without_init_weights(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        _script().main(["--phase", "meta", "--dataset", "omniglot"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("--phase meta needs --init_weights RUN_DIR, the folder of a --phase "
                        "pre run")


def test_defaults_are_the_pytorch_projects() -> None:
    mod = _script()
    p = mod.parser()
    args = p.parse_args(["--phase", "meta_load", "--dataset", "miniimagenet", "--dataset_dir",
                         "data/mini", "--init_weights", "runs/pre", "--shot", "5"])
    mod.check_args(p, args)
    cfg = mod.config(args)
    assert (cfg.phase, cfg.pretrained, cfg.model, cfg.ways, cfg.shots) == (
        "meta", "runs/pre", "mtl_resnet12", 5, 5)
    assert (cfg.meta_lr1, cfg.meta_lr2, cfg.base_lr, cfg.update_step, cfg.steps) == (
        1e-4, 1e-3, 0.01, 100, 10_000)
    assert (cfg.lr_step, cfg.lr_gamma, cfg.queries, cfg.test_queries) == (1000, 0.5, 15, 15)
