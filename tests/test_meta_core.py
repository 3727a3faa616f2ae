"""The open meta core: user update rules, objectives with named terms and extras, the step.

Every meta-gradient here is compared with an independent computation written directly with
``torch.autograd`` in float64 (a sequential loop over tasks that shares no code with
``metakd.meta.inner``), on every execution path.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakd.data import TaskBatch
from metakd.meta import (
    SGD,
    CrossEntropy,
    MAMLWrapper,
    MetaSGD,
    Objective,
    UpdateRule,
    flatten_params,
    functional_forward,
    unflatten_params,
)
from metakd.nn import create

PATHS = ["func", "vmap", "auto", "learn2learn", "higher"]


# Tiny tensors: one intra-op thread (see conftest.one_intra_op_thread).
pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _needs(path: str) -> None:
    if path in ("learn2learn", "higher"):
        pytest.importorskip(path)


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create("conv4", in_channels=1, hidden=4, num_classes=3).double()


def batch_with_teacher(tasks: int = 3, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3)
    b = TaskBatch(
        torch.randn(tasks, 3, 1, 16, 16, generator=g, dtype=torch.float64),
        y.repeat(tasks, 1),
        torch.randn(tasks, 6, 1, 16, 16, generator=g, dtype=torch.float64),
        y.repeat_interleave(2).repeat(tasks, 1),
    )
    return b.with_extras(teacher=torch.randn(tasks, 6, 3, generator=g, dtype=torch.float64))


def kd(student: Tensor, teacher: Tensor, t: float = 4.0) -> Tensor:
    """Hinton KD, batchmean, times T² (written out by hand)."""
    p = (teacher / t).softmax(-1)
    return t * t * (p * (p.log() - (student / t).log_softmax(-1))).sum(-1).mean()


class CEPlusKD(Objective):
    """CE on the labels plus a KD term against the teacher logits carried in the extras."""

    def forward(self, logits: Tensor, labels: Tensor, extras: Mapping[str, Tensor],
                step: int | Tensor) -> dict[str, Tensor]:
        return {"ce": F.cross_entropy(logits, labels), "kd": 0.5 * kd(logits, extras["teacher"])}


def reference_meta_grads(model: nn.Module, batch: TaskBatch, lr: float, steps: int,
                         kd_weight: float) -> list[Tensor]:
    """Sequential float64 MAML written from the definition (no metakd code)."""
    names = [n for n, _ in model.named_parameters()]
    meta = [p for _, p in model.named_parameters()]
    total = torch.zeros((), dtype=torch.float64)
    for i in range(len(batch)):
        params = dict(zip(names, meta))
        for _ in range(steps):
            out = torch.func.functional_call(model, params, (batch.support_x[i],))
            loss = F.cross_entropy(out, batch.support_y[i])
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            params = {n: p - lr * g for (n, p), g in zip(params.items(), grads)}
        logits = torch.func.functional_call(model, params, (batch.query_x[i],))
        q = F.cross_entropy(logits, batch.query_y[i])
        if kd_weight:
            q = q + kd_weight * kd(logits, batch.extras["teacher"][i])
        total = total + q / len(batch)
    return list(torch.autograd.grad(total, meta))


def meta_grads(maml: MAMLWrapper, batch: TaskBatch) -> list[Tensor]:
    maml.zero_grad()
    loss, _ = maml.meta_loss(batch)
    loss.backward()
    return [p.grad.clone() for p in maml.model.parameters()]


class MySGD(UpdateRule):
    """A user-written rule that is SGD: p - lr * g, counting its calls in its state."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr

    def init_state(self, params: Mapping[str, Tensor]) -> Tensor:
        return torch.zeros((), dtype=torch.float64)

    def forward(self, grads, params, state, step, loss):  # type: ignore[no-untyped-def]
        return {n: p - self.lr * grads[n] for n, p in params.items()}, state + 1


@pytest.mark.parametrize("path", ["func", "vmap", "auto"])
@pytest.mark.parametrize("first_order", [False, True])
def test_user_rule_equal_to_sgd_gives_sgds_meta_gradients_exactly(path: str,
                                                                  first_order: bool) -> None:
    batch = batch_with_teacher()
    a = MAMLWrapper(net(), 0.3, 2, backend=path, first_order=first_order)
    b = MAMLWrapper(net(), inner_steps=2, rule=MySGD(0.3), backend=path, first_order=first_order)
    for ga, gb in zip(meta_grads(a, batch), meta_grads(b, batch)):
        assert torch.equal(ga, gb)


