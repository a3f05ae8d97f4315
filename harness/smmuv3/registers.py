"""SMMUv3 ID registers (SMMU_IDR0-5, IIDR, AIDR) as frozen dataclasses, and hw_info decoding.

Bit positions follow the SMMUv3 architecture specification (IHI 0070, section 6.3) and were
cross-checked against the IDR* masks in drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.h.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from harness.errors import DecodeError

from ._bits import Field, Layout, Packed, reserved_value

OAS_BITS = {0: 32, 1: 36, 2: 40, 3: 42, 4: 44, 5: 48, 6: 52, 7: 56}
"""SMMU_IDR5.OAS (and STE.S2PS, CD.IPS) encoding to address bits."""

REGISTER_NAMES = ("IDR0", "IDR1", "IDR2", "IDR3", "IDR4", "IDR5", "IIDR", "AIDR")


def _reg(name: str, *fields: tuple[str, str, int, int]) -> Layout:
    return Layout(
        f"SMMU_{name}",
        1,
        (Field(attr, label, 0, msb, lsb) for attr, label, msb, lsb in fields),
        word_bits=32,
    )


class _Register(Packed):
    def encode(self) -> int:
        """The register value."""
        return self.to_words()[0]


@dataclass(frozen=True)
class Idr0(_Register):
    """SMMU_IDR0: translation stages, table formats, ATS/PRI, queues' features."""

    LAYOUT: ClassVar[Layout] = _reg(
        "IDR0",
        ("s2p", "S2P", 0, 0),
        ("s1p", "S1P", 1, 1),
        ("ttf", "TTF", 3, 2),
        ("cohacc", "COHACC", 4, 4),
        ("btm", "BTM", 5, 5),
        ("httu", "HTTU", 7, 6),
        ("dormhint", "DORMHINT", 8, 8),
        ("hyp", "HYP", 9, 9),
        ("ats", "ATS", 10, 10),
        ("ns1ats", "NS1ATS", 11, 11),
        ("asid16", "ASID16", 12, 12),
        ("msi", "MSI", 13, 13),
        ("sev", "SEV", 14, 14),
        ("atos", "ATOS", 15, 15),
        ("pri", "PRI", 16, 16),
        ("vmw", "VMW", 17, 17),
        ("vmid16", "VMID16", 18, 18),
        ("cd2l", "CD2L", 19, 19),
        ("vatos", "VATOS", 20, 20),
        ("ttendian", "TTENDIAN", 22, 21),
        ("atsrecerr", "ATSRECERR", 23, 23),
        ("stall_model", "STALL_MODEL", 25, 24),
        ("term_model", "TERM_MODEL", 26, 26),
        ("st_level", "ST_LEVEL", 28, 27),
        ("rme_impl", "RME_IMPL", 30, 30),
    )
    s2p: bool = False
    s1p: bool = False
    ttf: int = 0
    cohacc: bool = False
    btm: bool = False
    httu: int = 0
    dormhint: bool = False
    hyp: bool = False
    ats: bool = False
    ns1ats: bool = False
    asid16: bool = False
    msi: bool = False
    sev: bool = False
    atos: bool = False
    pri: bool = False
    vmw: bool = False
    vmid16: bool = False
    cd2l: bool = False
    vatos: bool = False
    ttendian: int = 0
    atsrecerr: bool = False
    stall_model: int = 0
    term_model: bool = False
    st_level: int = 0
    rme_impl: bool = False

    @property
    def asid_bits(self) -> int:
        """ASID width the SMMU implements (the kernel's smmu->asid_bits)."""
        return 16 if self.asid16 else 8

    @property
    def vmid_bits(self) -> int:
        """VMID width the SMMU implements."""
        return 16 if self.vmid16 else 8


