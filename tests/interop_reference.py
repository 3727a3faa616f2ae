"""Key-seeded weights for the interop tests, the writer of the MTL reference outputs, and
checkpoint files in Meta-Baseline's ``save_obj`` layout.

Every value of a checkpoint written by these tests is a function of its key name and its
position only (splitmix64 of ``crc32(key)`` and the index, integer arithmetic, so the same on
every platform and every numpy/torch version), scaled by what the key holds: batch-norm
variances in ``[0.5, 1.5)``, scale factors around 1, He-uniform convolution kernels.

Run as a script, it writes ``tests/fixtures/mtl_pytorch_reference.json``: the outputs of the
*original* networks of ``yaoyao-liu/meta-transfer-learning`` (``pytorch/models``) with such
weights, in float64 and eval mode. It imports the original code from a checkout and copies
none of it::

    git clone https://github.com/yaoyao-liu/meta-transfer-learning /tmp/mtl
    git -C /tmp/mtl checkout 7f71fdd
    python tests/interop_reference.py --original /tmp/mtl/pytorch

``tests/test_interop_mtl.py`` rebuilds the same checkpoints from its own list of the original
key names, converts them and compares its outputs with the file's.

For ``yinboc/few-shot-meta-baseline`` and GDA (``zhiweihu1103/Logit-Distillation-GDA``, which
keeps Meta-Baseline's training scripts), :func:`save_obj` builds the dict their
``train_classifier.py`` / ``train_meta.py`` pass to ``torch.save``; :func:`fill`,
:func:`probe`, :func:`random_state`, :func:`reference` and :func:`max_diff` are the weights,
input and comparison ``tests/test_interop_meta_baseline.py`` and ``tests/test_interop_gda.py``
check the converted networks with.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "mtl_pytorch_reference.json"
ORIGINAL_COMMIT = "7f71fdd"
IMAGES = (2, 3, 80, 80)
#: the embedding coordinates the fixture keeps (with each image's sum and sum of squares)
KEPT = tuple(range(0, 640, 20))


def uniform(key: str, n: int) -> np.ndarray:
    """``n`` float64 values in ``[0, 1)`` determined by ``key`` (splitmix64, exact integers)."""
    seed = np.uint64(zlib.crc32(key.encode("utf-8")))
    with np.errstate(over="ignore"):
        z = seed + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def value(key: str, shape: Sequence[int]) -> torch.Tensor:
    """The float64 tensor of ``shape`` that ``key`` gets (see the module docstring)."""
    n = int(np.prod(shape)) if len(shape) else 1
    u = uniform(key, n)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return torch.tensor(7, dtype=torch.long)
    if leaf == "running_var" or leaf in ("mtl_weight",) or (len(shape) == 1 and leaf == "weight"):
        v = 0.5 + u
    elif len(shape) >= 2 and leaf not in ("fc1_w",) and not leaf.startswith("vars"):
        fan_in = int(np.prod(shape[1:]))
        v = (2 * u - 1) * math.sqrt(6.0 / fan_in)
    elif len(shape) >= 2:
        v = (2 * u - 1) * math.sqrt(3.0 / shape[1])
    else:
        v = 0.2 * (u - 0.5)
    return torch.from_numpy(v.reshape(tuple(shape))).clone()


def keyed_state(shapes: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """``{key: value(key, shape)}``."""
    return {k: value(k, s) for k, s in shapes.items()}


def keys_digest(shapes: Mapping[str, Sequence[int]]) -> str:
    """sha256 of the sorted ``key:shape`` lines: one string naming a checkpoint's layout."""
    lines = sorted(f"{k}:{'x'.join(str(int(d)) for d in s)}" for k, s in shapes.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def images() -> torch.Tensor:
    """The two float64 80-px test images."""
    return torch.from_numpy(uniform("input", int(np.prod(IMAGES))).reshape(IMAGES) * 2 - 1)


def summary(emb: torch.Tensor) -> dict[str, Any]:
    """What the fixture keeps of embeddings ``[B, 640]``."""
    return {"kept": [[float(v) for v in row[list(KEPT)]] for row in emb],
            "sum": [float(v) for v in emb.sum(1)], "sumsq": [float(v) for v in (emb**2).sum(1)]}


# --- Meta-Baseline's save_obj layout (also GDA's few-shot code) --------------------------------
def fill(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Deterministic float64 values for a state dict, by sorted key position.

    The values the originals' outputs recorded in the interop tests were computed with.
    """
    out = {}
    for i, k in enumerate(sorted(state)):
        v = state[k]
        if not v.is_floating_point():
            out[k] = v
            continue
        t = torch.sin(torch.arange(v.numel(), dtype=torch.float64) * 0.37 + i).reshape(v.shape)
        out[k] = 1.0 + 0.5 * t.abs() if k.endswith("running_var") else 0.1 * t
    return out


def probe() -> Tensor:
    """The float64 input ``[2, 3, 16, 16]`` the originals' outputs were recorded on."""
    return torch.cos(torch.arange(2 * 3 * 16 * 16, dtype=torch.float64) * 0.11).reshape(
        2, 3, 16, 16)


def random_state(net: nn.Module, seed: int) -> dict[str, Tensor]:
    """float32 values (exact in float64) with non-trivial batch-norm statistics."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in net.state_dict().items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = 0.5 + torch.rand(v.shape, generator=g)
        else:
            out[k] = 0.2 * torch.randn(v.shape, generator=g)
    return out


def reference(arch: str, state: Mapping[str, Tensor], **kwargs: Any) -> nn.Module:
    """metakd's ``arch`` with ``state`` loaded, in float64 ``eval()`` mode."""
    import metakd.nn as mnn

    net = mnn.create(arch, **kwargs)
    net.load_state_dict(state)
    return net.double().eval()


def max_diff(a: nn.Module, b: nn.Module, x: Tensor) -> float:
    """The largest absolute difference of two networks' float64 ``eval()`` outputs on ``x``."""
    with torch.no_grad():
        return float((a.double().eval()(x) - b.double().eval()(x)).abs().max())


def optimizer_sd() -> dict[str, Any]:
    """The state dict of an SGD optimiser (momentum, weight decay) after one step."""
    p = nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=5e-4)
    p.grad = torch.ones(3)
    opt.step()
    return opt.state_dict()


def save_obj(kind: str, encoder: str, model_sd: Mapping[str, Tensor], *, file: str,
             config: Mapping[str, Any], epoch: int, **model_args: Any) -> dict[str, Any]:
    """The dict Meta-Baseline's ``train_classifier.py`` / ``train_meta.py`` save.

    Args:
        kind: ``model`` of the file: ``"classifier"`` or ``"meta-baseline"``.
        encoder: the encoder's name in the original's registry.
        model_sd: ``model.state_dict()`` in the original's key names.
        file: the script path the original records.
        config: the YAML entries of ``config`` besides ``train_dataset``, ``model`` and
            ``model_args``.
        epoch: ``training["epoch"]``.
        **model_args: ``model_args`` besides ``encoder`` and ``encoder_args``.
    """
    args = {"encoder": encoder, "encoder_args": {}, **model_args}
    return {"file": file,
            "config": {"train_dataset": "mini-imagenet", "model": kind, "model_args": args,
                       **config},
            "model": kind, "model_args": args, "model_sd": model_sd,
            "training": {"epoch": epoch, "optimizer": "sgd",
                         "optimizer_args": {"lr": 0.001, "weight_decay": 5e-4},
                         "optimizer_sd": optimizer_sd()}}


def _write(original: str) -> None:
    import sys
    from types import SimpleNamespace

    sys.path.insert(0, original)
    from models.mtl import MtlLearner  # the original's classes, imported from the checkout

    torch.set_default_dtype(torch.float64)
    x = images()
    out: dict[str, Any] = {"source": {"repo": "yaoyao-liu/meta-transfer-learning",
                                      "commit": ORIGINAL_COMMIT,
                                      "files": ["pytorch/models/mtl.py",
                                                "pytorch/models/resnet_mtl.py",
                                                "pytorch/models/conv2d_mtl.py"]},
                           "torch": torch.__version__, "images": list(IMAGES), "kept": list(KEPT)}
    args = SimpleNamespace(way=5, base_lr=0.01, update_step=1)
    pre = MtlLearner(args, mode="pre", num_cls=64)
    pre_shapes = {k: tuple(v.shape) for k, v in pre.encoder.state_dict().items()}
    pre.encoder.load_state_dict(keyed_state(pre_shapes))
    pre.eval()
    with torch.no_grad():
        out["pre"] = {"keys": keys_digest(pre_shapes), "num_keys": len(pre_shapes),
                      **summary(pre.encoder(x))}
    meta = MtlLearner(args, mode="meta")
    meta_shapes = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    state = keyed_state(meta_shapes)
    state["base_learner.vars.0"] = state["base_learner.fc1_w"]
    state["base_learner.vars.1"] = state["base_learner.fc1_b"]
    meta.load_state_dict(state)
    meta.eval()
    with torch.no_grad():
        emb = meta.encoder(x)
        logits = meta.base_learner(emb)
    out["meta"] = {"keys": keys_digest(meta_shapes), "num_keys": len(meta_shapes),
                   **summary(emb), "logits": [[float(v) for v in row] for row in logits],
                   "trainable": sorted(n for n, p in meta.named_parameters() if p.requires_grad)}
    FIXTURE.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--original", required=True,
                   help="the pytorch/ folder of a meta-transfer-learning checkout")
    _write(p.parse_args().original)
