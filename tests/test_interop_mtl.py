"""Meta-Transfer Learning's own checkpoints (metakd.interop.mtl) give the original's outputs.

PyTorch code (``yaoyao-liu/meta-transfer-learning`` at 7f71fdd, ``pytorch/``): the pre-training
phase's ``max_acc.pth`` (the encoder's state dict) and the meta phase's (the whole learner,
``Conv2dMtl`` scale and shift, the base learner's FC) are built here in the original layout,
key by key from the architecture (the key list is checked against the digest of the original's
own ``state_dict()``), with key-seeded weights (``tests/interop_reference.py``), converted, and
run in float64: the embeddings and logits equal those of the original networks stored in
``tests/fixtures/mtl_pytorch_reference.json`` (written by that script from the original code)
to 1e-9 relative, and the meta phase trains the same parameters as the original.

TF code (``tensorflow/``): ``weights.npy`` / ``ss_weights.npy`` / ``fc_weights.npy`` (dicts of
arrays by TF variable name) of a narrow ResNet-12, read with the restricted unpickler, give the
outputs of a NumPy NHWC computation of the TF graph (SAME convolutions on HWIO kernels, the
scaling tiled over the kernel, the trained bias in place of the pre-trained one, batch norm
with batch statistics, eps 1e-3 and no β, leaky ReLU 0.1, 2×2 max pool, 5×5 average pool).
Each comparison is shown to fail once one tensor is perturbed.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest
import torch
from interop_reference import FIXTURE, KEPT, images, keyed_state, keys_digest, value

import metakd.nn as mnn
from metakd import interop
from metakd.distill import load_teacher
from metakd.engine.errors import InputError
from metakd.interop.mtl import load_npy_dict, read_checkpoint

REF = json.loads(FIXTURE.read_text())
ORIG_WIDTHS = (160, 320, 640)


def original_shapes(meta: bool, layers=(4, 4, 4), widths=ORIG_WIDTHS, ways: int = 5,
                    channels: int = 3) -> dict[str, tuple[int, ...]]:
    """The original's state-dict keys and shapes, from the architecture alone."""
    out: dict[str, tuple[int, ...]] = {}

    def conv(name: str, o: int, i: int, k: int, bias: bool = False) -> None:
        out[f"{name}.weight"] = (o, i, k, k)
        if bias:
            out[f"{name}.bias"] = (o,)
        if meta:
            out[f"{name}.mtl_weight"] = (o, i, 1, 1)
            if bias:
                out[f"{name}.mtl_bias"] = (o,)

    def bn(name: str, c: int) -> None:
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            out[f"{name}.{leaf}"] = (c,)
        out[f"{name}.num_batches_tracked"] = ()

    stem = widths[0] // 2
    conv("conv1", stem, channels, 3, bias=True)
    bn("bn1", stem)
    c_in = stem
    for s, (n, c) in enumerate(zip(layers, widths), start=1):
        for b in range(n):
            conv(f"layer{s}.{b}.conv1", c, c_in if b == 0 else c, 3)
            bn(f"layer{s}.{b}.bn1", c)
            conv(f"layer{s}.{b}.conv2", c, c, 3)
            bn(f"layer{s}.{b}.bn2", c)
            if b == 0:
                conv(f"layer{s}.{b}.downsample.0", c, c_in, 1)
                bn(f"layer{s}.{b}.downsample.1", c)
        c_in = c
    if meta:
        out = {f"encoder.{k}": v for k, v in out.items()}
        out.update({"base_learner.fc1_w": (ways, widths[-1]), "base_learner.fc1_b": (ways,),
                    "base_learner.vars.0": (ways, widths[-1]), "base_learner.vars.1": (ways,)})
    return out


def original_file(meta: bool, **kw) -> dict[str, dict[str, torch.Tensor]]:
    shapes = original_shapes(meta, **kw)
    state = keyed_state(shapes)
    if meta:
        state["base_learner.vars.0"] = state["base_learner.fc1_w"]
        state["base_learner.vars.1"] = state["base_learner.fc1_b"]
    return {"params": state}


