"""Training engine: the training loop, evaluation with confidence intervals, checkpoints.

:func:`fit` trains any objective on episodes or ``(x, y)`` minibatches with named loss terms,
checkpointed callbacks, validation and exact resume; :func:`evaluate` reports mean accuracy over
episodes or top-1 over labelled examples, each with a 95% confidence interval.
"""

from metakd.engine.callbacks import Callback, FitState
from metakd.engine.checkpoint import load_checkpoint, save_checkpoint
from metakd.engine.cpu import (
    heap_left_to_environment,
    keep_freed_memory,
    keeps_freed_memory,
)
from metakd.engine.distributed import (
    all_reduce_gradients,
    init_distributed,
    rank_slice,
    shutdown_distributed,
)
from metakd.engine.errors import (
    DivergenceError,
    InputError,
    MetakdError,
    RunEnvironmentError,
    UsageError,
)
from metakd.engine.evaluation import evaluate
from metakd.engine.logger import JsonlLogger, plot_learning_curve, read_log
from metakd.engine.objective import HasTrainingLoss, supervised_loss
from metakd.engine.progress import progress_bars, show_progress
from metakd.engine.schedule import BudgetCosine
from metakd.engine.stats import (
    EvalResult,
    binomial_confidence_interval,
    mean_confidence_interval,
    paired_difference,
    student_t_quantile,
)
from metakd.engine.trainer import FitResult, MetaLearner, NonFiniteLossError, fit

__all__ = [
    "BudgetCosine",
    "Callback",
    "DivergenceError",
    "EvalResult",
    "FitResult",
    "FitState",
    "HasTrainingLoss",
    "InputError",
    "JsonlLogger",
    "MetaLearner",
    "MetakdError",
    "NonFiniteLossError",
    "RunEnvironmentError",
    "UsageError",
    "all_reduce_gradients",
    "binomial_confidence_interval",
    "evaluate",
    "fit",
    "heap_left_to_environment",
    "init_distributed",
    "keep_freed_memory",
    "keeps_freed_memory",
    "load_checkpoint",
    "mean_confidence_interval",
    "paired_difference",
    "plot_learning_curve",
    "progress_bars",
    "rank_slice",
    "read_log",
    "save_checkpoint",
    "show_progress",
    "shutdown_distributed",
    "student_t_quantile",
    "supervised_loss",
]
