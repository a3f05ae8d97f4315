"""Root and context entries, legacy (128-bit) and scalable mode (128-bit root, 256-bit context).

Layout per the VT-d spec (section 9.1-9.4), cross-checked with QEMU's reserved masks
(``VTD_CONTEXT_ENTRY_RSVD_HI``, ``VTD_SM_CONTEXT_ENTRY_RSVD_VAL*``) and the kernel's
``context_*`` helpers. Table pointers are held in place (4 KiB-aligned addresses).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from harness.vtd._bits import Bits, ErrorType, Layout, Packed, bit


class TranslationType(IntEnum):
    """Legacy context-entry TT."""

    UNTRANSLATED = 0
    DEVICE_TLB = 1
    PASS_THROUGH = 2


@dataclass(frozen=True)
class RootEntry(Packed):
    """Legacy-mode root entry: one per bus, pointing at a 256-entry context table."""

    LAYOUT: ClassVar[Layout] = Layout(
        "RootEntry",
        2,
        (bit("present", "P", 0, 0), Bits("context_table", "CTP", 0, 12, 63, in_place=True)),
    )

    present: bool = False
    context_table: int = 0


@dataclass(frozen=True)
class ScalableRootEntry(Packed):
    """Scalable-mode root entry: lower (devfn 0-127) and upper (128-255) context tables."""

    LAYOUT: ClassVar[Layout] = Layout(
        "ScalableRootEntry",
        2,
        (
            bit("lower_present", "LP", 0, 0),
            Bits("lower_context_table", "LCTP", 0, 12, 63, in_place=True),
            bit("upper_present", "UP", 1, 0),
            Bits("upper_context_table", "UCTP", 1, 12, 63, in_place=True),
        ),
    )

    lower_present: bool = False
    lower_context_table: int = 0
    upper_present: bool = False
    upper_context_table: int = 0


@dataclass(frozen=True)
class ContextEntry(Packed):
    """Legacy-mode context entry (one per devfn)."""

    LAYOUT: ClassVar[Layout] = Layout(
        "ContextEntry",
        2,
        (
            bit("present", "P", 0, 0),
            bit("fpd", "FPD", 0, 1),
            Bits("tt", "TT", 0, 2, 3),
            Bits("slptptr", "SLPTPTR", 0, 12, 63, in_place=True),
            Bits("aw", "AW", 1, 0, 2),
            Bits("ignored", "IGN", 1, 3, 6),
            Bits("did", "DID", 1, 8, 23),
        ),
    )

    present: bool = False
    fpd: bool = False
    tt: int = 0
    slptptr: int = 0
    aw: int = 0
    ignored: int = 0
    did: int = 0

    @property
    def levels(self) -> int:
        """Second-stage page-table depth from AW."""
        return 2 + self.aw

    def _check(self, error: ErrorType) -> None:
        if self.tt == 3:
            raise error("ContextEntry.TT", "reserved value 3")
        if self.aw >= 4:
            raise error("ContextEntry.AW", f"reserved value {self.aw}")


@dataclass(frozen=True)
class ScalableContextEntry(Packed):
    """Scalable-mode context entry (256-bit): points at the device's PASID directory."""

    LAYOUT: ClassVar[Layout] = Layout(
        "ScalableContextEntry",
        4,
        (
            bit("present", "P", 0, 0),
            bit("fpd", "FPD", 0, 1),
            bit("dte", "DTE", 0, 2),
            bit("pasid_enable", "PASIDE", 0, 3),
            bit("pre", "PRE", 0, 4),
            Bits("pdts", "PDTS", 0, 9, 11),
            Bits("pasid_dir", "PASIDDIRPTR", 0, 12, 63, in_place=True),
            Bits("rid_pasid", "RID_PASID", 1, 0, 19),
            bit("rid_priv", "RID_PRIV", 1, 20),
        ),
    )

    present: bool = False
    fpd: bool = False
    dte: bool = False
    pasid_enable: bool = False
    pre: bool = False
    pdts: int = 0
    pasid_dir: int = 0
    rid_pasid: int = 0
    rid_priv: bool = False

    @property
    def pasid_dir_entries(self) -> int:
        """Number of PASID-directory entries: 2^(PDTS + 7) (kernel ``get_pasid_dir_size``)."""
        return 1 << (self.pdts + 7)
