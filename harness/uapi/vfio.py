"""ctypes models of Linux 7.3 ``include/uapi/linux/vfio.h``: container, group, device, type1.

Every structure and ioctl of the header is modelled with the kernel's names, including
the SPAPR / EEH ones the driver never issues (they share ioctl numbers with type1 and are
cheap to keep exact).  Flexible array members are zero-length ctypes arrays, so
``sizeof`` and member offsets match C.  Anonymous unions are a member named ``_u`` listed
in ``_anonymous_``; their members read and write as if they belonged to the struct.

The helpers at the end walk and build the INFO capability chains (type1 info, region
info, device info) and the variable-size arguments (IRQ set, device feature, hot reset).
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from harness.errors import DecodeError, EncodeError
from harness.uapi._ioctl import _IO
from harness.uapi._struct import UapiStruct, UapiUnion

_u8 = ctypes.c_uint8
_u16 = ctypes.c_uint16
_u32 = ctypes.c_uint32
_s32 = ctypes.c_int32
_u64 = ctypes.c_uint64

VFIO_API_VERSION = 0

# Extensions (VFIO_CHECK_EXTENSION arguments, VFIO_SET_IOMMU types)
VFIO_TYPE1_IOMMU = 1
VFIO_SPAPR_TCE_IOMMU = 2
VFIO_TYPE1v2_IOMMU = 3
VFIO_DMA_CC_IOMMU = 4
VFIO_EEH = 5
__VFIO_RESERVED_TYPE1_NESTING_IOMMU = 6
VFIO_SPAPR_TCE_v2_IOMMU = 7
VFIO_NOIOMMU_IOMMU = 8
VFIO_UNMAP_ALL = 9
VFIO_UPDATE_VADDR = 10

VFIO_TYPE = ord(";")
VFIO_BASE = 100


class vfio_info_cap_header(UapiStruct):
    _fields_ = [("id", _u16), ("version", _u16), ("next", _u32)]


# -------- container (/dev/vfio/vfio) --------

VFIO_GET_API_VERSION = _IO(VFIO_TYPE, VFIO_BASE + 0)
VFIO_CHECK_EXTENSION = _IO(VFIO_TYPE, VFIO_BASE + 1)
VFIO_SET_IOMMU = _IO(VFIO_TYPE, VFIO_BASE + 2)

# -------- group (/dev/vfio/$GROUP) --------

VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1


class vfio_group_status(UapiStruct):
    _fields_ = [("argsz", _u32), ("flags", _u32)]


VFIO_GROUP_GET_STATUS = _IO(VFIO_TYPE, VFIO_BASE + 3)
VFIO_GROUP_SET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 4)
VFIO_GROUP_UNSET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 5)
VFIO_GROUP_GET_DEVICE_FD = _IO(VFIO_TYPE, VFIO_BASE + 6)

# -------- device --------

VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1
VFIO_DEVICE_FLAGS_PLATFORM = 1 << 2
VFIO_DEVICE_FLAGS_AMBA = 1 << 3
VFIO_DEVICE_FLAGS_CCW = 1 << 4
VFIO_DEVICE_FLAGS_AP = 1 << 5
VFIO_DEVICE_FLAGS_FSL_MC = 1 << 6
VFIO_DEVICE_FLAGS_CAPS = 1 << 7
VFIO_DEVICE_FLAGS_CDX = 1 << 8


class vfio_device_info(UapiStruct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("num_regions", _u32),
        ("num_irqs", _u32),
        ("cap_offset", _u32),
        ("pad", _u32),
    ]


VFIO_DEVICE_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 7)

VFIO_DEVICE_API_PCI_STRING = "vfio-pci"
VFIO_DEVICE_API_PLATFORM_STRING = "vfio-platform"
VFIO_DEVICE_API_AMBA_STRING = "vfio-amba"
VFIO_DEVICE_API_CCW_STRING = "vfio-ccw"
VFIO_DEVICE_API_AP_STRING = "vfio-ap"

VFIO_DEVICE_INFO_CAP_ZPCI_BASE = 1
VFIO_DEVICE_INFO_CAP_ZPCI_GROUP = 2
VFIO_DEVICE_INFO_CAP_ZPCI_UTIL = 3
VFIO_DEVICE_INFO_CAP_ZPCI_PFIP = 4
VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP = 5

VFIO_PCI_ATOMIC_COMP32 = 1 << 0
VFIO_PCI_ATOMIC_COMP64 = 1 << 1
VFIO_PCI_ATOMIC_COMP128 = 1 << 2


class vfio_device_info_cap_pci_atomic_comp(UapiStruct):
    _fields_ = [("header", vfio_info_cap_header), ("flags", _u32), ("reserved", _u32)]


VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_REGION_INFO_FLAG_CAPS = 1 << 3


class vfio_region_info(UapiStruct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("index", _u32),
        ("cap_offset", _u32),
        ("size", _u64),
        ("offset", _u64),
    ]


VFIO_DEVICE_GET_REGION_INFO = _IO(VFIO_TYPE, VFIO_BASE + 8)

VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1


class vfio_region_sparse_mmap_area(UapiStruct):
    _fields_ = [("offset", _u64), ("size", _u64)]


class vfio_region_info_cap_sparse_mmap(UapiStruct):
    _fields_ = [
        ("header", vfio_info_cap_header),
        ("nr_areas", _u32),
        ("reserved", _u32),
        ("areas", vfio_region_sparse_mmap_area * 0),
    ]


VFIO_REGION_INFO_CAP_TYPE = 2


class vfio_region_info_cap_type(UapiStruct):
    _fields_ = [("header", vfio_info_cap_header), ("type", _u32), ("subtype", _u32)]


VFIO_REGION_TYPE_PCI_VENDOR_TYPE = 1 << 31
VFIO_REGION_TYPE_PCI_VENDOR_MASK = 0xFFFF
VFIO_REGION_TYPE_GFX = 1
VFIO_REGION_TYPE_CCW = 2
VFIO_REGION_TYPE_MIGRATION_DEPRECATED = 3

VFIO_REGION_SUBTYPE_INTEL_IGD_OPREGION = 1
VFIO_REGION_SUBTYPE_INTEL_IGD_HOST_CFG = 2
VFIO_REGION_SUBTYPE_INTEL_IGD_LPC_CFG = 3
VFIO_REGION_SUBTYPE_NVIDIA_NVLINK2_RAM = 1
VFIO_REGION_SUBTYPE_IBM_NVLINK2_ATSD = 1
VFIO_REGION_SUBTYPE_GFX_EDID = 1


class vfio_region_gfx_edid(UapiStruct):
    _fields_ = [
        ("edid_offset", _u32),
        ("edid_max_size", _u32),
        ("edid_size", _u32),
        ("max_xres", _u32),
        ("max_yres", _u32),
        ("link_state", _u32),
    ]


VFIO_DEVICE_GFX_LINK_STATE_UP = 1
VFIO_DEVICE_GFX_LINK_STATE_DOWN = 2

VFIO_REGION_SUBTYPE_CCW_ASYNC_CMD = 1
VFIO_REGION_SUBTYPE_CCW_SCHIB = 2
VFIO_REGION_SUBTYPE_CCW_CRW = 3
VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED = 1

VFIO_DEVICE_STATE_V1_STOP = 0
VFIO_DEVICE_STATE_V1_RUNNING = 1 << 0
VFIO_DEVICE_STATE_V1_SAVING = 1 << 1
VFIO_DEVICE_STATE_V1_RESUMING = 1 << 2
VFIO_DEVICE_STATE_MASK = (
    VFIO_DEVICE_STATE_V1_RUNNING | VFIO_DEVICE_STATE_V1_SAVING | VFIO_DEVICE_STATE_V1_RESUMING
)


class vfio_device_migration_info(UapiStruct):
    _fields_ = [
        ("device_state", _u32),
        ("reserved", _u32),
        ("pending_bytes", _u64),
        ("data_offset", _u64),
        ("data_size", _u64),
    ]


VFIO_REGION_INFO_CAP_MSIX_MAPPABLE = 3
VFIO_REGION_INFO_CAP_NVLINK2_SSATGT = 4


class vfio_region_info_cap_nvlink2_ssatgt(UapiStruct):
    _fields_ = [("header", vfio_info_cap_header), ("tgt", _u64)]


VFIO_REGION_INFO_CAP_NVLINK2_LNKSPD = 5


class vfio_region_info_cap_nvlink2_lnkspd(UapiStruct):
    _fields_ = [("header", vfio_info_cap_header), ("link_speed", _u32), ("__pad", _u32)]


VFIO_IRQ_INFO_EVENTFD = 1 << 0
VFIO_IRQ_INFO_MASKABLE = 1 << 1
VFIO_IRQ_INFO_AUTOMASKED = 1 << 2
VFIO_IRQ_INFO_NORESIZE = 1 << 3


class vfio_irq_info(UapiStruct):
    _fields_ = [("argsz", _u32), ("flags", _u32), ("index", _u32), ("count", _u32)]


VFIO_DEVICE_GET_IRQ_INFO = _IO(VFIO_TYPE, VFIO_BASE + 9)

VFIO_IRQ_SET_DATA_NONE = 1 << 0
VFIO_IRQ_SET_DATA_BOOL = 1 << 1
VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2
VFIO_IRQ_SET_ACTION_MASK = 1 << 3
VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4
VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5


class vfio_irq_set(UapiStruct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("index", _u32),
        ("start", _u32),
        ("count", _u32),
        ("data", _u8 * 0),
    ]


VFIO_DEVICE_SET_IRQS = _IO(VFIO_TYPE, VFIO_BASE + 10)

VFIO_IRQ_SET_DATA_TYPE_MASK = (
    VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD
)
VFIO_IRQ_SET_ACTION_TYPE_MASK = (
    VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_ACTION_TRIGGER
)

VFIO_DEVICE_RESET = _IO(VFIO_TYPE, VFIO_BASE + 11)

# vfio-pci fixed region indexes
VFIO_PCI_BAR0_REGION_INDEX = 0
VFIO_PCI_BAR1_REGION_INDEX = 1
VFIO_PCI_BAR2_REGION_INDEX = 2
VFIO_PCI_BAR3_REGION_INDEX = 3
VFIO_PCI_BAR4_REGION_INDEX = 4
VFIO_PCI_BAR5_REGION_INDEX = 5
VFIO_PCI_ROM_REGION_INDEX = 6
VFIO_PCI_CONFIG_REGION_INDEX = 7
VFIO_PCI_VGA_REGION_INDEX = 8
VFIO_PCI_NUM_REGIONS = 9

# vfio-pci fixed IRQ indexes
VFIO_PCI_INTX_IRQ_INDEX = 0
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_PCI_MSIX_IRQ_INDEX = 2
VFIO_PCI_ERR_IRQ_INDEX = 3
VFIO_PCI_REQ_IRQ_INDEX = 4
VFIO_PCI_NUM_IRQS = 5

VFIO_CCW_CONFIG_REGION_INDEX = 0
VFIO_CCW_NUM_REGIONS = 1

VFIO_CCW_IO_IRQ_INDEX = 0
VFIO_CCW_CRW_IRQ_INDEX = 1
VFIO_CCW_REQ_IRQ_INDEX = 2
VFIO_CCW_NUM_IRQS = 3

VFIO_AP_REQ_IRQ_INDEX = 0
VFIO_AP_CFG_CHG_IRQ_INDEX = 1
VFIO_AP_NUM_IRQS = 2

VFIO_PCI_DEVID_OWNED = 0
VFIO_PCI_DEVID_NOT_OWNED = -1


class _vfio_pci_dependent_device_id(UapiUnion):
    _fields_ = [("group_id", _u32), ("devid", _u32)]


class vfio_pci_dependent_device(UapiStruct):
    _anonymous_ = ("_u",)
    _fields_ = [
        ("_u", _vfio_pci_dependent_device_id),
        ("segment", _u16),
        ("bus", _u8),
        ("devfn", _u8),
    ]


VFIO_PCI_HOT_RESET_FLAG_DEV_ID = 1 << 0
VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED = 1 << 1


class vfio_pci_hot_reset_info(UapiStruct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("count", _u32),
        ("devices", vfio_pci_dependent_device * 0),
    ]


VFIO_DEVICE_GET_PCI_HOT_RESET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12)


class vfio_pci_hot_reset(UapiStruct):
    _fields_ = [("argsz", _u32), ("flags", _u32), ("count", _u32), ("group_fds", _s32 * 0)]


VFIO_DEVICE_PCI_HOT_RESET = _IO(VFIO_TYPE, VFIO_BASE + 13)

VFIO_GFX_PLANE_TYPE_PROBE = 1 << 0
VFIO_GFX_PLANE_TYPE_DMABUF = 1 << 1
VFIO_GFX_PLANE_TYPE_REGION = 1 << 2


class _vfio_device_gfx_plane_info_id(UapiUnion):
    _fields_ = [("region_index", _u32), ("dmabuf_id", _u32)]


class vfio_device_gfx_plane_info(UapiStruct):
    _anonymous_ = ("_u",)
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("drm_plane_type", _u32),
        ("drm_format", _u32),
        ("drm_format_mod", _u64),
        ("width", _u32),
        ("height", _u32),
        ("stride", _u32),
        ("size", _u32),
        ("x_pos", _u32),
        ("y_pos", _u32),
        ("x_hot", _u32),
        ("y_hot", _u32),
        ("_u", _vfio_device_gfx_plane_info_id),
        ("reserved", _u32),
    ]


VFIO_DEVICE_QUERY_GFX_PLANE = _IO(VFIO_TYPE, VFIO_BASE + 14)
VFIO_DEVICE_GET_GFX_DMABUF = _IO(VFIO_TYPE, VFIO_BASE + 15)

VFIO_DEVICE_IOEVENTFD_8 = 1 << 0
VFIO_DEVICE_IOEVENTFD_16 = 1 << 1
VFIO_DEVICE_IOEVENTFD_32 = 1 << 2
VFIO_DEVICE_IOEVENTFD_64 = 1 << 3
VFIO_DEVICE_IOEVENTFD_SIZE_MASK = 0xF


class vfio_device_ioeventfd(UapiStruct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("offset", _u64),
        ("data", _u64),
        ("fd", _s32),
        ("reserved", _u32),
    ]


VFIO_DEVICE_IOEVENTFD = _IO(VFIO_TYPE, VFIO_BASE + 16)

VFIO_DEVICE_FEATURE_MASK = 0xFFFF
VFIO_DEVICE_FEATURE_GET = 1 << 16
VFIO_DEVICE_FEATURE_SET = 1 << 17
VFIO_DEVICE_FEATURE_PROBE = 1 << 18


class vfio_device_feature(UapiStruct):
    _fields_ = [("argsz", _u32), ("flags", _u32), ("data", _u8 * 0)]


VFIO_DEVICE_FEATURE = _IO(VFIO_TYPE, VFIO_BASE + 17)

# -------- device cdev (/dev/vfio/devices/vfioN) with iommufd --------

VFIO_DEVICE_BIND_FLAG_TOKEN = 1 << 0


class vfio_device_bind_iommufd(UapiStruct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("iommufd", _s32),
        ("out_devid", _u32),
        ("token_uuid_ptr", _u64),
    ]


VFIO_DEVICE_BIND_IOMMUFD = _IO(VFIO_TYPE, VFIO_BASE + 18)

VFIO_DEVICE_ATTACH_PASID = 1 << 0


class vfio_device_attach_iommufd_pt(UapiStruct):
    _fields_ = [("argsz", _u32), ("flags", _u32), ("pt_id", _u32), ("pasid", _u32)]


VFIO_DEVICE_ATTACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 19)

VFIO_DEVICE_DETACH_PASID = 1 << 0


class vfio_device_detach_iommufd_pt(UapiStruct):
    _fields_ = [("argsz", _u32), ("flags", _u32), ("pasid", _u32)]


VFIO_DEVICE_DETACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 20)

# -------- device features (payloads of VFIO_DEVICE_FEATURE) --------

VFIO_DEVICE_FEATURE_PCI_VF_TOKEN = 0

VFIO_MIGRATION_STOP_COPY = 1 << 0
VFIO_MIGRATION_P2P = 1 << 1
VFIO_MIGRATION_PRE_COPY = 1 << 2


class vfio_device_feature_migration(UapiStruct):
    _fields_ = [("flags", _u64)]


VFIO_DEVICE_FEATURE_MIGRATION = 1


class vfio_device_feature_mig_state(UapiStruct):
    _fields_ = [("device_state", _u32), ("data_fd", _s32)]


VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2

# enum vfio_device_mig_state
VFIO_DEVICE_STATE_ERROR = 0
VFIO_DEVICE_STATE_STOP = 1
VFIO_DEVICE_STATE_RUNNING = 2
VFIO_DEVICE_STATE_STOP_COPY = 3
VFIO_DEVICE_STATE_RESUMING = 4
VFIO_DEVICE_STATE_RUNNING_P2P = 5
VFIO_DEVICE_STATE_PRE_COPY = 6
VFIO_DEVICE_STATE_PRE_COPY_P2P = 7
VFIO_DEVICE_STATE_NR = 8

VFIO_PRECOPY_INFO_REINIT = 1 << 0


class vfio_precopy_info(UapiStruct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("initial_bytes", _u64),
        ("dirty_bytes", _u64),
    ]


VFIO_MIG_GET_PRECOPY_INFO = _IO(VFIO_TYPE, VFIO_BASE + 21)

VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY = 3


class vfio_device_low_power_entry_with_wakeup(UapiStruct):
    _fields_ = [("wakeup_eventfd", _s32), ("reserved", _u32)]


VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP = 4
VFIO_DEVICE_FEATURE_LOW_POWER_EXIT = 5


class vfio_device_feature_dma_logging_control(UapiStruct):
    _fields_ = [
        ("page_size", _u64),
        ("num_ranges", _u32),
        ("__reserved", _u32),
        ("ranges", _u64),
    ]


class vfio_device_feature_dma_logging_range(UapiStruct):
    _fields_ = [("iova", _u64), ("length", _u64)]


VFIO_DEVICE_FEATURE_DMA_LOGGING_START = 6
VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP = 7


class vfio_device_feature_dma_logging_report(UapiStruct):
    _fields_ = [("iova", _u64), ("length", _u64), ("page_size", _u64), ("bitmap", _u64)]


VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT = 8


class vfio_device_feature_mig_data_size(UapiStruct):
    _fields_ = [("stop_copy_length", _u64)]


VFIO_DEVICE_FEATURE_MIG_DATA_SIZE = 9

VFIO_DEVICE_FEATURE_CLEAR_MASTER = 0
VFIO_DEVICE_FEATURE_SET_MASTER = 1


class vfio_device_feature_bus_master(UapiStruct):
    _fields_ = [("op", _u32)]


VFIO_DEVICE_FEATURE_BUS_MASTER = 10
VFIO_DEVICE_FEATURE_DMA_BUF = 11


class vfio_region_dma_range(UapiStruct):
    _fields_ = [("offset", _u64), ("length", _u64)]


class vfio_device_feature_dma_buf(UapiStruct):
    _fields_ = [
        ("region_index", _u32),
        ("open_flags", _u32),
        ("flags", _u32),
        ("nr_ranges", _u32),
        ("dma_ranges", vfio_region_dma_range * 0),
    ]


VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 = 12


class vfio_device_feature_zpci_err(UapiStruct):
    _fields_ = [("data", _u64)]


VFIO_DEVICE_FEATURE_ZPCI_ERROR = 13

# -------- type1 IOMMU (container after VFIO_SET_IOMMU) --------

VFIO_IOMMU_INFO_PGSIZES = 1 << 0
VFIO_IOMMU_INFO_CAPS = 1 << 1


class vfio_iommu_type1_info(UapiStruct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("iova_pgsizes", _u64),
        ("cap_offset", _u32),
        ("pad", _u32),
    ]


VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1


class vfio_iova_range(UapiStruct):
    _fields_ = [("start", _u64), ("end", _u64)]


class vfio_iommu_type1_info_cap_iova_range(UapiStruct):
    _fields_ = [
        ("header", vfio_info_cap_header),
        ("nr_iovas", _u32),
        ("reserved", _u32),
        ("iova_ranges", vfio_iova_range * 0),
    ]


VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION = 2


class vfio_iommu_type1_info_cap_migration(UapiStruct):
    _fields_ = [
        ("header", vfio_info_cap_header),
        ("flags", _u32),
        ("pgsize_bitmap", _u64),
        ("max_dirty_bitmap_size", _u64),
    ]


VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3


class vfio_iommu_type1_info_dma_avail(UapiStruct):
    _fields_ = [("header", vfio_info_cap_header), ("avail", _u32)]


VFIO_IOMMU_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12)

VFIO_DMA_MAP_FLAG_READ = 1 << 0
VFIO_DMA_MAP_FLAG_WRITE = 1 << 1
VFIO_DMA_MAP_FLAG_VADDR = 1 << 2


class vfio_iommu_type1_dma_map(UapiStruct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("vaddr", _u64),
        ("iova", _u64),
        ("size", _u64),
    ]


VFIO_IOMMU_MAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 13)


class vfio_bitmap(UapiStruct):
    """``data`` is a user pointer (``__u64 __user *``), held as an integer address."""

    _fields_ = [("pgsize", _u64), ("size", _u64), ("data", _u64)]


VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0
VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1
VFIO_DMA_UNMAP_FLAG_VADDR = 1 << 2


class vfio_iommu_type1_dma_unmap(UapiStruct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("iova", _u64),
        ("size", _u64),
        ("data", _u8 * 0),
    ]


VFIO_IOMMU_UNMAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 14)
VFIO_IOMMU_ENABLE = _IO(VFIO_TYPE, VFIO_BASE + 15)
VFIO_IOMMU_DISABLE = _IO(VFIO_TYPE, VFIO_BASE + 16)

VFIO_IOMMU_DIRTY_PAGES_FLAG_START = 1 << 0
VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP = 1 << 1
VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP = 1 << 2


class vfio_iommu_type1_dirty_bitmap(UapiStruct):
    _fields_ = [("argsz", _u32), ("flags", _u32), ("data", _u8 * 0)]


class vfio_iommu_type1_dirty_bitmap_get(UapiStruct):
    _fields_ = [("iova", _u64), ("size", _u64), ("bitmap", vfio_bitmap)]


VFIO_IOMMU_DIRTY_PAGES = _IO(VFIO_TYPE, VFIO_BASE + 17)

# -------- SPAPR TCE (POWER) IOMMU --------


class vfio_iommu_spapr_tce_ddw_info(UapiStruct):
    _fields_ = [("pgsizes", _u64), ("max_dynamic_windows_supported", _u32), ("levels", _u32)]


VFIO_IOMMU_SPAPR_INFO_DDW = 1 << 0


class vfio_iommu_spapr_tce_info(UapiStruct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("dma32_window_start", _u32),
        ("dma32_window_size", _u32),
        ("ddw", vfio_iommu_spapr_tce_ddw_info),
    ]


VFIO_IOMMU_SPAPR_TCE_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12)


class vfio_eeh_pe_err(UapiStruct):
    _fields_ = [("type", _u32), ("func", _u32), ("addr", _u64), ("mask", _u64)]


class _vfio_eeh_pe_op_data(UapiUnion):
    _fields_ = [("err", vfio_eeh_pe_err)]


class vfio_eeh_pe_op(UapiStruct):
    _anonymous_ = ("_u",)
    _fields_ = [("argsz", _u32), ("flags", _u32), ("op", _u32), ("_u", _vfio_eeh_pe_op_data)]


VFIO_EEH_PE_DISABLE = 0
VFIO_EEH_PE_ENABLE = 1
VFIO_EEH_PE_UNFREEZE_IO = 2
VFIO_EEH_PE_UNFREEZE_DMA = 3
VFIO_EEH_PE_GET_STATE = 4
VFIO_EEH_PE_STATE_NORMAL = 0
VFIO_EEH_PE_STATE_RESET = 1
VFIO_EEH_PE_STATE_STOPPED = 2
VFIO_EEH_PE_STATE_STOPPED_DMA = 4
VFIO_EEH_PE_STATE_UNAVAIL = 5
VFIO_EEH_PE_RESET_DEACTIVATE = 5
VFIO_EEH_PE_RESET_HOT = 6
VFIO_EEH_PE_RESET_FUNDAMENTAL = 7
VFIO_EEH_PE_CONFIGURE = 8
VFIO_EEH_PE_INJECT_ERR = 9

VFIO_EEH_PE_OP = _IO(VFIO_TYPE, VFIO_BASE + 21)


class vfio_iommu_spapr_register_memory(UapiStruct):
    _fields_ = [("argsz", _u32), ("flags", _u32), ("vaddr", _u64), ("size", _u64)]


VFIO_IOMMU_SPAPR_REGISTER_MEMORY = _IO(VFIO_TYPE, VFIO_BASE + 17)
VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY = _IO(VFIO_TYPE, VFIO_BASE + 18)


class vfio_iommu_spapr_tce_create(UapiStruct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("page_shift", _u32),
        ("__resv1", _u32),
        ("window_size", _u64),
        ("levels", _u32),
        ("__resv2", _u32),
        ("start_addr", _u64),
    ]


VFIO_IOMMU_SPAPR_TCE_CREATE = _IO(VFIO_TYPE, VFIO_BASE + 19)


class vfio_iommu_spapr_tce_remove(UapiStruct):
    _fields_ = [("argsz", _u32), ("flags", _u32), ("start_addr", _u64)]


VFIO_IOMMU_SPAPR_TCE_REMOVE = _IO(VFIO_TYPE, VFIO_BASE + 20)


# -------- capability chains --------

_CAP_HEADER_SIZE = ctypes.sizeof(vfio_info_cap_header)
_CAP_ALIGN = 8

_S = TypeVar("_S", bound=UapiStruct)


def _field(obj: ctypes.Structure, name: str) -> int:
    """An integer field by name: ``size`` fields are hidden from mypy by ``UapiStruct.size()``."""
    return int(getattr(obj, name))


class Capability(NamedTuple):
    """One link of an INFO capability chain: where it sits and its header fields."""

    offset: int
    id: int
    version: int
    next: int


def iter_capabilities(
    buf: bytes | bytearray | memoryview, offset: int, *, fixed_size: int = 0
) -> Iterator[Capability]:
    """Walk the capability chain of an INFO buffer from ``offset`` (its ``cap_offset``).

    Offsets are relative to the start of ``buf``, as in the kernel. ``fixed_size`` is
    the size of the fixed INFO struct: no capability may start inside it. Raises
    ``DecodeError`` for a header outside the buffer or a chain that loops.
    """
    seen: set[int] = set()
    where = "cap_offset"
    while offset:
        if offset in seen:
            raise DecodeError(where, f"capability chain loops back to offset {offset:#x}")
        if offset < fixed_size:
            raise DecodeError(
                where, f"offset {offset:#x} points inside the {fixed_size}-byte fixed struct"
            )
        if offset < 0 or offset + _CAP_HEADER_SIZE > len(buf):
            raise DecodeError(
                where,
                f"capability header at {offset:#x} does not fit in {len(buf)} bytes",
            )
        seen.add(offset)
        header = vfio_info_cap_header.from_bytes(buf[offset : offset + _CAP_HEADER_SIZE])
        yield Capability(offset, int(header.id), int(header.version), int(header.next))
        where = f"vfio_info_cap_header[{offset:#x}].next"
        offset = int(header.next)


def find_capability(
    buf: bytes | bytearray | memoryview, offset: int, cap_id: int, *, fixed_size: int = 0
) -> Capability | None:
    """First capability with id ``cap_id`` in the chain starting at ``offset``, if any."""
    for cap in iter_capabilities(buf, offset, fixed_size=fixed_size):
        if cap.id == cap_id:
            return cap
    return None


def read_capability(buf: bytes | bytearray | memoryview, cap: Capability, cls: type[_S]) -> _S:
    """Decode the fixed part of capability ``cap`` as ``cls``, bounds-checked."""
    end = cap.offset + ctypes.sizeof(cls)
    if end > len(buf):
        raise DecodeError(
            cls.__name__,
            f"needs {ctypes.sizeof(cls)} bytes at {cap.offset:#x}, buffer is {len(buf)}",
        )
    return cls.from_bytes(buf[cap.offset : end])


def _read_array(
    buf: bytes | bytearray | memoryview, start: int, count: int, cls: type[_S], name: str
) -> list[_S]:
    size = ctypes.sizeof(cls)
    end = start + count * size
    if end > len(buf):
        raise DecodeError(
            name, f"{count} entries of {size} bytes at {start:#x} overrun {len(buf)} bytes"
        )
    return [cls.from_bytes(buf[start + i * size : start + (i + 1) * size]) for i in range(count)]


def read_iova_ranges(buf: bytes | bytearray | memoryview, cap: Capability) -> list[tuple[int, int]]:
    """The inclusive ``(start, end)`` IOVA ranges of a type1 IOVA-range capability."""
    hdr = read_capability(buf, cap, vfio_iommu_type1_info_cap_iova_range)
    name = "vfio_iommu_type1_info_cap_iova_range.iova_ranges"
    start = cap.offset + ctypes.sizeof(vfio_iommu_type1_info_cap_iova_range)
    ranges = [
        (int(r.start), int(r.end))
        for r in _read_array(buf, start, int(hdr.nr_iovas), vfio_iova_range, name)
    ]
    for index, (first, last) in enumerate(ranges):
        if first > last:
            raise DecodeError(f"{name}[{index}]", f"start {first:#x} > end {last:#x}")
    return ranges


def read_sparse_mmap_areas(
    buf: bytes | bytearray | memoryview, cap: Capability
) -> list[tuple[int, int]]:
    """The ``(offset, size)`` mmap-able areas of a region's sparse-mmap capability."""
    hdr = read_capability(buf, cap, vfio_region_info_cap_sparse_mmap)
    start = cap.offset + ctypes.sizeof(vfio_region_info_cap_sparse_mmap)
    areas = _read_array(
        buf,
        start,
        int(hdr.nr_areas),
        vfio_region_sparse_mmap_area,
        "vfio_region_info_cap_sparse_mmap.areas",
    )
    return [(int(a.offset), _field(a, "size")) for a in areas]


