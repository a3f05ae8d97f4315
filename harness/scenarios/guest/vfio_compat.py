"""Tier 1 guest half: the VFIO type1 container ioctls answered by /dev/iommu (seed 002).

The compat IOAS is an IOAS with a mock device attached (what VFIO would call a group),
made current with IOMMU_VFIO_IOAS; VFIO_IOMMU_MAP_DMA is then checked through the
mock domain (IOMMU_TEST_OP_MD_CHECK_MAP).  The same container ioctls are also issued
on the real type1 container (/dev/vfio/vfio, the guest kernel has VFIO_CONTAINER=y)
where they make sense without a group; a type1 run with a group needs a device bound
to vfio-pci (tier 2).  Where the kernel differs from seed 002 the row says so.
"""

from __future__ import annotations

import ctypes
import errno
import gzip
import os
import random
from typing import Any

from guests.agent.server import method
from harness.driver import (
    PAGE_SIZE,
    CheckTable,
    DmaBuffer,
    IommuFD,
    Selftest,
    VfioContainer,
)
from harness.scenarios.guest._rows import SETUP, succeeds_effect
from harness.uapi import iommufd_test as t
from harness.uapi import vfio as v

TYPE1, TYPE1V2 = v.VFIO_TYPE1_IOMMU, v.VFIO_TYPE1v2_IOMMU
NESTING = v.__VFIO_RESERVED_TYPE1_NESTING_IOMMU
RW = v.VFIO_DMA_MAP_FLAG_READ | v.VFIO_DMA_MAP_FLAG_WRITE
INFO_SIZE = ctypes.sizeof(v.vfio_iommu_type1_info)
PRE_CAP_SIZE = v.vfio_iommu_type1_info.cap_offset.offset
U16_MAX, U32_MAX = 0xFFFF, 0xFFFFFFFF
GUARD = 0xAA
PAGES = 16


def _kconfig(name: str) -> str:
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            for line in f:
                if line.startswith(name + "="):
                    return line.strip().split("=", 1)[1]
    except OSError:
        pass
    return ""


def _guarded_info(ictx: IommuFD, argsz: int) -> tuple[bytes, bool]:
    """GET_INFO into a larger buffer; whether the kernel kept to ``argsz`` bytes."""
    buf = bytearray([GUARD]) * 4096
    buf[:INFO_SIZE] = bytes(INFO_SIZE)
    buf[0:4] = argsz.to_bytes(4, "little")
    ictx.call("VFIO_IOMMU_GET_INFO", v.VFIO_IOMMU_GET_INFO, buf)
    return bytes(buf), all(b == GUARD for b in buf[max(argsz, INFO_SIZE) :])


def _no_ioas(table: CheckTable, ictx: IommuFD, container: VfioContainer) -> None:
    """Before any compat IOAS exists, and argument checks that come first."""
    err = table.errno
    err("IOMMU_VFIO_IOAS GET: none yet", errno.ENODEV, ictx.vfio_ioas_get)
    err("SET_IOMMU(TYPE1v2): no IOAS", errno.ENODEV, container.set_iommu, TYPE1V2)
    err(
        "SET_IOMMU(SPAPR_TCE): unknown type",
        errno.EINVAL,
        container.set_iommu,
        v.VFIO_SPAPR_TCE_IOMMU,
    )
    err("GET_INFO: no IOAS", errno.ENODEV, container.info_raw, INFO_SIZE)
    err("GET_INFO: argsz 1", errno.EINVAL, container.info_raw, 1)
    err("MAP_DMA: no IOAS", errno.ENODEV, container.map_dma, 0x1000, 0x1000, PAGE_SIZE)
    err("MAP_DMA: argsz 1", errno.EINVAL, container.map_dma, 0x1000, 0x1000, PAGE_SIZE, argsz=1)
    err(
        "MAP_DMA: unknown flag",
        errno.EINVAL,
        container.map_dma,
        0x1000,
        0x1000,
        PAGE_SIZE,
        flags=1 << 31,
    )
    err(
        "MAP_DMA: FLAG_VADDR (not implemented)",
        errno.EINVAL,
        container.map_dma,
        0x1000,
        0x1000,
        PAGE_SIZE,
        flags=v.VFIO_DMA_MAP_FLAG_VADDR,
    )
    err("UNMAP_DMA: no IOAS", errno.ENODEV, container.unmap_dma, 0x1000, PAGE_SIZE)
    err("UNMAP_DMA: argsz 1", errno.EINVAL, container.unmap_dma, 0x1000, PAGE_SIZE, argsz=1)
    err(
        "UNMAP_DMA: unknown flag",
        errno.EINVAL,
        container.unmap_dma,
        0x1000,
        PAGE_SIZE,
        flags=1 << 31,
    )
    err(
        "UNMAP_DMA: GET_DIRTY_BITMAP (obsolete)",
        errno.EINVAL,
        container.unmap_dma,
        0x1000,
        PAGE_SIZE,
        flags=v.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
    )
    err(
        "VFIO_IOMMU_DIRTY_PAGES: not implemented",
        errno.ENOTTY,
        ictx.call,
        "VFIO_IOMMU_DIRTY_PAGES",
        v.VFIO_IOMMU_DIRTY_PAGES,
        bytearray(8),
    )


