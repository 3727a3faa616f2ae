"""The CPU heap settings of a training process (:mod:`metakd.engine.cpu`)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from metakd.engine.cpu import KEEP_FREED_MEMORY_ENV, heap_left_to_environment, keep_freed_memory

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# A training step's pattern: a 64 MiB map allocated, written and freed, again and again. The
# minor page faults of the later rounds are those of memory handed back to the OS in between.
_STEPS = """
import json, resource, sys, torch
from metakd.engine.cpu import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def step():
    torch.ones(16 * 2**20).sum()  # 64 MiB, every page written
step()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(json.dumps({"kept": kept,
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _run(script: str, *args: str, **env: str) -> dict[str, int]:
    environ = {k: v for k, v in os.environ.items()
               if k != KEEP_FREED_MEMORY_ENV and not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                         check=True, env={**environ, **env}).stdout
    return json.loads(out.splitlines()[-1])


def _faults(arm: str, **env: str) -> dict[str, int]:
    return _run(_STEPS, arm, **env)


def test_other_devices_are_left_alone() -> None:
    assert keep_freed_memory("cuda") is False and keep_freed_memory("mps") is False


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
def test_freed_memory_is_reused_without_page_faults() -> None:
    plain, kept = _faults("plain"), _faults("keep")
    assert kept["kept"] is True and keep_freed_memory() is True
    # glibc's default maps and unmaps the 64 MiB block every round: 16,384 pages each time;
    # kept, the heap's block is reused (a small allocation landing in it can make the heap
    # grow once more, at most one round's pages)
    assert plain["faults"] >= 5 * 16_000
    assert kept["faults"] <= 17_000


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
@pytest.mark.parametrize("env", [{KEEP_FREED_MEMORY_ENV: "0"}, {"MALLOC_TOP_PAD_": "0"}])
def test_the_environment_keeps_the_heap_as_glibc_sets_it(env: dict[str, str]) -> None:
    result = _faults("keep", **env)
    assert result["kept"] is False
    assert result["faults"] >= 5 * 16_000


def test_the_reasons_the_environment_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (KEEP_FREED_MEMORY_ENV, "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_",
                 "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    assert heap_left_to_environment() is None
    monkeypatch.setenv(KEEP_FREED_MEMORY_ENV, "1")
    assert heap_left_to_environment() is None
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.rtld.nns=2")
    assert heap_left_to_environment() is None
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.rtld.nns=2:glibc.malloc.trim_threshold=0")
    assert heap_left_to_environment() == "GLIBC_TUNABLES is set"
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    assert heap_left_to_environment() == "MALLOC_MMAP_MAX_ is set"
    monkeypatch.setenv(KEEP_FREED_MEMORY_ENV, "Off")
    assert heap_left_to_environment() == f"{KEEP_FREED_MEMORY_ENV}=off"


# MAMLWrapper's default at its first meta-batch, in a process of its own (the setting is the
# process's); eager (METAKD_COMPILE=0) to keep the test short: "auto" keeps the heap either way.
_MAML = """
import json, sys, torch
from metakd.data import TaskBatch
from metakd.engine import keeps_freed_memory
from metakd.meta import MAMLWrapper
compile = {"auto": "auto", "off": False}[sys.argv[1]]
maml = MAMLWrapper(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)),
                   inner_lr=0.1, compile=compile)
before = keeps_freed_memory()
y = torch.arange(3)
maml.meta_loss(TaskBatch(torch.randn(2, 3, 1, 4, 4), y.repeat(2, 1),
                         torch.randn(2, 3, 1, 4, 4), y.repeat(2, 1)), step=0)
print(json.dumps({"before": before, "after": keeps_freed_memory()}))
"""


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
def test_maml_default_keeps_freed_memory_from_its_first_meta_batch() -> None:
    assert _run(_MAML, "auto", METAKD_COMPILE="0") == {"before": False, "after": True}
    assert _run(_MAML, "off", METAKD_COMPILE="0") == {"before": False, "after": False}
    assert _run(_MAML, "auto", METAKD_COMPILE="0", **{KEEP_FREED_MEMORY_ENV: "0"}) == {
        "before": False, "after": False}
