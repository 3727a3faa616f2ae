"""GDA's and W2S's checkpoints and network names in metakd.

References: GDA ``zhiweihu1103/Logit-Distillation-GDA`` at commit :data:`GDA_COMMIT` (its code
is ``GDA-code.zip``; paths below are inside it) and W2S ``ggjy/vision_weak_to_strong`` at
:data:`W2S_COMMIT`, whose ``few_shot_leaerning/models/resnet.py`` is the same file.

How the hard-coded numbers were made, once, outside the repository: the zip was unpacked;
``Few-shot Learning/models/{models,resnet}.py`` were imported as a scratch package and every
encoder its ``models`` registry holds was built, its parameters counted and its state-dict
entries counted (:data:`GDA_ENCODERS`); the state dict of ``resnet12``, ``resnet12_bottle`` and
``resnet36_bottle`` was filled by :func:`interop_reference.fill`, the network put in float64
``eval()`` mode and run on :func:`interop_reference.probe` (:data:`GDA_OUTPUT_SUM`: the sum of
its ``[2, 512]`` output).
``Image Classification/custom_model/cifar/*.py`` were imported with a stub of timm's
``register_model``; each registered network was built with ``num_classes=100`` and its
parameters and the sha256 of its sorted ``key:shape`` lines recorded (:data:`GDA_CIFAR`).

The fixtures below are written in the originals' exact layouts: Meta-Baseline's ``save_obj``
(kept by GDA's ``train_classifier.py`` / ``train_meta.py``; the writer is shared with
``tests/test_interop_meta_baseline.py`` in ``tests/interop_reference.py``) and timm 0.6's
``CheckpointSaver`` dict with a real ``argparse.Namespace``.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path
from typing import Any

import interop_reference
import pytest
import torch
from interop_reference import fill, max_diff, optimizer_sd, probe, reference
from torch import Tensor, nn

import metakd.nn as mnn
from metakd import interop
from metakd.distill import load_teacher
from metakd.engine import load_checkpoint
from metakd.engine.errors import InputError
from metakd.interop import gda
from metakd.recipes.baseline_options import from_original

GDA_COMMIT = "31d4153225af42bb1b21278589d18c9e4f24ae13"
W2S_COMMIT = "c020783dd87971afeeffca7620780a2ec60238da"

# encoder name in GDA's registry (Few-shot Learning/models/resnet.py): (parameters,
# state-dict entries)
GDA_ENCODERS: dict[str, tuple[int, int]] = {
    "resnet12": (7_996_800, 96),
    "resnet12-wide": (12_424_320, 96),
    "resnet12_bottle": (7_996_800, 96),
    "resnet18_bottle": (10_210_944, 132),
    "resnet36_bottle": (23_159_040, 240),
    "resnet50_bottle": (32_565_120, 312),
}
# sum of the original's float64 output [2, 512] on probe() with fill()ed weights
GDA_OUTPUT_SUM = {"resnet12": 16.226193137026662, "resnet12_bottle": 17.901522492856373,
                  "resnet36_bottle": 53.980386099856254}
PMAML_RESNET18 = 11_168_832  # metakd's resnet18 (PMAML's BasicBlock ResNet-18) at num_classes=0

# timm name in GDA's Image Classification/custom_model/cifar: (params at 100 classes, sha256[:16]
# of the sorted "key:shape" lines)
GDA_CIFAR: dict[str, tuple[int, str]] = {
    "cifar_resnet50": (23_705_252, "fc8911e14af586b3"),
    "mobilenetv2": (812_836, "b97e51549e7cf124"),
    "resnet110": (1_736_564, "78866feb569405a9"), "resnet20": (278_324, "9ae23db380f6609a"),
    "resnet32": (472_756, "afdb21d9a555c406"), "resnet32x4": (7_433_860, "d5c86d1312f03cca"),
    "resnet56": (861_620, "aeeb07ae8bb76990"), "resnet8": (83_892, "ba877b25108cf0b2"),
    "resnet80": (1_250_484, "2c0ddc2af5e18f4e"), "resnet8x4": (1_233_540, "1b2c5a0604a6274e"),
    "shufflenetv1": (949_258, "b714b6c6e46b33bd"), "shufflenetv2": (1_355_528, "07d59692e0bad170"),
    "vgg13": (9_462_180, "40400133f578eb17"), "vgg8": (3_965_028, "3e03c7261910e824"),
    "wrn_16_1": (180_916, "94152702b8355329"), "wrn_16_2": (703_284, "af3878270cfa238e"),
    "wrn_40_1": (569_780, "923f41225b5c84b9"), "wrn_40_2": (2_255_156, "e2f6e2026dd09ff0"),
}


def random_state(net: nn.Module) -> dict[str, Tensor]:
    return interop_reference.random_state(net, seed=1)


def save_obj(kind: str, encoder: str, model_sd: dict[str, Tensor], *, config: dict[str, Any],
             **model_args: Any) -> dict[str, Any]:
    """GDA's train_classifier.py / train_meta.py ``save_obj`` (Meta-Baseline's layout)."""
    return interop_reference.save_obj(
        kind, encoder, model_sd,
        file="train_meta.py" if kind == "meta-baseline" else "train_classifier.py",
        config=config, epoch=20, **model_args)


KD_CONFIG = {"teacher_model": "meta-baseline", "teacher_load": "classifier_mini-imagenet_"
             "resnet12_bottle/max-va.pth", "teacher_model_args": {"encoder": "resnet12_bottle"},
             "kd_loss_config": {"loss_type": "kd", "loss_weight": 1.0, "temperature": 1.0}}


# --- few-shot files -----------------------------------------------------------------------------
def test_classifier_of_a_bottle_encoder_loads_and_computes_the_same(tmp_path: Path) -> None:
    enc = mnn.create("resnet18_bottle", num_classes=64)
    state = random_state(enc)
    entries = GDA_ENCODERS["resnet18_bottle"][1]
    assert len([k for k in state if not k.startswith("head.")]) == entries
    model_sd = {"encoder." + k: v for k, v in state.items() if not k.startswith("head.")}
    model_sd |= {"classifier.linear.weight": state["head.weight"],
                 "classifier.linear.bias": state["head.bias"]}
    obj = save_obj("classifier", "resnet18_bottle", model_sd, config={},
                   classifier="linear-classifier", classifier_args={"n_classes": 64})
    torch.save(obj, tmp_path / "max-va.pth")
    teacher = load_teacher(tmp_path / "max-va.pth")
    assert type(teacher).__name__ == "BottleResNet" and teacher.layers == (1, 2, 2, 1)
    assert max_diff(teacher, reference("resnet18_bottle", state, num_classes=64), probe()) < 1e-9
    c = interop.read(torch.load(tmp_path / "max-va.pth", weights_only=True))
    assert c is not None and (c.format, c.arch, c.extras["epoch"]) == ("gda_fewshot",
                                                                         "resnet18_bottle", 20)


def test_gda_resnet12_meta_baseline_loads_as_resnet12_gda(tmp_path: Path) -> None:
    enc = mnn.create("resnet12_gda", num_classes=0)
    state = random_state(enc)
    model_sd = {"encoder." + k: v for k, v in state.items()} | {"temp": torch.tensor(11.5)}
    torch.save(save_obj("meta-baseline", "resnet12", model_sd, config=KD_CONFIG),
               tmp_path / "epoch-last.pth")
    teacher = load_teacher(tmp_path / "epoch-last.pth")
    assert max_diff(teacher, reference("resnet12_gda", state, num_classes=0), probe()) < 1e-9
    c = interop.read(torch.load(tmp_path / "epoch-last.pth", weights_only=True))
    assert c is not None and (c.format, c.arch, c.extras["temperature"]) == (
        "gda_fewshot", "resnet12_gda", 11.5)
    with pytest.raises(InputError) as e:
        load_teacher(tmp_path / "epoch-last.pth", arch="resnet12")  # keys fit; function differs
    assert "\n" not in str(e.value) and "arch='resnet12_gda', not 'resnet12'" in str(e.value)


def test_gda_resnet12_and_metakd_resnet12_differ_on_the_same_weights() -> None:
    state = fill(mnn.create("resnet12", num_classes=0).state_dict())
    pooled, gda_net = reference("resnet12", state, num_classes=0), reference(
        "resnet12_gda", state, num_classes=0)
    assert set(pooled.state_dict()) == set(gda_net.state_dict())  # the keys fit both ...
    x = probe()[:1]
    assert max_diff(pooled, gda_net, x) > 1e-2  # ... the functions differ
    with torch.no_grad():
        assert gda_net.feature_map(x).shape[-2:] == (16, 16)
        assert pooled.feature_map(x).shape[-2:] == (1, 1)


def test_a_file_that_does_not_say_its_project_follows_arch(tmp_path: Path) -> None:
    """A plain Meta-Baseline-layout resnet12 file is Meta-Baseline's unless arch says GDA's."""
    state = random_state(mnn.create("resnet12", num_classes=0))
    obj = save_obj("meta-baseline", "resnet12", {"encoder." + k: v for k, v in state.items()},
                   config={})
    torch.save(obj, tmp_path / "m.pth")
    assert not gda.detect_fewshot(obj)
    assert type(load_teacher(tmp_path / "m.pth").layer1).__name__ == "ResNet12Block"
    assert load_teacher(tmp_path / "m.pth").layer1.pool is True
    assert load_teacher(tmp_path / "m.pth", arch="resnet12_gda").layer1.pool is False
    assert load_teacher(tmp_path / "m.pth", format="gda_fewshot").layer1.pool is False
    with pytest.raises(InputError, match="arch='resnet12'.*arch='resnet12_gda'"):
        load_teacher(tmp_path / "m.pth", arch="resnet36_bottle")


@pytest.mark.parametrize("name", [
    "resnet12", "resnet12_bottle", pytest.param("resnet36_bottle", marks=pytest.mark.slow)])
def test_metakd_networks_compute_the_originals_function(name: str) -> None:
    arch = gda.encoder(name).arch
    net = mnn.create(arch, num_classes=0).double().eval()
    net.load_state_dict(fill(net.state_dict()))
    with torch.no_grad():
        out = net(probe())
    assert abs(float(out.sum()) - GDA_OUTPUT_SUM[name]) < 1e-9 * abs(GDA_OUTPUT_SUM[name])


# --- --res_type names ---------------------------------------------------------------------------
RES_TYPES = {"resnet12": "resnet12", "resnet18": "resnet18_bottle", "resnet36": "resnet36_bottle",
             **{n: n for n in GDA_ENCODERS if n != "resnet12"}}


@pytest.mark.parametrize("res_type", sorted(RES_TYPES))
def test_res_type_builds_the_network_gda_builds(res_type: str) -> None:
    cfg = from_original({"train_dataset": "mini-imagenet", "model_args": {"encoder": "resnet12"}},
                        "classifier", res_type=res_type)
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        net = mnn.create(cfg.arch, num_classes=0, **cfg.model_kwargs)
        side = net.feature_map(torch.zeros(2, 3, 16, 16)).shape[-1]
    params, entries = GDA_ENCODERS[RES_TYPES[res_type]]
    assert sum(p.numel() for p in net.parameters()) == params
    assert len(net.state_dict()) == entries
    assert params != PMAML_RESNET18
    assert side == (16 if res_type in ("resnet12", "resnet12-wide") else 1)  # GDA's has no pool


def test_res_type_names_the_run_folders_and_paths_by_metakd_name() -> None:
    c = {"train_dataset": "mini-imagenet", "model_args": {"encoder": "resnet12"},
         "load_encoder": "classifier_mini-imagenet_resnet12/epoch-last.pth", **KD_CONFIG}
    c["teacher_model_args"] = {"encoder": "resnet12"}
    c["teacher_load"] = "classifier_mini-imagenet_resnet12/max-va.pth"
    cfg = from_original(c, "meta", res_type="resnet36", teacher_res_type="resnet12",
                        out_root="save")
    assert (cfg.arch, cfg.teacher_arch) == ("resnet36_bottle", "resnet12_gda")
    assert cfg.pretrained == "save/classifier_mini-imagenet_resnet36_bottle"
    assert cfg.teacher == "save/classifier_mini-imagenet_resnet12_gda"
    assert cfg.out_dir.endswith("meta-baseline-resnet36_bottle_kd-kd-resnet12_gda")
    plain = from_original({"train_dataset": "mini-imagenet", "model_args": {"encoder": "resnet12"}},
                          "classifier")
    assert plain.arch == "resnet12"  # a YAML's encoder name is Meta-Baseline's


# --- CIFAR (timm) -------------------------------------------------------------------------------
def original_cifar_state(name: str, net: nn.Module) -> dict[str, Tensor]:
    """metakd's state dict in GDA's key names (the classifier is fc / linear / classifier)."""
    inverse = {new: old for old, new in mnn.original_key_map(name).items()}
    out = {}
    for k, v in net.state_dict().items():
        for new, old in inverse.items():
            if k.startswith(new):
                k = old + k[len(new):]
        out[k] = v
    return out


def test_gda_cifar_models_are_metakds() -> None:
    for timm_name, (params, sha) in GDA_CIFAR.items():
        name = gda.CIFAR_MODELS[timm_name]
        with torch.device("meta"):
            net = mnn.create(name, num_classes=100)
        lines = "\n".join(sorted(f"{k}:{'x'.join(map(str, v.shape))}"
                                 for k, v in original_cifar_state(name, net).items()))
        assert sum(p.numel() for p in net.parameters()) == params, timm_name
        assert hashlib.sha256(lines.encode()).hexdigest()[:16] == sha, timm_name
    assert set(gda.CIFAR_MODELS) == set(GDA_CIFAR)


def saver_file(state: dict[str, Tensor], model: str, **args: Any) -> dict[str, Any]:
    """timm 0.6 CheckpointSaver._save of GDA's train.py (no EMA, no AMP)."""
    ns = argparse.Namespace(model=model, teacher="resnet56", distiller="kd", lr=0.2, epochs=240,
                            input_size=None, mean=(0.5071, 0.4865, 0.4409), num_classes=100,
                            model_ema_decay=[0.9998], device="cuda:0", **args)
    return {"epoch": 239, "arch": model, "state_dict": state, "optimizer": optimizer_sd(),
            "version": 2, "args": ns, "metric": 71.4}


