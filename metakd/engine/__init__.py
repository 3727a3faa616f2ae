"""Training engine: the meta-training loop, evaluation with confidence intervals, checkpoints."""

from metakd.engine.checkpoint import load_checkpoint, save_checkpoint
from metakd.engine.distributed import (
    all_reduce_gradients,
    init_distributed,
    rank_slice,
    shutdown_distributed,
)
from metakd.engine.logger import JsonlLogger, plot_learning_curve, read_log
from metakd.engine.schedule import BudgetCosine
from metakd.engine.stats import EvalResult, mean_confidence_interval, student_t_quantile
from metakd.engine.trainer import FitResult, MetaLearner, NonFiniteLossError, evaluate, fit

__all__ = [
    "BudgetCosine",
    "EvalResult",
    "FitResult",
    "JsonlLogger",
    "MetaLearner",
    "NonFiniteLossError",
    "all_reduce_gradients",
    "evaluate",
    "fit",
    "init_distributed",
    "load_checkpoint",
    "mean_confidence_interval",
    "plot_learning_curve",
    "rank_slice",
    "read_log",
    "save_checkpoint",
    "shutdown_distributed",
    "student_t_quantile",
]
