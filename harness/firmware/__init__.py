"""Firmware tables for guests: ACPI parsing and patching, the IORT CANWBS override, initrds.

Host-side only (not shipped into guests).  See :mod:`harness.firmware.override` for why
emulated SMMUv3 guests need their IORT upgraded and how the harness does it.
"""

from harness.firmware.acpi import (
    AcpiHeader,
    build_table,
    byte_sum,
    parse_header,
    upgrades,
    verify_table,
    with_checksum,
    with_oem_revision,
)
from harness.firmware.capability import NestingCapability, nesting_capability
from harness.firmware.initrd import early_cpio, prepend_tables, tables_in_initrd
from harness.firmware.iort import (
    MF_CANWBS,
    Iort,
    IortNode,
    IortPatch,
    build_iort,
    parse_iort,
    set_canwbs,
)
from harness.firmware.override import (
    IortOverride,
    cached_iort,
    fetch_iort,
    iort_cache_key,
    iort_override,
    override_machine,
    store_iort,
)

__all__ = [
    "MF_CANWBS",
    "AcpiHeader",
    "Iort",
    "IortNode",
    "IortOverride",
    "IortPatch",
    "NestingCapability",
    "build_iort",
    "build_table",
    "byte_sum",
    "cached_iort",
    "early_cpio",
    "fetch_iort",
    "iort_cache_key",
    "iort_override",
    "nesting_capability",
    "override_machine",
    "parse_header",
    "parse_iort",
    "prepend_tables",
    "set_canwbs",
    "store_iort",
    "tables_in_initrd",
    "upgrades",
    "verify_table",
    "with_checksum",
    "with_oem_revision",
]
