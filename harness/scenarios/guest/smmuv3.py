"""Guest halves of the SMMUv3 nesting scenarios: iommufd + vfio + edu inside an arm64 guest.

The guest plays the VMM: it binds edu's vfio cdev to iommufd, allocates a nest-parent
(stage 2) HWPT over an IOAS whose "IOVAs" are IPAs, a vIOMMU, a vDEVICE with a virtual
SID and a vEVENTQ, and then nested HWPTs from STEs built by ``harness.smmuv3``.  Stage-1
page tables (``harness.pgtable``) and CD tables live in one user buffer mapped at
``IPA_BASE`` in the IOAS, so QEMU's emulated SMMU walks IOVA -> stage 1 -> IPA -> stage 2
-> memory.  State lives in one ``Session`` per agent between calls, so the host half can
open a QEMU trace window around each step.  Every function returns JSON-able data:
``rows`` (check rows) and facts; harness imports are inside functions so that a missing
package shows up as that call's error, not as an agent that fails to start.
"""

from __future__ import annotations

import os
import select
import time
from typing import Any

from guests.agent.server import method
from harness.scenarios.guest._patterns import DMA_LENGTH, pattern

IPA_BASE = 0x4000_0000
BUFFER_SIZE = 4 << 20
CD_OFFSET = 0x0
CD2_OFFSET = 0x10000
PT2_OFFSET = 0x40000
PT2_SIZE = 0x40000
PT_OFFSET = 0x100000
PT_SIZE = 0x100000
DATA_OFFSET = 0x200000
DATA_SLOT = 0x10000
UNMAPPED_IPA = IPA_BASE + 0x1000_0000
"""An IPA outside the IOAS: a stage-1 mapping to it faults at stage 2."""
FAULT_DMA_LENGTH = 4
"""QEMU retries a faulting DMA in 4-byte accesses, each one an event: fault with 4 bytes."""

Row = dict[str, Any]


def _row(
    name: str, expected: Any, got: Any, ok: bool | None = None, note: str = "", kind: str = "effect"
) -> Row:
    """A check row; ``kind`` is "effect" (observed behaviour of the system) or "setup"."""
    return {
        "name": name,
        "expected": expected,
        "got": got,
        "ok": expected == got if ok is None else ok,
        "note": note,
        "kind": kind,
    }


def _succeeded(name: str, err: int, note: str = "") -> Row:
    """A setup row expecting a call to succeed; ``err`` is its errno (0: it did)."""
    return _row(name, "success", os.strerror(err) if err else "success", note=note, kind="setup")


def stream_id(bdf: str) -> int:
    """The physical StreamID QEMU's virt IORT gives a PCI function: its requester ID."""
    _, bus, devfn = bdf.rsplit(":", 2) if bdf.count(":") == 2 else ("0", *bdf.split(":"))
    dev, fn = devfn.split(".")
    return int(bus, 16) << 8 | int(dev, 16) << 3 | int(fn, 16)


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        return f"<{exc.strerror}>"


def _kmsg_tail(pattern_words: tuple[str, ...]) -> list[str]:
    from guests.agent.system import _kmsg_records

    return [line for line in _kmsg_records() if any(w in line for w in pattern_words)]


def errno_text(err: int) -> str:
    """``EINVAL`` for 22, ``success`` for 0 (the driver's spelling)."""
    from harness.driver import errno_name

    return errno_name(err)


def _errno_of(fn: Any, *args: Any, **kwargs: Any) -> tuple[int, Any]:
    from harness.driver import IoctlError

    try:
        return 0, fn(*args, **kwargs)
    except IoctlError as exc:
        return exc.errno or 0, None


# -- capabilities (also the stock-path check) ----------------------------------------------


