"""The legacy (pre-iommufd) vendor VFIO nesting uAPI documented by seed 000.

Seed 000 is a QEMU patch updating ``linux-headers/linux/iommu.h`` and ``vfio.h`` against
a 5.10 vendor kernel: the type1 nesting ioctls (PASID table, cache invalidation, MSI
binding, process bind), the generic ``iommu_fault`` / ``iommu_page_response`` records
and the DMA fault / fault-response region rings.  It never went upstream and no kernel we
can boot implements it, so it is modelled byte-exactly here and exercised on synthetic
buffers.  ``tests/unit/data/legacy_uapi.h`` is the C reference the ABI check compiles;
names and values are the seed's, and the ioctls are ``_IO`` as its ``#define`` lines say.

Anonymous unions are a member named ``_u`` listed in ``_anonymous_``; named unions of an
unnamed C type (``granu``, ``vendor``, ``vendor_data``) get a private class.
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TypeVar

from harness.errors import DecodeError, EncodeError
from harness.uapi._ioctl import _IO
from harness.uapi._struct import UapiStruct, UapiUnion
from harness.uapi.vfio import VFIO_BASE, VFIO_TYPE, vfio_info_cap_header

_u8 = ctypes.c_uint8
_u16 = ctypes.c_uint16
_u32 = ctypes.c_uint32
_s32 = ctypes.c_int32
_u64 = ctypes.c_uint64

# ============================ linux/iommu.h ============================

IOMMU_FAULT_PERM_READ = 1 << 0
IOMMU_FAULT_PERM_WRITE = 1 << 1
IOMMU_FAULT_PERM_EXEC = 1 << 2
IOMMU_FAULT_PERM_PRIV = 1 << 3
_FAULT_PERM_ALL = 0xF


class iommu_fault_type(enum.IntEnum):
    IOMMU_FAULT_DMA_UNRECOV = 1
    IOMMU_FAULT_PAGE_REQ = 2


IOMMU_FAULT_DMA_UNRECOV = iommu_fault_type.IOMMU_FAULT_DMA_UNRECOV
IOMMU_FAULT_PAGE_REQ = iommu_fault_type.IOMMU_FAULT_PAGE_REQ


class iommu_fault_reason(enum.IntEnum):
    IOMMU_FAULT_REASON_UNKNOWN = 0
    IOMMU_FAULT_REASON_PASID_FETCH = 1
    IOMMU_FAULT_REASON_BAD_PASID_ENTRY = 2
    IOMMU_FAULT_REASON_PASID_INVALID = 3
    IOMMU_FAULT_REASON_WALK_EABT = 4
    IOMMU_FAULT_REASON_PTE_FETCH = 5
    IOMMU_FAULT_REASON_PERMISSION = 6
    IOMMU_FAULT_REASON_ACCESS = 7
    IOMMU_FAULT_REASON_OOR_ADDRESS = 8


IOMMU_FAULT_REASON_UNKNOWN = iommu_fault_reason.IOMMU_FAULT_REASON_UNKNOWN
IOMMU_FAULT_REASON_PASID_FETCH = iommu_fault_reason.IOMMU_FAULT_REASON_PASID_FETCH
IOMMU_FAULT_REASON_BAD_PASID_ENTRY = iommu_fault_reason.IOMMU_FAULT_REASON_BAD_PASID_ENTRY
IOMMU_FAULT_REASON_PASID_INVALID = iommu_fault_reason.IOMMU_FAULT_REASON_PASID_INVALID
IOMMU_FAULT_REASON_WALK_EABT = iommu_fault_reason.IOMMU_FAULT_REASON_WALK_EABT
IOMMU_FAULT_REASON_PTE_FETCH = iommu_fault_reason.IOMMU_FAULT_REASON_PTE_FETCH
IOMMU_FAULT_REASON_PERMISSION = iommu_fault_reason.IOMMU_FAULT_REASON_PERMISSION
IOMMU_FAULT_REASON_ACCESS = iommu_fault_reason.IOMMU_FAULT_REASON_ACCESS
IOMMU_FAULT_REASON_OOR_ADDRESS = iommu_fault_reason.IOMMU_FAULT_REASON_OOR_ADDRESS

IOMMU_FAULT_UNRECOV_PASID_VALID = 1 << 0
IOMMU_FAULT_UNRECOV_ADDR_VALID = 1 << 1
IOMMU_FAULT_UNRECOV_FETCH_ADDR_VALID = 1 << 2
_FAULT_UNRECOV_ALL = 0x7


class iommu_fault_unrecoverable(UapiStruct):
    _fields_ = [
        ("reason", _u32),
        ("flags", _u32),
        ("pasid", _u32),
        ("perm", _u32),
        ("addr", _u64),
        ("fetch_addr", _u64),
    ]


IOMMU_FAULT_PAGE_REQUEST_PASID_VALID = 1 << 0
IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE = 1 << 1
IOMMU_FAULT_PAGE_REQUEST_PRIV_DATA = 1 << 2
IOMMU_FAULT_PAGE_RESPONSE_NEEDS_PASID = 1 << 3
_FAULT_PAGE_REQUEST_ALL = 0xF


class iommu_fault_page_request(UapiStruct):
    _fields_ = [
        ("flags", _u32),
        ("pasid", _u32),
        ("grpid", _u32),
        ("perm", _u32),
        ("addr", _u64),
        ("private_data", _u64 * 2),
    ]


class _iommu_fault_data(UapiUnion):
    _fields_ = [
        ("event", iommu_fault_unrecoverable),
        ("prm", iommu_fault_page_request),
        ("padding2", _u8 * 56),
    ]


class iommu_fault(UapiStruct):
    _anonymous_ = ("_u",)
    _fields_ = [("type", _u32), ("padding", _u32), ("_u", _iommu_fault_data)]


class iommu_page_response_code(enum.IntEnum):
    IOMMU_PAGE_RESP_SUCCESS = 0
    IOMMU_PAGE_RESP_INVALID = 1
    IOMMU_PAGE_RESP_FAILURE = 2


IOMMU_PAGE_RESP_SUCCESS = iommu_page_response_code.IOMMU_PAGE_RESP_SUCCESS
IOMMU_PAGE_RESP_INVALID = iommu_page_response_code.IOMMU_PAGE_RESP_INVALID
IOMMU_PAGE_RESP_FAILURE = iommu_page_response_code.IOMMU_PAGE_RESP_FAILURE

IOMMU_PAGE_RESP_VERSION_1 = 1
IOMMU_PAGE_RESP_PASID_VALID = 1 << 0


class iommu_page_response(UapiStruct):
    _fields_ = [
        ("argsz", _u32),
        ("version", _u32),
        ("flags", _u32),
        ("pasid", _u32),
        ("grpid", _u32),
        ("code", _u32),
    ]


class iommu_inv_granularity(enum.IntEnum):
    IOMMU_INV_GRANU_DOMAIN = 0
    IOMMU_INV_GRANU_PASID = 1
    IOMMU_INV_GRANU_ADDR = 2
    IOMMU_INV_GRANU_NR = 3


IOMMU_INV_GRANU_DOMAIN = iommu_inv_granularity.IOMMU_INV_GRANU_DOMAIN
IOMMU_INV_GRANU_PASID = iommu_inv_granularity.IOMMU_INV_GRANU_PASID
IOMMU_INV_GRANU_ADDR = iommu_inv_granularity.IOMMU_INV_GRANU_ADDR
IOMMU_INV_GRANU_NR = iommu_inv_granularity.IOMMU_INV_GRANU_NR

IOMMU_INV_ADDR_FLAGS_PASID = 1 << 0
IOMMU_INV_ADDR_FLAGS_ARCHID = 1 << 1
IOMMU_INV_ADDR_FLAGS_LEAF = 1 << 2
_INV_ADDR_FLAGS_ALL = 0x7


class iommu_inv_addr_info(UapiStruct):
    _fields_ = [
        ("flags", _u32),
        ("archid", _u32),
        ("pasid", _u64),
        ("addr", _u64),
        ("granule_size", _u64),
        ("nb_granules", _u64),
    ]


IOMMU_INV_PASID_FLAGS_PASID = 1 << 0
IOMMU_INV_PASID_FLAGS_ARCHID = 1 << 1
_INV_PASID_FLAGS_ALL = 0x3


class iommu_inv_pasid_info(UapiStruct):
    _fields_ = [("flags", _u32), ("archid", _u32), ("pasid", _u64)]


IOMMU_CACHE_INVALIDATE_INFO_VERSION_1 = 1
IOMMU_CACHE_INV_TYPE_IOTLB = 1 << 0
IOMMU_CACHE_INV_TYPE_DEV_IOTLB = 1 << 1
IOMMU_CACHE_INV_TYPE_PASID = 1 << 2
IOMMU_CACHE_INV_TYPE_NR = 3


class _iommu_cache_invalidate_info_granu(UapiUnion):
    _fields_ = [("pasid_info", iommu_inv_pasid_info), ("addr_info", iommu_inv_addr_info)]


class iommu_cache_invalidate_info(UapiStruct):
    _fields_ = [
        ("argsz", _u32),
        ("version", _u32),
        ("cache", _u8),
        ("granularity", _u8),
        ("padding", _u8 * 6),
        ("granu", _iommu_cache_invalidate_info_granu),
    ]


IOMMU_SVA_VTD_GPASID_SRE = 1 << 0
IOMMU_SVA_VTD_GPASID_EAFE = 1 << 1
IOMMU_SVA_VTD_GPASID_PCD = 1 << 2
IOMMU_SVA_VTD_GPASID_PWT = 1 << 3
IOMMU_SVA_VTD_GPASID_EMTE = 1 << 4
IOMMU_SVA_VTD_GPASID_CD = 1 << 5
IOMMU_SVA_VTD_GPASID_LAST = 1 << 6
IOMMU_SVA_VTD_GPASID_MTS_MASK = (
    IOMMU_SVA_VTD_GPASID_CD
    | IOMMU_SVA_VTD_GPASID_EMTE
    | IOMMU_SVA_VTD_GPASID_PCD
    | IOMMU_SVA_VTD_GPASID_PWT
)


class iommu_gpasid_bind_data_vtd(UapiStruct):
    _fields_ = [("flags", _u64), ("pat", _u32), ("emt", _u32)]


IOMMU_GPASID_BIND_VERSION_1 = 1
IOMMU_PASID_FORMAT_INTEL_VTD = 1
IOMMU_PASID_FORMAT_LAST = 2
IOMMU_SVA_GPASID_VAL = 1 << 0


class _iommu_gpasid_bind_data_vendor(UapiUnion):
    _fields_ = [("vtd", iommu_gpasid_bind_data_vtd)]


class iommu_gpasid_bind_data(UapiStruct):
    _fields_ = [
        ("argsz", _u32),
        ("version", _u32),
        ("format", _u32),
        ("addr_width", _u32),
        ("flags", _u64),
        ("gpgd", _u64),
        ("hpasid", _u64),
        ("gpasid", _u64),
        ("padding", _u8 * 8),
        ("vendor", _iommu_gpasid_bind_data_vendor),
    ]


PASID_TABLE_SMMUV3_CFG_VERSION_1 = 1


class iommu_pasid_smmuv3(UapiStruct):
    _fields_ = [("version", _u32), ("s1fmt", _u8), ("s1dss", _u8), ("padding", _u8 * 2)]


PASID_TABLE_CFG_VERSION_1 = 1
IOMMU_PASID_FORMAT_SMMUV3 = 1
IOMMU_PASID_CONFIG_TRANSLATE = 1
IOMMU_PASID_CONFIG_BYPASS = 2
IOMMU_PASID_CONFIG_ABORT = 3


class _iommu_pasid_table_config_vendor_data(UapiUnion):
    _fields_ = [("smmuv3", iommu_pasid_smmuv3)]


class iommu_pasid_table_config(UapiStruct):
    _fields_ = [
        ("argsz", _u32),
        ("version", _u32),
        ("base_ptr", _u64),
        ("format", _u32),
        ("pasid_bits", _u8),
        ("config", _u8),
        ("padding", _u8 * 2),
        ("vendor_data", _iommu_pasid_table_config_vendor_data),
    ]


# ============================ linux/vfio.h ============================

VFIO_TYPE1_NESTING_IOMMU = 6

VFIO_REGION_TYPE_NESTED = 4
VFIO_REGION_SUBTYPE_NESTED_DMA_FAULT = 1
VFIO_REGION_SUBTYPE_NESTED_DMA_FAULT_RESPONSE = 2

VFIO_IRQ_INFO_EVENTFD = 1 << 0
VFIO_IRQ_INFO_MASKABLE = 1 << 1
VFIO_IRQ_INFO_AUTOMASKED = 1 << 2
VFIO_IRQ_INFO_NORESIZE = 1 << 3
VFIO_IRQ_INFO_FLAG_CAPS = 1 << 4


class vfio_irq_info(UapiStruct):
    """The vendor kernel's IRQ info: 7.3's ``vfio_irq_info`` plus ``cap_offset``."""

    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("index", _u32),
        ("count", _u32),
        ("cap_offset", _u32),
    ]


VFIO_DEVICE_GET_IRQ_INFO = _IO(VFIO_TYPE, VFIO_BASE + 9)

VFIO_IRQ_INFO_CAP_TYPE = 3


class vfio_irq_info_cap_type(UapiStruct):
    _fields_ = [("header", vfio_info_cap_header), ("type", _u32), ("subtype", _u32)]


VFIO_IRQ_TYPE_NESTED = 1
VFIO_IRQ_SUBTYPE_DMA_FAULT = 1

VFIO_PCI_INTX_IRQ_INDEX = 0
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_PCI_MSIX_IRQ_INDEX = 2
VFIO_PCI_ERR_IRQ_INDEX = 3
VFIO_PCI_REQ_IRQ_INDEX = 4
VFIO_PCI_NUM_IRQS = 5

VFIO_REGION_INFO_CAP_DMA_FAULT = 6


class vfio_region_info_cap_fault(UapiStruct):
    _fields_ = [("header", vfio_info_cap_header), ("version", _u32)]


VFIO_REGION_INFO_CAP_DMA_FAULT_RESPONSE = 7


class vfio_region_info_cap_fault_response(UapiStruct):
    _fields_ = [("header", vfio_info_cap_header), ("version", _u32)]


class vfio_region_dma_fault(UapiStruct):
    """Fault ring header: the kernel produces at ``head``, userspace consumes at ``tail``."""

    _fields_ = [
        ("tail", _u32),
        ("entry_size", _u32),
        ("nb_entries", _u32),
        ("offset", _u32),
        ("head", _u32),
    ]


class vfio_region_dma_fault_response(UapiStruct):
    """Response ring header: userspace produces at ``head``, the kernel consumes at ``tail``."""

    _fields_ = [
        ("head", _u32),
        ("entry_size", _u32),
        ("nb_entries", _u32),
        ("offset", _u32),
        ("tail", _u32),
    ]


VFIO_IOMMU_BIND_PID = 1 << 0


class vfio_iommu_type1_bind_process(UapiStruct):
    _fields_ = [("flags", _u32), ("pasid", _u32), ("pid", _s32)]


VFIO_IOMMU_BIND_PROCESS = 1 << 0


class vfio_iommu_type1_bind(UapiStruct):
    _fields_ = [("argsz", _u32), ("flags", _u32), ("data", _u8 * 0)]


VFIO_IOMMU_BIND = _IO(VFIO_TYPE, VFIO_BASE + 22)
VFIO_IOMMU_UNBIND = _IO(VFIO_TYPE, VFIO_BASE + 23)

VFIO_PASID_TABLE_FLAG_SET = 1 << 0
VFIO_PASID_TABLE_FLAG_UNSET = 1 << 1


class vfio_iommu_type1_set_pasid_table(UapiStruct):
    _fields_ = [("argsz", _u32), ("flags", _u32), ("config", iommu_pasid_table_config)]


VFIO_IOMMU_SET_PASID_TABLE = _IO(VFIO_TYPE, VFIO_BASE + 18)


class vfio_iommu_type1_cache_invalidate(UapiStruct):
    _fields_ = [("argsz", _u32), ("flags", _u32), ("info", iommu_cache_invalidate_info)]


VFIO_IOMMU_CACHE_INVALIDATE = _IO(VFIO_TYPE, VFIO_BASE + 19)

VFIO_IOMMU_BIND_MSI = 1 << 0
VFIO_IOMMU_UNBIND_MSI = 1 << 1


class vfio_iommu_type1_set_msi_binding(UapiStruct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("iova", _u64),
        ("gpa", _u64),
        ("size", _u64),
    ]


VFIO_IOMMU_SET_MSI_BINDING = _IO(VFIO_TYPE, VFIO_BASE + 20)


# ===================== cache invalidation: valid combinations =====================

CACHE_INV_GRANULARITIES: Mapping[int, frozenset[iommu_inv_granularity]] = MappingProxyType(
    {
        IOMMU_CACHE_INV_TYPE_DEV_IOTLB: frozenset({IOMMU_INV_GRANU_PASID, IOMMU_INV_GRANU_ADDR}),
        IOMMU_CACHE_INV_TYPE_IOTLB: frozenset(
            {IOMMU_INV_GRANU_DOMAIN, IOMMU_INV_GRANU_PASID, IOMMU_INV_GRANU_ADDR}
        ),
        IOMMU_CACHE_INV_TYPE_PASID: frozenset({IOMMU_INV_GRANU_DOMAIN, IOMMU_INV_GRANU_PASID}),
    }
)
"""Seed 000's cache type x granularity table: each cache type bit → granularities it takes."""

