"""Table memory: a byte buffer at an IOMMU-visible address, a bump allocator and dirty tracking."""

from __future__ import annotations

import struct
import sys
from array import array
from typing import NamedTuple

from harness.errors import DecodeError, EncodeError

_U64 = struct.Struct("<Q")
_SWAP = sys.byteorder != "little"


class DirtyRange(NamedTuple):
    """Changed bytes ``buffer[offset:offset + length]``, which the IOMMU sees at ``address``."""

    offset: int
    length: int
    address: int


class TableMemory:
    """Owns the buffer tables live in, hands out zeroed table pages and records what changed."""

    def __init__(self, memory: bytearray | int, base: int, table_size: int) -> None:
        self.buffer = bytearray(memory) if isinstance(memory, int) else memory
        if not isinstance(self.buffer, bytearray):
            raise EncodeError(
                "memory", f"must be a bytearray or a size, not {type(memory).__name__}"
            )
        if table_size <= 0 or table_size & (table_size - 1):
            raise EncodeError("table_size", f"{table_size} is not a power of two")
        if base < 0 or base % table_size:
            raise EncodeError("base", f"{base:#x} is not aligned to the {table_size:#x} table size")
        self.base = base
        self.table_size = table_size
        self._next = 0
        self._limit = len(self.buffer) // table_size * table_size
        self._zero_table = bytes(table_size)
        self._dirty: dict[int, list[int]] = {}

    @property
    def end(self) -> int:
        """The first address past the buffer."""
        return self.base + len(self.buffer)

    @property
    def tables_used(self) -> int:
        """How many table pages have been allocated."""
        return self._next // self.table_size

    @property
    def tables_free(self) -> int:
        """How many table pages are still available."""
        return (self._limit - self._next) // self.table_size

    def allocate(self) -> int:
        """Return the address of a fresh zeroed table page, or raise EncodeError when full."""
        if self._next >= self._limit:
            raise EncodeError(
                "memory",
                f"out of table memory: {self.tables_used} pages of {self.table_size:#x} in use",
            )
        offset = self._next
        self._next += self.table_size
        self.buffer[offset : offset + self.table_size] = self._zero_table
        self._mark(offset, self.table_size)
        return self.base + offset

    def offset(self, address: int, length: int = 8) -> int:
        """Buffer offset of ``address``; DecodeError if ``length`` bytes there are outside it."""
        offset = address - self.base
        if offset < 0 or offset + length > len(self.buffer):
            raise DecodeError(
                "table",
                f"address {address:#x} (+{length}) is outside the table memory "
                f"[{self.base:#x}, {self.end:#x})",
            )
        return offset

    def read(self, address: int) -> int:
        """Read the u64 entry at ``address``."""
        value: int = _U64.unpack_from(self.buffer, self.offset(address))[0]
        return value

    def read_array(self, address: int, count: int) -> array[int]:
        """Read ``count`` consecutive u64 entries starting at ``address``."""
        offset = self.offset(address, count * 8)
        values = array("Q", self.buffer[offset : offset + count * 8])
        if _SWAP:
            values.byteswap()
        return values

    def write(self, address: int, value: int) -> None:
        """Write the u64 entry at ``address``."""
        offset = self.offset(address)
        _U64.pack_into(self.buffer, offset, value)
        self._mark(offset, 8)

    def write_array(self, address: int, values: array[int]) -> None:
        """Write consecutive u64 entries starting at ``address`` in one copy."""
        length = len(values) * 8
        offset = self.offset(address, length)
        if _SWAP:
            values = array("Q", values)
            values.byteswap()
        self.buffer[offset : offset + length] = values
        self._mark(offset, length)

    def is_zero(self, address: int, length: int) -> bool:
        """True when ``length`` bytes at ``address`` are all zero."""
        offset = self.offset(address, length)
        return self.buffer[offset : offset + length] == self._zero_table[:length]

    def zero(self, address: int, length: int) -> None:
        """Clear ``length`` bytes at ``address``."""
        offset = self.offset(address, length)
        self.buffer[offset : offset + length] = bytes(length)
        self._mark(offset, length)

    def _mark(self, offset: int, length: int) -> None:
        page = offset - offset % self.table_size
        span = self._dirty.get(page)
        if span is None:
            self._dirty[page] = [offset, offset + length]
        else:
            span[0] = min(span[0], offset)
            span[1] = max(span[1], offset + length)

    def dirty_ranges(self) -> list[DirtyRange]:
        """Changed byte ranges since the last ``mark_clean``, sorted and merged."""
        merged: list[list[int]] = []
        for page in sorted(self._dirty):
            start, end = self._dirty[page]
            if merged and merged[-1][1] >= start:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        return [DirtyRange(start, end - start, self.base + start) for start, end in merged]

    def mark_clean(self) -> None:
        """Forget changes: the caller has copied them where the IOMMU reads them."""
        self._dirty.clear()

    def sync_into(self, destination: bytearray | memoryview) -> int:
        """Copy changes into ``destination`` (laid out like the buffer); return bytes copied."""
        copied = 0
        for offset, length, _ in self.dirty_ranges():
            destination[offset : offset + length] = self.buffer[offset : offset + length]
            copied += length
        self.mark_clean()
        return copied
