"""The method registry and the shared run plumbing: a second, supervised method runs through it.

The toy method below is what Classifier-Baseline or MTL's pre-training will look like: whole-
classification ``(x, y)`` minibatches over the bundled Omniglot's training classes, tested on
held-out few-shot episodes by nearest prototype (its own ``eval_fn``). It is registered in
the test only, and goes through ``metakd train toy``, ``metakd eval`` and ``load_run``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from metakd.cli import main
from metakd.recipes import (
    MAMLConfig,
    Parts,
    get_method,
    load_run,
    method_of,
    methods,
    read_config,
    register,
    run,
    unregister,
)
from metakd.recipes.maml import LONG_RUN_STEPS, SHORT_RUN_S, _compile
from metakd.recipes.options import add_config_arguments, field_docs


@dataclass
class ToyConfig:
    """Toy whole-classification pre-training, tested by nearest prototype.

    Attributes:
        dataset, root: the data set and its folder.
        ways, shots: test episode shape.
        test_queries: query images per class in test episodes.
        test_tasks: test episodes.
        steps: SGD steps.
        val_every: validation period (no validation here).
        seed: seed.
        out_dir: run folder.
        max_seconds: time budget.
        device: where to train.
        lr: SGD learning rate.
        batch_size: images per minibatch.
        hidden: filters per conv layer.
    """

    dataset: str = "omniglot"
    root: str | None = None
    ways: int = 5
    shots: int = 1
    test_queries: int = 5
    test_tasks: int = 4
    steps: int = 3
    val_every: int = 100
    seed: int = 0
    out_dir: str = "runs/toy"
    max_seconds: float | None = None
    device: str = "cpu"
    lr: float = 0.1
    batch_size: int = 16
    hidden: int = 16

    @classmethod
    def paper(cls, dataset: str = "omniglot", ways: int = 5, shots: int = 1,
              **overrides: Any) -> ToyConfig:
        return cls(dataset=dataset, ways=ways, shots=shots, **overrides)


def prototype_eval(learner: torch.nn.Module, data: Any, *, device: Any, progress: bool) -> Any:
    """Nearest-prototype accuracy of ``learner.features`` per episode, with its 95% interval."""
    from metakd.engine import mean_confidence_interval

    accs: list[float] = []
    learner.eval()
    with torch.no_grad():
        for batch in data:
            batch = batch.to(device)
            for t in range(len(batch)):
                support = learner.features(batch.support_x[t])
                query = learner.features(batch.query_x[t])
                protos = torch.stack([support[batch.support_y[t] == c].mean(0)
                                      for c in range(batch.ways)])
                pred = torch.cdist(query, protos).argmin(-1)
                accs.append(float((pred == batch.query_y[t]).double().mean()))
    learner.train()
    return mean_confidence_interval(accs)


def build_toy(cfg: ToyConfig) -> Parts:
    from metakd.data import batches, few_shot
    from metakd.data.registry import get_dataset
    from metakd.nn import create

    torch.manual_seed(cfg.seed)
    train_set = get_dataset(cfg.dataset, cfg.root, "train")
    test_set = get_dataset(cfg.dataset, cfg.root, "test")
    model = create("conv4", in_channels=1, num_classes=len(train_set.classes), hidden=cfg.hidden)
    return Parts(
        learner=model, model=model,
        train_data=batches(train_set, cfg.batch_size, seed=cfg.seed, progress=False),
        test_data=few_shot(test_set, cfg.ways, cfg.shots, cfg.test_queries, meta_batch_size=2,
                           num_tasks=cfg.test_tasks, seed=cfg.seed + 2, progress=False),
        optimizer=torch.optim.SGD(model.parameters(), lr=cfg.lr),
        eval_fn=prototype_eval,
    )


@pytest.fixture
def toy() -> Iterator[None]:
    register("toy", ToyConfig, build_toy, describe="toy supervised pre-training",
             replace=True)
    yield
    unregister("toy")


# ------------------------------------------------------------------------------- registry


def test_maml_is_registered_and_found_by_its_config() -> None:
    maml = get_method("maml")
    assert maml.config_cls is MAMLConfig and maml.step_name == "meta-iterations"
    assert method_of(MAMLConfig()) is maml
    assert "maml" in [m.name for m in methods()]
    with pytest.raises(ValueError, match="method 'reptile' is not registered; registered "
                                         "methods: .*maml"):
        get_method("reptile")


def test_register_checks_the_config_and_the_name(toy: None) -> None:
    assert get_method("toy").describe == "toy supervised pre-training"
    with pytest.raises(ValueError, match="already registered"):
        register("toy", ToyConfig, build_toy)
    with pytest.raises(ValueError, match="lower-case"):
        register("Toy Method", ToyConfig, build_toy)
    with pytest.raises(TypeError, match="must be a dataclass"):
        register("plain", dict, build_toy)

    @dataclass
    class NoPaper:
        ways: int = 5

    with pytest.raises(TypeError, match="needs a classmethod paper"):
        register("nopaper", NoPaper, build_toy)
    partial = dataclasses.make_dataclass("Partial", [("ways", int, 5)],
                                         namespace={"paper": classmethod(lambda c, *a: c())})
    with pytest.raises(TypeError, match=r"lacks the fields \['dataset', 'root'"):
        register("partial", partial, build_toy)
    assert "nopaper" not in [m.name for m in methods()]


def test_options_come_from_the_config_fields_and_docstring() -> None:
    docs = field_docs(MAMLConfig)
    assert docs["ways"].startswith("``N``") and docs["shots"].startswith("``K``")
    assert "cosine" in docs["lr_schedule"] and "BudgetCosine" in docs["lr_schedule"]
    p = argparse.ArgumentParser()
    added = add_config_arguments(p, MAMLConfig, skip=("dataset", "root"))
    assert "dataset" not in added and {"first_order", "model_kwargs", "image_size"} <= set(added)
    args = p.parse_args(["--first-order", "--model-kwargs", "hidden=32", "--image-size", "32"])
    assert (args.first_order, args.model_kwargs, args.image_size) == (True, {"hidden": 32}, 32)
    assert args.inner_lr is None  # not given: paper() keeps the paper's value
    assert "inner loop" in p.format_help()


def test_compile_auto_compiles_long_runs_from_the_start() -> None:
    assert _compile(MAMLConfig()) is True  # 60,000 steps, no budget: a long run
    assert _compile(MAMLConfig(max_seconds=SHORT_RUN_S)) is True
    assert _compile(MAMLConfig(max_seconds=240)) is False  # the demo's 4 minutes
    assert _compile(MAMLConfig(steps=LONG_RUN_STEPS - 1)) is False  # a short run
    assert _compile(MAMLConfig(model_kwargs={"bn_mode": "per_step"})) is False
    assert _compile(MAMLConfig(backend="learn2learn")) is False  # cannot compile
    assert _compile(MAMLConfig(compile="on", max_seconds=1)) is True
    assert _compile(MAMLConfig(compile="off")) is False
    with pytest.raises(ValueError, match="compile='sometimes' is unknown"):
        _compile(MAMLConfig(compile="sometimes"))


def test_read_config_of_old_runs(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(
        {"ways": 20, "shots": 5, "compile_after_s": 120}))  # no "method"; a dropped field
    method, cfg = read_config(tmp_path)
    assert method.name == "maml" and (cfg.ways, cfg.shots, cfg.inner_lr) == (20, 5, 0.4)
    (tmp_path / "config.json").write_text(json.dumps({"method": "reptile"}))
    with pytest.raises(ValueError, match="method 'reptile' is not registered"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_config(tmp_path)


# ------------------------------------------------------------------ a supervised method


def test_a_second_method_trains_evaluates_and_loads_through_the_plumbing(
        toy: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "toy"
    assert main(["train", "toy", "--steps", "3", "--out-dir", str(out), "--no-progress",
                 "--lr", "0.05", "--hidden", "8"]) == 0
    text = capsys.readouterr().out
    assert "  trained 3 steps" in text and "held-out 5-way 1-shot accuracy" in text
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["method"], cfg["lr"], cfg["hidden"], cfg["batch_size"]) == ("toy", 0.05, 8, 16)
    res = json.loads((out / "results.json").read_text())
    assert (res["method"], res["steps"], res["selected"]) == ("toy", 3, "last")
    assert res["test"]["episodes"] == 4 and res["best_val"] is None
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and (out / "learning_curve.png").is_file()

    # the run folder reads back through the same calls as a MAML run
    r = load_run(out)
    assert r.method == "toy" and r.learner is r.model and r.config.hidden == 8
    assert r.evaluate().mean == res["test"]["accuracy"]
    assert main(["eval", str(out), "--episodes", "4", "--no-progress"]) == 0
    assert f"{100 * res['test']['accuracy']:.2f}" in capsys.readouterr().out
    saved = json.loads((out / "eval-omniglot-5way-1shot-5query-4ep-seed0-last.json").read_text())
    assert saved["method"] == "toy" and saved["test"]["accuracy"] == res["test"]["accuracy"]

    # the weights must fit the model built: another width is named, in one line
    with pytest.raises(ValueError, match=r"do not fit the model built: .* is \[8, 1, 3, 3\]"):
        load_run(out, hidden=16)
    with pytest.raises(ValueError, match=r"\['widht'\] are not fields of ToyConfig"):
        load_run(out, widht=3)

    # a folder of one method is not resumed as another
    with pytest.raises(ValueError, match="holds a 'toy' run"):
        run(MAMLConfig(out_dir=str(out), steps=1, compile="off"), progress=False)


def test_train_help_of_a_method_without_add_arguments(toy: None,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "toy", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--lr LR SGD learning rate (default: 0.1)" in text
    assert "--hidden HIDDEN filters per conv layer (default: 16)" in text
    assert "--steps STEPS SGD steps (default: 3)" in text  # the config's own help
    assert "--root ROOT the data set and its folder (default: none)" in text
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    assert re.search(r"^toy +toy supervised pre-training", listed, re.M)
    assert re.search(r"^maml +MAML \(Finn", listed, re.M)


def test_load_run_errors_name_the_expected_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no config.json .* holds config.json, last.pt"):
        load_run(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"method": "maml"}))
    with pytest.raises(FileNotFoundError, match="has config.json but no last.pt"):
        load_run(tmp_path)
    with pytest.raises(ValueError, match="checkpoint='first'"):
        load_run(tmp_path, checkpoint="first")  # type: ignore[arg-type]


def test_copied_run_folder_loads_from_where_it_is(toy: None, tmp_path: Path) -> None:
    cfg = ToyConfig(out_dir=str(tmp_path / "a"), steps=1, test_tasks=2)
    res = run(cfg, progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    r = load_run(tmp_path / "b", test_tasks=2)
    assert r.config.out_dir == str(tmp_path / "b") and r.checkpoint == tmp_path / "b" / "last.pt"
    assert r.evaluate().mean == res["test"]["accuracy"]


def test_test_seed_fixes_the_test_episodes_across_seeds() -> None:
    from metakd.recipes.maml import build

    def first_test_classes(**kw: object) -> torch.Tensor:
        parts = build(MAMLConfig(meta_batch_size=2, test_tasks=2, compile="off", **kw))
        return next(iter(parts.test_data)).classes

    assert not torch.equal(first_test_classes(seed=0), first_test_classes(seed=1))
    assert torch.equal(first_test_classes(seed=0, test_seed=7),
                       first_test_classes(seed=1, test_seed=7))