@dataclass(frozen=True)
class Idr1(_Register):
    """SMMU_IDR1: StreamID/SubstreamID sizes, queue sizes, presets and overrides."""

    LAYOUT: ClassVar[Layout] = _reg(
        "IDR1",
        ("sidsize", "SIDSIZE", 5, 0),
        ("ssidsize", "SSIDSIZE", 10, 6),
        ("priqs", "PRIQS", 15, 11),
        ("eventqs", "EVENTQS", 20, 16),
        ("cmdqs", "CMDQS", 25, 21),
        ("attr_perms_ovr", "ATTR_PERMS_OVR", 26, 26),
        ("attr_types_ovr", "ATTR_TYPES_OVR", 27, 27),
        ("rel", "REL", 28, 28),
        ("queues_preset", "QUEUES_PRESET", 29, 29),
        ("tables_preset", "TABLES_PRESET", 30, 30),
        ("ecmdq", "ECMDQ", 31, 31),
    )
    sidsize: int = 0
    ssidsize: int = 0
    priqs: int = 0
    eventqs: int = 0
    cmdqs: int = 0
    attr_perms_ovr: bool = False
    attr_types_ovr: bool = False
    rel: bool = False
    queues_preset: bool = False
    tables_preset: bool = False
    ecmdq: bool = False


@dataclass(frozen=True)
class Idr2(_Register):
    """SMMU_IDR2: base address of the VATOS page."""

    LAYOUT: ClassVar[Layout] = _reg("IDR2", ("ba_vatos", "BA_VATOS", 9, 0))
    ba_vatos: int = 0


@dataclass(frozen=True)
class Idr3(_Register):
    """SMMU_IDR3: optional features (RIL, BBML, FWB, STT, HAD, XNX, ...)."""

    LAYOUT: ClassVar[Layout] = _reg(
        "IDR3",
        ("had", "HAD", 2, 2),
        ("pbha", "PBHA", 3, 3),
        ("xnx", "XNX", 4, 4),
        ("pps", "PPS", 5, 5),
        ("mpam", "MPAM", 7, 7),
        ("fwb", "FWB", 8, 8),
        ("stt", "STT", 9, 9),
        ("ril", "RIL", 10, 10),
        ("bbml", "BBML", 12, 11),
        ("e0pd", "E0PD", 13, 13),
        ("ptwnnc", "PTWNNC", 14, 14),
        ("dpt", "DPT", 15, 15),
        ("pasidtt", "PASIDTT", 16, 16),
        ("epan", "EPAN", 17, 17),
        ("s1pi", "S1PI", 18, 18),
        ("s2pi", "S2PI", 19, 19),
        ("s2po", "S2PO", 20, 20),
        ("the", "THE", 21, 21),
        ("mteperm", "MTEPERM", 22, 22),
        ("aie", "AIE", 23, 23),
    )
    had: bool = False
    pbha: bool = False
    xnx: bool = False
    pps: bool = False
    mpam: bool = False
    fwb: bool = False
    stt: bool = False
    ril: bool = False
    bbml: int = 0
    e0pd: bool = False
    ptwnnc: bool = False
    dpt: bool = False
    pasidtt: bool = False
    epan: bool = False
    s1pi: bool = False
    s2pi: bool = False
    s2po: bool = False
    the: bool = False
    mteperm: bool = False
    aie: bool = False


@dataclass(frozen=True)
class Idr4(_Register):
    """SMMU_IDR4: IMPLEMENTATION DEFINED."""

    LAYOUT: ClassVar[Layout] = _reg("IDR4", ("impl_def", "IMPLEMENTATION_DEFINED", 31, 0))
    impl_def: int = 0


@dataclass(frozen=True)
class Idr5(_Register):
    """SMMU_IDR5: output address size, granules, VA extension, outstanding stalls."""

    LAYOUT: ClassVar[Layout] = _reg(
        "IDR5",
        ("oas", "OAS", 2, 0),
        ("gran4k", "GRAN4K", 4, 4),
        ("gran16k", "GRAN16K", 5, 5),
        ("gran64k", "GRAN64K", 6, 6),
        ("ds", "DS", 7, 7),
        ("d128", "D128", 8, 8),
        ("vax", "VAX", 11, 10),
        ("stall_max", "STALL_MAX", 31, 16),
    )
    oas: int = 0
    gran4k: bool = False
    gran16k: bool = False
    gran64k: bool = False
    ds: bool = False
    d128: bool = False
    vax: int = 0
    stall_max: int = 0

    @property
    def oas_bits(self) -> int:
        """Output address size in bits."""
        return OAS_BITS[self.oas]


