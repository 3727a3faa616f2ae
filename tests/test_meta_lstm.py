"""The Meta-LSTM optimiser and meta-learner (Ravi & Larochelle, ICLR 2017, and the attention
variant MLAL; spec ``meta-learning-spec.md`` §3.1-3.4, §3.9): each claim against an independent
computation (hand-computed values, explicit float64 loops, finite differences)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metakd.data import TaskBatch
from metakd.meta import SGD, AttentionLearner, CrossEntropy, InnerLoop, MetaLSTM, MetaLSTMOptimizer
from metakd.meta.inner import autograd_grad, run_task
from metakd.meta.meta_lstm import preprocess
from metakd.meta.meta_lstm_attention import CrossAttentionFrontEnd, MetaAttention
from metakd.meta.meta_lstm_learner import reset_batch_norm
from metakd.nn import create


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is faster than several on a loaded CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _episode(ways: int = 3, shots: int = 2, queries: int = 4, size: int = 12, tasks: int = 1,
             seed: int = 0, dtype: torch.dtype = torch.float32) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(ways)
    return TaskBatch(
        torch.rand(tasks, ways * shots, 1, size, size, generator=g, dtype=dtype),
        y.repeat_interleave(shots).repeat(tasks, 1),
        torch.rand(tasks, ways * queries, 1, size, size, generator=g, dtype=dtype),
        y.repeat_interleave(queries).repeat(tasks, 1))


def _net(bn: str = "running", hidden: int = 4, ways: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return create("conv2", in_channels=1, hidden=hidden, num_classes=ways, bn_mode=bn)


# --- preprocessing -----------------------------------------------------------------------------
def test_preprocess_hand_values_both_sides_of_threshold() -> None:
    e = math.exp
    x = torch.tensor([1.0, -e(-5), e(-12), -e(-11), 0.0, e(-10), e(3)], dtype=torch.float64)
    want = [
        [0.0, 1.0],                 # log(1)/10, sign
        [-0.5, -1.0],               # log(e^-5)/10
        [-1.0, e(10) * e(-12)],     # below e^-10: (-1, e^10 x)
        [-1.0, -e(10) * e(-11)],
        [-1.0, 0.0],
        [-1.0, 1.0],                # exactly e^-10: the log branch (>=), log(e^-10)/10 = -1
        [0.3, 1.0],
    ]
    got = preprocess(x, p=10.0)
    assert got.shape == (7, 2)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-12, rtol=0)
    # p = 2: threshold e^-2
    assert torch.allclose(preprocess(torch.tensor([e(-3), e(-1)], dtype=torch.float64), p=2.0),
                          torch.tensor([[-1.0, e(2) * e(-3)], [-0.5, 1.0]], dtype=torch.float64))


def test_preprocess_rejects_bad_p() -> None:
    with pytest.raises(ValueError, match="p must be positive"):
        preprocess(torch.ones(2), p=0.0)


# --- the cell ----------------------------------------------------------------------------------
def test_pinned_gates_are_exactly_sgd() -> None:
    """forget 1, input lr: the cell is SGD with rate lr, bit for bit (core SGD rule) and to
    1e-12 against an explicit float64 loop."""
    net = _net("transductive").double()
    batch = _episode(dtype=torch.float64)
    sx, sy = batch.support_x[0], batch.support_y[0]
    names = [n for n, _ in net.named_parameters()]
    rule = MetaLSTMOptimizer(net.named_parameters()).double()
    rule.pin_gates(1.0, 0.3)
    lstm_loop = InnerLoop(net, names, rule, CrossEntropy(), CrossEntropy())
    sgd_loop = InnerLoop(net, names, SGD(0.3), CrossEntropy(), CrossEntropy())
    got, _, _ = run_task(lstm_loop, net, sx, sy, None, None, {}, 4, "first", autograd_grad(False))
    ref, _, _ = run_task(sgd_loop, net, sx, sy, None, None, {}, 4, "first", autograd_grad(False))
    for n in names:
        assert torch.equal(got[n], ref[n]), n
    # explicit loop
    from metakd.meta import functional_forward

    p = {n: t.detach().clone() for n, t in net.named_parameters()}
    for _ in range(4):
        p = {n: t.requires_grad_() for n, t in p.items()}
        loss = F.cross_entropy(functional_forward(net, p, sx), sy)
        gs = torch.autograd.grad(loss, list(p.values()))
        p = {n: (t - 0.3 * g).detach() for (n, t), g in zip(p.items(), gs)}
    for n in names:
        assert torch.allclose(got[n], p[n], atol=1e-12, rtol=0), n
        assert not torch.equal(got[n], dict(net.named_parameters())[n])


def _cell_reference(rule: MetaLSTMOptimizer, theta: torch.Tensor, grads: list[torch.Tensor],
                    losses: list[float]) -> torch.Tensor:
    """The cell's equations, one coordinate at a time, in float64 Python loops."""
    H = rule.hidden_size
    W = rule.lstm_weight.detach().double()
    b = rule.lstm_bias.detach().double()
    wf, wi = rule.forget_weight.detach().double(), rule.input_weight.detach().double()
    bf, bi = rule.forget_bias.item(), rule.input_bias.item()
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731

    def pre(v: float) -> list[float]:
        return [math.log(abs(v)) / 10, math.copysign(1.0, v)] if abs(v) >= math.exp(-10) \
            else [-1.0, math.exp(10) * v]

    out = []
    for j in range(theta.numel()):
        c, h, s, fp, ip = float(theta[j]), [0.0] * H, [0.0] * H, 0.0, 0.0
        for g_all, L in zip(grads, losses):
            g = float(g_all[j]) * rule.grad_scale
            x = pre(L) + pre(g) + h
            z = [sum(x[k] * float(W[k, u]) for k in range(4 + H)) + float(b[u])
                 for u in range(4 * H)]
            s = [sig(z[H + u]) * s[u] + sig(z[u]) * math.tanh(z[3 * H + u]) for u in range(H)]
            h = [sig(z[2 * H + u]) * math.tanh(s[u]) for u in range(H)]
            f = sum(h[u] * float(wf[u]) for u in range(H)) + c * float(wf[H]) + fp * float(wf[H + 1]) + bf
            i = sum(h[u] * float(wi[u]) for u in range(H)) + c * float(wi[H]) + ip * float(wi[H + 1]) + bi
            c = sig(f) * c - sig(i) * g
            fp, ip = (f, i) if rule.gate_feedback == "logit" else (sig(f), sig(i))
        out.append(c)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("feedback", ["logit", "sigmoid"])
