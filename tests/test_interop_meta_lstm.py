"""markdtw's Meta-LSTM checkpoints (metakd.interop.meta_lstm) update the learner as the original.

A ``meta-learner-<episode>.pth.tar`` is built here in the original layout
(``markdtw/meta-learning-lstm-pytorch`` at fcc68ba, ``utils.py : save_ckpt`` and
``metalearner.py``): the key names and shapes are written out from the original's classes
(``nn.LSTMCell(4, 20)``, ``MetaLSTMCell``'s ``WF``/``WI`` ``[22, 1]``, ``bF``/``bI`` ``[1, 1]``,
``cI`` ``[32901, 1]``), the values key-seeded. Converted into a :class:`metakd.meta.MetaLSTM`,
its first two updates of the learner's parameters from given gradients equal a float64 hand
computation of the original equations: ``nn.LSTMCell`` with gates (i, f, g, o) and two biases,
then ``f = [h, c, f_prev] WF + bF``, ``i = [h, c, i_prev] WI + bI`` (pre-sigmoid values fed
back), ``c = sigmoid(f) c - sigmoid(i) g`` with ``g`` the gradient divided by the batch size,
``c_0 = cI``. The preprocessing is metakd's, which leaves out the ``1e-8`` that markdtw adds
inside the logarithm; that changes the update by less than 1e-6 (checked too). The
comparison fails once one weight is perturbed.

Also: the converted learner's parameters in order are ``cI`` (the original's ``parameters()``
order), a run started from the file with ``--episode 0`` tests it and its folder is read by
``load_run``, the example's ``--mode test --resume FILE`` takes it with ``--seed``, and the
refusals are one line.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from interop_reference import uniform

from metakd import interop
from metakd.engine.errors import InputError
from metakd.interop.meta_lstm import load_meta_learner
from metakd.meta import MetaLSTM
from metakd.meta.functional import flatten_params
from metakd.nn import create

ROOT = Path(__file__).resolve().parent.parent
H, BATCH = 20, 25


def original_learner_shapes(ways: int = 5, side: int = 5, channels: int = 3
                            ) -> list[tuple[str, tuple[int, ...]]]:
    """markdtw's ``Learner.model.parameters()``, in order (learner.py)."""
    out = []
    c = channels
    for b in range(1, 5):
        out += [(f"features.conv{b}.weight", (32, c, 3, 3)), (f"features.conv{b}.bias", (32,)),
                (f"features.norm{b}.weight", (32,)), (f"features.norm{b}.bias", (32,))]
        c = 32
    return [*out, ("cls.weight", (ways, 32 * side * side)), ("cls.bias", (ways,))]


