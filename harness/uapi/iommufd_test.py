"""ctypes models of ``drivers/iommu/iommufd/iommufd_test.h`` (Linux 7.3), byte for byte.

The selftest mock interface of a kernel built with ``CONFIG_IOMMUFD_TEST``: the
``IOMMU_TEST_CMD`` multiplexer and the mock driver's HWPT, invalidation, vIOMMU, hw-info
and vEVENT data.  The header's anonymous enums are module-level constants.  The members
of the anonymous union of ``struct iommu_test_cmd`` have anonymous struct types in C;
here they are classes named ``iommu_test_cmd_<member>``, checked through their parent.
"""

from __future__ import annotations

import ctypes

from harness.uapi._ioctl import _IO
from harness.uapi._struct import UapiStruct, UapiUnion
from harness.uapi.iommufd import IOMMUFD_CMD_BASE, IOMMUFD_TYPE

_u32 = ctypes.c_uint32
_s32 = ctypes.c_int32
_u64 = ctypes.c_uint64
_aligned_u64 = ctypes.c_uint64

IOMMU_TEST_OP_ADD_RESERVED = 1
IOMMU_TEST_OP_MOCK_DOMAIN = 2
IOMMU_TEST_OP_MD_CHECK_MAP = 3
IOMMU_TEST_OP_MD_CHECK_REFS = 4
IOMMU_TEST_OP_CREATE_ACCESS = 5
IOMMU_TEST_OP_DESTROY_ACCESS_PAGES = 6
IOMMU_TEST_OP_ACCESS_PAGES = 7
IOMMU_TEST_OP_ACCESS_RW = 8
IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT = 9
IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE = 10
IOMMU_TEST_OP_ACCESS_REPLACE_IOAS = 11
IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS = 12
IOMMU_TEST_OP_DIRTY = 13
IOMMU_TEST_OP_MD_CHECK_IOTLB = 14
IOMMU_TEST_OP_TRIGGER_IOPF = 15
IOMMU_TEST_OP_DEV_CHECK_CACHE = 16
IOMMU_TEST_OP_TRIGGER_VEVENT = 17
IOMMU_TEST_OP_PASID_ATTACH = 18
IOMMU_TEST_OP_PASID_REPLACE = 19
IOMMU_TEST_OP_PASID_DETACH = 20
IOMMU_TEST_OP_PASID_CHECK_HWPT = 21
IOMMU_TEST_OP_DMABUF_GET = 22
IOMMU_TEST_OP_DMABUF_REVOKE = 23

MOCK_IOMMUPT_DEFAULT = 0
MOCK_IOMMUPT_HUGE = 1

MOCK_APERTURE_START = 1 << 24
MOCK_APERTURE_LAST = (1 << 31) - 1
MOCK_PAGE_SIZE = 2048
MOCK_HUGE_PAGE_SIZE = 512 * MOCK_PAGE_SIZE

MOCK_FLAGS_ACCESS_WRITE = 1 << 0
MOCK_FLAGS_ACCESS_SYZ = 1 << 16

MOCK_ACCESS_RW_WRITE = 1 << 0
MOCK_ACCESS_RW_SLOW_PATH = 1 << 2

MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES = 1 << 0

MOCK_FLAGS_DEVICE_NO_DIRTY = 1 << 0
MOCK_FLAGS_DEVICE_PASID = 1 << 2

MOCK_NESTED_DOMAIN_IOTLB_ID_MAX = 3
MOCK_NESTED_DOMAIN_IOTLB_NUM = 4

MOCK_DEV_CACHE_ID_MAX = 3
MOCK_DEV_CACHE_NUM = 4

IOMMU_TEST_PASID_RESERVED = 1024
MOCK_PASID_WIDTH = 20

IOMMU_HW_INFO_TYPE_SELFTEST = 0xFEEDBEEF
IOMMU_HW_INFO_SELFTEST_REGVAL = 0xDEADBEEF