def model_of(obj: Any) -> Any:
    got = interop.read(obj)
    assert got is not None and got.format == "mtl_pytorch" and got.arch == "mtl_resnet25"
    with torch.device("meta"):  # no initialisation: every value comes from the file
        net = mnn.create(got.arch, **got.model_kwargs)
    net = net.to_empty(device="cpu").double()
    net.load_state_dict(got.state)
    return net.eval()


def rel(a: torch.Tensor, b) -> float:
    b = torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max())


def compare(emb: torch.Tensor, ref: dict) -> float:
    """The largest relative difference to what the fixture kept of the embeddings."""
    return max(rel(emb[:, list(KEPT)], ref["kept"]), rel(emb.sum(1), ref["sum"]),
               rel((emb**2).sum(1), ref["sumsq"]))


def test_key_lists_are_the_originals() -> None:
    assert keys_digest(original_shapes(False)) == REF["pre"]["keys"]
    assert keys_digest(original_shapes(True)) == REF["meta"]["keys"]
    assert REF["source"]["commit"] == "7f71fdd"


def test_meta_file_computes_the_original_outputs() -> None:
    x = images()
    obj = original_file(True)
    with torch.no_grad():
        net = model_of(obj)
        assert compare(net.features(x), REF["meta"]) < 1e-9
        assert rel(net(x), REF["meta"]["logits"]) < 1e-9
        # the same comparison fails once one tensor of the file is changed
        obj["params"]["encoder.layer3.3.conv2.mtl_weight"][0, 0] += 1e-3
        got = interop.read(obj)
        assert got is not None
        net.load_state_dict(got.state)
        assert rel(net(x[:1]), REF["meta"]["logits"][:1]) > 1e-9


@pytest.mark.slow
def test_pre_file_computes_the_original_outputs() -> None:
    with torch.no_grad():
        net = model_of(original_file(False))
        assert net.out_features == 640  # the pre-training file has no classifier
        assert compare(net(images()), REF["pre"]) < 1e-9


def test_meta_phase_trains_what_the_original_trains() -> None:
    net = mnn.create("mtl_resnet25", channels=(8, 16, 32))  # the names do not depend on widths
    names = mnn.mtl_preset(net, "mtl_pytorch")
    assert names == sorted(n for n, p in net.named_parameters() if p.requires_grad)
    renamed = sorted(
        {"head.weight": "base_learner.fc1_w", "head.bias": "base_learner.fc1_b"}.get(n)
        or "encoder." + n.replace(".scale", ".mtl_weight").replace(".shift", ".mtl_bias")
        for n in names)
    assert renamed == REF["meta"]["trainable"]


def test_files_through_load_teacher_and_refusals(tmp_path) -> None:
    narrow = {"layers": (3, 3, 3), "widths": (8, 16, 32)}
    path = tmp_path / "max_acc.pth"
    torch.save(original_file(True, **narrow), path)
    teacher: Any = load_teacher(path)
    assert type(teacher).__name__ == "MTLResNet25" and teacher.layers == (3, 3, 3)
    assert type(teacher.layer1[0].downsample[0]).__name__ == "ScaleShiftConv2d"
    assert teacher.head.out_features == 5 and not teacher.training
    meta = read_checkpoint(path)
    assert meta.extras["phase"] == "meta" and meta.model_kwargs["preset"] == "mtl_pytorch"
    pre = original_file(False, **narrow)
    pre["params"].update({"pre_fc.0.weight": torch.zeros(1000, 32)})  # dropped, as the original
    got = interop.read(pre)
    assert got is not None and got.extras["dropped"] == ["pre_fc"]
    assert "pre_fc.0.weight" not in got.state
    for bad, match in ((lambda: interop.read(pre, "mtl_resnet12"), "ResNet-25"),
                       (lambda: load_teacher(path, arch="mtl_resnet12"), "ResNet-25"),
                       (lambda: read_checkpoint(tmp_path / "nope.pth"), "does not exist")):
        with pytest.raises(InputError, match=match) as e:
            bad()
        assert "\n" not in str(e.value)