def test_timm_checkpoint_saver_file_loads_without_arch(tmp_path: Path) -> None:
    net = mnn.create("resnet20", num_classes=100)
    state = random_state(net)
    net.load_state_dict(state)
    torch.save(saver_file(original_cifar_state("resnet20", net), "resnet20"),
               tmp_path / "model_best.pth.tar")
    teacher = load_teacher(tmp_path / "model_best.pth.tar")
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert max_diff(teacher, reference("resnet20", state, num_classes=100), x) < 1e-9
    obj = load_checkpoint(tmp_path / "model_best.pth.tar")
    assert isinstance(obj["args"], argparse.Namespace) and obj["args"].model == "resnet20"
    c = interop.read(obj)
    assert c is not None and (c.format, c.arch, c.extras["epoch"], c.extras["model"]) == (
        "gda_cifar", "resnet20", 239, "resnet20")


def test_args_model_other_than_arch_is_refused(tmp_path: Path) -> None:
    net = mnn.create("resnet8", num_classes=100)
    torch.save(saver_file(original_cifar_state("resnet8", net), "resnet8"), tmp_path / "c.pth")
    with pytest.raises(InputError) as e:
        load_teacher(tmp_path / "c.pth", arch="resnet20")
    assert "\n" not in str(e.value) and "'resnet8' (timm args.model)" in str(e.value)
    torch.save(saver_file(original_cifar_state("resnet8", net), "vit_base_patch16_224"),
               tmp_path / "v.pth")
    with pytest.raises(InputError, match="vit_base_patch16_224.*no metakd model"):
        load_teacher(tmp_path / "v.pth")


