# Sourced by ./sam3d-bot and scripts/test: makes .venv and installs the project into it once
# per change of pyproject.toml. Needs only Debian's python3 (3.11+) and PyPI.
ensure_venv() {
    local extra="$1" root stamp wanted
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if ! python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        if command -v apt-get >/dev/null; then
            echo "installing python3-venv (Debian package)..." >&2
            ${SUDO:-$( [ "$(id -u)" = 0 ] || echo sudo )} apt-get install -y -qq python3-venv >&2
        else
            echo "sam3d-bot needs Python 3.11+ with the venv module" >&2
            return 1
        fi
    fi
    [ -x "$root/.venv/bin/python" ] || python3 -m venv "$root/.venv"
    stamp="$root/.venv/.installed-$extra"
    wanted="$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
        "$root/.venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
        "$root/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root$extra" >&2
        echo "$wanted" > "$stamp"
    fi
}
