"""Command-line options of the MAML-Pytorch port, mapped onto :class:`metakd.recipes.MAMLConfig`.

The option names are those of dragen1860/MAML-Pytorch so its users feel at home, and
``--update_lr`` means what it means there: the step on the *mean* support cross-entropy
(``--inner_loss mean``, the default). ``--inner_loss sum_over_k`` takes it on the reference's
scale instead (cbfinn/maml: support cross-entropy summed and divided by K, N times the mean).
Without ``--update_lr`` the step is the MAML paper's on either scale. The other defaults are
the paper's, and the port's defects are not reproduced (see README.md).

The options are generated from the port's names of the config fields
(:func:`metakd.recipes.originals.maml_pytorch`) and the fields' own help.
"""

from __future__ import annotations

import argparse

from metakd.recipes import MAMLConfig
from metakd.recipes.options import add_aliases, add_config_arguments, option_values
from metakd.recipes.originals import maml_pytorch


def parser(dataset: str, description: str) -> argparse.ArgumentParser:
    """The port's options for ``dataset``'s script, then metakd's (``--root``, ``--compile``,
    ``--device``, ``--seed``)."""
    p = argparse.ArgumentParser(description=description)
    add_aliases(p, MAMLConfig, maml_pytorch(dataset), reference=MAMLConfig.paper(dataset))
    add_config_arguments(p, MAMLConfig, only=("root", "compile", "device", "seed"))
    return p


def config(dataset: str, args: argparse.Namespace) -> MAMLConfig:
    """The run's :class:`MAMLConfig`: the paper's settings, then the options given."""
    given = option_values(args, MAMLConfig, maml_pytorch(dataset))
    ways, shots = given.pop("ways"), given.pop("shots")
    if "inner_lr" not in given and given["inner_loss_reduction"] == "mean":
        given["inner_lr"] = MAMLConfig.paper(dataset, ways=ways).inner_lr * ways  # mean scale
    return MAMLConfig.paper(dataset, ways=ways, shots=shots, **given)


def describe_inner_loss(cfg: MAMLConfig) -> str:
    """The line the scripts print: which support loss scale runs, and the step in both."""
    n = cfg.ways
    if cfg.inner_loss_reduction == "mean":
        return (f"inner loss: mean (MAML-Pytorch's scale): --update_lr {cfg.inner_lr:g} on the "
                f"mean support cross-entropy = {cfg.inner_lr / n:g} on the reference's sum/K "
                f"scale (--inner_loss sum_over_k)")
    return (f"inner loss: sum_over_k (the reference's scale): --update_lr {cfg.inner_lr:g} on "
            f"the support cross-entropy summed and divided by K = {cfg.inner_lr * n:g} on "
            f"MAML-Pytorch's mean scale (--inner_loss mean)")
