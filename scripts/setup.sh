#!/usr/bin/env bash
# Install everything the harness needs on a fresh Debian 12 machine (idempotent).
#   system packages through apt (extra suites pinned so they never upgrade the base),
#   Python packages into .venv in the checkout.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
stamp_dir="${XDG_CACHE_HOME:-$HOME/.cache}/viommu-harness"
log() { printf '[setup] %s\n' "$*" >&2; }

need_root() {
    if [[ $EUID -ne 0 ]]; then
        if command -v sudo >/dev/null; then exec sudo -E "$0" "$@"; fi
        log "must run as root (apt-get install)"; exit 1
    fi
}

# Base-suite packages.
APT_BASE=(
    build-essential flex bison bc libelf-dev libssl-dev dwarves rsync cpio xz-utils zstd
    kmod gcc-aarch64-linux-gnu libc6-dev-arm64-cross
    mmdebstrap e2fsprogs debian-archive-keyring qemu-efi-aarch64
    python3-venv git acpica-tools busybox
)
# QEMU 10.0.x, taken from bookworm-backports together with its dependencies.
APT_BACKPORTS=(qemu-system-x86 qemu-system-arm qemu-utils)
# Linux 7.3 source (a tarball under /usr/src) from trixie-backports.
APT_TRIXIE_BACKPORTS=(linux-source-7.3)

configure_apt() {
    local src=/etc/apt/sources.list.d/viommu-harness.sources
    local pin=/etc/apt/preferences.d/viommu-harness.pref
    local want_src want_pin
    want_src='Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports trixie trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
'
    # Never take anything from the newer suites unless asked for by name/suite.
    want_pin='Package: *
Pin: release n=bookworm-backports
Pin-Priority: 100

Package: *
Pin: release n=trixie
Pin-Priority: 50

Package: *
Pin: release n=trixie-backports
Pin-Priority: 50
'
    local changed=0
    if [[ "$(cat "$src" 2>/dev/null)" != "$want_src" ]]; then printf '%s' "$want_src" >"$src"; changed=1; fi
    if [[ "$(cat "$pin" 2>/dev/null)" != "$want_pin" ]]; then printf '%s' "$want_pin" >"$pin"; changed=1; fi
    if [[ $changed == 1 || ! -f "$stamp_dir/apt-updated" ]]; then
        log "apt-get update"
        apt-get update -q >/dev/null
        mkdir -p "$stamp_dir"; touch "$stamp_dir/apt-updated"
    fi
}

missing_packages() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || echo "$p"
    done
}

apt_install() {
    local missing
    missing=$(missing_packages "${@:2}")
    [[ -z "$missing" ]] && return 0
    log "apt-get install ${1:+(-t $1) }$(echo $missing)"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        ${1:+-t "$1"} $missing >/dev/null
}

install_apt() {
    apt_install "" "${APT_BASE[@]}"
    apt_install bookworm-backports "${APT_BACKPORTS[@]}"
    apt_install trixie-backports "${APT_TRIXIE_BACKPORTS[@]}"
}

install_venv() {
    local venv="$here/.venv" want have
    want="$(sha256sum "$here/pyproject.toml" | cut -d' ' -f1)"
    have="$(cat "$venv/.installed" 2>/dev/null || true)"
    if [[ "$want" != "$have" ]]; then
        log "python venv in $venv"
        [[ -x "$venv/bin/python" ]] || python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
        "$venv/bin/pip" install -q --upgrade pip
        "$venv/bin/pip" install -q -e "$here[dev,qualify]"
        echo "$want" >"$venv/.installed"
    fi
}

need_root "$@"
configure_apt
install_apt
install_venv
log "ready"
