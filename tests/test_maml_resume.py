"""``MAMLWrapper`` at its defaults, as users run it: same seed, same weights; a run killed with
SIGKILL and resumed ends bit-identical to one that never stopped (CPU). Eager (as the suite
runs the default, ``METAKD_COMPILE=0``) and, in the slow target, compiled (the default's
``compile="auto"`` as users get it, on 2 threads: 2 workers for per-task units)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from metakd.engine import load_checkpoint

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from metakd.data import Omniglot, few_shot
    from metakd.engine import Callback, fit
    from metakd.meta import MAMLWrapper
    from metakd.nn import create

    out, kill_at, tasks, queries, threads = sys.argv[1], *map(int, sys.argv[2:6])

    class KillAt(Callback):
        def on_step_end(self, step, batch, loss, metrics, learner):
            if step == kill_at:  # a real SIGKILL: no handler, no cleanup
                os.kill(os.getpid(), signal.SIGKILL)

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    stream = few_shot(Omniglot(split="train"), 5, 1, queries, meta_batch_size=tasks, seed=0,
                      image_size=14, progress=False)
    maml = MAMLWrapper(create("maml_omniglot", num_classes=5, hidden=8), inner_lr=0.4)
    opt = torch.optim.Adam(maml.parameters(), lr=1e-3)
    fit(maml, stream, opt, 10, out_dir=out, checkpoint_every=3, progress=False,
        callbacks=[KillAt()], tensorboard=False)
    from metakd.meta.accel import compiled
    print("compiled:", compiled(maml))
    """
)


def _run(script: Path, out: Path, kill_at: int, shape: tuple[int, int], compiled: bool) -> int:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "METAKD_COMPILE": "1" if compiled else "0"}
    threads = 2 if compiled else 1
    proc = subprocess.run([sys.executable, str(script), str(out), str(kill_at),
                           *(str(v) for v in shape), str(threads)], env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(proc.stderr[-3000:])
    if proc.returncode == 0:  # the run took the path it was meant to test
        assert f"compiled: {compiled}" in proc.stdout, proc.stdout[-2000:]
    return proc.returncode


def _weights(out: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["step"] == 10
    return ckpt["model"]


def _default_path(tasks: int, queries: int) -> str:
    """The path the default ``backend="auto"`` takes for the script's meta-batches."""
    from metakd.data import Omniglot, few_shot
    from metakd.meta import MAMLWrapper
    from metakd.nn import create

    stream = few_shot(Omniglot(split="train"), 5, 1, queries, meta_batch_size=tasks, seed=0,
                      image_size=14, progress=False)
    maml = MAMLWrapper(create("maml_omniglot", num_classes=5, hidden=8), inner_lr=0.4)
    return maml._backend.pick(next(iter(stream))).name


@pytest.mark.parametrize("compiled", [
    False, pytest.param(True, marks=pytest.mark.slow, id="compiled")])
@pytest.mark.parametrize(("tasks", "queries", "path"), [(4, 2, "func"), (8, 1, "vmap")])
def test_same_seed_same_weights_and_sigkill_resume_is_bit_identical(
        tmp_path: Path, tasks: int, queries: int, path: str, compiled: bool) -> None:
    """Both branches of the default path: func (PMAML- and MTL-sized meta-batches) and vmap
    (MAML's many small tasks); eager, and compiled as the default compiles."""
    assert _default_path(tasks, queries) == path
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    shape = (tasks, queries)
    assert _run(script, a, -1, shape, compiled) == 0
    assert _run(script, c, -1, shape, compiled) == 0
    assert _run(script, b, 7, shape, compiled) == -signal.SIGKILL  # killed after step 7
    assert load_checkpoint(b / "last.pt")["step"] == 6  # the last checkpoint before the kill
    assert _run(script, b, -1, shape, compiled) == 0  # resumes at step 6
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert wa.keys() == wb.keys() == wc.keys()
    for k in wa:
        assert torch.equal(wa[k], wc[k]), f"same seed, different {k}"
        assert torch.equal(wa[k], wb[k]), f"resumed run differs in {k}"
    # and training moved the weights away from the seed's initialisation
    from metakd.meta import MAMLWrapper
    from metakd.nn import create

    torch.manual_seed(0)
    init = MAMLWrapper(create("maml_omniglot", num_classes=5, hidden=8), inner_lr=0.4)
    moved = [k for k, v in init.state_dict().items() if not torch.equal(v, wa[k])]
    assert moved
