"""Queued-invalidation descriptors, 128-bit (legacy) or 256-bit (scalable mode, IQA_REG.DW=1).

Layouts per the VT-d spec (section 6.5.2), the kernel's ``QI_*`` macros in
``drivers/iommu/intel/iommu.h`` and QEMU's ``VTD_INV_DESC_*`` reserved masks. The type is
bits 3:0 plus bits 11:9 (high part) of qw0; in a 256-bit descriptor qw2 and qw3 are
reserved. Range checks: reserved granularities, page-selective addresses aligned to
2^AM pages, a device-TLB range address with at least one zero bit, dword-aligned
status addresses.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, Self, cast

from harness.errors import DecodeError, EncodeError
from harness.vtd._bits import (
    Bits,
    ErrorType,
    Layout,
    Packed,
    bit,
    bytes_from_words,
    describe_bits,
    words_from_bytes,
)

_TYPE_MASK = 0xE0F
PAGE_SHIFT = 12
MAX_AM = 64 - PAGE_SHIFT


class DescriptorType(IntEnum):
    """Invalidation descriptor types (kernel ``QI_*_TYPE``)."""

    CONTEXT_CACHE = 1
    IOTLB = 2
    DEVICE_TLB = 3
    IEC = 4
    WAIT = 5
    PASID_IOTLB = 6
    PASID_CACHE = 7
    PASID_DEVICE_TLB = 8


class CcGranularity(IntEnum):
    GLOBAL = 1
    DOMAIN = 2
    DEVICE = 3


class IotlbGranularity(IntEnum):
    GLOBAL = 1
    DOMAIN = 2
    PAGE = 3


class PasidCacheGranularity(IntEnum):
    DOMAIN = 0
    PASID = 1
    GLOBAL = 3


class PasidIotlbGranularity(IntEnum):
    PASID = 2
    PAGE = 3


def descriptor_type(qw0: int) -> int:
    """The 7-bit type of a descriptor from its first qword."""
    return (qw0 & 0xF) | ((qw0 >> 9) & 0x7) << 4


def _layout(name: str, dtype: DescriptorType, fields: tuple[Bits, ...]) -> Layout:
    return Layout(name, 2, fields, fixed={0: (_TYPE_MASK, (dtype & 0xF) | (dtype >> 4) << 9)})


def _check_psi(error: ErrorType, name: str, address: int, am: int) -> None:
    if am > MAX_AM:
        raise error(f"{name}.AM", f"{am} is larger than {MAX_AM}")
    size = 1 << (PAGE_SHIFT + am)
    if address & (size - 1):
        raise error(
            f"{name}.ADDR",
            f"0x{address:x} is not aligned to 2^AM pages (AM={am}, {size:#x} bytes)",
        )


def device_tlb_range(address: int, size: bool) -> tuple[int, int]:
    """(base, length) a device-TLB descriptor's ADDR/S pair invalidates."""
    if not size:
        return address, 1 << PAGE_SHIFT
    ones = 0
    while (address >> (PAGE_SHIFT + ones)) & 1 and PAGE_SHIFT + ones < 64:
        ones += 1
    length = 1 << (PAGE_SHIFT + ones + 1)
    return address & ~(length - 1) & ((1 << 64) - 1), length


def device_tlb_address(address: int, size_order: int) -> tuple[int, bool]:
    """ADDR and S for invalidating 2^size_order pages at ``address`` (kernel encoding)."""
    if not 0 <= size_order <= MAX_AM:
        raise EncodeError("ADDR", f"size order {size_order} outside 0..{MAX_AM}")
    if size_order == 0:
        return address, False
    length = 1 << (PAGE_SHIFT + size_order)
    if address & (length - 1):
        raise EncodeError("ADDR", f"0x{address:x} is not aligned to {length:#x} bytes")
    return address | ((length >> 1) - 1) & ~((1 << PAGE_SHIFT) - 1), True


