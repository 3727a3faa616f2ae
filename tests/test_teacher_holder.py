"""The one frozen-teacher holder, the import direction between packages, load_teacher's errors."""

from __future__ import annotations

import ast
import copy
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import metakd
import metakd.nn as mnn
from metakd.data import TaskBatch
from metakd.distill import PMAML, Distiller, FrozenTeacher, load_teacher, preset
from metakd.meta import MetaBaseline

PACKAGE = Path(metakd.__file__).resolve().parent


# --------------------------------------------------------------------------- the holder
def test_holder_freezes_keeps_eval_and_runs_without_a_graph() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    holder = FrozenTeacher(net)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    net.train()  # whoever switches it back: the next use puts it in eval mode again
    x = torch.randn(5, 3, requires_grad=True)
    out = holder(x)
    assert not net.training and not out.requires_grad and out.grad_fn is None
    with torch.no_grad():
        assert torch.equal(out, net(x))


def test_holder_loads_once_at_first_use_and_checks_the_kind() -> None:
    calls: list[int] = []

    def load() -> nn.Module:
        calls.append(1)
        return nn.Linear(2, 2).train()

    holder = FrozenTeacher(load)
    assert not holder.loaded and calls == [] and "first use" in repr(holder)
    first = holder.get()
    assert holder.get() is first and calls == [1] and not first.training
    assert repr(holder) == "FrozenTeacher(Linear)"
    with pytest.raises(TypeError, match="the teacher loader returned a Linear, not a "
                                        "MetaBaseline"):
        FrozenTeacher(lambda: nn.Linear(2, 2), kind=MetaBaseline).get()
    with pytest.raises(TypeError, match="module or a function"):
        FrozenTeacher(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="already held"):
        FrozenTeacher(holder)  # type: ignore[arg-type]


def test_holder_follows_the_device_and_dtype_asked_for() -> None:
    holder = FrozenTeacher(nn.Linear(2, 2))
    assert holder.get("cpu").weight.device.type == "cpu"
    holder.apply_tensors(lambda t: t.double())
    assert holder(torch.randn(1, 2, dtype=torch.float64)).dtype == torch.float64
    lazy = FrozenTeacher(lambda: nn.Linear(2, 2))
    lazy.apply_tensors(lambda t: t.double())  # nothing loaded yet: nothing to convert
    assert not lazy.loaded


def test_holder_runs_a_conv_teacher_channels_last_on_the_cpu_with_the_same_values() -> None:
    torch.manual_seed(0)
    net = mnn.create("conv4", in_channels=1, num_classes=5, hidden=16)
    plain = copy.deepcopy(net).eval()
    x = torch.randn(6, 1, 28, 28)
    holder = FrozenTeacher(net)
    out = holder(x, device="cpu")
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()  # really converted (16 channels, 3x3)
    with torch.no_grad():
        want = plain(x)
    assert torch.allclose(out, want, rtol=1e-5, atol=1e-5)
    holder.apply_tensors(lambda t: t.double())  # a dtype change keeps the layout
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(holder(x.double()), plain.double()(x.double()), atol=1e-12)


def test_holder_copies_and_pickles_with_its_module() -> None:
    holder = FrozenTeacher(nn.Linear(2, 2))
    clone = pickle.loads(pickle.dumps(holder))
    assert torch.equal(clone.get().weight, holder.get().weight)
    deep = copy.deepcopy(holder)
    assert deep.get() is not holder.get() and torch.equal(deep.get().bias, holder.get().bias)
    lazy = FrozenTeacher(lambda: nn.Linear(2, 2))
    lazy.get()  # once loaded, the (unpicklable) lambda is dropped
    assert pickle.loads(pickle.dumps(lazy)).loaded


# --------------------------------------------------------------------------- its users
def _episodes() -> TaskBatch:
    y = torch.arange(5)
    return TaskBatch(torch.randn(2, 5, 1, 28, 28), y.repeat(2, 1),
                     torch.randn(2, 10, 1, 28, 28), y.repeat_interleave(2).repeat(2, 1))


def _encoder() -> nn.Module:
    return mnn.create("conv1", in_channels=1, num_classes=0, bn_mode="running")


def test_distiller_takes_a_loader_and_a_shared_holder() -> None:
    calls: list[int] = []

    def load() -> nn.Module:
        calls.append(1)
        return nn.Linear(4, 3)

    shared = FrozenTeacher(load)
    a = Distiller(nn.Linear(4, 3), shared, "mdistiller_kd")
    b = Distiller(nn.Linear(4, 3), shared, "mdistiller_kd")
    assert calls == [] and list(a.state_dict()) == ["student.weight", "student.bias"]
    batch = (torch.randn(6, 4), torch.arange(6) % 3)
    Distiller.training_loss(a.train(), batch)
    Distiller.training_loss(b.train(), batch)
    assert calls == [1] and a.teacher is b.teacher
    assert sorted(n for n, _ in a.named_parameters()) == ["student.bias", "student.weight"]
    assert "teacher" not in {n.split(".")[0] for n in a.state_dict()}


