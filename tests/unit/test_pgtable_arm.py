"""Arm VMSAv8-64 stage-1 tables: byte-exact layouts per granule, walker faults, encode errors."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from harness.errors import DecodeError, EncodeError
from harness.pgtable import (
    ArmAttrs,
    ArmPageTable,
    Fault,
    FaultKind,
    Perms,
    Translation,
    arm_geometry,
    walk_arm,
)
from harness.pgtable.arm import AP_TABLE_NO_EL0, AP_TABLE_NO_WRITE, PXN_TABLE, SH_NON

pytestmark = pytest.mark.tier0

BASE = 0x10_0000
KIB4, KIB16, KIB64 = 1 << 12, 1 << 14, 1 << 16
MIB2, MIB32, MIB512, GIB1 = 1 << 21, 1 << 25, 1 << 29, 1 << 30
# Leaf bits common to the defaults: AttrIndx 1 (0x4) | AP[1] (0x40) | SH inner (0x300)
# | AF (0x400) | nG (0x800) = 0xF44; UXN|PXN = 3 << 53 = 0x0060_0000_0000_0000.
DEFAULT_LOW = 0xF44
XN = 0x0060_0000_0000_0000


def u64(pt: ArmPageTable, address: int) -> int:
    """The entry at IOMMU address ``address`` in the table memory."""
    value: int = struct.unpack_from("<Q", pt.memory, address - BASE)[0]
    return value


def poke(pt: ArmPageTable, address: int, value: int) -> None:
    """Overwrite the entry at ``address`` behind the builder's back."""
    struct.pack_into("<Q", pt.memory, address - BASE, value)


def translated(result: Translation[ArmAttrs] | Fault) -> Translation[ArmAttrs]:
    """The translation, failing the test on a fault."""
    assert isinstance(result, Translation), result
    return result


def faulted(result: Translation[ArmAttrs] | Fault) -> Fault:
    """The fault, failing the test on a translation."""
    assert isinstance(result, Fault), result
    return result


def test_known_4k_table_bytes() -> None:
    pt = ArmPageTable(16 * KIB4, BASE, granule=KIB4, t0sz=16)
    pt.map(0x4020_3000, 0x8_0000_3000, KIB4)
    pt.map(0x4060_0000, 0x1_0020_0000, MIB2, Perms.READ)
    attrs = ArmAttrs(attr_index=2, sh=SH_NON, ng=False)
    everything = Perms.READ | Perms.WRITE | Perms.EXEC | Perms.PRIV
    pt.map(0x8000_0000, 0x40_0000_0000, GIB1, everything, attrs=attrs)
    # Tables: L0 (root) 0x100000, L1 0x101000, L2 0x102000, L3 0x103000; table
    # descriptors are addr | 0b11. 0x4020_3000: L0 index 0, L1 index 1 (bits 38:30),
    # L2 index 1 (bits 29:21), L3 index 3 (bits 20:12).
    assert u64(pt, 0x10_0000) == 0x10_1003
    assert u64(pt, 0x10_1000 + 1 * 8) == 0x10_2003
    assert u64(pt, 0x10_2000 + 1 * 8) == 0x10_3003
    # Page: type 0b11 | defaults 0xF44 = 0xF47, XN because no EXEC.
    assert u64(pt, 0x10_3000 + 3 * 8) == XN | 0x8_0000_3000 | 0xF47
    # 2 MiB block at L2 index 3: type 0b01 | 0xF44 | AP[2] read-only (0x80) = 0xFC5.
    assert u64(pt, 0x10_2000 + 3 * 8) == XN | 0x1_0020_0000 | 0xFC5
    # 1 GiB block at L1 index 2, privileged RWX, AttrIndx 2 (0x8), SH non-shareable,
    # global: 0b01 | 0x8 | AF 0x400 = 0x409, no AP bits, no XN.
    assert u64(pt, 0x10_1000 + 2 * 8) == 0x40_0000_0000 | 0x409
    huge = translated(pt.walk(0xBFFF_FFFF))
    assert (huge.output, huge.page_size, huge.level) == (0x40_3FFF_FFFF, GIB1, 1)
    assert huge.perms == Perms.READ | Perms.WRITE | Perms.EXEC | Perms.PRIV
    assert huge.attrs == attrs
    small = translated(pt.walk(0x4020_3FFF))
    assert (small.output, small.level, small.perms) == (0x8_0000_3FFF, 3, Perms.READ | Perms.WRITE)


