"""Guest-side drivers for emulated DMA-capable devices (standard library only).

``harness.devices.edu.Edu`` drives QEMU's ``edu`` DMA engine through a VFIO device and is a
``DmaDriver`` (the VFIO selftests' ops table); it knows nothing about the vIOMMU behind the
device, so VT-d and SMMUv3 scenarios share it.
QEMU's ``igb`` is driven by the kernel's VFIO selftests' own driver (``harness kselftest``).
``DRIVERS`` lists the devices with who drives each; ``probe`` finds a device's entry.
"""

from harness.devices.base import DeviceId, DmaDriver
from harness.devices.edu import (
    BUFFER_SIZE,
    DEFAULT_DMA_MASK,
    EDU_DEVICE_ID,
    EDU_VENDOR_ID,
    Edu,
    EduError,
    EduTimeoutError,
    RegionIO,
    Transfer,
    check_transfer,
)
from harness.devices.igb import IGB, IGB_DEVICE_ID, IGB_VENDOR_ID

EDU = DeviceId("edu", EDU_VENDOR_ID, EDU_DEVICE_ID, "harness.devices.edu.Edu")
DRIVERS: tuple[DeviceId, ...] = (EDU, IGB)
"""Every DMA-capable device the harness knows, in probe order."""


def probe(vendor_id: int, device_id: int) -> DeviceId | None:
    """The ``DRIVERS`` entry for a device's ids, or None when no driver knows it."""
    return next((d for d in DRIVERS if d.matches(vendor_id, device_id)), None)


__all__ = [
    "BUFFER_SIZE",
    "DEFAULT_DMA_MASK",
    "DRIVERS",
    "EDU",
    "EDU_DEVICE_ID",
    "EDU_VENDOR_ID",
    "IGB",
    "IGB_DEVICE_ID",
    "IGB_VENDOR_ID",
    "DeviceId",
    "DmaDriver",
    "Edu",
    "EduError",
    "EduTimeoutError",
    "RegionIO",
    "Transfer",
    "check_transfer",
    "probe",
]
