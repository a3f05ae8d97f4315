"""Seed 000's legacy nesting uAPI: layouts, the invalidation table, fault records and rings."""

from __future__ import annotations

import ctypes
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import DecodeError, EncodeError
from harness.uapi import legacy, vfio

pytestmark = pytest.mark.tier0

IOTLB = legacy.IOMMU_CACHE_INV_TYPE_IOTLB
DEV_IOTLB = legacy.IOMMU_CACHE_INV_TYPE_DEV_IOTLB
PASID_CACHE = legacy.IOMMU_CACHE_INV_TYPE_PASID
DOMAIN = legacy.IOMMU_INV_GRANU_DOMAIN
PASID = legacy.IOMMU_INV_GRANU_PASID
ADDR = legacy.IOMMU_INV_GRANU_ADDR

FAULT_SIZE = ctypes.sizeof(legacy.iommu_fault)
RESPONSE_SIZE = ctypes.sizeof(legacy.iommu_page_response)


# -------- layouts and numbers --------


@pytest.mark.parametrize(
    ("name", "nr"),
    [
        ("VFIO_IOMMU_SET_PASID_TABLE", 18),
        ("VFIO_IOMMU_CACHE_INVALIDATE", 19),
        ("VFIO_IOMMU_SET_MSI_BINDING", 20),
        ("VFIO_IOMMU_BIND", 22),
        ("VFIO_IOMMU_UNBIND", 23),
        ("VFIO_DEVICE_GET_IRQ_INFO", 9),
    ],
)
def test_ioctls_are_sizeless_io_like_the_seed_defines_them(name: str, nr: int) -> None:
    assert getattr(legacy, name) == (ord(";") << 8) | (100 + nr)


def test_legacy_container_ioctls_reuse_numbers_7_3_gives_to_other_commands() -> None:
    assert legacy.VFIO_IOMMU_SET_PASID_TABLE == vfio.VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY
    assert legacy.VFIO_IOMMU_CACHE_INVALIDATE == vfio.VFIO_IOMMU_SPAPR_TCE_CREATE
    assert legacy.VFIO_IOMMU_SET_MSI_BINDING == vfio.VFIO_IOMMU_SPAPR_TCE_REMOVE


def test_nesting_iommu_type_is_the_value_7_3_reserves() -> None:
    assert legacy.VFIO_TYPE1_NESTING_IOMMU == vfio.__VFIO_RESERVED_TYPE1_NESTING_IOMMU == 6


@pytest.mark.parametrize(
    ("cls", "size"),
    [
        (legacy.iommu_fault_unrecoverable, 32),
        (legacy.iommu_fault_page_request, 40),
        (legacy.iommu_fault, 64),
        (legacy.iommu_page_response, 24),
        (legacy.iommu_inv_addr_info, 40),
        (legacy.iommu_inv_pasid_info, 16),
        (legacy.iommu_cache_invalidate_info, 56),
        (legacy.iommu_gpasid_bind_data_vtd, 16),
        (legacy.iommu_gpasid_bind_data, 72),
        (legacy.iommu_pasid_smmuv3, 8),
        (legacy.iommu_pasid_table_config, 32),
        (legacy.vfio_region_dma_fault, 20),
        (legacy.vfio_region_dma_fault_response, 20),
        (legacy.vfio_region_info_cap_fault, 12),
        (legacy.vfio_iommu_type1_bind_process, 12),
        (legacy.vfio_iommu_type1_bind, 8),
        (legacy.vfio_iommu_type1_set_pasid_table, 40),
        (legacy.vfio_iommu_type1_cache_invalidate, 64),
        (legacy.vfio_iommu_type1_set_msi_binding, 32),
    ],
)
def test_struct_sizes_without_a_compiler(cls: type[ctypes.Structure], size: int) -> None:
    assert ctypes.sizeof(cls) == size


def test_fault_ring_headers_put_the_user_written_index_first() -> None:
    assert legacy.vfio_region_dma_fault.tail.offset == 0
    assert legacy.vfio_region_dma_fault.head.offset == 16
    assert legacy.vfio_region_dma_fault_response.head.offset == 0
    assert legacy.vfio_region_dma_fault_response.tail.offset == 16


