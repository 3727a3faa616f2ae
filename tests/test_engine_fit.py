"""fit on any batch: minibatches, named terms, the step index, callbacks, top-1, budget bar."""

from __future__ import annotations

import doctest
import importlib
import io
import math
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from engine_helpers import EpisodeStream, LinearMAML, MinibatchStream, TwoTermMeta
from torch import nn

from metakd.engine import (
    Callback,
    FitState,
    evaluate,
    fit,
    plot_learning_curve,
    rank_slice,
    read_log,
    supervised_loss,
)

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- minibatches


def test_supervised_fit_learns_and_logs_the_ce_term(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    held_out = MinibatchStream(batch_size=100, seed=7)
    val = [held_out.batch(i) for i in range(3)]
    r = fit(model, MinibatchStream(), opt, 60, val_data=val, val_every=30, out_dir=tmp_path,
            log_every=5, progress=False, tensorboard=False)
    assert r.step == 60
    assert r.best_val is not None and r.best_val.unit == "examples"
    assert r.best_val.episodes == 300 and r.best_val.mean > 0.8  # chance is 1/3
    train = [h for h in r.history if h["kind"] == "train"]
    assert all("loss/ce" in h and h["loss/ce"] == pytest.approx(h["loss"]) for h in train)
    assert all(h["examples_per_s"] > 0 for h in train)
    assert train[-1]["accuracy"] > 0.8
    assert read_log(tmp_path / "log.jsonl")[0]["loss/ce"] == train[0]["loss/ce"]
    assert (tmp_path / "best.pt").exists()


def test_an_eval_fn_replaces_evaluate_for_validation() -> None:
    """A learner trained on minibatches but validated another way (Classifier-Baseline's
    nearest-centroid episodes) passes eval_fn; the best checkpoint follows its results."""
    from metakd.engine import EvalResult

    calls: list[int] = []

    def eval_fn(learner: nn.Module, data: Any, *, device: Any, progress: bool) -> EvalResult:
        calls.append(len(data))
        return EvalResult(mean=0.1 * len(calls), ci95=0.0, std=0.0, episodes=len(data))

    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    r = fit(model, MinibatchStream(), torch.optim.SGD(model.parameters(), lr=0.1), 6,
            val_data=["episode"] * 5, val_every=2, eval_fn=eval_fn, progress=False,
            tensorboard=False)
    assert calls == [5, 5, 5]  # steps 2, 4 and the end (6)
    assert r.best_step == 6 and r.best_val is not None
    assert r.best_val.mean == pytest.approx(0.3)


def test_supervised_loss_is_the_mean_cross_entropy() -> None:
    model = nn.Linear(4, 3)
    x, y = MinibatchStream(batch_size=8).batch(0)
    loss, metrics = supervised_loss(model, (x, y), 3)
    assert torch.equal(loss, F.cross_entropy(model(x), y))
    assert metrics["terms"] == {"ce": float(loss.detach())}
    assert metrics["accuracy"] == float((model(x).argmax(1) == y).double().mean())
    with pytest.raises(TypeError, match="pass loss_fn"):
        supervised_loss(model, (x, y, y), 0)


def test_a_loss_fn_gets_the_step_and_the_old_two_argument_form_still_works() -> None:
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: list[int] = []

    def three(m: nn.Module, b: Any, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        seen.append(step)
        return supervised_loss(m, b, step)

    fit(model, MinibatchStream(), opt, 4, loss_fn=three, progress=False)
    assert seen == [0, 1, 2, 3]
    calls = []
    fit(model, MinibatchStream(), opt, 2, progress=False,
        loss_fn=lambda m, b: calls.append(1) or supervised_loss(m, b))
    assert len(calls) == 2


def test_a_finite_stream_that_ends_early_is_a_clear_error() -> None:
    model = nn.Linear(4, 3)
    batches = [MinibatchStream().batch(i) for i in range(3)]
    with pytest.raises(ValueError, match="stream ended at step 3 of 5"):
        fit(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), 5, progress=False)


# ---------------------------------------------------------------- episodes: terms and step


def test_named_terms_are_logged_and_the_step_continues_after_resume(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TwoTermMeta()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    val = [EpisodeStream(seed=9).batch(i) for i in range(2)]
    fit(model, EpisodeStream(), opt, 5, val_tasks=val, val_every=2, out_dir=tmp_path,
        log_every=1, checkpoint_every=2, progress=False)
    assert model.steps == [0, 1, 2, 3, 4]

    torch.manual_seed(1)  # a new process: other initial weights, restored from last.pt
    model = TwoTermMeta()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    fit(model, EpisodeStream(), opt, 8, val_data=val, val_every=2, out_dir=tmp_path,
        log_every=1, checkpoint_every=2, progress=False)
    assert model.steps == [5, 6, 7]  # continues at the right meta-iteration

    records = read_log(tmp_path / "log.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 9))
    for r in train:
        assert r["loss"] == pytest.approx(r["loss/ce"] + r["loss/kd"], rel=1e-6)
        assert r["inner_steps"] == 1.0 and r["tasks_per_s"] > 0
        assert "class_accuracy" not in r and "task_accuracy" not in r  # not scalars
    assert [r["step"] for r in records if r["kind"] == "val"] == [2, 4, 5, 6, 8]
    png = plot_learning_curve(tmp_path / "log.jsonl", tmp_path / "curve.png")
    assert png.stat().st_size > 1000


def test_val_data_and_its_old_name_together_are_refused() -> None:
    model = TwoTermMeta()
    val = [EpisodeStream().batch(0)]
    with pytest.raises(ValueError, match="not both"):
        fit(model, EpisodeStream(), torch.optim.SGD(model.parameters(), lr=0.1), 1,
            val_data=val, val_tasks=val, progress=False)


def test_a_meta_loss_without_step_is_called_without_it() -> None:
    model = LinearMAML(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    r = fit(model, EpisodeStream(), opt, 2, progress=False, log_every=1)
    assert r.step == 2 and model.calls == 2
    assert "tasks_per_s" in r.history[-1]


# ---------------------------------------------------------------- callbacks


class Counter(Callback):
    def __init__(self) -> None:
        self.count = 0
        self.start: FitState | None = None

    def on_fit_start(self, fit_state: FitState) -> None:
        self.start = fit_state

    def on_step_end(self, step: int, batch: Any, loss: torch.Tensor, metrics: dict[str, Any],
                    learner: nn.Module) -> None:
        assert step == self.count + 1 and loss.grad_fn is None
        self.count = step

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"]


class Injector(Callback):
    """After every third step, queue a harder copy of the batch; ``next_batch`` pops it."""

    def __init__(self) -> None:
        self.queue: list[tuple[torch.Tensor, torch.Tensor]] = []

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.queue.pop(0) if self.queue else None

    def on_step_end(self, step: int, batch: Any, loss: torch.Tensor, metrics: dict[str, Any],
                    learner: nn.Module) -> None:
        if step % 3 == 0:
            x, y = batch
            self.queue.append((2.0 * x, y))

    def state_dict(self) -> dict[str, Any]:
        return {"queue": [list(b) for b in self.queue]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue = [(x, y) for x, y in state["queue"]]


class Recorder(Callback):
    def __init__(self) -> None:
        self.batches: list[Any] = []

    def on_step_end(self, step: int, batch: Any, loss: torch.Tensor, metrics: dict[str, Any],
                    learner: nn.Module) -> None:
        self.batches.append(batch)


def _supervised_run(steps: int, callbacks: list[Callback], out: Path | None = None,
                    checkpoint_every: int = 100) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    fit(model, MinibatchStream(batch_size=8), opt, steps, scheduler=sched, callbacks=callbacks,
        out_dir=out, checkpoint_every=checkpoint_every, progress=False, tensorboard=False)
    return model


def test_a_counting_callback_state_survives_a_resume(tmp_path: Path) -> None:
    first = Counter()
    _supervised_run(6, [first], tmp_path, checkpoint_every=4)
    assert first.count == 6 and first.start is not None and first.start.start_step == 0
    second = Counter()
    _supervised_run(10, [second], tmp_path)
    assert second.start is not None and second.start.start_step == 6
    assert second.count == 10
    with pytest.raises(ValueError, match=r"state of 1 callback\(s\) but fit\(\) got 2"):
        _supervised_run(12, [Counter(), Counter()], tmp_path)


def test_an_injecting_callback_changes_the_batches_and_resumes_bit_for_bit(
        tmp_path: Path) -> None:
    stream = MinibatchStream(batch_size=8)
    rec = Recorder()
    want = _weights(_supervised_run(12, [Injector(), rec]))
    # steps 1-3 draw stream batches 0-2; step 4 trains on 2 * batch 2; step 5 on stream batch 3
    for i, k in ((0, 0), (1, 1), (2, 2), (4, 3), (5, 4)):
        assert torch.equal(rec.batches[i][0], stream.batch(k)[0])
    assert torch.equal(rec.batches[3][0], 2 * stream.batch(2)[0])
    assert torch.equal(rec.batches[6][0], 2 * stream.batch(4)[0])
    assert torch.equal(rec.batches[7][0], stream.batch(5)[0])
    plain = _weights(_supervised_run(12, [Recorder()]))
    assert not _equal(want, plain)

    # stop right after step 6, whose batch was just queued, then resume in a fresh "process"
    _supervised_run(6, [Injector(), Recorder()], tmp_path)
    got = _weights(_supervised_run(12, [Injector(), Recorder()], tmp_path))
    assert _equal(want, got)


# ---------------------------------------------------------------- evaluate


def test_evaluate_on_minibatches_is_plain_top1_over_examples() -> None:
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))  # predicts the index of the largest coordinate
    x = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 5.0],
                      [4.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 1, 1, 2, 1])  # predictions 0, 1, 2, 0, 1: three right
    r = evaluate(model, [(x[:2], y[:2]), (x[2:], y[2:])])
    assert r.mean == 3 / 5 and r.episodes == 5 and r.unit == "examples"
    assert r.ci95 == pytest.approx(1.959963984540054 * math.sqrt(0.6 * 0.4 / 5), rel=1e-12)
    by_hand = [math.log(sum(math.exp(v) for v in row)) - row[t]
               for row, t in zip(x.tolist(), y.tolist())]
    assert r.loss == pytest.approx(sum(by_hand) / 5, rel=1e-12)
    assert str(r).endswith("(5 examples)")
    via_loss_fn = evaluate(model, [(x[:2], y[:2]), (x[2:], y[2:])], loss_fn=supervised_loss)
    assert via_loss_fn.mean == r.mean and via_loss_fn.loss == pytest.approx(r.loss, rel=1e-6)
    assert model.training  # restored
    with pytest.raises(ValueError, match="evaluate one kind at a time"):
        evaluate(model, [(x, y), EpisodeStream().batch(0)])


def test_tensorboard_gets_the_named_terms_and_skips_what_is_not_a_number(tmp_path: Path) -> None:
    from metakd.engine import JsonlLogger

    class FakeWriter:
        def __init__(self) -> None:
            self.scalars: dict[str, float] = {}

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            self.scalars[tag] = value

        def close(self) -> None:
            pass

    logger = JsonlLogger(tmp_path, tensorboard=False)
    logger._tb = FakeWriter()
    logger.write({"kind": "train", "step": 3, "loss": 0.7, "loss/ce": 0.5, "loss/kd": 0.2,
                  "accuracy": math.nan, "lr": 0.1})
    logger.write({"kind": "val", "step": 3, "accuracy": 0.5, "unit": "examples", "loss": None})
    assert logger._tb.scalars == {"train/loss": 0.7, "train/loss/ce": 0.5, "train/loss/kd": 0.2,
                                  "train/lr": 0.1, "val/accuracy": 0.5}
    logger.close()


# ---------------------------------------------------------------- progress bar


def _capture_bars(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], io.StringIO]:
    progress = importlib.import_module("metakd.engine.progress")
    out = io.StringIO()
    bars: list[Any] = []
    real = progress._tqdm

    def capture(**kwargs: Any) -> Any:
        bar = real(**{**kwargs, "file": out, "mininterval": 0})
        bars.append(bar)
        return bar

    monkeypatch.setattr(progress, "_tqdm", capture)
    return bars, out


