"""The Sinkhorn reduction of the Meta-Baseline recipes: a declared option that reaches the GDA
term, from a config, the command line and an original YAML file."""

from __future__ import annotations

import argparse

import pytest
import torch

from metakd.recipes import ClassifierBaselineConfig, MetaBaselineConfig
from metakd.recipes.baseline import make_loss
from metakd.recipes.baseline_options import check_original, from_original
from metakd.recipes.options import add_config_arguments, option_values


@pytest.mark.parametrize("cls", [ClassifierBaselineConfig, MetaBaselineConfig])
def test_sinkhorn_reduction_reaches_the_gda_term(cls: type) -> None:
    assert cls().sinkhorn_reduction == "sum"  # the official code's term
    for reduction in ("sum", "mean"):
        cfg = cls(teacher="t", distill="kd", gda=True, sinkhorn_reduction=reduction)
        gda = make_loss(cfg).terms[-1]
        assert type(gda).__name__ == "GDA" and gda.sinkhorn_reduction == reduction


def test_mean_divides_the_sinkhorn_term_by_the_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(12, 5, generator=gen), torch.randn(12, 5, generator=gen)
    terms = {r: make_loss(MetaBaselineConfig(teacher="t", gda=True, sinkhorn_reduction=r))
             (s, t, torch.zeros(12, dtype=torch.long), 1) for r in ("sum", "mean")}
    assert torch.allclose(terms["mean"]["sinkhorn"] * 12, terms["sum"]["sinkhorn"])
    assert torch.allclose(terms["mean"]["fisher_rao"], terms["sum"]["fisher_rao"])


def test_the_command_line_option_and_its_choices() -> None:
    p = argparse.ArgumentParser()
    assert "sinkhorn_reduction" in add_config_arguments(p, MetaBaselineConfig)
    args = p.parse_args(["--sinkhorn-reduction", "mean"])
    assert option_values(args, MetaBaselineConfig) == {"sinkhorn_reduction": "mean"}
    with pytest.raises(SystemExit):
        p.parse_args(["--sinkhorn-reduction", "max"])


def test_an_original_yaml_file_may_set_it_by_its_metakd_name() -> None:
    c = {"train_dataset": "mini-imagenet", "teacher_load": "t/max-va.pth",
         "kd_loss_config": {"loss_type": "kd"}, "sinkhorn_reduction": "mean"}
    check_original(c, "meta")
    assert from_original(c, "meta").sinkhorn_reduction == "mean"
    assert from_original(c, "meta", overrides={"sinkhorn_reduction": "sum"}
                         ).sinkhorn_reduction == "sum"


def test_from_original_names_runs_as_before() -> None:
    c = {"train_dataset": "mini-imagenet", "model_args": {"encoder": "resnet12"},
         "n_shot": 5, "load_encoder": "classifier_mini-imagenet_resnet12/epoch-last.pth",
         "teacher_load": "classifier_mini-imagenet_resnet12/max-va.pth",
         "kd_loss_config": {"loss_type": "dkd_baseline", "T": 4}}
    cfg = from_original(c, "meta", res_type="resnet36", teacher_res_type="resnet18",
                        out_root="o", tag="x")
    assert cfg.out_dir == ("o/meta_mini-imagenet-5shot_meta-baseline-resnet36_bottle"
                           "_kd-dkd_baseline-resnet18_bottle_x")
    assert (cfg.pretrained, cfg.pretrained_checkpoint) == (
        "o/classifier_mini-imagenet_resnet36_bottle", "last")
    assert (cfg.teacher, cfg.teacher_arch, cfg.distill, cfg.gda, cfg.temperature) == (
        "o/classifier_mini-imagenet_resnet18_bottle", "resnet18_bottle", "dkd", False, 4)
    own = from_original(c, "meta", overrides={"arch": "conv4"})
    assert own.out_dir.startswith("save/meta_mini-imagenet-5shot_meta-baseline-conv4_kd-")
    with pytest.raises(ValueError, match="use SGD"):
        from_original({"optimizer": "adam"}, "classifier")
