/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * Legacy (pre-iommufd) vendor VFIO nesting uAPI: the C reference for
 * harness/uapi/legacy.py, compiled by the ABI check.
 *
 * Where every definition comes from:
 *
 *  - Seed 000 (/work/shared/seeds/000_3916f01efa69583e.txt, the QEMU patch
 *    "vfio.h and iommu.h header update against 5.10"):
 *
 *    [iommu.h]  linux-headers/linux/iommu.h, the new file of the patch:
 *               IOMMU_FAULT_PERM_*, enum iommu_fault_type, enum
 *               iommu_fault_reason, struct iommu_fault_unrecoverable,
 *               struct iommu_fault_page_request, struct iommu_fault,
 *               enum iommu_page_response_code, struct iommu_page_response,
 *               enum iommu_inv_granularity, struct iommu_inv_addr_info,
 *               struct iommu_inv_pasid_info, struct
 *               iommu_cache_invalidate_info (and its cache x granularity
 *               table), struct iommu_gpasid_bind_data_vtd, struct
 *               iommu_gpasid_bind_data, struct iommu_pasid_smmuv3, struct
 *               iommu_pasid_table_config, with their #defines.
 *
 *    [vfio.h @@ -334]   VFIO_REGION_TYPE_NESTED.
 *    [vfio.h @@ -362]   VFIO_REGION_SUBTYPE_NESTED_DMA_FAULT{,_RESPONSE}.
 *    [vfio.h @@ -721]   struct vfio_irq_info with cap_offset and
 *                       VFIO_IRQ_INFO_FLAG_CAPS (the other VFIO_IRQ_INFO_*
 *                       flags and VFIO_DEVICE_GET_IRQ_INFO are the hunk's
 *                       context lines), VFIO_IRQ_INFO_CAP_TYPE, struct
 *                       vfio_irq_info_cap_type, VFIO_IRQ_TYPE_NESTED,
 *                       VFIO_IRQ_SUBTYPE_DMA_FAULT.
 *    [vfio.h @@ -827]   the vfio-pci IRQ index enum, VFIO_PCI_NUM_IRQS = 5.
 *    [vfio.h @@ -1012]  VFIO_REGION_INFO_CAP_DMA_FAULT{,_RESPONSE}, struct
 *                       vfio_region_info_cap_fault{,_response}, struct
 *                       vfio_region_dma_fault, struct
 *                       vfio_region_dma_fault_response.
 *    [vfio.h @@ -1250]  struct vfio_iommu_type1_bind_process, struct
 *                       vfio_iommu_type1_bind, VFIO_IOMMU_BIND,
 *                       VFIO_IOMMU_UNBIND, struct
 *                       vfio_iommu_type1_set_pasid_table,
 *                       VFIO_IOMMU_SET_PASID_TABLE, struct
 *                       vfio_iommu_type1_cache_invalidate,
 *                       VFIO_IOMMU_CACHE_INVALIDATE, struct
 *                       vfio_iommu_type1_set_msi_binding,
 *                       VFIO_IOMMU_SET_MSI_BINDING.
 *
 *    The ioctls are defined with _IO() exactly as the seed does (its
 *    comments say _IOWR, its #defines say _IO: the #define is the ABI).
 *
 *  - Not shown by the seed because the patch does not change them; taken
 *    from the 5.10 linux/vfio.h the patch applies to (identical in 7.3):
 *    VFIO_TYPE, VFIO_BASE, struct vfio_info_cap_header, and
 *    VFIO_TYPE1_NESTING_IOMMU = 6 (7.3 keeps the value as
 *    __VFIO_RESERVED_TYPE1_NESTING_IOMMU).
 *
 * Self-contained: it must not be combined with the real <linux/vfio.h>,
 * whose struct vfio_irq_info (no cap_offset) differs from the legacy one.
 */
#ifndef HARNESS_LEGACY_UAPI_H
#define HARNESS_LEGACY_UAPI_H

#include <linux/types.h>
#include <linux/ioctl.h>

/* ======================= linux/iommu.h (seed 000) ======================= */

#define IOMMU_FAULT_PERM_READ	(1 << 0) /* read */
#define IOMMU_FAULT_PERM_WRITE	(1 << 1) /* write */
#define IOMMU_FAULT_PERM_EXEC	(1 << 2) /* exec */
#define IOMMU_FAULT_PERM_PRIV	(1 << 3) /* privileged */

enum iommu_fault_type {
	IOMMU_FAULT_DMA_UNRECOV = 1,	/* unrecoverable fault */
	IOMMU_FAULT_PAGE_REQ,		/* page request fault */
};

enum iommu_fault_reason {
	IOMMU_FAULT_REASON_UNKNOWN = 0,
	IOMMU_FAULT_REASON_PASID_FETCH,
	IOMMU_FAULT_REASON_BAD_PASID_ENTRY,
	IOMMU_FAULT_REASON_PASID_INVALID,
	IOMMU_FAULT_REASON_WALK_EABT,
	IOMMU_FAULT_REASON_PTE_FETCH,
	IOMMU_FAULT_REASON_PERMISSION,
	IOMMU_FAULT_REASON_ACCESS,
	IOMMU_FAULT_REASON_OOR_ADDRESS,
};

struct iommu_fault_unrecoverable {
	__u32	reason;
#define IOMMU_FAULT_UNRECOV_PASID_VALID		(1 << 0)
#define IOMMU_FAULT_UNRECOV_ADDR_VALID		(1 << 1)
#define IOMMU_FAULT_UNRECOV_FETCH_ADDR_VALID	(1 << 2)
	__u32	flags;
	__u32	pasid;
	__u32	perm;
	__u64	addr;
	__u64	fetch_addr;
};

struct iommu_fault_page_request {
#define IOMMU_FAULT_PAGE_REQUEST_PASID_VALID	(1 << 0)
#define IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE	(1 << 1)
#define IOMMU_FAULT_PAGE_REQUEST_PRIV_DATA	(1 << 2)
#define IOMMU_FAULT_PAGE_RESPONSE_NEEDS_PASID	(1 << 3)
	__u32	flags;
	__u32	pasid;
	__u32	grpid;
	__u32	perm;
	__u64	addr;
	__u64	private_data[2];
};

struct iommu_fault {
	__u32	type;
	__u32	padding;
	union {
		struct iommu_fault_unrecoverable event;
		struct iommu_fault_page_request prm;
		__u8 padding2[56];
	};
};

enum iommu_page_response_code {
	IOMMU_PAGE_RESP_SUCCESS = 0,
	IOMMU_PAGE_RESP_INVALID,
	IOMMU_PAGE_RESP_FAILURE,
};

struct iommu_page_response {
	__u32	argsz;
#define IOMMU_PAGE_RESP_VERSION_1	1
	__u32	version;
#define IOMMU_PAGE_RESP_PASID_VALID	(1 << 0)
	__u32	flags;
	__u32	pasid;
	__u32	grpid;
	__u32	code;
};

enum iommu_inv_granularity {
	IOMMU_INV_GRANU_DOMAIN,	/* domain-selective invalidation */
	IOMMU_INV_GRANU_PASID,	/* PASID-selective invalidation */
	IOMMU_INV_GRANU_ADDR,	/* page-selective invalidation */
	IOMMU_INV_GRANU_NR,	/* number of invalidation granularities */
};

struct iommu_inv_addr_info {
#define IOMMU_INV_ADDR_FLAGS_PASID	(1 << 0)
#define IOMMU_INV_ADDR_FLAGS_ARCHID	(1 << 1)
#define IOMMU_INV_ADDR_FLAGS_LEAF	(1 << 2)
	__u32	flags;
	__u32	archid;
	__u64	pasid;
	__u64	addr;
	__u64	granule_size;
	__u64	nb_granules;
};

struct iommu_inv_pasid_info {
#define IOMMU_INV_PASID_FLAGS_PASID	(1 << 0)
#define IOMMU_INV_PASID_FLAGS_ARCHID	(1 << 1)
	__u32	flags;
	__u32	archid;
	__u64	pasid;
};

/*
 * Valid cache type x granularity combinations (seed 000, comment above
 * struct iommu_cache_invalidate_info):
 *
 *   type / granularity | DEV_IOTLB | IOTLB | PASID cache
 *   DOMAIN             |   N/A     |   Y   |     Y
 *   PASID              |    Y      |   Y   |     Y
 *   ADDR               |    Y      |   Y   |    N/A
 */
struct iommu_cache_invalidate_info {
	__u32	argsz;
#define IOMMU_CACHE_INVALIDATE_INFO_VERSION_1 1
	__u32	version;
#define IOMMU_CACHE_INV_TYPE_IOTLB	(1 << 0) /* IOMMU IOTLB */
#define IOMMU_CACHE_INV_TYPE_DEV_IOTLB	(1 << 1) /* Device IOTLB */
#define IOMMU_CACHE_INV_TYPE_PASID	(1 << 2) /* PASID cache */
#define IOMMU_CACHE_INV_TYPE_NR		(3)
	__u8	cache;
	__u8	granularity;
	__u8	padding[6];
	union {
		struct iommu_inv_pasid_info pasid_info;
		struct iommu_inv_addr_info addr_info;
	} granu;
};

struct iommu_gpasid_bind_data_vtd {
#define IOMMU_SVA_VTD_GPASID_SRE	(1 << 0) /* supervisor request */
#define IOMMU_SVA_VTD_GPASID_EAFE	(1 << 1) /* extended access enable */
#define IOMMU_SVA_VTD_GPASID_PCD	(1 << 2) /* page-level cache disable */
#define IOMMU_SVA_VTD_GPASID_PWT	(1 << 3) /* page-level write through */
#define IOMMU_SVA_VTD_GPASID_EMTE	(1 << 4) /* extended mem type enable */
#define IOMMU_SVA_VTD_GPASID_CD		(1 << 5) /* PASID-level cache disable */
#define IOMMU_SVA_VTD_GPASID_LAST	(1 << 6)
	__u64	flags;
	__u32	pat;
	__u32	emt;
};

#define IOMMU_SVA_VTD_GPASID_MTS_MASK	(IOMMU_SVA_VTD_GPASID_CD | \
					 IOMMU_SVA_VTD_GPASID_EMTE | \
					 IOMMU_SVA_VTD_GPASID_PCD |  \
					 IOMMU_SVA_VTD_GPASID_PWT)

