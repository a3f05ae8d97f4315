"""Guest halves of the tier-2 VT-d scenarios: iommufd + VFIO + edu DMA inside the guest.

Each method opens what it needs (``/dev/iommu``, the edu cdev or its group), does real
DMA with ``harness.devices.edu.Edu`` and returns JSON-able facts and check rows; the
host halves (``harness.scenarios.vtd``) compare them with what QEMU and the options say.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any

from guests.agent.server import method
from harness.devices.edu import Edu
from harness.driver.checks import CheckTable
from harness.driver.errors import IoctlError, errno_name
from harness.driver.iommufd import IOAS, IommuFD
from harness.driver.memory import DmaBuffer
from harness.driver.vfio import VfioContainer, VfioDevice, VfioGroup
from harness.scenarios.guest._rows import EFFECT, SETUP, succeeds_effect
from harness.uapi import iommufd as iu
from harness.uapi import vfio as vu

PAGE = 4096
HUGE = 2 * 1024 * 1024
_DMAR_FAULT = re.compile(r"DMAR: \[(?:DMA Read|DMA Write|INTR-REMAP)")


def outcome(fn: Callable[[], Any]) -> dict[str, Any]:
    """``{"ok": True, "value": ...}`` or ``{"ok": False, "errno": "EINVAL", "ioctl": ...}``."""
    try:
        value = fn()
    except IoctlError as err:
        return {"ok": False, "errno": err.errno_name, "ioctl": err.ioctl}
    return {"ok": True, "value": value if isinstance(value, int | str | bool) else None}


def pattern(length: int, seed: int) -> bytes:
    """Deterministic, position-dependent bytes (a shifted copy never matches)."""
    return bytes((seed * 131 + i * 7 + (i >> 8)) & 0xFF for i in range(length))


@contextmanager
def bound_device(cdev: str) -> Iterator[tuple[IommuFD, VfioDevice]]:
    """A fresh iommufd and the cdev bound to it; both closed on exit."""
    with IommuFD() as ictx:
        device = VfioDevice(cdev)
        try:
            device.bind(ictx)
            yield ictx, device
        finally:
            device.close()


def round_trip(
    edu: Edu, src: DmaBuffer, src_iova: int, dst: DmaBuffer, dst_iova: int, length: int, seed: int
) -> dict[str, Any]:
    """Copy a pattern src -> edu -> dst through the IOMMU; whether the bytes arrived intact."""
    data = pattern(length, seed)
    src.write(0, data)
    dst.write(0, bytes(length))
    start = time.monotonic()
    edu.copy(src_iova, dst_iova, length)
    got = dst.read(0, length)
    first_bad = next((i for i in range(length) if got[i] != data[i]), None)
    return {
        "equal": got == data,
        "first_bad": first_bad,
        "length": length,
        "seconds": round(time.monotonic() - start, 3),
    }


def _hw_info(ictx: IommuFD, device: VfioDevice) -> dict[str, Any]:
    info = ictx.hw_info(device)
    out: dict[str, Any] = {
        "data_type": info.data_type,
        "data_len": info.data_len,
        "capabilities": info.capabilities,
        "max_pasid_log2": info.max_pasid_log2,
    }
    if info.data_type == iu.IOMMU_HW_INFO_TYPE_INTEL_VTD:
        vtd = iu.iommu_hw_info_vtd.from_bytes(
            info.data.ljust(ctypes.sizeof(iu.iommu_hw_info_vtd), b"\0")
        )
        out.update(cap=int(vtd.cap_reg), ecap=int(vtd.ecap_reg), vtd_flags=int(vtd.flags))
    return out


@method
def hw_info(cdev: str) -> dict[str, Any]:
    """IOMMU_GET_HW_INFO for the bound cdev: VT-d cap/ecap and the generic fields."""
    with bound_device(cdev) as (ictx, device):
        return _hw_info(ictx, device)


# --- capabilities: what each option set lets userspace allocate ------------------------


@method
def probe(cdev: str, dma_mask: int, seed: int = 1) -> dict[str, Any]:
    """HW info, which HWPT kinds allocate, and an edu round trip through each that does."""
    result: dict[str, Any] = {}
    with bound_device(cdev) as (ictx, device), ExitStack() as stack:
        result["hw_info"] = _hw_info(ictx, device)
        edu = Edu(device, dma_mask=dma_mask)
        src = stack.enter_context(DmaBuffer(PAGE))
        dst = stack.enter_context(DmaBuffer(PAGE))
        ioas = ictx.ioas()
        ioas.map(src.addr, PAGE, 0x100000)
        ioas.map(dst.addr, PAGE, 0x200000)
        alloc: dict[str, Any] = {}
        alloc["attach_ioas"] = outcome(lambda: device.attach(ioas))
        if alloc["attach_ioas"]["ok"]:
            alloc["attach_ioas"]["dma"] = round_trip(edu, src, 0x100000, dst, 0x200000, 256, seed)
        explicit = outcome(lambda: ioas.paging_hwpt(device).id)
        alloc["paging_hwpt"] = explicit
        if explicit["ok"]:
            attached = outcome(lambda: device.attach(explicit["value"]))
            explicit["attach"] = attached
            if attached["ok"]:
                explicit["dma"] = round_trip(edu, src, 0x100000, dst, 0x200000, 256, seed + 1)
        alloc["nest_parent"] = outcome(lambda: ioas.paging_hwpt(device, nest_parent=True).id)
        alloc["dirty_tracking"] = outcome(lambda: ioas.paging_hwpt(device, dirty_tracking=True).id)
        alloc["alloc_pasid"] = outcome(
            lambda: ioas.paging_hwpt(device, flags=iu.IOMMU_HWPT_ALLOC_PASID).id
        )
        result["alloc"] = alloc
    return result


# --- DMA through a translation ---------------------------------------------------------


def _ensure_hugepages(count: int) -> int:
    path = "/proc/sys/vm/nr_hugepages"
    with open(path) as f:
        have = int(f.read())
    if have < count:
        with open(path, "w") as f:
            f.write(str(count))
        with open(path) as f:
            have = int(f.read())
    return have


def _backing(addr: int) -> dict[str, int]:
    """KernelPageSize and AnonHugePages (kB) of the mapping holding ``addr`` (/proc/self/smaps)."""
    found: dict[str, int] = {}
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                lo, _, hi = head[0].partition("-")
                try:
                    inside = int(lo, 16) <= addr < int(hi, 16)
                except ValueError:
                    inside = False
                continue
            if inside and head and head[0] in ("KernelPageSize:", "AnonHugePages:"):
                found[head[0].rstrip(":")] = int(head[1])
    return found


def _buffer(backing: str, size: int) -> DmaBuffer:
    if backing == "hugetlb":
        return DmaBuffer(size, hugetlb=True)
    if backing == "thp":
        return DmaBuffer(size, thp=True, populate=False, fill=0)
    return DmaBuffer(size)


def backing_kind(facts: dict[str, int]) -> str:
    """``hugetlb``, ``thp`` or ``4k`` from a mapping's smaps fields."""
    if facts.get("KernelPageSize") == HUGE // 1024:
        return "hugetlb"
    if facts.get("AnonHugePages", 0) >= HUGE // 1024:
        return "thp"
    return "4k" if facts.get("KernelPageSize") == PAGE // 1024 else f"unknown {facts}"