def test_cell_matches_scalar_reference(feedback: str) -> None:
    torch.manual_seed(1)
    params = {"w": torch.randn(3, 2, dtype=torch.float64), "b": torch.randn(2, dtype=torch.float64)}
    rule = MetaLSTMOptimizer(params, hidden_size=3, gate_feedback=feedback, grad_scale=0.5,
                             init_range=0.5).double()
    grads = [torch.randn(8, dtype=torch.float64) * 10 ** -k for k in (0, 3, 6)]
    grads[2][0] = 1e-9  # below e^-10 after scaling: the other preprocessing branch
    losses = [2.0, 0.5, 3e-5]
    p, state = dict(params), rule.init_state(params)
    for k, (g, L) in enumerate(zip(grads, losses)):
        gd = {"w": g[:6].view(3, 2), "b": g[6:]}
        p, state = rule(gd, p, state, k, torch.tensor(L, dtype=torch.float64))
    got = torch.cat([p["w"].reshape(-1), p["b"]])
    want = _cell_reference(rule, torch.cat([params["w"].reshape(-1), params["b"]]), grads, losses)
    assert torch.allclose(got, want, atol=1e-12, rtol=1e-10)


def _cell_equations(rule: MetaLSTMOptimizer, theta: torch.Tensor, grads: list[torch.Tensor],
                    losses: list[float]) -> torch.Tensor:
    """The cell's equations as written (loss rows in every column, torch.tanh), differentiable."""
    H, n = rule.hidden_size, theta.numel()
    h, s = theta.new_zeros(H, n), theta.new_zeros(H, n)
    fp, ip, c = theta.new_zeros(n), theta.new_zeros(n), theta
    for g, L in zip(grads, losses):
        g = g * rule.grad_scale
        lp = preprocess(torch.tensor(L, dtype=theta.dtype))[:, None].expand(2, n)
        x = torch.cat([lp, preprocess(g, dim=0), h], 0)
        zi, zf, zo, zg = (rule.lstm_weight.t() @ x + rule.lstm_bias[:, None]).chunk(4, 0)
        s = torch.sigmoid(zf) * s + torch.sigmoid(zi) * torch.tanh(zg)
        h = torch.sigmoid(zo) * torch.tanh(s)
        wf, wi = rule.forget_weight, rule.input_weight
        f = wf[:H] @ h + c * wf[H] + fp * wf[H + 1] + rule.forget_bias
        i = wi[:H] @ h + c * wi[H] + ip * wi[H + 1] + rule.input_bias
        c = torch.sigmoid(f) * c - torch.sigmoid(i) * g
        fp, ip = f, i
    return c


