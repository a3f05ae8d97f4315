"""linux/vfio.h models: ioctl numbers, capability chains and variable-size arguments."""

from __future__ import annotations

import ctypes
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import DecodeError, EncodeError
from harness.uapi import vfio

pytestmark = pytest.mark.tier0

TYPE1_INFO_SIZE = ctypes.sizeof(vfio.vfio_iommu_type1_info)


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("VFIO_GET_API_VERSION", 0x3B64),
        ("VFIO_CHECK_EXTENSION", 0x3B65),
        ("VFIO_SET_IOMMU", 0x3B66),
        ("VFIO_GROUP_GET_DEVICE_FD", 0x3B6A),
        ("VFIO_DEVICE_RESET", 0x3B6F),
        ("VFIO_IOMMU_GET_INFO", 0x3B70),
        ("VFIO_IOMMU_MAP_DMA", 0x3B71),
        ("VFIO_IOMMU_UNMAP_DMA", 0x3B72),
        ("VFIO_DEVICE_BIND_IOMMUFD", 0x3B76),
        ("VFIO_DEVICE_ATTACH_IOMMUFD_PT", 0x3B77),
        ("VFIO_DEVICE_DETACH_IOMMUFD_PT", 0x3B78),
    ],
)
def test_ioctl_numbers_match_the_kernel(name: str, number: int) -> None:
    assert getattr(vfio, name) == number


def test_every_ioctl_is_sizeless_in_the_vfio_range() -> None:
    for name in vfio.IOCTLS:
        number = getattr(vfio, name)
        assert number >> 16 == 0, name
        assert number >> 8 == vfio.VFIO_TYPE, name
        assert 100 <= number & 0xFF <= 123, name


def test_type1_and_device_ioctls_share_numbers_on_different_fds() -> None:
    assert vfio.VFIO_IOMMU_GET_INFO == vfio.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO
    assert vfio.VFIO_IOMMU_GET_INFO == vfio.VFIO_IOMMU_SPAPR_TCE_GET_INFO
    assert vfio.VFIO_IOMMU_DIRTY_PAGES == vfio.VFIO_DEVICE_FEATURE


@pytest.mark.parametrize(
    ("cls", "size"),
    [
        (vfio.vfio_info_cap_header, 8),
        (vfio.vfio_iommu_type1_info, 24),
        (vfio.vfio_iommu_type1_dma_map, 32),
        (vfio.vfio_iommu_type1_dma_unmap, 24),
        (vfio.vfio_iommu_type1_info_cap_iova_range, 16),
        (vfio.vfio_iommu_type1_info_cap_migration, 32),
        (vfio.vfio_iommu_type1_info_dma_avail, 12),
        (vfio.vfio_device_info, 24),
        (vfio.vfio_region_info, 32),
        (vfio.vfio_irq_info, 16),
        (vfio.vfio_irq_set, 20),
        (vfio.vfio_pci_dependent_device, 8),
        (vfio.vfio_pci_hot_reset_info, 12),
        (vfio.vfio_device_bind_iommufd, 24),
        (vfio.vfio_device_attach_iommufd_pt, 16),
        (vfio.vfio_device_detach_iommufd_pt, 12),
        (vfio.vfio_device_gfx_plane_info, 64),
        (vfio.vfio_eeh_pe_op, 40),
    ],
)
def test_struct_sizes_without_a_compiler(cls: type[ctypes.Structure], size: int) -> None:
    assert ctypes.sizeof(cls) == size


def test_anonymous_union_members_alias() -> None:
    dev = vfio.vfio_pci_dependent_device(group_id=7, segment=1, bus=2, devfn=0x18)
    assert dev.devid == 7
    dev.devid = 0xFFFFFFFF
    assert dev.group_id == 0xFFFFFFFF
    assert bytes(dev) == struct.pack("=IHBB", 0xFFFFFFFF, 1, 2, 0x18)


def test_flexible_arrays_start_at_the_end_of_the_fixed_part() -> None:
    assert vfio.vfio_irq_set.data.offset == 20
    assert vfio.vfio_iommu_type1_info_cap_iova_range.iova_ranges.offset == 16
    assert vfio.vfio_pci_hot_reset_info.devices.offset == 12


# -------- type1 info capability chain --------


