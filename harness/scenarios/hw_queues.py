"""Scenario rows judged on the vIOMMU's own queues, as the emulated hardware holds them.

The reader (``harness.qemu.viommu_regs``) snapshots the SMMUv3's CMDQ and EVTQ from the
host; these functions turn two snapshots around one guest action into effect rows:

- ``cmdq_invalidation_rows``: what the guest kernel wrote into the CMDQ for one
  IOMMU_HWPT_INVALIDATE on the vIOMMU must be exactly the commands the 7.3 kernel's
  conversion predicts (``harness.smmuv3.check_vsmmu_invalidation_array``: physical SID for
  the user's vSID, the vIOMMU's VMID, the user's ASID / address / range / leaf fields),
  followed by a CMD_SYNC, all consumed by the SMMU without a CMDQ error.  The VMID the
  prediction uses is read from the hardware too: the STE of the device's physical SID.
- ``evtq_window_verdict``: the records the SMMU produced between two snapshots, judged by
  ``harness.rings.check_smmu_evtq`` as if not yet consumed (the guest kernel drains the
  EVTQ at once, but the records stay in the ring's memory until the next lap).

VT-d (``VtdUnitReader``): ``unmap_invalidation_rows`` judges what the guest kernel queued in
the invalidation queue for one IOMMU_IOAS_UNMAP against the descriptor the unit's own
tables predict (the domain id of the device's context / PASID entry); ``frcd_rows`` finds
a provoked fault in the fault-recording registers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.errors import DecodeError
from harness.qemu.viommu_regs import (
    Monitor,
    Reader,
    SmmuQueue,
    SmmuSnapshot,
    ViommuRegsError,
    VtdDeviceEntry,
    VtdSnapshot,
    find_viommus,
    read_smmu,
    read_ste,
    read_vtd,
    read_vtd_device,
    ste_s2vmid,
)
from harness.rings import ExpectedFault, check_smmu_evtq
from harness.rings.verdict import RingVerdict
from harness.rings.veventq import VEvent
from harness.scenarios.base import EFFECT, Check
from harness.smmuv3 import Command, VsmmuContext, check_vsmmu_invalidation_array, make_command
from harness.smmuv3.cmdq import decode_command
from harness.smmuv3.events import decode_event
from harness.vtd.faults import FaultRecord
from harness.vtd.invalidation import (
    DescriptorType,
    IotlbGranularity,
    IotlbInvalidation,
    PasidIotlbGranularity,
    PasidIotlbInvalidation,
    decode_invalidation,
)
from harness.vtd.pasid import Pgtt

#: fields of a command that say what it invalidates (CMD_SYNC's are how it signals completion)
_SHOWN_FIELDS = ("sid", "ssid", "ssv", "vmid", "asid", "address", "leaf", "num", "scale", "tg",
                 "ttl", "range", "size", "global_inv")  # fmt: skip
ENV_READER = "HARNESS_HW_QUEUES"
"""Set to 0 to switch the host-side queue reader off in scenarios (on by default)."""


def reader_enabled(params: Mapping[str, Any] | None = None) -> bool:
    """Whether scenarios read the vIOMMU's queues: ``params["hw_queues"]``, else the env."""
    if params is not None and "hw_queues" in params:
        return bool(params["hw_queues"])
    return os.environ.get(ENV_READER, "1") not in ("0", "off", "no")


def command_text(command: Command) -> str:
    """``CMD_TLBI_NH_VA vmid=0x1 asid=0x21 address=0x30000000 leaf=1``; CMD_SYNC bare."""
    if command.name == "CMD_SYNC":
        return "CMD_SYNC"
    parts = [command.name]
    for name in _SHOWN_FIELDS:
        value = getattr(command, name)
        if value:
            parts.append(f"{name}={int(value):#x}")
    return " ".join(parts)


def _decoded_text(data: bytes) -> str:
    try:
        return command_text(decode_command(data))
    except DecodeError as error:
        return f"undecodable {data.hex()} ({error})"


@dataclass
class SmmuQueueReader:
    """Snapshots of one machine's SMMUv3, with a private scratch dir for ``pmemsave``."""

    mon: Monitor
    scratch: Path
    index: int = 0
    pause: bool = True

    def snapshot(self) -> SmmuSnapshot:
        """Registers, CMDQ and EVTQ now (ViommuRegsError when the machine has no SMMUv3)."""
        windows = [w for w in find_viommus(self.mon) if w.kind == "smmuv3"]
        if len(windows) <= self.index:
            raise ViommuRegsError(f"no SMMUv3 #{self.index} in the machine's memory map")
        return read_smmu(Reader(self.mon, self.scratch), windows[self.index], pause=self.pause)

    def ste(self, snapshot: SmmuSnapshot, sid: int) -> bytes:
        """The STE of ``sid`` as the SMMU would fetch it now."""
        return read_ste(Reader(self.mon, self.scratch), snapshot, sid)


