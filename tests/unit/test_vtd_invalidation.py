"""Queued-invalidation descriptors against the kernel's QI_* encodings (iommu.h, dmar.c)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import DecodeError, EncodeError
from harness.vtd import (
    CcGranularity,
    ContextCacheInvalidation,
    DescriptorType,
    DeviceTlbInvalidation,
    IecInvalidation,
    InvalidationDescriptor,
    InvalidationWait,
    IotlbGranularity,
    IotlbInvalidation,
    PasidCacheGranularity,
    PasidCacheInvalidation,
    PasidDeviceTlbInvalidation,
    PasidIotlbGranularity,
    PasidIotlbInvalidation,
    decode_invalidation,
)
from harness.vtd.invalidation import device_tlb_range

pytestmark = pytest.mark.tier0

U64 = (1 << 64) - 1
PAGE_MASK = U64 & ~0xFFF


def qwords(*words: int) -> bytes:
    return struct.pack(f"<{len(words)}Q", *words)


# -- the kernel's encoders, transcribed from drivers/iommu/intel/iommu.h and dmar.c --------


def k_flush_context(did: int, sid: int, fm: int, type_: int) -> tuple[int, int]:
    return (fm << 48 | sid << 32 | did << 16 | type_ >> (61 - 4) | 0x1), 0


def k_desc_iotlb(did: int, addr: int, size_order: int, type_: int) -> tuple[int, int]:
    ih = addr & 1
    qw0 = did << 16 | 1 << 7 | 1 << 6 | type_ >> (60 - 4) | 0x2  # QEMU sets DRD/DWD
    return qw0, (addr & PAGE_MASK) | ih << 6 | (size_order & 0x3F)


def k_desc_dev_iotlb(sid: int, pfsid: int, qdep: int, addr: int, mask: int) -> tuple[int, int]:
    if mask:
        addr |= (1 << (12 + mask - 1)) - 1
        qw1 = (addr & PAGE_MASK) | 1
    else:
        qw1 = addr & PAGE_MASK
    if qdep >= 32:
        qdep = 0
    pfsid_bits = (pfsid & 0xF) << 12 | ((pfsid >> 4) & 0xFFF) << 52
    return (sid & 0xFFFF) << 32 | (qdep & 0x1F) << 16 | 0x3 | pfsid_bits, qw1


def k_desc_piotlb(did: int, pasid: int, addr: int, size_order: int, ih: bool) -> tuple[int, int]:
    qw0 = pasid << 32 | did << 16 | 3 << 4 | 0x6
    return qw0, (addr & PAGE_MASK) | int(ih) << 6 | (size_order & 0x3F)


def k_desc_piotlb_all(did: int, pasid: int) -> tuple[int, int]:
    return pasid << 32 | did << 16 | 2 << 4 | 0x6, 0


def k_desc_dev_iotlb_pasid(
    sid: int, pfsid: int, pasid: int, qdep: int, addr: int, size_order: int
) -> tuple[int, int]:
    qw0 = (
        (pasid & 0xFFFFF) << 32
        | (sid & 0xFFFF) << 16
        | (qdep & 0x1F) << 4
        | 0x8
        | (pfsid & 0xF) << 12
        | ((pfsid >> 4) & 0xFFF) << 52
    )
    size_order = min(size_order, 52)
    qw1 = addr & PAGE_MASK
    if size_order:
        qw1 |= ((1 << (size_order + 12)) - 1) & ~0xFFF  # GENMASK_ULL(size_order + 11, 12)
        qw1 &= ~(1 << (12 + size_order - 1))
        qw1 |= 1 << 11
    return qw0, qw1 & U64


def k_flush_pasid_cache(did: int, granu: int, pasid: int) -> tuple[int, int]:
    return pasid << 32 | did << 16 | granu << 4 | 0x7, 0


def k_wait(status_addr: int, drain: bool) -> tuple[int, int]:
    return 2 << 32 | 1 << 5 | 0x5 | int(drain) << 7, status_addr  # QI_DONE = 2


def k_flush_iec(index: int, mask: int) -> tuple[int, int]:
    return (index & 0xFFFF) << 32 | 0x4 | (mask & 0x1F) << 27 | 1 << 4, 0


# -----------------------------------------------------------------------------------------


def test_context_cache_matches_qi_flush_context() -> None:
    raw = k_flush_context(did=5, sid=0x18, fm=0, type_=3 << 61)
    desc = ContextCacheInvalidation(granularity=CcGranularity.DEVICE, did=5, sid=0x18)
    assert desc.encode() == qwords(*raw)
    assert decode_invalidation(qwords(*raw)) == desc


def test_iotlb_page_selective_matches_qi_desc_iotlb() -> None:
    raw = k_desc_iotlb(did=3, addr=0x8000_0000 | 1, size_order=4, type_=3 << 60)
    desc = decode_invalidation(qwords(*raw))
    assert desc == IotlbInvalidation(
        granularity=IotlbGranularity.PAGE, dw=True, dr=True, did=3, am=4, ih=True,
        address=0x8000_0000,
    )  # fmt: skip
    assert isinstance(desc, IotlbInvalidation) and desc.size == 64 << 10
    assert desc.encode() == qwords(*raw)


def test_iotlb_domain_selective() -> None:
    raw = k_desc_iotlb(did=9, addr=0, size_order=0, type_=2 << 60)
    desc = IotlbInvalidation.decode(qwords(*raw))
    assert desc.granularity == IotlbGranularity.DOMAIN and desc.did == 9


@pytest.mark.parametrize("mask", [0, 1, 2, 9])
def test_device_tlb_matches_qi_desc_dev_iotlb(mask: int) -> None:
    addr = 0x40_0000
    raw = k_desc_dev_iotlb(sid=0x18, pfsid=0x1234, qdep=5, addr=addr, mask=mask)
    desc = DeviceTlbInvalidation.for_range(0x18, addr, mask, pfsid=0x1234, mip=5)
    assert desc.encode() == qwords(*raw)
    decoded = decode_invalidation(qwords(*raw))
    assert decoded == desc
    assert desc.range == (addr, 4096 << mask)


def test_piotlb_descriptors_match_the_kernel() -> None:
    psi = k_desc_piotlb(did=4, pasid=0x42, addr=0x20_0000, size_order=9, ih=False)
    desc = PasidIotlbInvalidation(
        granularity=PasidIotlbGranularity.PAGE, did=4, pasid=0x42, am=9, address=0x20_0000
    )
    assert desc.encode(256) == qwords(*psi, 0, 0)
    assert decode_invalidation(qwords(*psi, 0, 0)) == desc
    every = k_desc_piotlb_all(did=4, pasid=0x42)
    assert decode_invalidation(qwords(*every)) == PasidIotlbInvalidation(did=4, pasid=0x42)


@pytest.mark.parametrize("size_order", [0, 1, 3, 52])
def test_pasid_device_tlb_matches_qi_desc_dev_iotlb_pasid(size_order: int) -> None:
    addr = 0 if size_order == 52 else 0x10_0000
    raw = k_desc_dev_iotlb_pasid(0x18, 0x18, 7, 2, addr, size_order)
    desc = PasidDeviceTlbInvalidation.for_range(0x18, 7, addr, size_order, pfsid=0x18, mip=2)
    assert desc.encode() == qwords(*raw)
    assert decode_invalidation(qwords(*raw)) == desc
    base, length = desc.range
    assert (base, length) == (addr, 4096 << size_order)


def test_pasid_cache_matches_qi_flush_pasid_cache() -> None:
    raw = k_flush_pasid_cache(did=2, granu=1, pasid=0x99)
    desc = decode_invalidation(qwords(*raw))
    assert desc == PasidCacheInvalidation(
        granularity=PasidCacheGranularity.PASID, did=2, pasid=0x99
    )


def test_wait_matches_qi_submit_sync() -> None:
    raw = k_wait(0x1_2345_6788, drain=True)
    desc = decode_invalidation(qwords(*raw))
    assert desc == InvalidationWait(
        status_write=True, status_data=2, status_address=0x1_2345_6788, page_request_drain=True
    )


def test_iec_matches_qi_flush_iec() -> None:
    raw = k_flush_iec(index=0x40, mask=3)
    assert decode_invalidation(qwords(*raw)) == IecInvalidation(True, 3, 0x40)


def test_every_type_is_registered() -> None:
    assert set(InvalidationDescriptor.REGISTRY) == set(DescriptorType)


descriptors = st.one_of(
    st.builds(
        ContextCacheInvalidation,
        granularity=st.integers(1, 3),
        did=st.integers(0, 0xFFFF),
        sid=st.integers(0, 0xFFFF),
        fm=st.integers(0, 3),
    ),
    st.builds(
        lambda am, page, **kw: IotlbInvalidation(am=am, address=page << (12 + am), **kw),
        am=st.integers(0, 20),
        page=st.integers(0, 1 << 20),
        granularity=st.just(IotlbGranularity.PAGE),
        did=st.integers(0, 0xFFFF),
        ih=st.booleans(),
        dw=st.booleans(),
        dr=st.booleans(),
    ),
    st.builds(
        lambda order, page, **kw: DeviceTlbInvalidation.for_range(
            address=page << (12 + order), size_order=order, **kw
        ),
        order=st.integers(0, 30),
        page=st.integers(0, 1 << 20),
        sid=st.integers(0, 0xFFFF),
        pfsid=st.integers(0, 0xFFFF),
        mip=st.integers(0, 31),
    ),
    st.builds(
        IecInvalidation,
        index_selective=st.just(False),
        im=st.integers(0, 31),
        index=st.integers(0, 0xFFFF),
    ),
    st.builds(
        InvalidationWait,
        status_write=st.booleans(),
        status_data=st.integers(0, 0xFFFF_FFFF),
        status_address=st.integers(0, (1 << 62) - 1).map(lambda a: a << 2),
        interrupt=st.booleans(),
        fence=st.booleans(),
        page_request_drain=st.booleans(),
    ),
    st.builds(
        PasidIotlbInvalidation,
        granularity=st.just(PasidIotlbGranularity.PASID),
        did=st.integers(0, 0xFFFF),
        pasid=st.integers(0, 0xFFFFF),
    ),
    st.builds(
        PasidCacheInvalidation,
        granularity=st.sampled_from(list(PasidCacheGranularity)),
        did=st.integers(0, 0xFFFF),
        pasid=st.integers(0, 0xFFFFF),
    ),
    st.builds(
        lambda order, page, **kw: PasidDeviceTlbInvalidation.for_range(
            address=page << (12 + order), size_order=order, **kw
        ),
        order=st.integers(0, 30),
        page=st.integers(0, 1 << 20),
        sid=st.integers(0, 0xFFFF),
        pasid=st.integers(0, 0xFFFFF),
        pfsid=st.integers(0, 0xFFFF),
        mip=st.integers(0, 31),
    ),
)


@settings(max_examples=200)
@given(descriptors, st.sampled_from([128, 256]))
def test_round_trip(desc: InvalidationDescriptor, width: int) -> None:
    data = desc.encode(width)
    assert len(data) == width // 8
    assert decode_invalidation(data) == desc
    assert type(desc).decode(data) == desc


@settings(max_examples=200)
@given(st.binary(min_size=16, max_size=16))
def test_random_descriptors_decode_exactly_or_name_the_field(data: bytes) -> None:
    try:
        desc = decode_invalidation(data)
    except DecodeError as exc:
        assert exc.field.split(".")[0].endswith(("Invalidation", "Descriptor", "Wait"))
    else:
        assert desc.encode() == data


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (qwords(0x0, 0), "InvalidationDescriptor.Type"),
        (qwords(0x9, 0), "InvalidationDescriptor.Type"),
        (qwords(0x1 | 1 << 9, 0), "InvalidationDescriptor.Type"),
        (qwords(0x1, 0), "ContextCacheInvalidation.G"),
        (qwords(0x1 | 1 << 4 | 1 << 6, 0), "ContextCacheInvalidation.RSVD[6]"),
        (qwords(0x1 | 1 << 4, 0, 0, 1), "InvalidationDescriptor.RSVD[255:192]"),
        (qwords(0x2 | 3 << 4, 0x1000 | 1), "IotlbInvalidation.ADDR"),
        (qwords(0x2 | 3 << 4, 1 << 7), "IotlbInvalidation.RSVD[71]"),
        (qwords(0x2 | 3 << 4, 53), "IotlbInvalidation.AM"),
        (qwords(0x3, PAGE_MASK | 1), "DeviceTlbInvalidation.ADDR"),
        (qwords(0x3 | 1 << 4, 0), "DeviceTlbInvalidation.RSVD[4]"),
        (qwords(0x4 | 1 << 4 | 2 << 27 | 3 << 32, 0), "IecInvalidation.IIDX"),
        (qwords(0x5, 0x1002), "InvalidationWait.RSVD[65]"),
        (qwords(0x6 | 1 << 4, 0), "PasidIotlbInvalidation.G"),
        (qwords(0x6 | 3 << 4, 0x3000 | 1), "PasidIotlbInvalidation.ADDR"),
        (qwords(0x7 | 2 << 4, 0), "PasidCacheInvalidation.G"),
        (qwords(0x7, 1 << 5), "PasidCacheInvalidation.RSVD[69]"),
        (qwords(0x8, PAGE_MASK | 1 << 11), "PasidDeviceTlbInvalidation.ADDR"),
    ],
)
def test_decode_errors_name_the_field(data: bytes, field: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_invalidation(data)
    assert info.value.field == field


@pytest.mark.parametrize("size", [0, 8, 15, 17, 24, 64])
def test_wrong_lengths_are_rejected(size: int) -> None:
    with pytest.raises(DecodeError, match="expected 16 or 32 bytes"):
        decode_invalidation(bytes(size))


def test_class_decode_rejects_another_type() -> None:
    with pytest.raises(DecodeError) as info:
        IotlbInvalidation.decode(ContextCacheInvalidation().encode())
    assert info.value.field == "IotlbInvalidation.Type"


@pytest.mark.parametrize(
    ("desc", "field", "problem"),
    [
        (IotlbInvalidation(granularity=3, am=2, address=0x1000), "IotlbInvalidation.ADDR",
         r"2\^AM pages"),
        (IotlbInvalidation(granularity=0), "IotlbInvalidation.G", "reserved"),
        (IotlbInvalidation(granularity=3, am=64), "IotlbInvalidation.AM", "6 bits"),
        (IotlbInvalidation(did=0x1_0000), "IotlbInvalidation.DID", "16 bits"),
        (IotlbInvalidation(granularity=3, address=0x1234), "IotlbInvalidation.ADDR", "aligned"),
        (ContextCacheInvalidation(fm=4), "ContextCacheInvalidation.FM", "2 bits"),
        (PasidIotlbInvalidation(pasid=1 << 20), "PasidIotlbInvalidation.PASID", "20 bits"),
        (PasidIotlbInvalidation(granularity=1), "PasidIotlbInvalidation.G", "reserved"),
        (PasidCacheInvalidation(granularity=2), "PasidCacheInvalidation.G", "reserved"),
        (DeviceTlbInvalidation(pfsid=0x1_0000), "DeviceTlbInvalidation.PFSID", "16-bit"),
        (DeviceTlbInvalidation(mip=32), "DeviceTlbInvalidation.MIP", "5 bits"),
        (DeviceTlbInvalidation(size=True, address=PAGE_MASK), "DeviceTlbInvalidation.ADDR",
         "zero bit"),
        (InvalidationWait(status_address=0x1002), "InvalidationWait.STADDR", "aligned"),
        (InvalidationWait(status_data=1 << 32), "InvalidationWait.STDATA", "32 bits"),
        (IecInvalidation(True, 4, 0x1), "IecInvalidation.IIDX", "aligned"),
    ],
)  # fmt: skip
def test_encode_errors_name_the_field(
    desc: InvalidationDescriptor, field: str, problem: str
) -> None:
    with pytest.raises(EncodeError, match=problem) as info:
        desc.encode()
    assert info.value.field == field


def test_encode_width_must_be_128_or_256() -> None:
    with pytest.raises(EncodeError) as info:
        InvalidationWait().encode(64)
    assert info.value.field == "InvalidationWait.width"


def test_device_tlb_range_helpers() -> None:
    with pytest.raises(EncodeError, match="aligned"):
        DeviceTlbInvalidation.for_range(1, 0x1000, 1)
    with pytest.raises(EncodeError, match="size order"):
        DeviceTlbInvalidation.for_range(1, 0, 53)
    assert device_tlb_range(0x7FFF_FFFF_FFFF_F000, True) == (0, 1 << 64)
    assert device_tlb_range(0x5000, True) == (0x4000, 0x4000)
