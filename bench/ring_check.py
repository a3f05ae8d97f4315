"""Records per second through each ring checker, against bare struct.unpack_from on the same bytes.

Run: .venv/bin/python bench/ring_check.py [--records N].  Each figure is the best of a few
repetitions; on a shared 2-core machine they are noisy, compare ratios rather than absolutes.
"""

from __future__ import annotations

import argparse
import struct
import time
from collections.abc import Callable

from harness.rings import (
    FAULT_RING,
    RESPONSE_RING,
    ExpectedFault,
    FaultQueueChecker,
    LegacyRing,
    SmmuEventQueue,
    VtdFaultRecorder,
    VtdPageRequestQueue,
    check_legacy_rings,
    check_veventq,
)
from harness.rings.iommufd_fault import PGFAULT, RESPONSE
from harness.rings.veventq import encode_vevent
from harness.smmuv3 import encode_event
from harness.uapi import iommufd, legacy
from harness.vtd.faults import FaultRecord
from harness.vtd.prq import PageRequest

REPEAT = 3


def best(fn: Callable[[], object]) -> float:
    """Shortest of REPEAT runs, in seconds."""
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def baseline(buf: bytes, layout: struct.Struct, stride: int, start: int = 0) -> Callable[[], None]:
    """Unpack every record once and touch nothing else: the floor for a Python ring walk."""
    unpack = layout.unpack_from

    def run() -> None:
        for offset in range(start, len(buf) - stride + 1, stride):
            unpack(buf, offset)

    return run


def report(name: str, records: int, checker: float, floor: float) -> None:
    print(f"{name}: {records / checker:,.0f} records/s")
    print(f"{name}_baseline_unpack: {records / floor:,.0f} records/s")
    print(f"{name}_vs_baseline: {checker / floor:.1f} x slower")


def bench_veventq(n: int) -> None:
    payloads = [
        encode_event(
            "F_TRANSLATION", sid=i % 64, ssid=i % 7, address=i << 12, is_write=bool(i & 1),
            event_class="IN",
        )
        for i in range(256)
    ]  # fmt: skip
    buf = b"".join(encode_vevent(i, payloads[i % 256]) for i in range(n))
    verdict = check_veventq(buf, first_sequence=0)
    assert verdict.ok and verdict.records_seen == n, verdict.summary()
    floor = best(baseline(buf, struct.Struct("<II4Q"), 40))
    report("veventq_smmuv3", n, best(lambda: check_veventq(buf, first_sequence=0)), floor)
    some = n // 10
    expected = [ExpectedFault(sid=i % 64, address=i << 12) for i in range(8)]
    part = buf[: some * 40]
    matching = best(lambda: check_veventq(part, expected, first_sequence=0))
    print(f"veventq_smmuv3_with_8_expected: {some / matching:,.0f} records/s")


def bench_fault_queue(n: int) -> None:
    last = int(iommufd.IOMMU_PGFAULT_FLAGS_LAST_PAGE)
    records: list[bytes] = []
    cookies: list[bytes] = []
    cookie = 0
    while len(records) < n:
        cookie += 1
        pages = 1 + cookie % 4
        for page in range(pages):
            flags = last if page == pages - 1 else 0
            records.append(PGFAULT.pack(flags, 1, 0, cookie % 512, 1, 0, page << 12, 0, cookie))
        cookies.append(RESPONSE.pack(cookie, 0))
    faults, responses = b"".join(records[:n]), b"".join(cookies)
    n = len(faults) // PGFAULT.size

    def run() -> None:
        checker = FaultQueueChecker()
        checker.feed_faults(faults)
        checker.feed_responses(responses)
        checker.verdict()

    floor = best(baseline(faults, PGFAULT, PGFAULT.size))
    report("iommufd_fault_queue", n, best(run), floor)


def bench_legacy(n: int) -> None:
    nb = 1 << max(2, n.bit_length())
    faults = LegacyRing.create(FAULT_RING, nb)
    responses = LegacyRing.create(RESPONSE_RING, nb)
    for i in range(n):
        fault = legacy.iommu_fault(type=legacy.IOMMU_FAULT_PAGE_REQ)
        fault.prm.flags = legacy.IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE
        fault.prm.grpid = i
        fault.prm.addr = i << 12
        faults.produce(fault.to_bytes())
        responses.produce(legacy.iommu_page_response(argsz=24, version=1, grpid=i).to_bytes())
    region, answers = bytes(faults.region), bytes(responses.region)
    verdict = check_legacy_rings(region, answers)
    assert verdict.ok and verdict.records_seen == n, verdict.summary()
    floor = best(baseline(region, struct.Struct("<IIIIIIQ"), 64, start=4096))
    report(
        "legacy_region_with_responses", n, best(lambda: check_legacy_rings(region, answers)), floor
    )
    ctypes_time = best(lambda: legacy.decode_dma_fault_region(region))
    print(f"legacy_region_ctypes_decode_only: {n / ctypes_time:,.0f} records/s")


def bench_smmu_evtq(log2size: int) -> None:
    queue = SmmuEventQueue(log2size)
    size = 1 << log2size
    for i in range(size):
        queue.produce(encode_event("F_PERMISSION", sid=i % 64, address=i << 12, event_class="IN"))
    assert queue.check().ok
    floor = best(baseline(bytes(queue.memory), struct.Struct("<4Q"), 32))
    report("smmu_evtq", size, best(queue.check), floor)


def bench_vtd_prq() -> None:
    queue = VtdPageRequestQueue(pages=128)
    for i in range(queue_slots := len(queue.memory) // 32 - 1):
        queue.produce(PageRequest(sid=0x18, address=i << 12, is_read=True, lpig=True, prgi=i % 512))
    verdict = queue.check()
    assert verdict.records_seen == queue_slots and not verdict.malformed, verdict.summary()
    floor = best(baseline(bytes(queue.memory), struct.Struct("<4Q"), 32))
    report("vtd_prq", queue_slots, best(queue.check), floor)


def bench_vtd_fault_recording() -> None:
    recorder = VtdFaultRecorder(256)
    for i in range(255):
        recorder.record(FaultRecord.dma(0x18, i << 12, 0x05, is_write=True))
    frcd, fsts = bytes(recorder.frcd), recorder.fsts
    from harness.rings import check_fault_recording

    floor = best(lambda: [baseline(frcd, struct.Struct("<2Q"), 16)() for _ in range(100)])
    checker = best(lambda: [check_fault_recording(frcd, fsts) for _ in range(100)])
    report("vtd_fault_recording", 255 * 100, checker, floor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    bench_veventq(args.records)
    bench_fault_queue(args.records)
    bench_legacy(args.records)
    bench_smmu_evtq(17)
    bench_vtd_prq()
    bench_vtd_fault_recording()


if __name__ == "__main__":
    main()
