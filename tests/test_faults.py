"""Fault injection: a failed call never damages a run folder, a diverged run never reports
success, and every failure is one line with the exit status of its class.

Each case runs the real command (``metakd.cli.main`` in process, or a subprocess where the
fault is a ``kill -9``) on tiny runs of the bundled Omniglot (or generated CIFAR-100 files),
and checks the message, the exit status and that the folder's files are byte-identical to
what they were before the call. The disk faults patch the one function every run-folder write
goes through (:func:`metakd.engine.runfolder._write_temp`): it raises ``ENOSPC`` (a full
disk) or ``EROFS`` (a read-only folder) as the operating system would; the tests run as root
here, where a ``chmod`` does not stop a write.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import fixtures_formats as fx
import pytest
import torch

from metakd import cli
from metakd.engine import fit, load_checkpoint, runfolder
from metakd.engine.errors import DivergenceError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def tiny(out: Path, *extra: str, steps: int = 2) -> list[str]:
    """A 2-step MAML run of 2 tasks per meta-batch, tested on 2 episodes."""
    return ["train", "maml", "--steps", str(steps), "--meta-batch-size", "2", "--test-tasks", "2",
            "--out-dir", str(out), "--no-progress", "--compile", "off", *extra]


def snapshot(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` (the temporary files too)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fails(capsys: pytest.CaptureFixture[str], argv: list[str], code: int) -> str:
    """Run ``metakd ARGV``; it must exit with ``code`` and print exactly one line."""
    capsys.readouterr()
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("metakd train: error: ") or err.startswith("metakd eval: error: "), err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step run; each test works on its own copy."""
    out = tmp_path_factory.mktemp("faults") / "run"
    assert cli.main(tiny(out)) == 0
    return out