_CACHE_TYPES_ALL = (1 << IOMMU_CACHE_INV_TYPE_NR) - 1


def cache_invalidation_valid(cache: int, granularity: int) -> bool:
    """Whether every cache type set in ``cache`` supports ``granularity`` (seed's table)."""
    if cache <= 0 or cache & ~_CACHE_TYPES_ALL:
        return False
    return all(
        granularity in granus for bit, granus in CACHE_INV_GRANULARITIES.items() if cache & bit
    )


def _cache_invalidate_problem(info: iommu_cache_invalidate_info) -> tuple[str, str] | None:
    name = "iommu_cache_invalidate_info"
    if info.version != IOMMU_CACHE_INVALIDATE_INFO_VERSION_1:
        return f"{name}.version", f"unknown version {info.version}"
    cache, granu = int(info.cache), int(info.granularity)
    if cache == 0 or cache & ~_CACHE_TYPES_ALL:
        return f"{name}.cache", f"{cache:#x} is not a nonempty set of IOMMU_CACHE_INV_TYPE_*"
    if granu >= IOMMU_INV_GRANU_NR:
        return f"{name}.granularity", f"unknown granularity {granu}"
    if not cache_invalidation_valid(cache, granu):
        return (
            f"{name}.granularity",
            f"{iommu_inv_granularity(granu).name} is not valid for cache {cache:#x}",
        )
    if any(info.padding):
        return f"{name}.padding", "reserved bytes are not zero"
    if granu == IOMMU_INV_GRANU_PASID:
        flags = int(info.granu.pasid_info.flags)
        if flags & ~_INV_PASID_FLAGS_ALL:
            return f"{name}.granu.pasid_info.flags", f"unknown bits {flags:#x}"
        if not flags:
            return f"{name}.granu.pasid_info.flags", "neither PASID nor ARCHID is set"
    elif granu == IOMMU_INV_GRANU_ADDR:
        flags = int(info.granu.addr_info.flags)
        if flags & ~_INV_ADDR_FLAGS_ALL:
            return f"{name}.granu.addr_info.flags", f"unknown bits {flags:#x}"
    return None