def test_legacy_irq_info_extends_the_7_3_one_with_cap_offset() -> None:
    old, new = legacy.vfio_irq_info, vfio.vfio_irq_info
    assert ctypes.sizeof(old) == ctypes.sizeof(new) + 4
    for name in ("argsz", "flags", "index", "count"):
        assert getattr(old, name).offset == getattr(new, name).offset
    assert old.cap_offset.offset == 16


def test_union_members_overlay_in_fault_and_invalidate_records() -> None:
    assert legacy.iommu_fault.event.offset == legacy.iommu_fault.prm.offset == 8
    granu = legacy.iommu_cache_invalidate_info.granu
    assert granu.offset == 16 and granu.size == 40


# -------- cache type x granularity table --------

SEED_TABLE = {
    (DEV_IOTLB, DOMAIN): False,
    (DEV_IOTLB, PASID): True,
    (DEV_IOTLB, ADDR): True,
    (IOTLB, DOMAIN): True,
    (IOTLB, PASID): True,
    (IOTLB, ADDR): True,
    (PASID_CACHE, DOMAIN): True,
    (PASID_CACHE, PASID): True,
    (PASID_CACHE, ADDR): False,
}


@pytest.mark.parametrize(("combo", "valid"), SEED_TABLE.items())
def test_single_cache_type_follows_the_seed_table(combo: tuple[int, int], valid: bool) -> None:
    assert legacy.cache_invalidation_valid(*combo) is valid


def test_combined_cache_types_need_every_type_to_support_the_granularity() -> None:
    caches = [IOTLB, DEV_IOTLB, PASID_CACHE]
    for count in (2, 3):
        for subset in itertools.combinations(caches, count):
            mask = sum(subset)
            for granu in (DOMAIN, PASID, ADDR):
                expected = all(SEED_TABLE[(c, granu)] for c in subset)
                assert legacy.cache_invalidation_valid(mask, granu) is expected
    assert legacy.cache_invalidation_valid(IOTLB | DEV_IOTLB | PASID_CACHE, PASID)
    assert not legacy.cache_invalidation_valid(IOTLB | PASID_CACHE, ADDR)


@pytest.mark.parametrize(("cache", "granu"), [(0, DOMAIN), (1 << 3, PASID), (IOTLB, 3)])
def test_empty_unknown_cache_or_granularity_is_invalid(cache: int, granu: int) -> None:
    assert not legacy.cache_invalidation_valid(cache, granu)


def test_encode_addr_invalidation_round_trips() -> None:
    addr = legacy.iommu_inv_addr_info(
        flags=legacy.IOMMU_INV_ADDR_FLAGS_PASID | legacy.IOMMU_INV_ADDR_FLAGS_LEAF,
        pasid=5,
        addr=0x7F0000,
        granule_size=0x1000,
        nb_granules=16,
    )
    info = legacy.encode_cache_invalidate_info(IOTLB | DEV_IOTLB, ADDR, addr_info=addr)
    assert info.argsz == 56 and info.version == 1
    decoded = legacy.decode_cache_invalidate_info(info.to_bytes())
    assert decoded.granu.addr_info.nb_granules == 16
    wrapped = legacy.vfio_cache_invalidate(info)
    assert wrapped.argsz == 64
    assert wrapped.to_bytes()[8:] == info.to_bytes()


def test_encode_domain_invalidation_has_no_argument() -> None:
    info = legacy.encode_cache_invalidate_info(IOTLB | PASID_CACHE, DOMAIN)
    assert info.to_bytes()[16:] == bytes(40)


