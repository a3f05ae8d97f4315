"""Table memory: allocation, bounds, dirty tracking and sync into a DMA copy."""

from __future__ import annotations

from array import array

import pytest

from harness.errors import DecodeError, EncodeError
from harness.pgtable import DirtyRange, TableMemory, X86PageTable

pytestmark = pytest.mark.tier0

BASE = 0x20_0000


def test_allocate_hands_out_zeroed_aligned_pages() -> None:
    buffer = bytearray(b"\xff" * (3 * 4096))
    memory = TableMemory(buffer, BASE, 4096)
    assert [memory.allocate() for _ in range(3)] == [BASE, BASE + 4096, BASE + 8192]
    assert buffer == bytes(3 * 4096)
    assert (memory.tables_used, memory.tables_free) == (3, 0)


def test_allocate_fails_when_full() -> None:
    memory = TableMemory(4096 + 100, BASE, 4096)
    memory.allocate()
    with pytest.raises(EncodeError) as error:
        memory.allocate()
    assert error.value.field == "memory"


@pytest.mark.parametrize(
    ("memory", "base", "table_size", "field"),
    [
        (4096, BASE + 8, 4096, "base"),
        (4096, -4096, 4096, "base"),
        (4096, BASE, 3000, "table_size"),
        (b"\0" * 4096, BASE, 4096, "memory"),
    ],
)
def test_constructor_rejects(memory: object, base: int, table_size: int, field: str) -> None:
    with pytest.raises(EncodeError) as error:
        TableMemory(memory, base, table_size)  # type: ignore[arg-type]
    assert error.value.field == field


def test_reads_and_writes_round_trip() -> None:
    memory = TableMemory(2 * 4096, BASE, 4096)
    memory.write(BASE + 8, 0x8000_0000_0000_0001)
    assert memory.read(BASE + 8) == 0x8000_0000_0000_0001
    assert memory.buffer[8:16] == bytes.fromhex("0100000000000080")
    memory.write_array(BASE + 4096, array("Q", [1, 2, 3]))
    assert list(memory.read_array(BASE + 4096, 3)) == [1, 2, 3]
    assert not memory.is_zero(BASE + 4096, 24)
    memory.zero(BASE + 4096, 24)
    assert memory.is_zero(BASE + 4096, 24)


@pytest.mark.parametrize("address", [BASE - 8, BASE + 4096 - 4, BASE + 4096])
def test_out_of_bounds_access_is_decode_error(address: int) -> None:
    memory = TableMemory(4096, BASE, 4096)
    with pytest.raises(DecodeError) as error:
        memory.read(address)
    assert error.value.field == "table"


def test_dirty_ranges_merge_and_clear() -> None:
    memory = TableMemory(4 * 4096, BASE, 4096)
    assert memory.dirty_ranges() == []
    memory.write(BASE + 0x10, 1)
    memory.write(BASE + 0x40, 1)
    memory.write(BASE + 0x3000, 1)
    assert memory.dirty_ranges() == [
        DirtyRange(0x10, 0x38, BASE + 0x10),
        DirtyRange(0x3000, 8, BASE + 0x3000),
    ]
    memory.mark_clean()
    assert memory.dirty_ranges() == []
    memory.write(BASE + 4096 - 8, 1)
    memory.write(BASE + 4096, 1)
    assert memory.dirty_ranges() == [DirtyRange(4096 - 8, 16, BASE + 4096 - 8)]


def test_sync_into_copies_only_changes() -> None:
    pt = X86PageTable(8 * 4096, BASE)
    pt.map(0x1000, 0x1000, 4096)
    dma = bytearray(len(pt.memory))
    assert pt.sync_into(dma) == 4 * 4096
    assert dma == pt.memory
    pt.remap(0x1000, 0x5000)
    ranges = pt.dirty_ranges()
    assert [(r.length, r.address) for r in ranges] == [(8, pt.root + 3 * 4096 + 8)]
    assert pt.sync_into(dma) == 8
    assert dma == pt.memory
    assert pt.dirty_ranges() == []