def encode_cache_invalidate_info(
    cache: int,
    granularity: int,
    *,
    pasid_info: iommu_inv_pasid_info | None = None,
    addr_info: iommu_inv_addr_info | None = None,
) -> iommu_cache_invalidate_info:
    """A version-1 invalidation request; raises ``EncodeError`` for what the seed forbids."""
    info = iommu_cache_invalidate_info(
        argsz=ctypes.sizeof(iommu_cache_invalidate_info),
        version=IOMMU_CACHE_INVALIDATE_INFO_VERSION_1,
        cache=cache & 0xFF,
        granularity=granularity & 0xFF,
    )
    given = {"pasid_info": pasid_info, "addr_info": addr_info}
    union_member: dict[int, str] = {
        IOMMU_INV_GRANU_PASID: "pasid_info",
        IOMMU_INV_GRANU_ADDR: "addr_info",
    }
    wanted = union_member.get(granularity)
    for name, value in given.items():
        if value is not None and name != wanted:
            raise EncodeError(f"granu.{name}", f"not used with granularity {granularity}")
    if wanted is not None:
        value = given[wanted]
        if value is None:
            raise EncodeError(f"granu.{wanted}", f"required for granularity {granularity}")
        setattr(info.granu, wanted, value)
    if cache != info.cache or granularity != info.granularity:
        raise EncodeError("iommu_cache_invalidate_info", "cache / granularity exceed 8 bits")
    problem = _cache_invalidate_problem(info)
    if problem:
        raise EncodeError(*problem)
    return info


