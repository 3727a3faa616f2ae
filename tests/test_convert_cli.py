"""``metakd convert``: original checkpoints to metakd state dicts and run folders, in process.

A MAML-Pytorch checkpoint (re-created as in ``test_interop_maml_pytorch``) becomes a ``maml``
run folder that ``metakd eval`` tests, and a state-dict file whose model computes the port's
forward; refusals are one line with the exit status of their class.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_interop_maml_pytorch import inputs, omniglot_config, positional_forward, positional_state
from test_interop_pmaml import case_state

from metakd.cli import main
from metakd.nn import create


def _maml_pytorch_file(folder: Path, ways: int = 5) -> tuple[Path, dict[str, torch.Tensor]]:
    state = {k: v.float() for k, v in positional_state(omniglot_config(ways), seed=8).items()}
    path = folder / "maml_omniglot.pt"
    torch.save(state, path)
    return path, state


def test_maml_pytorch_checkpoint_becomes_a_run_that_metakd_eval_tests(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from metakd.recipes import load_run

    src, state = _maml_pytorch_file(tmp_path)
    run = tmp_path / "run"
    assert main(["convert", str(src), "--to", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "(maml_pytorch) -> maml_pytorch_omniglot" in printed and "metakd eval" in printed
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "maml" and config["model"] == "maml_pytorch_omniglot"
    assert (config["ways"], config["shots"], config["image_size"]) == (5, 1, 28)
    assert (config["inner_lr"], config["inner_loss_reduction"], config["first_order"]) == (
        0.4, "mean", True)
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["step"] == 0 and "model.encoder.block1.conv.weight" in last["model"]

    # the run's model is the port's net
    x = inputs((6, 1, 28, 28)).float()
    model = load_run(run, checkpoint="last", test_tasks=2).model
    with torch.no_grad():
        want = positional_forward(omniglot_config(), state, x, True)
        assert float((model(x) - want).abs().max()) < 1e-5

    assert main(["eval", str(run), "--episodes", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy on omniglot (bundled)" in out
    assert list(run.glob("eval-omniglot-5way-1shot-15query-2ep-*.json"))


def test_state_dict_destination(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, state = _maml_pytorch_file(tmp_path, ways=20)
    dest = tmp_path / "out" / "net.pth"
    assert main(["convert", str(src), "--arch", "maml_pytorch_omniglot", "--to", str(dest)]) == 0
    assert "state dict:" in capsys.readouterr().out
    weights = torch.load(dest, weights_only=True)
    net = create("maml_pytorch_omniglot", num_classes=20)
    net.load_state_dict(weights)  # strict
    x = inputs((4, 1, 28, 28)).float()
    with torch.no_grad():
        assert float((net(x) - positional_forward(omniglot_config(20), state, x, True))
                     .abs().max()) < 1e-5


def test_plain_state_dicts_need_arch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "conv4.pt"
    torch.save(create("conv4", num_classes=5).state_dict(), src)
    assert main(["convert", str(src), "--to", str(tmp_path / "x.pt")]) == 2
    assert "pass --arch" in capsys.readouterr().err
    assert main(["convert", str(src), "--arch", "conv4", "--to", str(tmp_path / "x.pt")]) == 0
    assert "(state dict) -> conv4" in capsys.readouterr().out
    assert main(["convert", str(src), "--arch", "conv2", "--to", str(tmp_path / "y.pt")]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit a 'conv2'" in err


def test_one_line_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pmaml = tmp_path / "teacher_cub_cub_conv4_max_acc.pt"
    torch.save(case_state("conv4"), pmaml)
    assert main(["convert", str(pmaml), "--to", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no training settings" in err
    assert not (tmp_path / "run").exists()

    src, _ = _maml_pytorch_file(tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["convert", str(src), "--to", str(tmp_path / "busy")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["convert", str(src), "--arch", "maml_pytorch_miniimagenet",
                 "--to", str(tmp_path / "m.pt")]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "maml_omniglot.pt: holds MAML-Pytorch's omniglot net" in err
    assert main(["convert", str(tmp_path / "missing.pt"), "--to", str(tmp_path / "m.pt")]) == 3
    assert main(["convert", str(src), "--format", "nope", "--to", str(tmp_path / "m.pt")]) == 2
    assert "unknown checkpoint format 'nope'" in capsys.readouterr().err