def test_cell_meta_gradient_matches_the_written_equations() -> None:
    """The cell folds the loss rows into its bias and takes tanh through the sigmoid; its
    gradients with respect to every weight of the rule and to the initial parameters are
    those of the equations as written, in float64."""
    torch.manual_seed(3)
    theta0 = torch.randn(7, dtype=torch.float64, requires_grad=True)
    rule = MetaLSTMOptimizer({"w": theta0}, hidden_size=4, grad_scale=0.5,
                             init_range=0.5).double()
    grads = [torch.randn(7, dtype=torch.float64) * 10 ** -k for k in (0, 2, 4)]
    losses = [2.0, 0.4, 1e-6]
    weights = [theta0, *rule.parameters()]
    target = torch.randn(7, dtype=torch.float64)

    p, state = {"w": theta0}, rule.init_state({"w": theta0})
    for k, (g, L) in enumerate(zip(grads, losses)):
        p, state = rule({"w": g}, p, state, k, torch.tensor(L, dtype=torch.float64))
    got = torch.autograd.grad((p["w"] * target).sum(), weights)
    want = torch.autograd.grad((_cell_equations(rule, theta0, grads, losses) * target).sum(),
                               weights)
    for a, b in zip(got, want):
        assert a.abs().max() > 0
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)


def test_initialisation_ranges() -> None:
    torch.manual_seed(0)
    rule = MetaLSTMOptimizer({"w": torch.zeros(10)})
    assert 4 <= rule.forget_bias.item() <= 5 and -5 <= rule.input_bias.item() <= -4
    for t in (rule.lstm_weight, rule.lstm_bias, rule.forget_weight, rule.input_weight):
        assert t.abs().max() <= 0.01
    assert rule.lstm_weight.shape == (24, 80) and rule.forget_weight.shape == (22,)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="gate_feedback"):
        MetaLSTMOptimizer({"w": torch.zeros(1)}, gate_feedback="post")
    with pytest.raises(ValueError, match="at least one"):
        MetaLSTMOptimizer({})
    rule = MetaLSTMOptimizer({"w": torch.zeros(3)})
    with pytest.raises(ValueError, match="built for 3"):
        rule({"w": torch.zeros(4)}, {"w": torch.zeros(4)}, None, 0, torch.tensor(1.0))
    with pytest.raises(ValueError, match="support loss"):
        rule({"w": torch.zeros(3)}, {"w": torch.zeros(3)}, None, 0, None)
    with pytest.raises(ValueError, match="epochs"):
        MetaLSTM(nn.Linear(2, 2), epochs=0)


# --- gradients ---------------------------------------------------------------------------------
@pytest.mark.parametrize("attention", [False, True])
def test_meta_gradient_reaches_every_parameter(attention: bool) -> None:
    net = _net()
    model = AttentionLearner(net, 1, 12) if attention else net
    meta = MetaLSTM(model, epochs=2, batch_size=4, attention=attention, hidden_size=4)
    loss, metrics = meta.meta_loss(_episode(tasks=2))
    loss.backward()
    missing = [n for n, p in meta.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert missing == []
    assert metrics["task_accuracy"].shape == (2,)
    assert meta.inner_steps(6) == 4  # 2 epochs x 2 minibatches


def test_works_with_a_resnet12() -> None:
    """Any metakd backbone: a (narrow) ResNet-12 with its running batch norm."""
    torch.manual_seed(0)
    net = create("resnet12", in_channels=1, num_classes=3, channels=(4, 8, 8, 8))
    meta = MetaLSTM(net, epochs=1, batch_size=6)
    loss, _ = meta.meta_loss(_episode(size=16))
    loss.backward()
    assert meta.rule.num_params == sum(p.numel() for p in net.parameters())
    assert all(p.grad is not None for p in meta.parameters())
    assert meta.predict(_episode(size=16)).shape == (1, 12, 3)


def test_meta_gradient_matches_finite_differences() -> None:
    """The surrogate's gradient is the derivative of the mean query loss through all updates
    (float64 central differences). The meta-gradient takes the support gradients and loss as
    constants, so the support objective here has a constant value and a gradient that does not
    depend on the parameters (linear in the logits of a linear model): then the derivative of
    the whole map is exactly that meta-gradient."""

    def support(logits, labels, extras, step):
        lin = -(F.one_hot(labels, 3).to(logits.dtype) * logits).sum() * 0.3
        return {"lin": lin - lin.detach() + 0.7}

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3)).double()
    meta = MetaLSTM(net, epochs=3, batch_size=6, hidden_size=3, support=support).double()
    with torch.no_grad():  # larger gates, so every weight matters visibly
        meta.rule.input_bias.fill_(-1.0)
        meta.rule.lstm_weight.normal_(0, 0.5)
        meta.rule.forget_weight.normal_(0, 0.5)
        meta.rule.input_weight.normal_(0, 0.5)
    g = torch.Generator().manual_seed(3)
    y = torch.arange(3)
    batch = TaskBatch(torch.randn(2, 6, 4, generator=g, dtype=torch.float64),
                      y.repeat(2).repeat(2, 1), torch.randn(2, 9, 4, generator=g,
                                                            dtype=torch.float64),
                      y.repeat(3).repeat(2, 1))
    loss, _ = meta.meta_loss(batch)
    loss.backward()
    for name in ["rule.forget_bias", "rule.input_bias", "rule.lstm_weight", "rule.input_weight",
                 "rule.forget_weight", "model.0.weight", "model.0.bias"]:
        p = dict(meta.named_parameters())[name]
        flat = p.data.view(-1)
        idx = min(5, flat.numel() - 1)
        old = float(flat[idx])
        vals = []
        for d in (1e-6, -1e-6):
            flat[idx] = old + d
            vals.append(meta.meta_loss(batch, training=True)[1]["loss"])
        flat[idx] = old
        fd = (vals[0] - vals[1]) / 2e-6
        assert p.grad.view(-1)[idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-8), name