def decode_cache_invalidate_info(
    buf: bytes | bytearray | memoryview,
) -> iommu_cache_invalidate_info:
    """Decode and check an invalidation request as the vendor host would receive it."""
    size = ctypes.sizeof(iommu_cache_invalidate_info)
    if len(buf) < size:
        raise DecodeError("iommu_cache_invalidate_info", f"need {size} bytes, got {len(buf)}")
    info = iommu_cache_invalidate_info.from_bytes(buf)
    problem = _cache_invalidate_problem(info)
    if problem:
        raise DecodeError(*problem)
    return info


def vfio_cache_invalidate(info: iommu_cache_invalidate_info) -> vfio_iommu_type1_cache_invalidate:
    """The VFIO_IOMMU_CACHE_INVALIDATE argument wrapping ``info``."""
    return vfio_iommu_type1_cache_invalidate(
        argsz=ctypes.sizeof(vfio_iommu_type1_cache_invalidate), flags=0, info=info
    )


# ===================== PASID table, MSI binding, process bind =====================


def vfio_set_pasid_table(
    config: iommu_pasid_table_config | None,
) -> vfio_iommu_type1_set_pasid_table:
    """VFIO_IOMMU_SET_PASID_TABLE's argument: SET with ``config``, or UNSET for ``None``."""
    arg = vfio_iommu_type1_set_pasid_table(argsz=ctypes.sizeof(vfio_iommu_type1_set_pasid_table))
    if config is None:
        arg.flags = VFIO_PASID_TABLE_FLAG_UNSET
        return arg
    if config.version != PASID_TABLE_CFG_VERSION_1:
        raise EncodeError("iommu_pasid_table_config.version", f"unknown {config.version}")
    if config.format != IOMMU_PASID_FORMAT_SMMUV3:
        raise EncodeError("iommu_pasid_table_config.format", f"unknown {config.format}")
    if config.config not in (
        IOMMU_PASID_CONFIG_TRANSLATE,
        IOMMU_PASID_CONFIG_BYPASS,
        IOMMU_PASID_CONFIG_ABORT,
    ):
        raise EncodeError("iommu_pasid_table_config.config", f"unknown {config.config}")
    arg.flags = VFIO_PASID_TABLE_FLAG_SET
    arg.config = config
    return arg


