"""The Meta-LSTM recipe (Ravi & Larochelle, ICLR 2017; paper settings as in spec
``meta-learning-spec.md`` §3.5), its CLI options, example script and benchmark, on tiny
settings."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import torch

from metakd.recipes import MetaLSTMConfig, get_method, load_run, run

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("meta_lstm_example",
                                                  ROOT / "examples" / "meta_lstm" / "main.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paper_settings() -> None:
    one = MetaLSTMConfig.paper("miniimagenet", shots=1)
    five = MetaLSTMConfig.paper("miniimagenet", shots=5)
    assert (one.epochs, one.batch_size, one.bn_momentum, one.steps) == (12, 5, 0.9, 75_000)
    assert (five.epochs, five.batch_size, five.bn_momentum, five.steps) == (8, 25, 0.95, 50_000)
    for c in (one, five):
        assert (c.meta_lr, c.grad_clip, c.hidden_size, c.bn_eps, c.queries) == (
            1e-3, 0.25, 20, 1e-3, 15)
        assert (c.val_every, c.val_tasks, c.meta_batch_size, c.image_size) == (1000, 100, 1, 84)
    mlal = MetaLSTMConfig.paper("miniimagenet", shots=1, attention=True)
    assert (mlal.hidden_size, mlal.epochs, mlal.batch_size) == (4, 16, 25)
    with pytest.raises(ValueError, match="input_size must be 4"):
        run(MetaLSTMConfig.paper("omniglot", input_size=5), progress=False)


def test_learner_is_the_original_conv4_on_miniimagenet_shapes() -> None:
    from metakd.nn import create

    net = create("conv4", in_channels=3, num_classes=5, hidden=32, head="flatten",
                 image_size=84, bn_mode="running")
    assert sum(p.numel() for p in net.parameters()) == 32_901


@pytest.mark.parametrize("attention", [False, True])
def test_run_and_read_back(tmp_path: Path, attention: bool) -> None:
    cfg = MetaLSTMConfig.paper("omniglot", shots=1, attention=attention, steps=2, test_tasks=3,
                               queries=2, test_queries=2, epochs=1, out_dir=str(tmp_path))
    res = run(cfg, progress=False, resume=False)
    assert res["method"] == "meta_lstm" and res["steps"] == 2
    assert res["test"]["episodes"] == 3
    r = load_run(tmp_path, checkpoint="last")
    assert type(r.learner).__name__ == "MetaLSTM"
    assert r.learner.rule.attention is not None if attention else r.learner.rule.attention is None
    assert abs(r.evaluate().mean - res["test"]["accuracy"]) < 1e-9


def test_cli_takes_the_original_options() -> None:
    from metakd.cli import _add_train_parser
    from metakd.recipes.options import option_values

    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    method = get_method("meta_lstm")
    _add_train_parser(sub, method)
    args = p.parse_args(["meta_lstm", "--n-shot", "1", "--n-class", "20", "--n-eval", "7",
                         "--lr", "0.01", "--episode", "9", "--episode-val", "4", "--epoch", "3",
                         "--batch-size", "2", "--grad-clip", "1.5", "--bn-momentum", "0.5",
                         "--bn-eps", "0.01", "--hidden-size", "6", "--attention",
                         "--data-root", "/data", "--image-size", "32"])
    got = option_values(args, method.config_cls, method.aliases)
    assert got == {"shots": 1, "ways": 20, "queries": 7, "test_queries": 7, "meta_lr": 0.01,
                   "steps": 9, "val_tasks": 4, "epochs": 3, "batch_size": 2, "grad_clip": 1.5,
                   "bn_momentum": 0.5, "bn_eps": 0.01, "hidden_size": 6, "attention": True,
                   "root": "/data", "image_size": 32}


def test_example_train_then_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = _example().main
    out = tmp_path / "run"
    res = main(["--mode", "train", "--dataset", "omniglot", "--n-shot", "1", "--n-eval", "2",
                "--episode", "2", "--epoch", "1", "--test-tasks", "2", "--device", "cpu",
                "--out-dir", str(out)])
    assert res["test"]["episodes"] == 2
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["method"], cfg["shots"], cfg["queries"], cfg["steps"], cfg["epochs"]) == (
        "meta_lstm", 1, 2, 2, 1)
    res = main(["--mode", "test", "--resume", str(out), "--test-tasks", "2"])
    assert res["test"]["episodes"] == 2
    assert "Meta-LSTM test" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--mode", "test"])


# The options of markdtw/meta-learning-lstm-pytorch's scripts/{train,eval}_5s_5c.sh at commit
# fcc68ba, in their order (the scripts' python call, less "python main.py").
_SHARED_5S_5C = ["--n-shot", "5", "--n-eval", "15", "--n-class", "5", "--input-size", "4",
                 "--hidden-size", "20", "--lr", "1e-3", "--episode", "50000", "--episode-val",
                 "100", "--epoch", "8", "--batch-size", "25", "--image-size", "84",
                 "--grad-clip", "0.25", "--bn-momentum", "0.95", "--bn-eps", "1e-3", "--data",
                 "miniimagenet", "--data-root", "data/miniImagenet/", "--pin-mem", "True"]
_ORIGINAL_5S_5C = {
    "train_5s_5c.sh": ["--mode", "train", *_SHARED_5S_5C, "--log-freq", "50", "--val-freq",
                       "1000"],
    "eval_5s_5c.sh": ["--mode", "test", "--resume", "logs-719/ckpts/meta-learner-42000.pth.tar",
                      *_SHARED_5S_5C, "--log-freq", "100"],
}


@pytest.mark.skipif(shutil.which("bash") is None, reason="the scripts are bash scripts")
@pytest.mark.parametrize("script", sorted(_ORIGINAL_5S_5C))
def test_scripts_run_the_original_command_lines(tmp_path: Path, script: str) -> None:
    """A stand-in ``python`` records the arguments; they are the original's, then the extras,
    and ``main.py`` reads them as the paper's 5-shot miniImageNet settings."""
    stand_in = tmp_path / "bin" / "python"
    stand_in.parent.mkdir()
    stand_in.write_text('#!/bin/sh\nprintf \'%s\\n\' "$@" > "$ARGV_FILE"\n')
    stand_in.chmod(0o755)
    argv_file = tmp_path / "argv"
    env = {**os.environ, "PATH": f"{stand_in.parent}{os.pathsep}{os.environ['PATH']}",
           "ARGV_FILE": str(argv_file)}
    path = ROOT / "examples" / "meta_lstm" / script
    subprocess.run(["bash", str(path), "--seed", "719", "--out-dir", "a b"], env=env,
                   cwd=tmp_path, check=True, timeout=60)
    argv = argv_file.read_text().splitlines()
    assert argv == [str(path.parent / "main.py"), *_ORIGINAL_5S_5C[script], "--seed", "719",
                    "--out-dir", "a b"]
    example = _example()
    cfg = example.config(example.parser().parse_args([*argv[1:], "--device", "cpu"]))
    paper = MetaLSTMConfig.paper("miniimagenet", shots=5)
    same = ("ways", "shots", "queries", "test_queries", "meta_lr", "steps", "val_tasks",
            "epochs", "batch_size", "image_size", "grad_clip", "bn_momentum", "bn_eps",
            "hidden_size", "input_size", "val_every")
    assert {f: getattr(cfg, f) for f in same} == {f: getattr(paper, f) for f in same}
    assert (cfg.dataset, cfg.root, cfg.seed, cfg.out_dir) == (
        "miniimagenet", "data/miniImagenet/", 719, "a b")


@pytest.mark.slow  # about 15-60 s: the benchmark's whole pipeline on one seed
def test_benchmark_tiny_run(tmp_path: Path) -> None:
    from benchmarks import meta_lstm_omniglot as bench

    cfg = bench.Config(train_seconds=2.0, seeds=(0,), shots=(1,), test_tasks=4,
                       calib_steps=20)
    result = bench.run(cfg, log=lambda _msg: None, workdir=tmp_path)
    json.loads(json.dumps(result))
    (setting,) = result["results"].values()
    assert set(setting["arms"]) == set(bench.ARMS)
    for entry in setting["arms"].values():
        assert 0.0 <= entry["mean"] <= 1.0 and entry["per_seed"][0]["episodes"] == 4
        # equal time as a fixed count: each seed trains the measured number of iterations
        assert entry["meta_iterations"] == max(
            1, round(2.0 / entry["seconds_per_iteration"]))
        assert entry["per_seed"][0]["steps"] == entry["meta_iterations"]
    assert set(setting["paired_differences"]) == {
        f"{a}-{b}" for a, b in bench.PAIRS if a in bench.ARMS and b in bench.ARMS}
    assert result["verdict"] and result["arms"] == list(bench.ARMS)