def test_example_meta_phase_and_test_load_from_pytorch_files(tmp_path) -> None:
    import importlib
    import sys

    folder = str(FIXTURE.parents[2] / "examples" / "mtl")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    main = importlib.import_module("main").main
    import fixtures_formats as fx

    for split in ("train", "val", "test"):  # a 5-class miniImageNet in MTL's folder layout
        fx.mini_folders(tmp_path / "mini", split, [f"n{split}{i}" for i in range(5)])
    narrow = {"layers": (1, 1, 1), "widths": (8, 16, 32)}
    torch.save(original_file(False, **narrow), tmp_path / "pre.pth")
    torch.save(original_file(True, **narrow), tmp_path / "meta.pth")
    tiny = ["--dataset", "MiniImageNet", "--dataset_dir", str(tmp_path / "mini"), "--test_tasks",
            "2", "--val_tasks", "2", "--val_query", "1", "--train_query", "1", "--update_step",
            "1"]
    res = main(["--phase", "meta", *tiny, "--init_weights", str(tmp_path / "pre.pth"),
                "--max_epoch", "1", "--num_batch", "1", "--out-dir", str(tmp_path / "run")])
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (cfg["model"], cfg["model_kwargs"], cfg["image_size"], cfg["variant"]) == (
        "mtl_resnet25", {"layers": [1, 1, 1], "channels": [8, 16, 32]}, 80, "mtl_pytorch")
    assert res["test"]["episodes"] == 2
    res = main(["--phase", "test_load", *tiny, "--eval_weights", str(tmp_path / "meta.pth")])
    assert res["test"]["episodes"] == 2


# --- the TF code's .npy weights ---------------------------------------------------------------

NARROW = (4, 8, 8, 16)


def tf_files(ways: int = 5) -> dict[str, dict[str, np.ndarray]]:
    """A narrow TF ResNet-12's three weight dicts, by the TF variable names, float64."""
    weights: dict[str, np.ndarray] = {}
    ss: dict[str, np.ndarray] = {}
    c_in = 3
    for b, c in enumerate(NARROW, start=1):
        for k in (1, 2, 3):
            i = c_in if k == 1 else c
            weights[f"block{b}_conv{k}"] = value(f"w{b}{k}", (3, 3, i, c)).numpy() * 3
            weights[f"block{b}_bias{k}"] = value(f"b{b}{k}", (c,)).numpy()
            ss[f"block{b}_conv{k}"] = 0.5 + value(f"s{b}{k}.running_var", (1, 1, i, c)).numpy()
            ss[f"block{b}_bias{k}"] = value(f"sb{b}{k}", (c,)).numpy()
        weights[f"block{b}_conv_res"] = value(f"r{b}", (1, 1, c_in, c)).numpy() * 3
        c_in = c
    weights["w5"], weights["b5"] = np.ones((NARROW[-1], 64)), np.zeros(64)  # never trained
    fc = {"w5": value("w5", (NARROW[-1], ways)).numpy() * 3, "b5": value("b5", (ways,)).numpy()}
    return {"weights": weights, "ss_weights": ss, "fc_weights": fc}


