"""Stream Table Entries (64 bytes, 8 x 64-bit words): build, encode and decode.

Field positions follow the SMMUv3 specification, section 5.2 (including the SMMUv3.2-3.4
additions); those the kernel uses were cross-checked against the STRTAB_STE_* masks in
arm-smmu-v3.h. Address fields (S1ContextPtr, S2TTB, ...) hold the address itself, with the
bits below the field zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from harness.errors import DecodeError

from ._bits import Field, Layout, Packed, WordsLike, reserved_value


class SteConfig(IntEnum):
    """STE.Config."""

    ABORT = 0b000
    BYPASS = 0b100
    S1_TRANS = 0b101
    S2_TRANS = 0b110
    NESTED = 0b111


class S1Fmt(IntEnum):
    """STE.S1Fmt: layout of the CD table S1ContextPtr points to."""

    LINEAR = 0
    L2_4K = 1
    L2_64K = 2


class S1Dss(IntEnum):
    """STE.S1DSS: what a transaction without a SubstreamID uses."""

    TERMINATE = 0
    BYPASS = 1
    SSID0 = 2


class Eats(IntEnum):
    """STE.EATS: ATS translation requests and translated traffic."""

    ABORT = 0
    FULL = 1
    SPLIT_STAGE = 2
    FULL_DPT = 3


class Strw(IntEnum):
    """STE.STRW for a Non-secure STE."""

    NS_EL1 = 0
    EL2 = 2


_FIELDS = (
    # word 0
    ("v", "V", 0, 0, 0),
    ("config", "Config", 0, 3, 1),
    ("s1fmt", "S1Fmt", 0, 5, 4),
    ("s1_context_ptr", "S1ContextPtr", 0, 55, 6),
    ("s1cdmax", "S1CDMax", 0, 63, 59),
    # word 1
    ("s1dss", "S1DSS", 1, 1, 0),
    ("s1cir", "S1CIR", 1, 3, 2),
    ("s1cor", "S1COR", 1, 5, 4),
    ("s1csh", "S1CSH", 1, 7, 6),
    ("s2hwu59", "S2HWU59", 1, 8, 8),
    ("s2hwu60", "S2HWU60", 1, 9, 9),
    ("s2hwu61", "S2HWU61", 1, 10, 10),
    ("s2hwu62", "S2HWU62", 1, 11, 11),
    ("dre", "DRE", 1, 12, 12),
    ("cont", "CONT", 1, 16, 13),
    ("dcp", "DCP", 1, 17, 17),
    ("ppar", "PPAR", 1, 18, 18),
    ("mev", "MEV", 1, 19, 19),
    ("sw_reserved", "SW_RESERVED", 1, 23, 20),
    ("s1pie", "S1PIE", 1, 24, 24),
    ("s2fwb", "S2FWB", 1, 25, 25),
    ("s1mpam", "S1MPAM", 1, 26, 26),
    ("s1stalld", "S1STALLD", 1, 27, 27),
    ("eats", "EATS", 1, 29, 28),
    ("strw", "STRW", 1, 31, 30),
    ("memattr", "MemAttr", 1, 35, 32),
    ("mtcfg", "MTCFG", 1, 36, 36),
    ("alloccfg", "ALLOCCFG", 1, 40, 37),
    ("shcfg", "SHCFG", 1, 45, 44),
    ("nscfg", "NSCFG", 1, 47, 46),
    ("privcfg", "PRIVCFG", 1, 49, 48),
    ("instcfg", "INSTCFG", 1, 51, 50),
    ("impl_def1", "IMPLEMENTATION_DEFINED[127:116]", 1, 63, 52),
    # word 2
    ("s2vmid", "S2VMID", 2, 15, 0),
    ("impl_def2", "IMPLEMENTATION_DEFINED[159:144]", 2, 31, 16),
    ("s2t0sz", "S2T0SZ", 2, 37, 32),
    ("s2sl0", "S2SL0", 2, 39, 38),
    ("s2ir0", "S2IR0", 2, 41, 40),
    ("s2or0", "S2OR0", 2, 43, 42),
    ("s2sh0", "S2SH0", 2, 45, 44),
    ("s2tg", "S2TG", 2, 47, 46),
    ("s2ps", "S2PS", 2, 50, 48),
    ("s2aa64", "S2AA64", 2, 51, 51),
    ("s2endi", "S2ENDI", 2, 52, 52),
    ("s2affd", "S2AFFD", 2, 53, 53),
    ("s2ptw", "S2PTW", 2, 54, 54),
    ("s2hd", "S2HD", 2, 55, 55),
    ("s2ha", "S2HA", 2, 56, 56),
    ("s2s", "S2S", 2, 57, 57),
    ("s2r", "S2R", 2, 58, 58),
    ("s2haft", "S2HAFT", 2, 59, 59),
    ("s2pie", "S2PIE", 2, 60, 60),
    ("s2poe", "S2POE", 2, 61, 61),
    ("dpt_vmatch", "DPT_VMATCH", 2, 63, 62),
    # word 3
    ("s2nsw", "S2NSW", 3, 0, 0),
    ("s2nsa", "S2NSA", 3, 1, 1),
    ("s2sl0_2", "S2SL0_2", 3, 2, 2),
    ("s2ds", "S2DS", 3, 3, 3),
    ("s2ttb", "S2TTB", 3, 55, 4),
    ("s2skl", "S2SKL", 3, 62, 61),
    # word 4
    ("impl_def4", "IMPLEMENTATION_DEFINED[271:256]", 4, 15, 0),
    ("partid", "PARTID", 4, 31, 16),
    ("s_s2t0sz", "S_S2T0SZ", 4, 37, 32),
    ("s_s2sl0", "S_S2SL0", 4, 39, 38),
    ("s_s2tg", "S_S2TG", 4, 47, 46),
    ("mecid", "MECID", 4, 63, 48),
    # word 5
    ("pmg", "PMG", 5, 7, 0),
    ("mpam_ns", "MPAM_NS", 5, 8, 8),
    ("assured_only", "AssuredOnly", 5, 9, 9),
    ("tl0", "TL0", 5, 10, 10),
    ("tl1", "TL1", 5, 11, 11),
    ("vms_ptr", "VMSPtr", 5, 55, 12),
    # word 6
    ("s2sw", "S2SW", 6, 0, 0),
    ("s2sa", "S2SA", 6, 1, 1),
    ("s_s2sl0_2", "S_S2SL0_2", 6, 2, 2),
    ("s_s2ttb", "S_S2TTB", 6, 55, 4),
    ("s_s2skl", "S_S2SKL", 6, 62, 61),
    # word 7
    ("s2poi", "S2POI", 7, 63, 0),
)
_ADDRESSES = {"s1_context_ptr", "s2ttb", "vms_ptr", "s_s2ttb"}

STE_LAYOUT = Layout(
    "STE",
    8,
    (
        Field(name, label, word, msb, lsb, name in _ADDRESSES)
        for name, label, word, msb, lsb in _FIELDS
    ),
)


@dataclass(frozen=True)
class Ste(Packed):
    """One Stream Table Entry; every field defaults to 0 (an invalid STE)."""

    LAYOUT: ClassVar[Layout] = STE_LAYOUT
    v: bool = False
    config: int = 0
    s1fmt: int = 0
    s1_context_ptr: int = 0
    s1cdmax: int = 0
    s1dss: int = 0
    s1cir: int = 0
    s1cor: int = 0
    s1csh: int = 0
    s2hwu59: bool = False
    s2hwu60: bool = False
    s2hwu61: bool = False
    s2hwu62: bool = False
    dre: bool = False
    cont: int = 0
    dcp: bool = False
    ppar: bool = False
    mev: bool = False
    sw_reserved: int = 0
    s1pie: bool = False
    s2fwb: bool = False
    s1mpam: bool = False
    s1stalld: bool = False
    eats: int = 0
    strw: int = 0
    memattr: int = 0
    mtcfg: bool = False
    alloccfg: int = 0
    shcfg: int = 0
    nscfg: int = 0
    privcfg: int = 0
    instcfg: int = 0
    impl_def1: int = 0
    s2vmid: int = 0
    impl_def2: int = 0
    s2t0sz: int = 0
    s2sl0: int = 0
    s2ir0: int = 0
    s2or0: int = 0
    s2sh0: int = 0
    s2tg: int = 0
    s2ps: int = 0
    s2aa64: bool = False
    s2endi: bool = False
    s2affd: bool = False
    s2ptw: bool = False
    s2hd: bool = False
    s2ha: bool = False
    s2s: bool = False
    s2r: bool = False
    s2haft: bool = False
    s2pie: bool = False
    s2poe: bool = False
    dpt_vmatch: int = 0
    s2nsw: bool = False
    s2nsa: bool = False
    s2sl0_2: bool = False
    s2ds: bool = False
    s2ttb: int = 0
    s2skl: int = 0
    impl_def4: int = 0
    partid: int = 0
    s_s2t0sz: int = 0
    s_s2sl0: int = 0
    s_s2tg: int = 0
    mecid: int = 0
    pmg: int = 0
    mpam_ns: bool = False
    assured_only: bool = False
    tl0: bool = False
    tl1: bool = False
    vms_ptr: int = 0
    s2sw: bool = False
    s2sa: bool = False
    s_s2sl0_2: bool = False
    s_s2ttb: int = 0
    s_s2skl: int = 0
    s2poi: int = 0

    @property
    def stage1(self) -> bool:
        """Stage 1 translates (Config 0b1x1)."""
        return self.v and self.config in (SteConfig.S1_TRANS, SteConfig.NESTED)

    @property
    def stage2(self) -> bool:
        """Stage 2 translates (Config 0b11x)."""
        return self.v and self.config in (SteConfig.S2_TRANS, SteConfig.NESTED)

    @property
    def config_name(self) -> str:
        """ "INVALID" when V == 0, otherwise the SteConfig name."""
        return SteConfig(self.config).name if self.v else "INVALID"

    def encode(self) -> bytes:
        """The 64-byte little-endian STE."""
        return STE_LAYOUT.to_bytes(self.to_words())


def decode_ste(data: WordsLike) -> Ste:
    """Decode 64 bytes (or 8 words); DecodeError for RES0 bits and reserved encodings.

    Encodings are only checked where the spec does not make the field IGNORED: nothing
    but RES0 when V == 0, stage 1 fields only when stage 1 translates, and so on.
    """
    ste = Ste(**STE_LAYOUT.unpack(STE_LAYOUT.words(data)))
    if not ste.v:
        return ste
    if ste.config not in SteConfig.__members__.values():
        raise reserved_value("STE.Config", ste.config, 3)
    if ste.stage1:
        if ste.s1cdmax > 20:
            raise DecodeError("STE.S1CDMax", f"{ste.s1cdmax} exceeds SSIDSIZE's maximum 20")
        if ste.s1cdmax and ste.s1fmt == 3:
            raise reserved_value("STE.S1Fmt", ste.s1fmt, 2)
        if ste.s1cdmax and ste.s1dss == 3:
            raise reserved_value("STE.S1DSS", ste.s1dss, 2)
        if ste.config == SteConfig.S1_TRANS and ste.strw & 1:
            raise reserved_value("STE.STRW", ste.strw, 2)
    if ste.stage2 and ste.s2tg == 3:
        raise reserved_value("STE.S2TG", ste.s2tg, 2)
    return ste


def encode_ste(ste: Ste) -> bytes:
    """The 64-byte little-endian STE; EncodeError for a field that does not fit."""
    return ste.encode()


def abort_ste() -> Ste:
    """Valid STE that aborts all traffic without recording events."""
    return Ste(v=True, config=SteConfig.ABORT)


def bypass_ste(*, shcfg: int = 1) -> Ste:
    """Valid STE that bypasses both stages (SHCFG "use incoming" like the kernel)."""
    return Ste(v=True, config=SteConfig.BYPASS, shcfg=shcfg)


def s1_ste(
    cd_table: int,
    *,
    s1fmt: int = S1Fmt.LINEAR,
    s1cdmax: int = 0,
    s1dss: int = S1Dss.SSID0,
    s1cir: int = 1,
    s1cor: int = 1,
    s1csh: int = 3,
    eats: int = Eats.ABORT,
    s1stalld: bool = False,
    strw: int = Strw.NS_EL1,
    shcfg: int = 0,
) -> Ste:
    """Stage 1 STE pointing at a CD table, with the attributes the kernel programs.

    S1STALLD must stay 0 on an SMMU without a configurable stall model (QEMU's), where
    setting it is ILLEGAL.
    """
    return Ste(
        v=True,
        config=SteConfig.S1_TRANS,
        s1fmt=s1fmt,
        s1_context_ptr=cd_table,
        s1cdmax=s1cdmax,
        s1dss=s1dss,
        s1cir=s1cir,
        s1cor=s1cor,
        s1csh=s1csh,
        eats=eats,
        s1stalld=s1stalld,
        strw=strw,
        shcfg=shcfg,
    )


def s2_ste(
    vmid: int,
    s2ttb: int,
    *,
    t0sz: int = 64 - 48,
    sl0: int = 2,
    tg: int = 0,
    ps: int = 5,
    s2ir0: int = 1,
    s2or0: int = 1,
    s2sh0: int = 3,
    s2r: bool = True,
    s2ptw: bool = True,
    s2fwb: bool = False,
) -> Ste:
    """Stage 2 STE (VMSAv8-64, little-endian) for `vmid` with tables at `s2ttb`."""
    return Ste(
        v=True,
        config=SteConfig.S2_TRANS,
        shcfg=1,
        s2vmid=vmid,
        s2t0sz=t0sz,
        s2sl0=sl0,
        s2ir0=s2ir0,
        s2or0=s2or0,
        s2sh0=s2sh0,
        s2tg=tg,
        s2ps=ps,
        s2aa64=True,
        s2r=s2r,
        s2ptw=s2ptw,
        s2fwb=s2fwb,
        s2ttb=s2ttb,
    )
