"""QEMU's emulated Intel 82576 (``igb``, 8086:10C9), as the VFIO selftests' igb driver uses it.

The in-guest driver is the selftests' own (tools/testing/selftests/vfio/lib/drivers/igb/
igb.c, written for QEMU's igb): it copies memory by looping packets back inside the NIC.
This module holds its ids (``igb_probe`` in igb.c, Linux 7.3), so that
``harness.devices.probe`` can tell which driver a device in a guest gets.
"""

from __future__ import annotations

from harness.devices.base import DeviceId

IGB_VENDOR_ID = 0x8086
IGB_DEVICE_ID = 0x10C9
IGB = DeviceId("igb", IGB_VENDOR_ID, IGB_DEVICE_ID, "kselftest vfio lib/drivers/igb/igb.c")