def tf_forward(files: dict[str, dict[str, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """The TF graph's forward in NumPy, NHWC (tensorflow/models/resnet12.py, utils/misc.py)."""
    w, ss, fc = files["weights"], files.get("ss_weights"), files.get("fc_weights")

    def conv(h: np.ndarray, k: np.ndarray) -> np.ndarray:  # SAME, stride 1, HWIO
        p = k.shape[0] // 2
        h = np.pad(h, ((0, 0), (p, p), (p, p), (0, 0)))
        _, hh, ww, _ = h.shape
        out = np.zeros((h.shape[0], hh - 2 * p, ww - 2 * p, k.shape[3]))
        for i in range(k.shape[0]):
            for j in range(k.shape[1]):
                out = out + h[:, i:i + hh - 2 * p, j:j + ww - 2 * p, :] @ k[i, j]
        return out

    def bn_act(h: np.ndarray) -> np.ndarray:
        mean, var = h.mean((0, 1, 2)), h.var((0, 1, 2))
        h = (h - mean) / np.sqrt(var + 1e-3)
        return np.maximum(h, 0.1 * h)

    h = x
    for b in range(1, 5):
        out = h
        for k in (1, 2, 3):
            kern = w[f"block{b}_conv{k}"]
            bias = w[f"block{b}_bias{k}"]
            if ss is not None:
                kern = kern * np.tile(ss[f"block{b}_conv{k}"], (kern.shape[0], kern.shape[1], 1, 1))
                bias = ss[f"block{b}_bias{k}"]
            out = bn_act(conv(out, kern) + bias)
        out = out + conv(h, w[f"block{b}_conv_res"])
        n, hh, ww, c = out.shape
        out = out[:, :hh // 2 * 2, :ww // 2 * 2].reshape(n, hh // 2, 2, ww // 2, 2, c).max((2, 4))
        h = out
    emb = h.mean((1, 2))  # avg_pool 5x5 VALID on the 5x5 map
    return emb if fc is None else emb @ fc["w5"] + fc["b5"]


def save_tf(folder, files, suffix: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, d in files.items():
        np.save(folder / f"{name}{suffix}.npy", d)


def tf_model(path: Any, **kw: Any) -> tuple[Any, Any]:
    got = read_checkpoint(path, **kw)
    net = mnn.create(got.arch, **got.model_kwargs).double()
    net.load_state_dict(got.state)
    return net, got


def test_tf_npy_weights_compute_the_tf_outputs(tmp_path) -> None:
    x = value("img", (2, 3, 84, 84)) * 5
    files = tf_files()
    save_tf(tmp_path / "download_weights", files)
    net, got = tf_model(tmp_path / "download_weights")
    assert got.format == "mtl_tf" and got.model_kwargs["preset"] == "mtl_tf"
    assert type(net.layer1.shortcut).__name__ == "Conv2d"  # the TF code has no SS on 1x1
    ref = tf_forward(files, x.permute(0, 2, 3, 1).numpy())
    with torch.no_grad():
        assert rel(net(x), ref) < 1e-9
        # pre-training weights alone (META_LOAD): the body, no classifier
        pre = {"weights": files["weights"]}
        save_tf(tmp_path / "pre", pre, "_100")
        save_tf(tmp_path / "pre", pre, "_200")
        net_pre, got = tf_model(tmp_path / "pre", pre_iter=200)
        assert got.extras["phase"] == "pre" and net_pre.out_features == NARROW[-1]
        assert rel(net_pre(x), tf_forward(pre, x.permute(0, 2, 3, 1).numpy())) < 1e-9
        files["ss_weights"]["block3_conv2"][0, 0, 1, 2] += 1e-3
        assert rel(net(x), tf_forward(files, x.permute(0, 2, 3, 1).numpy())) > 1e-9
    with pytest.raises(InputError, match=r"snapshots: \[100, 200\]"):
        read_checkpoint(tmp_path / "pre")
    with pytest.raises(InputError, match="ResNet-12"):
        read_checkpoint(tmp_path / "download_weights", arch="mtl_resnet25")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_npy_reader_refuses_code(tmp_path) -> None:
    arr = np.empty((), dtype=object)
    arr[()] = {"block1_conv1": _Evil()}
    np.save(tmp_path / "weights.npy", arr, allow_pickle=True)
    with pytest.raises(InputError, match="refusing to unpickle") as e:
        load_npy_dict(tmp_path / "weights.npy")
    assert "\n" not in str(e.value)
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(InputError, match="plain"):
        load_npy_dict(tmp_path / "plain.npy")
