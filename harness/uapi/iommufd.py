"""ctypes models of ``include/uapi/linux/iommufd.h`` (Linux 7.3), byte for byte.

Every struct, union, enum and ioctl of the header, under the kernel's names.  Enums are
``IntEnum`` / ``IntFlag`` classes named after the kernel enum, and each enumerator is
also a module-level constant.  ``__aligned_le64`` fields are plain ``c_uint64``: the
harness runs on little-endian hosts and guests only (x86_64, arm64).  Every iommufd
ioctl is ``_IO`` (size 0): the structure announces its own size in its first ``__u32``.
"""

from __future__ import annotations

import ctypes
from enum import IntEnum, IntFlag

from harness.uapi._ioctl import _IO
from harness.uapi._struct import UapiStruct, UapiUnion

_u8 = ctypes.c_uint8
_u16 = ctypes.c_uint16
_u32 = ctypes.c_uint32
_s32 = ctypes.c_int32
_aligned_u64 = ctypes.c_uint64
_aligned_le64 = ctypes.c_uint64

IOMMUFD_TYPE = ord(";")

IOMMUFD_CMD_BASE = 0x80
IOMMUFD_CMD_DESTROY = IOMMUFD_CMD_BASE
IOMMUFD_CMD_IOAS_ALLOC = 0x81
IOMMUFD_CMD_IOAS_ALLOW_IOVAS = 0x82
IOMMUFD_CMD_IOAS_COPY = 0x83
IOMMUFD_CMD_IOAS_IOVA_RANGES = 0x84
IOMMUFD_CMD_IOAS_MAP = 0x85
IOMMUFD_CMD_IOAS_UNMAP = 0x86
IOMMUFD_CMD_OPTION = 0x87
IOMMUFD_CMD_VFIO_IOAS = 0x88
IOMMUFD_CMD_HWPT_ALLOC = 0x89
IOMMUFD_CMD_GET_HW_INFO = 0x8A
IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING = 0x8B
IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP = 0x8C
IOMMUFD_CMD_HWPT_INVALIDATE = 0x8D
IOMMUFD_CMD_FAULT_QUEUE_ALLOC = 0x8E
IOMMUFD_CMD_IOAS_MAP_FILE = 0x8F
IOMMUFD_CMD_VIOMMU_ALLOC = 0x90
IOMMUFD_CMD_VDEVICE_ALLOC = 0x91
IOMMUFD_CMD_IOAS_CHANGE_PROCESS = 0x92
IOMMUFD_CMD_VEVENTQ_ALLOC = 0x93
IOMMUFD_CMD_HW_QUEUE_ALLOC = 0x94
IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA = 0x95


# --- IOAS -----------------------------------------------------------------------------


class iommu_destroy(UapiStruct):
    """ioctl(IOMMU_DESTROY): destroy any destroyable iommufd object by ID."""

    _fields_ = [("size", _u32), ("id", _u32)]


class iommu_ioas_alloc(UapiStruct):
    """ioctl(IOMMU_IOAS_ALLOC): allocate an IO address space."""

    _fields_ = [("size", _u32), ("flags", _u32), ("out_ioas_id", _u32)]


class iommu_iova_range(UapiStruct):
    """An inclusive interval [start, last] of IOVA space."""

    _fields_ = [("start", _aligned_u64), ("last", _aligned_u64)]


class iommu_ioas_iova_ranges(UapiStruct):
    """ioctl(IOMMU_IOAS_IOVA_RANGES): read the allowed IOVA ranges of an IOAS."""

    _fields_ = [
        ("size", _u32),
        ("ioas_id", _u32),
        ("num_iovas", _u32),
        ("__reserved", _u32),
        ("allowed_iovas", _aligned_u64),
        ("out_iova_alignment", _aligned_u64),
    ]


class iommu_ioas_allow_iovas(UapiStruct):
    """ioctl(IOMMU_IOAS_ALLOW_IOVAS): pin IOVA ranges that must stay allocatable."""

    _fields_ = [
        ("size", _u32),
        ("ioas_id", _u32),
        ("num_iovas", _u32),
        ("__reserved", _u32),
        ("allowed_iovas", _aligned_u64),
    ]


class iommufd_ioas_map_flags(IntFlag):
    """Flags of IOMMU_IOAS_MAP / MAP_FILE / COPY."""

    IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0
    IOMMU_IOAS_MAP_WRITEABLE = 1 << 1
    IOMMU_IOAS_MAP_READABLE = 1 << 2