def chain_capabilities(first_offset: int, caps: Sequence[bytes], *, pad_last: bool = True) -> bytes:
    """Lay ``caps`` out from ``first_offset`` with each ``next`` linked, as the kernel does.

    Each element is a complete capability (header first); its ``next`` is overwritten.
    ``first_offset`` is where the first one lands in the INFO buffer (the caller's
    ``cap_offset``; the kernel wants it 8-byte aligned but does not enforce it). Every
    capability is padded to 8 bytes like ``vfio_info_cap_add()``; ``pad_last=False``
    leaves the last one unpadded, as iommufd's VFIO compatibility layer does.
    """
    if first_offset <= 0:
        raise EncodeError("cap_offset", f"{first_offset} is not a positive offset")
    out = bytearray()
    for index, cap in enumerate(caps):
        if len(cap) < _CAP_HEADER_SIZE:
            raise EncodeError(f"caps[{index}]", f"{len(cap)} bytes is shorter than its header")
        last = index == len(caps) - 1
        padded = bytearray(cap)
        if pad_last or not last:
            padded += bytes(-len(cap) % _CAP_ALIGN)
        nxt = 0 if last else first_offset + len(out) + len(padded)
        struct.pack_into("=I", padded, vfio_info_cap_header.next.offset, nxt)
        out += padded
    return bytes(out)


