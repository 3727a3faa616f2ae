"""Runs of the published methods: one registered method per paper, one plumbing for all.

Each method registers a config with the paper's defaults and a ``build`` of its objects
(:func:`register`); :func:`run` trains any of them (distributed set-up, ``fit``, best
checkpoint, test, ``results.json``, plot) into a run folder whose ``config.json`` names the
method, and :func:`load_run` reads any run folder back, on its episode shape or another one.
The command line (``metakd train METHOD``, ``metakd eval RUN_DIR``) and the ``examples/``
scripts are thin front-ends over these functions.

A config is composed of parts (:mod:`metakd.recipes.parts`: the episode data, supervised
minibatches, the backbone, the run settings; :mod:`metakd.recipes.loops`: the inner and outer
loops) and its method's own fields. Each field's help is written once, in its ``Attributes:``
entry (:mod:`metakd.recipes.fields`); the command-line options, the original projects' option
names (:mod:`metakd.recipes.originals`) and the docs' option tables are generated from it.

Example:
    >>> from metakd.recipes import MAMLConfig, get_method
    >>> cfg = MAMLConfig.paper("omniglot", ways=5, shots=1)
    >>> cfg.inner_lr, get_method("maml").config_cls is MAMLConfig
    (0.4, True)
"""

from metakd.recipes.baseline import ClassifierBaselineConfig, MetaBaselineConfig
from metakd.recipes.cifar_kd import CifarKDConfig
from metakd.recipes.maml import MAMLConfig, run_maml
from metakd.recipes.meta_lstm import MetaLSTMConfig
from metakd.recipes.mtl import MTLConfig, finetune_learner
from metakd.recipes.pmaml import PMAMLConfig
from metakd.recipes.registry import (
    REQUIRED_FIELDS,
    Method,
    Parts,
    get_method,
    method_of,
    methods,
    register,
    unregister,
)
from metakd.recipes.runs import Run, load_run, read_config, run
from metakd.recipes.teachers import load_teacher

__all__ = [
    "REQUIRED_FIELDS",
    "CifarKDConfig",
    "ClassifierBaselineConfig",
    "MAMLConfig",
    "MTLConfig",
    "MetaBaselineConfig",
    "MetaLSTMConfig",
    "Method",
    "PMAMLConfig",
    "Parts",
    "Run",
    "finetune_learner",
    "get_method",
    "load_run",
    "load_teacher",
    "method_of",
    "methods",
    "read_config",
    "register",
    "run",
    "run_maml",
    "unregister",
]