def smmuv3_pasid_table_config(
    base_ptr: int, pasid_bits: int, config: int, *, s1fmt: int = 0, s1dss: int = 0
) -> iommu_pasid_table_config:
    """A version-1 SMMUv3 PASID (CD) table configuration."""
    if not 0 <= pasid_bits <= 20:
        raise EncodeError("iommu_pasid_table_config.pasid_bits", f"{pasid_bits} not in 0..20")
    return iommu_pasid_table_config(
        argsz=ctypes.sizeof(iommu_pasid_table_config),
        version=PASID_TABLE_CFG_VERSION_1,
        base_ptr=base_ptr,
        format=IOMMU_PASID_FORMAT_SMMUV3,
        pasid_bits=pasid_bits,
        config=config,
        vendor_data=_iommu_pasid_table_config_vendor_data(
            smmuv3=iommu_pasid_smmuv3(
                version=PASID_TABLE_SMMUV3_CFG_VERSION_1, s1fmt=s1fmt, s1dss=s1dss
            )
        ),
    )


def vfio_msi_binding(
    iova: int, gpa: int | None = None, size: int = 0
) -> vfio_iommu_type1_set_msi_binding:
    """VFIO_IOMMU_SET_MSI_BINDING's argument: BIND when ``gpa`` is given, else UNBIND."""
    arg = vfio_iommu_type1_set_msi_binding(
        argsz=ctypes.sizeof(vfio_iommu_type1_set_msi_binding), iova=iova
    )
    if gpa is None:
        if size:
            raise EncodeError("vfio_iommu_type1_set_msi_binding.size", "only used on BIND")
        arg.flags = VFIO_IOMMU_UNBIND_MSI
        return arg
    if size <= 0:
        raise EncodeError("vfio_iommu_type1_set_msi_binding.size", "BIND needs a size")
    return vfio_iommu_type1_set_msi_binding(
        argsz=ctypes.sizeof(vfio_iommu_type1_set_msi_binding),
        flags=VFIO_IOMMU_BIND_MSI,
        iova=iova,
        gpa=gpa,
        size=size,
    )