@method
def dma_translation(
    cdev: str, cases: list[dict[str, Any]], dma_mask: int, hugepages: int = 8
) -> dict[str, Any]:
    """Per case: map src/dst at IOVAs, edu-copy a pattern, compare; auto and explicit HWPT."""
    table = CheckTable("dma-translation")
    details: list[dict[str, Any]] = []
    if any(c["backing"] == "hugetlb" for c in cases):
        reserved = _ensure_hugepages(hugepages)
        table.add(
            "hugetlb pages reserved",
            f">= {hugepages}",
            reserved,
            ok=reserved >= hugepages,
            kind=SETUP,
        )
    for mode in ("auto", "explicit"):
        with bound_device(cdev) as (ictx, device):
            edu = Edu(device, dma_mask=dma_mask)
            ioas = ictx.ioas()
            if mode == "auto":
                hwpt = device.attach(ioas)
            else:
                paging = ioas.paging_hwpt(device)
                hwpt = device.attach(paging)
                table.add(
                    f"{mode}: attach returns the allocated HWPT", paging.id, hwpt, kind=EFFECT
                )
            for index, case in enumerate(cases):
                details.append(_translation_case(table, edu, ioas, mode, index, case, hwpt))
    return table.result(cases=details)


def _translation_case(
    table: CheckTable,
    edu: Edu,
    ioas: IOAS,
    mode: str,
    index: int,
    case: dict[str, Any],
    hwpt: int,
) -> dict[str, Any]:
    label = f"{mode}: {case['label']}"
    size = case["map_size"]
    with _buffer(case["backing"], size) as src, _buffer(case["backing"], size) as dst:
        facts = {"src": _backing(src.addr), "dst": _backing(dst.addr)}
        want = case["backing"]
        kinds = f"{backing_kind(facts['src'])}/{backing_kind(facts['dst'])}"
        table.add(f"{label}: backing (src/dst)", f"{want}/{want}", kinds, kind=SETUP)
        ioas.map(src.addr, size, case["src_iova"])
        ioas.map(dst.addr, size, case["dst_iova"])
        try:
            offset, length = case["offset"], case["length"]
            data = pattern(length, index + (0 if mode == "auto" else 100))
            guard = b"\x5a" * size
            src.write(0, bytes(size))
            src.write(offset, data)
            dst.write(0, guard)
            start = time.monotonic()
            edu.copy(case["src_iova"] + offset, case["dst_iova"] + offset, length)
            seconds = time.monotonic() - start
            got = dst.read(0, size)
            copied = got[offset : offset + length]
            table.add(
                f"{label}: bytes copied",
                data.hex()[:16],
                copied.hex()[:16],
                ok=copied == data,
                kind=EFFECT,
            )
            outside = got[:offset] + got[offset + length :]
            kept = outside == guard[: len(outside)]
            table.add(
                f"{label}: nothing written outside",
                "untouched",
                "untouched" if kept else "overwritten",
                kind=EFFECT,
            )
        finally:
            ioas.unmap(case["src_iova"], size)
            ioas.unmap(case["dst_iova"], size)
    return {
        "mode": mode,
        "hwpt": hwpt,
        **case,
        "backing_facts": facts,
        "seconds": round(seconds, 3),
    }


# --- faults ----------------------------------------------------------------------------


def _kmsg_since(marker: str) -> str:
    from guests.agent.system import dmesg

    return str(dmesg(since=marker))


def _mark() -> str:
    from guests.agent.system import dmesg_mark

    return str(dmesg_mark())


