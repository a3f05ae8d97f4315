"""Arm VMSAv8-64 stage-1 tables (TTBR0 only) with 4, 16 and 64 KiB granules, 48-bit OA.

FEAT_LPA / FEAT_LPA2 are off, so blocks exist only at level 1 and 2 for 4 KiB (1 GiB,
2 MiB), level 2 for 16 KiB (32 MiB) and level 2 for 64 KiB (512 MiB); level 0 (4 KiB),
level 1 (16 KiB, 64 GiB) and level 1 (64 KiB, 4 TiB) blocks need 52-bit addressing.
Levels are numbered as the architecture numbers them; the walk starts at
``4 - ceil((64 - T0SZ - granule_bits) / (granule_bits - 3))``.

Entries the builder writes follow Linux io-pgtable-arm stage 1: tables are ``addr | 0b11``
with NSTable/APTable/XNTable clear; leaves set AF, nG, AP[1] (unprivileged access) unless
PRIV, AP[2] unless WRITE, UXN|PXN unless EXEC, AttrIndx 1 and SH inner shareable by
default (MAIR index 1 = Normal WB RWA in the suggested MAIR). The walker is stricter than
the architecture: RES0 bits it finds set are reported as RESERVED_BIT faults, where
hardware behaviour is CONSTRAINED UNPREDICTABLE.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from harness.errors import DecodeError, EncodeError
from harness.pgtable.base import EMPTY, LEAF, TABLE, PageTable, size_name
from harness.pgtable.common import Fault, FaultKind, Level, Perms, Translation

VALID, TYPE_TABLE = 1, 2
NS, AP1, AP2, AF, NG = 1 << 5, 1 << 6, 1 << 7, 1 << 10, 1 << 11
PXN, UXN = 1 << 53, 1 << 54
NS_TABLE, AP_TABLE_NO_WRITE, AP_TABLE_NO_EL0 = 1 << 63, 1 << 62, 1 << 61
UXN_TABLE, PXN_TABLE = 1 << 60, 1 << 59
TABLE_ATTRS = NS_TABLE | AP_TABLE_NO_WRITE | AP_TABLE_NO_EL0 | UXN_TABLE | PXN_TABLE
SH_NON, SH_OUTER, SH_INNER = 0, 2, 3
NT_BIT = 1 << 16

GRANULE_BITS = {4096: 12, 16384: 14, 65536: 16}
TG0 = {4096: 0b00, 65536: 0b01, 16384: 0b10}
IPS = {32: 0b000, 36: 0b001, 40: 0b010, 42: 0b011, 44: 0b100, 48: 0b101}
BLOCK_LEVELS = {12: (1, 2), 14: (2,), 16: (2,)}
MAIR_SUGGESTED = 0xF404FF44
"""Linux's MAIR: 0 Normal non-cacheable, 1 Normal WB RWA, 2 Device-nGnRE, 3 inner NC outer WB."""

# SMMUv3 event types for stage-1 translation faults.
F_TRANSLATION, F_ADDR_SIZE, F_ACCESS, F_PERMISSION = 0x10, 0x11, 0x12, 0x13

_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class ArmAttrs:
    """Leaf attributes besides rights: MAIR index, shareability, NS, nG and AF."""

    attr_index: int = 1
    sh: int = SH_INNER
    ns: bool = False
    ng: bool = True
    af: bool = True


@dataclass(frozen=True)
class ArmStage1Config:
    """Values for TCR_EL1 / an SMMUv3 context descriptor to use these tables."""

    ttb0: int
    t0sz: int
    tg0: int
    ips: int
    ips_bits: int
    start_level: int
    mair: int = MAIR_SUGGESTED
    sh0: int = SH_INNER
    irgn0: int = 0b01
    orgn0: int = 0b01
    epd1: bool = True


