"""x86-64 first-stage tables for VT-d: byte-exact layouts, walker faults and encode errors."""

from __future__ import annotations

import struct

import pytest

from harness.errors import DecodeError, EncodeError
from harness.pgtable import Fault, FaultKind, Perms, Translation, X86Attrs, X86PageTable, walk_x86

pytestmark = pytest.mark.tier0

BASE = 0x10_0000
KIB4, MIB2, GIB1 = 1 << 12, 1 << 21, 1 << 30


def u64(pt: X86PageTable, address: int) -> int:
    """The entry at IOMMU address ``address`` in the table memory."""
    value: int = struct.unpack_from("<Q", pt.memory, address - BASE)[0]
    return value


def poke(pt: X86PageTable, address: int, value: int) -> None:
    """Overwrite the entry at ``address`` behind the builder's back."""
    struct.pack_into("<Q", pt.memory, address - BASE, value)


def translated(result: Translation[X86Attrs] | Fault) -> Translation[X86Attrs]:
    """The translation, failing the test on a fault."""
    assert isinstance(result, Translation), result
    return result


def faulted(result: Translation[X86Attrs] | Fault) -> Fault:
    """The fault, failing the test on a translation."""
    assert isinstance(result, Fault), result
    return result


@pytest.fixture
def known() -> X86PageTable:
    """A 4-level table with one 4 KiB, one 2 MiB and one 1 GiB leaf."""
    pt = X86PageTable(16 * 4096, BASE)
    pt.map(0x4020_3000, 0xABC_D000, KIB4)
    pt.map(0x4060_0000, 0x2_0000_0000, MIB2, Perms.READ | Perms.EXEC)
    pt.map(0x8000_0000, 0x40_0000_0000, GIB1, Perms.READ | Perms.WRITE | Perms.PRIV)
    return pt


def test_known_table_bytes(known: X86PageTable) -> None:
    # Tables are allocated in order: root (PML4) 0x100000, PDPT 0x101000, PD 0x102000,
    # PT 0x103000. Non-leaf entries are addr | P(1) | R/W(2) | U/S(4) | A(0x20) = addr | 0x27.
    # 0x4020_3000: PML4 index 0, PDPT index 1 (bits 38:30), PD index 1 (bits 29:21),
    # PT index 3 (bits 20:12).
    assert u64(known, 0x10_0000) == 0x10_1027
    assert u64(known, 0x10_1000 + 1 * 8) == 0x10_2027
    assert u64(known, 0x10_2000 + 1 * 8) == 0x10_3027
    # 4 KiB RW user leaf: P|RW|US|A|D = 0x67, XD (bit 63) because no EXEC.
    assert u64(known, 0x10_3000 + 3 * 8) == 0x8000_0000_0ABC_D067
    # 2 MiB read+exec at PD index 3: P|US|A|PS = 0x1 + 0x4 + 0x20 + 0x80 = 0xA5, no D, no XD.
    assert u64(known, 0x10_2000 + 3 * 8) == 0x0000_0002_0000_00A5
    # 1 GiB RW supervisor-only at PDPT index 2: P|RW|A|D|PS = 0xE3 (no U/S), XD.
    assert u64(known, 0x10_1000 + 2 * 8) == 0x8000_0040_0000_00E3
    assert known.tables.tables_used == 4


def test_known_table_walks(known: X86PageTable) -> None:
    small = translated(known.walk(0x4020_3ABC))
    assert (small.output, small.page_size, small.level) == (0xABC_DABC, KIB4, 1)
    assert small.perms == Perms.READ | Perms.WRITE
    assert small.attrs == X86Attrs(accessed=True, dirty=True)
    assert small.descriptor_address == 0x10_3018
    large = translated(known.walk(0x4067_FFFF))
    assert (large.output, large.page_size, large.level) == (0x2_0007_FFFF, MIB2, 2)
    assert large.perms == Perms.READ | Perms.EXEC
    huge = translated(known.walk(0xBFFF_FFFF))
    assert (huge.output, huge.page_size, huge.level) == (0x40_3FFF_FFFF, GIB1, 3)
    assert huge.perms == Perms.READ | Perms.WRITE | Perms.PRIV


