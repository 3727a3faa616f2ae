"""The original projects' names of config fields: one :class:`~metakd.recipes.options.Alias`
table per reproduced code, declared once.

The examples' parsers are generated from these tables (:func:`metakd.recipes.options.add_aliases`),
``metakd train meta_lstm`` takes :data:`META_LSTM`'s names too, and the docs' option tables
are made from them (:func:`metakd.recipes.fields.option_table`). An option whose meaning is
not one field's value (PMAML's ``--train-tasks``, counted in tasks; MTL's ``--max_epoch``
times ``--num_batch``) stays a hand-written option of its example, which converts it. The TF
MTL project's ``run_experiment.py`` variables are :data:`metakd.recipes.mtl_tf.TF_OPTIONS`.

Example:
    >>> [a.flag for a in maml_pytorch("omniglot") if "inner_lr" in a.fields]
    ['--update_lr']
"""

from __future__ import annotations

from metakd.recipes.options import Alias

__all__ = ["GDA_FEWSHOT", "META_LSTM", "MTL_PYTORCH", "PMAML", "PMAML_DATASETS",
           "PMAML_STUDENT", "maml_pytorch"]


def _underscored(*fields: str) -> tuple[Alias, ...]:
    """metakd's own options of ``fields``, spelled as the original scripts spell theirs
    (``--max_seconds``)."""
    return tuple(Alias(f"--{name}", name) for name in fields)


def maml_pytorch(dataset: str) -> tuple[Alias, ...]:
    """``dragen1860/MAML-Pytorch``'s options (``omniglot_train.py``, ``miniimagenet_train.py``)
    with the defaults of that data set's script (:class:`metakd.recipes.MAMLConfig` fields).

    Example:
        >>> {a.flag: a.default for a in maml_pytorch("miniimagenet")}["--imgsz"]
        84
    """
    omniglot = dataset.lower() == "omniglot"
    return (
        Alias("--n_way", "ways", default=5),
        Alias("--k_spt", "shots", default=1),
        Alias("--k_qry", "queries", default=15),
        Alias("--imgsz", "image_size", default=28 if omniglot else 84),
        Alias("--task_num", "meta_batch_size"),
        Alias("--meta_lr", "meta_lr", default=1e-3),
        Alias("--update_lr", "inner_lr",
              note="on the --inner_loss scale; default: the paper's step, on sum_over_k as "
                   "it is, on mean times N"),
        Alias("--update_step", "inner_steps"),
        Alias("--update_step_test", "test_inner_steps"),
        Alias("--epoch", "steps", default=60_000),
        Alias("--first_order", "first_order"),
        Alias("--inner_loss", "inner_loss_reduction", default="mean",
              choices=("mean", "sum_over_k"),
              note="(the support loss --update_lr acts on: mean is MAML-Pytorch's)"),
        Alias("--test_tasks", "test_tasks", default=600),
        Alias("--out", "out_dir", default=f"runs/maml-{dataset}"),
        *_underscored("max_seconds"),
    )


PMAML_DATASETS = ("omniglot", "miniimagenet", "cub")
"""The data sets of the PMAML scripts' ``--train-data`` and ``--test-data``."""

PMAML: tuple[Alias, ...] = (
    Alias("--train-data", "dataset", default="cub", choices=PMAML_DATASETS,
          note="(meta-training data; its val split validates)"),
    Alias("--backbone", "model", default="conv4"),
    Alias("--num-shots", "shots", default=1),
    Alias("--num-ways", "ways", default=5),
    Alias("--test-shots", ("queries", "test_queries"), default=15,
          note="(PMAML: training, validation and test episodes alike)"),
    Alias("--batch-tasks", "meta_batch_size", default=4),
    Alias("--val-tasks", "val_tasks", default=600),
    Alias("--test-tasks", "test_tasks", default=800),
    Alias("--lr", "meta_lr", default=1e-3),
    Alias("--schedule", "lr_milestones", default=[15_000, 30_000, 45_000, 60_000]),
    Alias("--gamma", "lr_gamma", default=0.1),
    Alias("--step-size", "inner_lr", default=0.4, note="(one inner step)"),
    Alias("--first-order", "first_order"),
)
"""``remiMZ/PMAML-ECAI20``'s options shared by ``models/teacher/train.py`` and
``models/pmaml_{every,last}/train.py`` (:class:`metakd.recipes.PMAMLConfig` fields; the
teacher's run is a :class:`metakd.recipes.MAMLConfig` with the same values)."""