@pytest.mark.parametrize(
    ("cache", "granu", "kwargs", "field"),
    [
        (PASID_CACHE, ADDR, {"addr_info": legacy.iommu_inv_addr_info()}, "granularity"),
        (DEV_IOTLB, DOMAIN, {}, "granularity"),
        (IOTLB, ADDR, {}, "granu.addr_info"),
        (IOTLB, DOMAIN, {"pasid_info": legacy.iommu_inv_pasid_info(flags=1)}, "granu.pasid_info"),
        (IOTLB, PASID, {"pasid_info": legacy.iommu_inv_pasid_info(flags=0)}, "pasid_info.flags"),
        (IOTLB, PASID, {"pasid_info": legacy.iommu_inv_pasid_info(flags=4)}, "pasid_info.flags"),
        (IOTLB, ADDR, {"addr_info": legacy.iommu_inv_addr_info(flags=8)}, "addr_info.flags"),
        (0, PASID, {"pasid_info": legacy.iommu_inv_pasid_info(flags=1)}, "cache"),
        (0x100 | IOTLB, DOMAIN, {}, "iommu_cache_invalidate_info"),
    ],
)
def test_encode_rejects_what_the_seed_forbids(
    cache: int, granu: int, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(EncodeError) as err:
        legacy.encode_cache_invalidate_info(cache, granu, **kwargs)  # type: ignore[arg-type]
    assert err.value.field.endswith(field)


def _raw_invalidate(**fields: int) -> bytearray:
    info = legacy.encode_cache_invalidate_info(IOTLB, DOMAIN)
    buf = bytearray(info.to_bytes())
    offsets = {"version": 4, "cache": 8, "granularity": 9, "padding": 10}
    for name, value in fields.items():
        if name == "version":
            struct.pack_into("=I", buf, 4, value)
        else:
            buf[offsets[name]] = value
    return buf


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"version": 2}, "iommu_cache_invalidate_info.version"),
        ({"cache": 0}, "iommu_cache_invalidate_info.cache"),
        ({"cache": 0x9}, "iommu_cache_invalidate_info.cache"),
        ({"granularity": 3}, "iommu_cache_invalidate_info.granularity"),
        ({"cache": DEV_IOTLB}, "iommu_cache_invalidate_info.granularity"),
        ({"padding": 1}, "iommu_cache_invalidate_info.padding"),
    ],
)
def test_decode_rejects_malformed_requests(fields: dict[str, int], field: str) -> None:
    with pytest.raises(DecodeError) as err:
        legacy.decode_cache_invalidate_info(_raw_invalidate(**fields))
    assert err.value.field == field


def test_decode_short_request_is_an_error() -> None:
    with pytest.raises(DecodeError, match="need 56 bytes"):
        legacy.decode_cache_invalidate_info(bytes(40))


# -------- PASID table, MSI binding, process bind --------


def test_set_pasid_table_smmuv3_layout() -> None:
    config = legacy.smmuv3_pasid_table_config(
        0x80000000, 5, legacy.IOMMU_PASID_CONFIG_TRANSLATE, s1fmt=1, s1dss=2
    )
    arg = legacy.vfio_set_pasid_table(config)
    raw = arg.to_bytes()
    assert struct.unpack_from("=IIIIQIBB", raw) == (40, 1, 32, 1, 0x80000000, 1, 5, 1)
    assert struct.unpack_from("=IBB", raw, 32) == (1, 1, 2)


def test_unset_pasid_table_carries_no_config() -> None:
    arg = legacy.vfio_set_pasid_table(None)
    assert arg.flags == legacy.VFIO_PASID_TABLE_FLAG_UNSET
    assert arg.to_bytes()[8:] == bytes(32)


@pytest.mark.parametrize(("field", "value"), [("config", 4), ("format", 2), ("version", 0)])
def test_set_pasid_table_rejects_unknown_values(field: str, value: int) -> None:
    config = legacy.smmuv3_pasid_table_config(0x1000, 0, legacy.IOMMU_PASID_CONFIG_ABORT)
    setattr(config, field, value)
    with pytest.raises(EncodeError) as err:
        legacy.vfio_set_pasid_table(config)
    assert err.value.field == f"iommu_pasid_table_config.{field}"


def test_pasid_bits_beyond_20_are_rejected() -> None:
    with pytest.raises(EncodeError, match="pasid_bits"):
        legacy.smmuv3_pasid_table_config(0x1000, 21, legacy.IOMMU_PASID_CONFIG_BYPASS)


def test_msi_binding_bind_and_unbind() -> None:
    bind = legacy.vfio_msi_binding(0x8000000, 0x9000000, 0x1000)
    assert bind.to_bytes() == struct.pack("=IIQQQ", 32, 1, 0x8000000, 0x9000000, 0x1000)
    unbind = legacy.vfio_msi_binding(0x8000000)
    assert unbind.to_bytes() == struct.pack("=IIQQQ", 32, 2, 0x8000000, 0, 0)