def test_type1_info_round_trip_with_iova_ranges_and_dma_avail() -> None:
    ranges = [(0, 0xFEDFFFFF), (0xFEF00000, (1 << 48) - 1)]
    buf = vfio.encode_type1_info(0x40201000, iova_ranges=ranges, dma_avail=65535)
    caps = list(vfio.iter_capabilities(buf, TYPE1_INFO_SIZE, fixed_size=TYPE1_INFO_SIZE))
    assert [c.id for c in caps] == [
        vfio.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
        vfio.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
    ]
    assert caps[0].offset == 24 and caps[1].offset == 24 + 16 + 2 * 16
    assert all(c.offset % 8 == 0 for c in caps)
    info = vfio.decode_type1_info(buf)
    assert info.argsz == len(buf) == 88
    assert info.iova_pgsizes == 0x40201000
    assert info.iova_ranges == ranges
    assert info.dma_avail == 65535
    assert info.migration is None and not info.truncated


def test_compat_layout_leaves_the_last_capability_unpadded() -> None:
    type1 = vfio.encode_type1_info(0x1000, iova_ranges=[(0, 0xFFFF)], dma_avail=1)
    compat = vfio.encode_type1_info(0x1000, iova_ranges=[(0, 0xFFFF)], dma_avail=1, pad_last=False)
    assert len(type1) - len(compat) == 4
    assert vfio.decode_type1_info(compat).dma_avail == 1


def test_type1_info_without_caps_flag_ignores_cap_offset() -> None:
    info = vfio.vfio_iommu_type1_info(
        argsz=24, flags=vfio.VFIO_IOMMU_INFO_PGSIZES, iova_pgsizes=0x1000, cap_offset=0x999
    )
    decoded = vfio.decode_type1_info(info.to_bytes())
    assert decoded.iova_ranges is None and decoded.other_caps == []


def test_type1_info_truncated_answer_reports_needed_size() -> None:
    info = vfio.vfio_iommu_type1_info(
        argsz=88,
        flags=vfio.VFIO_IOMMU_INFO_PGSIZES | vfio.VFIO_IOMMU_INFO_CAPS,
        iova_pgsizes=0x1000,
        cap_offset=0,
    )
    decoded = vfio.decode_type1_info(info.to_bytes())
    assert decoded.truncated and decoded.argsz == 88 and decoded.iova_ranges is None


def test_type1_info_migration_capability_decodes() -> None:
    mig = vfio.vfio_iommu_type1_info_cap_migration(
        header=vfio.vfio_info_cap_header(id=vfio.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, version=1),
        flags=0,
        pgsize_bitmap=0x1000,
        max_dirty_bitmap_size=1 << 28,
    )
    chain = vfio.chain_capabilities(TYPE1_INFO_SIZE, [mig.to_bytes()])
    fixed = vfio.vfio_iommu_type1_info(
        argsz=TYPE1_INFO_SIZE + len(chain), flags=vfio.VFIO_IOMMU_INFO_CAPS, cap_offset=24
    )
    decoded = vfio.decode_type1_info(fixed.to_bytes() + chain)
    assert decoded.migration is not None
    assert decoded.migration.max_dirty_bitmap_size == 1 << 28
    assert decoded.iova_pgsizes is None


def test_type1_info_repeated_capability_is_an_error() -> None:
    cap = vfio.dma_avail_capability(3)
    chain = vfio.chain_capabilities(TYPE1_INFO_SIZE, [cap, cap])
    fixed = vfio.vfio_iommu_type1_info(flags=vfio.VFIO_IOMMU_INFO_CAPS, cap_offset=24)
    with pytest.raises(DecodeError, match="repeated"):
        vfio.decode_type1_info(fixed.to_bytes() + chain)


def test_type1_info_short_buffer_is_an_error() -> None:
    with pytest.raises(DecodeError) as err:
        vfio.decode_type1_info(bytes(20))
    assert err.value.field == "vfio_iommu_type1_info"


def _two_cap_buffer() -> bytearray:
    return bytearray(vfio.encode_type1_info(0x1000, iova_ranges=[(0, 0xFFFF)], dma_avail=9))


def test_chain_that_loops_is_an_error() -> None:
    buf = _two_cap_buffer()
    second = 24 + 16 + 16
    struct.pack_into("=I", buf, second + 4, 24)
    with pytest.raises(DecodeError) as err:
        list(vfio.iter_capabilities(buf, 24))
    assert err.value.field == f"vfio_info_cap_header[{second:#x}].next"
    assert "loops" in err.value.problem