@dataclass(frozen=True)
class Iidr(_Register):
    """SMMU_IIDR: implementer, product, variant and revision."""

    LAYOUT: ClassVar[Layout] = _reg(
        "IIDR",
        ("implementer", "Implementer", 11, 0),
        ("revision", "Revision", 15, 12),
        ("variant", "Variant", 19, 16),
        ("product_id", "ProductID", 31, 20),
    )
    implementer: int = 0
    revision: int = 0
    variant: int = 0
    product_id: int = 0


@dataclass(frozen=True)
class Aidr(_Register):
    """SMMU_AIDR: architecture revision (SMMUv3.x)."""

    LAYOUT: ClassVar[Layout] = _reg(
        "AIDR",
        ("arch_minor_rev", "ArchMinorRev", 3, 0),
        ("arch_major_rev", "ArchMajorRev", 7, 4),
    )
    arch_minor_rev: int = 0
    arch_major_rev: int = 0

    @property
    def version(self) -> str:
        """Architecture version, e.g. "3.1"."""
        return f"3.{self.arch_minor_rev}"


def _word(value: int, name: str) -> list[int]:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFF_FFFF:
        raise DecodeError(f"SMMU_{name}", f"{value!r} is not a 32-bit value")
    return [value]


def decode_idr0(value: int) -> Idr0:
    """SMMU_IDR0 fields; DecodeError for RES0 bits or reserved encodings."""
    reg = Idr0(**Idr0.LAYOUT.unpack(_word(value, "IDR0")))
    if reg.ttf == 0:
        raise reserved_value("SMMU_IDR0.TTF", reg.ttf, 2)
    if reg.ttendian == 1:
        raise reserved_value("SMMU_IDR0.TTENDIAN", reg.ttendian, 2)
    if reg.stall_model == 3:
        raise reserved_value("SMMU_IDR0.STALL_MODEL", reg.stall_model, 2)
    if reg.st_level >= 2:
        raise reserved_value("SMMU_IDR0.ST_LEVEL", reg.st_level, 2)
    return reg


def decode_idr1(value: int) -> Idr1:
    """SMMU_IDR1 fields; DecodeError for sizes beyond the architectural maxima."""
    reg = Idr1(**Idr1.LAYOUT.unpack(_word(value, "IDR1")))
    for label, size, limit in (
        ("SIDSIZE", reg.sidsize, 32),
        ("SSIDSIZE", reg.ssidsize, 20),
        ("CMDQS", reg.cmdqs, 19),
        ("EVENTQS", reg.eventqs, 19),
    ):
        if size > limit:
            raise DecodeError(f"SMMU_IDR1.{label}", f"{size} exceeds the maximum {limit}")
    return reg


def decode_idr2(value: int) -> Idr2:
    """SMMU_IDR2 fields; DecodeError for RES0 bits."""
    return Idr2(**Idr2.LAYOUT.unpack(_word(value, "IDR2")))


def decode_idr3(value: int) -> Idr3:
    """SMMU_IDR3 fields; DecodeError for RES0 bits or BBML 0b11."""
    reg = Idr3(**Idr3.LAYOUT.unpack(_word(value, "IDR3")))
    if reg.bbml == 3:
        raise reserved_value("SMMU_IDR3.BBML", reg.bbml, 2)
    return reg


def decode_idr4(value: int) -> Idr4:
    """SMMU_IDR4 (IMPLEMENTATION DEFINED)."""
    return Idr4(**Idr4.LAYOUT.unpack(_word(value, "IDR4")))


def decode_idr5(value: int) -> Idr5:
    """SMMU_IDR5 fields; DecodeError for RES0 bits or VAX 0b11."""
    reg = Idr5(**Idr5.LAYOUT.unpack(_word(value, "IDR5")))
    if reg.vax == 3:
        raise reserved_value("SMMU_IDR5.VAX", reg.vax, 2)
    return reg


def decode_iidr(value: int) -> Iidr:
    """SMMU_IIDR fields."""
    return Iidr(**Iidr.LAYOUT.unpack(_word(value, "IIDR")))


def decode_aidr(value: int) -> Aidr:
    """SMMU_AIDR fields; DecodeError for RES0 bits or an ArchMajorRev other than SMMUv3."""
    reg = Aidr(**Aidr.LAYOUT.unpack(_word(value, "AIDR")))
    if reg.arch_major_rev != 0:
        raise DecodeError("SMMU_AIDR.ArchMajorRev", f"{reg.arch_major_rev} is not SMMUv3 (0)")
    return reg