@pytest.mark.parametrize(("gpa", "size"), [(0x9000000, 0), (None, 0x1000)])
def test_msi_binding_rejects_inconsistent_size(gpa: int | None, size: int) -> None:
    with pytest.raises(EncodeError, match="size"):
        legacy.vfio_msi_binding(0x8000000, gpa, size)


def test_bind_process_argument() -> None:
    assert legacy.vfio_bind_process() == struct.pack("=IIIIi", 20, 1, 0, 0, 0)
    assert legacy.vfio_bind_process(42) == struct.pack("=IIIIi", 20, 1, 1, 0, 42)
    with pytest.raises(EncodeError, match="pid"):
        legacy.vfio_bind_process(0)


# -------- fault records --------


def _unrecoverable(addr: int = 0x1000, reason: int = 5) -> legacy.iommu_fault:
    return legacy.iommu_fault(
        type=legacy.IOMMU_FAULT_DMA_UNRECOV,
        event=legacy.iommu_fault_unrecoverable(
            reason=reason,
            flags=legacy.IOMMU_FAULT_UNRECOV_ADDR_VALID | legacy.IOMMU_FAULT_UNRECOV_PASID_VALID,
            pasid=3,
            perm=legacy.IOMMU_FAULT_PERM_WRITE,
            addr=addr,
        ),
    )


def _page_request(grpid: int) -> legacy.iommu_fault:
    return legacy.iommu_fault(
        type=legacy.IOMMU_FAULT_PAGE_REQ,
        prm=legacy.iommu_fault_page_request(
            flags=legacy.IOMMU_FAULT_PAGE_REQUEST_PASID_VALID
            | legacy.IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE,
            pasid=1,
            grpid=grpid,
            perm=legacy.IOMMU_FAULT_PERM_READ,
            addr=0x40000,
            private_data=(ctypes.c_uint64 * 2)(0xAA, 0xBB),
        ),
    )


def test_fault_records_round_trip() -> None:
    event = legacy.decode_iommu_fault(_unrecoverable(0x7000).to_bytes())
    assert event.event.reason == legacy.IOMMU_FAULT_REASON_PTE_FETCH
    assert event.event.addr == 0x7000
    raw = _page_request(9).to_bytes()
    assert struct.unpack_from("=IIIIIIQ", raw) == (2, 0, 3, 1, 9, 1, 0x40000)
    prm = legacy.decode_iommu_fault(raw).prm
    assert prm.grpid == 9 and list(prm.private_data) == [0xAA, 0xBB]


@pytest.mark.parametrize(
    ("offset", "value", "field"),
    [
        (0, 3, "iommu_fault.type"),
        (0, 0, "iommu_fault.type"),
        (4, 1, "iommu_fault.padding"),
        (8, 9, "iommu_fault.event.reason"),
        (12, 0x8, "iommu_fault.event.flags"),
        (20, 0x10, "iommu_fault.event.perm"),
    ],
)
def test_malformed_fault_records_are_rejected(offset: int, value: int, field: str) -> None:
    raw = bytearray(_unrecoverable().to_bytes())
    struct.pack_into("=I", raw, offset, value)
    with pytest.raises(DecodeError) as err:
        legacy.decode_iommu_fault(raw)
    assert err.value.field == field


def test_page_request_with_unknown_flags_is_rejected() -> None:
    raw = bytearray(_page_request(1).to_bytes())
    struct.pack_into("=I", raw, 8, 0x10)
    with pytest.raises(DecodeError, match=r"prm\.flags"):
        legacy.decode_iommu_fault(raw)


def test_short_fault_record_is_rejected() -> None:
    with pytest.raises(DecodeError, match="need 64 bytes"):
        legacy.decode_iommu_fault(bytes(63))


def test_page_response_checks() -> None:
    good = legacy.iommu_page_response(
        argsz=RESPONSE_SIZE, version=1, flags=1, pasid=1, grpid=9, code=0
    )
    legacy.check_page_response(good)
    for field, value in (("version", 2), ("flags", 2), ("code", 3)):
        bad = legacy.iommu_page_response.from_bytes(good.to_bytes())
        setattr(bad, field, value)
        with pytest.raises(DecodeError) as err:
            legacy.check_page_response(bad)
        assert err.value.field == f"iommu_page_response.{field}"