IOMMU_IOAS_MAP_FIXED_IOVA = iommufd_ioas_map_flags.IOMMU_IOAS_MAP_FIXED_IOVA
IOMMU_IOAS_MAP_WRITEABLE = iommufd_ioas_map_flags.IOMMU_IOAS_MAP_WRITEABLE
IOMMU_IOAS_MAP_READABLE = iommufd_ioas_map_flags.IOMMU_IOAS_MAP_READABLE


class iommu_ioas_map(UapiStruct):
    """ioctl(IOMMU_IOAS_MAP): map user memory at an IOVA (fixed or kernel-chosen)."""

    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("ioas_id", _u32),
        ("__reserved", _u32),
        ("user_va", _aligned_u64),
        ("length", _aligned_u64),
        ("iova", _aligned_u64),
    ]


class iommu_ioas_noiommu_get_pa(UapiStruct):
    """ioctl(IOMMU_IOAS_NOIOMMU_GET_PA): physical address behind an IOVA (noiommu only)."""

    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("ioas_id", _u32),
        ("__reserved", _u32),
        ("iova", _aligned_u64),
        ("length", _aligned_u64),
        ("out_phys", _aligned_u64),
    ]


class iommu_ioas_map_file(UapiStruct):
    """ioctl(IOMMU_IOAS_MAP_FILE): map a memfd (or supported dma-buf) range at an IOVA."""

    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("ioas_id", _u32),
        ("fd", _s32),
        ("start", _aligned_u64),
        ("length", _aligned_u64),
        ("iova", _aligned_u64),
    ]


class iommu_ioas_copy(UapiStruct):
    """ioctl(IOMMU_IOAS_COPY): copy an existing mapping from one IOAS into another."""

    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("dst_ioas_id", _u32),
        ("src_ioas_id", _u32),
        ("length", _aligned_u64),
        ("dst_iova", _aligned_u64),
        ("src_iova", _aligned_u64),
    ]


class iommu_ioas_unmap(UapiStruct):
    """ioctl(IOMMU_IOAS_UNMAP): unmap an IOVA range; length returns the bytes unmapped."""

    _fields_ = [
        ("size", _u32),
        ("ioas_id", _u32),
        ("iova", _aligned_u64),
        ("length", _aligned_u64),
    ]


class iommufd_option(IntEnum):
    """Option IDs of IOMMU_OPTION."""

    IOMMU_OPTION_RLIMIT_MODE = 0
    IOMMU_OPTION_HUGE_PAGES = 1


IOMMU_OPTION_RLIMIT_MODE = iommufd_option.IOMMU_OPTION_RLIMIT_MODE
IOMMU_OPTION_HUGE_PAGES = iommufd_option.IOMMU_OPTION_HUGE_PAGES


class iommufd_option_ops(IntEnum):
    """Operations of IOMMU_OPTION."""

    IOMMU_OPTION_OP_SET = 0
    IOMMU_OPTION_OP_GET = 1


IOMMU_OPTION_OP_SET = iommufd_option_ops.IOMMU_OPTION_OP_SET
IOMMU_OPTION_OP_GET = iommufd_option_ops.IOMMU_OPTION_OP_GET


class iommu_option(UapiStruct):
    """ioctl(IOMMU_OPTION): set or get a global or per-object option."""

    _fields_ = [
        ("size", _u32),
        ("option_id", _u32),
        ("op", _u16),
        ("__reserved", _u16),
        ("object_id", _u32),
        ("val64", _aligned_u64),
    ]


class iommufd_vfio_ioas_op(IntEnum):
    """Operations of IOMMU_VFIO_IOAS."""

    IOMMU_VFIO_IOAS_GET = 0
    IOMMU_VFIO_IOAS_SET = 1
    IOMMU_VFIO_IOAS_CLEAR = 2


IOMMU_VFIO_IOAS_GET = iommufd_vfio_ioas_op.IOMMU_VFIO_IOAS_GET
IOMMU_VFIO_IOAS_SET = iommufd_vfio_ioas_op.IOMMU_VFIO_IOAS_SET
IOMMU_VFIO_IOAS_CLEAR = iommufd_vfio_ioas_op.IOMMU_VFIO_IOAS_CLEAR