# --- the label leak ----------------------------------------------------------------------------
@pytest.mark.parametrize("attention", [False, True])
def test_no_query_label_is_read_during_adaptation(attention: bool) -> None:
    """Query labels that change the loss (so they are live) leave the adapted learner and the
    query logits bit-identical, at meta-test and in meta-training."""
    net = _net()
    model = AttentionLearner(net, 1, 12) if attention else net
    meta = MetaLSTM(model, epochs=2, batch_size=3, attention=attention, hidden_size=4)
    with torch.no_grad():
        meta.rule.input_bias.fill_(0.0)  # a real update
    batch = _episode(tasks=2)
    g = torch.Generator().manual_seed(5)
    other = torch.stack([torch.randperm(batch.query_y.shape[1], generator=g) % 3
                         for _ in range(2)])
    swapped = TaskBatch(batch.support_x, batch.support_y, batch.query_x, other)
    for training in (False, True):
        _, m1 = meta.meta_loss(batch, training=training)
        _, m2 = meta.meta_loss(swapped, training=training)
        assert m1["loss"] != m2["loss"]
    torch.manual_seed(0)
    a = meta.predict(batch)
    b = meta.predict(swapped)
    assert torch.equal(a, b)
    sx, sy = batch.support_x[0], batch.support_y[0]
    p1 = meta.adapt_params(sx, sy)
    p2 = meta.adapt_params(sx, sy)
    assert all(torch.equal(p1[n], p2[n]) for n in p1)
    start = dict(meta.model.named_parameters())
    assert any(not torch.equal(p1[n], start[n]) for n in p1)


def test_original_style_context_would_depend_on_query_labels() -> None:
    """The check above can fail: MLAL's front end fed same-class query images (picked by
    label) changes the support's features, ours (the image itself) does not read them."""
    front = CrossAttentionFrontEnd(1, 12, 12)
    batch = _episode(shots=1, queries=4)
    sx, qx, qy = batch.support_x[0], batch.query_x[0], batch.query_y[0]
    pick = lambda labels: torch.stack([qx[labels == c][0] for c in range(3)])  # noqa: E731
    other = qy[torch.randperm(qy.numel(), generator=torch.Generator().manual_seed(1))]
    assert not torch.equal(front(sx, pick(qy)), front(sx, pick(other)))
    assert torch.equal(front(sx), front(sx, sx))


# --- batch norm and minibatches ----------------------------------------------------------------
def test_batch_norm_protocol() -> None:
    """Reset per episode; meta-test queries use this episode's support statistics, so each
    query is classified independently of the other queries (and of earlier episodes)."""
    meta = MetaLSTM(_net(), epochs=2, batch_size=6)
    e1, e2 = _episode(seed=1), _episode(seed=2)
    ref = meta.predict(e2)
    meta.predict(e1)
    assert torch.equal(meta.predict(e2), ref)  # nothing carried over from e1
    one = TaskBatch(e2.support_x, e2.support_y, e2.query_x[:, :1], e2.query_y[:, :1])
    assert torch.allclose(meta.predict(one)[0, 0], ref[0, 0], atol=1e-6)
    # running statistics after adaptation = momentum updates from zero/one with the support
    # batches (2 epochs of one batch of 6): the first conv's BN
    net = meta.model
    meta.adapt_params(e2.support_x[0], e2.support_y[0])
    bn = net.encoder.block1.bn
    assert int(bn.num_batches_tracked) == 2
    assert reset_batch_norm(net) == 2 and int(bn.num_batches_tracked) == 0
    # at meta-training the query is normalised with its own batch statistics
    _, m_train = meta.meta_loss(e2, training=True)
    _, m_test = meta.meta_loss(e2, training=False)
    assert m_train["loss"] != m_test["loss"]


