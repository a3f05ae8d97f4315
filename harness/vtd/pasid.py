"""Scalable-mode PASID-directory entries (64-bit) and PASID-table entries (512-bit).

Layout per the VT-d spec (section 9.5/9.6) and the kernel's ``pasid_set_*`` helpers in
``drivers/iommu/intel/pasid.h``. Names follow the spec revision the brief and QEMU use
(``SLPTPTR``, ``FSPTPTR``, ``FSPM``). Pointers are held "in place": ``fsptptr`` is the
4 KiB-aligned physical address of the first-stage root table.

Checks: reserved bits (qw0 11:10, qw1 22:16, qw2 11:8, qw3-qw7) must be zero; PGTT of a
present entry is 1-4; FSPM 2/3 and AW 4-7 are reserved encodings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Self

from harness.errors import EncodeError
from harness.vtd._bits import Bits, ErrorType, Layout, Packed, bit


class Pgtt(IntEnum):
    """PASID-granular translation type."""

    FIRST_STAGE = 1
    SECOND_STAGE = 2
    NESTED = 3
    PASS_THROUGH = 4


class Fspm(IntEnum):
    """First-stage paging mode."""

    LEVEL4 = 0
    LEVEL5 = 1


_PASID_ENTRY = Layout(
    "PasidEntry",
    8,
    (
        bit("present", "P", 0, 0),
        bit("fpd", "FPD", 0, 1),
        Bits("aw", "AW", 0, 2, 4),
        bit("slee", "SLEE", 0, 5),
        Bits("pgtt", "PGTT", 0, 6, 8),
        bit("slade", "SLADE", 0, 9),
        Bits("slptptr", "SLPTPTR", 0, 12, 63, in_place=True),
        Bits("did", "DID", 1, 0, 15),
        bit("pwsnp", "PWSNP", 1, 23),
        bit("pgsnp", "PGSNP", 1, 24),
        bit("cd", "CD", 1, 25),
        bit("emte", "EMTE", 1, 26),
        Bits("emt", "EMT", 1, 27, 29),
        bit("pwt", "PWT", 1, 30),
        bit("pcd", "PCD", 1, 31),
        Bits("pat", "PAT", 1, 32, 63),
        bit("sre", "SRE", 2, 0),
        bit("ere", "ERE", 2, 1),
        Bits("fspm", "FSPM", 2, 2, 3),
        bit("wpe", "WPE", 2, 4),
        bit("nxe", "NXE", 2, 5),
        bit("smep", "SMEP", 2, 6),
        bit("eafe", "EAFE", 2, 7),
        Bits("fsptptr", "FSPTPTR", 2, 12, 63, in_place=True),
    ),
)


def _fspm_for(levels: int) -> Fspm:
    if levels not in (4, 5):
        raise EncodeError("PasidEntry.FSPM", f"first-stage levels must be 4 or 5, got {levels}")
    return Fspm(levels - 4)


@dataclass(frozen=True)
class PasidEntry(Packed):
    """One 64-byte scalable-mode PASID-table entry."""

    LAYOUT: ClassVar[Layout] = _PASID_ENTRY

    present: bool = False
    fpd: bool = False
    aw: int = 0
    slee: bool = False
    pgtt: int = 0
    slade: bool = False
    slptptr: int = 0
    did: int = 0
    pwsnp: bool = False
    pgsnp: bool = False
    cd: bool = False
    emte: bool = False
    emt: int = 0
    pwt: bool = False
    pcd: bool = False
    pat: int = 0
    sre: bool = False
    ere: bool = False
    fspm: int = 0
    wpe: bool = False
    nxe: bool = False
    smep: bool = False
    eafe: bool = False
    fsptptr: int = 0

    @classmethod
    def first_stage(
        cls,
        fsptptr: int,
        did: int,
        *,
        levels: int = 4,
        aw: int = 2,
        sre: bool = False,
        wpe: bool = False,
        eafe: bool = False,
        pwsnp: bool = False,
        pgsnp: bool = False,
        fpd: bool = False,
    ) -> Self:
        """A present first-stage-only (PGTT=1) entry, as the kernel's first-level setup writes."""
        return cls(
            present=True,
            fpd=fpd,
            aw=aw,
            pgtt=Pgtt.FIRST_STAGE,
            did=did,
            pwsnp=pwsnp,
            pgsnp=pgsnp,
            sre=sre,
            fspm=_fspm_for(levels),
            wpe=wpe,
            eafe=eafe,
            fsptptr=fsptptr,
        )

    @property
    def first_stage_levels(self) -> int:
        """First-stage page-table depth: 4 (FSPM=0) or 5 (FSPM=1)."""
        return 4 + self.fspm

    @property
    def second_stage_levels(self) -> int:
        """Second-stage page-table depth from AW (1: 3-level, 2: 4-level, 3: 5-level)."""
        return 2 + self.aw

    @property
    def pgtt_name(self) -> str:
        """PGTT as a word: ``first-stage``, ``second-stage``, ``nested``, ``pass-through``."""
        try:
            return Pgtt(self.pgtt).name.lower().replace("_", "-")
        except ValueError:
            return f"reserved({self.pgtt})"

    @property
    def uses_first_stage(self) -> bool:
        return self.pgtt in (Pgtt.FIRST_STAGE, Pgtt.NESTED)

    @property
    def uses_second_stage(self) -> bool:
        return self.pgtt in (Pgtt.SECOND_STAGE, Pgtt.NESTED)

    def _check(self, error: ErrorType) -> None:
        if self.present and self.pgtt not in tuple(Pgtt):
            raise error("PasidEntry.PGTT", f"reserved value {self.pgtt} in a present entry")
        if self.fspm not in tuple(Fspm):
            raise error("PasidEntry.FSPM", f"reserved value {self.fspm} (0: 4-level, 1: 5-level)")
        if self.aw >= 4:
            raise error("PasidEntry.AW", f"reserved value {self.aw} (1: 39, 2: 48, 3: 57 bits)")


@dataclass(frozen=True)
class PasidDirEntry(Packed):
    """One 8-byte scalable-mode PASID-directory entry: points at a 64-entry PASID table."""

    LAYOUT: ClassVar[Layout] = Layout(
        "PasidDirEntry",
        1,
        (
            bit("present", "P", 0, 0),
            bit("fpd", "FPD", 0, 1),
            Bits("table", "SMPTBLPTR", 0, 12, 63, in_place=True),
        ),
    )

    present: bool = False
    fpd: bool = False
    table: int = 0


def pasid_index(pasid: int) -> tuple[int, int]:
    """(directory index, table index) of a 20-bit PASID: ``pasid >> 6``, ``pasid & 63``."""
    if not isinstance(pasid, int) or isinstance(pasid, bool) or not 0 <= pasid < 1 << 20:
        raise EncodeError("PASID", f"{pasid!r} is not a 20-bit value")
    return pasid >> 6, pasid & 0x3F
