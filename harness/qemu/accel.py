"""Which accelerator a machine gets, and whether KVM really runs guests on this host.

``/dev/kvm`` opening is not enough: on some hosts (e.g. a software KVM without VMX)
guests die with "KVM internal error" or never print a byte.  ``accel=auto`` tries KVM
once, and the machine layer records the verdict here so later machines go straight to
the right accelerator.  A user who cannot open ``/dev/kvm`` is told why (permission, and
the group that would grant it) instead of silently getting TCG.
"""

from __future__ import annotations

import getpass
import grp
import json
import os
import platform
import pwd
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from harness.cachedir import cache_dir
from harness.errors import ConfigError
from harness.host import host_arch
from harness.qemu.argv import resolved_accel
from harness.qemu.description import Machine

#: the KVM device node (tests point this elsewhere)
KVM_DEVICE = Path("/dev/kvm")


class KvmAccessError(ConfigError):
    """``accel=kvm`` was asked for, but this user cannot open the KVM device."""


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator a launch starts with, and what the user should hear about it."""

    accel: str  # "kvm" or "tcg"
    #: one line saying why ``auto`` did not pick KVM (None when there is nothing to say)
    note: str | None = None
    #: ``auto`` picked KVM: a guest that does not come up under it falls back to TCG
    fallback: bool = False


def _cache_file() -> Path:
    return cache_dir("") / "kvm-verdict.json"


def _host_key(arch: str) -> str:
    """KVM usability depends on the host kernel and the guest arch."""
    return f"{platform.node()}|{platform.release()}|{arch}"


def _group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def kvm_access_problem(device: Path | None = None) -> str | None:
    """Why this user cannot open the KVM device read-write (one line), or None when it can."""
    device = device or KVM_DEVICE
    try:
        info = device.stat()
    except FileNotFoundError:
        return f"{device} does not exist (the host kernel has no KVM module loaded)"
    except OSError as exc:
        return f"cannot stat {device}: {exc.strerror}"
    if os.access(device, os.R_OK | os.W_OK):
        return None
    user = getpass.getuser()
    group = _group_name(info.st_gid)
    group_rw = info.st_mode & (stat.S_IRGRP | stat.S_IWGRP) == stat.S_IRGRP | stat.S_IWGRP
    mode = f"{stat.S_IMODE(info.st_mode):04o} {_owner(info.st_uid)}:{group or info.st_gid}"
    denied = f"{device} ({mode}): permission denied for user {user!r}"
    if group is None or not group_rw or info.st_gid == 0:
        return (
            f"{denied}; no group grants it (as root: chgrp kvm {device}; chmod 0660 {device};"
            f" usermod -aG kvm {user})"
        )
    members = _members(group)
    if user in members and info.st_gid not in os.getgroups():
        return f"{denied}; {user!r} is in group {group!r} but this session is not: log in again"
    return (
        f"{denied}; membership of group {group!r} grants it"
        f" (as root: usermod -aG {group} {user}, then log in again)"
    )


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _members(group: str) -> list[str]:
    try:
        return list(grp.getgrnam(group).gr_mem)
    except KeyError:
        return []


def kvm_available(arch: str) -> bool:
    """KVM accelerates only guests of the host's own arch, for a user who may open it."""
    return arch == host_arch() and kvm_access_problem() is None


def kvm_verdict(arch: str) -> bool | None:
    """True/False once known for this host, None when it must still be tried."""
    if not kvm_available(arch):
        return False
    entry = _verdict_entry(arch)
    return None if entry is None else bool(entry.get("usable"))


def _verdict_entry(arch: str) -> dict[str, object] | None:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return None
    entry = data.get(_host_key(arch)) if isinstance(data, dict) else None
    return entry if isinstance(entry, dict) else None


def record_kvm_verdict(arch: str, usable: bool, reason: str) -> None:
    """Remember the verdict (atomically replacing the cache file)."""
    path = _cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[_host_key(arch)] = {"usable": usable, "reason": reason, "when": time.time()}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def choose_accel(machine: Machine, host: str | None = None) -> AccelChoice:
    """The accelerator ``machine`` starts with; KvmAccessError/ConfigError for an impossible kvm.

    ``tcg`` is TCG.  ``kvm`` needs a guest of the host's arch and a ``/dev/kvm`` this user
    can open.  ``auto`` is KVM where it is known (or still to be shown) to run guests, else
    TCG with a note saying why when KVM was a possibility: no access, or a remembered
    verdict that it does not run guests here.
    """
    host = host or host_arch()
    accel = resolved_accel(machine, kvm_usable=True, host_arch=host)  # arch checks
    if accel == "tcg":
        return AccelChoice("tcg")
    problem = kvm_access_problem()
    if machine.accel == "kvm":
        if problem is not None:
            raise KvmAccessError(f"accel=kvm: {problem}")
        return AccelChoice("kvm")
    if problem is not None:
        return AccelChoice("tcg", f"using TCG, not KVM: {problem}")
    entry = _verdict_entry(machine.arch)
    if entry is not None and not entry.get("usable"):
        return AccelChoice(
            "tcg",
            f"using TCG, not KVM: KVM did not run a guest on this host ({entry.get('reason')};"
            f" remembered in {_cache_file()})",
        )
    return AccelChoice("kvm", fallback=True)