class iommu_vfio_ioas(UapiStruct):
    """ioctl(IOMMU_VFIO_IOAS): get / set / clear the VFIO-compatibility IOAS."""

    _fields_ = [("size", _u32), ("ioas_id", _u32), ("op", _u16), ("__reserved", _u16)]


# --- HWPT allocation ------------------------------------------------------------------


class iommufd_hwpt_alloc_flags(IntFlag):
    """Flags of IOMMU_HWPT_ALLOC."""

    IOMMU_HWPT_ALLOC_NEST_PARENT = 1 << 0
    IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 1 << 1
    IOMMU_HWPT_FAULT_ID_VALID = 1 << 2
    IOMMU_HWPT_ALLOC_PASID = 1 << 3


IOMMU_HWPT_ALLOC_NEST_PARENT = iommufd_hwpt_alloc_flags.IOMMU_HWPT_ALLOC_NEST_PARENT
IOMMU_HWPT_ALLOC_DIRTY_TRACKING = iommufd_hwpt_alloc_flags.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
IOMMU_HWPT_FAULT_ID_VALID = iommufd_hwpt_alloc_flags.IOMMU_HWPT_FAULT_ID_VALID
IOMMU_HWPT_ALLOC_PASID = iommufd_hwpt_alloc_flags.IOMMU_HWPT_ALLOC_PASID


class iommu_hwpt_vtd_s1_flags(IntFlag):
    """Attributes of an Intel VT-d stage-1 page table."""

    IOMMU_VTD_S1_SRE = 1 << 0
    IOMMU_VTD_S1_EAFE = 1 << 1
    IOMMU_VTD_S1_WPE = 1 << 2


IOMMU_VTD_S1_SRE = iommu_hwpt_vtd_s1_flags.IOMMU_VTD_S1_SRE
IOMMU_VTD_S1_EAFE = iommu_hwpt_vtd_s1_flags.IOMMU_VTD_S1_EAFE
IOMMU_VTD_S1_WPE = iommu_hwpt_vtd_s1_flags.IOMMU_VTD_S1_WPE


class iommu_hwpt_vtd_s1(UapiStruct):
    """HWPT data IOMMU_HWPT_DATA_VTD_S1: a VT-d stage-1 page table."""

    _fields_ = [
        ("flags", _aligned_u64),
        ("pgtbl_addr", _aligned_u64),
        ("addr_width", _u32),
        ("__reserved", _u32),
    ]


class iommu_hwpt_arm_smmuv3(UapiStruct):
    """HWPT data IOMMU_HWPT_DATA_ARM_SMMUV3: the first two words of a nested STE (LE)."""

    _fields_ = [("ste", _aligned_le64 * 2)]


class iommu_hwpt_amd_guest(UapiStruct):
    """HWPT data IOMMU_HWPT_DATA_AMD_GUEST: a guest device table entry."""

    _fields_ = [("dte", _aligned_u64 * 4)]


class iommu_hwpt_data_type(IntEnum):
    """Type of the driver-specific data of IOMMU_HWPT_ALLOC."""

    IOMMU_HWPT_DATA_NONE = 0
    IOMMU_HWPT_DATA_VTD_S1 = 1
    IOMMU_HWPT_DATA_ARM_SMMUV3 = 2
    IOMMU_HWPT_DATA_AMD_GUEST = 3


IOMMU_HWPT_DATA_NONE = iommu_hwpt_data_type.IOMMU_HWPT_DATA_NONE
IOMMU_HWPT_DATA_VTD_S1 = iommu_hwpt_data_type.IOMMU_HWPT_DATA_VTD_S1
IOMMU_HWPT_DATA_ARM_SMMUV3 = iommu_hwpt_data_type.IOMMU_HWPT_DATA_ARM_SMMUV3
IOMMU_HWPT_DATA_AMD_GUEST = iommu_hwpt_data_type.IOMMU_HWPT_DATA_AMD_GUEST


class iommu_hwpt_alloc(UapiStruct):
    """ioctl(IOMMU_HWPT_ALLOC): allocate a paging, nest-parent or nested HW page table."""

    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("dev_id", _u32),
        ("pt_id", _u32),
        ("out_hwpt_id", _u32),
        ("__reserved", _u32),
        ("data_type", _u32),
        ("data_len", _u32),
        ("data_uptr", _aligned_u64),
        ("fault_id", _u32),
        ("__reserved2", _u32),
    ]


