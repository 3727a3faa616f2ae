"""The package surface: light import, public names, version."""

from __future__ import annotations

import subprocess
import sys

import metakd


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True).stdout


def test_import_is_light() -> None:
    out = _run(
        "import sys, time\n"
        "import torch\n"
        "t = time.perf_counter()\n"
        "import metakd, metakd.data\n"
        "dt = time.perf_counter() - t\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('learn2learn', 'higher', 'gym', 'torchvision', 'h5py', 'matplotlib'))\n"
        "print(heavy, dt)\n"
    )
    heavy, dt = out.rsplit(" ", 1)
    assert heavy == "[]", f"import metakd pulled in {heavy}"
    assert float(dt) < 1.0, f"import metakd took {dt} s beyond torch"


def test_public_names_exist() -> None:
    for name in metakd.__all__:
        assert hasattr(metakd, name), name
    assert metakd.__version__.count(".") == 2
