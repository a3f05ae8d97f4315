"""``harness rings --qmp SOCKET``: the vIOMMU's own queues of a running guest, one record a line.

Connects to a QMP socket (the one ``harness boot --keep`` prints), finds every vIOMMU in
the machine's memory map and prints, read from the emulated hardware: its queue
registers, the last ``--last`` CMDQ commands and EVTQ records (SMMUv3) or invalidation
descriptors and pending fault records (VT-d), and the ring checker's verdict on what is
pending.  Read-only: the VM is paused for the snapshot (``--no-pause`` reads it live).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.qemu.qmp import QmpSession
from harness.qemu.viommu_regs import (
    Reader,
    SmmuSnapshot,
    VtdSnapshot,
    command_record,
    event_record,
    fault_records,
    find_viommus,
    invalidation_record,
    read_smmu,
    read_vtd,
)
from harness.rings import check_fault_recording, check_page_request_queue, check_smmu_evtq
from harness.rings.verdict import RingVerdict
from harness.scenarios.hw_queues import smmu_queue_reader


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--qmp", required=True, type=Path, metavar="SOCKET",
        help="a QMP socket of the running guest (boot --keep prints one)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    parser.add_argument("--last", type=int, default=16, metavar="N",
                        help="records to show per queue, newest last (default 16)")  # fmt: skip
    parser.add_argument("--no-pause", action="store_true",
                        help="read without stopping the VM (the snapshot may be torn)")  # fmt: skip


def _verdict_record(queue: str, verdict: RingVerdict) -> dict[str, Any]:
    return {
        "queue": queue,
        "check": verdict.ring,
        "ok": verdict.ok,
        "pending": verdict.records_seen,
        "overflow": verdict.overflow_signalled,
        "problems": [f"{k}: {v}" for k, v in verdict.problems().items()],
    }


def smmu_records(snap: SmmuSnapshot, last: int) -> list[dict[str, Any]]:
    """Header, CMDQ and EVTQ records and the EVTQ checker's verdict, in print order."""
    w = snap.window
    out: list[dict[str, Any]] = [
        {"queue": "smmuv3", "base": hex(w.base), "region": w.region, "paused": snap.paused,
         **snap.registers()},
    ]  # fmt: skip
    for queue, decode in ((snap.cmdq, command_record), (snap.evtq, event_record)):
        pending = queue.distance(queue.cons, queue.prod) if queue.memory else 0
        out.append({"queue": queue.name, "address": hex(queue.address),
                    "log2size": queue.log2size, "prod": hex(queue.prod), "cons": hex(queue.cons),
                    "pending": pending})  # fmt: skip
        for slot, data in queue.recent(last):
            out.append(decode(slot, data))
    if snap.evtq.memory:
        verdict = check_smmu_evtq(snap.evtq.memory, snap.evtq.log2size, snap.evtq.prod,
                                  snap.evtq.cons, strict=False)  # fmt: skip
        out.append(_verdict_record("evtq", verdict))
    return out


def vtd_records(snap: VtdSnapshot, last: int) -> list[dict[str, Any]]:
    """Header, invalidation-queue descriptors, pending fault records and the FRCD verdict;
    the page request queue and its verdict when the guest has one."""
    w = snap.window
    out: list[dict[str, Any]] = [
        {"queue": "vtd", "base": hex(w.base), "region": w.region, "paused": snap.paused,
         **snap.registers(), "notes": list(snap.notes)},
    ]  # fmt: skip
    if snap.queue:
        out.append({"queue": "iq", "address": hex(snap.iqa & ~0xFFF),
                    "descriptor_bits": snap.descriptor_size * 8, "entries": snap.queue_entries,
                    "head": snap.slot(snap.iqh), "tail": snap.slot(snap.iqt)})  # fmt: skip
        out.extend(invalidation_record(slot, data) for slot, data in snap.recent(last))
    out.extend(fault_records(snap))
    out.append(_verdict_record("frcd", check_fault_recording(snap.frcd, snap.fsts)))
    if snap.prq:  # the guest set up a page request queue (ECAP.PRS: QEMU 11's svm=on)
        where = {"address": hex(snap.pqa & ~0xFFF), "bytes": len(snap.prq)}
        pointers = {"head": hex(snap.pqh), "tail": hex(snap.pqt), "PRS": hex(snap.prs)}
        out.append({"queue": "prq", **where, **pointers})
        verdict = check_page_request_queue(snap.prq, snap.pqh, snap.pqt, snap.prs)
        out.append(_verdict_record("prq", verdict))
    return out


def text_line(record: dict[str, Any]) -> str:
    """One record as ``queue  slot  name  key=value ...``."""
    rest = dict(record)
    queue = rest.pop("queue")
    head = [f"{queue:<6}"]
    if "slot" in rest:
        head.append(f"[{rest.pop('slot'):>6}]")
    if "name" in rest:
        head.append(str(rest.pop("name")))
    if "check" in rest:
        ok = rest.pop("ok")
        head.append(f"{rest.pop('check')}: {'ok' if ok else 'PROBLEMS'}")
    body = " ".join(f"{k}={v}" for k, v in rest.items() if v not in ([], None))
    return " ".join([*head, body]).rstrip()


def collect(mon: Any, last: int, pause: bool) -> list[dict[str, Any]]:
    """Every vIOMMU's records, in print order."""
    records: list[dict[str, Any]] = []
    with smmu_queue_reader(mon, pause=pause) as holder:
        reader = Reader(mon, holder.scratch)
        for window in find_viommus(mon):
            if window.kind == "smmuv3":
                records += smmu_records(read_smmu(reader, window, pause=pause), last)
            else:
                records += vtd_records(read_vtd(reader, window, pause=pause), last)
    return records


def run(args: argparse.Namespace, write: Callable[[str], None] = print) -> int:
    session = QmpSession()
    try:
        session.connect(args.qmp, timeout=10.0)
        records = collect(session, args.last, pause=not args.no_pause)
    finally:
        session.close()
    for record in records:
        write(json.dumps(record, default=str) if args.json else text_line(record))
    return 0