# --- GET_HW_INFO ----------------------------------------------------------------------


class iommu_hw_info_vtd_flags(IntFlag):
    """Flags of iommu_hw_info_vtd."""

    IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 = 1 << 0


IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 = (
    iommu_hw_info_vtd_flags.IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17
)


class iommu_hw_info_vtd(UapiStruct):
    """GET_HW_INFO data for Intel VT-d: raw capability and extended capability registers."""

    _fields_ = [
        ("flags", _u32),
        ("__reserved", _u32),
        ("cap_reg", _aligned_u64),
        ("ecap_reg", _aligned_u64),
    ]


class iommu_hw_info_arm_smmuv3_flags(IntFlag):
    """Flags of iommu_hw_info_arm_smmuv3."""

    IOMMU_HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI = 1 << 0


IOMMU_HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI = (
    iommu_hw_info_arm_smmuv3_flags.IOMMU_HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI
)


class iommu_hw_info_arm_smmuv3(UapiStruct):
    """GET_HW_INFO data for Arm SMMUv3: raw IDR0-5, IIDR and AIDR."""

    _fields_ = [
        ("flags", _u32),
        ("__reserved", _u32),
        ("idr", _u32 * 6),
        ("iidr", _u32),
        ("aidr", _u32),
    ]


class iommu_hw_info_tegra241_cmdqv(UapiStruct):
    """GET_HW_INFO data for NVIDIA Tegra241 CMDQV: fields of its PARAM register."""

    _fields_ = [
        ("flags", _u32),
        ("version", _u8),
        ("log2vcmdqs", _u8),
        ("log2vsids", _u8),
        ("__reserved", _u8),
    ]


class iommu_hw_info_amd(UapiStruct):
    """GET_HW_INFO data for AMD IOMMU: raw EFR and EFR2."""

    _fields_ = [("efr", _aligned_u64), ("efr2", _aligned_u64)]


class iommu_hw_info_type(IntEnum):
    """Type of the data returned by IOMMU_GET_HW_INFO (NONE and DEFAULT are both 0)."""

    IOMMU_HW_INFO_TYPE_NONE = 0
    IOMMU_HW_INFO_TYPE_DEFAULT = 0
    IOMMU_HW_INFO_TYPE_INTEL_VTD = 1
    IOMMU_HW_INFO_TYPE_ARM_SMMUV3 = 2
    IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV = 3
    IOMMU_HW_INFO_TYPE_AMD = 4


IOMMU_HW_INFO_TYPE_NONE = iommu_hw_info_type.IOMMU_HW_INFO_TYPE_NONE
IOMMU_HW_INFO_TYPE_DEFAULT = iommu_hw_info_type.IOMMU_HW_INFO_TYPE_DEFAULT
IOMMU_HW_INFO_TYPE_INTEL_VTD = iommu_hw_info_type.IOMMU_HW_INFO_TYPE_INTEL_VTD
IOMMU_HW_INFO_TYPE_ARM_SMMUV3 = iommu_hw_info_type.IOMMU_HW_INFO_TYPE_ARM_SMMUV3
IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV = iommu_hw_info_type.IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV
IOMMU_HW_INFO_TYPE_AMD = iommu_hw_info_type.IOMMU_HW_INFO_TYPE_AMD


class iommufd_hw_capabilities(IntFlag):
    """Generic capabilities reported in iommu_hw_info.out_capabilities."""

    IOMMU_HW_CAP_DIRTY_TRACKING = 1 << 0
    IOMMU_HW_CAP_PCI_PASID_EXEC = 1 << 1
    IOMMU_HW_CAP_PCI_PASID_PRIV = 1 << 2
    IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED = 1 << 3


IOMMU_HW_CAP_DIRTY_TRACKING = iommufd_hw_capabilities.IOMMU_HW_CAP_DIRTY_TRACKING
IOMMU_HW_CAP_PCI_PASID_EXEC = iommufd_hw_capabilities.IOMMU_HW_CAP_PCI_PASID_EXEC
IOMMU_HW_CAP_PCI_PASID_PRIV = iommufd_hw_capabilities.IOMMU_HW_CAP_PCI_PASID_PRIV
IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED = iommufd_hw_capabilities.IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED


