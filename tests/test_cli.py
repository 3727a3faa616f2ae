"""The ``metakd`` command: demo, train and eval run end to end; bad options give one line."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from metakd.cli import main
from metakd.recipes import load_run


def test_demo_trains_tests_and_writes_its_outputs(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress", "--steps", "3",
                 "--test-tasks", "10", "--meta-batch", "4"]) == 0
    text = capsys.readouterr().out
    assert "meta-trained 3 meta-iterations" in text
    assert "held-out 5-way 1-shot accuracy on omniglot (bundled)" in text
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == 3 and res["test"]["episodes"] == 10
    assert 0.0 <= res["test"]["accuracy"] <= 1.0
    for f in ("last.pt", "log.jsonl", "learning_curve.png", "episode.png", "config.json"):
        assert (out / f).is_file(), f
    assert json.loads((out / "config.json").read_text())["method"] == "maml"
    assert Image.open(out / "episode.png").size[1] == 5 * 57  # 5 rows of 56 px + 1 px gaps

    # `metakd eval` reloads the run and tests it again on the same episodes
    assert main(["eval", str(out), "--episodes", "10", "--no-progress"]) == 0
    line = capsys.readouterr().out
    assert f"{100 * res['test']['accuracy']:.2f}" in line


def test_train_resumes_and_uses_paper_defaults(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "maml", "--steps", "2", "--meta-batch-size", "2", "--test-tasks", "4",
            "--out-dir", str(out), "--no-progress", "--compile", "off"]
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "maml" and cfg["compile"] == "off"
    assert (cfg["inner_lr"], cfg["inner_steps"], cfg["test_inner_steps"]) == (0.4, 1, 3)
    assert cfg["queries"] == 1 and cfg["rotations"] and not cfg["first_order"]
    assert main([*args[:2], "--steps", "3", *args[4:]]) == 0  # continues from step 2
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == 3


def _one_line_error(*argv: str, code: int = 2) -> str:
    """The one line a failing command prints; ``code``: its exit status (2 usage, 3 input)."""
    r = subprocess.run([sys.executable, "-m", "metakd.cli", *argv], capture_output=True, text=True)
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    return r.stderr.strip()


def test_bad_options_are_one_line(tmp_path: Path) -> None:
    assert _one_line_error("demo", "--bogus") == (
        "metakd: error: unrecognized arguments: --bogus (see metakd --help)")
    assert "invalid choice: 'reptile'" in _one_line_error("train", "reptile")
    assert "500-way episodes need 500 classes" in _one_line_error(
        "train", "maml", "--ways", "500", "--out-dir", str(tmp_path / "a"), "--no-progress")
    assert "needs --root" in _one_line_error("train", "maml", "--dataset", "miniimagenet",
                                              "--out-dir", str(tmp_path / "b"))
    assert "unknown dataset 'imagenet'" in _one_line_error(
        "train", "maml", "--dataset", "imagenet", "--out-dir", str(tmp_path / "c"))
    assert "expected one of these layouts" in _one_line_error(
        "train", "maml", "--root", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "d"),
        code=3)
    assert "not a run folder" in _one_line_error("eval", str(tmp_path), code=3)


def _one_line_in_process(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 2) -> str:
    assert main(list(argv)) == code
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------- metakd eval RUN_DIR


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step 5-way 1-shot MAML run on the bundled Omniglot, tested on 4 episodes."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "maml", "--steps", "2", "--meta-batch-size", "2", "--test-tasks", "4",
                 "--out-dir", str(out), "--no-progress", "--compile", "off"]) == 0
    return out


def _printed(text: str) -> tuple[float, float]:
    """(mean, ci95) in % from the line ``metakd eval`` prints."""
    m = re.search(r"test accuracy on .*: ([0-9.]+) ± ([0-9.]+) %", text)
    assert m, text
    return float(m[1]), float(m[2])


def test_eval_and_load_run_agree_with_the_run(tiny_run: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    res = json.loads((tiny_run / "results.json").read_text())
    assert main(["eval", str(tiny_run), "--episodes", "4", "--no-progress"]) == 0
    mean, ci = _printed(capsys.readouterr().out)
    r = load_run(tiny_run, test_tasks=4)
    direct = r.evaluate()
    assert (mean, ci) == (round(100 * direct.mean, 2), round(100 * direct.ci95, 2))
    assert direct.mean == res["test"]["accuracy"] and r.method == "maml"
    assert type(r.learner).__name__ == "MAMLWrapper" and r.learner.model is r.model
    saved = tiny_run / "eval-omniglot-5way-1shot-15query-4ep-seed0-last.json"
    assert json.loads(saved.read_text())["test"]["accuracy"] == direct.mean


def test_eval_on_another_episode_shape(tiny_run: Path, capsys: pytest.CaptureFixture[str],
                                       caplog: pytest.LogCaptureFixture) -> None:
    """A 5-way run tested 20-way 5-shot: the bundled test split has 106 classes (x4 rotations)."""
    assert main(["eval", str(tiny_run), "--ways", "20", "--shots", "5", "--test-queries", "5",
                 "--episodes", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "20-way 5-shot test accuracy on omniglot (bundled)" in out
    assert "zero-initialised 20-way layer" in caplog.text
    saved = json.loads((tiny_run / "eval-omniglot-20way-5shot-5query-4ep-seed0-last.json")
                       .read_text())
    assert saved["trained"] == {"dataset": "omniglot", "ways": 5, "shots": 1}
    assert saved["test"]["episodes"] == 4
    assert _printed(out) == (round(100 * saved["test"]["accuracy"], 2),
                             round(100 * saved["test"]["ci95"], 2))
    r = load_run(tiny_run, ways=20, shots=5, test_queries=5, test_tasks=4)
    head = r.model.head
    assert head.out_features == 20 and not head.weight.detach().any() and not head.bias.any()
    # the body is the trained one: only the head was replaced
    trained = torch.load(tiny_run / "last.pt", weights_only=True)["model"]
    body = {k: v for k, v in r.learner.state_dict().items() if not k.startswith("model.head.")}
    assert body and all(v.equal(trained[k]) for k, v in body.items())


def test_eval_of_an_old_run_folder_without_method(tiny_run: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    cfg = json.loads((old / "config.json").read_text())
    del cfg["method"]
    (old / "config.json").write_text(json.dumps(cfg))
    res = json.loads((old / "results.json").read_text())
    assert main(["eval", str(old), "--episodes", "4", "--no-progress"]) == 0
    assert f"{100 * res['test']['accuracy']:.2f}" in capsys.readouterr().out


def test_eval_errors_are_one_line(tiny_run: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    alien = tmp_path / "alien"
    alien.mkdir()
    (alien / "config.json").write_text(json.dumps({"method": "reptile"}))
    err = _one_line_in_process(capsys, "eval", str(alien))
    assert "method 'reptile' is not registered; registered methods: " in err and "maml" in err
    (alien / "config.json").write_text(json.dumps({"method": "maml"}))
    assert "has config.json but no last.pt" in _one_line_in_process(capsys, "eval", str(alien),
                                                                    code=3)
    assert "2000-way episodes need 2000 classes" in _one_line_in_process(
        capsys, "eval", str(tiny_run), "--ways", "2000", "--no-progress")


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _shown_default(text: str, flag: str) -> str:
    """The ``(default: X)`` of ``flag``'s entry in a help text (the entry may wrap)."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"  {flag} ")
                 or ln.strip() == flag or ln.startswith(f"  {flag},"))
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].startswith("  -") or not lines[i].strip()), len(lines))
    m = re.search(r"\(default: ([^)]*)\)\s*$", " ".join(" ".join(lines[start:end]).split()))
    assert m, (flag, lines[start:end])
    return m[1]


