"""Whether KVM really runs guests on this host, remembered per host.

``/dev/kvm`` opening is not enough: on some hosts (e.g. a software KVM without VMX)
guests die with "KVM internal error".  ``accel=auto`` tries KVM once, and the machine
layer records the verdict here so later machines go straight to the right accelerator.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from harness.cachedir import cache_dir
from harness.images.arches import host_arch


def _cache_file() -> Path:
    return cache_dir("") / "kvm-verdict.json"


def _host_key(arch: str) -> str:
    """KVM usability depends on the host kernel and the guest arch."""
    return f"{platform.node()}|{platform.release()}|{arch}"


def kvm_available(arch: str) -> bool:
    """KVM can only accelerate a guest of the host's own architecture."""
    return arch == host_arch() and os.access("/dev/kvm", os.R_OK | os.W_OK)


def kvm_verdict(arch: str) -> bool | None:
    """True/False once known for this host, None when it must still be tried."""
    if not kvm_available(arch):
        return False
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return None
    entry = data.get(_host_key(arch))
    return None if entry is None else bool(entry.get("usable"))


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