@pytest.mark.parametrize("path", PATHS)
def test_two_term_objective_gives_the_meta_gradient_of_the_sum(path: str) -> None:
    _needs(path)
    batch = batch_with_teacher()
    maml = MAMLWrapper(net(), 0.3, 2, backend=path, objective=CEPlusKD())
    loss, metrics = maml.meta_loss(batch)
    assert sorted(metrics["terms"]) == ["ce", "kd"]
    assert loss.item() == pytest.approx(sum(metrics["terms"].values()), rel=1e-12)
    loss.backward()
    got = [p.grad for p in maml.model.parameters()]
    expected = reference_meta_grads(net(), batch, 0.3, 2, kd_weight=0.5)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-10)
    # the KD term matters: without it the gradient differs
    plain = reference_meta_grads(net(), batch, 0.3, 2, kd_weight=0.0)
    assert max((g - p).abs().max().item() for g, p in zip(got, plain)) > 1e-4


@pytest.mark.parametrize("path", ["func", "vmap"])
def test_support_objective_reads_extras_and_the_inner_step(path: str) -> None:
    """A support objective that adds a KD term only at the last inner step, against a
    hand-written loop that does the same."""

    class LastStepKD(Objective):
        def forward(self, logits, labels, extras, step):  # type: ignore[no-untyped-def]
            terms = {"ce": F.cross_entropy(logits, labels)}
            if step == 1:  # the inner step: a Python int
                terms["kd"] = kd(logits, extras["teacher_support"])
            return terms

    batch = batch_with_teacher()
    g = torch.Generator().manual_seed(3)
    batch = batch.with_extras(teacher_support=torch.randn(3, 3, 3, generator=g, dtype=torch.float64))
    maml = MAMLWrapper(net(), 0.3, 2, backend=path, support=LastStepKD())
    got = meta_grads(maml, batch)

    model = net()
    names = [n for n, _ in model.named_parameters()]
    meta = list(model.parameters())
    total = torch.zeros((), dtype=torch.float64)
    for i in range(3):
        params = dict(zip(names, meta))
        for k in range(2):
            out = torch.func.functional_call(model, params, (batch.support_x[i],))
            loss = F.cross_entropy(out, batch.support_y[i])
            if k == 1:
                loss = loss + kd(out, batch.extras["teacher_support"][i])
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            params = {n: p - 0.3 * gr for (n, p), gr in zip(params.items(), grads)}
        logits = torch.func.functional_call(model, params, (batch.query_x[i],))
        total = total + F.cross_entropy(logits, batch.query_y[i]) / 3
    for g_, e in zip(got, torch.autograd.grad(total, meta)):
        torch.testing.assert_close(g_, e, rtol=0, atol=1e-10)


class Scheduled(Objective):
    """KD weight 1 at meta-iterations >= 5, else 0, written with tensor operations."""

    def forward(self, logits, labels, extras, step):  # type: ignore[no-untyped-def]
        w = torch.where(torch.as_tensor(step) >= 5, 1.0, 0.0).to(logits.dtype)
        return {"ce": F.cross_entropy(logits, labels), "kd": w * kd(logits, extras["teacher"])}


@pytest.mark.parametrize("path", ["func", "vmap"])
def test_the_meta_iteration_reaches_the_objective(path: str) -> None:
    batch = batch_with_teacher()
    maml = MAMLWrapper(net(), 0.3, 1, backend=path, objective=Scheduled())
    _, early = maml.meta_loss(batch, step=4)
    _, late = maml.meta_loss(batch, step=5)
    assert early["terms"]["kd"] == 0.0
    assert late["terms"]["kd"] > 0.0
    assert early["terms"]["ce"] == pytest.approx(late["terms"]["ce"], rel=1e-12)


def test_user_rule_state_is_per_task_and_carried_across_steps() -> None:
    seen: list[Tensor] = []

    class Recorder(MySGD):
        def forward(self, grads, params, state, step, loss):  # type: ignore[no-untyped-def]
            seen.append(state.detach().clone())
            assert loss.dim() == 0
            return super().forward(grads, params, state, step, loss)

    maml = MAMLWrapper(net(), inner_steps=3, rule=Recorder(0.1), backend="func")
    maml.meta_loss(batch_with_teacher(tasks=2))
    assert [int(s) for s in seen] == [0, 1, 2, 0, 1, 2]


