"""PCI hot-plug through QMP: ``device_add`` into an empty root port, ``device_del`` until
QEMU reports ``DEVICE_DELETED``, and the devices QEMU's ``query-pci`` lists.

``device_del`` only asks: QEMU presses the slot's attention button (pciehp) or raises an
ACPI eject request, and removes the device once the guest has let it go.  A guest driver
that still holds the device (vfio-pci with its fd open) keeps it; the caller makes the
guest release it and then waits here for the event.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from harness.qemu.qmp import QmpSession


def device_add(qmp: QmpSession, driver: str, **props: Any) -> None:
    """``device_add driver=... props``: QEMU plugs the device at once (QmpCommandError)."""
    qmp.execute("device_add", {"driver": driver, **props})


def device_del(qmp: QmpSession, device_id: str) -> float:
    """Ask QEMU to unplug ``device_id``; returns the monotonic time of the request, for
    :func:`wait_deleted`."""
    since = time.monotonic()
    qmp.execute("device_del", {"id": device_id})
    return since


def wait_deleted(
    qmp: QmpSession,
    device_id: str,
    since: float,
    timeout: float,
    abort: Callable[[], str | None] | None = None,
) -> float:
    """Seconds from the request until ``DEVICE_DELETED`` for ``device_id`` (QmpError at
    ``timeout`` or when ``abort`` gives a reason)."""
    event = qmp.wait_event(
        "DEVICE_DELETED", {"device": device_id}, timeout=timeout, since=since, abort=abort
    )
    return event.received - since


def _devices(devices: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Each ``PciDeviceInfo``, then the ones behind it when it is a bridge or root port."""
    for dev in devices:
        yield dev
        yield from _devices(dev.get("pci_bridge", {}).get("devices", []))


def pci_devices(qmp: QmpSession) -> list[dict[str, Any]]:
    """Every PCI function QEMU has, behind bridges and root ports too: ``bus``, ``slot``,
    ``function``, ``qdev_id`` and ``vendor`` / ``device`` ids."""
    found = []
    every = (dev for bus in qmp.execute("query-pci") for dev in _devices(bus.get("devices", [])))
    for dev in every:
        ids = dev.get("id", {})
        found.append(
            {
                "bus": dev.get("bus"),
                "slot": dev.get("slot"),
                "function": dev.get("function"),
                "qdev_id": dev.get("qdev_id", ""),
                "vendor": ids.get("vendor"),
                "device": ids.get("device"),
            }
        )
    return found