def arm_geometry(granule: int, t0sz: int, *, ttst: bool = False) -> tuple[Level, ...]:
    """The radix tree for ``granule`` and input size ``64 - t0sz``, root first."""
    g = GRANULE_BITS.get(granule)
    if g is None:
        raise EncodeError("granule", f"{granule:#x} is not 4, 16 or 64 KiB")
    max_t0sz = (47 if granule == 65536 else 48) if ttst else 39
    if not 16 <= t0sz <= max_t0sz:
        raise EncodeError("t0sz", f"{t0sz} is outside 16..{max_t0sz}")
    stride = g - 3
    input_bits = 64 - t0sz
    start = 4 - -(-(input_bits - g) // stride)
    geometry = []
    for number in range(start, 4):
        shift = g + (3 - number) * stride
        bits = input_bits - shift if number == start else stride
        leaf = number == 3 or number in BLOCK_LEVELS[g]
        geometry.append(Level(number=number, shift=shift, entries=1 << bits, leaf=leaf))
    return tuple(geometry)


def _res0_mask(g: int, shift: int, block: bool) -> int:
    mask = 0b11 << 48
    if g == 14:
        mask |= 0b11 << 12
    if block:
        mask |= ((1 << shift) - 1) & ~((1 << g) - 1) & ~NT_BIT
    return mask


def walk_arm(
    memory: bytes | bytearray | memoryview,
    base: int,
    ttb: int,
    iova: int,
    *,
    granule: int = 4096,
    t0sz: int = 16,
    ips: int = 48,
    ttst: bool = False,
    access: Perms | None = None,
) -> Translation[ArmAttrs] | Fault:
    """Walk stage-1 tables held in ``memory`` (at address ``base``) from ``ttb``.

    Returns a Fault for anything the SMMU would fault on (assuming HA = HD = 0); raises
    DecodeError only when a table pointer leads outside ``memory``.
    """
    geometry = arm_geometry(granule, t0sz, ttst=ttst)
    g = GRANULE_BITS[granule]
    start = geometry[0].number
    if iova < 0 or iova >> (64 - t0sz):
        reason = f"{iova:#x} is beyond the {64 - t0sz}-bit input range (T0SZ {t0sz})"
        return Fault(iova, start, FaultKind.INPUT_RANGE, reason, F_TRANSLATION)
    if ttb >> ips:
        reason = f"TTB0 {ttb:#x} is beyond the {ips}-bit output range"
        return Fault(iova, start, FaultKind.ADDRESS_SIZE, reason, F_ADDR_SIZE)
    oa_field = ((1 << 48) - 1) & ~((1 << g) - 1)
    beyond_ips = (oa_field & ~((1 << ips) - 1)) | ((0xF << 12) if g == 16 else 0)
    table, inherited = ttb, 0
    for lvl in geometry:
        level = lvl.number
        address = table + ((iova >> lvl.shift) & (lvl.entries - 1)) * 8
        offset = address - base
        if offset < 0 or offset + 8 > len(memory):
            raise DecodeError(
                f"level {level} table",
                f"entry at {address:#x} is outside the memory [{base:#x}, {base + len(memory):#x})",
            )
        entry: int = _U64.unpack_from(memory, offset)[0]

        def fault(kind: FaultKind, reason: str, code: int) -> Fault:
            return Fault(iova, level, kind, reason, code, entry, address)  # noqa: B023

        if not entry & VALID:
            return fault(FaultKind.NOT_PRESENT, f"level {level} descriptor invalid", F_TRANSLATION)
        is_table = bool(entry & TYPE_TABLE) and level < 3
        if level == 3 and not entry & TYPE_TABLE:
            reason = "level 3 descriptor type 0b01 is reserved"
            return fault(FaultKind.INVALID_DESCRIPTOR, reason, F_TRANSLATION)
        if not entry & TYPE_TABLE and not lvl.leaf:
            reason = f"level {level} block not allowed with a {size_name(granule)} granule"
            return fault(FaultKind.INVALID_DESCRIPTOR, reason, F_TRANSLATION)
        if entry & beyond_ips:
            reason = f"level {level} output address bits {entry & beyond_ips:#x} beyond {ips} bits"
            return fault(FaultKind.ADDRESS_SIZE, reason, F_ADDR_SIZE)
        res0 = entry & _res0_mask(g, lvl.shift, not is_table and level < 3)
        if res0:
            reason = f"level {level} descriptor has RES0 bits {res0:#x} set"
            return fault(FaultKind.RESERVED_BIT, reason, F_TRANSLATION)
        if is_table:
            inherited |= entry & TABLE_ATTRS
            table = entry & oa_field
            continue
        if not entry & AF:
            return fault(FaultKind.ACCESS_FLAG, f"level {level} descriptor has AF = 0", F_ACCESS)
        size = lvl.span
        translation = Translation(
            iova=iova,
            output=(entry & oa_field & ~(size - 1)) | (iova & (size - 1)),
            page_size=size,
            level=level,
            perms=_perms(entry, inherited),
            attrs=_decode_attrs(entry, inherited),
            descriptor=entry,
            descriptor_address=address,
        )
        denied = _denied(entry, inherited, access)
        if denied:
            return fault(FaultKind.PERMISSION, denied, F_PERMISSION)
        return translation
    raise AssertionError("unreachable: level 3 descriptors are pages or invalid")


def _decode_attrs(entry: int, inherited: int) -> ArmAttrs:
    return ArmAttrs(
        attr_index=(entry >> 2) & 7,
        sh=(entry >> 8) & 3,
        ns=bool(entry & NS or inherited & NS_TABLE),
        ng=bool(entry & NG),
        af=bool(entry & AF),
    )


def _perms(entry: int, inherited: int) -> Perms:
    privileged_only = not entry & AP1 or bool(inherited & AP_TABLE_NO_EL0)
    perms = Perms.READ
    if not entry & AP2 and not inherited & AP_TABLE_NO_WRITE:
        perms |= Perms.WRITE
    if privileged_only:
        perms |= Perms.PRIV
        if not (entry & PXN or inherited & PXN_TABLE):
            perms |= Perms.EXEC
    elif not (entry & UXN or inherited & UXN_TABLE):
        perms |= Perms.EXEC
    return perms


def _denied(entry: int, inherited: int, access: Perms | None) -> str | None:
    """Why a request of kind ``access`` may not use this leaf, or None."""
    if access is None:
        return None
    read_only = bool(entry & AP2 or inherited & AP_TABLE_NO_WRITE)
    if access & Perms.PRIV:
        if access & Perms.WRITE and read_only:
            return "privileged write to a read-only page"
        el0_writable = entry & (AP1 | AP2) == AP1
        if access & Perms.EXEC and (entry & PXN or inherited & PXN_TABLE or el0_writable):
            return "privileged execute from a PXN (or EL0-writable) page"
        return None
    if not entry & AP1 or inherited & AP_TABLE_NO_EL0:
        return "unprivileged access to a privileged-only page (AP[1] = 0)"
    if access & Perms.WRITE and read_only:
        return "unprivileged write to a read-only page"
    if access & Perms.EXEC and (entry & UXN or inherited & UXN_TABLE):
        return "unprivileged execute from a UXN page"
    return None


class ArmPageTable(PageTable[ArmAttrs]):
    """VMSAv8-64 stage-1 TTBR0 tables, built in a byte buffer."""

    def __init__(
        self,
        memory: bytearray | int,
        base: int,
        *,
        granule: int = 4096,
        t0sz: int = 16,
        ips: int = 48,
        ttst: bool = False,
    ) -> None:
        if ips not in IPS:
            raise EncodeError("ips", f"{ips} bits is not one of {sorted(IPS)} (52 needs LPA)")
        self.granule = granule
        self.t0sz = t0sz
        self.ips = ips
        self.ttst = ttst
        self.input_bits = 64 - t0sz
        geometry = arm_geometry(granule, t0sz, ttst=ttst)
        self._granule_bits = GRANULE_BITS[granule]
        super().__init__(memory, base, granule, geometry, ips)

    @property
    def hw_config(self) -> ArmStage1Config:
        """TTB0 / T0SZ / TG0 / IPS for TCR_EL1 or an SMMUv3 CD, and a matching MAIR."""
        return ArmStage1Config(
            ttb0=self.root,
            t0sz=self.t0sz,
            tg0=TG0[self.granule],
            ips=IPS[self.ips],
            ips_bits=self.ips,
            start_level=self.geometry[0].number,
        )

    def walk(self, iova: int, access: Perms | None = None) -> Translation[ArmAttrs] | Fault:
        """Translate ``iova`` from the table bytes, as the SMMU's stage 1 would."""
        return walk_arm(
            self.tables.buffer,
            self.base,
            self.root,
            iova,
            granule=self.granule,
            t0sz=self.t0sz,
            ips=self.ips,
            ttst=self.ttst,
            access=access,
        )

    def _kind(self, value: int, depth: int) -> int:
        if not value & VALID:
            return EMPTY
        lvl = self.geometry[depth]
        if lvl.number == 3:
            return LEAF if value & TYPE_TABLE else EMPTY
        if value & TYPE_TABLE:
            return TABLE
        return LEAF if lvl.leaf else EMPTY

    def _table_entry(self, table: int) -> int:
        return table | VALID | TYPE_TABLE

    def _table_address(self, value: int) -> int:
        return value & ((1 << 48) - 1) & ~((1 << self._granule_bits) - 1)

    def _leaf_template(self, depth: int, perms: Perms, attrs: ArmAttrs | None) -> int:
        if attrs is None:
            attrs = ArmAttrs()
        elif not isinstance(attrs, ArmAttrs):
            raise EncodeError("attrs", f"expected ArmAttrs, got {type(attrs).__name__}")
        if not 0 <= attrs.attr_index <= 7:
            raise EncodeError("attrs.attr_index", f"{attrs.attr_index} is outside 0..7")
        if attrs.sh not in (SH_NON, SH_OUTER, SH_INNER):
            raise EncodeError("attrs.sh", f"{attrs.sh:#b} is reserved or out of range")
        entry = VALID | (TYPE_TABLE if self.geometry[depth].number == 3 else 0)
        entry |= attrs.attr_index << 2 | attrs.sh << 8
        entry |= NS if attrs.ns else 0
        entry |= AF if attrs.af else 0
        entry |= NG if attrs.ng else 0
        entry |= 0 if perms & Perms.PRIV else AP1
        entry |= 0 if perms & Perms.WRITE else AP2
        entry |= 0 if perms & Perms.EXEC else PXN | UXN
        return entry

    def _decode_leaf(self, value: int, depth: int) -> tuple[Perms, ArmAttrs]:
        return _perms(value, 0), _decode_attrs(value, 0)

    def _check_input(self, iova: int, size: int) -> None:
        if iova < 0 or iova >> self.input_bits:
            raise EncodeError("iova", f"{iova:#x} is beyond the {self.input_bits}-bit input range")
        if (iova + size - 1) >> self.input_bits:
            raise EncodeError(
                "size",
                f"[{iova:#x}, {iova + size:#x}) runs past the {self.input_bits}-bit input range",
            )