struct iommu_gpasid_bind_data {
	__u32 argsz;
#define IOMMU_GPASID_BIND_VERSION_1	1
	__u32 version;
#define IOMMU_PASID_FORMAT_INTEL_VTD	1
#define IOMMU_PASID_FORMAT_LAST		2
	__u32 format;
	__u32 addr_width;
#define IOMMU_SVA_GPASID_VAL	(1 << 0) /* guest PASID valid */
	__u64 flags;
	__u64 gpgd;
	__u64 hpasid;
	__u64 gpasid;
	__u8  padding[8];
	union {
		struct iommu_gpasid_bind_data_vtd vtd;
	} vendor;
};

struct iommu_pasid_smmuv3 {
#define PASID_TABLE_SMMUV3_CFG_VERSION_1 1
	__u32	version;
	__u8	s1fmt;
	__u8	s1dss;
	__u8	padding[2];
};

struct iommu_pasid_table_config {
	__u32	argsz;
#define PASID_TABLE_CFG_VERSION_1 1
	__u32	version;
	__u64	base_ptr;
#define IOMMU_PASID_FORMAT_SMMUV3	1
	__u32	format;
	__u8	pasid_bits;
#define IOMMU_PASID_CONFIG_TRANSLATE	1
#define IOMMU_PASID_CONFIG_BYPASS	2
#define IOMMU_PASID_CONFIG_ABORT	3
	__u8	config;
	__u8	padding[2];
	union {
		struct iommu_pasid_smmuv3 smmuv3;
	} vendor_data;
};