@dataclass
class VtdUnitReader:
    """Snapshots of one machine's VT-d unit, with a private scratch dir for ``pmemsave``."""

    mon: Monitor
    scratch: Path
    pause: bool = True

    def _window(self) -> Any:
        windows = [w for w in find_viommus(self.mon) if w.kind == "vtd"]
        if not windows:
            raise ViommuRegsError("no VT-d unit in the machine's memory map")
        return windows[0]

    def snapshot(self) -> VtdSnapshot:
        """Registers, invalidation queue and fault-recording registers now."""
        return read_vtd(Reader(self.mon, self.scratch), self._window(), pause=self.pause)

    def device(self, sid: int, pasid: int = 0) -> VtdDeviceEntry:
        """The domain id (and PGTT) the unit's tables give ``sid`` now."""
        return read_vtd_device(Reader(self.mon, self.scratch), self._window(), sid, pasid)


@contextlib.contextmanager
def _scratch_dir() -> Iterator[Path]:
    """A private (0700) directory for QEMU's dump files, removed afterwards."""
    base = os.environ.get("XDG_RUNTIME_DIR") or None
    scratch = Path(tempfile.mkdtemp(prefix="viommu-rings-", dir=base))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def smmu_queue_reader(mon: Monitor, pause: bool = True) -> Iterator[SmmuQueueReader]:
    """An SMMUv3 reader whose scratch dir is removed afterwards."""
    with _scratch_dir() as scratch:
        yield SmmuQueueReader(mon, scratch, pause=pause)


@contextlib.contextmanager
def vtd_unit_reader(mon: Monitor, pause: bool = True) -> Iterator[VtdUnitReader]:
    """A VT-d reader whose scratch dir is removed afterwards."""
    with _scratch_dir() as scratch:
        yield VtdUnitReader(mon, scratch, pause=pause)


def predicted_cmdq(user_commands: Sequence[Mapping[str, Any]], ctx: VsmmuContext) -> list[str]:
    """The CMDQ entries the kernel must issue for ``user_commands`` (+ the CMD_SYNC)."""
    built = [make_command(c["name"], **c.get("fields", {})) for c in user_commands]
    batch = check_vsmmu_invalidation_array(built, ctx)
    issued = [_decoded_text(w0.to_bytes(8, "little") + w1.to_bytes(8, "little"))
              for w0, w1 in batch.issued]  # fmt: skip
    return [*issued, "CMD_SYNC"] if issued else []


def cmdq_invalidation_rows(
    label: str,
    user_commands: Sequence[Mapping[str, Any]],
    ctx: VsmmuContext,
    before: SmmuSnapshot,
    after: SmmuSnapshot,
    *,
    physical_sid: int,
) -> list[Check]:
    """Effect rows: the CMDQ between two snapshots holds exactly the converted commands.

    ``ctx`` carries what the prediction may know: the vSID -> SID map the vDEVICE set up
    and the VMID (from the device's STE, read from the hardware).  A mismatch prints both
    command lists.
    """
    try:
        window = after.cmdq.produced_since(before.cmdq)
    except DecodeError as error:
        return [Check(f"{label}: CMDQ window", "one lap at most", str(error), False, kind=EFFECT)]
    got = [_decoded_text(data) for _, data in window]
    want = predicted_cmdq(user_commands, ctx)
    rows = [
        Check.effect(
            f"{label}: CMDQ holds the kernel's converted commands, then CMD_SYNC",
            want,
            got,
            "hardware view: the emulated SMMUv3's command queue, read over QMP",
        )
    ]
    user_sids = [c["fields"]["sid"] for c in user_commands if "sid" in c.get("fields", {})]
    if user_sids:
        want_sids = [ctx.vsid_to_sid.get(v, v) for v in user_sids]
        got_sids = [
            decode_command(data).sid
            for _, data in window
            if _decoded_text(data).split()[0] in ("CMD_CFGI_CD", "CMD_CFGI_CD_ALL", "CMD_ATC_INV")
        ]
        rows.append(
            Check.effect(
                f"{label}: CMDQ carries the physical SID {physical_sid:#x}, not the vSID",
                [hex(s) for s in want_sids],
                [hex(s) for s in got_sids],
            )
        )
    mask = (2 << after.cmdq.log2size) - 1
    rows.append(
        Check.effect(
            f"{label}: the SMMU consumed the CMDQ (CONS == PROD, CONS.ERR 0)",
            [hex(after.cmdq.prod & mask), 0],
            [hex(after.cmdq.cons & mask), after.cmdq_error],
        )
    )
    return rows