def iova_range_capability(ranges: Sequence[tuple[int, int]], version: int = 1) -> bytes:
    """A type1 IOVA-range capability holding the inclusive ``(start, end)`` ``ranges``."""
    hdr = vfio_iommu_type1_info_cap_iova_range(
        header=vfio_info_cap_header(id=VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, version=version),
        nr_iovas=len(ranges),
    )
    body = bytearray(hdr.to_bytes())
    for index, (first, last) in enumerate(ranges):
        if not 0 <= first <= last < 1 << 64:
            raise EncodeError(f"iova_ranges[{index}]", f"bad range {first:#x}..{last:#x}")
        body += vfio_iova_range(start=first, end=last).to_bytes()
    return bytes(body)


def dma_avail_capability(avail: int, version: int = 1) -> bytes:
    """A type1 DMA-available capability (how many more mappings the container allows)."""
    if not 0 <= avail < 1 << 32:
        raise EncodeError("vfio_iommu_type1_info_dma_avail.avail", f"{avail} out of range")
    return vfio_iommu_type1_info_dma_avail(
        header=vfio_info_cap_header(id=VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, version=version),
        avail=avail,
    ).to_bytes()


@dataclass
class Type1Info:
    """VFIO_IOMMU_GET_INFO's answer with its capabilities decoded."""

    argsz: int
    flags: int
    iova_pgsizes: int | None
    cap_offset: int
    iova_ranges: list[tuple[int, int]] | None = None
    dma_avail: int | None = None
    migration: vfio_iommu_type1_info_cap_migration | None = None
    other_caps: list[Capability] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        """Capabilities exist but the buffer was too small: ``argsz`` says what is needed."""
        return bool(self.flags & VFIO_IOMMU_INFO_CAPS) and self.cap_offset == 0