class iommufd_hw_info_flags(IntFlag):
    """Flags of IOMMU_GET_HW_INFO."""

    IOMMU_HW_INFO_FLAG_INPUT_TYPE = 1 << 0


IOMMU_HW_INFO_FLAG_INPUT_TYPE = iommufd_hw_info_flags.IOMMU_HW_INFO_FLAG_INPUT_TYPE


class iommu_hw_info_data_type(UapiUnion):
    """The anonymous union of iommu_hw_info: one field, input or output type."""

    _fields_ = [("in_data_type", _u32), ("out_data_type", _u32)]


class iommu_hw_info(UapiStruct):
    """ioctl(IOMMU_GET_HW_INFO): read the vendor data of the IOMMU behind a device."""

    _anonymous_ = ("_data_type",)
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("dev_id", _u32),
        ("data_len", _u32),
        ("data_uptr", _aligned_u64),
        ("_data_type", iommu_hw_info_data_type),
        ("out_max_pasid_log2", _u8),
        ("__reserved", _u8 * 3),
        ("out_capabilities", _aligned_u64),
    ]


# --- dirty tracking -------------------------------------------------------------------


class iommufd_hwpt_set_dirty_tracking_flags(IntFlag):
    """Flags of IOMMU_HWPT_SET_DIRTY_TRACKING."""

    IOMMU_HWPT_DIRTY_TRACKING_ENABLE = 1


IOMMU_HWPT_DIRTY_TRACKING_ENABLE = (
    iommufd_hwpt_set_dirty_tracking_flags.IOMMU_HWPT_DIRTY_TRACKING_ENABLE
)


class iommu_hwpt_set_dirty_tracking(UapiStruct):
    """ioctl(IOMMU_HWPT_SET_DIRTY_TRACKING): switch dirty tracking of a HWPT on or off."""

    _fields_ = [("size", _u32), ("flags", _u32), ("hwpt_id", _u32), ("__reserved", _u32)]


class iommufd_hwpt_get_dirty_bitmap_flags(IntFlag):
    """Flags of IOMMU_HWPT_GET_DIRTY_BITMAP."""

    IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR = 1


IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR = (
    iommufd_hwpt_get_dirty_bitmap_flags.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR
)


class iommu_hwpt_get_dirty_bitmap(UapiStruct):
    """ioctl(IOMMU_HWPT_GET_DIRTY_BITMAP): read (and clear) the dirty bits of a range."""

    _fields_ = [
        ("size", _u32),
        ("hwpt_id", _u32),
        ("flags", _u32),
        ("__reserved", _u32),
        ("iova", _aligned_u64),
        ("length", _aligned_u64),
        ("page_size", _aligned_u64),
        ("data", _aligned_u64),
    ]


# --- cache invalidation ---------------------------------------------------------------


class iommu_hwpt_invalidate_data_type(IntEnum):
    """Type of the entries of an IOMMU_HWPT_INVALIDATE request array."""

    IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 = 0
    IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 = 1


IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 = (
    iommu_hwpt_invalidate_data_type.IOMMU_HWPT_INVALIDATE_DATA_VTD_S1
)
IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 = (
    iommu_hwpt_invalidate_data_type.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3
)


class iommu_hwpt_vtd_s1_invalidate_flags(IntFlag):
    """Flags of iommu_hwpt_vtd_s1_invalidate."""

    IOMMU_VTD_INV_FLAGS_LEAF = 1 << 0


IOMMU_VTD_INV_FLAGS_LEAF = iommu_hwpt_vtd_s1_invalidate_flags.IOMMU_VTD_INV_FLAGS_LEAF


class iommu_hwpt_vtd_s1_invalidate(UapiStruct):
    """Invalidation entry IOMMU_HWPT_INVALIDATE_DATA_VTD_S1: a range of 4 KiB pages."""

    _fields_ = [
        ("addr", _aligned_u64),
        ("npages", _aligned_u64),
        ("flags", _u32),
        ("__reserved", _u32),
    ]


class iommu_viommu_arm_smmuv3_invalidate(UapiStruct):
    """Invalidation entry IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3: one 128-bit CMDQ command."""

    _fields_ = [("cmd", _aligned_le64 * 2)]


