"""The accelerated vSMMU's IORT RMR, and the upgrade that lets a guest give its device to VFIO.

QEMU 11 describes ``arm-smmuv3,accel=on`` with an IORT RMR node: a 1:1 window over the
ITS doorbell (the MSI page) for the devices behind it, with *Remapping Permitted* clear.
Linux turns that into an ``IOMMU_RESV_DIRECT`` region, marks the group as requiring a
direct mapping, and vfio-pci then refuses the device ("Firmware has requested this device
have a 1:1 IOMMU mapping, rejecting configuring the device without a 1:1 mapping").  The
guest's own DMA-API drivers are unaffected; the harness, which drives the device from
guest userspace, upgrades the guest's IORT with Remapping Permitted set
(``IOMMU_RESV_DIRECT_RELAXABLE``: kept in the default domain, waived for VFIO).  The
scenarios use no MSIs, so the doorbell window is not needed in the VFIO domain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import EncodeError
from harness.firmware.acpi import with_checksum, with_oem_revision
from harness.firmware.initrd import prepend_tables
from harness.firmware.iort import Iort, parse_iort
from harness.firmware.override import cache_root, cached_iort, fetch_iort, store_iort
from harness.qemu.description import Machine

TYPE_RMR = 6
RMR_FLAGS = 16
"""Byte offset of an RMR node's Flags (after the 16-byte node header)."""
RMR_REMAP_PERMITTED = 0x1


@dataclass(frozen=True)
class RmrPatch:
    """The upgraded table and which RMR nodes (by offset) were relaxed."""

    table: bytes
    original: Iort
    relaxed: tuple[int, ...]

    def describe(self) -> dict[str, object]:
        return {
            "rmr_nodes": [f"{offset:#x}" for offset in self.relaxed],
            "oem_revision": self.original.header.oem_revision + 1,
        }


def rmr_flags(table: bytes) -> dict[int, int]:
    """Flags of every RMR node, by node offset."""
    iort = parse_iort(table)
    return {
        node.offset: int.from_bytes(
            table[node.offset + RMR_FLAGS : node.offset + RMR_FLAGS + 4], "little"
        )
        for node in iort.of_type(TYPE_RMR)
    }


def relax_rmrs(table: bytes) -> RmrPatch:
    """``table`` with Remapping Permitted set in every RMR node, as an initrd upgrade.

    EncodeError when there is no RMR node (nothing to relax) or the OEM revision cannot
    be raised; the result is parsed again and compared byte for byte.
    """
    original = parse_iort(table)
    rmrs = original.of_type(TYPE_RMR)
    if not rmrs:
        raise EncodeError("IORT.rmr", "no RMR node: the table needs no relaxing")
    if original.header.oem_revision == 0xFFFF_FFFF:
        raise EncodeError("IORT.oem_revision", "already 0xffffffff: an upgrade cannot be newer")
    data = bytearray(table)
    for node in rmrs:
        if node.length < RMR_FLAGS + 4:
            raise EncodeError("IORT.rmr", f"node at {node.offset:#x} too short for its flags")
        data[node.offset + RMR_FLAGS] |= RMR_REMAP_PERMITTED
    new = with_checksum(with_oem_revision(bytes(data), original.header.oem_revision + 1))
    allowed = {9, 24, 25, 26, 27} | {node.offset + RMR_FLAGS for node in rmrs}
    changed = {i for i, (a, b) in enumerate(zip(table, new, strict=True)) if a != b}
    if not changed <= allowed:
        raise EncodeError("IORT", f"unexpected bytes changed at {sorted(changed - allowed)}")
    if any(not flags & RMR_REMAP_PERMITTED for flags in rmr_flags(new).values()):
        raise EncodeError("IORT.rmr", "Remapping Permitted did not stick")
    return RmrPatch(new, original, tuple(node.offset for node in rmrs))


def rmr_override(
    machine: Machine,
    binary: str,
    *,
    ready_marker: str,
    artifacts: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[Machine, dict[str, Any]]:
    """``machine`` (a local accel-SMMU guest) booting its IORT with the RMRs relaxed.

    QEMU's own table comes from the firmware cache (``harness.firmware.override``, keyed by
    binary and topology); on a cold cache one stock boot reads it.
    """
    from harness.artifacts import new_artifacts_dir

    table = cached_iort(binary, machine)
    fetched = table is None
    if table is None:
        directory = artifacts or new_artifacts_dir("iort-fetch")
        table = fetch_iort(machine, binary, ready_marker=ready_marker, artifacts=directory, log=log)
        store_iort(binary, machine, table, {"fetched_from": str(directory)})
    patch = relax_rmrs(table)
    initrd = prepend_tables(machine.initrd, {"IORT.aml": patch.table}, cache_root() / "initrd")
    return machine.with_(initrd=initrd), {**patch.describe(), "fetched_by_boot": fetched}