@pytest.fixture
def run_copy(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


# ------------------------------------------------------------------ the folder is a transaction


def test_changed_options_are_refused_and_nothing_changes(
        run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(run_copy)
    err = fails(capsys, tiny(run_copy, "--meta-lr", "0.01", steps=4), 2)
    assert "meta_lr: 0.001 (run) vs 0.01 (now)" in err and "--override" in err
    err = fails(capsys, tiny(run_copy, "--ways", "20", steps=4), 2)  # once a raw size mismatch
    assert "ways: 5 (run) vs 20 (now)" in err
    assert snapshot(run_copy) == before
    # what may change on resume does not need --override: more steps, another time budget
    assert cli.main(tiny(run_copy, "--max-seconds", "600", steps=3)) == 0
    assert json.loads((run_copy / "config.json").read_text())["steps"] == 3


def test_override_records_and_uses_the_new_values(run_copy: Path) -> None:
    assert cli.main(tiny(run_copy, "--meta-lr", "0.01", "--override", steps=3)) == 0
    assert json.loads((run_copy / "config.json").read_text())["meta_lr"] == 0.01
    ckpt = load_checkpoint(run_copy / "last.pt")
    assert ckpt["step"] == 3
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == [0.01]


def test_a_checkpoint_that_does_not_fit_is_refused_before_anything_changes(
        run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A last.pt whose head has another shape than the options build: refused, untouched."""
    ckpt = load_checkpoint(run_copy / "last.pt")
    head = next(k for k in ckpt["model"] if k.endswith("head.weight"))
    ckpt["model"][head] = torch.zeros(20, ckpt["model"][head].shape[1])
    torch.save(ckpt, run_copy / "last.pt")
    before = snapshot(run_copy)
    err = fails(capsys, tiny(run_copy, steps=4), 3)
    assert "last.pt does not fit the model built from these options" in err
    assert "size mismatch" in err
    assert snapshot(run_copy) == before


def test_fresh_keeps_the_old_run_aside(run_copy: Path) -> None:
    before = snapshot(run_copy)
    assert cli.main(tiny(run_copy, "--fresh", "--seed", "1")) == 0
    kept = run_copy.with_name("run.old-1")
    assert snapshot(kept) == before
    assert json.loads((run_copy / "config.json").read_text())["seed"] == 1


def test_an_input_of_the_call_is_never_its_output(run_copy: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(run_copy)
    for argv in (["train", "pmaml", "--teacher", str(run_copy), "--out-dir", str(run_copy),
                  "--fresh", "--no-progress"],
                 ["train", "pmaml", "--teacher", str(run_copy), "--out-dir",
                  str(run_copy.parent), "--fresh", "--no-progress"]):
        err = fails(capsys, argv, 2)
        assert "is or contains the teacher" in err
    assert snapshot(run_copy) == before
    assert not run_copy.with_name("run.old-1").exists()


@pytest.mark.parametrize("fault", [errno.ENOSPC, errno.EROFS])
def test_a_disk_fault_leaves_the_folder_as_it_was(
        fault: int, run_copy: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The resumed run trains and logs 2 more steps, then its checkpoint cannot be written:
    log.jsonl is cut back, config.json and last.pt are the old ones, no temporary file stays."""
    before = snapshot(run_copy)

    def refuse(path: Path, data: bytes) -> Path:
        raise OSError(fault, os.strerror(fault), str(path))

    monkeypatch.setattr(runfolder, "_write_temp", refuse)
    err = fails(capsys, tiny(run_copy, "--checkpoint-every", "1", steps=4), 5)
    assert str(run_copy) in err
    assert ("the disk is full" if fault == errno.ENOSPC else "is not writable") in err
    assert snapshot(run_copy) == before


def test_an_unwritable_folder_is_refused_before_building(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode == os.W_OK
                        else real(p, mode, **kw))
    err = fails(capsys, tiny(tmp_path / "new"), 5)
    assert "is not writable" in err and not (tmp_path / "new").exists()


def test_kill_9_during_a_checkpoint_write_keeps_the_previous_one(
        tmp_path: Path, one_intra_op_thread: None) -> None:
    """The process dies (SIGKILL) half-way through writing its second last.pt: the first
    survives whole, and a resume finishes with the weights of a run never interrupted."""
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal
        import torch
        torch.set_num_threads({torch.get_num_threads()})  # the same arithmetic as this process
        from metakd.engine import runfolder
        from metakd import cli
        real, seen = runfolder._write_temp, []
        def dying(path, data):
            if path.name == "last.pt":
                seen.append(1)
                if len(seen) == 2:
                    real(path, data[: len(data) // 2])
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(path, data)
        runfolder._write_temp = dying
        cli.main({tiny(out, '--checkpoint-every', '1', steps=3)!r})
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert load_checkpoint(out / "last.pt")["step"] == 1
    assert json.loads((out / "config.json").read_text())["steps"] == 3
    assert cli.main(tiny(out, "--checkpoint-every", "1", steps=3)) == 0
    assert not list(out.glob(".*.tmp"))  # the killed writer's temporary file is cleaned up
    whole = tmp_path / "whole"
    assert cli.main(tiny(whole, "--checkpoint-every", "1", steps=3)) == 0
    a, b = load_checkpoint(out / "last.pt"), load_checkpoint(whole / "last.pt")
    assert a["step"] == b["step"] == 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])


def test_a_run_stopped_before_its_first_checkpoint_says_it_starts_over(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"method": "maml"}))
    (out / "log.jsonl").write_text(json.dumps({"kind": "train", "step": 10, "loss": 1.0}) + "\n")
    assert cli.main(tiny(out)) == 0
    assert "has no checkpoint" in caplog.text and "starting over" in caplog.text
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert max(steps) == 2  # the orphaned record of the stopped run is gone


def test_a_new_run_that_fails_leaves_no_folder(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new"
    fails(capsys, tiny(out, "--meta-lr", "1e6", "--checkpoint-every", "50", steps=20), 4)
    assert not out.exists()


def test_run_files_record_versions_and_share_one_mode(finished: Path) -> None:
    cfg = json.loads((finished / "config.json").read_text())
    assert set(cfg["versions"]) == {"metakd", "torch", "python", "git_commit"}
    assert cfg["versions"]["torch"] == torch.__version__
    modes = {p.name: p.stat().st_mode & 0o777 for p in finished.iterdir() if p.is_file()}
    assert len(set(modes.values())) == 1, modes


# ------------------------------------------------------------------------------ divergence


def test_maml_divergence_stops_with_the_last_finite_checkpoint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--meta-lr 1e6``: once a run that reported 20 % as a result."""
    out = tmp_path / "run"
    err = fails(capsys, tiny(out, "--meta-lr", "1e6", "--checkpoint-every", "1", steps=50), 4)
    assert "training diverged at step 2" in err and "over 1000 times" in err
    assert f"the last finite checkpoint, {out / 'last.pt'} (step 1), is kept" in err
    assert load_checkpoint(out / "last.pt")["step"] == 1
    assert not (out / "results.json").exists()


def test_classifier_baseline_divergence(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(capsys, ["train", "classifier_baseline", "--dataset", "omniglot", "--epochs", "1",
                         "--lr", "1e6", "--test-tasks", "2", "--out-dir", str(tmp_path / "c"),
                         "--no-progress"], 4)
    assert "training diverged at step" in err and "there is no checkpoint to keep" in err


@pytest.mark.parametrize("argv", [
    ["pmaml", "--schedule", "none", "--meta-lr", "1e6", "--steps", "30", "--meta-batch-size",
     "2", "--test-tasks", "2"],  # the PMAML student always runs eager: no --compile
    ["mtl", "--phase", "pre", "--pre-lr", "1e6", "--pre-epochs", "1", "--test-tasks", "2"],
    ["meta_lstm", "--dataset", "omniglot", "--lr", "1e6", "--steps", "30", "--test-tasks", "2"],
], ids=["pmaml", "mtl", "meta_lstm"])
def test_every_episodic_method_stops_when_it_diverges(
        argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    err = fails(capsys, ["train", *argv, "--out-dir", str(out), "--no-progress"], 4)
    assert "training diverged at step" in err and not out.exists()


def test_cifar_kd_divergence(cifar_root: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(capsys, ["train", "cifar_kd", "--root", str(cifar_root), "--arch", "resnet8",
                         "--lr", "1e6", "--batch-size", "16", "--epochs", "2",
                         "--out-dir", str(tmp_path / "k"), "--no-progress"], 4)
    assert "training diverged at step" in err


@pytest.mark.slow
def test_meta_baseline_divergence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--lr 1e6``: once 17 non-finite tensors in last.pt and chance accuracy as the result."""
    cb = tmp_path / "cb"
    assert cli.main(["train", "classifier_baseline", "--dataset", "omniglot", "--epochs", "1",
                     "--test-tasks", "2", "--fs-every", "0", "--out-dir", str(cb),
                     "--no-progress"]) == 0
    out = tmp_path / "mb"
    err = fails(capsys, ["train", "meta_baseline", "--dataset", "omniglot", "--pretrained",
                         str(cb), "--lr", "1e6", "--epochs", "1", "--train-batches", "20",
                         "--test-tasks", "2", "--val-tasks", "0", "--out-dir", str(out),
                         "--no-progress"], 4)
    assert "training diverged at step" in err and not (out / "results.json").exists()


def _diverging_fit(tmp_path: Path, poison: str) -> str:
    """fit on a linear model whose gradient (or, after the update, weight) becomes NaN."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))

    class Poison(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, w: torch.Tensor) -> torch.Tensor:
            return w.clone()

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
            return torch.full_like(g, float("nan"))

    def loss_fn(learner: torch.nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict]:
        w = Poison.apply(learner.weight) if poison == "grad" and step >= 2 else learner.weight
        logits = batch[0] @ w.t() + learner.bias
        return torch.nn.functional.cross_entropy(logits, batch[1]), {}

    lr = float("inf") if poison == "weight" else 0.1
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = iter(lambda: (x, y), None)
    if poison == "weight":  # step 3 multiplies by an infinite rate: the weights become inf/NaN
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr if s >= 2 else 1.0)
    else:
        sched = None
    with pytest.raises(DivergenceError) as info:
        fit(model, batches, opt, 10, loss_fn=loss_fn, scheduler=sched, out_dir=tmp_path,
            checkpoint_every=1, progress=False, tensorboard=False, divergence_factor=None)
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2  # the last finite one
    return str(info.value)


def test_a_non_finite_gradient_stops_the_run_naming_the_tensor(tmp_path: Path) -> None:
    msg = _diverging_fit(tmp_path, "grad")
    assert "at step 3: the gradient of weight is NaN" in msg and "(step 2), is kept" in msg


def test_a_non_finite_weight_never_reaches_a_checkpoint(tmp_path: Path) -> None:
    msg = _diverging_fit(tmp_path, "weight")
    assert "at step 3: the weight weight is" in msg and "(step 2), is kept" in msg


# ------------------------------------------------------------------------- one line per failure


@pytest.mark.parametrize("argv, needle", [
    (["maml", "--steps", "-1"], "steps=-1 (--steps) must be >= 0"),
    (["maml", "--shots", "0"], "shots=0 (--shots) must be >= 1"),
    (["maml", "--test-queries", "0"], "test_queries=0 (--test-queries) must be >= 1"),
    (["meta_lstm", "--queries", "0"], "queries=0 (--queries) must be >= 1"),
    (["pmaml", "--trade-lambda", "2"], "trade_lambda=2.0 (--trade-lambda) must be in [0, 1]"),
    (["pmaml", "--temperature", "0"], "temperature=0.0 (--temperature) must be > 0"),
    (["maml", "--meta-lr", "nan"], "meta_lr=nan (--meta-lr) must be a finite number"),
])
def test_nonsense_is_refused_before_anything_is_built(
        argv: list[str], needle: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x"
    err = fails(capsys, ["train", *argv, "--out-dir", str(out), "--no-progress"], 2)
    assert needle in err and not out.exists()


def test_out_dir_that_is_a_file_and_a_missing_device(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert "is a file, not a folder" in fails(capsys, tiny(f), 2)
    if not torch.cuda.is_available():
        err = fails(capsys, tiny(tmp_path / "g", "--device", "cuda"), 5)
        assert "this machine has no CUDA device" in err and not (tmp_path / "g").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        cli.main(["--debug", *tiny(tmp_path / "x", steps=-1)])
    with pytest.raises(ValueError, match="must be >= 0"):
        cli.main([*tiny(tmp_path / "x", steps=-1), "--debug"])


class _Boom:
    """A pickled object whose unpickling would run code."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cifar")
    fx.cifar100_python(path, fx.FINE, fx.COARSE, fx.SUPER_OF, train_per_class=2,
                       test_per_class=1)
    return path


@pytest.mark.parametrize("kind", ["text", "truncated", "code", "pickle", "empty"])
def test_bad_teacher_files_are_one_line_naming_the_file(
        kind: str, cifar_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    teacher = tmp_path / "teacher.pth"
    if kind == "text":
        teacher.write_text("epoch 240, acc 72.3\n" * 10)
    elif kind == "truncated":
        data = runfolder.checkpoint_bytes({"model": torch.nn.Linear(64, 100).state_dict()})
        teacher.write_bytes(data[: len(data) // 2])
    elif kind == "code":  # torch.save of an object whose unpickling would call os.system
        torch.save({"model": _Boom()}, teacher)
    elif kind == "pickle":  # a plain pickle, not a torch file
        with open(teacher, "wb") as f:
            pickle.dump({"model": _Boom()}, f)
    else:
        teacher.write_bytes(b"")
    out = tmp_path / "out"
    err = fails(capsys, ["train", "cifar_kd", "--root", str(cifar_root), "--teacher",
                         str(teacher), "--teacher-arch", "resnet8", "--arch", "resnet8",
                         "--out-dir", str(out), "--no-progress"], 3)
    assert str(teacher) in err and len(err) < 400, err
    if kind == "code":
        assert "refused: the file pickles Python objects (posix.system)" in err
    else:
        assert "not a PyTorch checkpoint" in err or "is empty" in err
    assert not out.exists()


def _example(script: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLES / "gda" / script), *argv],
                          capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("text, needle", [
    ("max_epochs: 3\n", "unknown key 'max_epochs' (did you mean 'max_epoch'?)"),
    ("max_epoch: [\n", "is not valid YAML at line 2"),
    ("max_epoch: three\n", "max_epoch is 'three' (str); it must be an integer"),
    ("- a\n- b\n", "holds a list, not a mapping"),
    (None, "no such file"),
])
def test_bad_yaml_configs_are_one_line(text: str | None, needle: str, tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    path = tmp_path / "c.yaml"
    if text is not None:
        path.write_text(text)
    r = _example("train_classifier.py", "--config", str(path), cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    err = r.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("train_classifier.py: error: ") and needle in err, err
    assert not (tmp_path / "save").exists()


def test_the_shipped_yaml_configs_pass_the_checks() -> None:
    pytest.importorskip("yaml")
    from metakd.recipes.baseline_options import read_original

    found = sorted((EXAMPLES / "gda" / "configs").glob("*/*.yaml"))
    assert len(found) >= 10
    for path in found:
        read_original(path, "classifier" if path.parent.name == "classifier" else "meta")


# ------------------------------------------------------------- nothing silently does less


def test_a_run_stopped_by_its_time_budget_logs_its_last_step(tmp_path: Path) -> None:
    """With log_every=1000 no periodic record falls inside the run: the last step is logged."""
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    r = fit(model, iter(lambda: (x, y), None), opt, 10**9, max_seconds=0.2, log_every=1000,
            out_dir=tmp_path, progress=False, tensorboard=False)
    assert r.stopped_early and 0 < r.step < 1000
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "train" and records[-1]["step"] == r.step


def test_validation_options_without_validation_data_are_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(tiny(tmp_path / "r", "--val-every", "1")) == 0
    assert "val_every=1 has no effect: this maml run has no validation data" in caplog.text
    out = capsys.readouterr().out
    assert "run folder:" in out and "best.pt" not in out  # only files that exist are listed