def test_hw_config(known: X86PageTable) -> None:
    config = known.hw_config
    assert (config.fsptptr, config.fspm, config.levels) == (BASE, 0, 4)
    assert config.qword2 == BASE
    assert config.uses_1g_pages
    five = X86PageTable(8 * 4096, BASE, levels=5)
    five.map(0x1_0000_0000_0000, 0x1000, KIB4)
    assert five.hw_config.fspm == 1
    assert five.hw_config.qword2 == BASE | 1 << 2
    assert not five.hw_config.uses_1g_pages
    assert five.levels == (5, 4, 3, 2, 1)


def test_attrs_encoding() -> None:
    pt = X86PageTable(8 * 4096, BASE)
    attrs = X86Attrs(pwt=True, pcd=True, pat=True, global_page=True, accessed=False, dirty=False)
    pt.map(0x1000, 0x5000, KIB4, Perms.READ | Perms.WRITE | Perms.EXEC, attrs=attrs)
    pt.map(0x20_0000, 0x40_0000, MIB2, attrs=attrs)
    # 4 KiB: P|RW|US|PWT(8)|PCD(0x10)|PAT(bit 7)|G(bit 8) = 0x1 + 0x2 + 0x4 + 0x8 + 0x10
    # + 0x80 + 0x100 = 0x19F; no A, no D, no XD.
    assert u64(pt, 0x10_3000 + 8) == 0x5000 | 0x19F
    # 2 MiB: PAT moves to bit 12, PS is bit 7: 0x1F + 0x80 + 0x100 + 0x1000 = 0x119F, XD.
    assert u64(pt, 0x10_2000 + 8) == 1 << 63 | 0x40_0000 | 0x119F
    assert translated(pt.walk(0x20_0000)).attrs == attrs
    assert translated(pt.walk(0x1000)).attrs == attrs


def test_upper_half_canonical_addresses() -> None:
    pt = X86PageTable(8 * 4096, BASE)
    iova = 0xFFFF_8000_0000_0000
    pt.map(iova, 0x1000, KIB4)
    assert u64(pt, BASE + 256 * 8) == 0x10_1027
    assert translated(pt.walk(iova + 5)).output == 0x1005


def test_walk_non_canonical_faults() -> None:
    pt = X86PageTable(8 * 4096, BASE)
    fault = faulted(pt.walk(0x0000_8000_0000_0000))
    assert (fault.kind, fault.level, fault.code) == (FaultKind.INPUT_RANGE, 4, 0x80)


def test_walk_not_present_reports_level() -> None:
    pt = X86PageTable(8 * 4096, BASE)
    pt.map(0x4000_0000, 0x1000, KIB4)
    assert faulted(pt.walk(0x80_0000_0000)).level == 4
    assert faulted(pt.walk(0x8000_0000)).level == 3
    assert faulted(pt.walk(0x4020_0000)).level == 2
    fault = faulted(pt.walk(0x4000_1000))
    assert (fault.kind, fault.level, fault.code) == (FaultKind.NOT_PRESENT, 1, 0x71)
    assert fault.descriptor == 0
    assert fault.descriptor_address == 0x10_3008


def test_walk_reserved_bits() -> None:
    pt = X86PageTable(8 * 4096, BASE, haw=39)
    pt.map(0x4000_0000, 0x1000, KIB4)
    pt.map(0x20_0000, 0x20_0000, MIB2)
    # Bit 40 is inside the address field but above HAW 39: reserved.
    poke(pt, 0x10_3000, u64(pt, 0x10_3000) | 1 << 40)
    fault = faulted(pt.walk(0x4000_0000))
    assert (fault.kind, fault.level, fault.code) == (FaultKind.RESERVED_BIT, 1, 0x72)
    # Bits 62:52 are ignored.
    poke(pt, 0x10_3000, u64(pt, 0x10_3000) & ~(1 << 40) | 1 << 55)
    assert isinstance(pt.walk(0x4000_0000), Translation)
    # Bit 13 of a 2 MiB leaf is reserved (bits 20:13).
    pde = translated(pt.walk(0x20_0000)).descriptor_address
    poke(pt, pde, u64(pt, pde) | 1 << 13)
    assert faulted(pt.walk(0x20_0000)).kind == FaultKind.RESERVED_BIT
    # PS in a PML4E is reserved.
    poke(pt, pt.root, u64(pt, pt.root) | 1 << 7)
    assert faulted(pt.walk(0x4000_0000)).level == 4


