#!/usr/bin/env bash
# Install everything the harness needs on a fresh Debian 12 machine (idempotent).
#
#   ./scripts/setup.sh               as root: system packages through apt (extra suites
#                                    pinned so they never upgrade the base), then the venv
#   ./scripts/setup.sh --user NAME   as root: the same, and lets NAME run the harness:
#                                    membership of kvm, subordinate uids/gids (image builds)
#   ./scripts/setup.sh               as an ordinary user: only the venv; then lists the
#                                    root-only steps still missing (exit status 1 if any)
#
# The venv goes to $VIOMMU_VENV, default .venv in the checkout. In a checkout the user
# cannot write, the venv gets the dependencies and a .pth file naming the checkout
# (nothing is written into the checkout); run the harness as `$VIOMMU_VENV/bin/python -m harness`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
stamp_dir="${XDG_CACHE_HOME:-$HOME/.cache}/viommu-harness"
venv="${VIOMMU_VENV:-$here/.venv}"
log() { printf '[setup] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

users=()
while (($#)); do
    case "$1" in
        --user) [[ $# -ge 2 ]] || die "--user needs a user name"; users+=("$2"); shift 2 ;;
        --user=*) users+=("${1#--user=}"); shift ;;
        -h|--help) sed -n '2,13s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

# Base-suite packages (uidmap: newuidmap/newgidmap for image builds as an ordinary user).
APT_BASE=(
    build-essential flex bison bc libelf-dev libssl-dev dwarves rsync cpio xz-utils zstd ccache
    kmod gcc-aarch64-linux-gnu libc6-dev-arm64-cross
    mmdebstrap uidmap e2fsprogs debian-archive-keyring qemu-efi-aarch64
    python3-venv git acpica-tools busybox
)
# QEMU 10.0.x, taken from bookworm-backports together with its dependencies.
APT_BACKPORTS=(qemu-system-x86 qemu-system-arm qemu-utils)
# Linux 7.3 source (a tarball under /usr/src) from trixie-backports.
APT_TRIXIE_BACKPORTS=(linux-source-7.3)
SUBID_COUNT=65536

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
    # ($(cat) drops the final newline, so compare without it.)
    if [[ "$(cat "$src" 2>/dev/null)" != "${want_src%$'\n'}" ]]; then printf '%s' "$want_src" >"$src"; changed=1; fi
    if [[ "$(cat "$pin" 2>/dev/null)" != "${want_pin%$'\n'}" ]]; then printf '%s' "$want_pin" >"$pin"; changed=1; fi
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
    install_fleet_tools
}

# The fleet tests (tests/vm/test_fleet.py) run one sshd per simulated host in network
# namespaces they create; the system's own sshd must never start from this install:
# Debian's ssh units and init script honour /etc/ssh/sshd_not_to_be_run.
APT_FLEET=(openssh-server iproute2)
install_fleet_tools() {
    [[ -z "$(missing_packages "${APT_FLEET[@]}")" ]] && return 0
    if ! dpkg-query -W -f='${Status}' openssh-server 2>/dev/null | grep -q 'ok installed'; then
        mkdir -p /etc/ssh && touch /etc/ssh/sshd_not_to_be_run
    fi
    apt_install "" "${APT_FLEET[@]}"
}

# Static libcap/libuuid for the kernel's iommu and VFIO selftests (harness kselftest),
# native and arm64 (Debian multiarch: the arm64 cross compiler finds them there).
KSELFTEST_LIBS=(libcap-dev uuid-dev libcap-dev:arm64 uuid-dev:arm64)
install_kselftest_libs() {
    [[ -z "$(missing_packages "${KSELFTEST_LIBS[@]}")" ]] && return 0
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        log "dpkg --add-architecture arm64 (static libraries for the arm64 selftests)"
        dpkg --add-architecture arm64
        apt-get update -q >/dev/null
    fi
    apt_install "" "${KSELFTEST_LIBS[@]}"
}

# Whether /etc/subuid-format file $1 gives user $2 (uid $3) a range.
has_subids() {
    awk -F: -v u="$2" -v id="$3" '($1 == u || $1 == id) && $3 > 0 { found = 1 } END { exit !found }' \
        "$1" 2>/dev/null
}

# The first id after every range in /etc/subuid and /etc/subgid (at least 100000).
next_subid() {
    cat /etc/subuid /etc/subgid 2>/dev/null |
        awk -F: 'BEGIN { next_id = 100000 } $3 > 0 && $2 + $3 > next_id { next_id = $2 + $3 } END { print next_id }'
}

prepare_user() {
    local name="$1" uid first
    uid=$(id -u "$name" 2>/dev/null) || die "no user $name (create it first, e.g. useradd --create-home $name)"
    getent group kvm >/dev/null || { log "groupadd --system kvm"; groupadd --system kvm; }
    if ! id -nG "$name" | tr ' ' '\n' | grep -qx kvm; then
        log "usermod --append --groups kvm $name"
        usermod --append --groups kvm "$name"
    fi
    if ! has_subids /etc/subuid "$name" "$uid" || ! has_subids /etc/subgid "$name" "$uid"; then
        first=$(next_subid)
        local range="$first-$((first + SUBID_COUNT - 1))"
        touch /etc/subuid /etc/subgid
        if ! has_subids /etc/subuid "$name" "$uid"; then
            log "usermod --add-subuids $range $name"; usermod --add-subuids "$range" "$name"
        fi
        if ! has_subids /etc/subgid "$name" "$uid"; then
            log "usermod --add-subgids $range $name"; usermod --add-subgids "$range" "$name"
        fi
    fi
    if [[ -e /dev/kvm && "$(stat -c %G /dev/kvm)" != kvm ]]; then
        log "note: /dev/kvm belongs to group $(stat -c %G /dev/kvm), not kvm (no udev rule here):" \
            "$name gets KVM once it is root:kvm 0660"
    fi
}

install_venv() {
    local want have mode=editable site
    [[ -w "$here" ]] || mode=dependencies
    want="$(sha256sum "$here/pyproject.toml" | cut -d' ' -f1)"
    [[ $mode == editable ]] || want+=" $mode $here"
    have="$(cat "$venv/.installed" 2>/dev/null || true)"
    [[ "$want" == "$have" ]] && return 0
    log "python venv in $venv"
    [[ -x "$venv/bin/python" ]] || python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    if [[ $mode == editable ]]; then
        "$venv/bin/pip" install -q -e "$here[dev,qualify]"
    else
        # A checkout this user cannot write (e.g. root's): the dependencies, and the
        # checkout on sys.path through a .pth file; nothing is built inside the checkout.
        # shellcheck disable=SC2046
        "$venv/bin/pip" install -q $("$venv/bin/python" - "$here/pyproject.toml" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = project["optional-dependencies"]
print(" ".join(project["dependencies"] + extras["dev"] + extras["qualify"]))
EOF
)
        site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        echo "$here" >"$site/viommu-harness-checkout.pth"
    fi
    echo "$want" >"$venv/.installed"
}

# As an ordinary user: what only root can do and is not done yet (one line each).
missing_root_steps() {
    local missing name uid
    name=$(id -un); uid=$(id -u)
    missing=$(missing_packages "${APT_BASE[@]}" "${APT_BACKPORTS[@]}" "${APT_TRIXIE_BACKPORTS[@]}" \
        "${APT_FLEET[@]}")
    [[ -z "$missing" ]] || echo "packages not installed: $(echo $missing) (run ./scripts/setup.sh as root)"
    if ! has_subids /etc/subuid "$name" "$uid" || ! has_subids /etc/subgid "$name" "$uid"; then
        echo "no subordinate ids for $name in /etc/subuid or /etc/subgid (image builds):" \
            "run ./scripts/setup.sh --user $name as root"
    fi
    if ! getent group kvm | cut -d: -f4 | tr ',' '\n' | grep -qx "$name"; then
        echo "$name is not in group kvm (guests run under TCG, slowly):" \
            "run ./scripts/setup.sh --user $name as root, then log in again"
    fi
}

if [[ $EUID -eq 0 ]]; then
    configure_apt
    install_apt
    install_kselftest_libs
    for name in "${users[@]}"; do prepare_user "$name"; done
    install_venv
    log "ready"
    exit 0
fi

((${#users[@]} == 0)) || die "--user needs root (it changes /etc/group, /etc/subuid, /etc/subgid)"
install_venv
steps=$(missing_root_steps)
if [[ -n "$steps" ]]; then
    log "venv ready; root-only steps missing:"
    while IFS= read -r line; do log "  - $line"; done <<<"$steps"
    exit 1
fi
log "ready (as $(id -un))"
