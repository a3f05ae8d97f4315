"""The nesting driver: iommufd and VFIO objects with explicit lifetimes (standard library only).

``IommuFD`` opens /dev/iommu and allocates ``IOAS``, HWPTs (``PagingHwpt``,
``NestedHwpt``), ``VIOMMU`` / ``VDevice``, ``FaultQueue`` / ``EventQueue`` and
``HwQueue`` objects, each freed by ``close()`` (or ``with``) and all freed in a safe
order by ``IommuFD.close()``.  ``Selftest`` drives the kernel's IOMMUFD_TEST mock;
``VfioDevice`` / ``VfioContainer`` / ``VfioGroup`` cover VFIO; ``DmaBuffer`` provides
memory to map.  Every refusal raises ``IoctlError`` (ioctl name, errno, arguments);
``expect_errno(errno, fn, ...)`` is the expects-errno form of any operation.
"""

from harness.driver.backend import OS, Backend, Channel, OsBackend
from harness.driver.checks import CheckTable, format_rows
from harness.driver.errors import ExpectError, IoctlError, errno_name, expect_errno
from harness.driver.iommufd import (
    FIXED_IOVA,
    IOAS,
    IOMMUFD_PATH,
    PROT_READ,
    PROT_RW,
    PROT_WRITE,
    U64_MAX,
    VIOMMU,
    EventQueue,
    FaultGroup,
    FaultQueue,
    HwInfo,
    Hwpt,
    HwQueue,
    IommuFD,
    IovaRanges,
    NestedHwpt,
    PagingHwpt,
    TeardownError,
    VDevice,
    VEvent,
)
from harness.driver.memory import PAGE_SIZE, DmaBuffer
from harness.driver.objects import IommufdObject, Owned
from harness.driver.selftest import MockDevice, Selftest
from harness.driver.vfio import VfioContainer, VfioDevice, VfioGroup

__all__ = [
    "FIXED_IOVA",
    "IOAS",
    "IOMMUFD_PATH",
    "OS",
    "PAGE_SIZE",
    "PROT_READ",
    "PROT_RW",
    "PROT_WRITE",
    "U64_MAX",
    "VIOMMU",
    "Backend",
    "Channel",
    "CheckTable",
    "DmaBuffer",
    "EventQueue",
    "ExpectError",
    "FaultGroup",
    "FaultQueue",
    "HwInfo",
    "HwQueue",
    "Hwpt",
    "IoctlError",
    "IommuFD",
    "IommufdObject",
    "IovaRanges",
    "MockDevice",
    "NestedHwpt",
    "OsBackend",
    "Owned",
    "PagingHwpt",
    "Selftest",
    "TeardownError",
    "VDevice",
    "VEvent",
    "VfioContainer",
    "VfioDevice",
    "VfioGroup",
    "errno_name",
    "expect_errno",
    "format_rows",
]