def test_walk_rights_are_anded_across_levels() -> None:
    pt = X86PageTable(8 * 4096, BASE)
    pt.map(0x1000, 0x1000, KIB4, Perms.READ | Perms.WRITE | Perms.EXEC)
    poke(pt, pt.root, u64(pt, pt.root) & ~0x2)
    assert translated(pt.walk(0x1000)).perms == Perms.READ | Perms.EXEC
    poke(pt, pt.root, u64(pt, pt.root) & ~0x4 | 1 << 63)
    assert translated(pt.walk(0x1000)).perms == Perms.READ | Perms.PRIV


def test_walk_access_checks() -> None:
    pt = X86PageTable(8 * 4096, BASE)
    pt.map(0x1000, 0x1000, KIB4, Perms.READ)
    pt.map(0x2000, 0x2000, KIB4, Perms.READ | Perms.WRITE | Perms.PRIV)
    assert isinstance(pt.walk(0x1000, Perms.READ), Translation)
    write = faulted(pt.walk(0x1000, Perms.WRITE))
    assert (write.kind, write.code) == (FaultKind.PERMISSION, 0x85)
    assert faulted(pt.walk(0x1000, Perms.EXEC)).kind == FaultKind.PERMISSION
    user = faulted(pt.walk(0x2000, Perms.WRITE))
    assert user.code == 0x81
    assert isinstance(pt.walk(0x2000, Perms.WRITE | Perms.PRIV), Translation)


def test_walk_pointer_outside_memory_is_decode_error() -> None:
    pt = X86PageTable(8 * 4096, BASE)
    pt.map(0x1000, 0x1000, KIB4)
    poke(pt, pt.root, 0x4000_0000 | 0x27)
    with pytest.raises(DecodeError, match="level 3 table"):
        pt.walk(0x1000)
    with pytest.raises(DecodeError):
        walk_x86(bytes(4096), BASE, 0x9000_0000, 0)


def test_map_largest_fitting_page_size() -> None:
    pt = X86PageTable(8 * 4096, BASE)
    pt.map(0x4000_0000, 0x8000_0000, GIB1)
    assert translated(pt.walk(0x4000_0000)).page_size == GIB1
    pt.map(0x20_0000, 0x20_0000, 4 * MIB2)
    assert translated(pt.walk(0x60_0000)).page_size == MIB2
    pt.map(0x1000, 0x3000, 2 * KIB4)
    assert translated(pt.walk(0x2000)).output == 0x4000


@pytest.mark.parametrize(
    ("iova", "pa", "size", "page_size", "field"),
    [
        (0x1800, 0x1000, KIB4, KIB4, "iova"),
        (0x1000, 0x1800, KIB4, KIB4, "pa"),
        (0x1000, 0x1000, 0x1800, KIB4, "size"),
        (0x1000, 0x1000, 0, KIB4, "size"),
        (0x1000, 0x1000, 1 << 39, 1 << 39, "page_size"),
        (0x1000, 0x1000, 0x8000, 0x8000, "page_size"),
        (0x0000_8000_0000_0000, 0x1000, KIB4, KIB4, "iova"),
        (0x0000_7FFF_FFFF_F000, 0x1000, 2 * KIB4, KIB4, "size"),
        (0x1000, 1 << 48, KIB4, KIB4, "pa"),
    ],
)
def test_map_rejects(iova: int, pa: int, size: int, page_size: int, field: str) -> None:
    pt = X86PageTable(8 * 4096, BASE)
    with pytest.raises(EncodeError) as error:
        pt.map(iova, pa, size, page_size=page_size)
    assert error.value.field == field


def test_map_rejects_write_only() -> None:
    pt = X86PageTable(8 * 4096, BASE)
    with pytest.raises(EncodeError, match="READ"):
        pt.map(0x1000, 0x1000, KIB4, Perms.WRITE)


def test_map_rejects_foreign_attrs() -> None:
    pt = X86PageTable(8 * 4096, BASE)
    with pytest.raises(EncodeError) as error:
        pt.map(0x1000, 0x1000, KIB4, attrs="cached")  # type: ignore[arg-type]
    assert error.value.field == "attrs"