class InvalidationDescriptor(Packed):
    """Base of all descriptor classes: decode from / encode to 16 or 32 bytes."""

    TYPE: ClassVar[DescriptorType]
    REGISTRY: ClassVar[dict[int, type[InvalidationDescriptor]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "TYPE" in cls.__dict__:
            InvalidationDescriptor.REGISTRY[cls.TYPE] = cls

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Self:
        """Decode a 16- or 32-byte descriptor of this class's type (the base: of any type)."""
        if "LAYOUT" not in vars(cls):
            return cast(Self, decode_invalidation(data))
        words = _descriptor_words(cls.LAYOUT.struct_name, data)
        return cls.from_words(words[:2])

    def encode(self, width: int = 128) -> bytes:
        """The descriptor as 16 bytes (``width=128``) or 32 bytes (``width=256``)."""
        if width not in (128, 256):
            raise EncodeError(f"{self.LAYOUT.struct_name}.width", f"{width} is not 128 or 256")
        words = self.to_words()
        return bytes_from_words([*words, 0, 0] if width == 256 else words)


def _descriptor_words(name: str, data: bytes | bytearray | memoryview) -> list[int]:
    words = words_from_bytes(name, data, (16, 32))
    for index in (2, 3):
        if index < len(words) and words[index]:
            raise DecodeError(
                f"{name}.RSVD[{describe_bits(index, (1 << 64) - 1)}]",
                f"reserved qword {index} is 0x{words[index]:016x}, must be zero",
            )
    return words


def decode_invalidation(data: bytes | bytearray | memoryview) -> InvalidationDescriptor:
    """Decode any 128- or 256-bit invalidation descriptor by its type."""
    words = _descriptor_words("InvalidationDescriptor", data)
    dtype = descriptor_type(words[0])
    cls = InvalidationDescriptor.REGISTRY.get(dtype)
    if cls is None:
        raise DecodeError("InvalidationDescriptor.Type", f"unknown descriptor type {dtype:#x}")
    return cls.from_words(words[:2])


@dataclass(frozen=True)
class ContextCacheInvalidation(InvalidationDescriptor):
    """Context-cache invalidate (type 1)."""

    TYPE: ClassVar[DescriptorType] = DescriptorType.CONTEXT_CACHE
    LAYOUT: ClassVar[Layout] = _layout(
        "ContextCacheInvalidation",
        DescriptorType.CONTEXT_CACHE,
        (
            Bits("granularity", "G", 0, 4, 5),
            Bits("did", "DID", 0, 16, 31),
            Bits("sid", "SID", 0, 32, 47),
            Bits("fm", "FM", 0, 48, 49),
        ),
    )

    granularity: int = CcGranularity.GLOBAL
    did: int = 0
    sid: int = 0
    fm: int = 0

    def _check(self, error: ErrorType) -> None:
        if self.granularity == 0:
            raise error("ContextCacheInvalidation.G", "reserved granularity 0")


@dataclass(frozen=True)
class IotlbInvalidation(InvalidationDescriptor):
    """IOTLB invalidate (type 2): global, domain- or page-selective."""

    TYPE: ClassVar[DescriptorType] = DescriptorType.IOTLB
    LAYOUT: ClassVar[Layout] = _layout(
        "IotlbInvalidation",
        DescriptorType.IOTLB,
        (
            Bits("granularity", "G", 0, 4, 5),
            bit("dw", "DW", 0, 6),
            bit("dr", "DR", 0, 7),
            Bits("did", "DID", 0, 16, 31),
            Bits("am", "AM", 1, 0, 5),
            bit("ih", "IH", 1, 6),
            Bits("address", "ADDR", 1, 12, 63, in_place=True),
        ),
    )

    granularity: int = IotlbGranularity.GLOBAL
    dw: bool = False
    dr: bool = False
    did: int = 0
    am: int = 0
    ih: bool = False
    address: int = 0

    @property
    def size(self) -> int:
        """Bytes a page-selective invalidation covers: 4 KiB << AM."""
        return 1 << (PAGE_SHIFT + self.am)

    def _check(self, error: ErrorType) -> None:
        if self.granularity == 0:
            raise error("IotlbInvalidation.G", "reserved granularity 0")
        if self.granularity == IotlbGranularity.PAGE:
            _check_psi(error, "IotlbInvalidation", self.address, self.am)


class _SplitPfsid(InvalidationDescriptor):
    """PFSID is split: bits 15:12 (low 4 bits) and 63:52 (high 12 bits) of qw0."""

    pfsid: int

    def _values(self) -> dict[str, Any]:
        values = {
            f.attr: getattr(self, f.attr)
            for f in self.LAYOUT.fields
            if f.attr not in ("pfsid_lo", "pfsid_hi")
        }
        pfsid = self.pfsid
        if not isinstance(pfsid, int) or isinstance(pfsid, bool) or not 0 <= pfsid <= 0xFFFF:
            raise EncodeError(f"{self.LAYOUT.struct_name}.PFSID", f"{pfsid!r} is not 16-bit")
        values["pfsid_lo"] = pfsid & 0xF
        values["pfsid_hi"] = pfsid >> 4
        return values

    @classmethod
    def _from_values(cls, values: dict[str, Any]) -> Self:
        values["pfsid"] = values.pop("pfsid_lo") | values.pop("pfsid_hi") << 4
        return cls(**values)


@dataclass(frozen=True)
class DeviceTlbInvalidation(_SplitPfsid):
    """Device-TLB invalidate (type 3): sent to the ATS device ``sid``."""

    TYPE: ClassVar[DescriptorType] = DescriptorType.DEVICE_TLB
    LAYOUT: ClassVar[Layout] = _layout(
        "DeviceTlbInvalidation",
        DescriptorType.DEVICE_TLB,
        (
            Bits("pfsid_lo", "PFSID", 0, 12, 15),
            Bits("mip", "MIP", 0, 16, 20),
            Bits("sid", "SID", 0, 32, 47),
            Bits("pfsid_hi", "PFSID", 0, 52, 63),
            bit("size", "S", 1, 0),
            Bits("address", "ADDR", 1, 12, 63, in_place=True),
        ),
    )

    sid: int = 0
    address: int = 0
    size: bool = False
    pfsid: int = 0
    mip: int = 0

    @classmethod
    def for_range(
        cls, sid: int, address: int, size_order: int, *, pfsid: int = 0, mip: int = 0
    ) -> Self:
        """Invalidate 2^size_order pages at ``address`` (kernel ``qi_desc_dev_iotlb``)."""
        addr, size = device_tlb_address(address, size_order)
        return cls(sid=sid, address=addr, size=size, pfsid=pfsid, mip=mip)

    @property
    def range(self) -> tuple[int, int]:
        """(base, length) in bytes this descriptor invalidates."""
        return device_tlb_range(self.address, self.size)

    def _check(self, error: ErrorType) -> None:
        if self.size and self.address >> PAGE_SHIFT == (1 << (64 - PAGE_SHIFT)) - 1:
            raise error("DeviceTlbInvalidation.ADDR", "S=1 but ADDR has no zero bit to size it")


@dataclass(frozen=True)
class IecInvalidation(InvalidationDescriptor):
    """Interrupt-entry-cache invalidate (type 4): global or index-selective."""

    TYPE: ClassVar[DescriptorType] = DescriptorType.IEC
    LAYOUT: ClassVar[Layout] = _layout(
        "IecInvalidation",
        DescriptorType.IEC,
        (
            bit("index_selective", "G", 0, 4),
            Bits("im", "IM", 0, 27, 31),
            Bits("index", "IIDX", 0, 32, 47),
        ),
    )

    index_selective: bool = False
    im: int = 0
    index: int = 0

    def _check(self, error: ErrorType) -> None:
        if self.index_selective and self.index & ((1 << self.im) - 1):
            raise error("IecInvalidation.IIDX", f"{self.index} is not aligned to 2^IM={self.im}")


@dataclass(frozen=True)
class InvalidationWait(InvalidationDescriptor):
    """Invalidation wait (type 5): status write and/or interrupt once prior ones complete."""

    TYPE: ClassVar[DescriptorType] = DescriptorType.WAIT
    LAYOUT: ClassVar[Layout] = _layout(
        "InvalidationWait",
        DescriptorType.WAIT,
        (
            bit("interrupt", "IF", 0, 4),
            bit("status_write", "SW", 0, 5),
            bit("fence", "FN", 0, 6),
            bit("page_request_drain", "PD", 0, 7),
            Bits("status_data", "STDATA", 0, 32, 63),
            Bits("status_address", "STADDR", 1, 2, 63, in_place=True),
        ),
    )

    status_write: bool = False
    status_data: int = 0
    status_address: int = 0
    interrupt: bool = False
    fence: bool = False
    page_request_drain: bool = False


@dataclass(frozen=True)
class PasidIotlbInvalidation(InvalidationDescriptor):
    """PASID-based IOTLB invalidate (type 6, P_IOTLB): PASID- or page-selective-within-PASID."""

    TYPE: ClassVar[DescriptorType] = DescriptorType.PASID_IOTLB
    LAYOUT: ClassVar[Layout] = _layout(
        "PasidIotlbInvalidation",
        DescriptorType.PASID_IOTLB,
        (
            Bits("granularity", "G", 0, 4, 5),
            Bits("did", "DID", 0, 16, 31),
            Bits("pasid", "PASID", 0, 32, 51),
            Bits("am", "AM", 1, 0, 5),
            bit("ih", "IH", 1, 6),
            Bits("address", "ADDR", 1, 12, 63, in_place=True),
        ),
    )

    granularity: int = PasidIotlbGranularity.PASID
    did: int = 0
    pasid: int = 0
    am: int = 0
    ih: bool = False
    address: int = 0

    @property
    def size(self) -> int:
        """Bytes a page-selective invalidation covers: 4 KiB << AM."""
        return 1 << (PAGE_SHIFT + self.am)

    def _check(self, error: ErrorType) -> None:
        if self.granularity not in tuple(PasidIotlbGranularity):
            raise error(
                "PasidIotlbInvalidation.G",
                f"reserved granularity {self.granularity} (2: PASID, 3: page)",
            )
        if self.granularity == PasidIotlbGranularity.PAGE:
            _check_psi(error, "PasidIotlbInvalidation", self.address, self.am)


@dataclass(frozen=True)
class PasidCacheInvalidation(InvalidationDescriptor):
    """PASID-cache invalidate (type 7): domain-, PASID-selective or global."""

    TYPE: ClassVar[DescriptorType] = DescriptorType.PASID_CACHE
    LAYOUT: ClassVar[Layout] = _layout(
        "PasidCacheInvalidation",
        DescriptorType.PASID_CACHE,
        (
            Bits("granularity", "G", 0, 4, 5),
            Bits("did", "DID", 0, 16, 31),
            Bits("pasid", "PASID", 0, 32, 51),
        ),
    )

    granularity: int = PasidCacheGranularity.DOMAIN
    did: int = 0
    pasid: int = 0

    def _check(self, error: ErrorType) -> None:
        if self.granularity not in tuple(PasidCacheGranularity):
            raise error("PasidCacheInvalidation.G", f"reserved granularity {self.granularity}")


@dataclass(frozen=True)
class PasidDeviceTlbInvalidation(_SplitPfsid):
    """PASID-based device-TLB invalidate (type 8)."""

    TYPE: ClassVar[DescriptorType] = DescriptorType.PASID_DEVICE_TLB
    LAYOUT: ClassVar[Layout] = _layout(
        "PasidDeviceTlbInvalidation",
        DescriptorType.PASID_DEVICE_TLB,
        (
            Bits("mip", "MIP", 0, 4, 8),
            Bits("pfsid_lo", "PFSID", 0, 12, 15),
            Bits("sid", "SID", 0, 16, 31),
            Bits("pasid", "PASID", 0, 32, 51),
            Bits("pfsid_hi", "PFSID", 0, 52, 63),
            bit("all_pasids", "G", 1, 0),
            bit("size", "S", 1, 11),
            Bits("address", "ADDR", 1, 12, 63, in_place=True),
        ),
    )

    sid: int = 0
    pasid: int = 0
    address: int = 0
    size: bool = False
    all_pasids: bool = False
    pfsid: int = 0
    mip: int = 0

    @classmethod
    def for_range(
        cls,
        sid: int,
        pasid: int,
        address: int,
        size_order: int,
        *,
        pfsid: int = 0,
        mip: int = 0,
    ) -> Self:
        """Invalidate 2^size_order pages at ``address`` in ``pasid``."""
        addr, size = device_tlb_address(address, size_order)
        return cls(sid=sid, pasid=pasid, address=addr, size=size, pfsid=pfsid, mip=mip)

    @property
    def range(self) -> tuple[int, int]:
        """(base, length) in bytes this descriptor invalidates."""
        return device_tlb_range(self.address, self.size)

    def _check(self, error: ErrorType) -> None:
        if self.size and self.address >> PAGE_SHIFT == (1 << (64 - PAGE_SHIFT)) - 1:
            raise error(
                "PasidDeviceTlbInvalidation.ADDR", "S=1 but ADDR has no zero bit to size it"
            )
