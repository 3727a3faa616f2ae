"""The outer loop of every meta-learner: per-task objectives, meta-gradients, a surrogate loss.

A meta-learner scores each task with a *per-task objective* (named loss terms and query
logits, graph-connected to the meta-parameters θ); its meta-loss is the mean over the tasks
of the summed terms. :func:`outer_step` computes it for every metakd meta-learner
(:class:`~metakd.meta.MAMLWrapper`, PMAML through it, :class:`~metakd.meta.MetaLSTM`):

1. a :class:`Strategy` turns the meta-batch into an :class:`OuterResult` (per-task terms
   ``{name: [T]}``, query logits ``[T, M, N]``, the meta-gradient ``d mean_t L_t / d θ``),
   freeing each task's graph as soon as its gradient is known;
2. :func:`surrogate` makes the loss whose value is the mean query loss and whose
   ``backward()`` puts exactly that meta-gradient into the ``.grad`` of every meta-parameter;
3. :func:`query_metrics` reports the loss, each term, and the query accuracy per task and
   per class.

The strategies are the execution paths: :class:`PerTask` runs a per-task objective one task
after the other (a new meta-learner's, the Meta-LSTM's, MAML's learn2learn and higher
backends); MAML's ``func``, ``vmap`` and compiled paths run chunks of tasks through the same
:func:`accumulate`. Example: :func:`outer_step`; a new meta-learner on it: the concepts page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from metakd.data.batch import Task, TaskBatch
from metakd.meta.objectives import total

__all__ = [
    "MetaParams",
    "OuterResult",
    "PerTask",
    "Strategy",
    "TaskObjective",
    "Terms",
    "accumulate",
    "cat_terms",
    "check_batch",
    "outer_step",
    "query_metrics",
    "surrogate",
]

Terms = dict[str, Tensor]
# objective(task, step) -> (named loss terms {name: 0-d tensor}, query logits [M, N])
TaskObjective = Callable[[Task, Any], tuple[Terms, Tensor]]
# run(worker, unit) -> (terms {name: [t]}, logits [t, M, N], gradients, one per meta-parameter)
UnitOutput = tuple[Terms, Tensor, Sequence[Tensor | None]]
Parallel = Callable[[Callable[[int], None], int], None]
U = TypeVar("U")


class MetaParams:
    """The meta-parameters a meta-gradient is taken with respect to, grouped by the part of
    the meta-learner they belong to, each tensor once (the first group that names it).

    Args:
        groups: group name -> ``{name: tensor}``, or a module (its parameters with
            ``requires_grad=True``), or ``None`` (an empty group).

    Attributes:
        groups: group name -> ``{name: tensor}``.
        flat: every tensor, in group order: the order of :attr:`OuterResult.grads`.

    Example:
        >>> from torch import nn
        >>> net = nn.Linear(2, 2)
        >>> p = MetaParams({"model": net, "again": {"w": net.weight}, "rule": None})
        >>> len(p), sorted(p.groups["model"]), p.groups["again"]
        (2, ['bias', 'weight'], {})
    """

    def __init__(self, groups: Mapping[str, Mapping[str, Tensor] | nn.Module | None]) -> None:
        seen: set[int] = set()
        self.groups: dict[str, dict[str, Tensor]] = {}
        for g, part in groups.items():
            named: Iterable[tuple[str, Tensor]] = (
                [(n, p) for n, p in part.named_parameters() if p.requires_grad]
                if isinstance(part, nn.Module) else () if part is None else part.items())
            kept = {}
            for n, t in named:
                if id(t) not in seen:
                    seen.add(id(t))
                    kept[n] = t
            self.groups[g] = kept
        self.flat: list[Tensor] = [t for named in self.groups.values() for t in named.values()]

    def __len__(self) -> int:
        return len(self.flat)


class OuterResult(NamedTuple):
    """What a :class:`Strategy` computes from a meta-batch of ``T`` tasks.

    Attributes:
        terms: ``{name: [T]}`` each task's query terms; ``logits``: ``[T, M, N]`` (no graph).
        grads: ``d mean_t(sum of task t's terms) / d p`` for each ``p`` of
            :attr:`MetaParams.flat`; ``None`` where no task's objective reaches ``p``.
    """

    terms: Terms
    logits: Tensor
    grads: list[Tensor | None]


def cat_terms(parts: Sequence[Terms]) -> Terms:
    """``[{name: [t_i]}]`` -> ``{name: [sum t_i]}``, without graph."""
    names = list(parts[0])
    return {k: torch.cat([p[k].detach().reshape(-1) for p in parts]) for k in names}


def accumulate(
    units: Sequence[U],
    run: Callable[[int, U], UnitOutput],
    params: Sequence[Tensor],
    *,
    weight: float = 1.0,
    workers: int = 1,
    parallel: Parallel | None = None,
) -> OuterResult:
    """The loop of every strategy: run each unit, add ``weight`` times its gradients, free it.

    Args:
        units: the pieces of a meta-batch (single :class:`~metakd.data.Task`\\ s, or chunks
            of tasks as :class:`~metakd.data.TaskBatch`\\ es), in task order.
        run: ``run(worker, unit) -> (terms {name: [t]}, logits [t, M, N], grads)``, the
            gradients one per entry of ``params`` (``None``: not reached).
        params: the meta-parameters (:attr:`MetaParams.flat`).
        weight: the factor of every unit's gradients (``1 / T`` when ``run`` gives the
            gradient of a sum over its tasks; ``1`` when it divides the loss itself).
        workers: units run in ``workers`` interleaved streams, each summing its own
            gradients; the sums are added in worker order.
        parallel: ``parallel(work, workers)`` runs ``work(0..workers-1)``, concurrently
            (needed with ``workers > 1``; see ``metakd.meta.accel``).

    Returns:
        An :class:`OuterResult` with the units' terms and logits concatenated in task order.

    Example:
        >>> import torch
        >>> w = torch.ones(2, requires_grad=True)
        >>> def run(worker, x):  # one "task" per unit: loss (w . x) / 2
        ...     loss = (w * x).sum() / 2
        ...     return {"l": loss[None]}, x[None, None], torch.autograd.grad(loss, [w])
        >>> accumulate([torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])], run, [w]).grads
        [tensor([2., 3.])]
    """
    if workers > 1 and parallel is None:
        raise ValueError(f"workers={workers} needs parallel= (see metakd.meta.accel)")
    results: list[tuple[Terms, Tensor] | None] = [None] * len(units)
    sums: list[list[Tensor | None]] = [[None] * len(params) for _ in range(workers)]

    def work(w: int) -> None:
        acc = sums[w]
        for u in range(w, len(units), workers):
            terms, logits, grads = run(w, units[u])
            for j, g in enumerate(grads):
                if g is not None:
                    if acc[j] is None:
                        acc[j] = torch.zeros_like(params[j])
                    acc[j].add_(g, alpha=weight)  # type: ignore[union-attr]
            results[u] = ({k: v.detach() for k, v in terms.items()}, logits.detach())

    if workers == 1:
        work(0)
        grads = sums[0]
    else:
        assert parallel is not None
        parallel(work, workers)
        grads = [torch.stack([torch.zeros_like(p) if a is None else a for a in col]).sum(0)
                 for p, col in zip(params, zip(*sums))]
    done = [r for r in results if r is not None]
    return OuterResult(cat_terms([r[0] for r in done]), torch.cat([r[1] for r in done]), grads)


def surrogate(loss: Tensor, params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> Tensor:
    """``loss`` plus a term worth 0 whose gradient with respect to ``params`` is ``grads``.

    ``backward()`` on the result puts exactly ``grads`` into the ``.grad`` of ``params`` (a
    ``None`` gradient leaves its parameter out). The result may be scaled and added to other
    losses, but is differentiable once, and only with respect to ``params``.

    Example:
        >>> import torch
        >>> w = torch.zeros(2, requires_grad=True)
        >>> s = surrogate(torch.tensor(0.5), [w], [torch.tensor([1.0, -1.0])])
        >>> s.backward(); float(s.detach()), w.grad
        (0.5, tensor([ 1., -1.]))
    """
    pairs = [(p, g) for p, g in zip(params, grads) if g is not None]
    if not pairs:
        return loss
    dot = torch.stack([(p * g).sum() for p, g in pairs]).sum()
    return loss + (dot - dot.detach())


def _class_accuracy(logits: Tensor, y: Tensor, ways: int) -> Tensor:
    correct = (logits.argmax(-1) == y).to(torch.float64)
    onehot = torch.nn.functional.one_hot(y, ways).to(torch.float64)  # [T, M, N]
    hits = (onehot * correct.unsqueeze(-1)).sum(1)
    count = onehot.sum(1)
    return hits / count  # 0/0 -> NaN for absent classes


def query_metrics(loss: Tensor, terms: Mapping[str, Tensor], logits: Tensor, y: Tensor
                  ) -> dict[str, Any]:
    """A meta-batch's metrics, as every meta-learner's ``meta_loss`` reports them.

    Args:
        loss: the meta-loss (0-d).
        terms: ``{name: [T]}`` each task's query terms.
        logits: ``[T, M, N]`` query logits.
        y: ``[T, M]`` int64 query labels (float targets: regression, accuracy NaN).

    Returns:
        ``loss`` and ``accuracy`` (floats), ``terms`` (each term's mean over tasks, floats),
        ``task_accuracy [T]`` and ``class_accuracy [T, N]`` (NaN for a class without
        queries).

    Example:
        >>> import torch
        >>> logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
        >>> m = query_metrics(torch.tensor(0.3), {"ce": torch.tensor([0.3])}, logits,
        ...                   torch.tensor([[0, 0]]))
        >>> m["accuracy"], m["class_accuracy"].tolist()
        (0.5, [[0.5, nan]])
    """
    metrics: dict[str, Any] = {"loss": float(loss.detach()),
                               "terms": {k: float(v.mean()) for k, v in terms.items()}}
    if y.dtype.is_floating_point or y.dim() != 2:  # regression: no accuracy
        nan = torch.full((y.shape[0],), float("nan"), dtype=torch.float64)
        metrics.update(accuracy=float("nan"), task_accuracy=nan, class_accuracy=nan[:, None])
    else:
        accs = (logits.argmax(-1) == y).to(logits.dtype).mean(-1)
        metrics.update(accuracy=float(accs.mean()), task_accuracy=accs,
                       class_accuracy=_class_accuracy(logits, y, logits.shape[-1]))
    return metrics


class Strategy:
    """How a meta-batch becomes meta-gradients (training) and terms (evaluation).

    Subclasses implement both methods; :func:`outer_step` calls them. A strategy may return
    any meta-gradient (Reptile's ``θ − φ``, say), not only the gradient of the query terms.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from metakd.data import TaskBatch
        >>> class Unadapted(Strategy):  # each task scored by the network as it is
        ...     def __init__(self, net):
        ...         self.net = net
        ...     def scored(self, task, step=0):
        ...         logits = self.net(task.query_x)
        ...         return {"ce": nn.functional.cross_entropy(logits, task.query_y)}, logits
        ...     def meta_gradients(self, batch, params, step):
        ...         def run(worker, task):
        ...             terms, logits = self.scored(task)
        ...             grads = torch.autograd.grad(terms["ce"], params.flat)
        ...             return {"ce": terms["ce"][None]}, logits[None], grads
        ...         return accumulate(list(batch), run, params.flat, weight=1 / len(batch))
        ...     def evaluate(self, batch, step):  # the same, its outputs detached
        ...         return PerTask(self.scored).evaluate(batch, step)
        >>> net = nn.Linear(4, 3)
        >>> batch = TaskBatch(torch.randn(2, 3, 4), torch.arange(3).repeat(2, 1),
        ...                   torch.randn(2, 3, 4), torch.arange(3).repeat(2, 1))
        >>> loss, metrics = outer_step(Unadapted(net), batch, net)
        >>> loss.backward(); net.bias.grad.shape
        torch.Size([3])
    """

    name = "strategy"

    def meta_gradients(self, batch: TaskBatch, params: MetaParams, step: Any) -> OuterResult:
        """Each task's terms and logits, and the mean meta-gradient over the tasks."""
        raise NotImplementedError

    def evaluate(self, batch: TaskBatch, step: Any) -> tuple[Terms, Tensor]:
        """Each task's terms ``{name: [T]}`` and logits ``[T, M, N]``, without meta-graph."""
        raise NotImplementedError


class PerTask(Strategy):
    """The sequential strategy: a per-task objective, one task after the other.

    Each task's summed terms, divided by ``T``, are differentiated with ``torch.autograd.grad``
    and accumulated (:func:`accumulate`), and the task's graph is freed.

    Args:
        objective: ``objective(task, step) -> (terms, logits)``: a
            :class:`~metakd.data.Task`'s named loss terms (0-d tensors) and query logits
            ``[M, N]``, computed with the graph to the meta-parameters.
        evaluate: the same at evaluation (no meta-graph needed; run under the caller's
            grad mode); default: ``objective``, its outputs detached.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from metakd.data import TaskBatch
        >>> net = nn.Linear(4, 3)
        >>> def objective(task, step):
        ...     logits = net(task.query_x)
        ...     return {"ce": nn.functional.cross_entropy(logits, task.query_y)}, logits
        >>> batch = TaskBatch(torch.randn(2, 3, 4), torch.arange(3).repeat(2, 1),
        ...                   torch.randn(2, 3, 4), torch.arange(3).repeat(2, 1))
        >>> result = PerTask(objective).meta_gradients(batch, MetaParams({"net": net}), 0)
        >>> result.terms["ce"].shape, result.logits.shape, len(result.grads)
        (torch.Size([2]), torch.Size([2, 3, 3]), 2)
    """

    name = "per_task"

    def __init__(self, objective: TaskObjective, evaluate: TaskObjective | None = None) -> None:
        self.objective = objective
        self.evaluate_task = objective if evaluate is None else evaluate

    def meta_gradients(self, batch: TaskBatch, params: MetaParams, step: Any) -> OuterResult:
        n, flat = len(batch), params.flat

        def run(worker: int, task: Task) -> UnitOutput:
            terms, logits = self.objective(task, step)
            grads = torch.autograd.grad(total(terms) / n, flat, allow_unused=True)
            return {k: v[None] for k, v in terms.items()}, logits[None], grads

        return accumulate(list(batch), run, flat)

    def evaluate(self, batch: TaskBatch, step: Any) -> tuple[Terms, Tensor]:
        terms: list[Terms] = []
        logits: list[Tensor] = []
        for task in batch:
            t, lg = self.evaluate_task(task, step)
            terms.append({k: v.detach()[None] for k, v in t.items()})
            logits.append(lg.detach())
        return cat_terms(terms), torch.stack(logits)


def check_batch(batch: object) -> None:
    """``batch`` is a non-empty :class:`~metakd.data.TaskBatch` (else a ``ValueError``)."""
    if not isinstance(batch, TaskBatch):
        raise ValueError(
            f"meta_loss takes a metakd.data.TaskBatch, got {type(batch).__name__}; "
            "for one task use adapt(support_x, support_y)"
        )
    if len(batch) == 0:
        raise ValueError("meta_loss got an empty TaskBatch")


def outer_step(
    strategy: Strategy,
    batch: TaskBatch,
    params: MetaParams | nn.Module,
    *,
    training: bool = True,
    step: Any = 0,
) -> tuple[Tensor, dict[str, Any]]:
    """A meta-learner's ``meta_loss``: the mean over the tasks of their query terms.

    Args:
        strategy: how the tasks are run (:class:`PerTask` for a per-task objective).
        batch: the meta-batch (``support_x [T, N*K, ...]``, ``support_y [T, N*K]``,
            ``query_x [T, N*Q, ...]``, ``query_y [T, N*Q]``, ``extras {name: [T, ...]}``).
        params: the meta-parameters: a :class:`MetaParams`, or a module (its trainable
            parameters).
        training: ``True``: the :func:`surrogate` loss (``backward()`` gives the
            meta-gradient); ``False``: ``strategy.evaluate``, a loss without graph.
        step: the meta-iteration, passed to the objectives.

    Returns:
        ``(loss, metrics)``; ``metrics`` as :func:`query_metrics` gives them.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from metakd.data import TaskBatch
        >>> net = nn.Linear(4, 3)
        >>> def objective(task, step):
        ...     logits = net(task.query_x)
        ...     return {"ce": nn.functional.cross_entropy(logits, task.query_y)}, logits
        >>> batch = TaskBatch(torch.randn(2, 3, 4), torch.arange(3).repeat(2, 1),
        ...                   torch.randn(2, 3, 4), torch.arange(3).repeat(2, 1))
        >>> loss, metrics = outer_step(PerTask(objective), batch, net, step=5)
        >>> loss.backward(); metrics["task_accuracy"].shape
        torch.Size([2])
    """
    check_batch(batch)
    if training:
        inputs = params if isinstance(params, MetaParams) else MetaParams({"params": params})
        with torch.enable_grad():
            terms, logits, grads = strategy.meta_gradients(batch, inputs, step)
            loss = surrogate(total(terms).mean(), inputs.flat, grads)
    else:
        terms, logits = strategy.evaluate(batch, step)
        loss = total(terms).mean().detach()
    return loss, query_metrics(loss, terms, logits, batch.query_y)