def test_a_time_budgeted_bar_counts_seconds_not_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    bars, out = _capture_bars(monkeypatch)
    model = nn.Linear(4, 3)
    r = fit(model, MinibatchStream(), torch.optim.SGD(model.parameters(), lr=0.1), 60_000,
            max_seconds=1.0, log_every=1, progress=True)
    assert r.stopped_early
    (bar,) = bars
    assert bar.total == 1.0 and bar.unit == "s"
    assert bar.n == 1.0  # filled to the budget
    text = out.getvalue()
    assert f"step={r.step}" in text and "examples/s=" in text and "ce=" in text
    assert "60000" not in text and "1/1 s" in text  # seconds out of the budget, no step ETA

    bars.clear()
    fit(model, MinibatchStream(), torch.optim.SGD(model.parameters(), lr=0.1), 5,
        log_every=1, progress=True)
    assert bars[0].total == 5 and bars[0].n == 5


# ---------------------------------------------------------------- distributed slices


class XY(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor


def test_rank_slices_of_a_minibatch_average_to_the_whole_gradient() -> None:
    model = nn.Linear(4, 3)
    x, y = MinibatchStream(batch_size=6).batch(0)
    whole = torch.autograd.grad(supervised_loss(model, (x, y))[0], list(model.parameters()))
    parts = [torch.autograd.grad(supervised_loss(model, rank_slice((x, y), r, 3))[0],
                                 list(model.parameters())) for r in range(3)]
    for i, g in enumerate(whole):
        torch.testing.assert_close(sum(p[i] for p in parts) / 3, g)
    s = rank_slice(XY(x, y), 1, 2)
    assert isinstance(s, XY) and torch.equal(s.x, x[3:]) and torch.equal(s.y, y[3:])
    assert rank_slice([x, y], 0, 1)[0] is x
    with pytest.raises(ValueError, match="6 examples cannot be split evenly over 4"):
        rank_slice((x, y), 0, 4)


def _worker(rank: int, world_size: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from metakd.engine import shutdown_distributed

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    model = _supervised_run(3, [])
    if rank == 0:
        torch.save(model.state_dict(), out)
    shutdown_distributed()


def test_two_gloo_processes_train_minibatches_like_one(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    out = tmp_path / "weights.pt"
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(out)), nprocs=2)
    got = torch.load(out, weights_only=True)
    want = _supervised_run(3, []).state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- docstring examples


@pytest.mark.parametrize("name", ["callbacks", "checkpoint", "cpu", "distributed", "evaluation",
                                  "logger", "objective", "progress", "schedule", "stats",
                                  "trainer"])
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(f"metakd.engine.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_every_public_name_has_an_example() -> None:
    import metakd.engine as engine

    missing = [n for n in engine.__all__
               if ">>>" not in (getattr(engine, n).__doc__ or "")]
    assert missing == []