/* ============ linux/vfio.h: unchanged 5.10 context (see above) ============ */

#define VFIO_TYPE	(';')
#define VFIO_BASE	100

/* Two-stage IOMMU */
#define VFIO_TYPE1_NESTING_IOMMU	6	/* Implies v2 */

struct vfio_info_cap_header {
	__u16	id;		/* Identifies capability */
	__u16	version;	/* Version specific to the capability ID */
	__u32	next;		/* Offset of next capability */
};

/* ===================== linux/vfio.h hunks (seed 000) ===================== */

#define VFIO_REGION_TYPE_NESTED			(4)

/* sub-types for VFIO_REGION_TYPE_NESTED */
#define VFIO_REGION_SUBTYPE_NESTED_DMA_FAULT		(1)
#define VFIO_REGION_SUBTYPE_NESTED_DMA_FAULT_RESPONSE	(2)

struct vfio_irq_info {
	__u32	argsz;
	__u32	flags;
#define VFIO_IRQ_INFO_EVENTFD		(1 << 0)
#define VFIO_IRQ_INFO_MASKABLE		(1 << 1)
#define VFIO_IRQ_INFO_AUTOMASKED	(1 << 2)
#define VFIO_IRQ_INFO_NORESIZE		(1 << 3)
#define VFIO_IRQ_INFO_FLAG_CAPS		(1 << 4) /* Info supports caps */
	__u32	index;		/* IRQ index */
	__u32	count;		/* Number of IRQs within this index */
	__u32	cap_offset;	/* Offset within info struct of first cap */
};
#define VFIO_DEVICE_GET_IRQ_INFO	_IO(VFIO_TYPE, VFIO_BASE + 9)

