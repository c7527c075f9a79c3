# Sourced by ./sam3d-bot and scripts/test. Installs what the bot needs on Debian: Mesa for
# drawing previews on the CPU (Debian packages), then the project into .venv (PyPI), once
# per change of pyproject.toml. Needs Debian's python3 (3.11+).

# Mesa through EGL: what f3d draws with when there is no GPU.
MESA_PACKAGES="libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0"
# The tests run the ledger on a real PostgreSQL server and the 3D viewer in a real browser.
TEST_PACKAGES="postgresql chromium"

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_debian_packages() {
    local missing=() package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null; then
        echo "note: install ${missing[*]} (Debian package names) or your system's equivalent" >&2
        return 0
    fi
    echo "installing ${missing[*]} (Debian packages)..." >&2
    # Waits up to two minutes for another apt (an unattended upgrade) instead of failing.
    as_root apt-get -o DPkg::Lock::Timeout=120 update -qq >&2 || true
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install \
        -y -qq --no-install-recommends "${missing[@]}" >&2
}

ensure_venv() {
    local extra="$1" root stamp wanted
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if ! python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        ensure_debian_packages python3-venv
    fi
    # A .venv made by another Python (an upgrade, a copied checkout) is made again.
    if ! "$root/.venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        2>/dev/null; then
        [ -e "$root/.venv" ] && echo "making .venv again (it was made by another Python)" >&2
        python3 -m venv --clear "$root/.venv"
    fi
    stamp="$root/.venv/.installed-$extra"
    wanted="$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
        "$root/.venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
        "$root/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root$extra" >&2
        echo "$wanted" > "$stamp"
    fi
}

# The 3D viewer's JavaScript, from the npm registry (pinned in scripts/fetch-viewer-js).
# `ensure_viewer_js install` installs npm first if needed (the tests); running the bot only
# uses an npm that is there: the viewer is for bots with a PUBLIC_URL, and the image has it.
ensure_viewer_js() {
    local root note
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    note="$root/.venv/.viewer-js-note"
    if ! command -v npm >/dev/null && [ "${1:-}" = install ]; then
        ensure_debian_packages npm
    fi
    # Said once, then not on every call; tried again a day after a failed fetch.
    if [ "${1:-}" != install ] && [ -n "$(find "$note" -mmin -1440 2>/dev/null)" ]; then
        return 0
    fi
    if ! command -v npm >/dev/null; then
        echo "note: without npm the 3D viewer page has no JavaScript (said once)" >&2
        touch "$note"
        return 0
    fi
    # The bot runs without it (the page then shows the picture and downloads only).
    if "$root/scripts/fetch-viewer-js" >&2; then
        rm -f "$note"
    else
        echo "note: could not fetch the viewer JavaScript; trying again tomorrow" >&2
        touch "$note"
    fi
}