def test_chain_pointing_to_itself_is_an_error() -> None:
    buf = _two_cap_buffer()
    struct.pack_into("=I", buf, 24 + 4, 24)
    with pytest.raises(DecodeError, match="loops"):
        list(vfio.iter_capabilities(buf, 24))


def test_chain_past_the_buffer_is_an_error() -> None:
    buf = _two_cap_buffer()
    struct.pack_into("=I", buf, 24 + 4, len(buf) - 4)
    with pytest.raises(DecodeError, match="does not fit"):
        list(vfio.iter_capabilities(buf, 24))


def test_first_offset_out_of_range_is_an_error() -> None:
    with pytest.raises(DecodeError) as err:
        list(vfio.iter_capabilities(bytes(32), 0x1000))
    assert err.value.field == "cap_offset"


def test_capability_inside_the_fixed_struct_is_an_error() -> None:
    buf = _two_cap_buffer()
    struct.pack_into("=I", buf, 24 + 4, 8)
    with pytest.raises(DecodeError, match="inside the 24-byte fixed struct"):
        list(vfio.iter_capabilities(buf, 24, fixed_size=24))


def test_iova_range_count_overrunning_the_buffer_is_an_error() -> None:
    buf = _two_cap_buffer()
    struct.pack_into("=I", buf, 24 + 8, 1000)
    with pytest.raises(DecodeError) as err:
        vfio.decode_type1_info(buf)
    assert err.value.field == "vfio_iommu_type1_info_cap_iova_range.iova_ranges"


def test_inverted_iova_range_is_an_error() -> None:
    buf = _two_cap_buffer()
    struct.pack_into("=QQ", buf, 24 + 16, 0x2000, 0x1000)
    with pytest.raises(DecodeError, match=r"iova_ranges\[0\]"):
        vfio.decode_type1_info(buf)


def test_find_capability_returns_none_when_absent() -> None:
    buf = _two_cap_buffer()
    found = vfio.find_capability(buf, 24, vfio.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL)
    assert found is not None
    cap = vfio.read_capability(buf, found, vfio.vfio_iommu_type1_info_dma_avail)
    assert cap.avail == 9
    assert vfio.find_capability(buf, 24, vfio.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION) is None


def test_read_capability_past_the_end_is_an_error() -> None:
    cap = vfio.Capability(offset=24, id=2, version=1, next=0)
    with pytest.raises(DecodeError, match="vfio_iommu_type1_info_cap_migration"):
        vfio.read_capability(bytes(40), cap, vfio.vfio_iommu_type1_info_cap_migration)


@pytest.mark.parametrize(
    ("first_offset", "caps", "field"),
    [(0, [bytes(8)], "cap_offset"), (24, [bytes(8), bytes(4)], "caps[1]")],
)
def test_chain_capabilities_rejects_bad_input(
    first_offset: int, caps: list[bytes], field: str
) -> None:
    with pytest.raises(EncodeError) as err:
        vfio.chain_capabilities(first_offset, caps)
    assert err.value.field == field


def test_iova_range_capability_rejects_inverted_range() -> None:
    with pytest.raises(EncodeError, match=r"iova_ranges\[1\]"):
        vfio.iova_range_capability([(0, 1), (5, 4)])


_cap_bodies = st.lists(
    st.tuples(st.integers(4, 0xFFFF), st.binary(min_size=0, max_size=40)), min_size=1, max_size=6
)


@settings(max_examples=60, deadline=None)
@given(first=st.integers(1, 64), bodies=_cap_bodies)
def test_any_chain_walks_back_to_what_was_built(
    first: int, bodies: list[tuple[int, bytes]]
) -> None:
    caps = [struct.pack("=HHI", cap_id, 1, 0) + body for cap_id, body in bodies]
    buf = bytes(first) + vfio.chain_capabilities(first, caps)
    walked = list(vfio.iter_capabilities(buf, first, fixed_size=first))
    assert [c.id for c in walked] == [cap_id for cap_id, _ in bodies]
    for cap, (_, body) in zip(walked, bodies, strict=True):
        start = cap.offset + 8
        assert buf[start : start + len(body)] == body
    assert walked[-1].next == 0


