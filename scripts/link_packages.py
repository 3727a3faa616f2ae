"""Hard-link the heavy PyTorch distributions of this interpreter's environment into another.

Run with the source environment's Python: ``python link_packages.py TARGET_SITE_PACKAGES``.
It links every file of torch, torchvision, triton and the ``nvidia-*`` libraries (their
``.dist-info`` included, so pip in the target sees them installed), skipping the console
scripts outside site-packages. Hard links cost no disk space; the files are never written to.
If any link fails (another file system, for instance) it removes what it linked and exits 1,
and the caller installs the packages with pip instead.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

HEAVY = ("torch", "torchvision", "triton")


def heavy(name: str) -> bool:
    name = name.lower().replace("_", "-")
    return name in HEAVY or name.startswith("nvidia-")


def main(target: str) -> int:
    dest_root = Path(target)
    linked: list[Path] = []
    try:
        for dist in importlib.metadata.distributions():
            if not heavy(dist.metadata["Name"]):
                continue
            for rel in dist.files or ():
                if str(rel).startswith(".."):
                    continue  # console scripts in bin/, whose shebang names the other venv
                src = Path(dist.locate_file(rel))
                dst = dest_root / rel
                if not src.is_file() or dst.exists():
                    continue
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(src, dst)
                linked.append(dst)
    except OSError as err:
        for path in linked:
            path.unlink(missing_ok=True)
        print(f"[bootstrap] could not hard-link the PyTorch packages ({err}); pip installs them",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