class iommu_hwpt_invalidate(UapiStruct):
    """ioctl(IOMMU_HWPT_INVALIDATE): run an array of cache invalidations on a HWPT / vIOMMU."""

    _fields_ = [
        ("size", _u32),
        ("hwpt_id", _u32),
        ("data_uptr", _aligned_u64),
        ("data_type", _u32),
        ("entry_len", _u32),
        ("entry_num", _u32),
        ("__reserved", _u32),
    ]


# --- fault queue ----------------------------------------------------------------------


class iommu_hwpt_pgfault_flags(IntFlag):
    """Flags of iommu_hwpt_pgfault."""

    IOMMU_PGFAULT_FLAGS_PASID_VALID = 1 << 0
    IOMMU_PGFAULT_FLAGS_LAST_PAGE = 1 << 1


IOMMU_PGFAULT_FLAGS_PASID_VALID = iommu_hwpt_pgfault_flags.IOMMU_PGFAULT_FLAGS_PASID_VALID
IOMMU_PGFAULT_FLAGS_LAST_PAGE = iommu_hwpt_pgfault_flags.IOMMU_PGFAULT_FLAGS_LAST_PAGE


class iommu_hwpt_pgfault_perm(IntFlag):
    """Permissions requested by a page fault (PCIe 10.4.1)."""

    IOMMU_PGFAULT_PERM_READ = 1 << 0
    IOMMU_PGFAULT_PERM_WRITE = 1 << 1
    IOMMU_PGFAULT_PERM_EXEC = 1 << 2
    IOMMU_PGFAULT_PERM_PRIV = 1 << 3


IOMMU_PGFAULT_PERM_READ = iommu_hwpt_pgfault_perm.IOMMU_PGFAULT_PERM_READ
IOMMU_PGFAULT_PERM_WRITE = iommu_hwpt_pgfault_perm.IOMMU_PGFAULT_PERM_WRITE
IOMMU_PGFAULT_PERM_EXEC = iommu_hwpt_pgfault_perm.IOMMU_PGFAULT_PERM_EXEC
IOMMU_PGFAULT_PERM_PRIV = iommu_hwpt_pgfault_perm.IOMMU_PGFAULT_PERM_PRIV


class iommu_hwpt_pgfault(UapiStruct):
    """One page-fault record read from a fault queue fd."""

    _fields_ = [
        ("flags", _u32),
        ("dev_id", _u32),
        ("pasid", _u32),
        ("grpid", _u32),
        ("perm", _u32),
        ("__reserved", _u32),
        ("addr", _aligned_u64),
        ("length", _u32),
        ("cookie", _u32),
    ]


class iommufd_page_response_code(IntEnum):
    """Response codes written back to a fault queue (PCIe 10.4.2.1)."""

    IOMMUFD_PAGE_RESP_SUCCESS = 0
    IOMMUFD_PAGE_RESP_INVALID = 1


IOMMUFD_PAGE_RESP_SUCCESS = iommufd_page_response_code.IOMMUFD_PAGE_RESP_SUCCESS
IOMMUFD_PAGE_RESP_INVALID = iommufd_page_response_code.IOMMUFD_PAGE_RESP_INVALID


class iommu_hwpt_page_response(UapiStruct):
    """One page response written to a fault queue fd, echoing the fault group's cookie."""

    _fields_ = [("cookie", _u32), ("code", _u32)]


class iommu_fault_alloc(UapiStruct):
    """ioctl(IOMMU_FAULT_QUEUE_ALLOC): allocate a fault queue object and its fd."""

    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("out_fault_id", _u32),
        ("out_fault_fd", _u32),
    ]


# --- vIOMMU / vDEVICE -----------------------------------------------------------------


class iommu_viommu_type(IntEnum):
    """Type of a virtual IOMMU."""

    IOMMU_VIOMMU_TYPE_DEFAULT = 0
    IOMMU_VIOMMU_TYPE_ARM_SMMUV3 = 1
    IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV = 2


IOMMU_VIOMMU_TYPE_DEFAULT = iommu_viommu_type.IOMMU_VIOMMU_TYPE_DEFAULT
IOMMU_VIOMMU_TYPE_ARM_SMMUV3 = iommu_viommu_type.IOMMU_VIOMMU_TYPE_ARM_SMMUV3
IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV = iommu_viommu_type.IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV


class iommu_viommu_tegra241_cmdqv(UapiStruct):
    """vIOMMU data IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV: mmap window of the VINTF page 0."""

    _fields_ = [("out_vintf_mmap_offset", _aligned_u64), ("out_vintf_mmap_length", _aligned_u64)]