# -------- DMA fault regions --------


def test_fault_region_round_trip_with_wraparound() -> None:
    faults = [_unrecoverable(0x1000 * i) for i in range(1, 4)]
    region = legacy.encode_dma_fault_region(faults, 4, tail=2)
    assert len(region) == 4096 + 4 * FAULT_SIZE
    assert struct.unpack_from("=5I", region) == (2, FAULT_SIZE, 4, 4096, 1)
    for slot, fault in zip((2, 3, 0), faults, strict=True):
        start = 4096 + slot * FAULT_SIZE
        assert region[start : start + FAULT_SIZE] == fault.to_bytes()
    hdr, entries = legacy.decode_dma_fault_region(region)
    assert hdr.head == 1 and hdr.tail == 2
    assert [e.event.addr for e in entries] == [0x1000, 0x2000, 0x3000]


def test_fault_region_empty_when_head_equals_tail() -> None:
    region = legacy.encode_dma_fault_region([], 8, tail=5, region_size=8192)
    assert len(region) == 8192
    hdr, entries = legacy.decode_dma_fault_region(region)
    assert hdr.head == hdr.tail == 5 and entries == []


def test_fault_region_holds_at_most_nb_entries_minus_one() -> None:
    faults = [_unrecoverable() for _ in range(4)]
    with pytest.raises(EncodeError, match="at most 3"):
        legacy.encode_dma_fault_region(faults, 4)


@pytest.mark.parametrize(
    ("nb_entries", "tail", "region_size"), [(0, 0, None), (4, 4, None), (4, 0, 4096)]
)
def test_fault_region_encoder_rejects_bad_geometry(
    nb_entries: int, tail: int, region_size: int | None
) -> None:
    with pytest.raises(EncodeError):
        legacy.encode_dma_fault_region([], nb_entries, tail=tail, region_size=region_size)


def _patched(region: bytearray, index: int, value: int) -> bytearray:
    struct.pack_into("=I", region, index * 4, value)
    return region


@pytest.mark.parametrize(
    ("field_index", "value", "field"),
    [
        (4, 4, "vfio_region_dma_fault.head"),
        (0, 7, "vfio_region_dma_fault.tail"),
        (1, 32, "vfio_region_dma_fault.entry_size"),
        (2, 0, "vfio_region_dma_fault.nb_entries"),
        (2, 100, "vfio_region_dma_fault.nb_entries"),
        (3, 16, "vfio_region_dma_fault.offset"),
    ],
)
def test_fault_region_decoder_rejects_bad_header(field_index: int, value: int, field: str) -> None:
    region = legacy.encode_dma_fault_region([_unrecoverable()], 4)
    with pytest.raises(DecodeError) as err:
        legacy.decode_dma_fault_region(_patched(region, field_index, value))
    assert err.value.field == field


def test_fault_region_short_buffer_is_an_error() -> None:
    with pytest.raises(DecodeError, match="vfio_region_dma_fault"):
        legacy.decode_dma_fault_region(bytes(12))


def test_fault_region_with_larger_entries_skips_the_tail_bytes() -> None:
    region = legacy.encode_dma_fault_region([], 4)
    struct.pack_into("=I", region, 4, 128)
    region += bytes(4 * 64)
    struct.pack_into("=I", region, 16, 2)
    region[4096 : 4096 + FAULT_SIZE] = _unrecoverable(0xA000).to_bytes()
    region[4096 + 128 : 4096 + 128 + FAULT_SIZE] = _page_request(4).to_bytes()
    _, entries = legacy.decode_dma_fault_region(region)
    assert entries[0].event.addr == 0xA000 and entries[1].prm.grpid == 4


def test_response_region_round_trip() -> None:
    responses = [
        legacy.iommu_page_response(argsz=RESPONSE_SIZE, version=1, grpid=g, code=0) for g in (1, 2)
    ]
    region = legacy.encode_dma_fault_response_region(responses, 3, tail=2, offset=64)
    assert struct.unpack_from("=5I", region) == (1, RESPONSE_SIZE, 3, 64, 2)
    assert len(region) == 64 + 3 * RESPONSE_SIZE
    _, entries = legacy.decode_dma_fault_response_region(region)
    assert [e.grpid for e in entries] == [1, 2]
    for entry in entries:
        legacy.check_page_response(entry)