@method
def capabilities(cdev: str) -> dict[str, Any]:
    """GET_HW_INFO, then a nest parent and a vIOMMU attempt; what decides them, as data."""
    from harness.driver import IommuFD, VfioDevice, errno_name
    from harness.smmuv3 import decode_hw_info
    from harness.uapi import iommufd as uapi

    result: dict[str, Any] = {
        "tainted": int(_read_text("/proc/sys/kernel/tainted").strip() or 0),
        "acpi_log": _kmsg_tail(("IORT", "Table Upgrade", "ACPI OVERRIDE", "ACPI table found")),
    }
    try:
        with open("/sys/firmware/acpi/tables/IORT", "rb") as f:
            result["iort"] = f.read()
    except OSError as exc:
        result["iort"] = None
        result["iort_error"] = exc.strerror
    with VfioDevice(cdev) as dev, IommuFD() as ictx:
        dev_id = dev.bind(ictx)
        info = ictx.hw_info(dev_id)
        result["hw_info_type"] = info.data_type
        decoded = decode_hw_info(info.data[:40])
        result["idrs"] = decoded.regs.encode()
        result["hw_info_flags"] = decoded.flags
        ioas = ictx.ioas()
        err, s2 = _errno_of(ioas.paging_hwpt, dev_id, nest_parent=True)
        result["nest_parent_errno"] = errno_name(err)
        if s2 is not None:
            err, _ = _errno_of(ictx.viommu, dev_id, s2, uapi.IOMMU_VIOMMU_TYPE_ARM_SMMUV3)
            result["viommu_errno"] = errno_name(err)
        else:
            result["viommu_errno"] = "not tried (no nest parent)"
    return result


# -- the nesting session -------------------------------------------------------------------


