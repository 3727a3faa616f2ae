"""The CUDA settings of a run (TF32, cuDNN autotuning, pinned copies) and the log's rates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metakd import cli
from metakd.engine.cpu import keep_freed_memory
from metakd.engine.cuda import CudaSettings, apply_cuda_settings
from metakd.engine.objective import batch_images


@pytest.fixture
def restore_backends():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark)
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
     torch.backends.cudnn.benchmark) = saved


def test_settings_apply_on_cuda_only(restore_backends: None) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    assert apply_cuda_settings(CudaSettings(tf32=True, cudnn_benchmark=True), "cpu") is False
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.benchmark
    pin = apply_cuda_settings(CudaSettings(tf32=True, cudnn_benchmark=True, pin_memory=True),
                              "cuda:0")
    assert pin and torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert torch.backends.cudnn.benchmark
    apply_cuda_settings(CudaSettings(), "cuda")  # None leaves everything as it is
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.benchmark


def test_a_run_records_its_settings_and_logs_image_rates(tmp_path: Path) -> None:
    out = tmp_path / "r"
    assert cli.main(["train", "maml", "--steps", "2", "--meta-batch-size", "2", "--test-tasks",
                     "2", "--out-dir", str(out), "--no-progress", "--compile", "off", "--tf32",
                     "--no-cudnn-benchmark"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["runtime"] == {"tf32": True, "cudnn_benchmark": False, "pin_memory": None,
                              "keep_freed_memory": keep_freed_memory()}
    rec = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][-1]
    # 2 tasks of 5-way 1-shot with 1 training query per class: 20 images per step
    assert rec["images_per_s"] == pytest.approx(10 * rec["tasks_per_s"])


def test_batch_images_counts_support_and_query() -> None:
    from metakd.data import TaskBatch

    b = TaskBatch(torch.zeros(3, 10, 1, 4, 4), torch.zeros(3, 10, dtype=torch.long),
                  torch.zeros(3, 25, 1, 4, 4), torch.zeros(3, 25, dtype=torch.long))
    assert batch_images(b) == 3 * 35
    assert batch_images((torch.zeros(8, 3), torch.zeros(8))) == 8


def test_validation_records_its_time() -> None:
    from metakd.engine import fit

    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    model = torch.nn.Linear(3, 2)
    r = fit(model, iter(lambda: (x, y), None), torch.optim.SGD(model.parameters(), lr=0.1), 4,
            val_data=[(x, y)], val_every=2, progress=False)
    vals = [h for h in r.history if h["kind"] == "val"]
    assert len(vals) == 2 and all(h["eval_s"] >= 0 for h in vals)
    train = [h for h in r.history if h["kind"] == "train"]
    # a minibatch of 16 examples is 16 images: the two rates are the same number
    assert train[-1]["examples_per_s"] > 0
    assert train[-1]["images_per_s"] == pytest.approx(train[-1]["examples_per_s"])