def test_help_shows_the_values_that_run_for_the_data_set(
        capsys: pytest.CaptureFixture[str]) -> None:
    from metakd.recipes import MTLConfig, get_method

    omni = _help(capsys, "train", "mtl", "--dataset", "omniglot")
    mini = _help(capsys, "train", "mtl", "--dataset", "miniimagenet")
    for cfg, text in ((MTLConfig.paper("omniglot", 5, 1), omni),
                      (MTLConfig.paper("miniimagenet", 5, 1), mini)):
        for field, flag in (("pre_epochs", "--pre-epochs"), ("pre_lr", "--pre-lr"),
                            ("update_step", "--update-step"), ("steps", "--steps")):
            assert _shown_default(text, flag) == str(getattr(cfg, field)), flag
    assert _shown_default(omni, "--pre-epochs") != _shown_default(mini, "--pre-epochs")
    for group in ("data:", "model:", "inner loop:", "outer loop:", "run:"):
        assert f"\n{group}\n" in omni, group
    for method in ("maml", "pmaml", "mtl", "meta_lstm", "classifier_baseline", "meta_baseline",
                   "cifar_kd"):
        text = _help(capsys, "train", method)
        assert "``" not in text and ":func:" not in text and ":class:" not in text, method
        cfg = get_method(method).config_cls.paper(get_method(method).config_cls().dataset,
                                                  get_method(method).config_cls().ways,
                                                  get_method(method).config_cls().shots)
        assert _shown_default(text, "--seed") == str(cfg.seed)


# ------------------------------------------------------------------- metakd models


def test_models_lists_the_zoo_in_columns(capsys: pytest.CaptureFixture[str]) -> None:
    """Name, family and description (docstring markup out) of every model, aligned."""
    from metakd.nn import describe_models
    from metakd.recipes.fields import plain

    zoo = describe_models()
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[:2] for ln in lines] == [[m.name, m.family] for m in zoo]
    column = max(len(m.name) for m in zoo) + 2 + max(len(m.family) for m in zoo) + 2
    assert all(ln[column:] == plain(m.description) for ln, m in zip(lines, zoo, strict=True))
    assert any(m.description for m in zoo) and "``" not in "".join(lines)


def test_models_filters_by_family_and_pattern(capsys: pytest.CaptureFixture[str]) -> None:
    from metakd.nn import describe_models

    assert main(["models", "--family", "cifar"]) == 0
    names = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()]
    assert names == [m.name for m in describe_models(family="cifar")]
    assert "vgg8" in names and "conv4" not in names
    assert main(["models", "resnet*", "--family", "few-shot"]) == 0
    rows = [ln.split()[:2] for ln in capsys.readouterr().out.splitlines()]
    assert rows and all(n.startswith("resnet") and f == "few-shot" for n, f in rows)
    assert "no cifar model matches 'conv*'" in _one_line_in_process(
        capsys, "models", "conv*", "--family", "cifar")


def test_models_unknown_family_is_one_line() -> None:
    assert "invalid choice: 'imagenet'" in _one_line_error("models", "--family", "imagenet")