def _wait_faults(marker: str, want: int, timeout: float, settle: float) -> str:
    """The kernel log after ``marker`` once it holds ``want`` DMAR faults (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        text = _kmsg_since(marker)
        if len(_DMAR_FAULT.findall(text)) >= want or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(settle)
    return _kmsg_since(marker)


@method
def faults(
    cdev: str, good_iova: int, bad: list[dict[str, Any]], dma_mask: int, settle: float = 0.5
) -> dict[str, Any]:
    """For each bad DMA: map, DMA ok, unmap, DMA again; what memory, edu and dmesg show."""
    table = CheckTable("faults")
    events: list[dict[str, Any]] = []
    with bound_device(cdev) as (ictx, device), ExitStack() as stack:
        edu = Edu(device, dma_mask=dma_mask)
        ioas = ictx.ioas()
        table.succeeds("attach to the IOAS", device.attach, ioas)
        good = stack.enter_context(DmaBuffer(2 * PAGE))
        ioas.map(good.addr, 2 * PAGE, good_iova)
        victim = stack.enter_context(DmaBuffer(PAGE))
        for index, case in enumerate(bad):
            iova, direction = case["iova"], case["direction"]
            label = f"#{index} {direction} @ {iova:#x}"
            ioas.map(victim.addr, PAGE, iova)
            before = round_trip(edu, victim, iova, good, good_iova, 64, index + 10)
            table.add(f"{label}: DMA while mapped", True, before["equal"], kind=EFFECT)
            ioas.unmap(iova, PAGE)
            marker = _mark()
            ram = pattern(PAGE, index + 40)
            victim.write(0, ram)
            staged = pattern(64, index + 80)
            good.write(0, staged)
            edu.dma_to_device(good_iova, 64)
            start = time.monotonic()
            if direction == "write":
                edu.dma_from_device(iova, 64)
            else:
                edu.dma_to_device(iova, 64)
            seconds = time.monotonic() - start
            event: dict[str, Any] = {
                "index": index,
                "iova": iova,
                "direction": direction,
                "edu_seconds": round(seconds, 3),
                "edu_busy_after": edu.busy,
                "edu_irq_status": edu.irq_status(),
                "ram_untouched": victim.read(0, PAGE) == ram,
            }
            good.write(PAGE, bytes(64))
            edu.dma_from_device(good_iova + PAGE, 64)
            device_buffer = good.read(PAGE, 64)
            event["device_got_ram_bytes"] = device_buffer == ram[:64]
            event["device_buffer_kept"] = device_buffer == staged
            event["dmesg"] = _wait_faults(marker, 1, timeout=5.0, settle=settle)
            events.append(event)
    return table.result(events=events)


# --- unmap, step by step (the host reads the VT-d unit between the steps) ------------------


class UnmapSession:
    """edu attached to an IOAS with ``good_iova`` (2 pages) and ``iova`` (1 page) mapped."""

    def __init__(self, cdev: str, dma_mask: int, good_iova: int, iova: int) -> None:
        self.stack = ExitStack()
        try:
            ictx, device = self.stack.enter_context(bound_device(cdev))
            self.edu = Edu(device, dma_mask=dma_mask)
            self.ioas = ictx.ioas()
            device.attach(self.ioas)
            self.good = self.stack.enter_context(DmaBuffer(2 * PAGE))
            self.victim = self.stack.enter_context(DmaBuffer(PAGE))
            self.ioas.map(self.good.addr, 2 * PAGE, good_iova)
            self.ioas.map(self.victim.addr, PAGE, iova)
        except BaseException:
            self.stack.close()
            raise
        self.good_iova, self.iova = good_iova, iova


_UNMAP: UnmapSession | None = None


def _unmap_session() -> UnmapSession:
    if _UNMAP is None:
        raise RuntimeError("no unmap session: call vtd.unmap_open first")
    return _UNMAP


@method
def unmap_open(cdev: str, dma_mask: int, good_iova: int, iova: int) -> dict[str, Any]:
    """Bind, attach and map; whether a DMA through ``iova`` works while it is mapped."""
    global _UNMAP
    unmap_close()
    _UNMAP = session = UnmapSession(cdev, dma_mask, good_iova, iova)
    trip = round_trip(session.edu, session.victim, iova, session.good, good_iova, 64, 7)
    return {"dma_while_mapped": trip["equal"]}


@method
def unmap_apply() -> dict[str, Any]:
    """IOMMU_IOAS_UNMAP of the session's one page: the kernel invalidates its IOTLB entry."""
    session = _unmap_session()
    return {"unmapped": session.ioas.unmap(session.iova, PAGE)}


@method
def unmap_fault(direction: str, settle: float = 0.5) -> dict[str, Any]:
    """One DMA through the unmapped page; what RAM, edu and dmesg show."""
    session = _unmap_session()
    edu, good = session.edu, session.good
    marker = _mark()
    ram = pattern(PAGE, 41)
    session.victim.write(0, ram)
    good.write(0, pattern(64, 81))
    edu.dma_to_device(session.good_iova, 64)
    if direction == "write":
        edu.dma_from_device(session.iova, 64)
    else:
        edu.dma_to_device(session.iova, 64)
    return {
        "edu_busy_after": edu.busy,
        "ram_untouched": session.victim.read(0, PAGE) == ram,
        "dmesg": _wait_faults(marker, 1, timeout=5.0, settle=settle),
    }


@method
def unmap_close() -> dict[str, Any]:
    """Unmap what is left, detach, close (in that order, by the session's ExitStack)."""
    global _UNMAP
    session, _UNMAP = _UNMAP, None
    if session is None:
        return {"closed": False}
    session.stack.close()
    return {"closed": True}


# --- hot-unplug with a live paging domain ---------------------------------------------------


