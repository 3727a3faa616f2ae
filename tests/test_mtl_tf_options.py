"""The TF MTL project's run_experiment.py variables, its .npy weights and tieredImageNet folders
in the MTL example (examples/mtl/main.py) and recipe.

``yaoyao-liu/meta-transfer-learning`` at 7f71fdd, ``tensorflow/run_experiment.py``: every
variable maps onto what ``metakd.recipes.mtl_tf.TF_OPTIONS`` declares (with the keep rate →
dropout conversion), ``SAVE_STEP`` is the run's checkpoint period, the four data folders are one
``root``; what cannot map is refused in one line. ``META_LR_MIN`` floors the stepped meta rate.
``META_LOAD`` starts meta-training from a TF pre-training snapshot (``PRE_ITER``) and
``TEST_LOAD`` tests the TF meta weights (a narrow ResNet-12 on the bundled Omniglot, so that it
runs in seconds). tieredImageNet in MTL's class-folder layout is read.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import fixtures_formats as fx
import numpy as np
import pytest
import torch
from interop_reference import value

from metakd.data.datasets.tiered import TieredImageNet
from metakd.engine import load_checkpoint
from metakd.engine.errors import UsageError
from metakd.recipes import get_method
from metakd.recipes.mtl_tf import TF_OPTIONS, StepFloor, tf_settings

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "mtl"
NARROW = (4, 8, 8, 16)
TINY = ["--dataset", "omniglot", "--test_tasks", "2", "--val_tasks", "2", "--val_query", "1"]


def _script() -> ModuleType:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module("main")


def tf_weights(channels: int = 1, ways: int = 5) -> dict[str, dict[str, np.ndarray]]:
    """A narrow TF ResNet-12's weights, ss_weights and fc_weights, by TF variable name."""
    w: dict[str, np.ndarray] = {}
    ss: dict[str, np.ndarray] = {}
    c_in = channels
    for b, c in enumerate(NARROW, start=1):
        for k in (1, 2, 3):
            i = c_in if k == 1 else c
            w[f"block{b}_conv{k}"] = value(f"c{b}{k}", (3, 3, i, c)).float().numpy()
            w[f"block{b}_bias{k}"] = value(f"b{b}{k}", (c,)).float().numpy()
            ss[f"block{b}_conv{k}"] = (0.5 + value(f"s{b}{k}.running_var", (1, 1, i, c))
                                       ).float().numpy()
            ss[f"block{b}_bias{k}"] = value(f"sb{b}{k}", (c,)).float().numpy()
        w[f"block{b}_conv_res"] = value(f"r{b}", (1, 1, c_in, c)).float().numpy()
        c_in = c
    fc = {"w5": value("w5", (NARROW[-1], ways)).float().numpy(),
          "b5": value("b5", (ways,)).float().numpy()}
    return {"weights": w, "ss_weights": ss, "fc_weights": fc}


def save(folder: Path, files: dict[str, dict[str, np.ndarray]], suffix: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, d in files.items():
        np.save(folder / f"{name}{suffix}.npy", d)  # type: ignore[arg-type]  # as the TF code
    return folder


def test_every_variable_maps_once() -> None:
    names = [o.name for o in TF_OPTIONS]
    assert len(names) == len(set(names))
    values: dict[str, Any] = {
        "LOG_DIR": "runs/x", "GPU_ID": 1, "NET_ARCH": "resnet12", "PRE_TRA_LABEL": "normal",
        "PRE_TRA_ITER_MAX": 20000, "PRE_TRA_DROP": 0.9, "PRE_DROP_STEP": 5000, "PRE_LR": 1e-3,
        "SHOT_NUM": 1, "WAY_NUM": 5, "MAX_ITER": 20000, "META_BATCH_SIZE": 2, "PRE_ITER": 10000,
        "UPDATE_NUM": 20, "SAVE_STEP": 100, "META_LR": 1e-3, "META_LR_MIN": 1e-4,
        "LR_DROP_STEP": 1000, "BASE_LR": 1e-3, "PRE_TRA_DIR": "./data/mini-imagenet/train",
        "META_TRA_DIR": "./data/mini-imagenet/train", "META_VAL_DIR": "./data/mini-imagenet/val",
        "META_TES_DIR": "./data/mini-imagenet/test"}
    s = tf_settings(values)
    assert s.fields == {
        "out_dir": "runs/x", "pre_steps": 20000, "pre_dropout": pytest.approx(0.1),
        "pre_lr_drop_steps": 5000, "pre_lr": 1e-3, "shots": 1, "ways": 5, "steps": 20000,
        "meta_batch_size": 2, "update_step": 20, "meta_lr1": 1e-3, "meta_lr2": 1e-3,
        "lr_min": 1e-4, "lr_step": 1000, "base_lr": 1e-3, "root": "data/mini-imagenet"}
    assert (s.checkpoint_every, s.pre_iter, s.gpu, s.label) == (100, 10000, "1", "normal")
    assert tf_settings({"MAX_MAX_ITER": 7}).fields == {"steps": 7}
    for bad, match in (({"NET_ARCH": "resnet18"}, "resnet18"),
                       ({"META_VAL_DIR": "data/mini/validation"}, "must end in /val"),
                       ({"META_TRA_DIR": "a/train", "META_TES_DIR": "b/test"}, "one folder"),
                       ({"PRE_TRA_DROP": 0.0}, "keep rate"), ({"SAVE_STEP": 0}, "1 or more"),
                       ({"UPDATE_STEPS": 3}, "not run_experiment.py")):
        with pytest.raises(UsageError, match=match) as e:
            tf_settings(bad)
        assert "\n" not in str(e.value)


def test_example_options_become_the_config() -> None:
    mod = _script()
    p = mod.parser()
    args = p.parse_args(["--phase", "PRE", *TINY, "--PRE_LR", "0.002", "--PRE_TRA_DROP", "0.8",
                         "--PRE_TRA_ITER_MAX", "7", "--PRE_DROP_STEP", "3", "--SHOT_NUM", "5",
                         "--PRE_TRA_LABEL", "mine"])
    mod.check_args(p, args)
    cfg = mod.config(args)
    assert (cfg.phase, cfg.variant, cfg.pre_lr, cfg.pre_steps, cfg.pre_lr_drop_steps) == (
        "pre", "mtl_tf", 0.002, 7, 3)
    assert cfg.pre_dropout == pytest.approx(0.2) and cfg.shots == 5
    assert cfg.out_dir == "runs/mtl/pre_omniglot_mtl_tf_mine"
    args = p.parse_args(["--phase", "pre", *TINY, "--pre_lr", "0.1", "--PRE_LR", "0.2"])
    mod.check_args(p, args)
    with pytest.raises(UsageError, match="pre_lr"):
        mod.config(args)
    with pytest.raises(SystemExit):  # a metakd run folder has no PRE_ITER snapshots
        args = p.parse_args(["--phase", "meta", *TINY, "--init_weights", "runs/x",
                             "--PRE_ITER", "100"])
        mod.check_args(p, args)


def test_meta_rate_floor() -> None:
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([{"params": [w], "lr": 1e-3}, {"params": [], "lr": 1e-2}])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [StepFloor(2, 0.5, 3e-4 / g["lr"]) for g in opt.param_groups])
    lrs = []
    for _ in range(8):
        opt.step()
        sched.step()
        lrs.append([round(g["lr"], 8) for g in opt.param_groups])
    assert [a for a, _ in lrs] == [1e-3, 5e-4, 5e-4, 3e-4, 3e-4, 3e-4, 3e-4, 3e-4]
    assert lrs[-1][1] == pytest.approx(1e-2 / 16)


