"""Guest halves of tier 3, in the guest that sits behind QEMU's accelerated vIOMMU.

That guest is L2 (simulated tier 3) or the passthrough guest of a real KVM host.  Its own
kernel drives the vIOMMU (arm-smmu-v3 on ``arm-smmuv3,accel=on``, intel-iommu on
``intel-iommu,...,fsts=on``); here the device is bound to vfio-pci and iommufd so the
agent can make it DMA through the translation the guest kernel programmed.  QEMU turns
that programming into nested HWPTs, invalidations and vEVENTQ traffic on its host; the
host half checks those in QEMU's traces.  Nothing here knows which vIOMMU it runs on.
"""

from __future__ import annotations

import time
from typing import Any

from guests.agent.server import method
from harness.scenarios.guest._patterns import DMA_LENGTH, pattern

PAGE = 4096
SRC_IOVA = 0x10_0000
DST_IOVA = 0x20_0000
FAULT_IOVA = 0x800_0000
EVENT_RATELIMIT_S = 5.5
"""DEFAULT_RATELIMIT_INTERVAL (5 s) and a margin: the window of the driver's event printks."""
"""Never mapped: a DMA here faults in the guest's own (first-stage) page table."""

Row = dict[str, Any]


def _row(name: str, expected: Any, got: Any, note: str = "", kind: str = "effect") -> Row:
    """A check row; every row here observes the device or the kernel (effect)."""
    return {
        "name": name,
        "expected": expected,
        "got": got,
        "ok": expected == got,
        "note": note,
        "kind": kind,
    }


def _mark() -> str:
    from guests.agent.system import dmesg_mark

    return str(dmesg_mark())


def _since(marker: str) -> str:
    from guests.agent.system import dmesg

    return str(dmesg(since=marker))


@method
def dma(cdev: str, dma_mask: int, seed: int = 0) -> dict[str, Any]:
    """edu DMA through the guest's vIOMMU: before, with the mapping gone, and after a remap.

    Observations only (which page each copy reached: "A", "B", "none"): the destination IOVA
    maps page A; then it is unmapped (the guest kernel's invalidation travels through L1's
    accelerated SMMU) and a copy must reach no page — a stale IOTLB entry would still reach
    A; then it maps page B and a copy must reach B alone.
    """
    from harness.devices.edu import Edu
    from harness.driver import DmaBuffer, IommuFD, VfioDevice

    facts: dict[str, Any] = {}
    with (
        VfioDevice(cdev) as dev,
        IommuFD() as ictx,
        DmaBuffer(PAGE, fill=0) as src,
        DmaBuffer(PAGE, fill=0) as page_a,
        DmaBuffer(PAGE, fill=0) as page_b,
    ):
        dev_id = dev.bind(ictx)
        info = ictx.hw_info(dev_id)
        facts["hw_info"] = {"data_type": int(info.data_type), "data": bytes(info.data)}
        ioas = ictx.ioas()
        dev.attach(ioas)
        edu = Edu(dev, dma_mask=dma_mask)
        ioas.map(src.addr, PAGE, SRC_IOVA)

        def copy_reaches(label: str) -> str:
            data = pattern(f"{seed}:{label}")
            src.write(0, data)
            page_a.write(0, bytes(DMA_LENGTH))
            page_b.write(0, bytes(DMA_LENGTH))
            edu.copy(SRC_IOVA, DST_IOVA, DMA_LENGTH)
            hits = [n for n, b in (("A", page_a), ("B", page_b)) if b.read(0, DMA_LENGTH) == data]
            return ",".join(hits) or "none"

        ioas.map(page_a.addr, PAGE, DST_IOVA)
        start = time.monotonic()
        facts["before"] = copy_reaches("before")
        facts["first_dma_s"] = round(time.monotonic() - start, 3)
        ioas.unmap(DST_IOVA, PAGE)
        facts["unmapped"] = copy_reaches("unmapped")
        # the guest SMMU driver prints events rate-limited (arm_smmu_evtq_thread: a burst
        # of 10 per DEFAULT_RATELIMIT_INTERVAL, 5 s): let this copy's faults age out so a
        # later fault check sees its own
        time.sleep(EVENT_RATELIMIT_S)
        ioas.map(page_b.addr, PAGE, DST_IOVA)
        facts["after"] = copy_reaches("after")
    rows = [
        _row("DMA to the mapped IOVA reaches page A", "A", facts["before"]),
        _row(
            "after unmap: DMA reaches no page",
            "none",
            facts["unmapped"],
            "A here is a stale IOTLB entry: the unmap's invalidation did not take effect",
        ),
        _row("after remap to page B: DMA reaches page B only", "B", facts["after"]),
    ]
    return {"rows": rows, "facts": facts}


@method
def fault(cdev: str, dma_mask: int, timeout: float = 20.0, settle: float = 1.0) -> dict[str, Any]:
    """Make the device write to an unmapped IOVA; the kernel log lines that follow.

    ``log`` is everything the kernel printed after the DMA (the host parses it for the
    vIOMMU's fault reports); ``reported`` whether a fault report appeared in time.
    """
    from harness.devices.edu import Edu
    from harness.driver import DmaBuffer, IommuFD, VfioDevice

    words = ("event 0x", "DMAR: [DMA")
    with VfioDevice(cdev) as dev, IommuFD() as ictx, DmaBuffer(PAGE, fill=0) as good:
        dev.bind(ictx)
        ioas = ictx.ioas()
        dev.attach(ioas)
        ioas.map(good.addr, PAGE, SRC_IOVA)
        edu = Edu(dev, dma_mask=dma_mask)
        good.write(0, pattern("fault-source"))
        edu.dma_to_device(SRC_IOVA, 64)
        marker = _mark()
        start = time.monotonic()
        edu.dma_from_device(FAULT_IOVA, 64)
        deadline = start + timeout
        text = _since(marker)
        while not any(w in text for w in words) and time.monotonic() < deadline:
            time.sleep(0.1)
            text = _since(marker)
        seen = time.monotonic() - start
        time.sleep(settle)
        return {
            "iova": FAULT_IOVA,
            "reported": any(w in text for w in words),
            "seconds": round(seen, 3),
            "log": _since(marker),
        }


@method
def attach(cdev: str) -> dict[str, Any]:
    """Program the vIOMMU without DMA (a device the harness cannot drive): attach, map, unmap."""
    from harness.driver import DmaBuffer, IommuFD, VfioDevice

    with VfioDevice(cdev) as dev, IommuFD() as ictx, DmaBuffer(PAGE, fill=0) as buf:
        dev.bind(ictx)
        ioas = ictx.ioas()
        dev.attach(ioas)
        ioas.map(buf.addr, PAGE, SRC_IOVA)
        unmapped = ioas.unmap(SRC_IOVA, PAGE)
    return {"rows": [_row("attach, map and unmap through the guest's vIOMMU", PAGE, unmapped)]}
