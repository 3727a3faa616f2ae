"""The cifar_kd recipe: configs and schedules, teachers of every kind, checkpoints, errors.

All runs use generated data in the real ``cifar-100-python`` format (100 classes, 2 train and
1 test image each) and ResNet-8s, for a few steps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import fixtures_formats as fx
import pytest
import torch

from metakd import cli
from metakd.engine import fit
from metakd.nn import create
from metakd.recipes import CifarKDConfig, get_method, load_run, run
from metakd.recipes.cifar_kd import EpochSchedule, build

PER_EPOCH = 12  # 200 training images in batches of 16


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cifar")
    fx.cifar100_python(path, fx.FINE, fx.COARSE, fx.SUPER_OF, train_per_class=2,
                       test_per_class=1)
    return path


def _cfg(root: Path, out: Path, **kw: Any) -> CifarKDConfig:
    base: dict[str, Any] = dict(root=str(root), out_dir=str(out), arch="resnet8",
                                teacher_arch="resnet8", batch_size=16, epochs=2, steps=2,
                                val_every=1000, test_queries=64)
    return CifarKDConfig.paper(**{**base, **kw})


@pytest.fixture(scope="module")
def teacher_run(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "teacher"
    res = run(_cfg(root, out, steps=3), progress=False)
    assert res["method"] == "cifar_kd" and res["steps"] == 3
    assert res["episode"] == "100-class classification"
    return out


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


# --- configs and schedules ----------------------------------------------------------------------
def test_paper_defaults_and_resolution() -> None:
    md = CifarKDConfig.paper(teacher="t.pt")
    assert (md.distill, md.recipe, md.lr, md.batch_size, md.epochs) == \
        ("mdistiller_kd", "mdistiller", 0.05, 64, 240)
    assert (md.momentum, md.weight_decay, md.nesterov, md.milestones, md.gamma) == \
        (0.9, 5e-4, False, [150, 180, 210], 0.1)
    assert md.val_every == 50_000 // 64
    assert CifarKDConfig().distill == "ce"  # no teacher: how teachers are trained
    gda = CifarKDConfig.paper(teacher="t.pt", distill="gda_kd")
    assert (gda.recipe, gda.batch_size, gda.lr, gda.nesterov) == ("gda", 128, 0.2, True)
    assert (gda.warmup_epochs, gda.warmup_lr, gda.min_lr, gda.epochs) == (10, 1e-4, 2e-3, 240)
    assert CifarKDConfig.paper(recipe="gda", lr=0.1).lr == 0.1  # every value overridable
    with pytest.raises(ValueError, match="distill='nope' is unknown"):
        CifarKDConfig(distill="nope")  # type: ignore[arg-type]


def test_mdistiller_schedule_in_steps(root: Path, tmp_path: Path) -> None:
    cfg = _cfg(root, tmp_path, steps=0, epochs=8, milestones=[4, 6, 7])
    parts = build(cfg)
    assert len(parts.train_data) == PER_EPOCH  # type: ignore[arg-type]
    assert parts.steps == 8 * PER_EPOCH
    sched = parts.scheduler
    lr = {s: sched.lr_at(s) for s in (0, 4 * PER_EPOCH - 1, 4 * PER_EPOCH, 6 * PER_EPOCH - 1,
                                      6 * PER_EPOCH, 7 * PER_EPOCH, 8 * PER_EPOCH - 1)}
    assert lr[0] == lr[4 * PER_EPOCH - 1] == 0.05
    assert lr[4 * PER_EPOCH] == pytest.approx(0.005)
    assert lr[6 * PER_EPOCH - 1] == pytest.approx(0.005)
    assert lr[6 * PER_EPOCH] == pytest.approx(0.0005)
    assert lr[7 * PER_EPOCH] == lr[8 * PER_EPOCH - 1] == pytest.approx(0.00005)
    opt = parts.optimizer
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4]  # on every parameter
    assert opt.param_groups[0]["momentum"] == 0.9 and not opt.param_groups[0]["nesterov"]
    assert build(_cfg(root, tmp_path, steps=5)).steps == 5  # steps > 0: stop early


def test_gda_warmup_cosine_values(root: Path, tmp_path: Path) -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    s = EpochSchedule(opt, steps_per_epoch=3, lr=0.2, epochs=240, cosine=True, warmup_epochs=10,
                      warmup_lr=1e-4, min_lr=2e-3)
    assert opt.param_groups[0]["lr"] == 1e-4  # set at construction: step 0
    assert s.lr_at(2) == 1e-4  # still epoch 0
    assert s.lr_at(3) == pytest.approx(1e-4 + 0.1999 / 10)
    assert s.lr_at(29) == pytest.approx(1e-4 + 9 * 0.1999 / 10)  # epoch 9 = 0.17992
    assert s.lr_at(30) == pytest.approx(2e-3 + 0.5 * 0.198 * (1 + math.cos(math.pi / 24)))
    assert s.lr_at(3 * 120) == pytest.approx(2e-3 + 0.099)  # half way: the mean
    assert s.lr_at(3 * 239) == pytest.approx(2e-3 + 0.099 * (1 + math.cos(math.pi * 239 / 240)))
    for _ in range(4):
        s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(s.lr_at(4))
    state = s.state_dict()
    s2 = EpochSchedule(opt, 3, 0.2, 240, cosine=True, warmup_epochs=10, warmup_lr=1e-4,
                       min_lr=2e-3)
    s2.load_state_dict(state)
    assert s2.get_last_lr() == [s.lr_at(4)]

    parts = build(_cfg(root, tmp_path, recipe="gda", warmup_epochs=0, epochs=4))
    assert parts.scheduler.lr_at(0) == 0.2  # no warm-up: the cosine from the start
    assert parts.scheduler.lr_at(2 * PER_EPOCH) == pytest.approx(2e-3 + 0.099)
    groups = parts.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0] and groups[0]["nesterov"]
    model = parts.model
    no_decay = {id(p) for p in groups[1]["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in no_decay) == (p.ndim <= 1 or name.endswith(".bias")), name


def test_loss_presets_from_the_config(root: Path, tmp_path: Path) -> None:
    dkd = build(_cfg(root, tmp_path, teacher="t.pt", distill="mdistiller_dkd",
                     arch="resnet20", teacher_arch="resnet56"))
    assert dkd.loss_fn.loss.terms[0].beta == 2.0  # mdistiller's beta for ResNet-56 -> 20
    kd = build(_cfg(root, tmp_path, teacher="t.pt", temperature=2.0, ce_weight=0.5))
    assert kd.loss_fn.loss.ce_weight == 0.5 and kd.loss_fn.loss.terms[0].temperature == 2.0
    gda = build(_cfg(root, tmp_path, teacher="t.pt", distill="gda_kd", sinkhorn_weight=0.3))
    assert gda.loss_fn.loss.terms[1].sinkhorn_weight == 0.3
    with pytest.raises(ValueError, match="needs a teacher"):
        build(_cfg(root, tmp_path, distill="mdistiller_kd"))
    with pytest.raises(ValueError, match="dkd_alpha and dkd_beta belong to a DKD preset"):
        build(_cfg(root, tmp_path, teacher="t.pt", dkd_beta=3.0))
    with pytest.raises(ValueError, match="holds 100 classes but ways=10"):
        build(_cfg(root, tmp_path, ways=10))
    assert build(_cfg(root, tmp_path, amp=True)).loss_fn.amp is False  # a no-op on CPU


# --- runs with teachers -------------------------------------------------------------------------
def test_run_from_a_teacher_run_folder(root: Path, teacher_run: Path, tmp_path: Path) -> None:
    before = _state(teacher_run / "best.pt")
    out = tmp_path / "kd"
    res = run(_cfg(root, out, teacher=str(teacher_run), distill="gda_kd"), progress=False)
    assert res["steps"] == 2 and res["test"]["episodes"] == 100
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {"loss/ce", "loss/kd", "loss/fisher_rao", "loss/sinkhorn"} <= set(log[-2]) | set(
        log[-1])
    student = _state(out / "last.pt")
    assert set(student) == set(create("resnet8", num_classes=100).state_dict())  # no teacher
    after = _state(teacher_run / "best.pt")
    assert all(torch.equal(before[k], after[k]) for k in before)
    # The run reads back (and tests) without its teacher.
    assert load_run(out).evaluate().mean == res["test"]["accuracy"]


def _teacher_weights(teacher_run: Path) -> dict[str, torch.Tensor]:
    return load_run(teacher_run).model.state_dict()


def test_mdistiller_file_teacher_stays_bit_identical(root: Path, teacher_run: Path,
                                                     tmp_path: Path) -> None:
    sd = _teacher_weights(teacher_run)
    mdi = {("fc." + k[5:] if k.startswith("head.") else k): v for k, v in sd.items()}
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": mdi, "epoch": 240}, path)
    parts = build(_cfg(root, tmp_path / "run", teacher=str(path), distill="mdistiller_dkd"))
    fit(parts.learner, parts.train_data, parts.optimizer, 3, loss_fn=parts.loss_fn,
        scheduler=parts.scheduler, progress=False)
    teacher = parts.loss_fn.distiller.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    after = teacher.state_dict()  # weights and batch-norm statistics
    assert all(torch.equal(sd[k], after[k]) for k in sd)


def test_state_dict_file_teacher_and_eval_cli(root: Path, teacher_run: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "resnet8.pt"
    torch.save(_teacher_weights(teacher_run), path)
    out = tmp_path / "kd"
    res = run(_cfg(root, out, teacher=str(path), distill="torchdistill_kd"), progress=False)
    path.unlink()  # evaluating the student does not need its teacher
    assert cli.main(["eval", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "100-class classification test accuracy" in printed
    record = json.loads(next(out.glob("eval-*.json")).read_text())
    assert record["method"] == "cifar_kd"
    assert record["test"]["accuracy"] == res["test"]["accuracy"]
    assert record["test"]["episodes"] == 100  # the whole test set, whatever --episodes says


def test_amp_path_gives_float32_losses(root: Path, teacher_run: Path, tmp_path: Path) -> None:
    # amp is used on CUDA only; its code path runs under CPU autocast here.
    parts = build(_cfg(root, tmp_path, teacher=str(teacher_run), distill="gda_kd"))
    batch = next(iter(parts.train_data))
    loss_fn = parts.loss_fn
    full, m_full = loss_fn(parts.learner, batch, 0)
    loss_fn.amp = True
    half, m_half = loss_fn(parts.learner, batch, 0)
    assert half.dtype == torch.float32 and torch.isfinite(half)
    assert m_half["terms"].keys() == m_full["terms"].keys()
    assert float(half.detach()) == pytest.approx(float(full.detach()), rel=0.05)
    half.backward()
    assert all(p.grad is not None for p in parts.model.parameters())


def test_clear_errors_for_bad_teachers(root: Path, teacher_run: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(_cfg(root, tmp_path / "a", teacher=str(tmp_path / "missing.pth")), progress=False)
    with pytest.raises(ValueError, match="is a 'resnet8' run, not 'resnet20'"):
        run(_cfg(root, tmp_path / "b", teacher=str(teacher_run), teacher_arch="resnet20"),
            progress=False)
    path = tmp_path / "resnet8.pt"
    torch.save(_teacher_weights(teacher_run), path)
    with pytest.raises(ValueError, match="does not fit a 'resnet20'"):
        run(_cfg(root, tmp_path / "c", teacher=str(path), teacher_arch="resnet20"),
            progress=False)
    code = cli.main(["train", "cifar_kd", "--root", str(root), "--out-dir", str(tmp_path / "d"),
                     "--arch", "resnet8", "--teacher", str(tmp_path / "nope"), "--steps", "1",
                     "--batch-size", "16", "--no-progress"])
    assert code == 3  # an input file is missing
    err = capsys.readouterr().err
    assert "metakd train: error: teacher" in err and "does not exist" in err


def test_registered() -> None:
    method = get_method("cifar_kd")
    assert method.config_cls is CifarKDConfig
    assert method.task_of(CifarKDConfig()) == "100-class classification"