def test_meta_load_from_tf_snapshot_then_test_load(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    mod = _script()
    files = tf_weights()
    pre = save(tmp_path / "pretrain", {"weights": files["weights"]}, "_100")
    save(pre, {"weights": files["weights"]}, "_200")
    calls: list[dict[str, Any]] = []
    real_run = mod.run

    def spy(*a: Any, **kw: Any) -> Any:
        calls.append(kw)
        return real_run(*a, **kw)

    monkeypatch.setattr(mod, "run", spy)
    out = tmp_path / "meta"
    res = mod.main(["--phase", "META_LOAD", *TINY, "--init_weights", str(pre), "--PRE_ITER",
                    "200", "--MAX_ITER", "3", "--LR_DROP_STEP", "1", "--META_LR", "0.001",
                    "--META_LR_MIN", "0.0003", "--SAVE_STEP", "2", "--UPDATE_NUM", "1",
                    "--META_BATCH_SIZE", "1", "--test_update_step", "1", "--train_query", "1",
                    "--out-dir", str(out)])
    assert calls[0]["checkpoint_every"] == 2 and res["test"]["episodes"] == 2
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["variant"], cfg["model"], cfg["model_kwargs"]) == (
        "mtl_tf", "mtl_resnet12", {"channels": list(NARROW)})
    assert cfg["pretrained"] == str(pre / "weights_200.npy") and cfg["lr_min"] == 0.0003
    ckpt = load_checkpoint(out / "last.pt")
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == pytest.approx([3e-4, 3e-4])
    kernel = torch.from_numpy(files["weights"]["block2_conv3"]).permute(3, 2, 0, 1)
    assert torch.equal(ckpt["model"]["model.layer2.conv3.weight"], kernel)  # frozen, the file's

    down = save(tmp_path / "download_weights", files)
    res = mod.main(["--phase", "TEST_LOAD", *TINY, "--eval_weights", str(down),
                    "--update_step", "1"])
    assert res["test"]["episodes"] == 2
    assert "original mtl_tf weights, mtl_resnet12" in capsys.readouterr().out
    # META_LOAD of the released folder starts, as the TF code, from weights.npy alone
    p = mod.parser()
    args = p.parse_args(["--phase", "META_LOAD", *TINY, "--init_weights", str(down)])
    mod.check_args(p, args)
    cfg = mod.config(args)
    assert (cfg.pretrained_parts, cfg.variant) == ("body", "mtl_tf")
    model: Any = get_method("mtl").build(cfg).model
    bias = torch.from_numpy(files["weights"]["block1_bias2"])
    assert torch.equal(model.layer1.conv2.bias, bias)  # not ss_weights' trained bias
    assert bool((model.layer1.conv2.scale == 1).all())


def test_tiered_imagenet_in_mtl_folders(tmp_path: Path) -> None:
    root = tmp_path / "tiered"
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        fx.mini_folders(root / "tiered_imagenet", split, [f"n0{split}{i}" for i in range(n)])
    train = TieredImageNet(root, split="train")
    assert (train.format, len(train.classes), len(train)) == ("folders", 3, 9)
    test = TieredImageNet(root / "tiered_imagenet", split="test", format="folders")
    assert test.classes == ["n0test0", "n0test1"]
    mod = _script()
    p = mod.parser()
    base = root / "tiered_imagenet"
    args = p.parse_args(["--phase", "pre", "--dataset", "TieredImageNet",
                         "--META_TRA_DIR", str(base / "train"), "--META_VAL_DIR",
                         str(base / "val"), "--META_TES_DIR", str(base / "test")])
    mod.check_args(p, args)
    cfg = mod.config(args)
    assert (cfg.dataset, cfg.root) == ("tieredimagenet", str(base))
