"""The MTL recipe: pre-training, then meta-transfer through ``run()``, on the bundled Omniglot.

One "pre" run (one epoch, no rotations) is shared by the module; the "meta" runs take a few
meta-iterations. What is checked: the frozen body stays bit-identical to the pre-trained one and
exactly the preset's parameters change, the hard-task callback's state is checkpointed, a
missing or mismatched pre-trained run is refused in one line, and a run folder reads back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from metakd.engine import load_checkpoint
from metakd.recipes import MTLConfig, load_run, run
from metakd.recipes.mtl import build
from metakd.recipes.runs import write_json

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

SMALL = dict(rotations=False, test_tasks=3, test_update_step=3)


@pytest.fixture(scope="module")
def pre_run(tmp_path_factory: pytest.TempPathFactory, one_intra_op_thread: None) -> Path:
    out = tmp_path_factory.mktemp("mtl") / "pre"
    cfg = MTLConfig.paper("omniglot", ways=5, shots=1, phase="pre", pre_epochs=1,
                          pre_batch_size=64, out_dir=str(out), **SMALL)
    res = run(cfg, progress=False)
    assert res["method"] == "mtl" and res["steps"] == 42  # 2,720 images / 64
    assert res["test"]["episodes"] == 3
    return out


def _meta(pre: Path, out: Path, **kw: Any) -> MTLConfig:
    base = dict(SMALL, phase="meta", pretrained=str(pre), steps=3, meta_batch_size=2,
                update_step=2, queries=2, out_dir=str(out))
    return MTLConfig.paper("omniglot", ways=5, shots=1, **{**base, **kw})


@pytest.mark.parametrize("variant", ["mtl_pytorch", "mtl_tf"])
def test_meta_changes_exactly_the_preset_and_keeps_the_body(pre_run: Path, tmp_path: Path,
                                                            variant: str) -> None:
    cfg = _meta(pre_run, tmp_path / variant, variant=variant)
    parts = build(cfg)
    start = {k: v.clone() for k, v in parts.learner.state_dict().items()}
    trainable = {f"model.{n}" for n, p in parts.model.named_parameters() if p.requires_grad}
    assert parts.learner.first_order is (variant == "mtl_pytorch")
    res = run(cfg, progress=False)
    assert res["steps"] == 3 and res["selected"] == "last"
    end = load_checkpoint(tmp_path / variant / "last.pt")["model"]
    changed = {k for k in start if not torch.equal(start[k], end[k])}
    assert changed == trainable
    # The frozen conv weights and biases are the pre-trained ones, bit for bit.
    pre = load_checkpoint(pre_run / "last.pt")["model"]
    convs = [k for k in pre if ".conv." in k]
    assert convs
    for k in convs:
        assert torch.equal(end[f"model.{k}"], pre[k]), k
    if variant == "mtl_tf":
        assert not any(".bn." in k for k in changed)
    else:
        assert any(".bn." in k for k in changed)


def test_hard_tasks_run_and_checkpoint_their_state(pre_run: Path, tmp_path: Path) -> None:
    cfg = _meta(pre_run, tmp_path / "ht", hard_tasks=True, steps=4)
    res = run(cfg, progress=False)
    assert res["steps"] == 4
    states = load_checkpoint(tmp_path / "ht" / "last.pt")["callbacks"]
    assert len(states) == 1 and {"generator", "pending", "last_hard"} <= set(states[0])


def test_meta_without_or_with_a_mismatched_pretrained_run_is_refused(pre_run: Path,
                                                                     tmp_path: Path) -> None:
    other = tmp_path / "conv2-pre"
    write_json(other / "config.json",
               {"method": "mtl", "phase": "pre", "model": "conv2", "dataset": "omniglot"})
    maml = tmp_path / "maml"
    write_json(maml / "config.json", {"method": "maml"})
    cases = {None: "needs pretrained", str(other): "model='conv2'",
             str(maml): "not a phase 'pre'", str(tmp_path / "none"): "no config.json"}
    for pretrained, reason in cases.items():
        with pytest.raises(ValueError, match=reason) as e:
            run(_meta(pre_run, tmp_path / "x", pretrained=pretrained), progress=False)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="px images"):
        run(_meta(pre_run, tmp_path / "x", image_size=32), progress=False)
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_load_run_evaluates_a_meta_run(pre_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "meta"
    res = run(_meta(pre_run, out), progress=False)
    r = load_run(out)
    assert r.method == "mtl" and r.config.phase == "meta"
    assert r.evaluate().mean == res["test"]["accuracy"]
    # The run's checkpoint holds the frozen body: the pre-trained folder is not needed.
    again = load_run(out, pretrained=str(tmp_path / "gone"))
    assert again.evaluate().mean == res["test"]["accuracy"]