@dataclass(frozen=True)
class IdRegs:
    """All ID registers of one SMMU, as iommu_hw_info_arm_smmuv3 reports them."""

    idr0: Idr0
    idr1: Idr1
    idr2: Idr2
    idr3: Idr3
    idr4: Idr4
    idr5: Idr5
    iidr: Iidr
    aidr: Aidr

    def encode(self) -> dict[str, int]:
        """Register values keyed "IDR0".."IDR5", "IIDR", "AIDR"."""
        regs = (self.idr0, self.idr1, self.idr2, self.idr3, self.idr4, self.idr5)
        values = {f"IDR{i}": reg.encode() for i, reg in enumerate(regs)}
        values["IIDR"] = self.iidr.encode()
        values["AIDR"] = self.aidr.encode()
        return values


def decode_id_regs(idr: Sequence[int] | Mapping[str, int], iidr: int = 0, aidr: int = 0) -> IdRegs:
    """Decode idr[6] (+ iidr, aidr), or a mapping keyed like `IdRegs.encode()`."""
    if isinstance(idr, Mapping):
        missing = [name for name in REGISTER_NAMES if name not in idr]
        if missing:
            raise DecodeError(f"SMMU_{missing[0]}", "missing")
        values = [idr[f"IDR{i}"] for i in range(6)]
        iidr, aidr = idr["IIDR"], idr["AIDR"]
    else:
        values = list(idr)
        if len(values) != 6:
            raise DecodeError("SMMU_IDR", f"need 6 ID registers, got {len(values)}")
    idr0, idr1 = decode_idr0(values[0]), decode_idr1(values[1])
    if idr0.pri and idr1.priqs > 19:
        raise DecodeError("SMMU_IDR1.PRIQS", f"{idr1.priqs} exceeds the maximum 19")
    return IdRegs(
        idr0,
        idr1,
        decode_idr2(values[2]),
        decode_idr3(values[3]),
        decode_idr4(values[4]),
        decode_idr5(values[5]),
        decode_iidr(iidr),
        decode_aidr(aidr),
    )


HW_INFO_FORMAT = "<II6III"
"""struct iommu_hw_info_arm_smmuv3: flags, __reserved, idr[6], iidr, aidr."""

HW_INFO_ERRATA_REPEAT_TLBI_CFGI = 1 << 0
"""IOMMU_HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI."""


@dataclass(frozen=True)
class SmmuHwInfo:
    """IOMMU_GET_HW_INFO payload for IOMMU_HW_INFO_TYPE_ARM_SMMUV3."""

    flags: int
    regs: IdRegs

    @property
    def errata_repeat_tlbi_cfgi(self) -> bool:
        """The kernel asks the VMM to repeat TLBI/CFGI commands (hardware erratum)."""
        return bool(self.flags & HW_INFO_ERRATA_REPEAT_TLBI_CFGI)


def decode_hw_info(data: bytes | bytearray | memoryview) -> SmmuHwInfo:
    """Decode the 40-byte struct iommu_hw_info_arm_smmuv3."""
    raw = bytes(data)
    size = struct.calcsize(HW_INFO_FORMAT)
    if len(raw) != size:
        raise DecodeError("iommu_hw_info_arm_smmuv3", f"need {size} bytes, got {len(raw)}")
    flags, reserved, *rest = struct.unpack(HW_INFO_FORMAT, raw)
    if reserved:
        raise DecodeError("iommu_hw_info_arm_smmuv3.__reserved", f"must be 0, got {reserved:#x}")
    return SmmuHwInfo(flags, decode_id_regs(rest[:6], rest[6], rest[7]))


def encode_hw_info(info: SmmuHwInfo) -> bytes:
    """The 40-byte struct iommu_hw_info_arm_smmuv3 (for tests and fakes)."""
    values = info.regs.encode()
    idr = [values[f"IDR{i}"] for i in range(6)]
    return struct.pack(HW_INFO_FORMAT, info.flags, 0, *idr, values["IIDR"], values["AIDR"])
