"""Guest-side drivers for emulated DMA-capable devices (standard library only).

``harness.devices.edu.Edu`` drives QEMU's ``edu`` DMA engine through a VFIO device; it
knows nothing about the vIOMMU behind the device, so VT-d and SMMUv3 scenarios share it.
"""

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

__all__ = [
    "BUFFER_SIZE",
    "DEFAULT_DMA_MASK",
    "EDU_DEVICE_ID",
    "EDU_VENDOR_ID",
    "Edu",
    "EduError",
    "EduTimeoutError",
    "RegionIO",
    "Transfer",
    "check_transfer",
]