def encode_type1_info(
    iova_pgsizes: int,
    *,
    iova_ranges: Sequence[tuple[int, int]] | None = None,
    dma_avail: int | None = None,
    pad_last: bool = True,
) -> bytes:
    """What VFIO_IOMMU_GET_INFO returns for a large-enough buffer (synthetic answers).

    ``pad_last=False`` gives iommufd's compat layout (its last capability is unpadded, so
    ``argsz`` can be 4 bytes less than type1's for the same capabilities).
    """
    caps: list[bytes] = []
    if iova_ranges is not None:
        caps.append(iova_range_capability(iova_ranges))
    if dma_avail is not None:
        caps.append(dma_avail_capability(dma_avail))
    fixed = ctypes.sizeof(vfio_iommu_type1_info)
    chain = chain_capabilities(fixed, caps, pad_last=pad_last) if caps else b""
    info = vfio_iommu_type1_info(
        argsz=fixed + len(chain),
        flags=VFIO_IOMMU_INFO_PGSIZES | (VFIO_IOMMU_INFO_CAPS if caps else 0),
        iova_pgsizes=iova_pgsizes,
        cap_offset=fixed if caps else 0,
    )
    return info.to_bytes() + chain


def decode_type1_info(buf: bytes | bytearray | memoryview) -> Type1Info:
    """Decode a VFIO_IOMMU_GET_INFO buffer, walking its capability chain."""
    fixed = ctypes.sizeof(vfio_iommu_type1_info)
    if len(buf) < fixed:
        raise DecodeError("vfio_iommu_type1_info", f"need {fixed} bytes, got {len(buf)}")
    info = vfio_iommu_type1_info.from_bytes(buf)
    flags = int(info.flags)
    pgsizes = int(info.iova_pgsizes) if flags & VFIO_IOMMU_INFO_PGSIZES else None
    out = Type1Info(
        argsz=int(info.argsz), flags=flags, iova_pgsizes=pgsizes, cap_offset=int(info.cap_offset)
    )
    if not flags & VFIO_IOMMU_INFO_CAPS:
        return out
    seen: set[int] = set()
    for cap in iter_capabilities(buf, int(info.cap_offset), fixed_size=fixed):
        if cap.id in seen:
            raise DecodeError(
                f"vfio_info_cap_header[{cap.offset:#x}].id", f"capability {cap.id} repeated"
            )
        seen.add(cap.id)
        if cap.id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
            out.iova_ranges = read_iova_ranges(buf, cap)
        elif cap.id == VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
            out.dma_avail = int(read_capability(buf, cap, vfio_iommu_type1_info_dma_avail).avail)
        elif cap.id == VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION:
            out.migration = read_capability(buf, cap, vfio_iommu_type1_info_cap_migration)
        else:
            out.other_caps.append(cap)
    return out


