#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install metakd into it.
#
#   scripts/bootstrap.sh core      .venv/: torch + torchvision + metakd (editable): the demo
#   scripts/bootstrap.sh dev       .venv/: core + test/lint tools + the learn2learn extra (built
#                                  from source; its qpth dependency pins numpy<2)
#   scripts/bootstrap.sh dev-np2   .venv-np2/: torch + torchvision + metakd with the test tools,
#                                  numpy 2 and no learn2learn: what `pip install metakd` gives a
#                                  user, so `make test` runs the suite there too
#
# Re-running on a ready machine only compares a stamp and exits in well under a second.
# Override the PyTorch pin with TORCH_SPEC (for example TORCH_SPEC="torch torchvision").
set -euo pipefail
level=${1:-core}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
case "$level" in
    core|dev) venv="$root/.venv" ;;
    dev-np2) venv="$root/.venv-np2" ;;
    *) echo "usage: $0 core|dev|dev-np2" >&2; exit 2 ;;
esac
py=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

# The stamp changes whenever the files that define the environment change.
digest=$(cat setup.cfg pyproject.toml scripts/bootstrap.sh scripts/install_learn2learn.sh \
         scripts/link_packages.py \
         | { echo "$torch_spec"; cat; } | sha256sum | cut -c1-16)
stamp="$venv/.metakd-$level-$digest"
if [ -f "$stamp" ]; then
    exit 0
fi

log() { printf '[bootstrap] %s\n' "$*" >&2; }
if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv with $($py --version)"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check)
# pip prints a warning for every missing local index folder on some machines: keep them out.
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; return "${PIPESTATUS[0]}"; }

if [ ! -f "$venv/.metakd-torch" ] || [ "$(cat "$venv/.metakd-torch")" != "$torch_spec" ]; then
    # torch's CUDA build is about 5.5 GB: a second copy of it filled a CI machine's disk. When
    # .venv already holds the same build, .venv-np2 takes hard links to its files (no space),
    # and pip below finds torch installed and adds only its small pure-Python requirements.
    if [ "$level" = dev-np2 ] && [ -f "$root/.venv/.metakd-torch" ] \
            && [ "$(cat "$root/.venv/.metakd-torch")" = "$torch_spec" ]; then
        site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['platlib'])")
        if "$root/.venv/bin/python" "$root/scripts/link_packages.py" "$site"; then
            log "linked torch, torchvision, triton and the nvidia libraries from .venv"
        fi
    fi
    log "installing $torch_spec"
    # shellcheck disable=SC2086
    quiet "${pip[@]}" install $torch_spec
    echo "$torch_spec" > "$venv/.metakd-torch"
fi

case "$level" in
core)
    log "installing metakd (editable)"
    quiet "${pip[@]}" install -e ".[plot]"
    ;;
dev)
    log "installing metakd (editable) with the dev tools"
    quiet "${pip[@]}" install -e ".[plot,dev]"
    if ! "$venv/bin/python" -c "import learn2learn" >/dev/null 2>&1; then
        bash scripts/install_learn2learn.sh "$venv/bin/python"
    fi
    ;;
dev-np2)
    log "installing metakd (editable) with the dev tools and numpy 2, without learn2learn"
    quiet "${pip[@]}" install -e ".[plot,dev]" "numpy>=2"
    # Fail here, not in the tests, if something pulled numpy 1 or learn2learn in.
    "$venv/bin/python" - <<'PY'
import importlib.util, sys
import numpy
if int(numpy.__version__.split(".")[0]) < 2:
    sys.exit(f"[bootstrap] .venv-np2 has numpy {numpy.__version__}, expected 2.x")
if importlib.util.find_spec("learn2learn") is not None:
    sys.exit("[bootstrap] .venv-np2 must not have learn2learn (it pins numpy<2)")
PY
    ;;
esac
rm -f "$venv"/.metakd-"$level"-*
touch "$stamp"
log "ready: $venv ($level)"
