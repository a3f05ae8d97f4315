"""Memory for DMA: page-aligned anonymous (or memfd) mappings whose address the kernel can pin.

``DmaBuffer(size)`` maps private anonymous memory; ``hugetlb=True`` asks for hugetlbfs
pages (MAP_HUGETLB), ``thp=True`` aligns to the PMD size and advises MADV_HUGEPAGE,
``memfd=True`` backs it with a memfd (for IOMMU_IOAS_MAP_FILE, whose ``fd`` it exposes).
``addr`` is the user virtual address to hand to IOMMU_IOAS_MAP or VFIO_IOMMU_MAP_DMA.
"""

from __future__ import annotations

import ctypes
import mmap
import os

from harness.driver.backend import Closing
from harness.errors import ConfigError

PAGE_SIZE = mmap.PAGESIZE
_DEFAULT_PMD = 2 * 1024 * 1024


def pmd_size() -> int:
    """The transparent huge page size (2 MiB on x86_64 and arm64 with 4 KiB pages)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return _DEFAULT_PMD


def address_of(mapping: mmap.mmap) -> int:
    """The user virtual address of an mmap object's first byte."""
    probe = ctypes.c_char.from_buffer(mapping)
    try:
        return ctypes.addressof(probe)
    finally:
        del probe


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


class DmaBuffer(Closing):
    """A page-aligned mapping of ``size`` bytes, unmapped by ``close()``."""

    def __init__(
        self,
        size: int,
        *,
        hugetlb: bool = False,
        thp: bool = False,
        memfd: bool = False,
        populate: bool = True,
        fill: int | None = None,
    ) -> None:
        if size <= 0:
            raise ConfigError(f"DmaBuffer size {size}: must be positive")
        if hugetlb and thp:
            raise ConfigError("DmaBuffer: hugetlb and thp are exclusive")
        self.fd = -1
        self.hugetlb = hugetlb
        self.thp = thp
        align = pmd_size() if (thp or hugetlb) else PAGE_SIZE
        self.size = _round_up(size, align if hugetlb else PAGE_SIZE)
        flags = mmap.MAP_SHARED if memfd else mmap.MAP_PRIVATE
        if populate:
            flags |= getattr(mmap, "MAP_POPULATE", 0)
        length = self.size + (align if thp else 0)
        if memfd:
            self.fd = os.memfd_create("dma-buffer", os.MFD_HUGETLB if hugetlb else 0)
            os.ftruncate(self.fd, length)
            self._map = mmap.mmap(self.fd, length, flags=flags)
        else:
            if hugetlb:
                flags |= getattr(mmap, "MAP_HUGETLB", 0x40000)
            self._map = mmap.mmap(-1, length, flags=flags)
        base = address_of(self._map)
        self.offset = _round_up(base, align) - base if thp else 0
        self.addr = base + self.offset
        if thp:
            self._map.madvise(mmap.MADV_HUGEPAGE, self.offset, self.size)
        if fill is not None:
            self._map[self.offset : self.offset + self.size] = bytes([fill]) * self.size

    @property
    def view(self) -> memoryview:
        """The buffer's bytes (writable); release views before ``close()``."""
        return memoryview(self._map)[self.offset : self.offset + self.size]

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        end = self.size if length is None else offset + length
        return self._map[self.offset + offset : self.offset + end]

    def write(self, offset: int, data: bytes) -> None:
        start = self.offset + offset
        self._map[start : start + len(data)] = data

    def page(self, index: int) -> int:
        """The address of the ``index``-th base page."""
        return self.addr + index * PAGE_SIZE

    def close(self) -> None:
        if not self._map.closed:
            self._map.close()
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __repr__(self) -> str:
        kind = "hugetlb" if self.hugetlb else "thp" if self.thp else "4k"
        return f"DmaBuffer(addr={self.addr:#x}, size={self.size:#x}, {kind})"