class Session:
    """One device bound to iommufd with a nest parent, vIOMMU, vDEVICE, vEVENTQ and memory."""

    def __init__(self, cdev: str, bdf: str, vsid: int, dma_mask: int, veventq_depth: int) -> None:
        from harness.devices.edu import Edu
        from harness.driver import DmaBuffer, IommuFD, VfioDevice
        from harness.smmuv3 import decode_hw_info
        from harness.uapi import iommufd as uapi

        self.bdf = bdf
        self.sid = stream_id(bdf)
        self.vsid = vsid
        self.nested: Any = None
        self.config = ""
        self.buf = DmaBuffer(BUFFER_SIZE, fill=0)
        self.dev = VfioDevice(cdev)
        self.ictx = IommuFD()
        try:
            self.dev_id = self.dev.bind(self.ictx)
            self.hw_info = decode_hw_info(self.ictx.hw_info(self.dev_id).data[:40])
            self.ioas = self.ictx.ioas()
            self.s2 = self.ioas.paging_hwpt(self.dev_id, nest_parent=True)
            self.viommu = self.ictx.viommu(self.dev_id, self.s2, uapi.IOMMU_VIOMMU_TYPE_ARM_SMMUV3)
            self.vdev = self.viommu.vdevice(self.dev_id, vsid)
            self.events = self.viommu.event_queue(uapi.IOMMU_VEVENTQ_TYPE_ARM_SMMUV3, veventq_depth)
            self.ioas.map(self.buf.addr, BUFFER_SIZE, IPA_BASE)
            self.edu = Edu(self.dev, dma_mask=dma_mask)
            self.dma_mask = dma_mask
        except BaseException:
            self.close()
            raise

    # memory ---------------------------------------------------------------------------
    def write(self, ipa: int, data: bytes) -> None:
        self.buf.write(ipa - IPA_BASE, data)

    def read(self, ipa: int, length: int) -> bytes:
        return self.buf.read(ipa - IPA_BASE, length)

    def zero(self, ipa: int, length: int) -> None:
        self.write(ipa, bytes(length))

    @staticmethod
    def data_ipa(slot: int) -> int:
        return IPA_BASE + DATA_OFFSET + slot * DATA_SLOT

    def page_table(self, granule: int, offset: int = PT_OFFSET, size: int = PT_SIZE) -> Any:
        """A fresh stage-1 table whose memory is ``offset`` in the buffer (zeroed first)."""
        from harness.pgtable import ArmPageTable

        self.zero(IPA_BASE + offset, size)
        return ArmPageTable(size, IPA_BASE + offset, granule=granule, t0sz=16, ips=44)

    def sync(self, table: Any) -> None:
        """Copy the table's changed bytes to where the SMMU reads them."""
        for dirty in table.dirty_ranges():
            start = dirty.offset
            self.write(table.base + start, bytes(table.memory[start : start + dirty.length]))
        table.mark_clean()

    def write_cd_table(
        self, cds: dict[int, Any], base: int, s1cdmax: int = 0, s1fmt: int = 0
    ) -> Any:
        from harness.smmuv3 import build_cd_table

        table = build_cd_table(cds, base=base, s1cdmax=s1cdmax, s1fmt=s1fmt)
        low, image = table.memory.flatten()
        self.write(low, image)
        return table

    # iommufd ----------------------------------------------------------------------------
    def invalidate(self, commands: list[Any], *, entry_len: int = 16) -> int:
        from harness.uapi import iommufd as uapi

        data = b"".join(c.encode() if hasattr(c, "encode") else bytes(c) for c in commands)
        return int(
            self.viommu.invalidate(
                data, uapi.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, entry_len=entry_len
            )
        )

    def sync_config(self) -> None:
        """CFGI_CD_ALL for our vSID: the SMMU re-reads STE-referenced CDs (QEMU caches them)."""
        from harness.smmuv3 import make_command

        self.invalidate([make_command("CFGI_CD_ALL", sid=self.vsid)])

    def attach_vste(self, vste: bytes, label: str) -> tuple[int, str]:
        """A nested HWPT from ``vste`` attached in place of the current one: (errno, stage)."""
        from harness.driver import IoctlError
        from harness.uapi import iommufd as uapi

        try:
            hwpt = self.viommu.nested(self.dev_id, uapi.IOMMU_HWPT_DATA_ARM_SMMUV3, vste)
        except IoctlError as exc:
            return exc.errno or 0, "IOMMU_HWPT_ALLOC"
        try:
            self.dev.attach(hwpt)
        except IoctlError as exc:
            hwpt.close()
            return exc.errno or 0, "VFIO_DEVICE_ATTACH_IOMMUFD_PT"
        if self.nested is not None:
            self.nested.close()
        self.nested = hwpt
        self.config = label
        return 0, ""

    # DMA --------------------------------------------------------------------------------
    def dma_read(self, iova: int, length: int = DMA_LENGTH) -> None:
        """edu reads ``length`` bytes at ``iova`` into its buffer (RAM -> device)."""
        self.edu.dma_to_device(iova, length)

    def dma_write(self, iova: int, length: int = DMA_LENGTH) -> None:
        """edu writes its buffer to ``iova`` (device -> RAM)."""
        self.edu.dma_from_device(iova, length)

    def load_edu(self, data: bytes, via_iova: int, ipa: int) -> None:
        """Put ``data`` in edu's buffer by a DMA read from ``via_iova`` (backed by ``ipa``)."""
        self.write(ipa, data)
        self.dma_read(via_iova, len(data))

    def where_written(self, iova: int, candidates: dict[str, int], data: bytes) -> str:
        """DMA ``data`` (already in edu's buffer) to ``iova``; which candidate page got it."""
        for ipa in candidates.values():
            self.zero(ipa, len(data))
        self.dma_write(iova, len(data))
        hits = [name for name, ipa in candidates.items() if self.read(ipa, len(data)) == data]
        return ",".join(hits) or "none"

    def drain_events(self, settle: float = 1.0) -> bytes:
        """Every vEVENTQ byte available within ``settle`` seconds of the last one."""
        data = b""
        poller = select.poll()
        poller.register(self.events.fd, select.POLLIN)
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            if poller.poll(100):
                chunk = self.events.read_raw(4096)
                if chunk:
                    data += chunk
                    deadline = time.monotonic() + settle
        return data

    def close(self) -> None:
        try:
            self.ictx.close()
        finally:
            self.dev.close()
            self.buf.close()