def test_response_region_rejects_index_beyond_ring() -> None:
    region = legacy.encode_dma_fault_response_region([], 3, offset=64)
    with pytest.raises(DecodeError, match=r"vfio_region_dma_fault_response\.head"):
        legacy.decode_dma_fault_response_region(_patched(region, 0, 3))


@settings(max_examples=50, deadline=None)
@given(
    nb_entries=st.integers(2, 16),
    data=st.data(),
)
def test_any_ring_position_round_trips(nb_entries: int, data: st.DataObject) -> None:
    tail = data.draw(st.integers(0, nb_entries - 1))
    count = data.draw(st.integers(0, nb_entries - 1))
    faults = [_unrecoverable(0x1000 * (i + 1), reason=i % 9) for i in range(count)]
    region = legacy.encode_dma_fault_region(faults, nb_entries, tail=tail, offset=256)
    hdr, entries = legacy.decode_dma_fault_region(region)
    assert (hdr.head - hdr.tail) % nb_entries == count
    assert [e.to_bytes() for e in entries] == [f.to_bytes() for f in faults]


# -------- capabilities through the vfio chain walker --------


def test_dma_fault_region_info_capabilities_decode() -> None:
    region_type = vfio.vfio_region_info_cap_type(
        header=vfio.vfio_info_cap_header(id=vfio.VFIO_REGION_INFO_CAP_TYPE, version=1),
        type=legacy.VFIO_REGION_TYPE_NESTED,
        subtype=legacy.VFIO_REGION_SUBTYPE_NESTED_DMA_FAULT,
    )
    fault_cap = legacy.vfio_region_info_cap_fault(
        header=vfio.vfio_info_cap_header(id=legacy.VFIO_REGION_INFO_CAP_DMA_FAULT, version=1),
        version=1,
    )
    fixed = ctypes.sizeof(vfio.vfio_region_info)
    chain = vfio.chain_capabilities(fixed, [region_type.to_bytes(), fault_cap.to_bytes()])
    info = vfio.vfio_region_info(
        argsz=fixed + len(chain),
        flags=vfio.VFIO_REGION_INFO_FLAG_READ
        | vfio.VFIO_REGION_INFO_FLAG_WRITE
        | vfio.VFIO_REGION_INFO_FLAG_CAPS,
        index=vfio.VFIO_PCI_NUM_REGIONS,
        cap_offset=fixed,
        size=4096 + 16 * FAULT_SIZE,
    )
    buf = info.to_bytes() + chain
    decoded = vfio.decode_region_info(buf)
    assert decoded.type == (4, 1)
    [cap] = decoded.other_caps
    assert cap.id == legacy.VFIO_REGION_INFO_CAP_DMA_FAULT
    assert vfio.read_capability(buf, cap, legacy.vfio_region_info_cap_fault).version == 1


def test_dma_fault_irq_found_through_legacy_irq_info_chain() -> None:
    fixed = ctypes.sizeof(legacy.vfio_irq_info)
    cap = legacy.vfio_irq_info_cap_type(
        header=vfio.vfio_info_cap_header(id=legacy.VFIO_IRQ_INFO_CAP_TYPE, version=1),
        type=legacy.VFIO_IRQ_TYPE_NESTED,
        subtype=legacy.VFIO_IRQ_SUBTYPE_DMA_FAULT,
    )
    chain = vfio.chain_capabilities(fixed, [cap.to_bytes()])
    info = legacy.vfio_irq_info(
        argsz=fixed + len(chain),
        flags=legacy.VFIO_IRQ_INFO_EVENTFD | legacy.VFIO_IRQ_INFO_FLAG_CAPS,
        index=legacy.VFIO_PCI_NUM_IRQS,
        count=1,
        cap_offset=fixed,
    )
    buf = info.to_bytes() + chain
    found = vfio.find_capability(buf, fixed, legacy.VFIO_IRQ_INFO_CAP_TYPE, fixed_size=fixed)
    assert found is not None and found.offset == 20
    typ = vfio.read_capability(buf, found, legacy.vfio_irq_info_cap_type)
    assert (typ.type, typ.subtype) == (legacy.VFIO_IRQ_TYPE_NESTED, 1)