def test_map_overlaps() -> None:
    pt = X86PageTable(8 * 4096, BASE)
    pt.map(0x20_0000, 0x20_0000, MIB2)
    with pytest.raises(EncodeError, match="already mapped by the 2 MiB leaf"):
        pt.map(0x20_1000, 0x1000, KIB4)
    pt.map(0x40_3000, 0x1000, KIB4)
    with pytest.raises(EncodeError, match="already mapped") as error:
        pt.map(0x40_0000, 0x40_0000, 4 * KIB4)
    assert error.value.field == "iova"


def test_map_is_atomic_when_out_of_memory() -> None:
    pt = X86PageTable(3 * 4096, BASE)
    before = bytes(pt.memory)
    with pytest.raises(EncodeError) as error:
        pt.map(0x1000, 0x1000, KIB4)
    assert error.value.field == "memory"
    assert bytes(pt.memory) == before
    pt.map(0x4000_0000, 0x4000_0000, GIB1)
    assert translated(pt.walk(0x4000_0000)).page_size == GIB1


def test_unmap() -> None:
    pt = X86PageTable(8 * 4096, BASE)
    pt.map(0x20_0000, 0x20_0000, 3 * KIB4)
    assert pt.unmap(0x20_1000, KIB4) == KIB4
    assert faulted(pt.walk(0x20_1000)).level == 1
    assert isinstance(pt.walk(0x20_2000), Translation)
    with pytest.raises(EncodeError, match="not mapped"):
        pt.unmap(0x20_0000, 3 * KIB4)
    assert isinstance(pt.walk(0x20_0000), Translation)


def test_unmap_rejects_splitting_a_leaf() -> None:
    pt = X86PageTable(8 * 4096, BASE)
    pt.map(0x20_0000, 0x20_0000, MIB2)
    with pytest.raises(EncodeError, match="split the 2 MiB leaf") as error:
        pt.unmap(0x20_0000, KIB4)
    assert error.value.field == "size"
    with pytest.raises(EncodeError):
        pt.unmap(0x20_0000, 0)


def test_remap_keeps_slot_and_bits() -> None:
    pt = X86PageTable(8 * 4096, BASE)
    pt.map(0x5000, 0x7000, KIB4, Perms.READ)
    before = translated(pt.walk(0x5000))
    address = pt.remap(0x5000, 0x9000)
    after = translated(pt.walk(0x5000))
    assert address == before.descriptor_address == after.descriptor_address
    assert after.output == 0x9000
    assert after.descriptor == before.descriptor - 0x7000 + 0x9000
    pt.remap(0x5000, 0x9000, Perms.READ | Perms.WRITE)
    changed = translated(pt.walk(0x5000))
    assert changed.perms == Perms.READ | Perms.WRITE
    assert changed.attrs.dirty


@pytest.mark.parametrize(
    ("iova", "new_pa", "field"),
    [(0x6000, 0x9000, "iova"), (0x5000, 0x9800, "pa"), (0x5000, 1 << 48, "pa")],
)
def test_remap_rejects(iova: int, new_pa: int, field: str) -> None:
    pt = X86PageTable(8 * 4096, BASE)
    pt.map(0x5000, 0x7000, KIB4)
    with pytest.raises(EncodeError) as error:
        pt.remap(iova, new_pa)
    assert error.value.field == field


def test_remap_inside_a_leaf_is_rejected() -> None:
    pt = X86PageTable(8 * 4096, BASE)
    pt.map(0x20_0000, 0x20_0000, MIB2)
    with pytest.raises(EncodeError, match="inside the 2 MiB leaf at 0x200000"):
        pt.remap(0x20_1000, 0x40_0000)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"levels": 3}, "levels"), ({"haw": 57}, "haw"), ({"haw": 31}, "haw")],
)
def test_constructor_rejects(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(EncodeError) as error:
        X86PageTable(8 * 4096, BASE, **kwargs)
    assert error.value.field == field


def test_constructor_rejects_misaligned_or_unreachable_base() -> None:
    with pytest.raises(EncodeError) as error:
        X86PageTable(8 * 4096, BASE + 0x800)
    assert error.value.field == "base"
    with pytest.raises(EncodeError) as error:
        X86PageTable(8 * 4096, 1 << 39, haw=39)
    assert error.value.field == "base"
    with pytest.raises(EncodeError) as error:
        X86PageTable(100, BASE)
    assert error.value.field == "memory"