_SESSION: Session | None = None


def _session() -> Session:
    if _SESSION is None:
        raise RuntimeError("no SMMUv3 nesting session: call smmuv3.open_session first")
    return _SESSION


@method
def open_session(
    cdev: str,
    bdf: str,
    vsid: int = 0x42,
    dma_mask: int = (1 << 48) - 1,
    veventq_depth: int = 64,
) -> dict[str, Any]:
    """Set up the nesting objects; returns the IDs and the hw_info registers."""
    global _SESSION
    close_session()
    session = Session(cdev, bdf, vsid, dma_mask, veventq_depth)
    _SESSION = session
    return {
        "dev_id": session.dev_id,
        "ioas": session.ioas.id,
        "nest_parent": session.s2.id,
        "viommu": session.viommu.id,
        "vdevice": session.vdev.id,
        "veventq": session.events.id,
        "sid": session.sid,
        "vsid": vsid,
        "idrs": session.hw_info.regs.encode(),
        "ipa_base": IPA_BASE,
        "buffer": BUFFER_SIZE,
    }


@method
def close_session() -> dict[str, Any]:
    """Tear the session down (destroying every object in order)."""
    global _SESSION
    session, _SESSION = _SESSION, None
    if session is None:
        return {"closed": False}
    session.close()
    return {"closed": True}


# -- hot-unplug under live nesting -----------------------------------------------------------


@method
def plug_release() -> dict[str, Any]:
    """Close the device fd only (what vfio-pci asks of its user when the device is being
    removed); the nest parent, vIOMMU, vDEVICE, nested HWPT and vEVENTQ stay allocated."""
    session = _session()
    gone = {"dev_id": session.dev_id, "vdevice": session.vdev.id}
    session.dev.close()
    return gone


@method
def after_unplug() -> dict[str, str]:
    """What the kernel answers for the removed device's objects (errno names).

    7.3: the device's unbind destroyed its vDEVICE and left a tombstone, so destroying
    that ID is ENOENT (selftest ``vdevice_tombstone``); the vSID resolves to nothing, so an
    invalidation naming it is EIO (``arm_vsmmu_vsid_to_sid``); the device ID is gone, so a
    vDEVICE for it is ENOENT; the nested HWPT lost its only user and is destroyed.
    """
    from harness.smmuv3 import make_command

    session = _session()
    found: dict[str, str] = {}
    found["destroy vDEVICE"] = errno_text(_errno_of(session.ictx.destroy, session.vdev.id)[0])
    session.vdev.forget()
    found["invalidate CFGI_CD for the vSID"] = errno_text(
        _errno_of(session.invalidate, [make_command("CFGI_CD", sid=session.vsid, leaf=True)])[0]
    )
    found["vDEVICE for the removed device"] = errno_text(
        _errno_of(session.viommu.vdevice, session.dev_id, session.vsid)[0]
    )
    nested, session.nested = session.nested, None
    found["destroy the nested HWPT"] = errno_text(_errno_of(nested.destroy)[0]) if nested else "-"
    return found


@method
def plug_rebind(cdev: str, bdf: str) -> dict[str, Any]:
    """The re-added device into the same session: bound to the same iommufd, a vDEVICE with
    the same vSID on the same vIOMMU."""
    from harness.devices.edu import Edu
    from harness.driver import VfioDevice

    session = _session()
    session.dev = VfioDevice(cdev)
    session.dev_id = session.dev.bind(session.ictx)
    session.bdf, session.sid = bdf, stream_id(bdf)
    session.vdev = session.viommu.vdevice(session.dev_id, session.vsid)
    session.edu = Edu(session.dev, dma_mask=session.dma_mask)
    return {"dev_id": session.dev_id, "vdevice": session.vdev.id, "sid": session.sid}