@dataclass
class RegionInfo:
    """VFIO_DEVICE_GET_REGION_INFO's answer with its capabilities decoded."""

    index: int
    flags: int
    size: int
    offset: int
    sparse_mmap: list[tuple[int, int]] | None = None
    type: tuple[int, int] | None = None
    msix_mappable: bool = False
    other_caps: list[Capability] = field(default_factory=list)


def decode_region_info(buf: bytes | bytearray | memoryview) -> RegionInfo:
    """Decode a VFIO_DEVICE_GET_REGION_INFO buffer, walking its capability chain."""
    fixed = ctypes.sizeof(vfio_region_info)
    if len(buf) < fixed:
        raise DecodeError("vfio_region_info", f"need {fixed} bytes, got {len(buf)}")
    info = vfio_region_info.from_bytes(buf)
    out = RegionInfo(
        index=int(info.index),
        flags=int(info.flags),
        size=_field(info, "size"),
        offset=int(info.offset),
    )
    if not out.flags & VFIO_REGION_INFO_FLAG_CAPS:
        return out
    for cap in iter_capabilities(buf, int(info.cap_offset), fixed_size=fixed):
        if cap.id == VFIO_REGION_INFO_CAP_SPARSE_MMAP:
            out.sparse_mmap = read_sparse_mmap_areas(buf, cap)
        elif cap.id == VFIO_REGION_INFO_CAP_TYPE:
            typ = read_capability(buf, cap, vfio_region_info_cap_type)
            out.type = (int(typ.type), int(typ.subtype))
        elif cap.id == VFIO_REGION_INFO_CAP_MSIX_MAPPABLE:
            out.msix_mappable = True
        else:
            out.other_caps.append(cap)
    return out


