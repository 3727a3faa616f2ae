#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment at .venv/ and install metakd into it.
#
#   scripts/bootstrap.sh core   torch + torchvision + metakd (editable): enough for the demo
#   scripts/bootstrap.sh dev    core + test/lint tools + the learn2learn extra (built from source)
#
# Re-running on a ready machine only compares a stamp and exits in well under a second.
# Override the PyTorch pin with TORCH_SPEC (for example TORCH_SPEC="torch torchvision").
set -euo pipefail
level=${1:-core}
case "$level" in core|dev) ;; *) echo "usage: $0 core|dev" >&2; exit 2;; esac

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv="$root/.venv"
py=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

# The stamp changes whenever the files that define the environment change.
digest=$(cat setup.cfg pyproject.toml scripts/bootstrap.sh scripts/install_learn2learn.sh \
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
    log "installing $torch_spec"
    # shellcheck disable=SC2086
    quiet "${pip[@]}" install $torch_spec
    echo "$torch_spec" > "$venv/.metakd-torch"
fi

if [ "$level" = core ]; then
    log "installing metakd (editable)"
    quiet "${pip[@]}" install -e ".[plot]"
else
    log "installing metakd (editable) with the dev tools"
    quiet "${pip[@]}" install -e ".[plot,dev]"
    if ! "$venv/bin/python" -c "import learn2learn" >/dev/null 2>&1; then
        bash scripts/install_learn2learn.sh "$venv/bin/python"
    fi
fi
rm -f "$venv"/.metakd-"$level"-*
touch "$stamp"
log "ready: $venv ($level)"