def vfio_bind_process(pid: int | None = None) -> bytes:
    """VFIO_IOMMU_BIND / UNBIND's argument for the current task or a foreign ``pid``."""
    process = vfio_iommu_type1_bind_process()
    if pid is not None:
        if pid <= 0:
            raise EncodeError("vfio_iommu_type1_bind_process.pid", f"{pid} is not a pid")
        process.flags = VFIO_IOMMU_BIND_PID
        process.pid = pid
    data = process.to_bytes()
    head = vfio_iommu_type1_bind(
        argsz=ctypes.sizeof(vfio_iommu_type1_bind) + len(data), flags=VFIO_IOMMU_BIND_PROCESS
    )
    return head.to_bytes() + data


# ============================ fault records ============================


def check_iommu_fault(fault: iommu_fault) -> None:
    """Raise ``DecodeError`` unless ``fault`` is a well-formed record of a known type."""
    if fault.padding:
        raise DecodeError("iommu_fault.padding", f"reserved field is {fault.padding:#x}")
    if fault.type == IOMMU_FAULT_DMA_UNRECOV:
        event = fault.event
        if event.reason > IOMMU_FAULT_REASON_OOR_ADDRESS:
            raise DecodeError("iommu_fault.event.reason", f"unknown reason {event.reason}")
        if event.flags & ~_FAULT_UNRECOV_ALL:
            raise DecodeError("iommu_fault.event.flags", f"unknown bits {event.flags:#x}")
        if event.perm & ~_FAULT_PERM_ALL:
            raise DecodeError("iommu_fault.event.perm", f"unknown bits {event.perm:#x}")
    elif fault.type == IOMMU_FAULT_PAGE_REQ:
        prm = fault.prm
        if prm.flags & ~_FAULT_PAGE_REQUEST_ALL:
            raise DecodeError("iommu_fault.prm.flags", f"unknown bits {prm.flags:#x}")
        if prm.perm & ~_FAULT_PERM_ALL:
            raise DecodeError("iommu_fault.prm.perm", f"unknown bits {prm.perm:#x}")
    else:
        raise DecodeError("iommu_fault.type", f"unknown fault type {fault.type}")


