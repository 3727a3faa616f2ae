"""The CPU heap settings of a training process (:mod:`metakd.engine.cpu`)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from metakd.engine.cpu import keep_freed_memory

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


def _faults(arm: str) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", _STEPS, arm], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.splitlines()[-1])


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