class PlugSession:
    """One iommufd; edu bound to it and attached to an IOAS that maps a source page at
    ``iova`` and a destination page after it."""

    def __init__(self, dma_mask: int) -> None:
        self.ictx = IommuFD()
        self.dma_mask = dma_mask
        self.src, self.dst = DmaBuffer(PAGE), DmaBuffer(PAGE)
        self.device: VfioDevice | None = None
        self.ioas: IOAS | None = None
        self.iova = 0

    def attach(self, cdev: str, iova: int) -> dict[str, Any]:
        """Bind ``cdev``, attach it to a fresh IOAS mapping the pages at ``iova``; a DMA
        copies the source page to the destination page through it."""
        self.device = VfioDevice(cdev)
        self.dev_id = self.device.bind(self.ictx)
        self.ioas = self.ictx.ioas()
        self.device.attach(self.ioas)
        self.ioas.map(self.src.addr, PAGE, iova)
        self.ioas.map(self.dst.addr, PAGE, iova + PAGE)
        self.edu = Edu(self.device, dma_mask=self.dma_mask)
        self.iova = iova
        return round_trip(self.edu, self.src, iova, self.dst, iova + PAGE, 64, 3)

    def close(self) -> None:
        try:
            self.ictx.close(destroy=False)
        finally:
            if self.device is not None:
                self.device.close()
            self.src.close()
            self.dst.close()


_PLUG: PlugSession | None = None


def _plug() -> PlugSession:
    if _PLUG is None:
        raise RuntimeError("no hot-plug session: call vtd.plug_open first")
    return _PLUG


@method
def plug_open(cdev: str, dma_mask: int, iova: int) -> dict[str, Any]:
    """A new session with ``cdev`` attached and mapped at ``iova``; the DMA's result."""
    global _PLUG
    plug_close()
    _PLUG = PlugSession(dma_mask)
    return _PLUG.attach(cdev, iova)


@method
def plug_reattach(cdev: str, iova: int) -> dict[str, Any]:
    """The re-added device into the same iommufd, a fresh IOAS, the DMA's result."""
    return _plug().attach(cdev, iova)


@method
def plug_release() -> dict[str, Any]:
    """Close the device fd only (what vfio-pci asks of its user during a removal)."""
    session = _plug()
    assert session.device is not None
    session.device.close()
    session.device = None
    return {"dev_id": session.dev_id}


def _errno_name_of(call: Callable[[], Any]) -> str:
    """``success`` or the errno name ``call`` fails with."""
    try:
        call()
    except IoctlError as exc:
        return errno_name(exc.errno or 0)
    return "success"


@method
def after_unplug() -> dict[str, str]:
    """The removed device's objects (errno names): its ID is gone (a HWPT for it:
    ENOENT); the IOAS it was attached to unmaps and is destroyed (no reference left)."""
    session = _plug()
    ioas, session.ioas = session.ioas, None
    assert ioas is not None
    return {
        "HWPT for the removed device": _errno_name_of(lambda: ioas.paging_hwpt(session.dev_id)),
        "unmap the IOAS": _errno_name_of(ioas.unmap_all),
        "destroy the IOAS": _errno_name_of(ioas.destroy),
    }


@method
def plug_stale_probe(old_iova: int) -> dict[str, Any]:
    """edu loads 64 bytes through the current mapping and writes them to ``old_iova + PAGE``
    (the destination before a reset, unmapped now): whether they reached the destination
    page, and the kernel's DMAR fault lines."""
    session = _plug()
    marker = _mark()
    data = pattern(64, 99)
    session.src.write(0, data)
    session.dst.write(0, bytes(64))
    session.edu.dma_to_device(session.iova, 64)
    session.edu.dma_from_device(old_iova + PAGE, 64)
    return {
        "landed": session.dst.read(0, 64) == data,
        "dmesg": _wait_faults(marker, 1, timeout=5.0, settle=0.5),
    }


@method
def plug_close() -> dict[str, Any]:
    """Close the session (the kernel frees what is left)."""
    global _PLUG
    session, _PLUG = _PLUG, None
    if session is None:
        return {"closed": False}
    session.close()
    return {"closed": True}


# --- nesting ---------------------------------------------------------------------------


@method
def nesting(cdev: str, dma_mask: int, s1_iova: int, gpa: int, table_gpa: int) -> dict[str, Any]:
    """Nest parent + nested HWPT (VTD_S1 over harness.pgtable tables); DMA through it if allowed."""
    from harness.pgtable import X86PageTable

    out: dict[str, Any] = {}
    with bound_device(cdev) as (ictx, device), ExitStack() as stack:
        edu = Edu(device, dma_mask=dma_mask)
        ioas = ictx.ioas()
        data = stack.enter_context(DmaBuffer(2 * PAGE))
        tables = stack.enter_context(DmaBuffer(16 * PAGE))
        pgtable = X86PageTable(16 * PAGE, table_gpa, levels=4, haw=48)
        pgtable.map(s1_iova, gpa, 2 * PAGE)
        tables.write(0, bytes(pgtable.memory))
        cfg = pgtable.hw_config
        out["s1"] = {
            "fsptptr": cfg.fsptptr,
            "fspm": cfg.fspm,
            "levels": cfg.levels,
            "walk": repr(pgtable.walk(s1_iova + 0x10)),
        }
        ioas.map(data.addr, 2 * PAGE, gpa)
        ioas.map(tables.addr, 16 * PAGE, table_gpa)
        s1 = iu.iommu_hwpt_vtd_s1(flags=0, pgtbl_addr=cfg.fsptptr, addr_width=48)
        parent = outcome(lambda: ioas.paging_hwpt(device, nest_parent=True).id)
        out["nest_parent"] = parent
        if parent["ok"]:
            nested = outcome(
                lambda: (
                    ictx.hwpt_alloc(
                        device, parent["value"], data_type=iu.IOMMU_HWPT_DATA_VTD_S1, data=s1
                    ).id
                )
            )
            out["nested"] = nested
            if nested["ok"]:
                out["attach_nested"] = outcome(lambda: device.attach(nested["value"]))
                if out["attach_nested"]["ok"]:
                    out["dma"] = _nested_dma(edu, data, s1_iova)
        plain = ioas.paging_hwpt(device)
        out["nested_over_plain_paging"] = outcome(
            lambda: ictx.hwpt_alloc(device, plain, data_type=iu.IOMMU_HWPT_DATA_VTD_S1, data=s1).id
        )
        out["vtd_s1_data_over_ioas"] = outcome(
            lambda: (
                ictx.hwpt_alloc(device, ioas.id, data_type=iu.IOMMU_HWPT_DATA_VTD_S1, data=s1).id
            )
        )
    return out


