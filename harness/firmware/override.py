"""The IORT override for emulated SMMUv3 guests: QEMU's own IORT, patched, in the initrd.

QEMU generates the IORT at run time from its machine description, so the table to patch
is the one a guest of the same QEMU binary and topology booted with: read once from
``/sys/firmware/acpi/tables/IORT`` through the agent (a first boot, or any stock run that
hands it to :func:`store_iort`) and cached under a key made of the binary's identity and
the machine's topology.  :func:`iort_override` turns it into a combined initrd whose
early cpio upgrades the IORT with CANWBS set; :func:`override_machine` is the machine
that boots it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cachedir import cache_dir
from harness.errors import ConfigError, HarnessError
from harness.firmware.initrd import prepend_tables
from harness.firmware.iort import Iort, parse_iort, set_canwbs
from harness.qemu.description import Machine

IORT_SYSFS = "/sys/firmware/acpi/tables/IORT"
TABLE_FILE = "IORT.aml"
#: Machine fields that do not shape the ACPI tables QEMU builds
_NOT_TOPOLOGY = ("kernel", "initrd", "append", "accel", "memory_mb", "console", "cpu", "smp")

Log = Callable[[str], None]


def cache_root() -> Path:
    """``$VIOMMU_FIRMWARE_CACHE`` or ``${XDG_CACHE_HOME:-~/.cache}/viommu-harness/firmware``."""
    return cache_dir("firmware", "VIOMMU_FIRMWARE_CACHE")


def file_identity(path: str | Path) -> dict[str, Any]:
    """A file's resolved path, size and modification time (what makes a binary 'the same')."""
    resolved = Path(path).resolve()
    st = resolved.stat()
    return {"path": str(resolved), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def machine_topology(machine: Machine) -> dict[str, Any]:
    """The parts of a machine description that determine its ACPI tables."""
    described = machine.describe()
    for name in _NOT_TOPOLOGY:
        described.pop(name, None)
    if machine.uefi_code is not None:
        described["uefi_code"] = file_identity(machine.uefi_code)
    return described


def iort_cache_key(binary: str, machine: Machine) -> str:
    """The cache key of the IORT ``binary`` builds for ``machine``."""
    text = json.dumps({"qemu": file_identity(binary), "machine": machine_topology(machine)},
                      sort_keys=True)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _iort_dir(key: str) -> Path:
    return cache_root() / "iort" / key


def cached_iort(binary: str, machine: Machine) -> bytes | None:
    """QEMU's IORT for this binary and topology if it was fetched before."""
    path = _iort_dir(iort_cache_key(binary, machine)) / TABLE_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def store_iort(
    binary: str, machine: Machine, table: bytes, provenance: dict[str, Any] | None = None
) -> Path:
    """Cache QEMU's own IORT (as a guest booted without an override read it).

    DecodeError for a table that does not parse; the caller vouches that the guest had
    no table upgrade in its initrd (an upgraded table here would be patched twice).
    """
    iort = parse_iort(table)
    key = iort_cache_key(binary, machine)
    directory = _iort_dir(key)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "key": key,
        "qemu": file_identity(binary),
        "machine": machine_topology(machine),
        "iort": iort.describe(),
        "stored_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(provenance or {}),
    }
    for name, data in ((TABLE_FILE, table), ("meta.json", json.dumps(meta, indent=1).encode())):
        tmp = directory / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        tmp.replace(directory / name)
    return directory / TABLE_FILE


def fetch_iort(
    machine: Machine,
    binary: str,
    *,
    ready_marker: str,
    artifacts: Path,
    log: Log | None = None,
) -> bytes:
    """Boot ``machine`` (its stock initrd) once and read the IORT QEMU gave it."""
    from harness.guest import Guest

    if machine.firmware != "uefi":
        raise ConfigError("the IORT exists only with ACPI: boot with firmware=uefi")
    with Guest(machine, artifacts, ready_marker=ready_marker, qemu=binary, name="iort-fetch",
               log=log) as guest:  # fmt: skip
        table = guest.call("system.read_file", path=IORT_SYSFS)
    if not isinstance(table, bytes | bytearray):
        raise HarnessError(f"{IORT_SYSFS}: the agent returned {type(table).__name__}, not bytes")
    return bytes(table)


@dataclass(frozen=True)
class IortOverride:
    """The patched IORT, the combined initrd that carries it, and where it came from."""

    key: str
    original: Iort
    patched: Iort
    table: bytes
    initrd: Path
    fetched_by_boot: bool
    fetch_s: float = 0.0

    @property
    def needed(self) -> bool:
        """QEMU's own IORT does not claim CANWBS."""
        return not self.original.canwbs

    def describe(self) -> dict[str, Any]:
        """JSON-able facts for verdicts and reports."""
        return {
            "key": self.key,
            "original": self.original.describe(),
            "patched": self.patched.describe(),
            "initrd": str(self.initrd),
            "fetched_by_boot": self.fetched_by_boot,
            "fetch_s": round(self.fetch_s, 1),
        }


def iort_override(
    machine: Machine,
    binary: str,
    *,
    ready_marker: str,
    artifacts: Path | None = None,
    log: Log | None = None,
) -> IortOverride:
    """The override for ``machine`` (stock initrd) on ``binary``; boots once if not cached."""
    key = iort_cache_key(binary, machine)
    table = cached_iort(binary, machine)
    fetched = False
    fetch_s = 0.0
    if table is None:
        from harness.artifacts import new_artifacts_dir

        t0 = time.monotonic()
        directory = artifacts or new_artifacts_dir("iort-fetch")
        table = fetch_iort(machine, binary, ready_marker=ready_marker, artifacts=directory,
                           log=log)  # fmt: skip
        fetch_s = time.monotonic() - t0
        store_iort(binary, machine, table, {"fetched_from": str(directory)})
        fetched = True
    patch = set_canwbs(table)
    initrd = prepend_tables(machine.initrd, {TABLE_FILE: patch.table}, cache_root() / "initrd")
    return IortOverride(key, patch.original, patch.patched, patch.table, initrd, fetched, fetch_s)


def override_machine(machine: Machine, override: IortOverride) -> Machine:
    """``machine`` booting the combined initrd (kernel ACPI table upgrade of the IORT)."""
    if machine.firmware != "uefi":
        raise ConfigError("an IORT override needs firmware=uefi (ACPI) to take effect")
    return machine.with_(initrd=override.initrd)


def drop_cached_iort(binary: str, machine: Machine) -> None:
    """Forget the cached IORT of this binary and topology (the next override boots again)."""
    directory = _iort_dir(iort_cache_key(binary, machine))
    for name in (TABLE_FILE, "meta.json"):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
