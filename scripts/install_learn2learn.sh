#!/usr/bin/env bash
# Build and install learn2learn 0.2.0 on Python >= 3.11.
#
# learn2learn 0.2.0 is published only as an sdist whose Cython-generated C files were made with
# Cython 0.29 and include a CPython header that Python 3.11 removed, so `pip install learn2learn`
# fails to compile. The recipe: fetch the sdist (checked against its sha256), regenerate the three
# C files with a current Cython, then install from the patched source tree. Its dependencies
# (gym, qpth and through it numpy<2, gsutil, scipy) come from PyPI as usual.
#
#   scripts/install_learn2learn.sh [PYTHON]     (default: .venv/bin/python)
set -euo pipefail
py=${1:-.venv/bin/python}
version=0.2.0
sha256=69f1d7cb0d0a6be7a2c6ad8e83e2ebbe70fb05e51d61e45e63078b40c75ea419
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; return "${PIPESTATUS[0]}"; }
pip=("$py" -m pip --quiet --disable-pip-version-check)

echo "[learn2learn] fetching the $version sdist" >&2
quiet "${pip[@]}" download --no-deps --no-binary :all: "learn2learn==$version" -d "$work"
sdist="$work/learn2learn-$version.tar.gz"
echo "$sha256  $sdist" | sha256sum --check --quiet -
tar -xzf "$sdist" -C "$work"
src="$work/learn2learn-$version"

echo "[learn2learn] regenerating the C sources with a current Cython" >&2
quiet "${pip[@]}" install "cython>=3.0"
"$py" -m cython -3 "$src"/learn2learn/data/{meta_dataset,task_dataset,transforms}.pyx

echo "[learn2learn] building and installing (about a minute)" >&2
quiet "${pip[@]}" install "$src"
"$py" -c "import learn2learn; assert learn2learn.__version__ == '$version'"
echo "[learn2learn] installed $version" >&2
