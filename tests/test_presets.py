"""preset(name, **overrides): every setting given is applied, or refused in one line.

Each preset is tried with each setting any preset takes (and an unknown one): a setting the
preset takes must reach the loss it builds; any other raises a one-line ValueError naming
the preset, the setting and the settings the preset takes.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from metakd.distill import DKD, GDA, KD, PRESETS, DistillLoss, preset

KD_KEYS = {"ce_weight", "kd_weight", "temperature", "reduction", "t_squared"}
DKD_KEYS = {"ce_weight", "kd_weight", "temperature", "alpha", "beta", "warmup"}
GDA_KEYS = {"fisher_rao_weight", "sinkhorn_weight", "epsilon", "iters", "tau", "fisher_rao",
            "guard", "debias", "sinkhorn_reduction"}
TAKES = {
    "ce": {"ce_weight"},
    "mdistiller_kd": KD_KEYS | GDA_KEYS,
    "pmaml": KD_KEYS | GDA_KEYS,
    "gda_kd": KD_KEYS | GDA_KEYS,
    "gda_fewshot_kd": KD_KEYS | GDA_KEYS,
    "mdistiller_dkd": DKD_KEYS | GDA_KEYS,
    "gda_dkd": DKD_KEYS | GDA_KEYS,
    "torchdistill_kd": {"alpha", "temperature", "reduction", "t_squared"} | GDA_KEYS,
}
ALL_KEYS = sorted(set().union(*TAKES.values()) | {"temprature"})


def test_the_table_covers_every_preset() -> None:
    assert set(TAKES) == set(PRESETS)


def _value(name: str, key: str) -> Any:
    """A value of ``key`` that differs from what preset ``name`` uses by default."""
    default = PRESETS[name][1].get(key)
    if key == "reduction":
        return "batchmean" if default == "mean_elements" else "mean_elements"
    if key in ("t_squared", "guard", "debias"):
        return False
    if key == "sinkhorn_reduction":
        return "mean"
    if key == "fisher_rao":
        return not default if default is not None else False
    return {"ce_weight": 0.37, "kd_weight": 0.41, "temperature": 2.5, "alpha": 0.3,
            "beta": 3.5, "warmup": 7.0, "fisher_rao_weight": 0.05, "sinkhorn_weight": 0.07,
            "epsilon": 0.2, "iters": 7, "tau": 3.0, "temprature": 3.0}[key]


def _read(loss: DistillLoss, name: str, key: str) -> Any:
    """The value of ``key`` in the loss that preset ``name`` built."""
    main = next(t for t in loss.terms if isinstance(t, (KD, DKD)))
    gda = [t for t in loss.terms if isinstance(t, GDA)]
    if key == "ce_weight":
        return loss.ce_weight
    if key == "alpha" and name == "torchdistill_kd":
        assert main.weight == pytest.approx(1 - loss.ce_weight)  # KD weighted 1 - alpha
        return loss.ce_weight
    if key == "kd_weight":
        return main.weight
    if key in GDA_KEYS:
        assert len(gda) == 1
        return getattr(gda[0], key)
    return getattr(main, key)


@pytest.mark.parametrize("key", ALL_KEYS)
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_setting_is_applied_or_refused(name: str, key: str) -> None:
    value = _value(name, key)
    extra = {"fisher_rao": True} if key == "fisher_rao_weight" and name == "gda_dkd" else {}
    if key in TAKES[name]:
        loss = preset(name, **{key: value}, **extra)
        got = _read(loss, name, key) if name != "ce" else loss.ce_weight
        assert got == pytest.approx(value) if isinstance(value, float) else got == value
        return
    with pytest.raises(ValueError) as info:
        preset(name, **{key: value})
    message = str(info.value)
    assert "\n" not in message
    assert repr(name) in message and key in message.split(";")[0]
    taken = message.rsplit("it takes ", 1)[1].split(", ")
    assert set(taken) == TAKES[name]


def test_fisher_rao_weight_needs_the_fisher_rao_part() -> None:
    with pytest.raises(ValueError, match=r"'gda_dkd' does not use fisher_rao_weight.*fisher_rao="):
        preset("gda_dkd", fisher_rao_weight=0.1)
    with pytest.raises(ValueError, match="fisher_rao_weight"):
        preset("gda_kd", fisher_rao=False, fisher_rao_weight=0.1)
    assert preset("gda_kd", fisher_rao=False).terms[1].fisher_rao is False


def test_torchdistill_applies_alpha_and_refuses_beta() -> None:
    s, t, y = torch.randn(6, 4), torch.randn(6, 4), torch.arange(6) % 4
    with pytest.raises(ValueError, match=r"'torchdistill_kd' does not use beta.*it takes alpha"):
        preset("torchdistill_kd", alpha=0.9, beta=0.3)
    parts = preset("torchdistill_kd", alpha=0.6)(s, t, y)
    ce = torch.nn.functional.cross_entropy(s, y)
    assert parts["ce"].item() == pytest.approx(0.6 * ce.item(), rel=1e-6)
    kl = torch.nn.functional.kl_div(torch.log_softmax(s / 4, -1), torch.softmax(t / 4, -1),
                                    reduction="batchmean")
    assert parts["kd"].item() == pytest.approx(0.4 * 16 * kl.item(), rel=1e-5)


def test_torchdistill_without_alpha_takes_reduction_and_t_squared() -> None:
    kd = preset("torchdistill_kd", alpha=None, reduction="mean_elements", t_squared=True).terms[0]
    assert (kd.reduction, kd.t_squared, kd.weight) == ("mean_elements", True, 1.0)
    assert preset("torchdistill_kd", alpha=None).terms[0].t_squared is False  # torchdistill


def test_a_gda_setting_adds_the_gda_term_to_a_kd_preset() -> None:
    loss = preset("mdistiller_kd", sinkhorn_weight=0.2)
    assert [type(t).__name__ for t in loss.terms] == ["KD", "GDA"]
    assert loss.terms[1].sinkhorn_weight == 0.2


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="known: ce, mdistiller_kd"):
        preset("hinton")