@method
def stale_probe(src_iova: int, old_iova: int, old_ipa: int, label: str) -> dict[str, Any]:
    """edu loads ``label``'s bytes through ``src_iova`` (mapped) and writes them to
    ``old_iova`` (mapped before a reset, not now): whether they reached ``old_ipa``, and
    the vEVENTQ records that DMA left."""
    session = _session()
    data = pattern(label, FAULT_DMA_LENGTH)  # one access: one fault record
    session.drain_events(0.2)
    session.write(session.data_ipa(0), data)
    session.zero(old_ipa, len(data))
    session.dma_read(src_iova, len(data))
    session.dma_write(old_iova, len(data))
    return {
        "landed": session.read(old_ipa, len(data)) == data,
        "events": session.drain_events(1.0),
    }


# -- PASID-table (CD table) binding ---------------------------------------------------------


def _s1_setup(
    session: Session,
    granule: int,
    iova: int,
    asid: int,
    *,
    block: bool = False,
    read_only: bool = False,
) -> dict[str, Any]:
    """A stage-1 table mapping source and destination IOVAs to data slots 0 and 1, and a CD.

    Pages: ``iova`` -> slot 0 and ``iova + granule`` -> slot 1.  ``block``: one 2 MiB block
    at ``iova`` over the data area, source at its start and destination one slot further.
    """
    from harness.pgtable import Perms
    from harness.smmuv3 import make_s1_cd

    table = session.page_table(granule)
    perms = Perms.READ if read_only else Perms.READ | Perms.WRITE
    if block:
        table.map(iova, IPA_BASE + DATA_OFFSET, 2 << 20, perms, page_size=2 << 20)
        dst_iova = iova + DATA_SLOT
    else:
        table.map(iova, session.data_ipa(0), granule, perms, page_size=granule)
        table.map(iova + granule, session.data_ipa(1), granule, perms, page_size=granule)
        dst_iova = iova + granule
    session.sync(table)
    hw = table.hw_config
    cd = make_s1_cd(hw.ttb0, asid, t0sz=hw.t0sz, tg0=hw.tg0, ips=hw.ips)
    return {
        "table": table,
        "cd": cd,
        "src_ipa": session.data_ipa(0),
        "dst_ipa": session.data_ipa(1),
        "src_iova": iova,
        "dst_iova": dst_iova,
        "cd_base": IPA_BASE + CD_OFFSET,
    }