def _nested_dma(edu: Edu, data: DmaBuffer, s1_iova: int) -> dict[str, Any]:
    payload = pattern(64, 7)
    data.write(0, payload)
    data.write(PAGE, bytes(64))
    edu.dma_to_device(s1_iova, 64)
    edu.dma_from_device(s1_iova + PAGE, 64)
    return {"equal": data.read(PAGE, 64) == payload}


# --- PASID -----------------------------------------------------------------------------


#: IOVAs of the PASID scenario: both IOASes map their own buffers at the same two IOVAs
PASID_SRC_IOVA, PASID_DST_IOVA = 0x100000, 0x200000


def which_table(
    edu: Edu,
    a: tuple[DmaBuffer, DmaBuffer],
    b: tuple[DmaBuffer, DmaBuffer],
    seed: int,
    length: int = 128,
) -> str:
    """Untagged edu copy src -> dst IOVA; ``A`` or ``B``: whose buffers the bytes moved between.

    IOAS A and IOAS B map different buffers at the same IOVAs, so where the copy lands
    shows which page table translated the DMA; anything else is described.
    """
    want_a, want_b = pattern(length, seed), pattern(length, seed + 1)
    a[0].write(0, want_a)
    b[0].write(0, want_b)
    a[1].write(0, bytes(length))
    b[1].write(0, bytes(length))
    edu.copy(PASID_SRC_IOVA, PASID_DST_IOVA, length)
    got_a, got_b = a[1].read(0, length), b[1].read(0, length)
    if got_a == want_a and got_b == bytes(length):
        return "A"
    if got_b == want_b and got_a == bytes(length):
        return "B"
    return f"neither (A dst {got_a[:8].hex()}, B dst {got_b[:8].hex()})"


@method
def pasid(cdev: str, bdf: str, dma_mask: int, pasid: int = 1) -> dict[str, Any]:
    """The RID on HWPT A, PASID ``pasid`` (and 2^20) on HWPT B; answers, PASID table, DMA.

    Returns observations only (outcomes, the PASID-table entries debugfs shows, and which
    HWPT an untagged DMA went through before, during and after the PASID attachments).
    """
    out: dict[str, Any] = {}
    too_large = 1 << 20
    with open(f"/sys/bus/pci/devices/{bdf}/config", "rb") as f:
        out["config_size"] = len(f.read())
    with bound_device(cdev) as (ictx, device), ExitStack() as stack:
        out["hw_info"] = _hw_info(ictx, device)
        edu = Edu(device, dma_mask=dma_mask)
        bufs = {name: stack.enter_context(DmaBuffer(PAGE)) for name in ("sa", "da", "sb", "db")}
        a, b = (bufs["sa"], bufs["da"]), (bufs["sb"], bufs["db"])
        ioas_a, ioas_b = ictx.ioas(), ictx.ioas()
        for ioas, (src, dst) in ((ioas_a, a), (ioas_b, b)):
            ioas.map(src.addr, PAGE, PASID_SRC_IOVA)
            ioas.map(dst.addr, PAGE, PASID_DST_IOVA)
        plain = ioas_b.paging_hwpt(device)
        out["attach_pasid_plain_hwpt"] = outcome(lambda: device.attach(plain, pasid=pasid))
        hwpt_a = outcome(lambda: ioas_a.paging_hwpt(device, flags=iu.IOMMU_HWPT_ALLOC_PASID).id)
        hwpt_b = outcome(lambda: ioas_b.paging_hwpt(device, flags=iu.IOMMU_HWPT_ALLOC_PASID).id)
        out["alloc_pasid_hwpt_a"], out["alloc_pasid_hwpt_b"] = hwpt_a, hwpt_b
        if not (hwpt_a["ok"] and hwpt_b["ok"]):
            return out
        out["attach_rid"] = outcome(lambda: device.attach(hwpt_a["value"]))
        if not out["attach_rid"]["ok"]:
            return out
        out["dma_before"] = which_table(edu, a, b, 3)
        out["attach_pasid"] = outcome(lambda: device.attach(hwpt_b["value"], pasid=pasid))
        out["attach_pasid_too_large"] = outcome(
            lambda: device.attach(hwpt_b["value"], pasid=too_large)
        )
        out["pasid_entries"] = present_pasids(bdf)
        out["dma_during"] = which_table(edu, a, b, 5)
        out["detach_pasid"] = outcome(lambda: device.detach(pasid=pasid))
        out["detach_pasid_too_large"] = outcome(lambda: device.detach(pasid=too_large))
        out["dma_after"] = which_table(edu, a, b, 7)
        out["detach_pasid_not_attached"] = outcome(lambda: device.detach(pasid=pasid + 1))
    return out