#define VFIO_IRQ_INFO_CAP_TYPE		3

struct vfio_irq_info_cap_type {
	struct vfio_info_cap_header header;
	__u32 type;	/* global per bus driver */
	__u32 subtype;	/* type specific */
};

#define VFIO_IRQ_TYPE_NESTED		(1)
#define VFIO_IRQ_SUBTYPE_DMA_FAULT	(1)

enum {
	VFIO_PCI_INTX_IRQ_INDEX,
	VFIO_PCI_MSI_IRQ_INDEX,
	VFIO_PCI_MSIX_IRQ_INDEX,
	VFIO_PCI_ERR_IRQ_INDEX,
	VFIO_PCI_REQ_IRQ_INDEX,
	VFIO_PCI_NUM_IRQS = 5	/* Fixed user ABI, IRQ indexes >=5 use */
				/* device specific cap to define content */
};

#define VFIO_REGION_INFO_CAP_DMA_FAULT	6

struct vfio_region_info_cap_fault {
	struct vfio_info_cap_header header;
	__u32 version;
};

#define VFIO_REGION_INFO_CAP_DMA_FAULT_RESPONSE	7

struct vfio_region_info_cap_fault_response {
	struct vfio_info_cap_header header;
	__u32 version;
};

struct vfio_region_dma_fault {
	/* Write-Only */
	__u32	tail;
	/* Read-Only */
	__u32	entry_size;
	__u32	nb_entries;
	__u32	offset;
	__u32	head;
};

struct vfio_region_dma_fault_response {
	/* Write-Only */
	__u32	head;
	/* Read-Only */
	__u32	entry_size;
	__u32	nb_entries;
	__u32	offset;
	__u32	tail;
};

struct vfio_iommu_type1_bind_process {
	__u32	flags;
#define VFIO_IOMMU_BIND_PID		(1 << 0)
	__u32	pasid;
	__s32	pid;
};

struct vfio_iommu_type1_bind {
	__u32	argsz;
	__u32	flags;
#define VFIO_IOMMU_BIND_PROCESS		(1 << 0)
	__u8	data[];
};

#define VFIO_IOMMU_BIND		_IO(VFIO_TYPE, VFIO_BASE + 22)
#define VFIO_IOMMU_UNBIND	_IO(VFIO_TYPE, VFIO_BASE + 23)

struct vfio_iommu_type1_set_pasid_table {
	__u32	argsz;
	__u32	flags;
#define VFIO_PASID_TABLE_FLAG_SET	(1 << 0)
#define VFIO_PASID_TABLE_FLAG_UNSET	(1 << 1)
	struct iommu_pasid_table_config config; /* used on SET */
};

#define VFIO_IOMMU_SET_PASID_TABLE	_IO(VFIO_TYPE, VFIO_BASE + 18)

struct vfio_iommu_type1_cache_invalidate {
	__u32	argsz;
	__u32	flags;
	struct iommu_cache_invalidate_info info;
};
#define VFIO_IOMMU_CACHE_INVALIDATE	_IO(VFIO_TYPE, VFIO_BASE + 19)

struct vfio_iommu_type1_set_msi_binding {
	__u32	argsz;
	__u32	flags;
#define VFIO_IOMMU_BIND_MSI	(1 << 0)
#define VFIO_IOMMU_UNBIND_MSI	(1 << 1)
	__u64	iova;	/* MSI guest IOVA */
	/* Fields below are used on BIND */
	__u64	gpa;	/* MSI guest physical address */
	__u64	size;	/* size of stage1 mapping (bytes) */
};
#define VFIO_IOMMU_SET_MSI_BINDING	_IO(VFIO_TYPE, VFIO_BASE + 20)

#endif /* HARNESS_LEGACY_UAPI_H */
