"""Classifier-Baseline / Meta-Baseline: the centroid head, the temperature, teachers, configs."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metakd.data import TaskBatch
from metakd.distill import KD, DistillLoss
from metakd.distill.fewshot import AdaptConf, AugConf
from metakd.engine import fit, load_checkpoint
from metakd.meta import MetaBaseline, centroid_logits, class_centroids
from metakd.recipes import ClassifierBaselineConfig, MetaBaselineConfig
from metakd.recipes.baseline import check_meta, make_loss
from metakd.recipes.baseline_options import from_original, run_folder

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "gda"


class Enc(nn.Module):
    """A tiny encoder with batch norm: flatten -> linear -> BN -> ReLU."""

    def __init__(self, d_in: int = 12, d: int = 6, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(d_in, d)
        self.bn = nn.BatchNorm1d(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.fc(x.flatten(1)))) + 0.1


def episodes(t: int = 2, ways: int = 3, shots: int = 2, queries: int = 4, seed: int = 0,
             d_in: int = 12) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(t, ways, d_in, generator=g) * 2
    sy = torch.arange(ways).repeat_interleave(shots).expand(t, -1)
    qy = torch.arange(ways).repeat_interleave(queries).expand(t, -1)
    sx = protos.gather(1, sy[..., None].expand(-1, -1, d_in)) + torch.randn(t, ways * shots,
                                                                            d_in, generator=g)
    qx = protos.gather(1, qy[..., None].expand(-1, -1, d_in)) + torch.randn(t, ways * queries,
                                                                            d_in, generator=g)
    return TaskBatch(sx, sy.contiguous(), qx, qy.contiguous())


# --- the nearest-centroid head ---------------------------------------------------------------
def test_cosine_centroid_logits_hand_computed() -> None:
    support = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    labels = torch.tensor([0, 0, 1, 1])
    c = class_centroids(support, labels, 2)
    assert torch.equal(c, torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
    query = torch.tensor([[1.0, 1.0], [3.0, 4.0]])
    logits = centroid_logits(query, c, 10.0)
    # cos([1,1],[1,0]) = 1/sqrt2; cos([3,4],[1,0]) = 0.6, cos([3,4],[0,1]) = 0.8
    expected = torch.tensor([[10 / math.sqrt(2), 10 / math.sqrt(2)], [6.0, 8.0]])
    assert torch.allclose(logits, expected, atol=1e-6)
    sqr = centroid_logits(query, c, 2.0, metric="sqr")
    # -2 * |[1,1]-[2,0]|^2 = -4, -2 * |[1,1]-[0,3]|^2 = -10; [3,4]: 17 and 10
    assert torch.allclose(sqr, torch.tensor([[-4.0, -10.0], [-34.0, -20.0]]))


def test_centroids_match_an_explicit_loop_and_need_every_class() -> None:
    g = torch.Generator().manual_seed(1)
    emb, y = torch.randn(2, 6, 5, generator=g), torch.tensor([[2, 0, 1, 0, 2, 1], [1, 1, 0, 2, 0, 2]])
    c = class_centroids(emb, y, 3)
    for t in range(2):
        for n in range(3):
            rows = [emb[t, i] for i in range(6) if int(y[t, i]) == n]
            assert torch.allclose(c[t, n], torch.stack(rows).mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="no example"):
        class_centroids(emb[0], torch.tensor([0, 0, 1, 1, 0, 1]), 3)


def test_logits_come_from_the_support_set_only() -> None:
    mb = MetaBaseline(Enc()).eval()
    b = episodes()
    ref = mb.logits(b)
    scrambled = TaskBatch(b.support_x, b.support_y, b.query_x,
                          torch.full_like(b.query_y, 99))  # query labels are never read
    assert torch.equal(mb.logits(scrambled), ref)
    # the same queries scored against an explicit per-episode computation
    with torch.no_grad():
        for t in range(len(b)):
            s, q = mb(b.support_x[t]), mb(b.query_x[t])
            cents = torch.stack([s[b.support_y[t] == n].mean(0) for n in range(3)])
            manual = 10.0 * F.normalize(q, dim=-1) @ F.normalize(cents, dim=-1).T
            assert torch.allclose(ref[t], manual, atol=1e-5)


def test_support_and_query_share_one_forward() -> None:
    calls = []
    enc = Enc()
    enc.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    b = episodes(t=2, ways=3, shots=2, queries=4)
    MetaBaseline(enc).train().meta_loss(b, training=True)
    assert calls == [2 * (6 + 12)]


# --- the temperature -------------------------------------------------------------------------
def test_temperature_is_learned_and_saved(tmp_path: Path) -> None:
    mb = MetaBaseline(Enc())
    assert isinstance(mb.temperature, nn.Parameter) and mb.temperature.item() == 10.0
    data = iter(lambda: episodes(seed=int(torch.randint(0, 10**6, ()))), None)
    opt = torch.optim.SGD(mb.parameters(), lr=0.05)
    fit(mb, data, opt, 6, out_dir=tmp_path, progress=False, tensorboard=False)
    learned = mb.temperature.item()
    assert learned != 10.0
    state = load_checkpoint(tmp_path / "last.pt")["model"]
    assert state["temperature"].item() == pytest.approx(learned)
    fixed = MetaBaseline(Enc(), learn_temperature=False, temperature=3.0)
    assert "temperature" not in dict(fixed.named_parameters())
    assert fixed.state_dict()["temperature"].item() == 3.0


# --- teachers --------------------------------------------------------------------------------
def test_teacher_is_bit_identical_after_training_and_uses_its_own_temperature() -> None:
    teacher = MetaBaseline(Enc(seed=1), temperature=4.0)
    teacher.train()  # the student must freeze it anyway
    before = copy.deepcopy(teacher.state_dict())
    student = MetaBaseline(Enc(seed=2), teacher=teacher,
                           loss=DistillLoss([KD(temperature=1.0)]))
    assert teacher.training is False
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not any(n.startswith("_teacher") for n, _ in student.named_parameters())
    assert set(student.state_dict()) == {"temperature"} | {
        f"encoder.{k}" for k in student.encoder.state_dict()}
    data = iter(lambda: episodes(seed=int(torch.randint(0, 10**6, ()))), None)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    fit(student, data, opt, 5, progress=False, tensorboard=False)
    after = teacher.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    # the teacher's logits are its own centroids at its own temperature
    b = episodes(seed=5)
    with torch.no_grad():
        expected = teacher.eval().logits(b)
    assert torch.equal(student.teacher_logits(b), expected)
    assert teacher.temperature.item() == 4.0


def test_distilled_loss_matches_the_terms_on_flattened_queries() -> None:
    teacher = MetaBaseline(Enc(seed=1))
    loss = DistillLoss([KD(temperature=2.0, weight=0.5)])
    student = MetaBaseline(Enc(seed=2), teacher=teacher, loss=loss).eval()
    b = episodes()
    total, m = student.meta_loss(b, training=True)
    s, t = student.logits(b).reshape(-1, 3), teacher.logits(b).reshape(-1, 3)
    y = b.query_y.reshape(-1)
    kl = F.kl_div(F.log_softmax(s / 2, -1), F.softmax(t / 2, -1), reduction="batchmean")
    assert total.item() == pytest.approx((F.cross_entropy(s, y) + 0.5 * 4 * kl).item(), rel=1e-5)
    assert sorted(m["terms"]) == ["ce", "kd"]
    assert m["task_accuracy"].shape == (2,)
    _, m2 = student.meta_loss(b, training=False)  # evaluation: CE only, no teacher
    assert list(m2["terms"]) == ["ce"]


def test_freeze_bn_keeps_batch_norm_in_eval_mode() -> None:
    mb = MetaBaseline(Enc(), freeze_bn=True).train()
    assert mb.training and not mb.encoder.bn.training
    running = mb.encoder.bn.running_mean.clone()
    mb.meta_loss(episodes(), training=True)
    assert torch.equal(mb.encoder.bn.running_mean, running)


# --- W2S terms -------------------------------------------------------------------------------
def test_augconf_mix_ramp_and_clamp() -> None:
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    term = AugConf(temperature=1.0, threshold=8.0, epochs=100, clamp=False)
    kd = F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="batchmean")
    own = F.cross_entropy(s, s.argmax(-1))
    out = term(s, t, None, epoch=10)  # a = 8 * 10 / 25 = 3.2: the original's sign flip
    assert out["kd"].item() == pytest.approx((1 - 3.2) * kd.item(), rel=1e-5)
    assert out["self_ce"].item() == pytest.approx(3.2 * own.item(), rel=1e-5)
    fixed = AugConf(threshold=8.0, epochs=100)(s, t, None, epoch=10)
    assert fixed["kd"].item() == pytest.approx(0.0, abs=1e-7)  # a clamped to 1
    assert AugConf(threshold=0.25, epochs=100).mix(5) == pytest.approx(0.05)


def test_adaptconf_per_sample_weights() -> None:
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    term = AdaptConf(temperature=2.0, threshold=8.0)
    out = term(s, t, None, epoch=1)
    kd_rows, own_rows, a = [], [], []
    for i in range(5):
        own = F.cross_entropy(s[i:i + 1], s[i:i + 1].argmax(-1))
        other = F.cross_entropy(s[i:i + 1], t[i:i + 1].argmax(-1))
        a_i = math.exp(own / 8) / (math.exp(own / 8) + math.exp(other / 8))
        kl = F.kl_div(F.log_softmax(s[i] / 2, -1), F.softmax(t[i] / 2, -1), reduction="sum")
        kd_rows.append((1 - a_i) * 4 * kl.item())
        own_rows.append(a_i * own.item())
        a.append(a_i)
    assert out["kd"].item() == pytest.approx(sum(kd_rows) / 5, rel=1e-5)
    assert out["self_ce"].item() == pytest.approx(sum(own_rows) / 5, rel=1e-5)


# --- configs and options ---------------------------------------------------------------------
def test_make_loss_terms_and_checks() -> None:
    cfg = MetaBaselineConfig(teacher="t", distill="adapt_conf", gda=True)
    terms = make_loss(cfg).terms
    assert [type(t).__name__ for t in terms] == ["AdaptConf", "GDA"]
    assert terms[1].sinkhorn_weight == 0.1 and terms[1].fisher_rao_weight == 0.1
    assert ClassifierBaselineConfig().sinkhorn_weight == 0.0008
    with pytest.raises(ValueError, match="needs pretrained"):
        check_meta(MetaBaselineConfig())
    with pytest.raises(ValueError, match="need a teacher"):
        check_meta(MetaBaselineConfig(distill="kd"))


def test_yaml_values_run_unless_an_option_is_given() -> None:
    yaml = pytest.importorskip("yaml")
    text = (EXAMPLES / "configs" / "meta" / "train_meta_mini_kd.yaml").read_text()
    c = yaml.safe_load(text)
    c["kd_loss_config"].update(temperature=4.0, sinkhorn_lamda=0.3)
    cfg = from_original(c, "meta", res_type="resnet36_bottle",
                        teacher_res_type="resnet12_bottle", out_root="save",
                        overrides={"temperature": None, "kd_weight": None})
    assert (cfg.temperature, cfg.sinkhorn_weight, cfg.kd_weight) == (4.0, 0.3, 1.0)
    assert (cfg.lr, cfg.epochs, cfg.train_batches, cfg.meta_batch_size) == (0.001, 20, 200, 4)
    assert cfg.arch == "resnet36_bottle" and cfg.teacher_arch == "resnet12_bottle"
    assert cfg.pretrained == "save/classifier_mini-imagenet_resnet36_bottle"
    assert cfg.teacher == "save/classifier_mini-imagenet_resnet12_bottle"
    assert cfg.distill == "kd" and cfg.gda is True
    given = from_original(c, "meta", overrides={"temperature": 2.0, "sinkhorn_weight": 0.05})
    assert (given.temperature, given.sinkhorn_weight) == (2.0, 0.05)
    meta_t = from_original(c, "meta", teacher_res_type="resnet18_bottle",
                           teacher_meta_model=True, out_root="o")
    assert meta_t.teacher == "o/meta_mini-imagenet-1shot_meta-baseline-resnet18_bottle"
    plain = yaml.safe_load((EXAMPLES / "configs" / "classifier" /
                            "train_classifier_mini.yaml").read_text())
    cls = from_original(plain, "classifier", res_type="resnet12_bottle")
    assert cls.teacher is None and cls.val_split == "train_phase_val" and cls.fs_every == 5
    assert (cls.batch_size, cls.epochs, cls.milestones) == (128, 100, [90])
    assert run_folder("x/epoch-last.pth", "r") == ("r/x", "last")


def test_the_example_parser_leaves_options_unset() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gda_train_classifier",
                                                  EXAMPLES / "train_classifier.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    from metakd.recipes.options import option_values
    from metakd.recipes.originals import GDA_FEWSHOT

    args = mod.parser("meta").parse_args(["--config", "x.yaml"])
    assert option_values(args, aliases=GDA_FEWSHOT) == {}  # the YAML file's values run
    args = mod.parser("meta").parse_args(["--config", "x.yaml", "--T", "3", "--teacher_meta_model",
                                          "--fisher_rao_lamda", "0.5"])
    assert option_values(args, aliases=GDA_FEWSHOT) == {"temperature": 3.0,
                                                         "fisher_rao_weight": 0.5}
    assert args.teacher_meta_model


@pytest.mark.slow  # a few tens of seconds: two stages with teachers on the bundled Omniglot
def test_recipes_end_to_end_on_omniglot(tmp_path: Path) -> None:
    from metakd.recipes import load_run, run

    common = dict(rotations=False, test_tasks=4, steps=6, fs_tasks=4, fs_every=1, batch_size=512)
    t = run(ClassifierBaselineConfig.paper("omniglot", model_kwargs={"hidden": 16},
                                           out_dir=str(tmp_path / "t"), **common),
            progress=False)
    assert t["test"]["episodes"] == 4 and (tmp_path / "t" / "fs_monitor.jsonl").is_file()
    s = run(ClassifierBaselineConfig.paper("omniglot", model_kwargs={"hidden": 8},
                                           teacher=str(tmp_path / "t"), distill="kd", gda=True,
                                           out_dir=str(tmp_path / "s"), **common),
            progress=False)
    assert s["test"] is not None
    teacher_state = load_checkpoint(tmp_path / "t" / "best.pt")["model"]
    m = run(MetaBaselineConfig.paper("omniglot", model_kwargs={"hidden": 8},
                                     pretrained=str(tmp_path / "s"), teacher=str(tmp_path / "t"),
                                     distill="aug_conf", gda=True, steps=4, rotations=False,
                                     test_tasks=4, out_dir=str(tmp_path / "m")),
            progress=False)
    assert m["test"] is not None
    after = load_checkpoint(tmp_path / "t" / "best.pt")["model"]
    assert all(torch.equal(v, after[k]) for k, v in teacher_state.items())
    r = load_run(tmp_path / "m")
    assert r.method == "meta_baseline" and r.learner.teacher is None
    assert "temperature" in load_checkpoint(tmp_path / "m" / "last.pt")["model"]
