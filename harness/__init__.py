"""QEMU test harness and virtual-IOMMU nesting driver.

The pure-Python parts (``uapi``, ``driver``, ``vtd``, ``smmuv3``, ``pgtable``, ``rings``)
import nothing outside the standard library, so the agent can ship them into guests.
"""

__version__ = "0.1.0"
