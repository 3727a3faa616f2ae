"""PMAML: where the distillation term applies, what reaches whom, the teacher's modes, the recipe.

References are independent: the meta-gradient of the KD term is recomputed with an explicit
float64 inner step (``torch.func.functional_call`` + ``create_graph``), the adapted teacher's
logits with ``MAMLWrapper.adapt`` task by task, the faithful loss from written-out formulas.
"""

from __future__ import annotations

import itertools
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import metakd
from metakd.data import TaskBatch
from metakd.distill import PMAML, DistillLoss, KDSchedule, PMAMLObjective, preset
from metakd.engine import fit, read_log


def _batch(tasks: int = 2, ways: int = 5, q: int = 2, seed: int = 0,
           dtype: torch.dtype = torch.float32) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(ways)
    return TaskBatch(torch.randn(tasks, ways, 1, 28, 28, generator=g, dtype=dtype),
                     y.repeat(tasks, 1),
                     torch.randn(tasks, ways * q, 1, 28, 28, generator=g, dtype=dtype),
                     y.repeat_interleave(q).repeat(tasks, 1))


def _teacher(seed: int = 1, steps: int = 2) -> metakd.MAMLWrapper:
    torch.manual_seed(seed)
    return metakd.MAMLWrapper(metakd.create("conv2", num_classes=5, in_channels=1),
                              inner_lr=0.3, test_inner_steps=steps)


def test_faithful_loss_equals_the_official_formula() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(10, 5, generator=g).double(), torch.randn(10, 5, generator=g).double()
    y = torch.arange(10) % 5
    terms = PMAMLObjective("pmaml")(s, y, {"teacher_logits": t}, 0)
    ps, pt = (s / 10).softmax(-1), (t / 10).softmax(-1)
    kl_elementwise_mean = (pt * (pt.log() - ps.log())).sum() / (10 * 5)  # nn.KLDivLoss()
    ce = -(s.log_softmax(-1)[torch.arange(10), y]).mean()
    ref = 0.9 * 100 * kl_elementwise_mean + 0.1 * ce
    assert (terms["ce"] + terms["kd"]).item() == pytest.approx(ref.item(), rel=1e-12)
    plain = PMAMLObjective("pmaml")(s, y, {}, 0)  # no teacher logits: plain MAML CE, weight 1
    assert list(plain) == ["ce"] and plain["ce"].item() == pytest.approx(ce.item(), rel=1e-12)


def test_kd_gradient_reaches_the_student_through_the_second_order_inner_step() -> None:
    torch.manual_seed(0)
    batch = _batch(tasks=1, dtype=torch.float64)
    teacher = _teacher().double()
    student_net = metakd.create("conv1", num_classes=5, in_channels=1).double()
    kd_only = DistillLoss(preset("pmaml").terms, ce_weight=0.0)
    pmaml = PMAML(student_net, teacher, inner_lr=0.4, loss=kd_only, backend="func")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    loss, metrics = pmaml.meta_loss(batch, step=0)
    assert list(metrics["terms"]) == ["kd"]
    loss.backward()
    got = {n: p.grad.clone() for n, p in student_net.named_parameters()}

    # independent: one explicit inner step with create_graph, KD on the adapted query logits
    params = {n: p.detach().clone().requires_grad_(True) for n, p in student_net.named_parameters()}
    buffers = dict(student_net.named_buffers())
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    support_loss = F.cross_entropy(functional_call(student_net, (params, buffers), (sx,)), sy)
    grads = torch.autograd.grad(support_loss, list(params.values()), create_graph=True)
    fast = {n: p - 0.4 * g for (n, p), g in zip(params.items(), grads)}
    zs = functional_call(student_net, (fast, buffers), (qx,))
    with torch.no_grad():
        zt = teacher.model(qx)
    T = 10.0
    pt = F.softmax(zt / T, -1)
    kd = 0.9 * T**2 * (pt * (pt.log() - F.log_softmax(zs / T, -1))).sum() / pt.numel()
    ref = torch.autograd.grad(kd, list(params.values()))
    for (n, g_ref) in zip(params, ref):
        assert torch.allclose(got[n], g_ref, rtol=1e-7, atol=1e-10), n
    first_order = PMAML(metakd.create("conv1", num_classes=5, in_channels=1).double(),
                        teacher, inner_lr=0.4, loss=kd_only, backend="func", first_order=True)
    first_order.load_state_dict(pmaml.state_dict())
    first_order.meta_loss(batch, step=0)[0].backward()
    diff = max((p.grad - got[n]).abs().max().item()
               for n, p in first_order.model.named_parameters())
    assert diff > 1e-8  # the second-order term is really there
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