def context_from_hardware(
    ctx: VsmmuContext, reader: SmmuQueueReader, snapshot: SmmuSnapshot, sid: int
) -> VsmmuContext:
    """``ctx`` with its VMID taken from the device's STE (S2VMID), as the SMMU holds it."""
    return replace(ctx, vmid=ste_s2vmid(reader.ste(snapshot, sid)))


def evtq_window(before: SmmuQueue, after: SmmuQueue) -> SmmuQueue:
    """``after`` with CONS set back to ``before``'s PROD: the records produced in between.

    The overflow flags are kept from ``after`` (PROD.OVFLG against CONS.OVACKFLG).
    """
    cons = (before.prod & ~(1 << 31)) | (after.cons & (1 << 31))
    return replace(after, cons=cons)


def evtq_window_verdict(
    before: SmmuSnapshot,
    after: SmmuSnapshot,
    expected: Sequence[ExpectedFault] = (),
    *,
    ordered: bool = True,
) -> RingVerdict:
    """``check_smmu_evtq`` on the records the SMMU produced between the two snapshots."""
    window = evtq_window(before.evtq, after.evtq)
    return check_smmu_evtq(
        window.memory, window.log2size, window.prod, window.cons, expected,
        ordered=ordered, strict=False,
    )  # fmt: skip


def _event_text(data: bytes) -> str:
    try:
        event = decode_event(data, strict=False)
    except DecodeError as error:
        return f"undecodable {data.hex()} ({error})"
    where = "" if event.address is None else f" addr={event.address:#x}"
    rw = "" if event.rnw is None else (" read" if event.rnw else " write")
    return f"{event.name} sid={event.sid:#x}{where}{rw} [{data.hex()}]"


def evtq_veventq_rows(
    label: str,
    evtq_records: Sequence[bytes],
    vevents: Sequence[VEvent],
    sid_to_vsid: Mapping[int, int],
) -> list[Check]:
    """Effect rows: the EVTQ (physical SID) and the vEVENTQ (virtual SID) agree record by record.

    Every EVTQ record the kernel must forward (``SmmuEvent.forwarded_to_vevent`` of a SID with
    a vDEVICE) becomes, in the same order, a vEVENT whose payload is the same record with the
    SID replaced by the vSID (``arm_vmaster_report_event``, 7.3); what one side has and the
    other lacks is shown, both records printed.
    """
    predicted: list[str] = []
    for data in evtq_records:
        try:
            event = decode_event(data, strict=False)
        except DecodeError:
            predicted.append(f"undecodable EVTQ record {data.hex()}")
            continue
        if not event.forwarded_to_vevent or event.sid not in sid_to_vsid:
            continue
        word0 = int.from_bytes(data[:8], "little")
        word0 = (word0 & ~(0xFFFFFFFF << 32)) | (sid_to_vsid[event.sid] << 32)
        predicted.append(_event_text(word0.to_bytes(8, "little") + data[8:]))
    got = [_event_text(v.payload) if v.payload is not None else "LOST_EVENTS" for v in vevents]
    rows = [
        Check.effect(
            f"{label}: vEVENTQ = forwarded EVTQ records with the vSID, in order",
            predicted,
            got,
            "EVTQ read from the emulated SMMUv3 over QMP; vEVENTQ read by the guest",
        )
    ]
    physical = sorted({decode_event(d, strict=False).sid for d in evtq_records
                       if _event_text(d).split()[0] != "undecodable"})  # fmt: skip
    rows.append(
        Check.effect(
            f"{label}: EVTQ records carry the physical SID",
            [hex(s) for s in sorted(sid_to_vsid)] if evtq_records else [],
            [hex(s) for s in physical],
        )
    )
    return rows


#: descriptor types that invalidate translations (what an unmap must queue)
_TRANSLATION_INVALIDATIONS = (
    DescriptorType.IOTLB,
    DescriptorType.PASID_IOTLB,
    DescriptorType.DEVICE_TLB,
    DescriptorType.PASID_DEVICE_TLB,
)