PMAML_STUDENT: tuple[Alias, ...] = (
    Alias("--temperature", "temperature", default=10.0),
    Alias("--trade-lambda", "trade_lambda", default=0.9),
)
"""The distillation options of PMAML's student scripts (``models/pmaml_*/train.py``)."""

META_LSTM: tuple[Alias, ...] = (
    Alias("--data-root", "root"),
    Alias("--data", "dataset"),
    Alias("--n-shot", "shots"),
    Alias("--n-class", "ways"),
    Alias("--n-eval", ("queries", "test_queries"),
          note="(the original: training, validation and test episodes alike)"),
    Alias("--lr", "meta_lr"),
    Alias("--episode", "steps"),
    Alias("--episode-val", "val_tasks"),
    Alias("--epoch", "epochs"),
    Alias("--val-freq", "val_every"),
    Alias("--save", "out_dir"),
)
"""``markdtw/meta-learning-lstm-pytorch``'s ``main.py`` options that name
:class:`metakd.recipes.MetaLSTMConfig` fields otherwise (those it spells as metakd does,
``--batch-size``, ``--hidden-size``, ``--bn-eps``..., are the fields' own options);
``metakd train meta_lstm`` takes them too."""

MTL_PYTORCH: tuple[Alias, ...] = (
    Alias("--way", "ways", default=5),
    Alias("--shot", "shots", default=1),
    Alias("--train_query", "queries"),
    Alias("--val_query", "test_queries"),
    Alias("--meta_batch", "meta_batch_size"),
    Alias("--update_step", ("update_step", "test_update_step"),
          note="(the PyTorch code's, at training and test alike)"),
    Alias("--base_lr", "base_lr"),
    Alias("--meta_lr1", "meta_lr1"),
    Alias("--meta_lr2", "meta_lr2"),
    Alias("--gamma", "lr_gamma"),
    Alias("--pre_max_epoch", "pre_epochs"),
    Alias("--pre_batch_size", "pre_batch_size"),
    Alias("--pre_lr", "pre_lr"),
    Alias("--pre_gamma", "pre_lr_gamma"),
    Alias("--pre_step_size", "pre_lr_step"),
    Alias("--pre_custom_weight_decay", "pre_weight_decay"),
    Alias("--seed", "seed", default=0),
    *_underscored("test_update_step", "val_tasks", "test_tasks", "max_seconds", "out_dir",
                  "device"),
)
"""``yaoyao-liu/meta-transfer-learning : pytorch/main.py``'s options that are one
:class:`metakd.recipes.MTLConfig` field each, then metakd's (from ``--test_update_step``,
spelled the same way); ``--test_update_step`` comes after ``--update_step``, so that it
wins."""

GDA_FEWSHOT: tuple[Alias, ...] = (
    Alias("--loss_weight", "kd_weight"),
    Alias("--temperature", "temperature"),
    Alias("--T", "temperature"),
    Alias("--threshold", "threshold"),
    Alias("--fisher_rao_lamda", "fisher_rao_weight"),
    Alias("--sinkhorn_lamda", "sinkhorn_weight"),
    Alias("--dkd_alpha", "dkd_alpha"),
    Alias("--dkd_beta", "dkd_beta"),
    Alias("--seed", "seed"),
    *_underscored("max_seconds", "test_tasks"),
)
"""The KD options of GDA's and W2S's few-shot ``train_classifier.py`` / ``train_meta.py``
(:class:`metakd.recipes.ClassifierBaselineConfig` and :class:`metakd.recipes.MetaBaselineConfig`
fields; given, they override the YAML file's ``kd_loss_config``), then metakd's, spelled the
same way."""