@pytest.mark.parametrize("layout", ["plain", "state_dict"])
def test_released_state_dicts_load(tmp_path: Path, layout: str) -> None:
    net = mnn.create("ShuffleV1", num_classes=100)
    state = random_state(net)
    net.load_state_dict(state)
    sd = original_cifar_state("ShuffleV1", net)
    assert "linear.weight" in sd  # GDA's shufflenetv1 names its classifier linear
    torch.save(sd if layout == "plain" else {"state_dict": sd}, tmp_path / "t.pth")
    teacher = load_teacher(tmp_path / "t.pth", arch="shufflenetv1", format="gda_cifar")
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    assert max_diff(teacher, reference("ShuffleV1", state, num_classes=100), x) < 1e-9
    plain = load_teacher(tmp_path / "t.pth", arch="ShuffleV1")  # no format: metakd's own reading
    assert max_diff(plain, teacher, x) == 0.0
    with pytest.raises(InputError, match="pass arch"):
        interop.read(torch.load(tmp_path / "t.pth", weights_only=True), format="gda_cifar")


_RAN: list[str] = []


def _ran() -> str:
    _RAN.append("yes")
    return "ran"


class _Payload:
    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _ran, ()


def test_only_namespace_is_let_through(tmp_path: Path) -> None:
    state = original_cifar_state("resnet8", mnn.create("resnet8", num_classes=100))
    torch.save(saver_file(state, "resnet8", output=Path("/out")), tmp_path / "path.pth")
    torch.save(saver_file(state, "resnet8") | {"hook": _Payload()}, tmp_path / "code.pth")
    for name in ("path.pth", "code.pth"):
        with pytest.raises(InputError) as e:
            load_teacher(tmp_path / name)
        assert "refused: the file pickles Python objects" in str(e.value)
        assert "\n" not in str(e.value)
    assert _RAN == []


# --- docs ---------------------------------------------------------------------------------------
def test_the_docs_tables_are_the_mappings() -> None:
    text = (Path(__file__).parents[1] / "docs" / "originals" / "gda.md").read_text()

    def table(title: str) -> dict[str, tuple[str, bool]]:
        section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
        rows = re.findall(r"^\| `([\w.-]+)` \| `(\w+)(\(wide=True\))?` \|", section, re.M)
        return {n: (a, bool(w)) for n, a, w in rows}

    assert table("Few-shot encoders") == {
        n: (e.arch, bool(e.kwargs.get("wide"))) for n, e in gda.ENCODERS.items()}
    assert table("CIFAR networks") == {n: (a, False) for n, a in gda.CIFAR_MODELS.items()}