# -------- variable-size arguments --------


def with_data(fixed: UapiStruct, data: bytes) -> bytes:
    """``fixed`` followed by its flexible-array ``data``, with ``argsz`` set to the total."""
    fixed.argsz = ctypes.sizeof(fixed) + len(data)
    return fixed.to_bytes() + data


def encode_irq_set(
    index: int,
    flags: int,
    *,
    start: int = 0,
    count: int | None = None,
    eventfds: Sequence[int] = (),
    bools: Sequence[bool] = (),
) -> bytes:
    """A VFIO_DEVICE_SET_IRQS argument; the data type flag must match the data given."""
    data_type = flags & VFIO_IRQ_SET_DATA_TYPE_MASK
    action = flags & VFIO_IRQ_SET_ACTION_TYPE_MASK
    if data_type.bit_count() != 1:
        raise EncodeError("vfio_irq_set.flags", "exactly one VFIO_IRQ_SET_DATA_* is required")
    if action.bit_count() != 1:
        raise EncodeError("vfio_irq_set.flags", "exactly one VFIO_IRQ_SET_ACTION_* is required")
    if data_type == VFIO_IRQ_SET_DATA_EVENTFD:
        data = struct.pack(f"={len(eventfds)}i", *eventfds)
        n = len(eventfds)
    elif data_type == VFIO_IRQ_SET_DATA_BOOL:
        data = bytes(1 if b else 0 for b in bools)
        n = len(bools)
    else:
        data, n = b"", 0
    if data_type != VFIO_IRQ_SET_DATA_NONE:
        if count is not None and count != n:
            raise EncodeError("vfio_irq_set.count", f"{count} but {n} data entries given")
    elif eventfds or bools:
        raise EncodeError("vfio_irq_set.data", "VFIO_IRQ_SET_DATA_NONE takes no data")
    irq_set = vfio_irq_set(
        flags=flags, index=index, start=start, count=n if count is None else count
    )
    return with_data(irq_set, data)