IOMMU_HWPT_DATA_SELFTEST = 0xDEAD
IOMMU_TEST_IOTLB_DEFAULT = 0xBADBEEF
IOMMU_TEST_DEV_CACHE_DEFAULT = 0xBADDAD

IOMMU_HWPT_INVALIDATE_DATA_SELFTEST = 0xDEADBEEF
IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID = 0xDADBEEF
IOMMU_TEST_INVALIDATE_FLAG_ALL = 1 << 0

IOMMU_VIOMMU_TYPE_SELFTEST = 0xDEADBEEF
IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST = 0xDEADBEEF
IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID = 0xDADBEEF

IOMMU_VEVENTQ_TYPE_SELFTEST = 0xBEEFBEEF

IOMMU_HW_QUEUE_TYPE_SELFTEST = 0xDEADBEEF
IOMMU_TEST_HW_QUEUE_MAX = 2


# --- IOMMU_TEST_CMD: one argument struct per op ---------------------------------------


class iommu_test_cmd_add_reserved(UapiStruct):
    """IOMMU_TEST_OP_ADD_RESERVED: reserve an IOVA range in the IOAS ``id``."""

    _fields_ = [("start", _aligned_u64), ("length", _aligned_u64)]


class iommu_test_cmd_mock_domain(UapiStruct):
    """IOMMU_TEST_OP_MOCK_DOMAIN: create a mock device attached to the IOAS ``id``."""

    _fields_ = [("out_stdev_id", _u32), ("out_hwpt_id", _u32), ("out_idev_id", _u32)]


class iommu_test_cmd_mock_domain_flags(UapiStruct):
    """IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS: MOCK_DOMAIN with MOCK_FLAGS_DEVICE_* flags."""

    _fields_ = [
        ("out_stdev_id", _u32),
        ("out_hwpt_id", _u32),
        ("out_idev_id", _u32),
        ("dev_flags", _u32),
    ]


class iommu_test_cmd_mock_domain_replace(UapiStruct):
    """IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE: re-attach the mock device ``id`` to ``pt_id``."""

    _fields_ = [("pt_id", _u32)]


class iommu_test_cmd_check_map(UapiStruct):
    """IOMMU_TEST_OP_MD_CHECK_MAP: check the mock domain maps IOVA range -> user memory."""

    _fields_ = [("iova", _aligned_u64), ("length", _aligned_u64), ("uptr", _aligned_u64)]


class iommu_test_cmd_check_refs(UapiStruct):
    """IOMMU_TEST_OP_MD_CHECK_REFS: check the page refcounts of a user range."""

    _fields_ = [("length", _aligned_u64), ("uptr", _aligned_u64), ("refs", _u32)]


class iommu_test_cmd_create_access(UapiStruct):
    """IOMMU_TEST_OP_CREATE_ACCESS: create an in-kernel access object and its fd."""

    _fields_ = [("out_access_fd", _u32), ("flags", _u32)]


class iommu_test_cmd_destroy_access_pages(UapiStruct):
    """IOMMU_TEST_OP_DESTROY_ACCESS_PAGES: unpin pages pinned by ACCESS_PAGES."""

    _fields_ = [("access_pages_id", _u32)]


class iommu_test_cmd_access_pages(UapiStruct):
    """IOMMU_TEST_OP_ACCESS_PAGES: pin an IOVA range through an access object."""

    _fields_ = [
        ("flags", _u32),
        ("out_access_pages_id", _u32),
        ("iova", _aligned_u64),
        ("length", _aligned_u64),
        ("uptr", _aligned_u64),
    ]


class iommu_test_cmd_access_rw(UapiStruct):
    """IOMMU_TEST_OP_ACCESS_RW: read or write an IOVA range through an access object."""

    _fields_ = [
        ("iova", _aligned_u64),
        ("length", _aligned_u64),
        ("uptr", _aligned_u64),
        ("flags", _u32),
    ]