def present_pasids(bdf: str) -> list[int] | str:
    """PASIDs with a present PASID-table entry for ``bdf`` (debugfs dmar_translation_struct)."""
    from guests.agent.system import debugfs_read

    try:
        text = str(debugfs_read("iommu/intel/dmar_translation_struct"))
    except OSError as exc:
        return f"unreadable: {exc}"
    short = bdf.split(":", 1)[1]
    found = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) >= 4 and fields[0] == short:
            found.append(int(fields[3]))
    return sorted(found)


# --- vfio cdev edge cases (seed 004) -----------------------------------------------------


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


class ReadOnlyPage:
    """One anonymous page holding ``data`` that the kernel can read but not write (EFAULT)."""

    def __init__(self, data: bytes) -> None:
        self.map = mmap.mmap(-1, PAGE)
        self.map[: len(data)] = data
        holder = ctypes.c_char.from_buffer(self.map)
        self.addr = ctypes.addressof(holder)
        del holder
        libc = _libc()
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        if libc.mprotect(ctypes.c_void_p(self.addr), PAGE, mmap.PROT_READ) != 0:
            raise OSError(ctypes.get_errno(), "mprotect(PROT_READ)")

    def close(self) -> None:
        libc = _libc()
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        libc.mprotect(ctypes.c_void_p(self.addr), PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
        self.map.close()


def _raw_bind(device: VfioDevice, arg: bytes | int) -> int:
    """VFIO_DEVICE_BIND_IOMMUFD with a hand-made argument: bytes, or a user address.

    An address goes through libc's ioctl (``fcntl.ioctl`` takes only C ints by value).
    """
    name = "VFIO_DEVICE_BIND_IOMMUFD"
    if not isinstance(arg, int):
        device.chan.call(name, vu.VFIO_DEVICE_BIND_IOMMUFD, bytearray(arg))
        return 0
    libc = _libc()
    libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
    if libc.ioctl(device.fd, vu.VFIO_DEVICE_BIND_IOMMUFD, ctypes.c_void_p(arg)) != 0:
        raise IoctlError(name, ctypes.get_errno(), f"arg=<user address {arg:#x}>")
    return 0


def _bind_bytes(
    iommufd: int, *, argsz: int | None = None, flags: int = 0, tail: bytes = b""
) -> bytes:
    size = ctypes.sizeof(vu.vfio_device_bind_iommufd)
    cmd = vu.vfio_device_bind_iommufd(
        argsz=size + len(tail) if argsz is None else argsz, flags=flags, iommufd=iommufd
    )
    return bytes(cmd) + tail


@method
def cdev_edge_cases(cdev: str, dma_mask: int) -> dict[str, Any]:
    """Seed 004's error paths of bind / attach / detach on the real cdev, then a healthy DMA."""
    t = CheckTable("cdev-edge-cases")
    bind_min = 16  # offsetofend(vfio_device_bind_iommufd, out_devid)
    attach_min = 12  # offsetofend(vfio_device_attach_iommufd_pt, pt_id)
    detach_min = 8  # offsetofend(vfio_device_detach_iommufd_pt, flags)
    with IommuFD() as ictx, ExitStack() as stack:
        ioas = ictx.ioas()
        device = VfioDevice(cdev)
        stack.callback(device.close)
        t.errno("attach before bind", errno.EINVAL, device.attach, ioas)
        t.errno("detach before bind", errno.EINVAL, device.detach)
        t.errno("bind argsz 0", errno.EINVAL, device.bind, ictx, argsz=0)
        t.errno(
            f"bind argsz {bind_min - 4} (< minsz {bind_min})",
            errno.EINVAL,
            device.bind,
            ictx,
            argsz=bind_min - 4,
        )
        t.errno("bind flags 0x80000000", errno.EINVAL, device.bind, ictx, flags=0x80000000)
        t.errno("bind flags 0x2 (unknown)", errno.EINVAL, device.bind, ictx, flags=0x2)
        t.errno("bind iommufd -1", errno.EINVAL, device.bind, -1)
        t.errno("bind iommufd -100", errno.EINVAL, device.bind, -100)
        with open("/dev/null", "rb") as null:
            t.errno("bind iommufd = /dev/null", errno.EBADFD, device.bind, null.fileno())
        t.errno("bind iommufd = closed fd", errno.EBADF, device.bind, _closed_fd())
        t.errno(
            "bind argsz > struct, non-zero tail",
            errno.E2BIG,
            _raw_bind,
            device,
            _bind_bytes(ictx.fd, tail=b"\x01\0\0\0\0\0\0\0"),
        )
        page = ReadOnlyPage(_bind_bytes(ictx.fd))
        try:
            t.errno("bind with read-only out_devid", errno.EFAULT, _raw_bind, device, page.addr)
        finally:
            page.close()
        t.errno("attach after failed (EFAULT) bind", errno.EINVAL, device.attach, ioas)
        succeeds_effect(t, "bind on the same fd after EFAULT", device.bind, ictx)
        t.errno("bind twice", errno.EINVAL, device.bind, ictx)
        other = VfioDevice(cdev)
        try:
            t.errno("bind a second fd while bound", errno.EINVAL, other.bind, ictx)
        finally:
            other.close()
        succeeds_effect(t, "detach when not attached", device.detach)
        t.errno(
            f"attach argsz {attach_min - 4} (< minsz {attach_min})",
            errno.EINVAL,
            device.attach,
            ioas,
            argsz=attach_min - 4,
        )
        t.errno("attach flags 0x2 (unknown)", errno.EINVAL, device.attach, ioas, flags=0x2)
        t.errno("attach pt_id 0 (IOMMUFD_INVALID_ID)", errno.ENOENT, device.attach, 0)
        t.errno("attach pt_id 0xfffff (no such object)", errno.ENOENT, device.attach, 0xFFFFF)
        t.errno(
            "attach pt_id = the device's own dev_id", errno.EINVAL, device.attach, device.dev_id
        )
        t.errno(
            f"detach argsz {detach_min - 4} (< minsz {detach_min})",
            errno.EINVAL,
            device.detach,
            argsz=detach_min - 4,
        )
        t.errno("detach flags 0x2 (unknown)", errno.EINVAL, device.detach, flags=0x2)
        t.errno("attach with PASID flag, argsz 12 (< 16 with pasid)", errno.EINVAL,
                device.attach, ioas, pasid=1, argsz=12)  # fmt: skip
        t.errno("detach with PASID flag, argsz 8 (< 12 with pasid)", errno.EINVAL,
                device.detach, pasid=1, argsz=8)  # fmt: skip
        succeeds_effect(t, "attach after the errors", device.attach, ioas)
        t.succeeds("detach after attach", device.detach)
        succeeds_effect(t, "detach again (not attached)", device.detach)
        device.close()
        t.add("after close, reopen: bind, attach, DMA", "ok", _healthy(cdev, dma_mask, 21))
        efault_again = VfioDevice(cdev)
        page = ReadOnlyPage(_bind_bytes(ictx.fd))
        try:
            t.errno(
                "bind with read-only out_devid (fresh fd)",
                errno.EFAULT,
                _raw_bind,
                efault_again,
                page.addr,
            )
        finally:
            page.close()
            efault_again.close()
        t.add("after EFAULT + close, reopen: bind, attach, DMA", "ok", _healthy(cdev, dma_mask, 22))
    return t.result()


def _closed_fd() -> int:
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    return fd


def _healthy(cdev: str, dma_mask: int, seed: int) -> str:
    """``ok`` when a fresh fd binds, attaches and moves bytes; else what failed."""
    try:
        with bound_device(cdev) as (ictx, device), DmaBuffer(PAGE) as src, DmaBuffer(PAGE) as dst:
            ioas = ictx.ioas()
            ioas.map(src.addr, PAGE, 0x300000)
            ioas.map(dst.addr, PAGE, 0x400000)
            device.attach(ioas)
            result = round_trip(
                Edu(device, dma_mask=dma_mask), src, 0x300000, dst, 0x400000, 512, seed
            )
            return "ok" if result["equal"] else f"bytes differ at {result['first_bad']}"
    except IoctlError as err:
        return str(err)


# --- type1 vs iommufd compat (seed 002) --------------------------------------------------


class OpLog:
    """The operations of one container sequence, each with its result or errno."""

    def __init__(self) -> None:
        self.ops: list[dict[str, Any]] = []

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            value = fn()
        except IoctlError as err:
            self.ops.append({"op": name, "ok": False, "errno": err.errno_name})
            return None
        self.ops.append({"op": name, "ok": True, "value": value})
        return value

    def note(self, name: str, value: Any) -> None:
        self.ops.append({"op": name, "ok": True, "value": value})


_EXTENSIONS = {
    "VFIO_TYPE1_IOMMU": vu.VFIO_TYPE1_IOMMU,
    "VFIO_SPAPR_TCE_IOMMU": vu.VFIO_SPAPR_TCE_IOMMU,
    "VFIO_TYPE1v2_IOMMU": vu.VFIO_TYPE1v2_IOMMU,
    "VFIO_DMA_CC_IOMMU": vu.VFIO_DMA_CC_IOMMU,
    "VFIO_TYPE1_NESTING_IOMMU(6)": 6,
    "VFIO_NOIOMMU_IOMMU": vu.VFIO_NOIOMMU_IOMMU,
    "VFIO_UNMAP_ALL": vu.VFIO_UNMAP_ALL,
    "VFIO_UPDATE_VADDR": vu.VFIO_UPDATE_VADDR,
}


def _info(container: VfioContainer) -> dict[str, Any]:
    fixed = ctypes.sizeof(vu.vfio_iommu_type1_info)
    short = vu.decode_type1_info(container.info_raw(fixed))
    raw = container.info_raw()
    info = vu.decode_type1_info(raw)
    caps = (
        list(vu.iter_capabilities(raw, info.cap_offset, fixed_size=fixed))
        if info.cap_offset
        else []
    )
    ends = [c.next or info.argsz for c in caps]
    return {
        "argsz_needed": short.argsz,
        "argsz": info.argsz,
        "flags": info.flags,
        "iova_pgsizes": info.iova_pgsizes,
        "cap_ids": [c.id for c in caps],
        "cap_sizes": {str(c.id): end - c.offset for c, end in zip(caps, ends, strict=True)},
        "iova_ranges": [list(r) for r in info.iova_ranges or []],
        "dma_avail": info.dma_avail,
        "migration": info.migration is not None,
    }


def _dma_probe(edu: Edu, src_iova: int, dst: DmaBuffer, dst_iova: int, seed: int) -> dict[str, Any]:
    """edu copies 64 bytes src_iova -> dst_iova; whether the pattern arrived in ``dst``.

    edu's buffer is scrubbed first (a DMA from ``dst`` holding other bytes), so a read of
    ``src_iova`` that faults cannot pass off an earlier probe's bytes as arrived.
    """
    dst.write(0, b"\x5a" * 64)
    edu.dma_to_device(dst_iova, 64)
    dst.write(0, b"\xa5" * 64)
    edu.dma_to_device(src_iova, 64)
    edu.dma_from_device(dst_iova, 64)
    return {"arrived": dst.read(0, 64) == pattern(64, seed)}


@method
def container_sequence(
    backend: str, iommu_type: int, group: int, bdf: str, dma_mask: int
) -> dict[str, Any]:
    """Seed 002's container operations through type1 (/dev/vfio/vfio) or iommufd compat."""
    log = OpLog()
    a_iova, b_iova, sink_iova = 0x100000, 0x200000, 0x300000
    size_a, size_b = 16 * PAGE, 4 * PAGE
    all_flag = vu.VFIO_DMA_UNMAP_FLAG_ALL
    with ExitStack() as stack:
        if backend == "type1":
            container = stack.enter_context(VfioContainer())
            target: VfioContainer | IommuFD = container
        else:
            ictx = stack.enter_context(IommuFD())
            container = VfioContainer.over(ictx)
            target = ictx
        log.run("VFIO_GET_API_VERSION", container.api_version)
        _extensions(log, container, "no group")
        log.run("IOMMU_GET_INFO (no group)", lambda: _info(container))
        grp = stack.enter_context(VfioGroup(group))
        log.run("GROUP_GET_STATUS (before)", grp.status)
        log.run("SET_IOMMU before SET_CONTAINER", lambda: container.set_iommu(iommu_type))
        log.run("GROUP_SET_CONTAINER", lambda: grp.set_container(target))
        log.run("GROUP_GET_STATUS (after)", grp.status)
        log.run("SET_IOMMU bogus type 99", lambda: container.set_iommu(99))
        log.run(f"SET_IOMMU {iommu_type}", lambda: container.set_iommu(iommu_type))
        log.run(f"SET_IOMMU {iommu_type} again", lambda: container.set_iommu(iommu_type))
        _extensions(log, container, "set")
        log.run("IOMMU_GET_INFO (set)", lambda: _info(container))
        device = grp.device(bdf)
        stack.callback(device.close)
        edu = Edu(device, dma_mask=dma_mask)
        cc = vu.VFIO_DMA_CC_IOMMU
        log.run(
            "CHECK_EXTENSION VFIO_DMA_CC_IOMMU (device open)", lambda: container.check_extension(cc)
        )
        a = stack.enter_context(DmaBuffer(size_a))
        b = stack.enter_context(DmaBuffer(size_b))
        spare = stack.enter_context(DmaBuffer(PAGE))
        sink = stack.enter_context(DmaBuffer(PAGE))
        for i in range(16):
            a.write(i * PAGE, pattern(64, 50 + i))

        def dma(label: str, page: int) -> None:
            src = a_iova + page * PAGE
            log.run(
                f"DMA A[{page}] -> sink ({label})",
                lambda: _dma_probe(edu, src, sink, sink_iova, 50 + page),
            )

        log.run("MAP_DMA A", lambda: container.map_dma(a.addr, a_iova, size_a))
        log.run("MAP_DMA B", lambda: container.map_dma(b.addr, b_iova, size_b))
        log.run("MAP_DMA sink", lambda: container.map_dma(sink.addr, sink_iova, PAGE))
        log.run(
            "MAP_DMA overlapping A", lambda: container.map_dma(spare.addr, a_iova + 4 * PAGE, PAGE)
        )
        log.run("MAP_DMA unaligned size", lambda: container.map_dma(spare.addr, 0x500000, 100))
        log.run(
            "MAP_DMA flags 0x80", lambda: container.map_dma(spare.addr, 0x500000, PAGE, flags=0x80)
        )
        dma("mapped", 0)
        dma("mapped", 5)
        log.run("IOMMU_GET_INFO (3 mappings)", lambda: _info(container))
        log.run(
            "UNMAP_DMA middle of A (pages 4..7)",
            lambda: container.unmap_dma(a_iova + 4 * PAGE, 4 * PAGE),
        )
        dma("after middle unmap", 5)
        dma("after middle unmap", 9)
        log.run("UNMAP_DMA first page of A", lambda: container.unmap_dma(a_iova, PAGE))
        dma("after first-page unmap", 1)
        log.run("UNMAP_DMA B exactly", lambda: container.unmap_dma(b_iova, size_b))
        log.run("UNMAP_DMA nothing mapped", lambda: container.unmap_dma(0x600000, PAGE))
        log.run("UNMAP_DMA unaligned", lambda: container.unmap_dma(b_iova + 1, PAGE))
        log.run("UNMAP_DMA ALL with iova", lambda: container.unmap_dma(a_iova, 0, flags=all_flag))
        log.run("IOMMU_GET_INFO (before UNMAP_ALL)", lambda: _info(container))
        log.run("UNMAP_DMA ALL", container.unmap_all)
        log.run("UNMAP_DMA ALL again", container.unmap_all)
        log.run("IOMMU_GET_INFO (after UNMAP_ALL)", lambda: _info(container))
        log.run("MAP_DMA sink again", lambda: container.map_dma(sink.addr, sink_iova, PAGE))
        dma("A unmapped", 10)
        if backend != "type1":
            log.note("compat IOAS (IOMMU_VFIO_IOAS_GET)", outcome(ictx.vfio_ioas_get))
        device.close()
        log.run("GROUP_UNSET_CONTAINER", grp.unset_container)
    return {"backend": backend, "iommu_type": iommu_type, "ops": log.ops}


def _extensions(log: OpLog, container: VfioContainer, when: str) -> None:
    for name, ext in _EXTENSIONS.items():
        log.run(f"CHECK_EXTENSION {name} ({when})", partial(container.check_extension, ext))
