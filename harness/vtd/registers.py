"""VT-d capability (CAP_REG, offset 0x08) and extended capability (ECAP_REG, 0x10) registers.

Bit positions follow the VT-d spec (rev 4.x/5.0, section 11.4.2/11.4.3) and agree with the
kernel's ``cap_*`` / ``ecap_*`` macros in ``drivers/iommu/intel/iommu.h``. Field names are
the spec's, lower-cased; ``flts``/``slts``/``slads`` alias the newer ``fsts``/``ssts``/
``ssads``. Multi-bit fields hold the raw encoding (``mgaw`` is width - 1, ``nfr`` is
count - 1, ``fro``/``iro`` are offsets / 16); derived helpers give the decoded meaning.

Reserved bits: ``decode(value)`` keeps them in the ``reserved`` field (raw, in place) so
``Cap.decode(x).encode() == x`` for every 64-bit ``x`` - newer hardware or QEMU may set
bits this version does not name. ``decode(value, strict=True)`` rejects them instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Self

from harness.errors import DecodeError, EncodeError
from harness.vtd._bits import Bits, Layout, bit, check_u64

_CAP_FIELDS = (
    Bits("nd", "ND", 0, 0, 2),
    bit("afl", "AFL", 0, 3),
    bit("rwbf", "RWBF", 0, 4),
    bit("plmr", "PLMR", 0, 5),
    bit("phmr", "PHMR", 0, 6),
    bit("cm", "CM", 0, 7),
    Bits("sagaw", "SAGAW", 0, 8, 12),
    Bits("mgaw", "MGAW", 0, 16, 21),
    bit("zlr", "ZLR", 0, 22),
    Bits("fro", "FRO", 0, 24, 33),
    Bits("sllps", "SLLPS", 0, 34, 37),
    bit("psi", "PSI", 0, 39),
    Bits("nfr", "NFR", 0, 40, 47),
    Bits("mamv", "MAMV", 0, 48, 53),
    bit("dwd", "DWD", 0, 54),
    bit("drd", "DRD", 0, 55),
    bit("fs1gp", "FS1GP", 0, 56),
    bit("pi", "PI", 0, 59),
    bit("fs5lp", "FS5LP", 0, 60),
    bit("ecmds", "ECMDS", 0, 61),
    bit("esirtps", "ESIRTPS", 0, 62),
    bit("esrtps", "ESRTPS", 0, 63),
)

_ECAP_FIELDS = (
    bit("c", "C", 0, 0),
    bit("qi", "QI", 0, 1),
    bit("dt", "DT", 0, 2),
    bit("ir", "IR", 0, 3),
    bit("eim", "EIM", 0, 4),
    bit("pt", "PT", 0, 6),
    bit("sc", "SC", 0, 7),
    Bits("iro", "IRO", 0, 8, 17),
    Bits("mhmv", "MHMV", 0, 20, 23),
    bit("mts", "MTS", 0, 25),
    bit("nest", "NEST", 0, 26),
    bit("prs", "PRS", 0, 29),
    bit("ers", "ERS", 0, 30),
    bit("srs", "SRS", 0, 31),
    bit("nwfs", "NWFS", 0, 33),
    bit("eafs", "EAFS", 0, 34),
    Bits("pss", "PSS", 0, 35, 39),
    bit("pasid", "PASID", 0, 40),
    bit("dit", "DIT", 0, 41),
    bit("pds", "PDS", 0, 42),
    bit("smts", "SMTS", 0, 43),
    bit("vcs", "VCS", 0, 44),
    bit("ssads", "SSADS", 0, 45),
    bit("ssts", "SSTS", 0, 46),
    bit("fsts", "FSTS", 0, 47),
    bit("smpwcs", "SMPWCS", 0, 48),
    bit("rps", "RPS", 0, 49),
    bit("pms", "PMS", 0, 51),
    bit("adms", "ADMS", 0, 52),
    bit("rprivs", "RPRIVS", 0, 53),
)


class _Register:
    """Shared decode/encode of a 64-bit register described by ``LAYOUT``."""

    LAYOUT: ClassVar[Layout]
    reserved: int

    @classmethod
    def decode(cls, value: int, *, strict: bool = False) -> Self:
        """Decode a register value; ``strict`` rejects reserved bits and impossible values."""
        raw = check_u64(cls.LAYOUT.struct_name, value)
        obj = cls(**cls.LAYOUT.unpack([raw], keep_reserved=not strict))
        if strict:
            obj.check()
        return obj

    def check(self) -> None:
        """Raise ``DecodeError`` for field values the spec reserves."""

    def encode(self) -> int:
        """The 64-bit register value."""
        values: dict[str, Any] = {f.attr: getattr(self, f.attr) for f in self.LAYOUT.fields}
        if not isinstance(self.reserved, int) or isinstance(self.reserved, bool):
            raise EncodeError(f"{self.LAYOUT.struct_name}.reserved", "expected an int")
        return self.LAYOUT.pack(values, reserved=self.reserved)[0]

    def fields(self) -> dict[str, int]:
        """Spec field name to raw value, e.g. ``{"SAGAW": 6, ...}`` (reserved excluded)."""
        return {f.name: int(getattr(self, f.attr)) for f in self.LAYOUT.fields}


@dataclass(frozen=True)
class Cap(_Register):
    """Capability register (CAP_REG)."""

    LAYOUT: ClassVar[Layout] = Layout("CAP_REG", 1, _CAP_FIELDS)

    nd: int = 0
    afl: bool = False
    rwbf: bool = False
    plmr: bool = False
    phmr: bool = False
    cm: bool = False
    sagaw: int = 0
    mgaw: int = 0
    zlr: bool = False
    fro: int = 0
    sllps: int = 0
    psi: bool = False
    nfr: int = 0
    mamv: int = 0
    dwd: bool = False
    drd: bool = False
    fs1gp: bool = False
    pi: bool = False
    fs5lp: bool = False
    ecmds: bool = False
    esirtps: bool = False
    esrtps: bool = False
    reserved: int = 0

    @property
    def domain_id_bits(self) -> int:
        """Width of a domain ID: 4 + 2 * ND (ND=7 is reserved)."""
        return 4 + 2 * self.nd

    @property
    def num_domains(self) -> int:
        """Number of domain IDs the hardware supports (kernel ``cap_ndoms``)."""
        return 1 << self.domain_id_bits

    @property
    def max_guest_address_width(self) -> int:
        """MGAW decoded: the largest input address width, in bits (kernel ``cap_mgaw``)."""
        return self.mgaw + 1

    @property
    def supported_agaws(self) -> tuple[int, ...]:
        """AGAW encodings set in SAGAW (bit n: n = 1 is 39-bit/3-level, 2 is 48-bit/4-level)."""
        return tuple(n for n in range(5) if self.sagaw >> n & 1)

    @property
    def supported_address_widths(self) -> tuple[int, ...]:
        """Second-stage address widths from SAGAW, e.g. ``(39, 48)``."""
        return tuple(30 + 9 * n for n in self.supported_agaws)

    @property
    def supported_levels(self) -> tuple[int, ...]:
        """Second-stage page-table depths from SAGAW, e.g. ``(3, 4)``."""
        return tuple(2 + n for n in self.supported_agaws)

    @property
    def second_stage_page_sizes(self) -> tuple[int, ...]:
        """Page sizes in bytes: 4 KiB plus the SLLPS large pages (2 MiB, 1 GiB, ...)."""
        return (4096, *(1 << (21 + 9 * n) for n in range(4) if self.sllps >> n & 1))

    @property
    def fault_recording_offset(self) -> int:
        """Byte offset of the first fault-recording register (kernel ``cap_fault_reg_offset``)."""
        return self.fro * 16

    @property
    def num_fault_records(self) -> int:
        """Number of fault-recording registers (kernel ``cap_num_fault_regs``)."""
        return self.nfr + 1

    @property
    def fault_recording_end(self) -> int:
        """Byte offset just past the last fault-recording register."""
        return self.fault_recording_offset + 16 * self.num_fault_records

    @property
    def fault_record_offsets(self) -> tuple[int, ...]:
        """Byte offset of each 16-byte fault-recording register."""
        return tuple(self.fault_recording_offset + 16 * i for i in range(self.num_fault_records))

    @property
    def fl1gp(self) -> bool:
        """Older name of FS1GP (kernel ``cap_fl1gp_support``)."""
        return self.fs1gp

    @property
    def fl5lp(self) -> bool:
        """Older name of FS5LP (kernel ``cap_fl5lp_support``)."""
        return self.fs5lp

    def check(self) -> None:
        """Reject ND=7 and the reserved SAGAW encodings (bit 0: 30-bit, bit 4: 66-bit)."""
        if self.nd == 7:
            raise DecodeError("CAP_REG.ND", "reserved value 7")
        if self.sagaw & 0b10001:
            raise DecodeError("CAP_REG.SAGAW", f"reserved encoding bits set in {self.sagaw:#07b}")


@dataclass(frozen=True)
class Ecap(_Register):
    """Extended capability register (ECAP_REG)."""

    LAYOUT: ClassVar[Layout] = Layout("ECAP_REG", 1, _ECAP_FIELDS)

    c: bool = False
    qi: bool = False
    dt: bool = False
    ir: bool = False
    eim: bool = False
    pt: bool = False
    sc: bool = False
    iro: int = 0
    mhmv: int = 0
    mts: bool = False
    nest: bool = False
    prs: bool = False
    ers: bool = False
    srs: bool = False
    nwfs: bool = False
    eafs: bool = False
    pss: int = 0
    pasid: bool = False
    dit: bool = False
    pds: bool = False
    smts: bool = False
    vcs: bool = False
    ssads: bool = False
    ssts: bool = False
    fsts: bool = False
    smpwcs: bool = False
    rps: bool = False
    pms: bool = False
    adms: bool = False
    rprivs: bool = False
    reserved: int = 0

    @property
    def iotlb_register_offset(self) -> int:
        """Byte offset of the IOTLB registers (kernel ``ecap_iotlb_offset``)."""
        return self.iro * 16

    @property
    def max_pasid_bits(self) -> int:
        """PASID width supported: PSS + 1 (meaningful when PASID is set)."""
        return self.pss + 1

    @property
    def max_handle_mask(self) -> int:
        """Largest interrupt-entry-cache index mask (kernel ``ecap_max_handle_mask``)."""
        return self.mhmv

    @property
    def flts(self) -> bool:
        """Older name of FSTS (kernel ``ecap_flts``): first-stage translation."""
        return self.fsts

    @property
    def slts(self) -> bool:
        """Older name of SSTS (kernel ``ecap_slts``): second-stage translation."""
        return self.ssts

    @property
    def slads(self) -> bool:
        """Older name of SSADS (kernel ``ecap_slads``)."""
        return self.ssads

    @property
    def nest_parent_supported(self) -> bool:
        """Kernel ``nested_supported`` plus its SSTS check: IOMMU_HWPT_ALLOC_NEST_PARENT works."""
        return self.smts and self.nest and self.ssts

    @property
    def dirty_tracking_supported(self) -> bool:
        """Kernel ``ssads_supported``: IOMMU_HWPT_ALLOC_DIRTY_TRACKING works."""
        return self.smts and self.ssads and self.smpwcs

    @property
    def pasid_supported(self) -> bool:
        """Kernel ``pasid_supported``: scalable mode with PASID."""
        return self.smts and self.pasid

    @property
    def first_stage_supported(self) -> bool:
        """Scalable mode with first-stage translation (what x-flts gives)."""
        return self.smts and self.fsts