def test_meta_baseline_takes_a_loader_and_needs_a_loss_to_train() -> None:
    teacher = MetaBaseline(_encoder(), temperature=4.0)
    calls: list[int] = []

    def load() -> MetaBaseline:
        calls.append(1)
        return teacher

    student = MetaBaseline(_encoder(), teacher=load, loss=preset("gda_fewshot_kd"))
    assert calls == [] and not any(k.startswith(("teacher", "frozen")) for k in
                                   student.state_dict())
    b = _episodes()
    student.meta_loss(b, training=False)  # evaluation never needs the teacher
    assert calls == []
    _, m = student.meta_loss(b, training=True)
    assert calls == [1] and sorted(m["terms"]) == ["ce", "fisher_rao", "kd", "sinkhorn"]
    assert student.teacher is teacher and not teacher.training
    bare = MetaBaseline(_encoder(), teacher=teacher)  # a teacher to read, no loss to train
    assert bare.teacher_logits(b).shape == (2, 10, 5)
    with pytest.raises(ValueError, match="no loss"):
        bare.meta_loss(b, training=True)
    with pytest.raises(TypeError, match="preset"):
        MetaBaseline(_encoder(), teacher=teacher, loss="gda_fewshot_kd")  # type: ignore[arg-type]
    assert bare.set_teacher(None).teacher is None and bare.loss is None


def test_pmaml_takes_a_shared_holder() -> None:
    wrapper = metakd.MAMLWrapper(metakd.create("conv1", num_classes=5, in_channels=1),
                                 inner_lr=0.4)
    holder = FrozenTeacher(wrapper, kind=metakd.MAMLWrapper)
    pmaml = PMAML(metakd.create("conv1", num_classes=5, in_channels=1), holder, inner_lr=0.4)
    assert pmaml.teacher is wrapper and pmaml.frozen_teacher is holder
    assert all(k.startswith("student.") for k in pmaml.state_dict())
    with pytest.raises(TypeError, match="returned a Linear, not a MAMLWrapper"):
        PMAML(metakd.create("conv1", num_classes=5, in_channels=1), lambda: nn.Linear(2, 2),
              inner_lr=0.4).teacher_logits(_episodes())


# --------------------------------------------------------------------------- import direction
def _package_of(path: Path) -> str:
    """The package a module file under metakd/ belongs to (itself for an ``__init__.py``)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1])


def _imports(path: Path, package: str) -> set[str]:
    """Every module ``path`` (in ``package``) imports, at any depth (functions,
    ``TYPE_CHECKING`` blocks), relative imports resolved."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y, from .. import z
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # from metakd import x
    return found


def _offenders(package: str, forbidden: str) -> dict[str, list[str]]:
    out = {}
    for path in sorted((PACKAGE / package).rglob("*.py")):
        bad = sorted(m for m in _imports(path, _package_of(path)) if m == forbidden
                     or m.startswith(forbidden + "."))
        if bad:
            out[str(path.relative_to(PACKAGE.parent))] = bad
    return out


def test_the_import_parser_sees_every_form(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    code = ("from __future__ import annotations\nfrom typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from metakd.recipes.runs import Run\n"
            "def f():\n    import metakd.recipes\n    from .. import recipes\n"
            "    from ..recipes import load_run\n    from metakd import recipes as r\n")
    probe.write_text(code, encoding="utf-8")
    found = _imports(probe, "metakd.distill")
    assert {"metakd.recipes.runs", "metakd.recipes", "metakd.recipes.load_run"} <= found


def test_distill_does_not_import_recipes_and_meta_does_not_import_distill() -> None:
    assert not _offenders("distill", "metakd.recipes"), _offenders("distill", "metakd.recipes")
    assert not _offenders("meta", "metakd.distill"), _offenders("meta", "metakd.distill")
    holder = _imports(PACKAGE / "_frozen.py", "metakd")  # below both: torch alone
    assert not {m for m in holder if m.startswith("metakd")}, holder


# --------------------------------------------------------------------------- load_teacher errors
class Pickled:
    """A class whose instances a file can pickle (never unpickled here)."""


@pytest.mark.parametrize("content", [b"hello world\nthis is text\n", b"not a checkpoint",
                                     bytes(range(256)) * 2])
def test_a_text_or_garbage_teacher_file_is_named_in_one_line(tmp_path: Path,
                                                             content: bytes) -> None:
    path = tmp_path / "teacher.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        load_teacher(path, arch="resnet8")
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{path} is not a PyTorch checkpoint (torch.load "
                                                "failed: ")
    assert "a teacher is a state-dict file" in text and "mdistiller" in text
    assert "weights_only` set to `False`" not in text  # none of torch's advice


def test_an_empty_or_truncated_teacher_file_is_named_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pt is empty, not a PyTorch checkpoint"):
        load_teacher(tmp_path / "empty.pt", arch="resnet8")
    torch.save(mnn.create("resnet8").state_dict(), tmp_path / "full.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:300])
    with pytest.raises(ValueError, match=r"cut\.pt is not a PyTorch checkpoint") as info:
        load_teacher(tmp_path / "cut.pt", arch="resnet8")
    assert "\n" not in str(info.value)


def test_a_teacher_file_that_pickles_objects_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "objects.pth"
    torch.save({"model": Pickled()}, path)
    with pytest.raises(ValueError) as info:
        load_teacher(path, arch="resnet8")
    text = str(info.value)
    name = f"{Pickled.__module__}.Pickled"
    assert text.startswith(f"{path}: refused: the file pickles Python objects ({name}) that "
                           "weights-only loading does not run; save a state dict of tensors "
                           "instead")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_distill_reads_weights_files_and_recipes_read_run_folders(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="run folder: read it with metakd.recipes.load_teacher"):
        load_teacher(run_dir)
    assert metakd.load_teacher is metakd.recipes.load_teacher
    torch.save(mnn.create("resnet8", num_classes=10).state_dict(), tmp_path / "r8.pt")
    teacher = metakd.recipes.load_teacher(tmp_path / "r8.pt", arch="resnet8")
    assert not teacher.training and teacher.head.out_features == 10