def decode_iommu_fault(buf: bytes | bytearray | memoryview) -> iommu_fault:
    """Decode one 64-byte fault record and check it with ``check_iommu_fault``."""
    size = ctypes.sizeof(iommu_fault)
    if len(buf) < size:
        raise DecodeError("iommu_fault", f"need {size} bytes, got {len(buf)}")
    fault = iommu_fault.from_bytes(buf)
    check_iommu_fault(fault)
    return fault


def check_page_response(resp: iommu_page_response) -> None:
    """Raise ``DecodeError`` unless ``resp`` is a well-formed version-1 page response."""
    if resp.version != IOMMU_PAGE_RESP_VERSION_1:
        raise DecodeError("iommu_page_response.version", f"unknown version {resp.version}")
    if resp.flags & ~IOMMU_PAGE_RESP_PASID_VALID:
        raise DecodeError("iommu_page_response.flags", f"unknown bits {resp.flags:#x}")
    if resp.code > IOMMU_PAGE_RESP_FAILURE:
        raise DecodeError("iommu_page_response.code", f"unknown code {resp.code}")


# ============================ DMA fault rings ============================

_H = TypeVar("_H", vfio_region_dma_fault, vfio_region_dma_fault_response)
_E = TypeVar("_E", iommu_fault, iommu_page_response)


def _check_ring(hdr: _H, entry_cls: type[UapiStruct], region_size: int) -> None:
    name = type(hdr).__name__
    if hdr.nb_entries == 0:
        raise DecodeError(f"{name}.nb_entries", "ring has no entries")
    if hdr.entry_size < ctypes.sizeof(entry_cls):
        raise DecodeError(
            f"{name}.entry_size",
            f"{hdr.entry_size} < sizeof(struct {entry_cls.__name__}) = {ctypes.sizeof(entry_cls)}",
        )
    if hdr.offset < ctypes.sizeof(hdr):
        raise DecodeError(f"{name}.offset", f"{hdr.offset:#x} overlaps the ring header")
    end = hdr.offset + hdr.nb_entries * hdr.entry_size
    if end > region_size:
        raise DecodeError(
            f"{name}.nb_entries",
            f"{hdr.nb_entries} entries of {hdr.entry_size} bytes at {hdr.offset:#x} "
            f"end at {end:#x}, past the {region_size:#x}-byte region",
        )
    for index_name in ("head", "tail"):
        value = getattr(hdr, index_name)
        if value >= hdr.nb_entries:
            raise DecodeError(f"{name}.{index_name}", f"{value} >= nb_entries {hdr.nb_entries}")


def _decode_ring(
    buf: bytes | bytearray | memoryview, hdr_cls: type[_H], entry_cls: type[_E]
) -> tuple[_H, list[_E]]:
    if len(buf) < ctypes.sizeof(hdr_cls):
        raise DecodeError(hdr_cls.__name__, f"need {ctypes.sizeof(hdr_cls)} bytes, got {len(buf)}")
    hdr = hdr_cls.from_bytes(buf)
    _check_ring(hdr, entry_cls, len(buf))
    entries: list[_E] = []
    index = int(hdr.tail)
    while index != hdr.head:
        start = hdr.offset + index * hdr.entry_size
        entries.append(entry_cls.from_bytes(buf[start : start + hdr.entry_size]))
        index = (index + 1) % hdr.nb_entries
    return hdr, entries