class iommu_viommu_alloc(UapiStruct):
    """ioctl(IOMMU_VIOMMU_ALLOC): allocate a vIOMMU over a nest-parent HWPT."""

    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("type", _u32),
        ("dev_id", _u32),
        ("hwpt_id", _u32),
        ("out_viommu_id", _u32),
        ("data_len", _u32),
        ("__reserved", _u32),
        ("data_uptr", _aligned_u64),
    ]


class iommu_vdevice_alloc(UapiStruct):
    """ioctl(IOMMU_VDEVICE_ALLOC): give a device a virtual ID (vSID, vRID) on a vIOMMU."""

    _fields_ = [
        ("size", _u32),
        ("viommu_id", _u32),
        ("dev_id", _u32),
        ("out_vdevice_id", _u32),
        ("virt_id", _aligned_u64),
    ]


class iommu_ioas_change_process(UapiStruct):
    """ioctl(IOMMU_IOAS_CHANGE_PROCESS): move pinned-page accounting to the caller."""

    _fields_ = [("size", _u32), ("__reserved", _u32)]


# --- vEVENTQ --------------------------------------------------------------------------


class iommu_veventq_flag(IntFlag):
    """Flags of iommufd_vevent_header."""

    IOMMU_VEVENTQ_FLAG_LOST_EVENTS = 1 << 0


IOMMU_VEVENTQ_FLAG_LOST_EVENTS = iommu_veventq_flag.IOMMU_VEVENTQ_FLAG_LOST_EVENTS


class iommufd_vevent_header(UapiStruct):
    """Header before each vEVENT read from a vEVENTQ fd: flags and sequence index."""

    _fields_ = [("flags", _u32), ("sequence", _u32)]


class iommu_veventq_type(IntEnum):
    """Type of a virtual event queue."""

    IOMMU_VEVENTQ_TYPE_DEFAULT = 0
    IOMMU_VEVENTQ_TYPE_ARM_SMMUV3 = 1
    IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV = 2


IOMMU_VEVENTQ_TYPE_DEFAULT = iommu_veventq_type.IOMMU_VEVENTQ_TYPE_DEFAULT
IOMMU_VEVENTQ_TYPE_ARM_SMMUV3 = iommu_veventq_type.IOMMU_VEVENTQ_TYPE_ARM_SMMUV3
IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV = iommu_veventq_type.IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV


class iommu_vevent_arm_smmuv3(UapiStruct):
    """vEVENT data IOMMU_VEVENTQ_TYPE_ARM_SMMUV3: a 256-bit SMMUv3 event record (LE)."""

    _fields_ = [("evt", _aligned_le64 * 4)]


class iommu_vevent_tegra241_cmdqv(UapiStruct):
    """vEVENT data IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV: the 128-bit LVCMDQ error map (LE)."""

    _fields_ = [("lvcmdq_err_map", _aligned_le64 * 2)]


class iommu_veventq_alloc(UapiStruct):
    """ioctl(IOMMU_VEVENTQ_ALLOC): allocate a vEVENTQ of one type on a vIOMMU."""

    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("viommu_id", _u32),
        ("type", _u32),
        ("veventq_depth", _u32),
        ("out_veventq_id", _u32),
        ("out_veventq_fd", _u32),
        ("__reserved", _u32),
    ]


# --- HW queue -------------------------------------------------------------------------


class iommu_hw_queue_type(IntEnum):
    """Type of a HW-accelerated vIOMMU queue."""

    IOMMU_HW_QUEUE_TYPE_DEFAULT = 0
    IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV = 1


IOMMU_HW_QUEUE_TYPE_DEFAULT = iommu_hw_queue_type.IOMMU_HW_QUEUE_TYPE_DEFAULT
IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV = iommu_hw_queue_type.IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV


class iommu_hw_queue_alloc(UapiStruct):
    """ioctl(IOMMU_HW_QUEUE_ALLOC): give the HW a guest queue at a nest-parent IOVA."""

    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("viommu_id", _u32),
        ("type", _u32),
        ("index", _u32),
        ("out_hw_queue_id", _u32),
        ("nesting_parent_iova", _aligned_u64),
        ("length", _aligned_u64),
    ]


# --- ioctls ---------------------------------------------------------------------------