def test_constant_gradient_rule_gets_constants() -> None:
    """A rule with ``constant_grads`` sees gradients and loss without graph even in second
    order, so its meta-gradient is the first-order one."""

    class ConstSGD(SGD):
        constant_grads = True

        def forward(self, grads, params, state, step, loss):  # type: ignore[no-untyped-def]
            assert not any(g.requires_grad for g in grads.values())
            assert not loss.requires_grad
            return super().forward(grads, params, state, step, loss)

    batch = batch_with_teacher()
    a = MAMLWrapper(net(), inner_steps=2, rule=ConstSGD(0.3), backend="func")
    b = MAMLWrapper(net(), 0.3, 2, first_order=True, backend="func")
    for ga, gb in zip(meta_grads(a, batch), meta_grads(b, batch)):
        torch.testing.assert_close(ga, gb, rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", ["func", "vmap", "learn2learn", "higher"])
def test_predict_returns_the_adapted_query_logits(path: str) -> None:
    _needs(path)
    batch = batch_with_teacher()
    maml = MAMLWrapper(net(), 0.3, 1, test_inner_steps=2, backend=path)
    logits = maml.predict(batch)
    assert logits.shape == (3, 6, 3) and not logits.requires_grad
    for i, task in enumerate(batch):
        learner = MAMLWrapper(net(), 0.3, 2, backend="func").adapt(task.support_x, task.support_y)
        torch.testing.assert_close(logits[i], learner(task.query_x).detach(), rtol=0, atol=1e-10)


def test_metrics_report_per_class_accuracy() -> None:
    batch = batch_with_teacher(tasks=2)
    maml = MAMLWrapper(net(), 0.3, 1, backend="func")
    _, m = maml.meta_loss(batch, training=False)
    logits = maml.predict(batch, steps=1)
    pred = logits.argmax(-1)
    for t in range(2):
        for c in range(3):
            mask = batch.query_y[t] == c
            expect = (pred[t][mask] == c).double().mean().item()
            assert m["class_accuracy"][t, c].item() == pytest.approx(expect)
    assert m["task_accuracy"].shape == (2,)
    torch.testing.assert_close(m["class_accuracy"].mean(1), m["task_accuracy"].double())


def _counting_backbone(bn_mode: str) -> tuple[nn.Module, list[int]]:
    model = create("conv4", in_channels=1, hidden=4, num_classes=3, bn_mode=bn_mode).double()
    calls = [0]
    original = model.features

    def features(x: Tensor) -> Tensor:
        calls[0] += 1
        return original(x)

    model.features = features  # type: ignore[method-assign]
    return model, calls


# running statistics in train() cannot run under vmap (one buffer, many tasks)
@pytest.mark.parametrize(("bn_mode", "path"),
                         [("transductive", "func"), ("running", "func"), ("transductive", "vmap")])
def test_head_only_adaptation_computes_features_once_per_set(bn_mode: str, path: str) -> None:
    model, calls = _counting_backbone(bn_mode)
    maml = MAMLWrapper(model, 0.3, 4, adapt="head", backend=path, vmap_chunk=3 if path == "vmap" else None)
    maml.meta_loss(batch_with_teacher(tasks=3))
    # support once + query once, per task (func) or per chunk of 3 tasks (vmap)
    assert calls[0] == (6 if path == "func" else 2)


def test_head_only_meta_gradients_equal_full_forward_ones() -> None:
    """The feature cache changes nothing: same meta-gradients as adapting the head with the
    whole network run at every step (a list of names defeats the cache)."""
    batch = batch_with_teacher()
    a = MAMLWrapper(net(), 0.3, 3, adapt="head", backend="func")
    head_names = list(a.adapted_names)
    assert a._loop.head_only
    b = MAMLWrapper(net(), 0.3, 3, adapt=lambda n, p: n in head_names, backend="vmap")
    b._loop.head_only = False
    for ga, gb in zip(meta_grads(a, batch), meta_grads(b, batch)):
        torch.testing.assert_close(ga, gb, rtol=0, atol=1e-10)


def test_meta_sgd_is_a_rule_with_learned_rates() -> None:
    batch = batch_with_teacher()
    maml = MAMLWrapper(net(), 0.3, 1, learn_inner_lr=True, backend="func")
    assert isinstance(maml.rule, MetaSGD)
    same = MAMLWrapper(net(), inner_steps=1, backend="func",
                       rule=MetaSGD(net().named_parameters(), 0.3))
    for ga, gb in zip(meta_grads(maml, batch), meta_grads(same, batch)):
        assert torch.equal(ga, gb)
    with pytest.raises(ValueError, match="either rule"):
        MAMLWrapper(net(), 0.3, 1, rule=SGD(0.3))
    with pytest.raises(ValueError, match="only the update rules"):
        MAMLWrapper(net(), inner_steps=1, rule=MySGD(0.1), backend="higher")


def test_deepcopy_and_state_dict_round_trips() -> None:
    batch = batch_with_teacher()
    maml = MAMLWrapper(net(), 0.3, 1, learn_inner_lr=True, objective=CEPlusKD())
    maml.meta_loss(batch)[0].backward()
    twin = copy.deepcopy(maml)
    assert twin.model is not maml.model
    twin.load_state_dict(maml.state_dict())
    for path in (maml, twin):
        path.zero_grad()
    for ga, gb in zip(meta_grads(maml, batch), meta_grads(twin, batch)):
        assert torch.equal(ga, gb)
    # the copy is independent
    with torch.no_grad():
        next(twin.model.parameters()).add_(1.0)
    assert not torch.equal(next(twin.model.parameters()), next(maml.model.parameters()))
    for obj in (SGD(0.1), MetaSGD({"w": torch.zeros(2)}, 0.1), CrossEntropy("sum_over_k")):
        clone = copy.deepcopy(obj)
        clone.load_state_dict(obj.state_dict())
        assert repr(clone) == repr(obj)


def test_functional_helpers() -> None:
    model = net()
    params = dict(model.named_parameters())
    vec = flatten_params(params)
    assert vec.numel() == sum(p.numel() for p in model.parameters())
    back = unflatten_params(vec * 2, params)
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    doubled = functional_forward(model, back, x)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2)
    torch.testing.assert_close(doubled, model(x))
    with pytest.raises(ValueError, match="cannot fill"):
        unflatten_params(vec[:-1], params)


