"""Byte-exact ctypes models of the kernel interfaces the harness drives.

One module per header: ``iommufd`` (linux/iommufd.h), ``iommufd_test``
(drivers/iommu/iommufd/iommufd_test.h), ``vfio`` (linux/vfio.h) and ``legacy`` (the
pre-iommufd vendor nesting uAPI of seed 000).  Structure classes and ioctl constants keep
the kernel's names; ``tests/unit/test_abi.py`` checks every one against a C compiler.
"""
