"""Meta-Baseline's checkpoints (yinboc/few-shot-meta-baseline) in metakd.

Reference: ``yinboc/few-shot-meta-baseline`` at commit :data:`MB_COMMIT`. How the hard-coded
numbers were made, once, outside the repository: ``models/{models,resnet12,resnet}.py`` were
imported as a scratch package; ``resnet12`` and ``resnet12-wide`` were built and their
parameters counted (:data:`MB_PARAMS`; ``resnet18`` is torchvision's, 11,176,512); the state
dict of ``resnet12`` was filled by :func:`interop_reference.fill`, the network run in float64
``eval()`` mode on :func:`interop_reference.probe`, and the sum of its ``[2, 512]`` output
recorded (:data:`MB_OUTPUT_SUM`). The fixtures are written in the layout of its
``train_classifier.py`` / ``train_meta.py`` ``save_obj`` (the writer, shared with
``tests/test_interop_gda.py``, is in ``tests/interop_reference.py``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import interop_reference
import pytest
import torch
from interop_reference import fill, max_diff, probe, reference
from torch import Tensor, nn

import metakd.nn as mnn
from metakd import interop
from metakd.distill import load_teacher
from metakd.engine import load_checkpoint
from metakd.engine.errors import InputError
from metakd.interop import meta_baseline

MB_COMMIT = "779fae39dad3537e7c801049c858923e2a352dfe"
MB_PARAMS = {"resnet12": 7_996_800, "resnet12-wide": 12_424_320}
MB_OUTPUT_SUM = 17.901522492856373


def random_state(net: nn.Module) -> dict[str, Tensor]:
    return interop_reference.random_state(net, seed=2)


def save_obj(kind: str, encoder: str, model_sd: dict[str, Tensor],
             **model_args: Any) -> dict[str, Any]:
    """Meta-Baseline's ``save_obj`` (train_classifier.py / train_meta.py)."""
    return interop_reference.save_obj(
        kind, encoder, model_sd, file="/home/u/few-shot-meta-baseline/train_meta.py",
        config={"load_encoder": "./save/classifier_mini-imagenet_resnet12/epoch-last.pth",
                "n_way": 5, "n_shot": 1, "_parallel": True, "_gpu": "0,1"},
        epoch=17, **model_args)