def encode_device_feature(feature: int, flags: int, payload: bytes = b"") -> bytes:
    """A VFIO_DEVICE_FEATURE argument: feature index | GET/SET/PROBE, then its payload."""
    if not 0 <= feature <= VFIO_DEVICE_FEATURE_MASK:
        raise EncodeError("vfio_device_feature.flags", f"feature {feature} is not 16-bit")
    if flags & VFIO_DEVICE_FEATURE_MASK:
        raise EncodeError("vfio_device_feature.flags", "GET/SET/PROBE flags overlap the index")
    return with_data(vfio_device_feature(flags=flags | feature), payload)


def decode_pci_hot_reset_info(
    buf: bytes | bytearray | memoryview,
) -> tuple[vfio_pci_hot_reset_info, list[vfio_pci_dependent_device]]:
    """VFIO_DEVICE_GET_PCI_HOT_RESET_INFO's header and its ``count`` affected devices."""
    fixed = ctypes.sizeof(vfio_pci_hot_reset_info)
    if len(buf) < fixed:
        raise DecodeError("vfio_pci_hot_reset_info", f"need {fixed} bytes, got {len(buf)}")
    hdr = vfio_pci_hot_reset_info.from_bytes(buf)
    devices = _read_array(
        buf,
        ctypes.sizeof(vfio_pci_hot_reset_info),
        int(hdr.count),
        vfio_pci_dependent_device,
        "vfio_pci_hot_reset_info.devices",
    )
    return hdr, devices