class _Spy(DistillLoss):
    """A DistillLoss that records the shape of every call (support or query)."""

    def __init__(self, calls: list[int]) -> None:
        base = preset("pmaml")
        super().__init__(base.terms, ce_weight=base.ce_weight)
        object.__setattr__(self, "_calls", calls)

    def forward(self, s, t, y, epoch=1):  # type: ignore[override]
        self._calls.append(s.shape[0])
        return super().forward(s, t, y, epoch)


@pytest.mark.parametrize(("schedule", "expected"), [
    ("every", [0, 1, 2, 3, 4, 5]),
    ("last", [5]),
    ([1, 4], [1, 4]),
])
def test_outer_schedule_puts_kd_exactly_where_documented(tmp_path, schedule, expected) -> None:
    torch.manual_seed(0)
    pmaml = PMAML(metakd.create("conv1", num_classes=5, in_channels=1), _teacher(),
                  inner_lr=0.4, schedule=schedule, total_steps=6, backend="func")
    opt = torch.optim.Adam(pmaml.parameters(), lr=1e-3)
    fit(pmaml, itertools.repeat(_batch()), opt, 6, out_dir=tmp_path, log_every=1,
        progress=False, tensorboard=False)
    with_kd = [r["step"] - 1 for r in read_log(tmp_path / "log.jsonl")
               if r["kind"] == "train" and r.get("loss/kd", 0.0) > 0]
    assert with_kd == expected


@pytest.mark.parametrize(("when", "steps_with_kd"), [("every", [0, 1, 2]), ("last", [2])])
def test_inner_kd_applies_at_the_documented_inner_steps(when, steps_with_kd) -> None:
    calls: list[int] = []
    pmaml = PMAML(metakd.create("conv1", num_classes=5, in_channels=1), _teacher(),
                  inner_lr=0.4, inner_steps=3, loss=_Spy(calls), inner_kd=when, backend="func")
    batch = _batch(tasks=1)  # 5 support images, 10 query images
    original = pmaml.student.support.forward
    seen: list[tuple[int, bool]] = []

    def spy(logits, labels, extras, step):
        before = len(calls)
        out = original(logits, labels, extras, step)
        seen.append((int(step), len(calls) > before and out["kd"].item() > 0))
        return out

    pmaml.student.support.forward = spy  # type: ignore[method-assign]
    pmaml.meta_loss(batch, step=0)
    assert [s for s, kd in seen if kd] == steps_with_kd
    assert sorted(s for s, _ in seen) == [0, 1, 2]
    assert calls.count(10) == 1  # and once on the query set (the outer term)


def test_adapted_teacher_logits_equal_its_own_adaptation() -> None:
    teacher = _teacher(steps=3)
    batch = _batch(tasks=3)
    pmaml = PMAML(metakd.create("conv1", num_classes=5, in_channels=1), teacher,
                  inner_lr=0.4, teacher_adapt=True)
    got = pmaml.teacher_logits(batch)
    with torch.no_grad():
        ref = torch.stack([teacher.adapt(batch.support_x[i], batch.support_y[i], steps=3)(
            batch.query_x[i]) for i in range(3)])
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(got, teacher.predict(batch, steps=3), atol=1e-6)
    unadapted = PMAML(metakd.create("conv1", num_classes=5, in_channels=1), teacher,
                      inner_lr=0.4).teacher_logits(batch)
    with torch.no_grad():
        raw = torch.stack([teacher.model(batch.query_x[i]) for i in range(3)])
    assert torch.allclose(unadapted, raw, atol=1e-5) and not torch.allclose(unadapted, got)