def test_known_16k_block_bytes() -> None:
    pt = ArmPageTable(8 * KIB16, BASE, granule=KIB16, t0sz=16)
    # 16 KiB, 48-bit: L0 (2 entries, shift 47), L1 (shift 36), L2 (shift 25), L3 (shift 14).
    # 0x12_0200_0000: L0 index 0, L1 index 1, L2 index (0x2_0200_0000 >> 25) = 257.
    pt.map(0x12_0200_0000, 0x4_0200_0000, MIB32)
    assert u64(pt, 0x10_0000) == 0x10_4003
    assert u64(pt, 0x10_4000 + 1 * 8) == 0x10_8003
    # Block: 0b01 | 0xF44 = 0xF45, RW so no AP[2], XN.
    assert u64(pt, 0x10_8000 + 257 * 8) == XN | 0x4_0200_0000 | 0xF45
    assert pt.page_sizes == (KIB16, MIB32)
    assert pt.hw_config.tg0 == 0b10


def test_known_64k_block_bytes() -> None:
    pt = ArmPageTable(4 * KIB64, BASE, granule=KIB64, t0sz=16)
    # 64 KiB, 48-bit: L1 (64 entries, shift 42), L2 (shift 29), L3 (shift 16).
    # 0x4_2000_0000: L1 index 0, L2 index 0x4_2000_0000 >> 29 = 33.
    pt.map(0x4_2000_0000, 0x2000_0000, MIB512)
    assert u64(pt, 0x10_0000) == 0x11_0003
    assert u64(pt, 0x11_0000 + 33 * 8) == XN | 0x2000_0000 | 0xF45
    assert pt.page_sizes == (KIB64, MIB512)
    assert pt.levels == (1, 2, 3)
    assert pt.hw_config.tg0 == 0b01


def test_hw_config() -> None:
    pt = ArmPageTable(4 * KIB4, BASE, t0sz=25, ips=40)
    config = pt.hw_config
    assert (config.ttb0, config.t0sz, config.tg0, config.ips, config.start_level) == (
        BASE,
        25,
        0b00,
        0b010,
        1,
    )
    # MAIR index 1 (the default AttrIndx) is Normal WB RWA, index 2 Device-nGnRE.
    assert (config.mair >> 8) & 0xFF == 0xFF
    assert (config.mair >> 16) & 0xFF == 0x04


@pytest.mark.parametrize(
    ("granule", "t0sz", "levels", "root_entries", "sizes"),
    [
        (KIB4, 16, (0, 1, 2, 3), 512, (KIB4, MIB2, GIB1)),
        (KIB4, 25, (1, 2, 3), 512, (KIB4, MIB2, GIB1)),
        (KIB4, 33, (1, 2, 3), 2, (KIB4, MIB2, GIB1)),
        (KIB4, 34, (2, 3), 512, (KIB4, MIB2)),
        (KIB4, 39, (2, 3), 16, (KIB4, MIB2)),
        (KIB16, 16, (0, 1, 2, 3), 2, (KIB16, MIB32)),
        (KIB16, 17, (1, 2, 3), 2048, (KIB16, MIB32)),
        (KIB16, 36, (2, 3), 8, (KIB16, MIB32)),
        (KIB16, 39, (3,), 2048, (KIB16,)),
        (KIB64, 16, (1, 2, 3), 64, (KIB64, MIB512)),
        (KIB64, 25, (2, 3), 1024, (KIB64, MIB512)),
        (KIB64, 39, (3,), 512, (KIB64,)),
    ],
)
def test_geometry(
    granule: int, t0sz: int, levels: tuple[int, ...], root_entries: int, sizes: tuple[int, ...]
) -> None:
    geometry = arm_geometry(granule, t0sz)
    assert tuple(lvl.number for lvl in geometry) == levels
    assert geometry[0].entries == root_entries
    pt = ArmPageTable(2 * granule, BASE, granule=granule, t0sz=t0sz)
    assert pt.page_sizes == sizes