def encoder_sd(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {"encoder." + k: v for k, v in state.items() if not k.startswith("head.")}


def test_classifier_baseline_linear(tmp_path: Path) -> None:
    state = random_state(mnn.create("resnet12", num_classes=64))
    model_sd = encoder_sd(state) | {"classifier.linear.weight": state["head.weight"],
                                    "classifier.linear.bias": state["head.bias"]}
    torch.save(save_obj("classifier", "resnet12", model_sd, classifier="linear-classifier",
                        classifier_args={"n_classes": 64}), tmp_path / "max-va.pth")
    teacher = load_teacher(tmp_path / "max-va.pth")
    assert teacher.out_features == 64 and teacher.layer1.pool
    assert max_diff(teacher, reference("resnet12", state, num_classes=64), probe()) < 1e-9
    c = interop.read(load_checkpoint(tmp_path / "max-va.pth"))
    assert c is not None and (c.format, c.arch, c.model_kwargs, c.extras["epoch"]) == (
        "meta_baseline", "resnet12", {"num_classes": 64}, 17)


def test_classifier_baseline_cosine(tmp_path: Path) -> None:
    state = random_state(mnn.create("resnet12", num_classes=64, head="cosine"))
    state["head.temperature"] = torch.tensor(7.25)
    model_sd = encoder_sd(state) | {"classifier.proto": state["head.weight"],
                                    "classifier.temp": state["head.temperature"]}
    torch.save(save_obj("classifier", "resnet12", model_sd, classifier="nn-classifier",
                        classifier_args={"n_classes": 64}), tmp_path / "epoch-last.pth")
    teacher = load_teacher(tmp_path / "epoch-last.pth")
    ref = reference("resnet12", state, num_classes=64, head="cosine")
    assert max_diff(teacher, ref, probe()) < 1e-9
    assert float(teacher.head.temperature) == 7.25


def test_meta_baseline_wide_with_its_temperature(tmp_path: Path) -> None:
    state = random_state(mnn.create("resnet12", num_classes=0, wide=True))
    model_sd = encoder_sd(state) | {"temp": torch.tensor(12.5)}
    torch.save(save_obj("meta-baseline", "resnet12-wide", model_sd), tmp_path / "max-va.pth")
    teacher = load_teacher(tmp_path / "max-va.pth")
    assert sum(p.numel() for p in teacher.parameters()) == MB_PARAMS["resnet12-wide"]
    ref = reference("resnet12", state, num_classes=0, wide=True)
    assert max_diff(teacher, ref, probe()[:1]) < 1e-9
    c = interop.read(load_checkpoint(tmp_path / "max-va.pth"))
    assert c is not None and (c.arch, c.model_kwargs, c.extras["temperature"],
                              c.extras["metric"]) == (
        "resnet12", {"wide": True, "num_classes": 0}, 12.5, "cos")


def test_a_meta_baseline_teacher_brings_its_temperature_and_metric(tmp_path: Path) -> None:
    from metakd.recipes import MetaBaselineConfig
    from metakd.recipes.baseline_parts import _load_meta_teacher

    state = random_state(mnn.create("resnet12", num_classes=0))
    torch.save(save_obj("meta-baseline", "resnet12", encoder_sd(state) | {
        "temp": torch.tensor(13.0)}), tmp_path / "cos.pth")
    torch.save(save_obj("meta-baseline", "resnet12", encoder_sd(state), method="sqr", temp=0.5,
                        temp_learnable=False), tmp_path / "sqr.pth")
    state64 = random_state(mnn.create("resnet12", num_classes=64))
    torch.save(save_obj("classifier", "resnet12", encoder_sd(state64) | {
        "classifier.linear.weight": state64["head.weight"],
        "classifier.linear.bias": state64["head.bias"]}, classifier="linear-classifier",
        classifier_args={"n_classes": 64}), tmp_path / "cls.pth")
    got = {}
    for name in ("cos", "sqr", "cls"):
        t = _load_meta_teacher(MetaBaselineConfig(teacher=str(tmp_path / f"{name}.pth")))
        got[name] = (float(t.temperature), t.metric)
    assert got == {"cos": (13.0, "cos"), "sqr": (0.5, "sqr"), "cls": (10.0, "cos")}
    fixed = _load_meta_teacher(MetaBaselineConfig(teacher=str(tmp_path / "cos.pth"),
                                                  teacher_temperature=10.0))
    assert float(fixed.temperature) == 10.0  # the original's behaviour, when asked for


def test_metakd_resnet12_computes_meta_baselines_function() -> None:
    net = mnn.create("resnet12", num_classes=0).double().eval()
    assert sum(p.numel() for p in net.parameters()) == MB_PARAMS["resnet12"]
    net.load_state_dict(fill(net.state_dict()))
    with torch.no_grad():
        out = net(probe())
    assert abs(float(out.sum()) - MB_OUTPUT_SUM) < 1e-9 * MB_OUTPUT_SUM


@pytest.mark.parametrize(("encoder", "arch", "match"), [
    ("resnet12", "resnet12_bottle", "load it as arch='resnet12', not 'resnet12_bottle'"),
    ("resnet18", None, "torchvision ResNet-18"),
    ("convnet4", None, "not converted"),
    ("resnet12", "resnet18", "load it as arch='resnet12', not 'resnet18'"),
])
def test_refusals_name_what_differs(tmp_path: Path, encoder: str, arch: str | None,
                                    match: str) -> None:
    state = random_state(mnn.create("resnet12", num_classes=0))
    torch.save(save_obj("meta-baseline", encoder, encoder_sd(state)), tmp_path / "m.pth")
    with pytest.raises(InputError) as e:
        load_teacher(tmp_path / "m.pth", arch=arch)
    assert match in str(e.value) and "\n" not in str(e.value)


def test_encoder_args_the_original_does_not_take_are_refused() -> None:
    obj = save_obj("meta-baseline", "resnet12", {"encoder.x": torch.zeros(1)})
    obj["model_args"]["encoder_args"] = {"drop_rate": 0.1}
    with pytest.raises(InputError, match="takes no encoder_args"):
        meta_baseline.convert(obj)


def test_the_docs_table_is_the_mapping() -> None:
    text = (Path(__file__).parents[1] / "docs" / "originals" / "meta-baseline.md").read_text()
    text = text.split("## Encoders", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([\w.-]+)` \| `(\w+)(\(wide=True\))?` \|", text, re.M)
    assert {n: (a, bool(w)) for n, a, w in rows} == {
        n: (e.arch, bool(e.kwargs.get("wide"))) for n, e in meta_baseline.ENCODERS.items()}