def _count_forwards(model: torch.nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("ways", [5, 3])
def test_unadapted_teacher_logits_batched_equal_the_task_loop(ways) -> None:
    """A meta-batch's teacher logits in one batched forward call equal the task-by-task loop
    in float64 (transductive batch norm normalises each task by its own statistics)."""
    torch.manual_seed(0)
    teacher = metakd.MAMLWrapper(metakd.create("conv4", num_classes=ways, in_channels=1),
                                 inner_lr=0.4).double()
    batch = _batch(tasks=4, ways=ways, q=3, dtype=torch.float64)
    pmaml = PMAML(metakd.create("conv1", num_classes=ways, in_channels=1).double(), teacher,
                  inner_lr=0.4)
    calls = _count_forwards(teacher.model)
    got = {on: pmaml.teacher_logits(batch, on) for on in ("query", "support")}
    assert calls[0] == 2 * 4  # on the CPU, task by task (faster there)
    with torch.no_grad():
        batched = {"query": teacher.forward_tasks(batch.query_x, batched=True),
                   "support": teacher.forward_tasks(batch.support_x, batched=True)}
    assert calls[0] == 2 * 4 + 2  # batched: one call per set, not one per task
    with torch.no_grad():
        for on, xs in (("query", batch.query_x), ("support", batch.support_x)):
            ref = torch.stack([teacher.model(x) for x in xs])
            torch.testing.assert_close(got[on], ref, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(batched[on], ref, rtol=1e-10, atol=1e-10)
    # one task's statistics: the same images in another task give other logits
    mixed = batch.query_x.clone()
    mixed[1] = mixed[0] * 3.0 + 1.0
    with torch.no_grad():
        out = teacher.forward_tasks(mixed, batched=True)
    assert not torch.allclose(out[0], out[1])


def test_forward_tasks_falls_back_to_a_loop_for_running_statistics() -> None:
    """torch.nn.BatchNorm2d in train() mode updates one running buffer per call: task by task."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                              torch.nn.Flatten(), torch.nn.LazyLinear(5))
    net(torch.randn(2, 1, 28, 28))
    maml = metakd.MAMLWrapper(net, inner_lr=0.4, backend="func")
    calls = _count_forwards(net)
    xs = torch.randn(3, 6, 1, 28, 28)
    with torch.no_grad():
        out = maml.forward_tasks(xs, batched=True)
    assert calls[0] == 3 and out.shape == (3, 6, 5)


def test_teacher_is_frozen_unregistered_and_loaded_lazily() -> None:
    loads: list[int] = []

    def load():
        loads.append(1)
        return _teacher()

    pmaml = PMAML(metakd.create("conv1", num_classes=5, in_channels=1), load, inner_lr=0.4,
                  schedule="last", total_steps=3)
    assert all(k.startswith("student.") for k in pmaml.state_dict())
    pmaml.meta_loss(_batch(), step=0)           # the schedule leaves step 0 out: not loaded
    pmaml.meta_loss(_batch(), training=False)   # evaluation never needs the teacher
    assert loads == []
    pmaml.meta_loss(_batch(), step=2)
    assert loads == [1] and not pmaml.teacher.training
    assert not any(p.requires_grad for p in pmaml.teacher.parameters())
    with pytest.raises(ValueError, match="'last' needs total_steps"):
        KDSchedule("last")


def test_recipe_refuses_a_teacher_that_does_not_fit(tmp_path) -> None:
    from metakd.recipes import MAMLConfig, PMAMLConfig, load_run, run

    teacher_dir = tmp_path / "teacher"
    run(MAMLConfig(model="conv2", steps=2, meta_batch_size=2, test_tasks=2,
                   out_dir=str(teacher_dir), compile="off"), progress=False)
    common = dict(teacher=str(teacher_dir), model="conv1", steps=2, meta_batch_size=2,
                  test_tasks=2, val_every=10)
    with pytest.raises(ValueError, match="trained 5-way 1-shot; the student's episodes are "
                                         "5-way 5-shot"):
        run(PMAMLConfig.paper("omniglot", 5, 5, out_dir=str(tmp_path / "s5"), **common),
            progress=False)
    with pytest.raises(ValueError, match="needs a teacher"):
        run(PMAMLConfig.paper("omniglot", 5, 1, out_dir=str(tmp_path / "x"), steps=1),
            progress=False)
    res = run(PMAMLConfig.paper("omniglot", 5, 1, out_dir=str(tmp_path / "s"), **common),
              progress=False)
    assert res["method"] == "pmaml" and res["test"]["episodes"] == 2
    shutil.rmtree(teacher_dir)  # a PMAML run is read back and tested without its teacher
    again = load_run(tmp_path / "s", checkpoint="last")
    assert again.evaluate().mean == pytest.approx(res["test"]["accuracy"])


def test_schedule_none_is_plain_maml_without_a_teacher(tmp_path) -> None:
    from metakd.recipes import PMAMLConfig, run

    cfg = PMAMLConfig.paper("omniglot", 5, 1, schedule="none", model="conv1", steps=2,
                            meta_batch_size=2, test_tasks=2, out_dir=str(tmp_path / "c"))
    res = run(cfg, progress=False)  # no teacher given, none needed
    terms = [r for r in read_log(tmp_path / "c" / "log.jsonl") if r["kind"] == "train"]
    assert res["method"] == "pmaml" and all("loss/kd" not in r for r in terms)