def _extensions(table: CheckTable, container: VfioContainer, noiommu: bool) -> None:
    table.add("GET_API_VERSION", v.VFIO_API_VERSION, container.api_version())
    for name, ext, expected, note in [
        ("TYPE1", TYPE1, 1, ""),
        ("TYPE1v2", TYPE1V2, 1, ""),
        ("UNMAP_ALL", v.VFIO_UNMAP_ALL, 1, ""),
        ("TYPE1_NESTING", NESTING, 0, "obsolete; __VFIO_RESERVED_TYPE1_NESTING_IOMMU in 7.3"),
        (
            "UPDATE_VADDR",
            v.VFIO_UPDATE_VADDR,
            0,
            "seed 002: VFIO_DMA_MAP_FLAG_VADDR not implemented",
        ),
        (
            "NOIOMMU",
            v.VFIO_NOIOMMU_IOMMU,
            int(noiommu),
            "not in seed 002: IS_ENABLED(CONFIG_VFIO_NOIOMMU)",
        ),
        ("SPAPR_TCE", v.VFIO_SPAPR_TCE_IOMMU, 0, ""),
    ]:
        table.add(f"CHECK_EXTENSION({name})", expected, container.check_extension(ext), note=note)


def _info(table: CheckTable, ictx: IommuFD, container: VfioContainer, prefix: str) -> None:
    """VFIO_IOMMU_GET_INFO: pre-cap ABI, truncation, every argsz, the decoded chain."""
    both = v.VFIO_IOMMU_INFO_PGSIZES | v.VFIO_IOMMU_INFO_CAPS
    raw, kept = _guarded_info(ictx, PRE_CAP_SIZE)
    pre = v.vfio_iommu_type1_info.from_bytes(raw)
    table.add(f"{prefix}GET_INFO pre-cap argsz {PRE_CAP_SIZE}: flags", both, int(pre.flags))
    table.add(f"{prefix}GET_INFO pre-cap: stays within argsz", True, kept)
    table.add(f"{prefix}GET_INFO pre-cap: iova_pgsizes set", True, int(pre.iova_pgsizes) != 0)
    raw, kept = _guarded_info(ictx, INFO_SIZE)
    short = v.vfio_iommu_type1_info.from_bytes(raw)
    full_size = int(short.argsz)
    table.add(
        f"{prefix}GET_INFO argsz {INFO_SIZE}: no cap_offset (truncated)", 0, int(short.cap_offset)
    )
    table.add(f"{prefix}GET_INFO argsz {INFO_SIZE}: asks for more", True, full_size > INFO_SIZE)
    bad: list[str] = []
    for argsz in range(INFO_SIZE, full_size + 1):
        raw, kept = _guarded_info(ictx, argsz)
        info = v.vfio_iommu_type1_info.from_bytes(raw)
        if not kept:
            bad.append(f"argsz {argsz}: wrote past argsz")
        if int(info.cap_offset):
            try:
                list(v.iter_capabilities(raw[:argsz], int(info.cap_offset), fixed_size=INFO_SIZE))
            except Exception as exc:  # DecodeError: the chain is corrupt at this size
                bad.append(f"argsz {argsz}: {exc}")
    table.add(
        f"{prefix}GET_INFO every argsz {INFO_SIZE}..{full_size}: in bounds, chain valid", [], bad
    )
    full = container.info_raw(full_size)
    decoded = v.decode_type1_info(full)
    order = [c.id for c in v.iter_capabilities(full, decoded.cap_offset, fixed_size=INFO_SIZE)]
    table.add(f"{prefix}GET_INFO: cap_offset", INFO_SIZE, decoded.cap_offset)
    table.add(
        f"{prefix}GET_INFO: capability order",
        [v.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, v.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE],
        order,
        note="seed 002 chains IOVA_RANGE first; 7.3 chains DMA_AVAIL first",
    )
    table.add(
        f"{prefix}GET_INFO: IOVA ranges (the mock aperture)",
        [[t.MOCK_APERTURE_START, t.MOCK_APERTURE_LAST]],
        [list(r) for r in decoded.iova_ranges or []],
    )
    table.add(
        f"{prefix}GET_INFO: DMA_AVAIL",
        U32_MAX,
        decoded.dma_avail,
        note=f"seed 002 returns U16_MAX ({U16_MAX}); 7.3 returns U32_MAX (s390 needs more)",
    )
    table.add(
        f"{prefix}GET_INFO: pgsizes include PAGE_SIZE",
        True,
        bool((decoded.iova_pgsizes or 0) & PAGE_SIZE),
    )


