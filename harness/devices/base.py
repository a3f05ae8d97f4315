"""What a DMA-capable test device's driver offers: the shape of the VFIO selftests' ops table.

Mirrors ``struct vfio_pci_driver_ops`` (tools/testing/selftests/vfio/lib/include/libvfio/
vfio_pci_driver.h, Linux 7.3): a driver names the PCI ids it probes, initialises and
removes the device, starts a memcpy of ``size`` bytes ``count`` times and waits for it,
optionally sends an MSI, and states its limits.  ``DeviceId`` is the table entry that
``harness.devices.probe`` matches against a guest's devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class DeviceId:
    """A PCI vendor:device a driver probes, and who drives it (a class here, or a selftest)."""

    name: str
    vendor_id: int
    device_id: int
    driver: str

    def matches(self, vendor_id: int, device_id: int) -> bool:
        """Whether a device with these ids is this entry's."""
        return (vendor_id, device_id) == (self.vendor_id, self.device_id)


class DmaDriver(Protocol):
    """A device driver that copies memory by DMA through the device's IOMMU domain.

    Guarantees: ``memcpy_start`` returns once the device accepted the work (not when it is
    done); ``memcpy_wait`` returns when every started copy finished and raises the
    driver's ``HarnessError`` subclass on a device error or timeout; sizes above
    ``max_memcpy_size`` or counts above ``max_memcpy_count`` are refused, never truncated.
    """

    max_memcpy_size: int
    max_memcpy_count: int

    def init(self) -> None:
        """Bring the device to a state where it accepts memcpy work (idempotent)."""

    def remove(self) -> None:
        """Quiesce the device: no DMA after this returns."""

    def memcpy_start(self, src: int, dst: int, size: int, count: int = 1) -> None:
        """Start copying ``size`` bytes from IOVA ``src`` to IOVA ``dst``, ``count`` times."""

    def memcpy_wait(self) -> float:
        """Wait for the started copies; seconds waited."""

    def send_msi(self) -> None:
        """Make the device raise its MSI (drivers without one raise NotImplementedError)."""