def test_small_translation_tables() -> None:
    assert arm_geometry(KIB4, 48, ttst=True)[0].entries == 16
    assert arm_geometry(KIB64, 47, ttst=True)[0].entries == 2
    with pytest.raises(EncodeError):
        arm_geometry(KIB64, 48, ttst=True)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"granule": 8192}, "granule"),
        ({"t0sz": 15}, "t0sz"),
        ({"t0sz": 40}, "t0sz"),
        ({"ips": 52}, "ips"),
        ({"ips": 45}, "ips"),
    ],
)
def test_constructor_rejects(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(EncodeError) as error:
        ArmPageTable(16 * KIB4, BASE, **kwargs)
    assert error.value.field == field


def test_constructor_rejects_misaligned_base() -> None:
    with pytest.raises(EncodeError) as error:
        ArmPageTable(4 * KIB64, BASE + KIB4, granule=KIB64)
    assert error.value.field == "base"


@pytest.mark.parametrize(
    ("granule", "t0sz", "page_size"),
    [
        (KIB4, 16, 1 << 39),  # level 0 block needs LPA2
        (KIB4, 34, GIB1),  # start level 2 has no 1 GiB entries
        (KIB16, 16, 1 << 36),  # level 1 block needs LPA2
        (KIB16, 16, MIB2),
        (KIB64, 16, 1 << 42),  # 4 TiB level 1 block needs LPA
        (KIB64, 16, KIB4),
    ],
)
def test_unsupported_page_sizes(granule: int, t0sz: int, page_size: int) -> None:
    pt = ArmPageTable(4 * granule, BASE, granule=granule, t0sz=t0sz)
    with pytest.raises(EncodeError) as error:
        pt.map(0, 0, page_size, page_size=page_size)
    assert error.value.field == "page_size"


@pytest.mark.parametrize(
    ("iova", "pa", "size", "field"),
    [
        (1 << 48, 0, KIB4, "iova"),
        ((1 << 48) - KIB4, 0, 2 * KIB4, "size"),
        (0, 1 << 40, KIB4, "pa"),
        (0x800, 0, KIB4, "iova"),
        (0, 0x800, KIB4, "pa"),
    ],
)
def test_map_rejects(iova: int, pa: int, size: int, field: str) -> None:
    pt = ArmPageTable(8 * KIB4, BASE, ips=40)
    with pytest.raises(EncodeError) as error:
        pt.map(iova, pa, size, page_size=KIB4)
    assert error.value.field == field


@pytest.mark.parametrize(
    ("attrs", "field"),
    [(ArmAttrs(attr_index=8), "attrs.attr_index"), (ArmAttrs(sh=1), "attrs.sh")],
)
def test_map_rejects_bad_attrs(attrs: ArmAttrs, field: str) -> None:
    pt = ArmPageTable(8 * KIB4, BASE)
    with pytest.raises(EncodeError) as error:
        pt.map(0, 0, KIB4, attrs=attrs)
    assert error.value.field == field


def test_map_overlap_and_unmap() -> None:
    pt = ArmPageTable(8 * KIB16, BASE, granule=KIB16, t0sz=16)
    pt.map(0, 0, MIB32)
    with pytest.raises(EncodeError, match="already mapped by the 32 MiB leaf"):
        pt.map(KIB16, 0, KIB16)
    with pytest.raises(EncodeError, match="split"):
        pt.unmap(0, KIB16)
    assert pt.unmap(0, MIB32) == MIB32
    fault = faulted(pt.walk(0x10))
    assert (fault.kind, fault.level, fault.code) == (FaultKind.NOT_PRESENT, 2, 0x10)
    pt.map(KIB16, 0, KIB16)
    assert translated(pt.walk(KIB16)).level == 3


def test_walk_input_range_and_invalid_descriptors() -> None:
    pt = ArmPageTable(8 * KIB4, BASE, t0sz=25)
    fault = faulted(pt.walk(1 << 39))
    assert (fault.kind, fault.level, fault.code) == (FaultKind.INPUT_RANGE, 1, 0x10)
    pt.map(0x1000, 0x1000, KIB4)
    leaf = translated(pt.walk(0x1000)).descriptor_address
    poke(pt, leaf, u64(pt, leaf) & ~0b10)
    reserved = faulted(pt.walk(0x1000))
    assert (reserved.kind, reserved.level) == (FaultKind.INVALID_DESCRIPTOR, 3)


def test_walk_level0_block_is_invalid() -> None:
    pt = ArmPageTable(8 * KIB4, BASE)
    poke(pt, pt.root, 0x1 | 0x400)
    fault = faulted(pt.walk(0))
    assert (fault.kind, fault.level) == (FaultKind.INVALID_DESCRIPTOR, 0)


def test_walk_address_size_fault() -> None:
    pt = ArmPageTable(8 * KIB64, BASE, granule=KIB64, ips=40)
    pt.map(0, 0x1_0000, KIB64)
    leaf = translated(pt.walk(0)).descriptor_address
    poke(pt, leaf, u64(pt, leaf) | 1 << 41)
    fault = faulted(pt.walk(0))
    assert (fault.kind, fault.level, fault.code) == (FaultKind.ADDRESS_SIZE, 3, 0x11)
    # 64 KiB descriptors keep OA[51:48] in bits 15:12: beyond any IPS without LPA.
    poke(pt, leaf, u64(pt, leaf) & ~(1 << 41) | 1 << 12)
    assert faulted(pt.walk(0)).kind == FaultKind.ADDRESS_SIZE


def test_walk_res0_in_block_is_reported() -> None:
    pt = ArmPageTable(8 * KIB4, BASE)
    pt.map(0x20_0000, 0x20_0000, MIB2)
    block = translated(pt.walk(0x20_0000)).descriptor_address
    poke(pt, block, u64(pt, block) | 1 << 13)
    assert faulted(pt.walk(0x20_0000)).kind == FaultKind.RESERVED_BIT
    poke(pt, block, u64(pt, block) & ~(1 << 13) | 1 << 16)  # nT is not RES0
    assert isinstance(pt.walk(0x20_0000), Translation)


def test_walk_access_flag() -> None:
    pt = ArmPageTable(8 * KIB4, BASE)
    pt.map(0, 0, KIB4, attrs=ArmAttrs(af=False))
    fault = faulted(pt.walk(0))
    assert (fault.kind, fault.code) == (FaultKind.ACCESS_FLAG, 0x12)


def test_walk_permissions() -> None:
    pt = ArmPageTable(8 * KIB4, BASE)
    pt.map(0x1000, 0, KIB4, Perms.READ)
    pt.map(0x2000, 0, KIB4, Perms.READ | Perms.WRITE | Perms.PRIV)
    pt.map(0x3000, 0, KIB4, Perms.READ | Perms.WRITE | Perms.EXEC)
    assert isinstance(pt.walk(0x1000, Perms.READ), Translation)
    fault = faulted(pt.walk(0x1000, Perms.WRITE))
    assert (fault.kind, fault.code) == (FaultKind.PERMISSION, 0x13)
    assert faulted(pt.walk(0x1000, Perms.EXEC)).kind == FaultKind.PERMISSION
    assert faulted(pt.walk(0x2000, Perms.READ)).kind == FaultKind.PERMISSION
    assert isinstance(pt.walk(0x2000, Perms.WRITE | Perms.PRIV), Translation)
    assert isinstance(pt.walk(0x3000, Perms.EXEC), Translation)
    # EL0-writable pages are never privileged-executable.
    assert faulted(pt.walk(0x3000, Perms.EXEC | Perms.PRIV)).kind == FaultKind.PERMISSION


def test_walk_hierarchical_table_attributes() -> None:
    pt = ArmPageTable(8 * KIB4, BASE)
    pt.map(0x1000, 0, KIB4, Perms.READ | Perms.WRITE | Perms.EXEC)
    poke(pt, pt.root, u64(pt, pt.root) | AP_TABLE_NO_WRITE)
    assert translated(pt.walk(0x1000)).perms == Perms.READ | Perms.EXEC
    poke(pt, pt.root, u64(pt, pt.root) | AP_TABLE_NO_EL0 | PXN_TABLE)
    assert translated(pt.walk(0x1000)).perms == Perms.READ | Perms.PRIV


def test_walk_pointer_outside_memory_is_decode_error() -> None:
    pt = ArmPageTable(8 * KIB4, BASE)
    pt.map(0, 0, KIB4)
    poke(pt, pt.root, 0x4000_0000 | 0b11)
    with pytest.raises(DecodeError, match="level 1 table"):
        pt.walk(0)
    with pytest.raises(DecodeError):
        walk_arm(bytes(4096), BASE, 0x9000_0000, 0)


def test_remap_block_in_place() -> None:
    pt = ArmPageTable(8 * KIB4, BASE)
    pt.map(0x4000_0000, 0x8000_0000, GIB1, Perms.READ)
    before = translated(pt.walk(0x4000_0000))
    assert pt.remap(0x4000_0000, 0xC000_0000) == before.descriptor_address
    after = translated(pt.walk(0x4000_0010))
    assert (after.output, after.perms) == (0xC000_0010, Perms.READ)
    pt.remap(0x4000_0000, 0xC000_0000, attrs=ArmAttrs(attr_index=0))
    changed = translated(pt.walk(0x4000_0000))
    assert (changed.attrs.attr_index, changed.perms) == (0, Perms.READ)
    with pytest.raises(EncodeError) as error:
        pt.remap(0x4000_0000, 0xC000_1000)
    assert error.value.field == "pa"
    with pytest.raises(EncodeError, match="not mapped"):
        pt.remap(0x8000_0000, 0)