def _encode_ring(
    hdr: _H, entries: Sequence[UapiStruct], first: int, region_size: int | None
) -> bytearray:
    nb = int(hdr.nb_entries)
    name = type(hdr).__name__
    if nb <= 0:
        raise EncodeError(f"{name}.nb_entries", "ring needs at least one entry")
    if len(entries) > nb - 1:
        raise EncodeError(
            f"{name}.nb_entries",
            f"{len(entries)} entries do not fit: head == tail means empty, so at most {nb - 1}",
        )
    if not 0 <= first < nb:
        raise EncodeError(f"{name}.tail", f"start index {first} not in 0..{nb - 1}")
    end = hdr.offset + nb * hdr.entry_size
    size = end if region_size is None else region_size
    if size < end:
        raise EncodeError(f"{name}.nb_entries", f"ring ends at {end:#x}, region is {size:#x}")
    region = bytearray(size)
    for i, entry in enumerate(entries):
        start = hdr.offset + (first + i) % nb * hdr.entry_size
        region[start : start + ctypes.sizeof(entry)] = entry.to_bytes()
    region[: ctypes.sizeof(hdr)] = hdr.to_bytes()
    return region


def decode_dma_fault_region(
    buf: bytes | bytearray | memoryview,
) -> tuple[vfio_region_dma_fault, list[iommu_fault]]:
    """The fault ring header and the records pending for userspace, ``tail`` to ``head``.

    ``buf`` is the whole region (header page and ring). Records are returned undecoded
    beyond their layout; ``check_iommu_fault`` validates one.
    """
    return _decode_ring(buf, vfio_region_dma_fault, iommu_fault)


def encode_dma_fault_region(
    faults: Sequence[iommu_fault],
    nb_entries: int,
    *,
    tail: int = 0,
    offset: int = 4096,
    region_size: int | None = None,
) -> bytearray:
    """A synthetic fault region holding ``faults`` from index ``tail`` (head follows them).

    The ring starts at ``offset`` (one 4 KiB page by default, leaving the header page
    mmap-able on its own); the region is exactly as long as the ring unless
    ``region_size`` says more.
    """
    hdr = vfio_region_dma_fault(
        tail=tail,
        entry_size=ctypes.sizeof(iommu_fault),
        nb_entries=nb_entries,
        offset=offset,
        head=(tail + len(faults)) % nb_entries if nb_entries > 0 else 0,
    )
    return _encode_ring(hdr, faults, tail, region_size)


def decode_dma_fault_response_region(
    buf: bytes | bytearray | memoryview,
) -> tuple[vfio_region_dma_fault_response, list[iommu_page_response]]:
    """The response ring header and the responses pending for the kernel, ``tail`` to ``head``."""
    return _decode_ring(buf, vfio_region_dma_fault_response, iommu_page_response)


def encode_dma_fault_response_region(
    responses: Sequence[iommu_page_response],
    nb_entries: int,
    *,
    tail: int = 0,
    offset: int = 4096,
    region_size: int | None = None,
) -> bytearray:
    """A synthetic response region holding ``responses`` from ``tail`` (head follows)."""
    hdr = vfio_region_dma_fault_response(
        head=(tail + len(responses)) % nb_entries if nb_entries > 0 else 0,
        entry_size=ctypes.sizeof(iommu_page_response),
        nb_entries=nb_entries,
        offset=offset,
        tail=tail,
    )
    return _encode_ring(hdr, responses, tail, region_size)


C_HEADERS = ("legacy_uapi.h",)
C_INCLUDE_DIRS = ("tests/unit/data",)

STRUCTS = (
    iommu_fault_unrecoverable,
    iommu_fault_page_request,
    iommu_fault,
    iommu_page_response,
    iommu_inv_addr_info,
    iommu_inv_pasid_info,
    iommu_cache_invalidate_info,
    iommu_gpasid_bind_data_vtd,
    iommu_gpasid_bind_data,
    iommu_pasid_smmuv3,
    iommu_pasid_table_config,
    vfio_info_cap_header,
    vfio_irq_info,
    vfio_irq_info_cap_type,
    vfio_region_info_cap_fault,
    vfio_region_info_cap_fault_response,
    vfio_region_dma_fault,
    vfio_region_dma_fault_response,
    vfio_iommu_type1_bind_process,
    vfio_iommu_type1_bind,
    vfio_iommu_type1_set_pasid_table,
    vfio_iommu_type1_cache_invalidate,
    vfio_iommu_type1_set_msi_binding,
)

IOCTLS = (
    "VFIO_DEVICE_GET_IRQ_INFO",
    "VFIO_IOMMU_SET_PASID_TABLE",
    "VFIO_IOMMU_CACHE_INVALIDATE",
    "VFIO_IOMMU_SET_MSI_BINDING",
    "VFIO_IOMMU_BIND",
    "VFIO_IOMMU_UNBIND",
)