def invalidation_text(data: bytes) -> str:
    """``IotlbInvalidation g=3 did=0x2 addr=0x7654000 am=0``; other descriptors by name."""
    try:
        desc = decode_invalidation(data)
    except DecodeError as error:
        return f"undecodable {data.hex()} ({error})"
    if isinstance(desc, IotlbInvalidation):
        where = f"did={desc.did:#x} addr={desc.address:#x} am={desc.am}"
        return f"IotlbInvalidation g={desc.granularity} {where}"
    if isinstance(desc, PasidIotlbInvalidation):
        where = f"did={desc.did:#x} pasid={desc.pasid} addr={desc.address:#x} am={desc.am}"
        return f"PasidIotlbInvalidation g={desc.granularity} {where}"
    return type(desc).__name__


def predicted_unmap_invalidation(entry: VtdDeviceEntry, iova: int, size_order: int) -> str:
    """The page-selective invalidation the 7.3 kernel queues for an unmap of 4 KiB << order:
    PASID-based (P_IOTLB, PASID 0) for a first-stage domain, else IOTLB, with the domain id
    the device's context / PASID entry holds (``cache_tag_flush_range``)."""
    if entry.scalable and entry.pgtt == Pgtt.FIRST_STAGE:
        desc: IotlbInvalidation | PasidIotlbInvalidation = PasidIotlbInvalidation(
            granularity=PasidIotlbGranularity.PAGE, did=entry.did, pasid=0, am=size_order,
            address=iova,
        )  # fmt: skip
    else:
        desc = IotlbInvalidation(
            granularity=IotlbGranularity.PAGE, did=entry.did, am=size_order, address=iova
        )
    return invalidation_text(desc.encode())


def _descriptor_type(data: bytes) -> int | None:
    try:
        return int(decode_invalidation(data).TYPE)
    except DecodeError:
        return None


def unmap_invalidation_rows(
    label: str,
    entry: VtdDeviceEntry,
    iova: int,
    size_order: int,
    before: VtdSnapshot,
    after: VtdSnapshot,
) -> list[Check]:
    """Effect rows: the IQ between two snapshots holds exactly the unmap's invalidation
    (domain id from the unit's own tables), a wait descriptor after it, and was consumed."""
    try:
        window = [data for _, data in after.produced_since(before)]
    except DecodeError as error:
        return [Check(f"{label}: IQ window", "one lap at most", str(error), False, kind=EFFECT)]
    kinds = [_descriptor_type(data) for data in window]
    flushes = [i for i, k in enumerate(kinds) if k is None or k in _TRANSLATION_INVALIDATIONS]
    waits = [i for i, k in enumerate(kinds) if k == DescriptorType.WAIT]
    return [
        Check.effect(
            f"{label}: IQ holds the page's invalidation, domain id from the device's entry",
            [predicted_unmap_invalidation(entry, iova, size_order)],
            [invalidation_text(window[i]) for i in flushes],
            "hardware view: the emulated VT-d unit's invalidation queue, read over QMP",
        ),
        Check.effect(
            f"{label}: an invalidation-wait descriptor follows it",
            True,
            bool(flushes and waits) and waits[-1] > flushes[-1],
            f"window: {[invalidation_text(d).split()[0] for d in window]}",
        ),
        Check.effect(
            f"{label}: the unit consumed the IQ (IQH == IQT, FSTS.IQE clear)",
            [hex(after.iqt), 0],
            [hex(after.iqh), after.fsts >> 4 & 1],
        ),
    ]


#: FRCD high quadword: PP (bit 95 of the record) and the PASID value (bits 123:104)
FRCD_PP = 1 << 31
FRCD_PV = ((1 << 20) - 1) << 40


def frcd_for(snapshot: VtdSnapshot, address: int) -> tuple[FaultRecord, bool] | None:
    """The fault-recording register holding a fault at ``address``'s page, and whether its
    F bit is still set (the guest's ``dmar_fault`` clears F; the fields stay).

    QEMU fills the PASID value with ones when it records no PASID (PP clear); the spec
    leaves PV undefined then, so it is ignored.
    """
    page = address & ~0xFFF
    for index in range(len(snapshot.frcd) // 16):
        data = snapshot.frcd[index * 16 : index * 16 + 16]
        high = int.from_bytes(data[8:], "little")
        fault_bit = bool(high >> 63)
        if not high & FRCD_PP:
            high &= ~FRCD_PV
        high |= 1 << 63
        try:
            record = FaultRecord.decode(data[:8] + high.to_bytes(8, "little"))
        except DecodeError:
            continue
        if record.address & ~0xFFF == page and (record.sid or record.reason):
            return record, fault_bit
    return None