# -------- region info --------


def _region_info_with_caps(caps: list[bytes]) -> bytes:
    fixed = ctypes.sizeof(vfio.vfio_region_info)
    chain = vfio.chain_capabilities(fixed, caps)
    info = vfio.vfio_region_info(
        argsz=fixed + len(chain),
        flags=vfio.VFIO_REGION_INFO_FLAG_READ
        | vfio.VFIO_REGION_INFO_FLAG_MMAP
        | vfio.VFIO_REGION_INFO_FLAG_CAPS,
        index=vfio.VFIO_PCI_BAR0_REGION_INDEX,
        cap_offset=fixed,
        size=0x4000,
        offset=0,
    )
    return info.to_bytes() + chain


def test_region_info_sparse_mmap_type_and_msix_caps_decode() -> None:
    sparse = vfio.vfio_region_info_cap_sparse_mmap(
        header=vfio.vfio_info_cap_header(id=vfio.VFIO_REGION_INFO_CAP_SPARSE_MMAP, version=1),
        nr_areas=2,
    ).to_bytes() + b"".join(
        vfio.vfio_region_sparse_mmap_area(offset=o, size=s).to_bytes()
        for o, s in [(0, 0x1000), (0x3000, 0x1000)]
    )
    region_type = vfio.vfio_region_info_cap_type(
        header=vfio.vfio_info_cap_header(id=vfio.VFIO_REGION_INFO_CAP_TYPE, version=1),
        type=vfio.VFIO_REGION_TYPE_PCI_VENDOR_TYPE | 0x8086,
        subtype=vfio.VFIO_REGION_SUBTYPE_INTEL_IGD_OPREGION,
    ).to_bytes()
    msix = vfio.vfio_info_cap_header(id=vfio.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE).to_bytes()
    unknown = vfio.vfio_info_cap_header(id=0x77, version=3).to_bytes()
    info = vfio.decode_region_info(_region_info_with_caps([sparse, region_type, msix, unknown]))
    assert info.size == 0x4000 and info.index == vfio.VFIO_PCI_BAR0_REGION_INDEX
    assert info.sparse_mmap == [(0, 0x1000), (0x3000, 0x1000)]
    assert info.type == (0x80008086, vfio.VFIO_REGION_SUBTYPE_INTEL_IGD_OPREGION)
    assert info.msix_mappable
    assert [(c.id, c.version) for c in info.other_caps] == [(0x77, 3)]


def test_region_info_sparse_areas_overrunning_is_an_error() -> None:
    sparse = vfio.vfio_region_info_cap_sparse_mmap(
        header=vfio.vfio_info_cap_header(id=vfio.VFIO_REGION_INFO_CAP_SPARSE_MMAP, version=1),
        nr_areas=3,
    ).to_bytes()
    with pytest.raises(DecodeError, match="areas"):
        vfio.decode_region_info(_region_info_with_caps([sparse]))


def test_region_info_short_buffer_is_an_error() -> None:
    with pytest.raises(DecodeError, match="vfio_region_info"):
        vfio.decode_region_info(bytes(16))


# -------- variable-size arguments --------


def test_irq_set_eventfds_layout() -> None:
    flags = vfio.VFIO_IRQ_SET_DATA_EVENTFD | vfio.VFIO_IRQ_SET_ACTION_TRIGGER
    buf = vfio.encode_irq_set(vfio.VFIO_PCI_MSIX_IRQ_INDEX, flags, start=1, eventfds=[5, -1, 7])
    assert buf == struct.pack("=5I3i", 32, flags, 2, 1, 3, 5, -1, 7)


def test_irq_set_bools_and_disable() -> None:
    mask = vfio.encode_irq_set(
        0, vfio.VFIO_IRQ_SET_DATA_BOOL | vfio.VFIO_IRQ_SET_ACTION_MASK, bools=[True, False, True]
    )
    assert mask[-3:] == b"\x01\x00\x01" and struct.unpack_from("=I", mask)[0] == 23
    off = vfio.encode_irq_set(
        vfio.VFIO_PCI_MSI_IRQ_INDEX,
        vfio.VFIO_IRQ_SET_DATA_NONE | vfio.VFIO_IRQ_SET_ACTION_TRIGGER,
        count=0,
    )
    assert off == struct.pack("=5I", 20, 0x21, 1, 0, 0)


