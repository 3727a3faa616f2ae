"""Key-seeded weights for the interop tests, and the writer of the MTL reference outputs.

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
