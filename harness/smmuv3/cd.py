"""Context Descriptors (64 bytes, 8 x 64-bit words): build, encode and decode.

Field positions follow the SMMUv3 specification, section 5.4; the ones the kernel programs
were cross-checked against the CTXDESC_CD_* masks in arm-smmu-v3.h.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from harness.errors import DecodeError

from ._bits import Field, Layout, Packed, WordsLike, reserved_value

_FIELDS = (
    # word 0
    ("t0sz", "T0SZ", 0, 5, 0),
    ("tg0", "TG0", 0, 7, 6),
    ("ir0", "IR0", 0, 9, 8),
    ("or0", "OR0", 0, 11, 10),
    ("sh0", "SH0", 0, 13, 12),
    ("epd0", "EPD0", 0, 14, 14),
    ("endi", "ENDI", 0, 15, 15),
    ("t1sz", "T1SZ", 0, 21, 16),
    ("tg1", "TG1", 0, 23, 22),
    ("ir1", "IR1", 0, 25, 24),
    ("or1", "OR1", 0, 27, 26),
    ("sh1", "SH1", 0, 29, 28),
    ("epd1", "EPD1", 0, 30, 30),
    ("v", "V", 0, 31, 31),
    ("ips", "IPS", 0, 34, 32),
    ("affd", "AFFD", 0, 35, 35),
    ("wxn", "WXN", 0, 36, 36),
    ("uwxn", "UWXN", 0, 37, 37),
    ("tbi0", "TBI0", 0, 38, 38),
    ("tbi1", "TBI1", 0, 39, 39),
    ("pan", "PAN", 0, 40, 40),
    ("aa64", "AA64", 0, 41, 41),
    ("hd", "HD", 0, 42, 42),
    ("ha", "HA", 0, 43, 43),
    ("s", "S", 0, 44, 44),
    ("r", "R", 0, 45, 45),
    ("a", "A", 0, 46, 46),
    ("aset", "ASET", 0, 47, 47),
    ("asid", "ASID", 0, 63, 48),
    # word 1
    ("nscfg0", "NSCFG0", 1, 0, 0),
    ("had0", "HAD0", 1, 1, 1),
    ("e0pd0", "E0PD0", 1, 2, 2),
    ("haft", "HAFT", 1, 3, 3),
    ("ttb0", "TTB0", 1, 55, 4),
    ("pnch", "PnCH", 1, 58, 58),
    ("epan", "EPAN", 1, 59, 59),
    ("hwu059", "HWU059", 1, 60, 60),
    ("hwu060", "HWU060", 1, 61, 61),
    ("hwu061", "HWU061", 1, 62, 62),
    ("hwu062", "HWU062", 1, 63, 63),
    # word 2
    ("nscfg1", "NSCFG1", 2, 0, 0),
    ("had1", "HAD1", 2, 1, 1),
    ("e0pd1", "E0PD1", 2, 2, 2),
    ("aie", "AIE", 2, 3, 3),
    ("ttb1", "TTB1", 2, 55, 4),
    ("ds", "DS", 2, 58, 58),
    ("pie", "PIE", 2, 59, 59),
    ("hwu159", "HWU159", 2, 60, 60),
    ("hwu160", "HWU160", 2, 61, 61),
    ("hwu161", "HWU161", 2, 62, 62),
    ("hwu162", "HWU162", 2, 63, 63),
    # words 3-7
    ("mair0", "MAIR0", 3, 31, 0),
    ("mair1", "MAIR1", 3, 63, 32),
    ("amair0", "AMAIR0", 4, 31, 0),
    ("amair1", "AMAIR1", 4, 63, 32),
    ("impl_def", "IMPLEMENTATION_DEFINED", 5, 31, 0),
    ("partid", "PARTID", 5, 47, 32),
    ("pmg", "PMG", 5, 55, 48),
    ("piiu", "PIIU", 6, 47, 0),
    ("piip", "PIIP", 7, 47, 0),
)
_ADDRESSES = {"ttb0", "ttb1"}

CD_LAYOUT = Layout(
    "CD",
    8,
    (
        Field(name, label, word, msb, lsb, name in _ADDRESSES)
        for name, label, word, msb, lsb in _FIELDS
    ),
)

TG0_GRANULE = {0: 4096, 1: 65536, 2: 16384}
"""CD.TG0 encoding to granule size (0b11 reserved)."""
TG1_GRANULE = {1: 16384, 2: 4096, 3: 65536}
"""CD.TG1 encoding to granule size (0b00 reserved; differs from TG0, as in TCR_EL1)."""


@dataclass(frozen=True)
class Cd(Packed):
    """One Context Descriptor; every field defaults to 0 (an invalid CD)."""

    LAYOUT: ClassVar[Layout] = CD_LAYOUT
    t0sz: int = 0
    tg0: int = 0
    ir0: int = 0
    or0: int = 0
    sh0: int = 0
    epd0: bool = False
    endi: bool = False
    t1sz: int = 0
    tg1: int = 0
    ir1: int = 0
    or1: int = 0
    sh1: int = 0
    epd1: bool = False
    v: bool = False
    ips: int = 0
    affd: bool = False
    wxn: bool = False
    uwxn: bool = False
    tbi0: bool = False
    tbi1: bool = False
    pan: bool = False
    aa64: bool = False
    hd: bool = False
    ha: bool = False
    s: bool = False
    r: bool = False
    a: bool = False
    aset: bool = False
    asid: int = 0
    nscfg0: bool = False
    had0: bool = False
    e0pd0: bool = False
    haft: bool = False
    ttb0: int = 0
    pnch: bool = False
    epan: bool = False
    hwu059: bool = False
    hwu060: bool = False
    hwu061: bool = False
    hwu062: bool = False
    nscfg1: bool = False
    had1: bool = False
    e0pd1: bool = False
    aie: bool = False
    ttb1: int = 0
    ds: bool = False
    pie: bool = False
    hwu159: bool = False
    hwu160: bool = False
    hwu161: bool = False
    hwu162: bool = False
    mair0: int = 0
    mair1: int = 0
    amair0: int = 0
    amair1: int = 0
    impl_def: int = 0
    partid: int = 0
    pmg: int = 0
    piiu: int = 0
    piip: int = 0

    @property
    def mair(self) -> int:
        """MAIR1:MAIR0 as the 64-bit MAIR_EL1-style value."""
        return self.mair1 << 32 | self.mair0

    def encode(self) -> bytes:
        """The 64-byte little-endian CD."""
        return CD_LAYOUT.to_bytes(self.to_words())


def decode_cd(data: WordsLike) -> Cd:
    """Decode 64 bytes (or 8 words); DecodeError for RES0 bits and reserved encodings.

    Granule encodings are only checked for a valid CD and a walk that is not disabled
    (EPDx == 0), where the spec does not make them IGNORED.
    """
    cd = Cd(**CD_LAYOUT.unpack(CD_LAYOUT.words(data)))
    if not cd.v:
        return cd
    if not cd.epd0 and cd.tg0 not in TG0_GRANULE:
        raise reserved_value("CD.TG0", cd.tg0, 2)
    if not cd.epd1 and cd.tg1 not in TG1_GRANULE:
        raise reserved_value("CD.TG1", cd.tg1, 2)
    if cd.haft and not cd.ha:
        raise DecodeError("CD.HAFT", "set while CD.HA == 0 (ILLEGAL)")
    return cd


def encode_cd(cd: Cd) -> bytes:
    """The 64-byte little-endian CD; EncodeError for a field that does not fit."""
    return cd.encode()


LINUX_MAIR = 0xF404_FF44
"""MAIR io-pgtable-arm gives stage 1: NC, WBRWA, Device-nGnRE, iNC-oWBRWA."""


def make_s1_cd(
    ttb0: int,
    asid: int,
    *,
    t0sz: int = 64 - 48,
    tg0: int = 0,
    ips: int = 5,
    mair: int = LINUX_MAIR,
    ha: bool = False,
    hd: bool = False,
) -> Cd:
    """A valid AArch64 stage 1 CD in the style of the kernel's arm_smmu_make_s1_cd().

    TTB0 walks with inner/outer write-back and inner-shareable attributes, TTB1 disabled,
    faults recorded and aborted (R = A = 1), ASET = 1 (not shared with the CPU).
    """
    return Cd(
        t0sz=t0sz,
        tg0=tg0,
        ir0=1,
        or0=1,
        sh0=3,
        epd1=True,
        v=True,
        ips=ips,
        tbi0=False,
        aa64=True,
        ha=ha,
        hd=hd,
        r=True,
        a=True,
        aset=True,
        asid=asid,
        ttb0=ttb0,
        mair0=mair & 0xFFFF_FFFF,
        mair1=mair >> 32,
    )
