#!/usr/bin/env bash
# Prepares a machine for `make`: the Debian packages the tests need and .venv/ from the
# pinned requirements. Cheap when nothing changed: packages are installed only when
# missing, and .venv/ is re-created only when the requirements (or the Python) change.
set -euo pipefail

cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
DEBIAN_PACKAGES=(socat chromium gcc-multilib)   # socat: RS-485 ptys; chromium: web app tests; gcc-multilib: the 32-bit build (make mcu)

log() { echo "setup: $*" >&2; }

install_debian_packages() {
    command -v dpkg-query >/dev/null || { log "not a Debian system: skipping ${DEBIAN_PACKAGES[*]}"; return; }
    local missing=() pkg
    for pkg in "${DEBIAN_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return

    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { log "need root (or sudo) to install: ${missing[*]}"; exit 1; }
        sudo=(sudo)
    fi
    log "installing Debian packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

requirements_hash() {
    { cat requirements*.txt; "$PYTHON" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1
}

create_venv() {
    local stamp="$VENV/.requirements.sha256" want
    want=$(requirements_hash)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return
    fi
    log "creating $VENV from requirements-dev.txt"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --disable-pip-version-check -q -r requirements-dev.txt
    echo "$want" >"$stamp"   # written last: an interrupted install is redone next time
}

install_debian_packages
create_venv
