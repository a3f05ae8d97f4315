"""Guest half of the tier-2 fuzzer: the edu device's VFIO cdev behind QEMU's SMMUv3.

The same protocol as tier 1 (``harness.scenarios.guest.fuzz``): ``begin`` and ``run``
here make a ``SmmuSession`` on the cdev, then ``fuzz.step`` and ``fuzz.end`` as there; a
session per example, ``{"op", "args"}`` steps with kernel IDs, the kernel's answer back,
never a judgement.  The session has no mock: its device is the VFIO cdev it opens and
binds (``bind``), and the vIOMMU, nested HWPTs, vEVENTQs and invalidations are the SMMUv3
driver's.  IOAS, fault-queue, destroy and queue-fd steps are tier 1's.  The host builds
every vSTE and invalidation command (words 0-1); this side only lays them out.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
from typing import Any

from guests.agent.server import method
from harness.devices.edu import Edu
from harness.driver import PAGE_SIZE, DmaBuffer, IommuFD
from harness.driver.iommufd import invalidate
from harness.driver.vfio import VfioDevice
from harness.scenarios.guest import fuzz as tier1
from harness.uapi import iommufd as uapi

EVENT_PAYLOAD = 32  # struct iommu_vevent_arm_smmuv3: evt[4]
HW_INFO_FLAG_INPUT_TYPE = 1
HW_INFO_WORDS = struct.Struct("<10I")  # flags, __reserved, idr[6], iidr, aidr
INVALIDATE_TYPE = int(uapi.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3)
STE_TYPE = int(uapi.IOMMU_HWPT_DATA_ARM_SMMUV3)
FAULT_ID_VALID = 1 << 2  # the driver sets it from ``fault``, not from ``flags``
EDU_DMA_MASK = (1 << 48) - 1  # the machine's edu has mask=2^48-1 (harness.scenarios.smmuv3)
DMA_DST_OFFSET = 64
STE1_EATS_SPLIT = 2 << 28  # EATS 0b10: the vSMMU refuses it (EIO)
#: planted bugs: name -> what the executor gets wrong
PLANTS = {
    "nested-ste-eats-with-vdevice": (
        "IOMMU_HWPT_ALLOC of a nested HWPT over a vIOMMU that has a vDEVICE: the vSTE goes "
        "with EATS 0b10 (split-stage ATS) in word 1"
    ),
}


def _words(words: list[int]) -> bytes:
    return b"".join(int(w).to_bytes(8, "little") for w in words)


class SmmuSession(tier1.Session):
    """One /dev/iommu fd, a 16-page buffer, the queue fds, and the device's cdev."""

    event_payload = EVENT_PAYLOAD

    def __init__(self, cdev: str, plant: str | None = None) -> None:  # no mock: no super()
        if plant is not None and plant not in PLANTS:
            raise ValueError(f"unknown plant {plant!r}; known: {', '.join(PLANTS)}")
        self.plant = plant
        self.cdev = cdev
        self.buf = DmaBuffer(tier1.PAGES * PAGE_SIZE)
        self.ictx = IommuFD()
        self.fds: dict[int, int] = {}
        self.kinds: dict[int, str] = {}
        self._viommu_nested: set[int] = set()
        self._viommus: set[int] = set()
        self.dev: VfioDevice | None = None
        self.nonce = int.from_bytes(os.urandom(8), "little")
        #: vIOMMU IDs that have a vDEVICE (for the planted bug only)
        self._with_vdevice: set[int] = set()

    def close(self) -> None:
        """Close the device (the kernel detaches and unbinds it), then tier 1's close."""
        self._unbind_quietly()
        super().close()

    def _unbind_quietly(self) -> None:
        if self.dev is not None:
            with contextlib.suppress(OSError):
                self.dev.close()
            self.dev = None

    def _device(self) -> VfioDevice:
        if self.dev is None:
            raise OSError(errno.EBADF, "the device is not bound (its fd is closed)")
        return self.dev

    # --- the device -------------------------------------------------------------------

    def bind(self) -> dict[str, Any]:
        dev = VfioDevice(self.cdev)
        try:
            dev_id = dev.bind(self.ictx)
        except BaseException:
            dev.close()
            raise
        self.dev = dev
        return {"id": dev_id}

    def unbind(self) -> dict[str, Any]:
        self._device()
        self._unbind_quietly()
        return {}

    def attach(self, pt: int) -> dict[str, Any]:
        return {"hwpt": self._device().attach(pt)}

    def detach(self) -> dict[str, Any]:
        self._device().detach()
        return {}

    def dma(self, src: int, dst: int, marker: int) -> dict[str, Any]:
        """edu copies 8 bytes from IOVA page ``src`` (offset 0) to IOVA page ``dst`` (offset
        64).  Every buffer page holds the marker at offset 0 first, so the marker reaches
        a buffer page iff both pages translate: ``landed`` is that page (None: it reached
        none).  The marker is mixed with a per-session nonce, so a stale copy in edu's
        buffer from an earlier session or replay never counts."""
        dev = self._device()
        value = (marker ^ self.nonce).to_bytes(8, "little")
        src_iova = tier1.APERTURE + src * PAGE_SIZE
        dst_iova = tier1.APERTURE + dst * PAGE_SIZE + DMA_DST_OFFSET
        with self.buf.view as view:
            for page in range(tier1.PAGES):
                base = page * PAGE_SIZE
                view[base : base + 8] = value
                view[base + DMA_DST_OFFSET : base + DMA_DST_OFFSET + 8] = bytes(8)
            Edu(dev, dma_mask=EDU_DMA_MASK).copy(src_iova, dst_iova, 8)
            at = [page * PAGE_SIZE + DMA_DST_OFFSET for page in range(tier1.PAGES)]
            landed = [i for i, offset in enumerate(at) if view[offset : offset + 8] == value]
        return {"landed": landed[0] if len(landed) == 1 else (landed or None)}

    def hw_info(self, dev: int, type: int) -> dict[str, Any]:  # type: ignore[override,unused-ignore]
        buf = ctypes.create_string_buffer(64)
        cmd = uapi.iommu_hw_info(
            ctypes.sizeof(uapi.iommu_hw_info), 0, dev, len(buf), ctypes.addressof(buf)
        )
        if type < 0:
            cmd.flags = 1 << 1  # a flag the kernel does not know
        elif type:
            cmd.flags = HW_INFO_FLAG_INPUT_TYPE
            cmd.in_data_type = type
        self._call("IOMMU_GET_HW_INFO", uapi.IOMMU_GET_HW_INFO, cmd)
        words = HW_INFO_WORDS.unpack_from(buf.raw)
        return {
            "data_type": int(cmd.out_data_type),
            "data_len": int(cmd.data_len),
            "idr": list(words[2:8]),
            "iidr": words[8],
            "aidr": words[9],
        }

    # --- HWPTs and the vIOMMU ---------------------------------------------------------

    def hwpt_alloc(  # type: ignore[override]
        self, dev: int, pt: int, flags: int, ste: str, words: list[int], fault: int
    ) -> dict[str, Any]:
        if self.plant == "nested-ste-eats-with-vdevice" and pt in self._with_vdevice and words[0]:
            words = [words[0], words[1] | STE1_EATS_SPLIT]  # the planted bug
        data = _words(words)
        data_type, payload, length = {
            "none": (int(uapi.IOMMU_HWPT_DATA_NONE), None, None),
            "short": (STE_TYPE, data, 8),
            "long": (STE_TYPE, data + bytes(8), None),
            "badtype": (0xFF, data, None),
        }.get(ste, (STE_TYPE, data, None))
        hwpt = self.ictx.hwpt_alloc(
            dev, pt, flags=flags & ~FAULT_ID_VALID, data_type=data_type, data=payload,
            data_len=length, fault=None if fault < 0 else fault,
        )  # fmt: skip
        return {"id": hwpt.id}

    def viommu_alloc(self, dev: int, hwpt: int, type: int) -> dict[str, Any]:  # type: ignore[override]
        return {"id": self.ictx.viommu(dev, hwpt, type).id}

    def vdevice_alloc(self, viommu: int, dev: int, virt_id: int) -> dict[str, Any]:
        made = super().vdevice_alloc(viommu, dev, virt_id)
        self._with_vdevice.add(viommu)
        return made

    # --- invalidation -----------------------------------------------------------------

    def invalidate(  # type: ignore[override]
        self, target: int, commands: list[list[int]], layout: str
    ) -> dict[str, Any]:
        entry = {"short": 8, "long0": 24, "longx": 24}.get(layout, 16)
        blob = b""
        for words in commands:
            raw = _words(words)
            blob += {
                "short": raw[:8],
                "long0": raw + bytes(8),
                "longx": raw + b"\x01" + bytes(7),
            }.get(layout, raw)
        kind = 0xFF if layout == "badtype" else INVALIDATE_TYPE
        if layout == "empty":
            done = invalidate(self.ictx, target, kind, b"", entry_len=entry, entry_num=0)
        elif layout == "nolen":
            done = invalidate(self.ictx, target, kind, blob, entry_len=0, entry_num=len(commands))
        else:
            done = invalidate(self.ictx, target, kind, blob, entry_len=entry)
        return {"done": done}


@method
def begin(cdev: str, plant: str | None = None) -> str:
    """Start an example on ``cdev``: a fresh session; returns a kernel-log mark (then
    ``fuzz.step`` and ``fuzz.end`` as in tier 1)."""
    return tier1.start(lambda: SmmuSession(cdev, plant))


@method
def run(steps: list[dict[str, Any]], cdev: str, plant: str | None = None) -> dict[str, Any]:
    """Replay ``steps`` on ``cdev`` in one fresh session; each answer, then ``end``'s."""
    return tier1.replay(lambda: SmmuSession(cdev, plant), steps)
