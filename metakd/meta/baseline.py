"""Classifier-Baseline and Meta-Baseline (Chen et al., ICCV 2021): nearest-centroid episodes.

Both stages of "Meta-Baseline: Exploring Simple Meta-Learning for Few-Shot Learning"
(``yinboc/few-shot-meta-baseline``) classify an episode's queries by their cosine to the
class centroids of its support set, scaled by a temperature ``τ``:

    ``c_n = mean_k f(x_support[n, k])``,  ``logit(q, n) = τ · cos(f(q), c_n)``.

:class:`MetaBaseline` is that classifier around any encoder. Stage 1 (Classifier-Baseline)
trains the encoder by whole classification and evaluates with this head (``τ`` has no effect
on accuracy); stage 2 (Meta-Baseline) fine-tunes the encoder on episodes with this head and
a learnable ``τ`` initialised at 10. Support and query images of a meta-batch go through the
encoder in **one** forward, as the original does (batch norm sees both).

With a frozen ``teacher`` (another :class:`MetaBaseline`, held by a
:class:`metakd.distill.FrozenTeacher`) and a loss such as a
:class:`metakd.distill.DistillLoss`, the episode loss distils the teacher's episode logits,
computed from the teacher's **own** centroids of the same support set and its own
temperature, into the student's (GDA's few-shot distillation; the loss sees the queries of
the whole meta-batch at once, ``[T·N·Q, N]``, as GDA's Sinkhorn term does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metakd._frozen import FrozenTeacher
from metakd.data.batch import TaskBatch
from metakd.meta.objectives import total

__all__ = ["MetaBaseline", "centroid_logits", "class_centroids", "embed", "set_bn_eval"]

Metric = Literal["cos", "sqr"]
#: ``loss(student_logits [M, N], teacher_logits [M, N], labels [M], epoch) -> {name: term}``,
#: such as a :class:`metakd.distill.DistillLoss`.
EpisodeLoss = Callable[[Tensor, Tensor, Tensor, Any], dict[str, Tensor]]


def class_centroids(support: Tensor, labels: Tensor, ways: int) -> Tensor:
    """The mean embedding of each class of a support set.

    Only the support set is read: the centroids cannot depend on query labels.

    Args:
        support: support embeddings ``[..., N*K, D]``.
        labels: their episode labels ``[..., N*K]`` in ``0..ways-1``.
        ways: ``N``.

    Returns:
        ``[..., N, D]``.

    Raises:
        ValueError: a class has no support example.

    Example:
        >>> class_centroids(torch.tensor([[0., 2.], [2., 0.], [1., 1.]]),
        ...                 torch.tensor([0, 0, 1]), 2)
        tensor([[1., 1.],
                [1., 1.]])
    """
    onehot = F.one_hot(labels, ways).to(support.dtype)  # [..., NK, N]
    counts = onehot.sum(-2)  # [..., N]
    if bool((counts == 0).any()):
        raise ValueError(f"a class of the {ways}-way support set has no example")
    return (onehot.transpose(-1, -2) @ support) / counts[..., None]


def centroid_logits(query: Tensor, centroids: Tensor, temperature: Tensor | float = 10.0,
                    metric: Metric = "cos") -> Tensor:
    """Meta-Baseline's episode logits of queries against class centroids.

    ``metric="cos"``: ``τ · <q/|q|, c/|c|>``; ``"sqr"`` (the original's other option):
    ``-τ · |q - c|²``.

    Args:
        query: ``[..., M, D]`` query embeddings.
        centroids: ``[..., N, D]``.
        temperature: ``τ`` (a float or a 0-d tensor).
        metric: ``"cos"`` or ``"sqr"``.

    Returns:
        ``[..., M, N]``.

    Example:
        >>> q, c = torch.tensor([[1., 0.]]), torch.tensor([[2., 0.], [0., 3.]])
        >>> centroid_logits(q, c, 10.0)
        tensor([[10.,  0.]])
    """
    if metric == "cos":
        return temperature * (F.normalize(query, dim=-1)
                              @ F.normalize(centroids, dim=-1).transpose(-1, -2))
    if metric == "sqr":
        return -temperature * (query.unsqueeze(-2) - centroids.unsqueeze(-3)).pow(2).sum(-1)
    raise ValueError(f"metric={metric!r}: use 'cos' or 'sqr'")


def embed(encoder: nn.Module, x: Tensor) -> Tensor:
    """``encoder.features(x)`` for a :class:`metakd.nn.Backbone` (its classifier skipped),
    else ``encoder(x)``, flattened to ``[B, D]``.

    Example:
        >>> import metakd.nn as mnn
        >>> embed(mnn.create("conv4", in_channels=1, num_classes=10), torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 64])
    """
    features = getattr(encoder, "features", None)
    out = features(x) if callable(features) else encoder(x)
    return out.flatten(1)


def _is_bn(m: nn.Module) -> bool:
    from metakd.nn.norm import _BatchNorm

    return isinstance(m, (nn.modules.batchnorm._BatchNorm, _BatchNorm))


def set_bn_eval(module: nn.Module) -> nn.Module:
    """Put every batch-norm layer of ``module`` in eval mode (the original's ``freeze_bn``).

    Example:
        >>> import metakd.nn as mnn
        >>> net = set_bn_eval(mnn.create("resnet12_bottle", num_classes=0).train())
        >>> net.training, net.layer1[0].bn1.training
        (True, False)
    """
    for m in module.modules():
        if _is_bn(m):
            m.eval()
    return module


def _checked_loss(loss: Any) -> EpisodeLoss | None:
    if isinstance(loss, str):
        raise TypeError(f"loss={loss!r} is a name: pass the loss itself, for example "
                        f"metakd.distill.preset({loss!r})")
    if loss is not None and not callable(loss):
        raise TypeError(f"the loss must be callable, not a {type(loss).__name__}")
    return loss


def _epoch(step: int | Tensor, steps_per_epoch: int | None) -> int | Tensor:
    """The 1-based epoch of a 0-based step (``metakd.distill.epoch_clock``'s convention)."""
    return 1 if steps_per_epoch is None else step // steps_per_epoch + 1


class MetaBaseline(nn.Module):
    """Nearest-centroid few-shot classifier with a learnable temperature (Meta-Baseline).

    ``meta_loss(batch, training, step)`` encodes the support and query images of the whole
    meta-batch in one forward, builds each episode's class centroids from its support set
    and scores its queries by ``τ · cos`` (:func:`centroid_logits`); the loss is the
    cross-entropy on the queries of all episodes (``[T·N·Q, N]``), or, with a teacher, a
    :class:`metakd.distill.DistillLoss` of the student's and the teacher's episode logits.

    Args:
        encoder: the embedding network (a :class:`metakd.nn.Backbone`, whose ``features``
            are used, or any module ``[B, C, H, W] -> [B, D]``).
        temperature: initial ``τ`` (10).
        learn_temperature: ``τ`` is a parameter (saved in the ``state_dict``); else a buffer.
        metric: ``"cos"`` (Meta-Baseline) or ``"sqr"``.
        freeze_bn: keep the encoder's batch norm in eval mode while training (the original's
            ImageNet-800 ``freeze_bn``).
        teacher: a :class:`MetaBaseline` whose episode logits are distilled, a function of
            no argument returning one (called at the first use) or a
            :class:`metakd.distill.FrozenTeacher` holding one. It is frozen (eval, no
            gradient), follows the student's device and is not registered (not in
            ``parameters()`` or the ``state_dict``). Its own ``temperature`` is used.
        loss: the episode loss with a teacher, ``loss(student_logits, teacher_logits,
            labels, epoch) -> {name: term}``: a :class:`metakd.distill.DistillLoss` such as
            ``metakd.distill.preset("gda_fewshot_kd")``; training with a teacher needs one.
            Without a teacher the loss is the cross-entropy.
        steps_per_epoch: meta-iterations per epoch for the epoch clock of schedules (DKD
            warm-up, the AugConf ramp); ``None``: every step is epoch 1.

    Shapes:
        ``TaskBatch(support_x [T, N*K, C, H, W], ..., query_x [T, N*Q, C, H, W])``;
        :meth:`logits` returns ``[T, N*Q, N]``.

    Reference:
        Chen, Liu, Xu, Darrell, Wang, "Meta-Baseline: Exploring Simple Meta-Learning for
        Few-Shot Learning", ICCV 2021.

    Example:
        >>> import metakd.nn as mnn
        >>> from metakd.data import TaskBatch
        >>> mb = MetaBaseline(mnn.create("conv4", in_channels=1, num_classes=0, bn_mode="running"))
        >>> b = TaskBatch(torch.randn(2, 5, 1, 28, 28), torch.arange(5).repeat(2, 1),
        ...               torch.randn(2, 10, 1, 28, 28), torch.arange(5).repeat_interleave(2).repeat(2, 1))
        >>> loss, m = mb.meta_loss(b, training=True)
        >>> m["task_accuracy"].shape, mb.temperature.item()
        (torch.Size([2]), 10.0)
    """

    def __init__(self, encoder: nn.Module, *, temperature: float = 10.0,
                 learn_temperature: bool = True, metric: Metric = "cos",
                 freeze_bn: bool = False,
                 teacher: MetaBaseline | Callable[[], MetaBaseline] | FrozenTeacher | None = None,
                 loss: EpisodeLoss | None = None,
                 steps_per_epoch: int | None = None) -> None:
        super().__init__()
        if metric not in ("cos", "sqr"):
            raise ValueError(f"metric={metric!r}: use 'cos' or 'sqr'")
        self.encoder = encoder
        tau = torch.tensor(float(temperature))
        self.temperature: Tensor
        if learn_temperature:
            self.temperature = nn.Parameter(tau)
        else:
            self.register_buffer("temperature", tau)
        self.metric: Metric = metric
        self.freeze_bn = bool(freeze_bn)
        loss = _checked_loss(loss)
        if teacher is None and loss is not None and getattr(loss, "needs_teacher", False):
            raise ValueError("a distillation loss needs a teacher (teacher=MetaBaseline(...))")
        self.steps_per_epoch = steps_per_epoch
        self.loss: Any = None
        self.frozen_teacher: FrozenTeacher | None = None  # a plain attribute, not a submodule
        self.set_teacher(teacher, loss)
        if self.freeze_bn:
            set_bn_eval(self.encoder)

    @property
    def teacher(self) -> MetaBaseline | None:
        """The frozen teacher (not a registered submodule, loaded if need be), or ``None``."""
        if self.frozen_teacher is None:
            return None
        return self.frozen_teacher.get(self.temperature.device)  # type: ignore[return-value]

    def set_teacher(self, teacher: MetaBaseline | Callable[[], MetaBaseline] | FrozenTeacher | None,
                    loss: EpisodeLoss | None = None) -> MetaBaseline:
        """Attach (or, with ``None``, remove) a frozen teacher and its distillation loss.

        Args:
            teacher: a :class:`MetaBaseline`, a function of no argument returning one (called
                at the first use), a :class:`metakd.distill.FrozenTeacher`, or ``None``.
            loss: the episode loss (see the class); needed to train with the teacher.

        Example:
            >>> from metakd.distill import preset
            >>> enc = lambda: nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
            >>> mb = MetaBaseline(enc()).set_teacher(MetaBaseline(enc()), preset("gda_fewshot_kd"))
            >>> mb.teacher.training, [n for n, _ in mb.named_parameters()]
            (False, ['temperature', 'encoder.1.weight', 'encoder.1.bias'])
        """
        if teacher is self:
            raise ValueError("the teacher and the student are the same module")
        loss = _checked_loss(loss)
        if teacher is None:
            self.frozen_teacher, self.loss = None, None
            return self
        self.frozen_teacher = teacher if isinstance(teacher, FrozenTeacher) \
            else FrozenTeacher(teacher, kind=MetaBaseline)
        self.loss = loss
        return self

    def train(self, mode: bool = True) -> MetaBaseline:
        """Set the mode; batch norm stays in eval with ``freeze_bn`` (the teacher always is)."""
        super().train(mode)
        if self.freeze_bn:
            set_bn_eval(self.encoder)
        return self

    def _apply(self, fn: Any, recurse: bool = True) -> MetaBaseline:
        super()._apply(fn, recurse)  # .to(), .double(), ... move the teacher too
        if self.frozen_teacher is not None:
            self.frozen_teacher.apply_tensors(fn)
        return self

    def forward(self, x: Tensor) -> Tensor:
        """The embeddings ``[B, D]`` of images ``[B, C, H, W]``."""
        return embed(self.encoder, x)

    def logits(self, batch: TaskBatch) -> Tensor:
        """Episode logits ``[T, N*Q, N]``: support and query encoded in one forward."""
        t, nk = batch.support_x.shape[:2]
        nq = batch.query_x.shape[1]
        x = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
        emb = self(x)
        support, query = emb[: t * nk].view(t, nk, -1), emb[t * nk:].view(t, nq, -1)
        centroids = class_centroids(support, batch.support_y, batch.ways)
        return centroid_logits(query, centroids, self.temperature, self.metric)

    def teacher_logits(self, batch: TaskBatch) -> Tensor:
        """The teacher's episode logits ``[T, N*Q, N]`` (its own centroids and τ; no graph).

        Example:
            >>> import metakd.nn as mnn
            >>> from metakd.data import TaskBatch
            >>> enc = lambda: mnn.create("conv2", in_channels=1, num_classes=0, bn_mode="running")
            >>> mb = MetaBaseline(enc(), teacher=MetaBaseline(enc(), temperature=5.0))
            >>> b = TaskBatch(torch.randn(1, 5, 1, 28, 28), torch.arange(5)[None],
            ...               torch.randn(1, 5, 1, 28, 28), torch.arange(5)[None])
            >>> mb.teacher_logits(b).requires_grad, float(mb.teacher.temperature)
            (False, 5.0)
        """
        if self.frozen_teacher is None:
            raise ValueError("this MetaBaseline has no teacher")
        return self.frozen_teacher(batch, device=self.temperature.device, method="logits")

    def meta_loss(self, batch: TaskBatch, training: bool = True,
                  step: int | Tensor = 0) -> tuple[Tensor, dict[str, Any]]:
        """The loss of a meta-batch and its metrics (``task_accuracy [T]``, ``terms``).

        With a teacher and ``training``, the loss is the distillation loss of the flattened
        query logits; otherwise (and at evaluation) the query cross-entropy.
        """
        logits = self.logits(batch)
        ways = logits.shape[-1]
        flat, labels = logits.reshape(-1, ways), batch.query_y.reshape(-1)
        if training and self.frozen_teacher is not None:
            if self.loss is None:
                raise ValueError("this MetaBaseline has a teacher but no loss to train with: "
                                 "set_teacher(teacher, loss=metakd.distill.preset(...))")
            teacher = self.teacher_logits(batch).reshape(-1, ways)
            terms = self.loss(flat, teacher, labels, _epoch(step, self.steps_per_epoch))
        else:
            terms = {"ce": F.cross_entropy(flat, labels)}
        loss = total(terms)
        with torch.no_grad():
            correct = (logits.argmax(-1) == batch.query_y).double()
        return loss, {"accuracy": float(correct.mean()), "task_accuracy": correct.mean(-1),
                      "temperature": float(self.temperature.detach()),
                      "terms": {k: float(v.detach()) for k, v in terms.items()}}

    def extra_repr(self) -> str:
        learn = isinstance(self.temperature, nn.Parameter)
        teacher = self.frozen_teacher
        return (f"temperature={float(self.temperature.detach()):g}, learn_temperature={learn}, "
                f"metric={self.metric!r}, freeze_bn={self.freeze_bn}, teacher={teacher}")