def test_public_objects_deepcopy_and_round_trip_their_state() -> None:
    """Samplers, loaders, models and augmentations survive ``copy.deepcopy`` and a
    ``state_dict`` round trip: the copy continues exactly where the original is."""
    from metakd.data import Omniglot, augmentation, batches, few_shot
    from metakd.engine import Callback

    data = Omniglot(split="test")
    stream = few_shot(data, 5, 1, 1, meta_batch_size=2, seed=0, image_size=14, progress=False,
                      augment=augmentation("none", 14))
    loader = batches(data, 8, seed=0, image_size=14, progress=False)
    for source in (stream, loader):
        it = iter(source)
        next(it)
        clone = copy.deepcopy(source)
        restored = copy.deepcopy(source)
        restored.load_state_dict(source.state_dict())
        a, b, c = next(iter(source)), next(iter(clone)), next(iter(restored))
        first = (lambda x: x.support_x) if isinstance(a, TaskBatch) else (lambda x: x[0])
        assert torch.equal(first(a), first(b)) and torch.equal(first(a), first(c))
    model = create("resnet12", channels=(4, 4, 4, 4), num_classes=3)
    twin = copy.deepcopy(model)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    model.eval(), twin.eval()
    torch.testing.assert_close(model(x), twin(x), rtol=0, atol=0)
    cb = copy.deepcopy(Callback())
    cb.load_state_dict(cb.state_dict())


def test_the_default_path_starts_no_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eager (``compile=False``, or the default where ``compile="auto"`` stays eager, as in
    this suite): no worker or compile thread on either path auto picks; threads only when
    asked for (workers=2), and compiled per-task units (the default where it compiles)
    default to 2 on CPU."""
    import threading

    started: list[str] = []
    original = threading.Thread.start

    def spy(self: threading.Thread) -> None:
        started.append(self.name)
        original(self)

    monkeypatch.setattr(threading.Thread, "start", spy)
    small = batch_with_teacher(tasks=8)  # vmap under "auto"
    large = TaskBatch(torch.randn(2, 3, 1, 16, 16, dtype=torch.float64), small.support_y[:2],
                      torch.randn(2, 300, 1, 16, 16, dtype=torch.float64),
                      torch.arange(3).repeat_interleave(100).repeat(2, 1))  # func under "auto"
    for maml in (MAMLWrapper(net(), 0.3, 1), MAMLWrapper(net(), 0.3, 1, compile=False)):
        assert maml._backend.pick(small) is maml._backend.vmap  # type: ignore[attr-defined]
        assert maml._backend.pick(large) is maml._backend.func  # type: ignore[attr-defined]
        for b in (small, large):
            maml.meta_loss(b)[0].backward()
            maml.meta_loss(b, training=False)
    assert started == []
    MAMLWrapper(net(), 0.3, 1, backend="func", workers=2).meta_loss(large)[0].backward()
    assert len(started) == 2
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        compiled = MAMLWrapper(net(), 0.3, 1, compile=True)
        assert compiled._backend.func._resolve_workers(8) == 2  # type: ignore[attr-defined]
        assert compiled._backend.vmap._resolve_workers(8) == 1  # type: ignore[attr-defined]
        monkeypatch.delenv("METAKD_COMPILE")
        default = MAMLWrapper(net(), 0.3, 1)  # compile="auto", where it compiles
        assert default._backend.func._resolve_workers(8) == 2  # type: ignore[attr-defined]
        assert default._backend.vmap._resolve_workers(8) == 1  # type: ignore[attr-defined]
    finally:
        torch.set_num_threads(old)