def keyed(key: str, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
    n = math.prod(shape)
    return torch.from_numpy(lo + (hi - lo) * uniform(key, n)).reshape(shape)


def original_file(p: int = 32_901) -> dict:
    """The original checkpoint: ``{'episode', 'metalearner', 'optim'}`` in float64."""
    meta = {"lstm.weight_ih": keyed("lstm.weight_ih", (4 * H, 4), -0.5, 0.5),
            "lstm.weight_hh": keyed("lstm.weight_hh", (4 * H, H), -0.5, 0.5),
            "lstm.bias_ih": keyed("lstm.bias_ih", (4 * H,), -0.5, 0.5),
            "lstm.bias_hh": keyed("lstm.bias_hh", (4 * H,), -0.5, 0.5),
            "metalstm.WF": keyed("metalstm.WF", (H + 2, 1), -0.3, 0.3),
            "metalstm.WI": keyed("metalstm.WI", (H + 2, 1), -0.3, 0.3),
            "metalstm.cI": keyed("metalstm.cI", (p, 1), -0.1, 0.1),
            "metalstm.bI": torch.tensor([[-1.5]], dtype=torch.float64),
            "metalstm.bF": torch.tensor([[2.0]], dtype=torch.float64)}
    return {"episode": 42000, "metalearner": meta,
            "optim": {"state": {}, "param_groups": [{"lr": 1e-3, "params": list(range(9))}]}}


def preprocess(x: torch.Tensor, eps: float = 0.0, p: float = 10.0) -> torch.Tensor:
    """markdtw's ``preprocess_grad_loss`` (``eps=1e-8`` there), float64."""
    ind = (x.abs() >= math.exp(-p)).double()
    one = ind * torch.log(x.abs() + eps) / p + (1 - ind) * -1
    two = ind * torch.sign(x) + (1 - ind) * math.exp(p) * x
    return torch.stack([one, two], 1)


def original_update(meta: dict, grad: torch.Tensor, loss: float, hs=None, eps: float = 0.0):
    """``MetaLearner.forward`` of the original, written out: returns (new params, state)."""
    g = grad / BATCH  # main.py: p.grad / args.batch_size
    x = torch.cat([preprocess(torch.tensor([loss], dtype=torch.float64), eps).expand(len(g), 2),
                   preprocess(g, eps)], 1)
    if hs is None:
        h = c = torch.zeros(len(g), H, dtype=torch.float64)
        f_prev = i_prev = torch.zeros(len(g), 1, dtype=torch.float64)
        theta = meta["metalstm.cI"]
    else:
        (h, c), (f_prev, i_prev, theta) = hs
    gates = x @ meta["lstm.weight_ih"].T + meta["lstm.bias_ih"] \
        + h @ meta["lstm.weight_hh"].T + meta["lstm.bias_hh"]
    i, f, gg, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
    h = torch.sigmoid(o) * torch.tanh(c)
    f_next = torch.cat([h, theta, f_prev], 1) @ meta["metalstm.WF"] + meta["metalstm.bF"]
    i_next = torch.cat([h, theta, i_prev], 1) @ meta["metalstm.WI"] + meta["metalstm.bI"]
    theta = torch.sigmoid(f_next) * theta - torch.sigmoid(i_next) * g[:, None]
    return theta[:, 0], ((h, c), (f_next, i_next, theta))


def metakd_learner(ways: int = 5, image_size: int = 84, channels: int = 3) -> MetaLSTM:
    net = create("conv4", in_channels=channels, num_classes=ways, hidden=32, head="flatten",
                 image_size=image_size, bn_mode="running", bn_momentum=0.95, bn_eps=1e-3)
    return MetaLSTM(net, epochs=1, batch_size=BATCH).double()


def gradients(n: int) -> torch.Tensor:
    """Learner gradients of every magnitude, both branches of the preprocessing, no zero."""
    u = torch.from_numpy(uniform("grad", n))
    return torch.sign(u - 0.5) * 10 ** (-7 + 7 * torch.from_numpy(uniform("mag", n)))


def test_cI_is_the_learner_in_the_original_order(tmp_path: Path) -> None:
    obj = original_file()
    got = interop.read(obj)
    assert got is not None and got.format == "meta_lstm_pytorch" and got.arch == "conv4"
    assert (got.model_kwargs["num_classes"], got.model_kwargs["image_size"]) == (5, 84)
    meta = metakd_learner()
    shapes = [tuple(p.shape) for _, p in meta.model.named_parameters()]
    assert shapes == [s for _, s in original_learner_shapes()]
    torch.save(obj, tmp_path / "meta-learner-42000.pth.tar")
    extras = load_meta_learner(meta, tmp_path / "meta-learner-42000.pth.tar")
    assert extras["episode"] == 42000 and extras["hidden_size"] == H
    flat = flatten_params(dict(meta.model.named_parameters()))
    assert torch.equal(flat, obj["metalearner"]["metalstm.cI"][:, 0])


def test_first_updates_equal_the_original_equations(tmp_path: Path) -> None:
    obj = original_file()
    meta = obj["metalearner"]
    learner = metakd_learner()
    torch.save(obj, tmp_path / "m.pth.tar")
    load_meta_learner(learner, tmp_path / "m.pth.tar")
    rule = learner.rule
    params = dict(learner.model.named_parameters())
    grads = [gradients(len(meta["metalstm.cI"])), gradients(len(meta["metalstm.cI"])).flip(0)]
    losses = [1.7, 0.9]

    def names(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for n, p in params.items():
            out[n] = flat[start:start + p.numel()].view_as(p)
            start += p.numel()
        return out

    with torch.no_grad():
        state, theta, hs = None, params, None
        for g, loss in zip(grads, losses):
            theta, state = rule(names(g), theta, state, 0, torch.tensor(loss, dtype=torch.float64))
            ref, hs = original_update(meta, g, loss, hs)
            ours = flatten_params(theta)
            assert float((ours - ref).abs().max() / ref.abs().max()) < 1e-9
        # markdtw's 1e-8 inside the logarithm moves the first update by < 1e-6 relative
        eps_ref, _ = original_update(meta, grads[0], losses[0], None, eps=1e-8)
        first, _ = rule(names(grads[0]), params, None, 0, torch.tensor(1.7, dtype=torch.float64))
        assert float((flatten_params(first) - eps_ref).abs().max() / eps_ref.abs().max()) < 1e-6
        # the comparison fails once one weight of the file is changed
        meta["metalstm.WF"][3, 0] += 1e-3
        ref, _ = original_update(meta, grads[0], losses[0])
        assert float((flatten_params(first) - ref).abs().max() / ref.abs().max()) > 1e-9


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("meta_lstm_example",
                                                  ROOT / "examples" / "meta_lstm" / "main.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def omniglot_file(tmp_path: Path) -> Path:
    """A file whose learner fits the bundled Omniglot's (1 channel, 28 px, 5 ways)."""
    p = sum(math.prod(s) for _, s in original_learner_shapes(5, 1, 1))
    path = tmp_path / "meta-learner-7.pth.tar"
    obj = original_file(p)
    obj["metalearner"] = {k: v.float() for k, v in obj["metalearner"].items()}
    torch.save(obj, path)
    return path


def test_run_tests_the_file_and_example_honours_seed(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from metakd.recipes import MetaLSTMConfig, load_run, run

    path = omniglot_file(tmp_path)
    cfg = MetaLSTMConfig.paper("omniglot", shots=1, steps=0, epochs=1, val_tasks=2,
                               test_tasks=2, meta_learner=str(path),
                               out_dir=str(tmp_path / "run"))
    res = run(cfg, progress=False)
    assert res["steps"] == 0 and res["test"]["episodes"] == 2
    r = load_run(tmp_path / "run")
    c_i = torch.load(path, weights_only=True)["metalearner"]["metalstm.cI"][:, 0]
    assert torch.equal(flatten_params(dict(r.model.named_parameters())), c_i)
    moved = path.rename(tmp_path / "elsewhere.tar")  # the run folder holds the weights itself
    assert torch.equal(flatten_params(dict(load_run(tmp_path / "run").model.named_parameters())),
                       c_i)
    path = moved.rename(path)
    main = _example().main
    args = ["--mode", "test", "--resume", str(path), "--dataset", "omniglot", "--n-shot", "1",
            "--epoch", "1", "--test-tasks", "3"]
    first = main([*args, "--seed", "5"])["test"]
    again = main([*args, "--seed", "5"])["test"]
    other = main([*args, "--seed", "6"])["test"]
    assert first["episodes"] == 3 and (first["values"], first["loss"]) == (
        again["values"], again["loss"])
    assert first["loss"] != other["loss"]  # other test episodes
    assert "seed 5" in capsys.readouterr().out


def test_refusals_are_one_line(tmp_path: Path) -> None:
    obj = original_file()
    mlal = {**obj, "metalearner": {**obj["metalearner"], "value.fc1.weight": torch.zeros(2, 2)}}
    short = {**obj, "metalearner": {**obj["metalearner"], "metalstm.cI": torch.zeros(100, 1)}}
    cases: list[tuple[Callable[[], Any], str]] = [
        (lambda: interop.read(mlal), "MLAL"), (lambda: interop.read(short), "cI has 100"),
             (lambda: interop.read(obj, "resnet12"), "Conv-4")]
    torch.save(obj, tmp_path / "m.pth.tar")
    small = MetaLSTM(create("conv4", in_channels=3, num_classes=5, hidden=32, head="flatten",
                            image_size=84, bn_mode="running"), hidden_size=4)
    cases.append((lambda: load_meta_learner(small, tmp_path / "m.pth.tar"), "lstm_weight"))
    cases.append((lambda: load_meta_learner(small, tmp_path / "none.tar"), "does not exist"))
    for fn, match in cases:
        with pytest.raises(InputError, match=match) as e:
            fn()
        assert "\n" not in str(e.value)
