"""Host checks of tier 3 on a real KVM host: the device, its IOMMU group, KVM, iommufd and
the host IOMMU's nesting capability (IOMMU_GET_HW_INFO through the harness's own driver).

Every check reads from roots that default to the real ``/sys`` and ``/dev`` and can be
pointed at a fake tree (unit tests).  ``HostReport.skip_reason`` is the one line a test
skips with when the host cannot run tier 3, naming the missing piece exactly.
The same evaluation (``evaluate_hw_info``) judges L1's IOMMU in the simulated tier 3.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.driver.vfio import iommu_info
from harness.errors import ConfigError, DecodeError
from harness.firmware.capability import nesting_capability
from harness.firmware.iort import parse_iort
from harness.smmuv3 import decode_hw_info
from harness.tier3.passthrough import full_bdf
from harness.uapi import iommufd as uapi
from harness.vtd.registers import Cap, Ecap

NO_HOST_DEVICE = "tier 3 passthrough: no --host-device given (a PCI device for vfio-pci)"

HwInfoReader = Callable[[str], dict[str, Any]]
"""cdev path -> ``harness.driver.vfio.iommu_info`` result."""


@dataclass(frozen=True)
class HostIommu:
    """What the host IOMMU behind a device offers for nesting, decided from GET_HW_INFO."""

    kind: str
    nesting: bool
    reason: str
    registers: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "nesting": self.nesting,
            "reason": self.reason,
            "registers": self.registers,
        }


def evaluate_hw_info(
    data_type: int, data: bytes, *, nest_parent: str | None = None, iort: bytes | None = None
) -> HostIommu:
    """Judge a host IOMMU: VT-d needs ecap SMTS+NEST+SSTS; SMMUv3 S1P+S2P and FWB or CANWBS.

    ``nest_parent`` is the outcome of a real NEST_PARENT allocation (``OK`` or an errno
    name) and overrides a register verdict that the kernel contradicts.
    """
    if data_type == uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD:
        size = ctypes.sizeof(uapi.iommu_hw_info_vtd)
        raw = uapi.iommu_hw_info_vtd.from_bytes(bytes(data[:size]).ljust(size, b"\0"))
        cap, ecap = Cap.decode(int(raw.cap_reg)), Ecap.decode(int(raw.ecap_reg))
        registers: dict[str, Any] = {
            "cap": f"{int(raw.cap_reg):#018x}",
            "ecap": f"{int(raw.ecap_reg):#018x}",
        }
        if ecap.nest_parent_supported:
            verdict = HostIommu("vtd", True, "VT-d ecap SMTS=1 NEST=1 SSTS=1", registers)
        else:
            reason = (
                f"VT-d ecap SMTS={int(ecap.smts)} NEST={int(ecap.nest)}"
                f" SSTS={int(ecap.ssts)} (nesting needs all three)"
            )
            verdict = HostIommu("vtd", False, reason, registers)
        registers["fs1gp"] = int(cap.fl1gp)
    elif data_type == uapi.IOMMU_HW_INFO_TYPE_ARM_SMMUV3:
        try:
            info = decode_hw_info(bytes(data[:40]))
        except DecodeError as exc:
            return HostIommu("smmuv3", False, f"SMMUv3 GET_HW_INFO undecodable: {exc}")
        idrs = info.regs.encode()
        parsed_iort = None
        if iort:
            try:
                parsed_iort = parse_iort(iort)
            except DecodeError:
                parsed_iort = None
        capability = nesting_capability(idrs, parsed_iort)
        registers = {name: f"{value:#010x}" for name, value in idrs.items()}
        registers["capability"] = capability.to_json()
        reason = "SMMUv3 " + capability.explain()
        verdict = HostIommu("smmuv3", capability.viommu, reason, registers)
    else:
        names: dict[int, str] = {
            uapi.IOMMU_HW_INFO_TYPE_NONE: "none (no IOMMU driver data)",
            uapi.IOMMU_HW_INFO_TYPE_AMD: "AMD",
        }
        kind = names.get(data_type, f"type {data_type}")
        return HostIommu("other", False, f"host IOMMU {kind}: QEMU nests only on VT-d or SMMUv3")
    if nest_parent is not None and nest_parent != "OK" and verdict.nesting:
        return HostIommu(
            verdict.kind,
            False,
            f"{verdict.reason}, but the kernel refused a NEST_PARENT HWPT ({nest_parent})",
            verdict.registers,
        )
    return verdict


@dataclass(frozen=True)
class HostDevice:
    """A PCI device on the host as sysfs shows it."""

    bdf: str
    exists: bool
    vendor: int | None = None
    device: int | None = None
    driver: str | None = None
    iommu_group: str | None = None
    group_devices: tuple[tuple[str, str | None], ...] = ()
    """Every device of the group with its driver (all must be vfio-pci or unbound)."""
    vfio_cdev: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "bdf": self.bdf,
            "exists": self.exists,
            "vendor": self.vendor,
            "device": self.device,
            "driver": self.driver,
            "iommu_group": self.iommu_group,
            "group_devices": [list(d) for d in self.group_devices],
            "vfio_cdev": self.vfio_cdev,
        }


def _driver(device_dir: Path) -> str | None:
    link = device_dir / "driver"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else None


def _hex(path: Path) -> int | None:
    try:
        return int(path.read_text().strip(), 16)
    except (OSError, ValueError):
        return None


def inspect_device(
    bdf: str, sys_root: Path = Path("/sys"), dev_root: Path = Path("/dev")
) -> HostDevice:
    """Read the device, its driver, IOMMU group and vfio cdev from sysfs."""
    full = full_bdf(bdf)
    base = sys_root / "bus" / "pci" / "devices" / full
    if not base.exists():
        return HostDevice(full, False)
    group_link = base / "iommu_group"
    group = os.path.basename(os.readlink(group_link)) if group_link.is_symlink() else None
    members: list[tuple[str, str | None]] = []
    if group is not None:
        group_dir = sys_root / "kernel" / "iommu_groups" / group / "devices"
        if group_dir.is_dir():
            for member in sorted(group_dir.iterdir()):
                members.append(
                    (member.name, _driver(sys_root / "bus" / "pci" / "devices" / member.name))
                )
    cdev = None
    vfio_dev = base / "vfio-dev"
    if vfio_dev.is_dir():
        names = sorted(p.name for p in vfio_dev.iterdir() if p.name.startswith("vfio"))
        if names:
            cdev = str(dev_root / "vfio" / "devices" / names[0])
    return HostDevice(
        bdf=full,
        exists=True,
        vendor=_hex(base / "vendor"),
        device=_hex(base / "device"),
        driver=_driver(base),
        iommu_group=group,
        group_devices=tuple(members),
        vfio_cdev=cdev,
    )


def _is_root() -> bool:
    return os.geteuid() == 0


def device_problem(dev: HostDevice, sys_root: Path = Path("/sys")) -> str | None:
    """Why the device cannot be handed to QEMU's vfio-pci (iommufd backend), or None.

    Binding a device to vfio-pci needs root: an ordinary user is told so.
    """
    if not dev.exists:
        return f"host device {dev.bdf} does not exist"
    if dev.iommu_group is None:
        return f"host device {dev.bdf} has no IOMMU group (host IOMMU off or not translating)"
    if dev.driver != "vfio-pci":
        bindable = (sys_root / "bus" / "pci" / "drivers" / "vfio-pci").is_dir()
        how = (
            "bind it: echo vfio-pci > driver_override, then drivers_probe"
            if bindable
            else "and vfio-pci is not loaded (modprobe vfio-pci)"
        )
        root = "" if _is_root() else f": needs root to bind {dev.bdf} to vfio-pci"
        return (
            f"host device {dev.bdf} is bound to {dev.driver or 'no driver'}, not vfio-pci"
            f" ({how}){root}"
        )
    others = [
        f"{b} ({d or 'no driver'})"
        for b, d in dev.group_devices
        if b != dev.bdf and d not in (None, "vfio-pci", "pcieport")
    ]
    if others:
        return f"IOMMU group {dev.iommu_group} of {dev.bdf} also holds {', '.join(others)}"
    if dev.vfio_cdev is None:
        return f"host device {dev.bdf} has no vfio cdev (kernel without CONFIG_VFIO_DEVICE_CDEV)"
    return None


@dataclass
class HostReport:
    """All tier-3 host checks: rows for humans, facts for reports, and the skip reason."""

    bdf: str | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    device: HostDevice | None = None
    iommu: HostIommu | None = None
    skip_reason: str | None = None

    def add(self, name: str, ok: bool, got: Any, note: str = "") -> None:
        self.rows.append({"name": name, "expected": True, "got": got, "ok": ok, "note": note})

    def to_json(self) -> dict[str, Any]:
        return {
            "bdf": self.bdf,
            "rows": self.rows,
            "device": self.device.to_json() if self.device else None,
            "iommu": self.iommu.to_json() if self.iommu else None,
            "skip_reason": self.skip_reason,
        }


def access_problem(node: Path, bdf: str) -> str | None:
    """Why this user cannot open a device node QEMU needs for ``bdf`` read-write, or None.

    A node that does not exist is not judged here (the checks before name it).
    """
    try:
        info = node.stat()
    except OSError:
        return None
    if os.access(node, os.R_OK | os.W_OK):
        return None

    def name(table: Any, number: int) -> str:
        try:
            return str(table(number)[0])
        except KeyError:
            return str(number)

    owner = f"{name(pwd.getpwuid, info.st_uid)}:{name(grp.getgrgid, info.st_gid)}"
    return (
        f"no read/write access to {node} ({owner} {info.st_mode & 0o777:o}), which QEMU needs"
        f" for {bdf}: needs root to give {name(pwd.getpwuid, os.getuid())} access (chown or a"
        " udev rule), or run tier 3 as root"
    )


def _local_hw_info(cdev: str) -> dict[str, Any]:
    return iommu_info(cdev)


def check_host(
    bdf: str | None,
    *,
    sys_root: Path = Path("/sys"),
    dev_root: Path = Path("/dev"),
    hw_info: HwInfoReader | None = None,
    need_kvm: bool = True,
) -> HostReport:
    """Run every host check for ``bdf``; the first failing one becomes the skip reason."""
    report = HostReport(bdf)
    if not bdf:
        report.skip_reason = NO_HOST_DEVICE
        return report
    try:
        device = inspect_device(bdf, sys_root, dev_root)
    except ConfigError as exc:
        report.skip_reason = str(exc)
        return report
    report.device = device
    problem = device_problem(device, sys_root)
    report.add("device usable by vfio-pci", problem is None, device.driver, problem or "")
    kvm = (dev_root / "kvm").exists()
    report.add("/dev/kvm", kvm or not need_kvm, kvm)
    iommufd = (dev_root / "iommu").exists()
    report.add("/dev/iommu (iommufd)", iommufd, iommufd)
    for reason, failed in (
        (problem, problem is not None),
        ("no KVM on this host: /dev/kvm is missing", need_kvm and not kvm),
        ("no iommufd on this host: /dev/iommu is missing (CONFIG_IOMMUFD)", not iommufd),
    ):
        if failed:
            report.skip_reason = reason
            return report
    assert device.vfio_cdev is not None
    for node in (Path(device.vfio_cdev), dev_root / "iommu"):
        denied = access_problem(node, device.bdf)
        report.add(f"read/write access to {node}", denied is None, denied is None, denied or "")
        if denied is not None:
            report.skip_reason = denied
            return report
    try:
        info = (hw_info or _local_hw_info)(device.vfio_cdev)
    except PermissionError as exc:
        report.skip_reason = f"IOMMU_GET_HW_INFO on {device.vfio_cdev}: {exc.strerror}" + (
            "" if _is_root() else f" (needs root to give this user {device.bdf}'s vfio device)"
        )
        return report
    except OSError as exc:
        report.skip_reason = f"IOMMU_GET_HW_INFO on {device.vfio_cdev} failed: {exc}"
        return report
    iort_path = sys_root / "firmware" / "acpi" / "tables" / "IORT"
    iort = iort_path.read_bytes() if iort_path.is_file() else None
    iommu = evaluate_hw_info(
        int(info["data_type"]), bytes(info["data"]), nest_parent=info.get("nest_parent"), iort=iort
    )
    report.iommu = iommu
    report.add("host IOMMU can nest", iommu.nesting, iommu.kind, iommu.reason)
    if not iommu.nesting:
        report.skip_reason = f"no nesting-capable host IOMMU: {iommu.reason}"
    return report