class iommu_test_cmd_memory_limit(UapiStruct):
    """IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT: cap the pages an IOAS may pin."""

    _fields_ = [("limit", _u32)]


class iommu_test_cmd_access_replace_ioas(UapiStruct):
    """IOMMU_TEST_OP_ACCESS_REPLACE_IOAS: move an access object to another IOAS."""

    _fields_ = [("ioas_id", _u32)]


class iommu_test_cmd_dirty(UapiStruct):
    """IOMMU_TEST_OP_DIRTY: mark mock-domain pages dirty from a user bitmap."""

    _fields_ = [
        ("flags", _u32),
        ("iova", _aligned_u64),
        ("length", _aligned_u64),
        ("page_size", _aligned_u64),
        ("uptr", _aligned_u64),
        ("out_nr_dirty", _aligned_u64),
    ]


class iommu_test_cmd_check_iotlb(UapiStruct):
    """IOMMU_TEST_OP_MD_CHECK_IOTLB: check one mock IOTLB entry of a nested HWPT."""

    _fields_ = [("id", _u32), ("iotlb", _u32)]


class iommu_test_cmd_trigger_iopf(UapiStruct):
    """IOMMU_TEST_OP_TRIGGER_IOPF: inject a page fault into a device's fault queue."""

    _fields_ = [
        ("dev_id", _u32),
        ("pasid", _u32),
        ("grpid", _u32),
        ("perm", _u32),
        ("addr", _u64),
    ]


class iommu_test_cmd_check_dev_cache(UapiStruct):
    """IOMMU_TEST_OP_DEV_CHECK_CACHE: check one mock device-cache entry."""

    _fields_ = [("id", _u32), ("cache", _u32)]


class iommu_test_cmd_trigger_vevent(UapiStruct):
    """IOMMU_TEST_OP_TRIGGER_VEVENT: inject a selftest vEVENT for a device."""

    _fields_ = [("dev_id", _u32)]


class iommu_test_cmd_pasid_attach(UapiStruct):
    """IOMMU_TEST_OP_PASID_ATTACH: attach a PASID of the mock device ``id`` to ``pt_id``."""

    _fields_ = [("pasid", _u32), ("pt_id", _u32)]


class iommu_test_cmd_pasid_replace(UapiStruct):
    """IOMMU_TEST_OP_PASID_REPLACE: replace what a PASID of the mock device is attached to."""

    _fields_ = [("pasid", _u32), ("pt_id", _u32)]


class iommu_test_cmd_pasid_detach(UapiStruct):
    """IOMMU_TEST_OP_PASID_DETACH: detach a PASID of the mock device ``id``."""

    _fields_ = [("pasid", _u32)]


class iommu_test_cmd_pasid_check(UapiStruct):
    """IOMMU_TEST_OP_PASID_CHECK_HWPT: check which HWPT a PASID is attached to."""

    _fields_ = [("pasid", _u32), ("hwpt_id", _u32)]


class iommu_test_cmd_dmabuf_get(UapiStruct):
    """IOMMU_TEST_OP_DMABUF_GET: create a test dma-buf of ``length`` bytes."""

    _fields_ = [("length", _u32), ("open_flags", _u32)]


class iommu_test_cmd_dmabuf_revoke(UapiStruct):
    """IOMMU_TEST_OP_DMABUF_REVOKE: revoke (or restore) a test dma-buf."""

    _fields_ = [("dmabuf_fd", _s32), ("revoked", _u32)]


