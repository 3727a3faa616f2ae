"""The training steps that ``benchmarks.method_speed`` times: metakd's and a reference's.

For each method, :func:`build` returns a :class:`Step` for ``impl="metakd"`` (the library's
meta-learner, built as its recipe builds it) or ``impl="reference"`` (a plain loop written
the way the original project's training step is written). Both sides run the same
:mod:`metakd.nn` network with the same seeded weights on the same seeded inputs, so they do
the same work: the first step's loss and gradient norm are compared by the caller. The
reference's max-pooling layers are PyTorch's :class:`torch.nn.MaxPool2d`, which the original
projects' networks use, in place of :class:`metakd.nn.pool.MaxPool2d` (the same values and
gradients, faster on small CPU maps).

The references keep the originals' structure (per-task Python loops, where the graphs live,
one ``backward()`` per what) but leave out what would make them do other work than metakd:
logging-only forward passes and graphs through a frozen teacher. Each function's docstring
says what is kept.

Importing this module loads no part of metakd; :func:`build` imports what it needs.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

METHODS = ("pmaml", "mtl", "meta_lstm", "meta_baseline", "cifar_kd")
IMPLS = ("metakd", "reference")


@dataclass(frozen=True)
class Config:
    """The sizes every step is built with (the defaults: the full run's).

    Few-shot methods: Omniglot-sized 28 px grey images, ``ways``-way ``shots``-shot episodes
    with ``queries`` queries per class, ``meta_batch`` episodes per step. The method fields
    follow each recipe's Omniglot settings (``metakd.recipes``: ``PMAMLConfig.paper``,
    ``MTLConfig.paper``, ``MetaLSTMConfig.paper(shots=1)``, the Meta-Baseline recipe, and the
    CIFAR KD recipe's mdistiller KD).
    """

    ways: int = 5
    shots: int = 1
    queries: int = 15
    meta_batch: int = 4
    image_size: int = 28
    #: PMAML: a Conv-4/32 student, a frozen Conv-4/64 teacher, 1 second-order inner step of
    #: 0.4, KD at T = 10 with λ = 0.9 (``nn.KLDivLoss()``'s element mean), recipe backend (auto).
    pmaml_student_hidden: int = 32
    pmaml_teacher_hidden: int = 64
    pmaml_inner_lr: float = 0.4
    pmaml_inner_steps: int = 1
    pmaml_temperature: float = 10.0
    pmaml_lambda: float = 0.9
    pmaml_backend: str = "auto"
    #: The student's ``compile``: ``False`` as the PMAML recipe runs it.
    pmaml_compile: bool = False
    #: MTL's meta phase (PyTorch variant): scale-shift Conv-4/64, head-only inner loop of
    #: ``mtl_update_step`` first-order steps of ``mtl_base_lr``, ``mtl_queries`` queries.
    mtl_hidden: int = 64
    mtl_update_step: int = 10
    mtl_base_lr: float = 0.1
    mtl_queries: int = 5
    mtl_backend: str = "auto"
    #: ``compile``: ``False`` as the MTL recipe runs it.
    mtl_compile: bool = False
    #: Meta-LSTM: Conv-4/32 with a flatten head and running batch norm, 12 epochs over the
    #: support set in minibatches of 5, a 20-unit LSTM.
    meta_lstm_hidden: int = 32
    meta_lstm_epochs: int = 12
    meta_lstm_batch_size: int = 5
    meta_lstm_lstm_hidden: int = 20
    #: Meta-Baseline: a Conv-4/64 encoder (running batch norm), cosine centroids, τ = 10.
    baseline_hidden: int = 64
    #: CIFAR KD: mdistiller's resnet32x4 → resnet8x4, KD T = 4, CE 0.1, KD 0.9, 100 classes.
    cifar_student: str = "resnet8x4"
    cifar_teacher: str = "resnet32x4"
    cifar_batch: int = 64
    cifar_classes: int = 100
    cifar_temperature: float = 4.0
    cifar_ce_weight: float = 0.1
    cifar_kd_weight: float = 0.9


#: The ``--quick`` sizes: the same networks on smaller batches and shorter inner loops.
QUICK: dict[str, Any] = dict(meta_batch=2, queries=5, mtl_update_step=3, mtl_queries=3,
                             meta_lstm_epochs=3, cifar_batch=16)


@dataclass
class Step:
    """One training step of a method, and what the caller measures with it.

    Attributes:
        run: zeroes the gradients, computes the loss, back-propagates; returns the loss
            (detached).
        params: the tensors whose gradients the step computes (the gradient norm's).
        units: what one step processes (tasks, or images for CIFAR KD).
        extra: called once after the timed steps; its dict is added to the result.
    """

    run: Callable[[], Tensor]
    params: Sequence[Tensor]
    units: int
    extra: Callable[[], dict[str, Any]] | None = field(default=None)


def episodes(cfg: Config, queries: int, device: torch.device) -> Any:
    """A seeded meta-batch of ``cfg.meta_batch`` episodes, labels grouped by class.

    Shapes: ``support_x [T, N*K, 1, S, S]``, ``query_x [T, N*Q, 1, S, S]``.
    """
    from metakd.data import TaskBatch

    g = torch.Generator().manual_seed(1)
    t, n, k, s = cfg.meta_batch, cfg.ways, cfg.shots, cfg.image_size
    return TaskBatch(
        torch.rand(t, n * k, 1, s, s, generator=g),
        torch.arange(n).repeat_interleave(k).repeat(t, 1),
        torch.rand(t, n * queries, 1, s, s, generator=g),
        torch.arange(n).repeat_interleave(queries).repeat(t, 1),
    ).to(device)


def _zero(params: Sequence[Tensor]) -> None:
    for p in params:
        p.grad = None


def _torch_pools(*models: nn.Module) -> None:
    """Replace ``models``' :class:`metakd.nn.pool.MaxPool2d` layers by :class:`torch.nn.MaxPool2d`
    with the same arguments: the pooling the original projects' networks run (same values
    and gradients; only the CPU speed differs)."""
    from metakd.nn.pool import MaxPool2d

    for model in models:
        for parent in list(model.modules()):
            for name, child in parent.named_children():
                if isinstance(child, MaxPool2d):
                    setattr(parent, name, nn.MaxPool2d(child.kernel_size, child.stride,
                                                       child.padding, child.dilation,
                                                       ceil_mode=child.ceil_mode))


def _functional(model: nn.Module) -> tuple[list[str], Callable[[list[Tensor], Tensor], Tensor]]:
    """``model``'s parameter names and ``forward(params, x)`` with those tensors in place."""
    names = [n for n, _ in model.named_parameters()]

    def forward(params: list[Tensor], x: Tensor) -> Tensor:
        return torch.func.functional_call(model, dict(zip(names, params)), (x,))

    return names, forward


# ------------------------------------------------------------------------------------- PMAML
def pmaml(impl: str, cfg: Config, device: torch.device) -> Step:
    """PMAML's meta-training step: a MAML student, the frozen teacher's query logits, KD.

    metakd: :class:`metakd.distill.PMAML` with the recipe's loss and backend,
    ``meta_loss(batch, step=0)[0].backward()``.

    Reference (the official code, on dragen1860's MAML-Pytorch): per task a functional inner
    loop (``torch.autograd.grad`` of the support loss, fast weights ``p - α g``), the
    teacher's logits of that task's query set, the query loss ``(1 − λ)·CE + λ·T²·KL``
    (``nn.KLDivLoss()``), summed over the tasks; one ``backward()`` of the mean at the end,
    so every task's graph is alive until then. Not kept: the extra no-grad query passes
    MAML-Pytorch makes for its accuracy log, and the teacher's graph (it runs under
    ``torch.no_grad``). MAML-Pytorch's hand-written functional network is
    ``torch.func.functional_call`` on the same module; ``create_graph=True`` gives the
    second-order gradient that metakd computes.
    """
    from metakd.nn import create

    torch.manual_seed(0)
    student = create("conv4", in_channels=1, num_classes=cfg.ways,
                     hidden=cfg.pmaml_student_hidden).to(device)
    teacher = create("conv4", in_channels=1, num_classes=cfg.ways,
                     hidden=cfg.pmaml_teacher_hidden).to(device)
    batch = episodes(cfg, cfg.queries, device)
    temp, lam = cfg.pmaml_temperature, cfg.pmaml_lambda
    params: list[Tensor] = list(student.parameters())
    t = len(batch)

    if impl == "metakd":
        from metakd.distill import PMAML, preset
        from metakd.meta import MAMLWrapper

        loss = preset("pmaml", temperature=temp, kd_weight=lam, ce_weight=1.0 - lam,
                      reduction="mean_elements")
        learner = PMAML(student, MAMLWrapper(teacher, inner_lr=cfg.pmaml_inner_lr),
                        inner_lr=cfg.pmaml_inner_lr, inner_steps=cfg.pmaml_inner_steps,
                        loss=loss, schedule="every", backend=cfg.pmaml_backend,
                        compile=cfg.pmaml_compile).to(device)

        def run() -> Tensor:
            _zero(params)
            value, _ = learner.meta_loss(batch, step=0)
            value.backward()
            return value.detach()

        def extra() -> dict[str, Any]:
            """The teacher's logits of the meta-batch alone (PMAML.teacher_logits)."""
            times = []
            for _ in range(3):
                t0 = time_now(device)
                learner.teacher_logits(batch)
                times.append(time_now(device) - t0)
            return {"teacher_logits_s": min(times)}

        return Step(run, params, t, extra)

    _torch_pools(student, teacher)
    teacher.eval().requires_grad_(False)
    _, forward = _functional(student)
    kl = nn.KLDivLoss()  # its element mean is PMAML's; torch warns that it is not batchmean
    warnings.filterwarnings("ignore", message="reduction: 'mean' divides the total loss")

    def run_reference() -> Tensor:
        _zero(params)
        losses_q = torch.zeros((), device=device)
        for i in range(t):
            logits = forward(params, batch.support_x[i])
            loss = F.cross_entropy(logits, batch.support_y[i])
            grad = torch.autograd.grad(loss, params, create_graph=True)
            fast = [p - cfg.pmaml_inner_lr * g for p, g in zip(params, grad)]
            for _ in range(1, cfg.pmaml_inner_steps):
                loss = F.cross_entropy(forward(fast, batch.support_x[i]), batch.support_y[i])
                grad = torch.autograd.grad(loss, fast, create_graph=True)
                fast = [p - cfg.pmaml_inner_lr * g for p, g in zip(fast, grad)]
            with torch.no_grad():
                teacher_logits = teacher(batch.query_x[i])
            logits_q = forward(fast, batch.query_x[i])
            loss_q = (1 - lam) * F.cross_entropy(logits_q, batch.query_y[i]) + lam * temp**2 * kl(
                F.log_softmax(logits_q / temp, dim=1), F.softmax(teacher_logits / temp, dim=1))
            losses_q = losses_q + loss_q
        loss_q = losses_q / t
        loss_q.backward()
        return loss_q.detach()

    return Step(run_reference, params, t)


def time_now(device: torch.device) -> float:
    """``time.perf_counter()`` after the device's queued work is done."""
    import time

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# --------------------------------------------------------------------------------------- MTL
def mtl(impl: str, cfg: Config, device: torch.device) -> Step:
    """MTL's meta phase: scale-shift body, head-only inner loop, first-order meta-gradient.

    Both sides: Conv-4 with a fresh head made scale-shift by
    ``metakd.nn.mtl_preset(model, "mtl_pytorch")`` (frozen kernels; scale, shift, batch-norm
    affine and head trained), random weights standing in for the pre-trained body.

    metakd: the recipe's :class:`metakd.meta.MAMLWrapper` (``adapt="head"``, first order).

    Reference (the PyTorch MTL project's ``MtlLearner.meta_forward`` and its trainer, one
    episode at a time): the encoder on the query and on the support set, ``update_step``
    steps of ``torch.autograd.grad`` on the classifier's fast weights (no ``create_graph``:
    first order), the query logits with the last fast weights, and one ``backward()`` per
    episode (its loss divided by the meta-batch).
    """
    from metakd.nn import create, mtl_preset

    torch.manual_seed(0)
    model = create("conv4", in_channels=1, num_classes=cfg.ways, hidden=cfg.mtl_hidden)
    trainable = set(mtl_preset(model, "mtl_pytorch"))
    model.to(device).train()
    params = [p for n, p in model.named_parameters() if n in trainable]
    batch = episodes(cfg, cfg.mtl_queries, device)
    t, lr = len(batch), cfg.mtl_base_lr

    if impl == "metakd":
        from metakd.meta import MAMLWrapper

        learner = MAMLWrapper(model, inner_lr=lr, inner_steps=cfg.mtl_update_step,
                              first_order=True, adapt="head", inner_loss_reduction="mean",
                              backend=cfg.mtl_backend, compile=cfg.mtl_compile)

        def run() -> Tensor:
            _zero(params)
            value, _ = learner.meta_loss(batch, step=0)
            value.backward()
            return value.detach()

        return Step(run, params, t)

    _torch_pools(model)
    head: Any = model.head

    def base_learner(x: Tensor, the_vars: list[Tensor]) -> Tensor:
        return F.linear(x, the_vars[0], the_vars[1])

    def run_reference() -> Tensor:
        _zero(params)
        total = torch.zeros((), device=device)
        for i in range(t):
            embedding_query = model.features(batch.query_x[i])  # type: ignore[operator]
            embedding_shot = model.features(batch.support_x[i])  # type: ignore[operator]
            weights = [head.weight, head.bias]
            loss = F.cross_entropy(base_learner(embedding_shot, weights), batch.support_y[i])
            grad = torch.autograd.grad(loss, weights)
            fast_weights = [p - lr * g for p, g in zip(weights, grad)]
            for _ in range(1, cfg.mtl_update_step):
                loss = F.cross_entropy(base_learner(embedding_shot, fast_weights),
                                       batch.support_y[i])
                grad = torch.autograd.grad(loss, fast_weights)
                fast_weights = [p - lr * g for p, g in zip(fast_weights, grad)]
            logits_q = base_learner(embedding_query, fast_weights)
            loss_q = F.cross_entropy(logits_q, batch.query_y[i]) / t
            loss_q.backward()
            total = total + loss_q.detach()
        return total

    return Step(run_reference, params, t)


# --------------------------------------------------------------------------------- Meta-LSTM
def _preprocess(x: Tensor, p: float = 10.0) -> Tensor:
    """markdtw's ``preprocess_grad_loss``; the logarithm is of ``|x|`` clamped to ``e^-p``
    (where the indicator is 0) instead of ``|x| + 1e-8``, so the values are metakd's."""
    indicator = (x.abs() >= math.exp(-p)).to(x.dtype)
    x_proc1 = indicator * torch.log(x.abs().clamp_min(math.exp(-p))) / p + (1 - indicator) * -1
    x_proc2 = indicator * torch.sign(x) + (1 - indicator) * math.exp(p) * x
    return torch.stack((x_proc1, x_proc2), 1)


class _MarkdtwMetaLearner(nn.Module):
    """markdtw's ``MetaLearner``: an ``nn.LSTMCell`` on (loss, gradient) features, then the
    ``MetaLSTMCell`` whose cell state is the learner's flat parameters.

    Its weights are copied from a :class:`metakd.meta.MetaLSTMOptimizer` (gate order and
    layout converted), so both sides start from the same values. ``nn.LSTMCell``'s second
    bias is held at zero and frozen: it only duplicates the first.
    """

    def __init__(self, rule: Any) -> None:
        super().__init__()
        h = rule.hidden_size
        self.lstm = nn.LSTMCell(4, h)
        with torch.no_grad():
            w_i, w_f, w_o, w_g = rule.lstm_weight.detach().chunk(4, 1)  # [4 + H, H] each
            w = torch.cat([w_i, w_f, w_g, w_o], 1).t()  # torch's gate order: i, f, g, o
            self.lstm.weight_ih.copy_(w[:, :4])
            self.lstm.weight_hh.copy_(w[:, 4:])
            b_i, b_f, b_o, b_g = rule.lstm_bias.detach().chunk(4)
            self.lstm.bias_ih.copy_(torch.cat([b_i, b_f, b_g, b_o]))
            self.lstm.bias_hh.zero_()
        self.lstm.bias_hh.requires_grad_(False)
        self.WF = nn.Parameter(rule.forget_weight.detach().clone()[:, None])  # [H + 2, 1]
        self.WI = nn.Parameter(rule.input_weight.detach().clone()[:, None])
        self.bF = nn.Parameter(rule.forget_bias.detach().clone().reshape(1, 1))
        self.bI = nn.Parameter(rule.input_bias.detach().clone().reshape(1, 1))

    def forward(self, loss_prep: Tensor, grad_prep: Tensor, grad: Tensor, c_prev: Tensor,
                hs: list[Any]) -> tuple[Tensor, list[Any]]:
        inputs = torch.cat((loss_prep.expand_as(grad_prep), grad_prep), 1)
        lstmhx, lstmcx = self.lstm(inputs, hs[0])
        f_prev, i_prev = hs[1] if hs[1] is not None else (
            torch.zeros_like(c_prev), torch.zeros_like(c_prev))
        f_next = torch.mm(torch.cat((lstmhx, c_prev, f_prev), 1), self.WF) + self.bF
        i_next = torch.mm(torch.cat((lstmhx, c_prev, i_prev), 1), self.WI) + self.bI
        c_next = torch.sigmoid(f_next).mul(c_prev) - torch.sigmoid(i_next).mul(grad)
        return c_next, [(lstmhx, lstmcx), (f_next, i_next)]


def meta_lstm(impl: str, cfg: Config, device: torch.device) -> Step:
    """Meta-LSTM's meta-training step (Ravi & Larochelle), ``meta_batch`` episodes.

    metakd: :class:`metakd.meta.MetaLSTM` with the recipe's 1-shot settings.

    Reference (markdtw's ``meta-learner-lstm-pytorch`` ``train_learner`` and main loop, one
    episode at a time): reset the learner's batch-norm statistics; for each epoch and support
    minibatch copy the current flat parameters into a plain learner module (``.data``),
    ``backward()`` its loss, divide the gradients by the batch size, preprocess them and the
    loss, and step the meta-learner; then the query loss of the final parameters (a
    functional forward of the same network, batch statistics) and one ``backward()`` per
    episode (divided by the meta-batch). The meta-learner is ``nn.LSTMCell`` plus markdtw's
    ``MetaLSTMCell``; its initial cell state is the learner's parameters.
    """
    from metakd.meta import MetaLSTM, MetaLSTMOptimizer
    from metakd.nn import create

    torch.manual_seed(0)
    model = create("conv4", in_channels=1, num_classes=cfg.ways, hidden=cfg.meta_lstm_hidden,
                   head="flatten", image_size=cfg.image_size, bn_mode="running",
                   bn_momentum=0.9, bn_eps=1e-3).to(device)
    batch = episodes(cfg, cfg.queries, device)
    t, bs = len(batch), cfg.meta_lstm_batch_size
    if impl == "metakd":
        meta = MetaLSTM(model, epochs=cfg.meta_lstm_epochs, batch_size=bs,
                        hidden_size=cfg.meta_lstm_lstm_hidden).to(device).train()
        params = [p for p in meta.parameters() if p.requires_grad]

        def run() -> Tensor:
            _zero(params)
            value, _ = meta.meta_loss(batch, step=0)
            value.backward()
            return value.detach()

        return Step(run, params, t)

    _torch_pools(model)
    # The same random draws as MetaLSTM's own rule, then markdtw's layout of those weights.
    rule = MetaLSTMOptimizer(model.named_parameters(), hidden_size=cfg.meta_lstm_lstm_hidden,
                             grad_scale=1.0 / bs)
    metalearner = _MarkdtwMetaLearner(rule).to(device)
    learner_w_grad = copy.deepcopy(model)
    _, forward = _functional(model)
    shapes = [p.shape for p in model.parameters()]
    params = list(model.parameters()) + [p for p in metalearner.parameters() if p.requires_grad]

    def copy_flat_params(module: nn.Module, c: Tensor) -> None:
        idx = 0
        for p in module.parameters():
            n = p.numel()
            p.data.copy_(c[idx:idx + n].view_as(p))
            idx += n

    def reset_batch_stats(module: nn.Module) -> None:
        for m in module.modules():
            if getattr(m, "running_mean", None) is not None:
                m.reset_running_stats()  # type: ignore[operator]

    def train_learner(x_spt: Tensor, y_spt: Tensor) -> Tensor:
        c_i = torch.cat([p.view(-1) for p in model.parameters()])[:, None]  # metalstm.cI
        hs: list[Any] = [None, None]
        for _ in range(cfg.meta_lstm_epochs):
            for s in range(0, len(x_spt), bs):
                x, y = x_spt[s:s + bs], y_spt[s:s + bs]
                copy_flat_params(learner_w_grad, c_i.detach())
                output = learner_w_grad(x)
                loss = F.cross_entropy(output, y)
                learner_w_grad.zero_grad()
                loss.backward()
                grad = torch.cat([p.grad.data.view(-1) / bs  # type: ignore[union-attr]
                                  for p in learner_w_grad.parameters()], 0)
                grad_prep = _preprocess(grad)
                loss_prep = _preprocess(loss.data.unsqueeze(0))
                c_i, hs = metalearner(loss_prep, grad_prep, grad.unsqueeze(1), c_i, hs)
        return c_i

    def run_reference() -> Tensor:
        _zero(params)
        total = torch.zeros((), device=device)
        for i in range(t):
            reset_batch_stats(learner_w_grad)
            reset_batch_stats(model)
            learner_w_grad.train()
            model.train()
            c_i = train_learner(batch.support_x[i], batch.support_y[i]).squeeze(1)
            fast, idx = [], 0
            for shape in shapes:
                n = math.prod(shape)
                fast.append(c_i[idx:idx + n].view(shape))
                idx += n
            output = forward(fast, batch.query_x[i])
            loss = F.cross_entropy(output, batch.query_y[i]) / t
            loss.backward()
            total = total + loss.detach()
        return total

    return Step(run_reference, params, t)


# ----------------------------------------------------------------------------- Meta-Baseline
def meta_baseline(impl: str, cfg: Config, device: torch.device) -> Step:
    """Meta-Baseline's episodic training step (cosine to class centroids, learned τ).

    metakd: :class:`metakd.meta.MetaBaseline`, ``meta_loss(batch)[0].backward()``.

    Reference (``yinboc/few-shot-meta-baseline``: ``MetaBaseline.forward`` and
    ``train_meta.py``): shots and queries of the whole meta-batch through the encoder in one
    forward, ``x_shot.mean`` over the shots, ``F.normalize``, ``torch.bmm`` times τ, the
    cross-entropy over all queries, the accuracy read back, ``backward()``.
    """
    from metakd.nn import create

    torch.manual_seed(0)
    encoder = create("conv4", in_channels=1, num_classes=0, hidden=cfg.baseline_hidden,
                     bn_mode="running").to(device).train()
    batch = episodes(cfg, cfg.queries, device)
    t, n, k = len(batch), cfg.ways, cfg.shots
    if impl == "metakd":
        from metakd.meta import MetaBaseline

        learner = MetaBaseline(encoder).to(device).train()
        params = [p for p in learner.parameters() if p.requires_grad]

        def run() -> Tensor:
            _zero(params)
            value, _ = learner.meta_loss(batch, training=True, step=0)
            value.backward()
            return value.detach()

        return Step(run, params, t)

    _torch_pools(encoder)
    temp = nn.Parameter(torch.tensor(10.0, device=device))
    params = [temp, *encoder.parameters()]
    x_shot_all = batch.support_x.view(t, n, k, *batch.support_x.shape[-3:])
    x_query_all = batch.query_x
    label = batch.query_y.reshape(-1)

    def model_forward(x_shot: Tensor, x_query: Tensor) -> Tensor:
        shot_shape, query_shape = x_shot.shape[:-3], x_query.shape[:-3]
        img_shape = x_shot.shape[-3:]
        x_shot = x_shot.reshape(-1, *img_shape)
        x_query = x_query.reshape(-1, *img_shape)
        x_tot = encoder(torch.cat([x_shot, x_query], dim=0))
        x_shot, x_query = x_tot[:len(x_shot)], x_tot[-len(x_query):]
        x_shot = x_shot.view(*shot_shape, -1)
        x_query = x_query.view(*query_shape, -1)
        x_shot = F.normalize(x_shot.mean(dim=-2), dim=-1)
        x_query = F.normalize(x_query, dim=-1)
        return torch.bmm(x_query, x_shot.permute(0, 2, 1)) * temp

    def run_reference() -> Tensor:
        _zero(params)
        logits = model_forward(x_shot_all, x_query_all).view(-1, n)
        loss = F.cross_entropy(logits, label)
        (torch.argmax(logits, dim=1) == label).float().mean().item()  # its accuracy log
        loss.backward()
        return loss.detach()

    return Step(run_reference, params, t)


# ---------------------------------------------------------------------------------- CIFAR KD
def cifar_kd(impl: str, cfg: Config, device: torch.device) -> Step:
    """A CIFAR-100 KD training step on a batch of 32 px images (a CIFAR-zoo pair).

    metakd: :class:`metakd.distill.Distiller` with the ``mdistiller_kd`` preset,
    ``Distiller.training_loss(batch)`` then ``backward()``.

    Reference (mdistiller's ``BaseTrainer.train_iter`` and ``KD.forward_train``): the
    student's logits, the teacher's under ``torch.no_grad`` (eval mode), ``CE·w_ce`` and
    ``kd_loss·w_kd`` (``F.kl_div(..., reduction="none").sum(1).mean() · T²``), the sum of
    the terms' means, ``backward()``, top-1/top-5 accuracy and the loss read back.
    """
    from metakd.nn import create

    torch.manual_seed(0)
    student = create(cfg.cifar_student, num_classes=cfg.cifar_classes).to(device).train()
    teacher = create(cfg.cifar_teacher, num_classes=cfg.cifar_classes).to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(cfg.cifar_batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, cfg.cifar_classes, (cfg.cifar_batch,), generator=g).to(device)
    params: list[Tensor] = list(student.parameters())
    temp = cfg.cifar_temperature
    if impl == "metakd":
        from metakd.distill import Distiller, preset

        loss = preset("mdistiller_kd", temperature=temp, ce_weight=cfg.cifar_ce_weight,
                      kd_weight=cfg.cifar_kd_weight)
        distiller = Distiller(student, teacher, loss).to(device).train()

        def run() -> Tensor:
            _zero(params)
            value, _ = distiller.training_loss((x, y), 0)
            value.backward()
            return value.detach()

        return Step(run, params, cfg.cifar_batch)

    teacher.eval()

    def kd_loss(logits_student: Tensor, logits_teacher: Tensor) -> Tensor:
        log_pred_student = F.log_softmax(logits_student / temp, dim=1)
        pred_teacher = F.softmax(logits_teacher / temp, dim=1)
        loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
        return loss_kd * temp**2

    def run_reference() -> Tensor:
        _zero(params)
        logits_student = student(x)
        with torch.no_grad():
            logits_teacher = teacher(x)
        losses = {"loss_ce": cfg.cifar_ce_weight * F.cross_entropy(logits_student, y),
                  "loss_kd": cfg.cifar_kd_weight * kd_loss(logits_student, logits_teacher)}
        loss = sum(v.mean() for v in losses.values())
        assert isinstance(loss, Tensor)
        loss.backward()
        _, pred = logits_student.topk(5, 1, True, True)
        correct = pred.t().eq(y.view(1, -1))
        [correct[:k].reshape(-1).float().sum(0).item() for k in (1, 5)]  # its meters
        loss.cpu().detach().numpy().mean()
        return loss.detach()

    return Step(run_reference, params, cfg.cifar_batch)


BUILDERS: dict[str, Callable[[str, Config, torch.device], Step]] = {
    "pmaml": pmaml, "mtl": mtl, "meta_lstm": meta_lstm, "meta_baseline": meta_baseline,
    "cifar_kd": cifar_kd,
}

UNITS = {"pmaml": "tasks", "mtl": "tasks", "meta_lstm": "tasks", "meta_baseline": "tasks",
         "cifar_kd": "images"}


def build(method: str, impl: str, cfg: Config, device: torch.device) -> Step:
    """The :class:`Step` of ``method`` (one of :data:`METHODS`) as ``impl`` runs it."""
    if method not in BUILDERS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    if impl not in IMPLS:
        raise ValueError(f"unknown implementation {impl!r}; use one of {IMPLS}")
    return BUILDERS[method](impl, cfg, device)
