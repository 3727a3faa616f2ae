#!/usr/bin/env bash
# Install headless Chromium and ChromeDriver from Debian's packages, for the browser test of the
# documentation site (tests/test_docs_browser.py, run by `make test-slow`).
#
# Idempotent: exits at once when /usr/bin/chromium and /usr/bin/chromedriver already exist.
# Needs root (or passwordless sudo) and apt-get; otherwise it fails with a message saying so.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver

if [[ -x "$CHROMIUM" && -x "$CHROMEDRIVER" ]]; then
    exit 0
fi

die() {
    echo "install_chromium.sh: $*" >&2
    echo "install_chromium.sh: install Debian's 'chromium' and 'chromium-driver' packages by hand" \
         "(they provide $CHROMIUM and $CHROMEDRIVER), then rerun." >&2
    exit 1
}

command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script supports Debian/Ubuntu only."

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        die "must run as root (or with passwordless sudo) to install packages with apt-get."
    fi
fi

echo "install_chromium.sh: installing chromium and chromium-driver with apt-get ..."
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq || die "'apt-get update' failed (no network or no package mirror?)."
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver \
    || die "'apt-get install chromium chromium-driver' failed."

[[ -x "$CHROMIUM" ]] || die "$CHROMIUM is still missing after the install."
[[ -x "$CHROMEDRIVER" ]] || die "$CHROMEDRIVER is still missing after the install."
echo "install_chromium.sh: $("$CHROMIUM" --version 2>/dev/null || echo chromium), $("$CHROMEDRIVER" --version 2>/dev/null | head -n1)"