class iommu_test_cmd_union(UapiUnion):
    """The anonymous union of struct iommu_test_cmd: the arguments of each op."""

    _fields_ = [
        ("add_reserved", iommu_test_cmd_add_reserved),
        ("mock_domain", iommu_test_cmd_mock_domain),
        ("mock_domain_flags", iommu_test_cmd_mock_domain_flags),
        ("mock_domain_replace", iommu_test_cmd_mock_domain_replace),
        ("check_map", iommu_test_cmd_check_map),
        ("check_refs", iommu_test_cmd_check_refs),
        ("create_access", iommu_test_cmd_create_access),
        ("destroy_access_pages", iommu_test_cmd_destroy_access_pages),
        ("access_pages", iommu_test_cmd_access_pages),
        ("access_rw", iommu_test_cmd_access_rw),
        ("memory_limit", iommu_test_cmd_memory_limit),
        ("access_replace_ioas", iommu_test_cmd_access_replace_ioas),
        ("dirty", iommu_test_cmd_dirty),
        ("check_iotlb", iommu_test_cmd_check_iotlb),
        ("trigger_iopf", iommu_test_cmd_trigger_iopf),
        ("check_dev_cache", iommu_test_cmd_check_dev_cache),
        ("trigger_vevent", iommu_test_cmd_trigger_vevent),
        ("pasid_attach", iommu_test_cmd_pasid_attach),
        ("pasid_replace", iommu_test_cmd_pasid_replace),
        ("pasid_detach", iommu_test_cmd_pasid_detach),
        ("pasid_check", iommu_test_cmd_pasid_check),
        ("dmabuf_get", iommu_test_cmd_dmabuf_get),
        ("dmabuf_revoke", iommu_test_cmd_dmabuf_revoke),
    ]


class iommu_test_cmd(UapiStruct):
    """ioctl(IOMMU_TEST_CMD): one IOMMU_TEST_OP_* operation of the selftest mock driver."""

    _anonymous_ = ("_op_args",)
    _fields_ = [
        ("size", _u32),
        ("op", _u32),
        ("id", _u32),
        ("__reserved", _u32),
        ("_op_args", iommu_test_cmd_union),
        ("last", _u32),
    ]


# --- mock driver data -----------------------------------------------------------------


class iommu_test_hw_info(UapiStruct):
    """GET_HW_INFO data IOMMU_HW_INFO_TYPE_SELFTEST of the mock IOMMU."""

    _fields_ = [("flags", _u32), ("test_reg", _u32)]


class iommu_hwpt_selftest(UapiStruct):
    """HWPT data IOMMU_HWPT_DATA_SELFTEST: initial mock IOTLB value and page-table type."""

    _fields_ = [("iotlb", _u32), ("pagetable_type", _u32)]


class iommu_hwpt_invalidate_selftest(UapiStruct):
    """Invalidation entry IOMMU_HWPT_INVALIDATE_DATA_SELFTEST: one mock IOTLB entry or all."""

    _fields_ = [("flags", _u32), ("iotlb_id", _u32)]


class iommu_viommu_selftest(UapiStruct):
    """vIOMMU data IOMMU_VIOMMU_TYPE_SELFTEST: loopback value and an mmap window."""

    _fields_ = [
        ("in_data", _u32),
        ("out_data", _u32),
        ("out_mmap_offset", _aligned_u64),
        ("out_mmap_length", _aligned_u64),
    ]


class iommu_viommu_invalidate_selftest(UapiStruct):
    """Invalidation entry IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST: a vDEVICE cache entry."""

    _fields_ = [("flags", _u32), ("vdev_id", _u32), ("cache_id", _u32)]


class iommu_viommu_event_selftest(UapiStruct):
    """vEVENT data IOMMU_VEVENTQ_TYPE_SELFTEST: the virtual ID of the device."""

    _fields_ = [("virt_id", _u32)]


IOMMU_TEST_CMD = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 32)

C_HEADERS = ("iommufd_test.h",)

STRUCTS = (
    iommu_test_cmd,
    iommu_test_hw_info,
    iommu_hwpt_selftest,
    iommu_hwpt_invalidate_selftest,
    iommu_viommu_selftest,
    iommu_viommu_invalidate_selftest,
    iommu_viommu_event_selftest,
)

IOCTLS = ("IOMMU_TEST_CMD",)
