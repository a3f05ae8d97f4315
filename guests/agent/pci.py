"""Guest-side PCI helpers: find devices, bind them to vfio-pci and back, IOMMU groups."""

from __future__ import annotations

import os
import time
from typing import Any

from guests.agent.server import method

SYSFS_PCI = "/sys/bus/pci/devices"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _device(bdf: str) -> dict[str, Any]:
    base = os.path.join(SYSFS_PCI, bdf)
    if not os.path.isdir(base):
        raise FileNotFoundError(f"no PCI device {bdf} in the guest")
    driver = os.path.join(base, "driver")
    group = os.path.join(base, "iommu_group")
    return {
        "bdf": bdf,
        "vendor": int(_read(os.path.join(base, "vendor")), 16),
        "device": int(_read(os.path.join(base, "device")), 16),
        "class": int(_read(os.path.join(base, "class")), 16),
        "driver": os.path.basename(os.readlink(driver)) if os.path.islink(driver) else None,
        "iommu_group": int(os.path.basename(os.readlink(group))) if os.path.islink(group) else None,
        "vfio_cdev": _vfio_cdev(bdf),
    }


def _vfio_cdev(bdf: str) -> str | None:
    path = os.path.join(SYSFS_PCI, bdf, "vfio-dev")
    if not os.path.isdir(path):
        return None
    names = sorted(os.listdir(path))
    return f"/dev/vfio/devices/{names[0]}" if names else None


@method
def devices() -> list[dict[str, Any]]:
    return [_device(bdf) for bdf in sorted(os.listdir(SYSFS_PCI))]


@method
def find(vendor: int, device: int) -> list[str]:
    """BDFs of devices with this vendor:device id."""
    return [d["bdf"] for d in devices() if d["vendor"] == vendor and d["device"] == device]


@method
def bind_vfio(bdf: str, timeout: float = 10.0) -> dict[str, Any]:
    """Bind ``bdf`` to vfio-pci; returns the device (with its cdev) and the previous driver."""
    before = _device(bdf)
    base = os.path.join(SYSFS_PCI, bdf)
    if before["driver"] != "vfio-pci":
        if before["driver"] is not None:
            _write(os.path.join(base, "driver", "unbind"), bdf)
        _write(os.path.join(base, "driver_override"), "vfio-pci")
        _write("/sys/bus/pci/drivers_probe", bdf)
    deadline = time.monotonic() + timeout
    while True:
        now = _device(bdf)
        if now["driver"] == "vfio-pci" and now["vfio_cdev"] and os.path.exists(now["vfio_cdev"]):
            return {"device": now, "previous_driver": before["driver"]}
        if time.monotonic() > deadline:
            raise TimeoutError(f"{bdf} did not bind to vfio-pci (driver: {now['driver']})")
        time.sleep(0.05)


@method
def restore(bdf: str, previous_driver: str | None) -> dict[str, Any]:
    """Undo ``bind_vfio``: unbind from vfio-pci, clear the override, re-probe."""
    base = os.path.join(SYSFS_PCI, bdf)
    dev = _device(bdf)
    if dev["driver"] is not None:
        _write(os.path.join(base, "driver", "unbind"), bdf)
    _write(os.path.join(base, "driver_override"), "\n")
    if previous_driver is not None:
        _write("/sys/bus/pci/drivers_probe", bdf)
    return _device(bdf)


@method
def iommu_groups() -> dict[str, list[str]]:
    root = "/sys/kernel/iommu_groups"
    out: dict[str, list[str]] = {}
    if os.path.isdir(root):
        for g in sorted(os.listdir(root), key=int):
            out[g] = sorted(os.listdir(os.path.join(root, g, "devices")))
    return out


@method
def vfio_devices() -> list[str]:
    path = "/dev/vfio/devices"
    return sorted(os.path.join(path, n) for n in os.listdir(path)) if os.path.isdir(path) else []