@method
def binding_case(case: dict[str, Any]) -> dict[str, Any]:
    """One nested HWPT (abort / bypass / s1 linear / s1 2-level) and a DMA that proves it."""
    from harness.smmuv3 import S1Dss, S1Fmt, build_nested_ste, validate_nested_ste

    session = _session()
    kind = case["kind"]
    label = case.get("label", kind)
    rows: list[Row] = []
    facts: dict[str, Any] = {"label": label}
    data = pattern(label, int(case.get("length", DMA_LENGTH)))
    facts["earlier_events"] = session.drain_events(0.2)
    if kind in ("abort", "bypass"):
        vste = build_nested_ste(kind)
        # the harness's own STE model on the harness's own encoding: a fact, not a check
        facts["model_accepts_vste"] = validate_nested_ste(vste).ok
        err, where = session.attach_vste(vste, kind)
        rows.append(_succeeded(f"{label}: nested HWPT allocated and attached", err, where))
        if err:
            return {"rows": rows, "facts": facts}
        src, dst = session.data_ipa(0), session.data_ipa(1)
        session.write(src, data)
        session.zero(dst, len(data))
        session.write(dst, b"\x5a" * len(data))
        session.dma_read(src, len(data))
        session.dma_write(dst, len(data))
        got = session.read(dst, len(data))
        if kind == "bypass":
            shown = "bytes copied" if got == data else got[:8].hex()
            rows.append(
                _row(
                    f"{label}: DMA round trip through stage 2 only (IOVA = IPA)",
                    "bytes copied",
                    shown,
                )
            )
        else:
            shown = "untouched" if got == b"\x5a" * len(data) else f"written: {got[:8].hex()}"
            rows.append(_row(f"{label}: DMA blocked (destination untouched)", "untouched", shown))
        facts["events"] = session.drain_events(0.5)
        return {"rows": rows, "facts": facts}

    granule = int(case.get("granule", 4096))
    iova = int(case["iova"])
    asid = int(case.get("asid", 1))
    block = bool(case.get("block", False))
    two_level = kind == "s1-2level"
    setup = _s1_setup(session, granule, iova, asid, block=block)
    s1cdmax = int(case.get("s1cdmax", 7)) if two_level else 0
    s1fmt = S1Fmt.L2_4K if two_level else S1Fmt.LINEAR
    session.zero(setup["cd_base"], 0x10000)
    cd_table = session.write_cd_table({0: setup["cd"]}, setup["cd_base"], s1cdmax, s1fmt)
    facts["cd_table"] = {
        "base": cd_table.base,
        "s1fmt": int(cd_table.s1fmt),
        "s1cdmax": cd_table.s1cdmax,
    }
    offset = int(case.get("offset", 0))
    walked = setup["table"].walk(iova + offset)
    facts["software_walk"] = {  # the harness's own table, walked by the harness: a fact
        "iova": hex(iova + offset),
        "ipa": hex(getattr(walked, "output", -1)),
        "want": hex(setup["src_ipa"] + offset),
    }
    vste = build_nested_ste(
        "s1",
        cd_table=setup["cd_base"],
        s1fmt=s1fmt,
        s1cdmax=s1cdmax,
        s1dss=S1Dss.SSID0 if two_level else S1Dss.TERMINATE,
    )
    err, where = session.attach_vste(vste, label)
    rows.append(_succeeded(f"{label}: nested HWPT allocated and attached", err, where))
    if err:
        return {"rows": rows, "facts": facts}
    session.sync_config()
    src_ipa, dst_ipa = setup["src_ipa"], setup["dst_ipa"]
    session.write(src_ipa + offset, data)
    session.zero(dst_ipa + offset, len(data))
    session.dma_read(setup["src_iova"] + offset, len(data))
    session.dma_write(setup["dst_iova"] + offset, len(data))
    got = session.read(dst_ipa + offset, len(data))
    facts["dma_ok"] = got == data
    facts["events"] = session.drain_events(0.5)
    facts["src_iova"] = setup["src_iova"] + offset
    facts["dst_iova"] = setup["dst_iova"] + offset
    return {"rows": rows, "facts": facts}


# -- invalidation by effect -------------------------------------------------------------------


_INV: dict[str, Any] = {}


def _command_bytes(specs: list[dict[str, Any]]) -> list[bytes]:
    """Commands as the host described them: ``{"name", "fields"}`` or ``{"raw": hex}``."""
    from harness.smmuv3 import make_command

    return [
        bytes.fromhex(spec["raw"])
        if "raw" in spec
        else make_command(spec["name"], **spec.get("fields", {})).encode()
        for spec in specs
    ]


