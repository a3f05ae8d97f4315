"""The format-independent page-table builder: map, unmap and remap over a radix tree of u64s."""

from __future__ import annotations

import abc
from array import array
from collections.abc import Sequence
from typing import Generic

from harness.errors import EncodeError
from harness.pgtable.alloc import DirtyRange, TableMemory
from harness.pgtable.common import READ_WRITE, AttrsT, Fault, Level, Perms, Translation

EMPTY, TABLE, LEAF = 0, 1, 2


def size_name(size: int) -> str:
    """Human-readable power-of-two size, e.g. ``2 MiB``."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} B"


class PageTable(abc.ABC, Generic[AttrsT]):
    """A stage-1 page table laid out in a byte buffer, as one IOMMU format encodes it.

    Tables are never freed: ``unmap`` clears leaf entries and leaves the tables in place.
    """

    def __init__(
        self,
        memory: bytearray | int,
        base: int,
        table_size: int,
        geometry: Sequence[Level],
        output_bits: int,
    ) -> None:
        self.tables = TableMemory(memory, base, table_size)
        self.geometry = tuple(geometry)
        self.output_bits = output_bits
        if self.tables.end > 1 << output_bits:
            raise EncodeError(
                "base",
                f"table memory ends at {self.tables.end:#x}, beyond the {output_bits}-bit "
                "output address space",
            )
        self.root = self.tables.allocate()
        self._depth_of_size = {lvl.span: d for d, lvl in enumerate(self.geometry) if lvl.leaf}

    # ---- format hooks -------------------------------------------------------------------
    @abc.abstractmethod
    def _kind(self, value: int, depth: int) -> int:
        """EMPTY, TABLE or LEAF for an entry this builder wrote at ``depth``."""

    @abc.abstractmethod
    def _table_entry(self, table: int) -> int:
        """The entry pointing at the next-level table at address ``table``."""

    @abc.abstractmethod
    def _table_address(self, value: int) -> int:
        """The next-level table address held in a table entry."""

    @abc.abstractmethod
    def _leaf_template(self, depth: int, perms: Perms, attrs: AttrsT | None) -> int:
        """A leaf entry at ``depth`` with every bit but the output address."""

    @abc.abstractmethod
    def _decode_leaf(self, value: int, depth: int) -> tuple[Perms, AttrsT]:
        """Rights and attributes of one leaf entry, as ``remap`` should keep them."""

    @abc.abstractmethod
    def _check_input(self, iova: int, size: int) -> None:
        """Raise EncodeError unless ``[iova, iova + size)`` is inside the input address space."""

    @abc.abstractmethod
    def walk(self, iova: int, access: Perms | None = None) -> Translation[AttrsT] | Fault:
        """Translate ``iova`` by reading the table bytes as the hardware would."""

    # ---- shared API ---------------------------------------------------------------------
    @property
    def memory(self) -> bytearray:
        """The buffer holding every table."""
        return self.tables.buffer

    @property
    def base(self) -> int:
        """The address (as the IOMMU sees it) of ``memory[0]``."""
        return self.tables.base

    @property
    def page_sizes(self) -> tuple[int, ...]:
        """Leaf sizes this format and configuration can map, smallest first."""
        return tuple(sorted(self._depth_of_size))

    @property
    def levels(self) -> tuple[int, ...]:
        """Level numbers from the root down, as the format's specification names them."""
        return tuple(lvl.number for lvl in self.geometry)

    def level_for_size(self, page_size: int) -> int:
        """The level number that holds leaves of ``page_size``."""
        return self.geometry[self._leaf_depth(page_size)].number

    def dirty_ranges(self) -> list[DirtyRange]:
        """Byte ranges changed since the last ``mark_clean``."""
        return self.tables.dirty_ranges()

    def mark_clean(self) -> None:
        """Forget changes once they are copied where the IOMMU reads them."""
        self.tables.mark_clean()

    def sync_into(self, destination: bytearray | memoryview) -> int:
        """Copy changes into ``destination`` (laid out like ``memory``) and mark clean."""
        return self.tables.sync_into(destination)

    def map(
        self,
        iova: int,
        pa: int,
        size: int,
        perms: Perms = READ_WRITE,
        *,
        page_size: int | None = None,
        attrs: AttrsT | None = None,
    ) -> None:
        """Map ``[iova, iova + size)`` to ``pa`` with leaves of ``page_size``.

        Without ``page_size`` the largest supported size that ``iova``, ``pa`` and ``size``
        are all aligned to is used. Nothing is written unless the whole range can be mapped.
        """
        if page_size is None:
            page_size = self._largest_fitting(iova | pa | size)
        depth = self._leaf_depth(page_size)
        self._check_range(iova, pa, size, page_size)
        if not perms & Perms.READ:
            raise EncodeError("perms", f"{perms!r} lacks READ; these formats cannot express it")
        template = self._leaf_template(depth, perms, attrs)
        needed = self._check_free(self.root, 0, iova, iova + size, depth)
        if needed > self.tables.tables_free:
            raise EncodeError(
                "memory",
                f"mapping needs {needed} more table pages, {self.tables.tables_free} are free",
            )
        self._fill(self.root, 0, iova, iova + size, pa, depth, template)

    def unmap(self, iova: int, size: int) -> int:
        """Clear the leaves exactly covering ``[iova, iova + size)``; return bytes unmapped."""
        if size <= 0:
            raise EncodeError("size", f"{size:#x} is not positive")
        self._check_input(iova, size)
        spans: list[tuple[int, int]] = []
        self._collect_leaves(self.root, 0, iova, iova + size, spans)
        for address, length in spans:
            self.tables.zero(address, length)
        return size

    def remap(
        self,
        iova: int,
        new_pa: int,
        perms: Perms | None = None,
        *,
        attrs: AttrsT | None = None,
    ) -> int:
        """Point the leaf starting at ``iova`` at ``new_pa`` in the same slot; return its address.

        Without ``perms`` and ``attrs`` every other bit of the entry is kept; either one not
        given is taken from the current entry (x86 re-derives D from the new rights).
        """
        depth, address, value = self._find_leaf(iova)
        span = self.geometry[depth].span
        if iova & (span - 1):
            raise EncodeError(
                "iova",
                f"{iova:#x} is inside the {size_name(span)} leaf at {iova & ~(span - 1):#x}; "
                "pass the leaf's first address",
            )
        self._check_output(new_pa, span, span)
        if perms is None and attrs is None:
            oa_mask = ((1 << self.output_bits) - 1) & ~(span - 1)
            entry = (value & ~oa_mask) | new_pa
        else:
            current_perms, current_attrs = self._decode_leaf(value, depth)
            perms = current_perms if perms is None else perms
            attrs = current_attrs if attrs is None else attrs
            if not perms & Perms.READ:
                raise EncodeError("perms", f"{perms!r} lacks READ; these formats cannot express it")
            entry = self._leaf_template(depth, perms, attrs) | new_pa
        self.tables.write(address, entry)
        return address

    # ---- engine -------------------------------------------------------------------------
    def _leaf_depth(self, page_size: int) -> int:
        depth = self._depth_of_size.get(page_size)
        if depth is None:
            supported = ", ".join(size_name(s) for s in self.page_sizes)
            raise EncodeError(
                "page_size", f"{page_size:#x} is not supported here (supported: {supported})"
            )
        return depth

    def _largest_fitting(self, alignment: int) -> int:
        for size in reversed(self.page_sizes):
            if alignment % size == 0:
                return size
        raise EncodeError(
            "iova", f"iova, pa and size are not aligned to {size_name(self.page_sizes[0])}"
        )

    def _check_range(self, iova: int, pa: int, size: int, page_size: int) -> None:
        if size <= 0 or size % page_size:
            raise EncodeError(
                "size", f"{size:#x} is not a positive multiple of {size_name(page_size)}"
            )
        if iova % page_size:
            raise EncodeError("iova", f"{iova:#x} is not aligned to {size_name(page_size)}")
        self._check_input(iova, size)
        self._check_output(pa, size, page_size)

    def _check_output(self, pa: int, size: int, alignment: int) -> None:
        if pa < 0 or pa % alignment:
            raise EncodeError("pa", f"{pa:#x} is not aligned to {size_name(alignment)}")
        if pa + size > 1 << self.output_bits:
            raise EncodeError(
                "pa", f"{pa:#x} + {size:#x} exceeds the {self.output_bits}-bit output address space"
            )

    def _entries(self, depth: int, start: int, end: int) -> list[tuple[int, int, int]]:
        """(entry index, sub-range start, sub-range end) for each entry ``[start, end)`` touches."""
        lvl = self.geometry[depth]
        mask = lvl.entries - 1
        out = []
        while start < end:
            stop = min(end, ((start >> lvl.shift) + 1) << lvl.shift)
            out.append(((start >> lvl.shift) & mask, start, stop))
            start = stop
        return out

    def _new_tables(self, depth: int, start: int, end: int, leaf_depth: int) -> int:
        """How many tables a subtree rooted at a missing table at ``depth`` needs."""
        count = 1
        for d in range(depth, leaf_depth):
            shift = self.geometry[d].shift
            count += ((end - 1) >> shift) - (start >> shift) + 1
        return count

    def _check_free(self, table: int, depth: int, start: int, end: int, leaf_depth: int) -> int:
        """Raise EncodeError on any overlap; return how many new tables mapping needs."""
        lvl = self.geometry[depth]
        if depth == leaf_depth:
            first = table + ((start >> lvl.shift) & (lvl.entries - 1)) * 8
            count = (end - start) >> lvl.shift
            if not self.tables.is_zero(first, count * 8):
                for i, value in enumerate(self.tables.read_array(first, count)):
                    if self._kind(value, depth) != EMPTY:
                        self._overlap(start + (i << lvl.shift), depth)
            return 0
        needed = 0
        for index, sub_start, sub_end in self._entries(depth, start, end):
            value = self.tables.read(table + index * 8)
            kind = self._kind(value, depth)
            if kind == LEAF:
                self._overlap(sub_start, depth)
            elif kind == TABLE:
                child = self._table_address(value)
                needed += self._check_free(child, depth + 1, sub_start, sub_end, leaf_depth)
            else:
                needed += self._new_tables(depth + 1, sub_start, sub_end, leaf_depth)
        return needed

    def _overlap(self, iova: int, depth: int) -> None:
        span = self.geometry[depth].span
        raise EncodeError(
            "iova",
            f"{iova:#x} is already mapped by the {size_name(span)} leaf at "
            f"{iova & ~(span - 1):#x} (level {self.geometry[depth].number})",
        )

    def _fill(
        self, table: int, depth: int, start: int, end: int, pa: int, leaf_depth: int, template: int
    ) -> None:
        lvl = self.geometry[depth]
        if depth == leaf_depth:
            step = lvl.span
            first = template | pa
            values = array("Q", range(first, first + (end - start), step))
            self.tables.write_array(table + ((start >> lvl.shift) & (lvl.entries - 1)) * 8, values)
            return
        for index, sub_start, sub_end in self._entries(depth, start, end):
            address = table + index * 8
            value = self.tables.read(address)
            if self._kind(value, depth) == TABLE:
                child = self._table_address(value)
            else:
                child = self.tables.allocate()
                self.tables.write(address, self._table_entry(child))
            self._fill(
                child, depth + 1, sub_start, sub_end, pa + sub_start - start, leaf_depth, template
            )

    def _collect_leaves(
        self, table: int, depth: int, start: int, end: int, spans: list[tuple[int, int]]
    ) -> None:
        lvl = self.geometry[depth]
        if depth == len(self.geometry) - 1:
            first = table + ((start >> lvl.shift) & (lvl.entries - 1)) * 8
            values = self.tables.read_array(first, (end - start) >> lvl.shift)
            for i, value in enumerate(values):
                if self._kind(value, depth) != LEAF:
                    raise EncodeError("iova", f"{start + (i << lvl.shift):#x} is not mapped")
            spans.append((first, len(values) * 8))
            return
        for index, sub_start, sub_end in self._entries(depth, start, end):
            address = table + index * 8
            value = self.tables.read(address)
            kind = self._kind(value, depth)
            if kind == EMPTY:
                raise EncodeError("iova", f"{sub_start:#x} is not mapped")
            if kind == TABLE:
                child = self._table_address(value)
                self._collect_leaves(child, depth + 1, sub_start, sub_end, spans)
                continue
            if sub_end - sub_start != lvl.span:
                raise EncodeError(
                    "size",
                    f"the range would split the {size_name(lvl.span)} leaf at "
                    f"{sub_start & ~(lvl.span - 1):#x}",
                )
            if spans and spans[-1][0] + spans[-1][1] == address:
                spans[-1] = (spans[-1][0], spans[-1][1] + 8)
            else:
                spans.append((address, 8))

    def _find_leaf(self, iova: int) -> tuple[int, int, int]:
        """(depth, entry address, entry) of the leaf mapping ``iova``; EncodeError if none."""
        self._check_input(iova, 1)
        table = self.root
        for depth, lvl in enumerate(self.geometry):
            address = table + ((iova >> lvl.shift) & (lvl.entries - 1)) * 8
            value = self.tables.read(address)
            kind = self._kind(value, depth)
            if kind == LEAF:
                return depth, address, value
            if kind == EMPTY:
                break
            table = self._table_address(value)
        raise EncodeError("iova", f"{iova:#x} is not mapped")