@pytest.mark.parametrize(
    ("flags", "kwargs", "field"),
    [
        (vfio.VFIO_IRQ_SET_ACTION_TRIGGER, {}, "vfio_irq_set.flags"),
        (
            vfio.VFIO_IRQ_SET_DATA_EVENTFD
            | vfio.VFIO_IRQ_SET_DATA_BOOL
            | vfio.VFIO_IRQ_SET_ACTION_TRIGGER,
            {},
            "vfio_irq_set.flags",
        ),
        (vfio.VFIO_IRQ_SET_DATA_NONE, {}, "vfio_irq_set.flags"),
        (
            vfio.VFIO_IRQ_SET_DATA_EVENTFD | vfio.VFIO_IRQ_SET_ACTION_TRIGGER,
            {"eventfds": [3], "count": 2},
            "vfio_irq_set.count",
        ),
        (
            vfio.VFIO_IRQ_SET_DATA_NONE | vfio.VFIO_IRQ_SET_ACTION_UNMASK,
            {"eventfds": [3]},
            "vfio_irq_set.data",
        ),
    ],
)
def test_irq_set_rejects_inconsistent_arguments(
    flags: int, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(EncodeError) as err:
        vfio.encode_irq_set(0, flags, **kwargs)  # type: ignore[arg-type]
    assert err.value.field == field


def test_device_feature_packs_index_and_payload() -> None:
    payload = vfio.vfio_device_feature_mig_state(
        device_state=vfio.VFIO_DEVICE_STATE_STOP
    ).to_bytes()
    buf = vfio.encode_device_feature(
        vfio.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, vfio.VFIO_DEVICE_FEATURE_SET, payload
    )
    argsz, flags = struct.unpack_from("=II", buf)
    assert argsz == 16 == len(buf)
    assert flags == vfio.VFIO_DEVICE_FEATURE_SET | 2
    assert buf[8:] == payload


@pytest.mark.parametrize(
    ("feature", "flags"), [(0x10000, vfio.VFIO_DEVICE_FEATURE_GET), (1, 0x8001)]
)
def test_device_feature_rejects_bad_index_or_flags(feature: int, flags: int) -> None:
    with pytest.raises(EncodeError, match=r"vfio_device_feature\.flags"):
        vfio.encode_device_feature(feature, flags)


def test_hot_reset_info_round_trip() -> None:
    devices = [
        vfio.vfio_pci_dependent_device(devid=3, segment=0, bus=0, devfn=0x18),
        vfio.vfio_pci_dependent_device(
            devid=vfio.VFIO_PCI_DEVID_NOT_OWNED & 0xFFFFFFFF, segment=0, bus=0, devfn=0x19
        ),
    ]
    hdr = vfio.vfio_pci_hot_reset_info(flags=vfio.VFIO_PCI_HOT_RESET_FLAG_DEV_ID, count=2)
    buf = vfio.with_data(hdr, b"".join(d.to_bytes() for d in devices))
    decoded_hdr, decoded = vfio.decode_pci_hot_reset_info(buf)
    assert decoded_hdr.argsz == 12 + 16
    assert [(d.devid, d.devfn) for d in decoded] == [(3, 0x18), (0xFFFFFFFF, 0x19)]
    assert ctypes.c_int32(decoded[1].devid).value == vfio.VFIO_PCI_DEVID_NOT_OWNED


def test_hot_reset_info_count_overrun_is_an_error() -> None:
    hdr = vfio.vfio_pci_hot_reset_info(argsz=20, count=2)
    with pytest.raises(DecodeError, match="devices"):
        vfio.decode_pci_hot_reset_info(hdr.to_bytes() + bytes(8))


def test_cdev_attach_with_pasid_layout() -> None:
    arg = vfio.vfio_device_attach_iommufd_pt(
        argsz=16, flags=vfio.VFIO_DEVICE_ATTACH_PASID, pt_id=7, pasid=0x42
    )
    assert arg.to_bytes() == struct.pack("=4I", 16, 1, 7, 0x42)
    detach = vfio.vfio_device_detach_iommufd_pt(argsz=12, flags=vfio.VFIO_DEVICE_DETACH_PASID)
    assert vfio.vfio_device_detach_iommufd_pt.pasid.offset == 8
    assert detach.to_bytes()[:8] == struct.pack("=II", 12, 1)