IOMMU_DESTROY = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY)
IOMMU_IOAS_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC)
IOMMU_IOAS_IOVA_RANGES = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES)
IOMMU_IOAS_ALLOW_IOVAS = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOW_IOVAS)
IOMMU_IOAS_MAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP)
IOMMU_IOAS_NOIOMMU_GET_PA = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA)
IOMMU_IOAS_MAP_FILE = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP_FILE)
IOMMU_IOAS_COPY = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_COPY)
IOMMU_IOAS_UNMAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP)
IOMMU_OPTION = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_OPTION)
IOMMU_VFIO_IOAS = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VFIO_IOAS)
IOMMU_HWPT_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_ALLOC)
IOMMU_GET_HW_INFO = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_GET_HW_INFO)
IOMMU_HWPT_SET_DIRTY_TRACKING = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING)
IOMMU_HWPT_GET_DIRTY_BITMAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP)
IOMMU_HWPT_INVALIDATE = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_INVALIDATE)
IOMMU_FAULT_QUEUE_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_FAULT_QUEUE_ALLOC)
IOMMU_VIOMMU_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VIOMMU_ALLOC)
IOMMU_VDEVICE_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VDEVICE_ALLOC)
IOMMU_IOAS_CHANGE_PROCESS = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_CHANGE_PROCESS)
IOMMU_VEVENTQ_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VEVENTQ_ALLOC)
IOMMU_HW_QUEUE_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HW_QUEUE_ALLOC)

C_HEADERS = ("linux/iommufd.h",)

STRUCTS = (
    iommu_destroy,
    iommu_ioas_alloc,
    iommu_iova_range,
    iommu_ioas_iova_ranges,
    iommu_ioas_allow_iovas,
    iommu_ioas_map,
    iommu_ioas_noiommu_get_pa,
    iommu_ioas_map_file,
    iommu_ioas_copy,
    iommu_ioas_unmap,
    iommu_option,
    iommu_vfio_ioas,
    iommu_hwpt_vtd_s1,
    iommu_hwpt_arm_smmuv3,
    iommu_hwpt_amd_guest,
    iommu_hwpt_alloc,
    iommu_hw_info_vtd,
    iommu_hw_info_arm_smmuv3,
    iommu_hw_info_tegra241_cmdqv,
    iommu_hw_info_amd,
    iommu_hw_info,
    iommu_hwpt_set_dirty_tracking,
    iommu_hwpt_get_dirty_bitmap,
    iommu_hwpt_vtd_s1_invalidate,
    iommu_viommu_arm_smmuv3_invalidate,
    iommu_hwpt_invalidate,
    iommu_hwpt_pgfault,
    iommu_hwpt_page_response,
    iommu_fault_alloc,
    iommu_viommu_tegra241_cmdqv,
    iommu_viommu_alloc,
    iommu_vdevice_alloc,
    iommu_ioas_change_process,
    iommufd_vevent_header,
    iommu_vevent_arm_smmuv3,
    iommu_vevent_tegra241_cmdqv,
    iommu_veventq_alloc,
    iommu_hw_queue_alloc,
)

IOCTLS = (
    "IOMMU_DESTROY",
    "IOMMU_IOAS_ALLOC",
    "IOMMU_IOAS_IOVA_RANGES",
    "IOMMU_IOAS_ALLOW_IOVAS",
    "IOMMU_IOAS_MAP",
    "IOMMU_IOAS_NOIOMMU_GET_PA",
    "IOMMU_IOAS_MAP_FILE",
    "IOMMU_IOAS_COPY",
    "IOMMU_IOAS_UNMAP",
    "IOMMU_OPTION",
    "IOMMU_VFIO_IOAS",
    "IOMMU_HWPT_ALLOC",
    "IOMMU_GET_HW_INFO",
    "IOMMU_HWPT_SET_DIRTY_TRACKING",
    "IOMMU_HWPT_GET_DIRTY_BITMAP",
    "IOMMU_HWPT_INVALIDATE",
    "IOMMU_FAULT_QUEUE_ALLOC",
    "IOMMU_VIOMMU_ALLOC",
    "IOMMU_VDEVICE_ALLOC",
    "IOMMU_IOAS_CHANGE_PROCESS",
    "IOMMU_VEVENTQ_ALLOC",
    "IOMMU_HW_QUEUE_ALLOC",
)