@method
def invalidation_stage(case: dict[str, Any]) -> dict[str, Any]:
    """Map IOVA -> page A, DMA (fills the model's caches), change the translation, DMA again.

    ``case["change"]`` is "pte" (the PTE re-pointed at page B), "cd" (the CD replaced in
    memory by one with ASID + 1 whose table maps the IOVA to page B) or "ste" (a second
    CD table prepared whose CD maps the IOVA to page B; ``invalidation_apply`` attaches a
    vSTE pointing at it).  Observations only: the attach's errno, where the DMA landed
    before the change and, for "pte" / "cd", right after it, before any invalidation.
    """
    from harness.smmuv3 import S1Fmt, build_nested_ste, make_s1_cd

    session = _session()
    label = case["label"]
    granule = int(case.get("granule", 4096))
    iova = int(case["iova"])
    asid = int(case["asid"])
    change = case["change"]
    if change not in ("pte", "cd", "ste"):
        raise ValueError(f"change {change!r}: expected pte, cd or ste")
    page_a, page_b = session.data_ipa(2), session.data_ipa(3)
    source_ipa = session.data_ipa(4)
    source_iova = iova + 0x100_0000
    table = session.page_table(granule)
    table.map(iova, page_a, granule, page_size=granule)
    for n in range(1, 4):  # neighbours, so a range or VA that misses the IOVA hits something
        table.map(iova + n * granule, session.data_ipa(5), granule, page_size=granule)
    table.map(source_iova, source_ipa, granule, page_size=granule)
    session.sync(table)
    hw = table.hw_config
    cd_base, cd2_base = IPA_BASE + CD_OFFSET, IPA_BASE + CD2_OFFSET
    session.zero(cd_base, 0x1000)
    session.write_cd_table(
        {0: make_s1_cd(hw.ttb0, asid, t0sz=hw.t0sz, tg0=hw.tg0, ips=hw.ips)}, cd_base
    )
    err, where = session.attach_vste(
        build_nested_ste("s1", cd_table=cd_base, s1fmt=S1Fmt.LINEAR), label
    )
    result: dict[str, Any] = {"attach": errno_text(err), "attach_step": where, "sid": session.sid}
    if err:
        return result
    session.sync_config()
    data = pattern(label)
    session.load_edu(data, source_iova, source_ipa)
    pages = {"A": page_a, "B": page_b}
    result["before"] = session.where_written(iova, pages, data)
    replacement = None
    if change == "pte":
        table.remap(iova, page_b)
        session.sync(table)
    else:
        table2 = session.page_table(granule, PT2_OFFSET, PT2_SIZE)
        table2.map(iova, page_b, granule, page_size=granule)
        table2.map(source_iova, source_ipa, granule, page_size=granule)
        session.sync(table2)
        hw2 = table2.hw_config
        new_asid = asid + (1 if change == "cd" else 2)
        cd2 = {0: make_s1_cd(hw2.ttb0, new_asid, t0sz=hw2.t0sz, tg0=hw2.tg0, ips=hw2.ips)}
        if change == "cd":
            session.write_cd_table(cd2, cd_base)
        else:
            session.zero(cd2_base, 0x1000)
            session.write_cd_table(cd2, cd2_base)
            replacement = build_nested_ste("s1", cd_table=cd2_base, s1fmt=S1Fmt.LINEAR)
    if change != "ste":  # replacing the vSTE is itself the invalidation: no window to look in
        result["stale"] = session.where_written(iova, pages, data)
    _INV.clear()
    _INV.update(label=label, iova=iova, pages=pages, data=data, vste=replacement)
    return result


@method
def invalidation_apply(commands: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Issue ``commands`` through IOMMU_HWPT_INVALIDATE on the vIOMMU (``None`` on an "ste"
    case: attach the replacement vSTE instead), then DMA again.

    Observations: the ioctl's errno and entry_num (or the attach's errno) and which page the
    DMA reached.
    """
    from harness.driver import IoctlError
    from harness.uapi import iommufd as uapi

    session = _session()
    result: dict[str, Any] = {}
    if commands is None:
        if _INV.get("vste") is None:
            raise ValueError(f"case {_INV.get('label')!r} has no replacement vSTE: give commands")
        err, where = session.attach_vste(_INV["vste"], "replacement")
        result.update(errno=errno_text(err), step=where)
    else:
        data = b"".join(_command_bytes(commands))
        try:
            done = session.viommu.invalidate(
                data, uapi.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, entry_len=16
            )
            result.update(errno="success", entry_num=int(done))
        except IoctlError as exc:
            result.update(errno=errno_text(exc.errno or 0), entry_num=exc.entries_done)
    result["after"] = session.where_written(_INV["iova"], _INV["pages"], _INV["data"])
    return result


@method
def malformed_invalidations(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each case's command array through IOMMU_HWPT_INVALIDATE: errno and entry_num back."""
    from harness.driver import IoctlError
    from harness.uapi import iommufd as uapi

    session = _session()
    results = []
    for case in cases:
        data = b"".join(_command_bytes(case["commands"]))
        data_type = int(case.get("data_type", uapi.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3))
        try:
            done = session.viommu.invalidate(data, data_type, entry_len=16)
            results.append({"label": case["label"], "errno": "success", "entry_num": done})
        except IoctlError as exc:
            results.append(
                {
                    "label": case["label"],
                    "errno": errno_text(exc.errno or 0),
                    "entry_num": exc.entries_done,
                }
            )
    return results