def _map_unmap(
    table: CheckTable,
    st: Selftest,
    hwpt_id: int,
    container: VfioContainer,
    version: int,
    prefix: str,
) -> None:
    """MAP_DMA / UNMAP_DMA / UNMAP_ALL, checked through the mock domain."""
    base = t.MOCK_APERTURE_START
    size = PAGES * PAGE_SIZE
    err = table.errno
    with DmaBuffer(size, fill=0x5A) as buf:
        container.map_dma(buf.addr, base, size)
        succeeds_effect(
            table,
            f"{prefix}MAP_DMA: the mock domain maps the buffer",
            st.check_map,
            hwpt_id,
            base,
            size,
            buf.addr,
        )
        err(
            f"{prefix}MAP_DMA over a mapped range",
            errno.EEXIST,
            container.map_dma,
            buf.addr,
            base,
            size,
        )
        table.add(f"{prefix}UNMAP_DMA: bytes unmapped", size, container.unmap_dma(base, size))
        err(
            f"{prefix}the mock no longer maps it",
            errno.EINVAL,
            st.check_map,
            hwpt_id,
            base,
            size,
            buf.addr,
        )
        table.add(
            f"{prefix}UNMAP_DMA of nothing: success, 0 bytes", 0, container.unmap_dma(base, size)
        )

        container.map_dma(buf.addr, base, size)
        err(
            f"{prefix}UNMAP_ALL with a non-zero iova",
            errno.EINVAL,
            container.unmap_dma,
            base,
            size,
            flags=v.VFIO_DMA_UNMAP_FLAG_ALL,
        )
        table.add(f"{prefix}UNMAP_ALL: bytes unmapped", size, container.unmap_all())

        pages = [base + i * PAGE_SIZE for i in range(PAGES)]
        for i, iova in enumerate(pages):
            container.map_dma(buf.page(i), iova, PAGE_SIZE)
        succeeds_effect(
            table, f"{prefix}{PAGES} single-page maps", st.check_map, hwpt_id, base, size, buf.addr
        )
        random.Random(2).shuffle(pages)
        freed = sum(container.unmap_dma(iova, PAGE_SIZE) for iova in pages)
        table.add(f"{prefix}{PAGES} single-page unmaps in random order", size, freed)

        container.map_dma(buf.addr, base, size)
        splits = [base + i * (size // 4) for i in range(4)]
        random.Random(3).shuffle(splits)
        for iova in splits:
            name = f"{prefix}UNMAP_DMA a quarter of one mapping (+{iova - base:#x})"
            if version == TYPE1:
                # vfio_compat.c iommufd_vfio_unmap_dma cuts the area at the range's ends
                quarter = succeeds_effect(table, name, container.unmap_dma, iova, size // 4)
                if quarter is not None:
                    table.add(f"{name}: bytes unmapped", size // 4, quarter)
            else:
                # io_pagetable.c iopt_unmap_iova_range: -ENOENT for a range cutting an area
                table.errno(name, errno.ENOENT, container.unmap_dma, iova, size // 4)
        container.unmap_all()


def _variant(table: CheckTable, version: int, noiommu: bool) -> None:
    prefix = "v2: " if version == TYPE1V2 else "v1: "
    with IommuFD() as ictx:
        container = VfioContainer.over(ictx)
        st = Selftest(ictx)
        st.set_temp_memory_limit()
        ioas = ictx.ioas()
        dev = st.mock_domain(ioas)
        ictx.vfio_ioas_set(ioas)
        table.add(f"{prefix}IOMMU_VFIO_IOAS GET after SET", ioas.id, ictx.vfio_ioas_get())
        table.succeeds(f"{prefix}SET_IOMMU", container.set_iommu, version)
        table.add(f"{prefix}huge pages option after SET_IOMMU", version == TYPE1V2, ioas.huge_pages)
        _info(table, ictx, container, prefix)
        _map_unmap(table, st, dev.hwpt_id, container, version, prefix)
        ictx.vfio_ioas_clear()
        table.errno(
            f"{prefix}IOMMU_VFIO_IOAS CLEAR: GET finds none", errno.ENODEV, ictx.vfio_ioas_get
        )
        table.errno(
            f"{prefix}MAP_DMA after CLEAR",
            errno.ENODEV,
            container.map_dma,
            0x1000,
            t.MOCK_APERTURE_START,
            PAGE_SIZE,
        )


def _type1_differential(table: CheckTable, noiommu: bool) -> None:
    """The same ioctls on the real type1 container and on iommufd, without any group."""
    present = os.path.exists("/dev/vfio/vfio")
    if not table.add(
        "type1: /dev/vfio/vfio present",
        True,
        present,
        note="needs CONFIG_VFIO_CONTAINER=y",
        kind=SETUP,
    ):
        return
    with VfioContainer() as type1, IommuFD() as ictx:
        compat = VfioContainer.over(ictx)
        rows = [
            ("GET_API_VERSION", type1.api_version, compat.api_version, ""),
            (
                "CHECK_EXTENSION(TYPE1v2)",
                lambda: type1.check_extension(TYPE1V2),
                lambda: compat.check_extension(TYPE1V2),
                "",
            ),
            (
                "CHECK_EXTENSION(UNMAP_ALL)",
                lambda: type1.check_extension(v.VFIO_UNMAP_ALL),
                lambda: compat.check_extension(v.VFIO_UNMAP_ALL),
                "",
            ),
            (
                "CHECK_EXTENSION(TYPE1_NESTING)",
                lambda: type1.check_extension(NESTING),
                lambda: compat.check_extension(NESTING),
                "",
            ),
        ]
        for name, a, b, note in rows:
            table.add(f"type1 vs compat: {name}", a(), b(), note=note)
        # seed 002 line 10: the errno audit is not done; type1 refuses without an IOMMU
        # driver (container.c vfio_ioctl_set_iommu / vfio_fops_unl_ioctl: -EINVAL), compat
        # without a compat IOAS (vfio_compat.c get_compat_ioas: -ENODEV)
        t1, cp = "type1 vs compat: type1", "type1 vs compat: compat"
        err = table.errno
        err(f"{t1} SET_IOMMU(TYPE1v2) without a group", errno.EINVAL, type1.set_iommu, TYPE1V2)
        err(f"{cp} SET_IOMMU(TYPE1v2) without a group", errno.ENODEV, compat.set_iommu, TYPE1V2)
        err(f"{t1} GET_INFO without a group", errno.EINVAL, type1.info_raw, INFO_SIZE)
        err(f"{cp} GET_INFO without a group", errno.ENODEV, compat.info_raw, INFO_SIZE)
        map_args = (0x1000, 0x100000, PAGE_SIZE)
        err(f"{t1} MAP_DMA without a group", errno.EINVAL, type1.map_dma, *map_args)
        err(f"{cp} MAP_DMA without a group", errno.ENODEV, compat.map_dma, *map_args)


@method
def compat() -> dict[str, Any]:
    """VFIO compat on /dev/iommu: both type1 versions, plus the type1 container without groups."""
    table = CheckTable("VFIO type1 compatibility on /dev/iommu (seed 002)")
    noiommu = _kconfig("CONFIG_VFIO_NOIOMMU") == "y"
    with IommuFD() as ictx:
        container = VfioContainer.over(ictx)
        _extensions(table, container, noiommu)
        _no_ioas(table, ictx, container)
    for version in (TYPE1V2, TYPE1):
        _variant(table, version, noiommu)
    _type1_differential(table, noiommu)
    return table.result(needs_tier2=["type1 container with a group (edu bound to vfio-pci)"])