def test_minibatches_follow_the_support_order() -> None:
    seen: list[list[int]] = []

    def support(logits, labels, extras, step):
        seen.append(labels.tolist())
        return {"ce": F.cross_entropy(logits, labels)}

    meta = MetaLSTM(_net(), epochs=2, batch_size=4, support=support)
    meta.adapt_params(_episode().support_x[0], _episode().support_y[0])
    assert seen == [[0, 0, 1, 1], [2, 2], [0, 0, 1, 1], [2, 2]]


def test_meta_attention_shapes_and_softmax() -> None:
    torch.manual_seed(0)
    att = MetaAttention(10, 2, chunk=3)
    assert (att.rows, att.chunk) == (4, 3)
    h = torch.randn(10, 2)
    x = F.pad(h, (0, 0, 0, 2)).reshape(4, 6)
    a = att.query(x) @ att.key(x).T / math.sqrt(6)
    want = (x + a @ att.value(x)).reshape(12, 2)[:10]
    assert torch.allclose(att(h), want, atol=1e-6)
    att.softmax = True
    want = (x + a.softmax(-1) @ att.value(x)).reshape(12, 2)[:10]
    assert torch.allclose(att(h), want, atol=1e-6)
    with pytest.raises(ValueError, match="sized for"):
        att(torch.zeros(9, 2))


# --- it learns ---------------------------------------------------------------------------------
class _Point(nn.Module):
    """A "learner" whose output is its parameter vector, for every input row."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta.expand(x.shape[0], -1)


def _half_sq(out, y, extras, step):
    return {"sq": 0.5 * ((out - y) ** 2).sum(-1).mean()}


def _quadratic_tasks(g: torch.Generator, tasks: int, n_s: int = 2, n_q: int = 10,
                     dim: int = 6) -> TaskBatch:
    """Task t ~ N(mu, 0.5^2 I); support and query points are t + N(0, 1) noise; the loss of a
    point set is half the mean squared distance to it."""
    mu = torch.linspace(-2.0, 2.0, dim)
    t = mu + 0.5 * torch.randn(tasks, 1, dim, generator=g)
    ys = t + torch.randn(tasks, n_s, dim, generator=g)
    yq = t + torch.randn(tasks, n_q, dim, generator=g)
    return TaskBatch(torch.zeros(tasks, n_s, 1), ys, torch.zeros(tasks, n_q, 1), yq)


def test_trained_meta_learner_beats_sgd_on_quadratic_tasks() -> None:
    """A family of quadratic tasks: after meta-training, 4 Meta-LSTM updates from its learned
    initial state lower the held-out query loss more than 4 SGD steps from the same starting
    weights at the best of several rates (the meta-learner learns where tasks lie and how far
    to trust a 2-point support set)."""
    torch.manual_seed(0)
    net = _Point(6)
    start = net.theta.detach().clone()
    meta = MetaLSTM(net, epochs=4, batch_size=2, scale_grads=False, support=_half_sq,
                    objective=_half_sq, hidden_size=8)
    opt = torch.optim.Adam(meta.parameters(), lr=3e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        loss, _ = meta.meta_loss(_quadratic_tasks(g, 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = _quadratic_tasks(torch.Generator().manual_seed(99), 200)
    ours = meta.meta_loss(test, training=False)[1]["loss"]

    def sgd_loss(lr: float) -> float:  # explicit float64 loop: grad of the loss is theta - mean
        theta = start.double().expand(len(test), -1)
        mean_s = test.support_y.double().mean(1)
        for _ in range(4):
            theta = theta - lr * (theta - mean_s)
        return float((0.5 * ((theta[:, None] - test.query_y.double()) ** 2).sum(-1)).mean())

    best_sgd = min(sgd_loss(lr) for lr in (0.1, 0.3, 0.5, 0.7, 1.0, 1.3))
    assert ours < best_sgd - 0.1, (ours, best_sgd)