# -- fault rings ------------------------------------------------------------------------------


@method
def fault_case(kind: str, label: str, count: int = 1) -> dict[str, Any]:
    """Cause one fault of ``kind`` (translation, permission, bad-cd, stage2); what to expect.

    The vEVENTQ is not read here: the host reads it after a sequence of faults.
    """
    from harness.smmuv3 import Cd, S1Fmt, build_nested_ste

    session = _session()
    data = pattern(label, FAULT_DMA_LENGTH)
    granule = 4096
    iova = 0x2000_0000 + 0x10_0000 * (sum(label.encode()) % 64)
    asid = 0x40 + sum(label.encode()) % 64
    setup = _s1_setup(session, granule, iova, asid, read_only=kind == "permission")
    table = setup["table"]
    if kind == "stage2":
        table.map(iova + 4 * granule, UNMAPPED_IPA, granule, page_size=granule)
        session.sync(table)
    cd_base = IPA_BASE + (CD2_OFFSET if kind == "bad-cd" else CD_OFFSET)
    session.zero(cd_base, 0x1000)
    cd = Cd() if kind == "bad-cd" else setup["cd"]
    session.write_cd_table({0: cd}, cd_base)
    err, where = session.attach_vste(
        build_nested_ste("s1", cd_table=cd_base, s1fmt=S1Fmt.LINEAR), label
    )
    if err:
        return {"error": f"{where}: {os.strerror(err)}"}
    session.sync_config()
    expect: dict[str, Any] = {"label": label, "sid": session.vsid}
    if kind == "translation":
        expects = []
        for index in range(count):
            target = iova + (8 + index) * granule
            session.dma_read(target, len(data))
            expects.append(
                {
                    **expect,
                    "reason": "F_TRANSLATION",
                    "address": target,
                    "is_write": False,
                    "label": f"{label}[{index}]" if count > 1 else label,
                }
            )
        return {"expect": expects}
    if kind == "permission":
        session.write(setup["src_ipa"], data)
        session.dma_read(iova, len(data))
        session.dma_write(iova, len(data))
        expect.update(reason="F_PERMISSION", address=iova, is_write=True)
    elif kind == "bad-cd":
        session.dma_read(iova, len(data))
        expect.update(reason="C_BAD_CD")
    elif kind == "stage2":
        target = iova + 4 * granule
        session.dma_read(iova, len(data))
        session.dma_write(target, len(data))
        expect.update(
            reason="F_TRANSLATION",
            address=target,
            is_write=True,
            stage2=True,
            ipa=UNMAPPED_IPA,
            physical_sid=session.sid,
        )
    else:
        raise ValueError(f"fault kind {kind!r}: expected translation, permission, bad-cd, stage2")
    return {"expect": [expect]}


@method
def read_events(settle: float = 1.0) -> bytes:
    """Everything the vEVENTQ holds now (and what arrives within ``settle`` seconds)."""
    return _session().drain_events(settle)


@method
def events_errno_on_short_read() -> str:
    """A read() smaller than one event: the kernel's answer (documented: EINVAL)."""
    from harness.driver import IoctlError, errno_name

    try:
        _session().events.read_raw(4)
    except IoctlError as exc:
        return errno_name(exc.errno or 0)
    return "success"
