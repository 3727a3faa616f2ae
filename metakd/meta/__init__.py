"""Meta-learners: adapt on a task's support set, score on its query set.

The pieces are values: an update rule (:mod:`metakd.meta.rules`: :class:`SGD`,
:class:`MetaSGD`, or your own), objectives with named loss terms
(:mod:`metakd.meta.objectives`), one inner-loop definition (:mod:`metakd.meta.inner`)
that every execution path calls, and one outer loop (:mod:`metakd.meta.outer`: per-task
objectives, accumulated meta-gradients, the surrogate loss, the metrics) that every
meta-learner calls. :class:`MAMLWrapper` puts them together for MAML
(Finn et al., ICML 2017), first-order MAML, Meta-SGD (Li et al., 2017) and ANIL (Raghu et
al., ICLR 2020) with interchangeable backends (``func``, ``vmap``, ``learn2learn``,
``higher``). Importing this package imports neither learn2learn nor higher, nor the opt-in
accelerations (:func:`metakd.meta.accel.accelerate`).

Example:
    >>> import torch
    >>> from metakd.meta import MAMLWrapper
    >>> maml = MAMLWrapper(torch.nn.Linear(8, 5), inner_lr=0.1, inner_steps=2)
    >>> maml.adapt(torch.randn(10, 8), torch.arange(5).repeat(2))(torch.randn(3, 8)).shape
    torch.Size([3, 5])
"""

from metakd.meta.baseline import MetaBaseline, centroid_logits, class_centroids
from metakd.meta.functional import (
    ParamLayout,
    flatten_params,
    functional_forward,
    unflatten_params,
)
from metakd.meta.hard_tasks import HardTaskSampler
from metakd.meta.inner import InnerLoop, run_task
from metakd.meta.maml import MAMLClone, MAMLLearner, MAMLWrapper, default_backend
from metakd.meta.meta_lstm import MetaLSTMOptimizer
from metakd.meta.meta_lstm_attention import AttentionLearner, CrossAttentionFrontEnd, MetaAttention
from metakd.meta.meta_lstm_learner import MetaLSTM
from metakd.meta.objectives import CrossEntropy, LossObjective, Objective, total
from metakd.meta.outer import (
    MetaParams,
    OuterResult,
    PerTask,
    Strategy,
    accumulate,
    outer_step,
    query_metrics,
    surrogate,
)
from metakd.meta.rules import SGD, MetaSGD, UpdateRule

__all__ = [
    "SGD",
    "AttentionLearner",
    "CrossAttentionFrontEnd",
    "CrossEntropy",
    "HardTaskSampler",
    "InnerLoop",
    "LossObjective",
    "MAMLClone",
    "MAMLLearner",
    "MAMLWrapper",
    "MetaAttention",
    "MetaBaseline",
    "MetaLSTM",
    "MetaLSTMOptimizer",
    "MetaParams",
    "MetaSGD",
    "Objective",
    "OuterResult",
    "ParamLayout",
    "PerTask",
    "Strategy",
    "UpdateRule",
    "accumulate",
    "centroid_logits",
    "class_centroids",
    "default_backend",
    "flatten_params",
    "functional_forward",
    "outer_step",
    "query_metrics",
    "run_task",
    "surrogate",
    "total",
    "unflatten_params",
]