C_HEADERS = ("linux/vfio.h",)

STRUCTS = (
    vfio_info_cap_header,
    vfio_group_status,
    vfio_device_info,
    vfio_device_info_cap_pci_atomic_comp,
    vfio_region_info,
    vfio_region_sparse_mmap_area,
    vfio_region_info_cap_sparse_mmap,
    vfio_region_info_cap_type,
    vfio_region_gfx_edid,
    vfio_device_migration_info,
    vfio_region_info_cap_nvlink2_ssatgt,
    vfio_region_info_cap_nvlink2_lnkspd,
    vfio_irq_info,
    vfio_irq_set,
    vfio_pci_dependent_device,
    vfio_pci_hot_reset_info,
    vfio_pci_hot_reset,
    vfio_device_gfx_plane_info,
    vfio_device_ioeventfd,
    vfio_device_feature,
    vfio_device_bind_iommufd,
    vfio_device_attach_iommufd_pt,
    vfio_device_detach_iommufd_pt,
    vfio_device_feature_migration,
    vfio_device_feature_mig_state,
    vfio_precopy_info,
    vfio_device_low_power_entry_with_wakeup,
    vfio_device_feature_dma_logging_control,
    vfio_device_feature_dma_logging_range,
    vfio_device_feature_dma_logging_report,
    vfio_device_feature_mig_data_size,
    vfio_device_feature_bus_master,
    vfio_region_dma_range,
    vfio_device_feature_dma_buf,
    vfio_device_feature_zpci_err,
    vfio_iommu_type1_info,
    vfio_iova_range,
    vfio_iommu_type1_info_cap_iova_range,
    vfio_iommu_type1_info_cap_migration,
    vfio_iommu_type1_info_dma_avail,
    vfio_iommu_type1_dma_map,
    vfio_bitmap,
    vfio_iommu_type1_dma_unmap,
    vfio_iommu_type1_dirty_bitmap,
    vfio_iommu_type1_dirty_bitmap_get,
    vfio_iommu_spapr_tce_ddw_info,
    vfio_iommu_spapr_tce_info,
    vfio_eeh_pe_err,
    vfio_eeh_pe_op,
    vfio_iommu_spapr_register_memory,
    vfio_iommu_spapr_tce_create,
    vfio_iommu_spapr_tce_remove,
)

IOCTLS = (
    "VFIO_GET_API_VERSION",
    "VFIO_CHECK_EXTENSION",
    "VFIO_SET_IOMMU",
    "VFIO_GROUP_GET_STATUS",
    "VFIO_GROUP_SET_CONTAINER",
    "VFIO_GROUP_UNSET_CONTAINER",
    "VFIO_GROUP_GET_DEVICE_FD",
    "VFIO_DEVICE_GET_INFO",
    "VFIO_DEVICE_GET_REGION_INFO",
    "VFIO_DEVICE_GET_IRQ_INFO",
    "VFIO_DEVICE_SET_IRQS",
    "VFIO_DEVICE_RESET",
    "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO",
    "VFIO_DEVICE_PCI_HOT_RESET",
    "VFIO_DEVICE_QUERY_GFX_PLANE",
    "VFIO_DEVICE_GET_GFX_DMABUF",
    "VFIO_DEVICE_IOEVENTFD",
    "VFIO_DEVICE_FEATURE",
    "VFIO_DEVICE_BIND_IOMMUFD",
    "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
    "VFIO_DEVICE_DETACH_IOMMUFD_PT",
    "VFIO_MIG_GET_PRECOPY_INFO",
    "VFIO_IOMMU_GET_INFO",
    "VFIO_IOMMU_MAP_DMA",
    "VFIO_IOMMU_UNMAP_DMA",
    "VFIO_IOMMU_ENABLE",
    "VFIO_IOMMU_DISABLE",
    "VFIO_IOMMU_DIRTY_PAGES",
    "VFIO_IOMMU_SPAPR_TCE_GET_INFO",
    "VFIO_EEH_PE_OP",
    "VFIO_IOMMU_SPAPR_REGISTER_MEMORY",
    "VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY",
    "VFIO_IOMMU_SPAPR_TCE_CREATE",
    "VFIO_IOMMU_SPAPR_TCE_REMOVE",
)
