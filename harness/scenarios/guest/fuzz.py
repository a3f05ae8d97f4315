"""Guest half of the nesting uAPI fuzzer (``harness.fuzz``): execute steps, report outcomes.

The host runs hypothesis and the model (``harness.fuzz.model``); this module only does
what a step says, on a per-example ``Session`` (a fresh /dev/iommu fd: closing it frees
every object, so examples are independent and hypothesis can replay and shrink), and
reports what the kernel answered: ``{"outcome": "ok" | errno name, ...result fields}``.
It never judges.  A step is ``{"op": name, "args": {...}}`` with kernel IDs as the
arguments; ``Session.<op>(**args)`` is the same call, which is what a reproducer script
runs.  ``plant`` makes the executor send one wrong field in one rare state (a planted
bug the fuzzer must find and shrink; ``PLANTS`` lists them).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Callable
from typing import Any

from guests.agent import system
from guests.agent.server import method
from harness.driver import PAGE_SIZE, DmaBuffer, IoctlError, IommuFD, Selftest
from harness.driver.errors import errno_name
from harness.driver.iommufd import U64_MAX, invalidate, split_vevents
from harness.uapi import iommufd as uapi
from harness.uapi import iommufd_test as t

PAGES = 16
APERTURE = t.MOCK_APERTURE_START
RW_FIXED = int(
    uapi.IOMMU_IOAS_MAP_READABLE | uapi.IOMMU_IOAS_MAP_WRITEABLE | uapi.IOMMU_IOAS_MAP_FIXED_IOVA
)
SELFTEST_DATA = bytes(t.iommu_hwpt_selftest(iotlb=t.IOMMU_TEST_IOTLB_DEFAULT))
EVENT_PAYLOAD = ctypes.sizeof(t.iommu_viommu_event_selftest)
PGFAULT = ctypes.sizeof(uapi.iommu_hwpt_pgfault)
QUEUE_LINKS = ("[iommufd-viommu-event]", "[iommufd-pgfault]")
DEV_FLAGS = {"": 0, "nodirty": t.MOCK_FLAGS_DEVICE_NO_DIRTY, "pasid": t.MOCK_FLAGS_DEVICE_PASID}
OPTION_IDS = {
    "rlimit": int(uapi.IOMMU_OPTION_RLIMIT_MODE),
    "huge": int(uapi.IOMMU_OPTION_HUGE_PAGES),
    "bogus": 0xFFFF,
}
OPTION_OPS = {"get": int(uapi.IOMMU_OPTION_OP_GET), "set": int(uapi.IOMMU_OPTION_OP_SET), "bad": 7}
HW_INFO_TYPES = {
    "none": None,
    "default": int(uapi.IOMMU_HW_INFO_TYPE_DEFAULT),
    "selftest": t.IOMMU_HW_INFO_TYPE_SELFTEST,
    "vtd": int(uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD),
}
#: IOMMU_IOAS_ALLOW_IOVAS lists as inclusive (start, last) ranges
ALLOW_LISTS = {
    "clear": [],
    "inside": [(APERTURE, APERTURE + PAGES * PAGE_SIZE - 1)],
    "outside": [(0, APERTURE - 1)],
    "inverted": [(APERTURE, APERTURE)],
    "overlap": [
        (APERTURE, APERTURE + 2 * PAGE_SIZE - 1),
        (APERTURE + PAGE_SIZE, APERTURE + 4 * PAGE_SIZE - 1),
    ],
}
HIGH = U64_MAX - PAGE_SIZE + 1
#: planted bugs: name -> what the executor gets wrong
PLANTS = {
    "invalidate-nested-viommu-with-veventq": (
        "IOMMU_HWPT_INVALIDATE of a nested HWPT allocated over a vIOMMU, while a vEVENTQ fd "
        "is open: the entry's flags are sent as 0xffffffff"
    ),
}


class Session:
    """One /dev/iommu fd with the mock, a 16-page buffer, and the queue fds it opened."""

    #: bytes of vendor payload after each vEVENT header (the mock's vEVENT)
    event_payload = EVENT_PAYLOAD

    def __init__(self, plant: str | None = None) -> None:
        if plant is not None and plant not in PLANTS:
            raise ValueError(f"unknown plant {plant!r}; known: {', '.join(PLANTS)}")
        self.plant = plant
        self.buf = DmaBuffer(PAGES * PAGE_SIZE)
        self.ictx = IommuFD()
        self.st = Selftest(self.ictx)
        self.st.set_temp_memory_limit()
        #: queue fds by object ID, and which kind of queue each is
        self.fds: dict[int, int] = {}
        self.kinds: dict[int, str] = {}
        #: nested HWPT IDs allocated over a vIOMMU (for the planted bug only)
        self._viommu_nested: set[int] = set()
        self._viommus: set[int] = set()

    def close(self) -> None:
        """Close the queue fds and the iommufd (the kernel frees every object)."""
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()
        self.ictx.close(destroy=False)
        self.buf.close()

    def execute(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run one step; the kernel's answer as ``{"outcome": ..., fields}``."""
        fn = getattr(self, op, None)
        if fn is None or op.startswith("_") or op in ("close", "execute"):
            raise ValueError(f"unknown fuzz op {op!r}")
        try:
            fields: dict[str, Any] = fn(**args) or {}
        except IoctlError as err:
            out: dict[str, Any] = {"outcome": errno_name(err.errno or 0)}
            if err.entries_done is not None:
                out["done"] = err.entries_done
            return out
        except OSError as err:
            return {"outcome": errno_name(err.errno or 0)}
        return {"outcome": "ok", **fields}

    def _call(self, name: str, request: int, cmd: Any) -> None:
        self.ictx.call(name, request, cmd)

    # --- IOAS -------------------------------------------------------------------------

    def ioas_alloc(self) -> dict[str, Any]:
        cmd = uapi.iommu_ioas_alloc(ctypes.sizeof(uapi.iommu_ioas_alloc), 0, 0)
        self._call("IOMMU_IOAS_ALLOC", uapi.IOMMU_IOAS_ALLOC, cmd)
        return {"id": int(cmd.out_ioas_id)}

    def map(self, ioas: int, page: int, npages: int) -> dict[str, Any]:
        cmd = uapi.iommu_ioas_map(
            ctypes.sizeof(uapi.iommu_ioas_map), RW_FIXED, ioas, 0,
            self.buf.addr + page * PAGE_SIZE, npages * PAGE_SIZE, APERTURE + page * PAGE_SIZE,
        )  # fmt: skip
        self._call("IOMMU_IOAS_MAP", uapi.IOMMU_IOAS_MAP, cmd)
        return {}

    def _unmap(self, ioas: int, iova: int, length: int) -> dict[str, Any]:
        cmd = uapi.iommu_ioas_unmap(ctypes.sizeof(uapi.iommu_ioas_unmap), ioas, iova, length)
        self._call("IOMMU_IOAS_UNMAP", uapi.IOMMU_IOAS_UNMAP, cmd)
        return {"unmapped": int(cmd.length) // PAGE_SIZE}

    def unmap(self, ioas: int, page: int, npages: int) -> dict[str, Any]:
        return self._unmap(ioas, APERTURE + page * PAGE_SIZE, npages * PAGE_SIZE)

    def unmap_all(self, ioas: int) -> dict[str, Any]:
        return self._unmap(ioas, 0, U64_MAX)

    def copy(self, dst: int, src: int, src_page: int, dst_page: int, npages: int) -> dict[str, Any]:
        cmd = uapi.iommu_ioas_copy(
            ctypes.sizeof(uapi.iommu_ioas_copy), RW_FIXED, dst, src, npages * PAGE_SIZE,
            APERTURE + dst_page * PAGE_SIZE, APERTURE + src_page * PAGE_SIZE,
        )  # fmt: skip
        self._call("IOMMU_IOAS_COPY", uapi.IOMMU_IOAS_COPY, cmd)
        return {}

    # --- devices ----------------------------------------------------------------------

    def mock_device(self, pt: int, flags: str = "") -> dict[str, Any]:
        dev = self.st.mock_domain(pt, dev_flags=DEV_FLAGS[flags])
        return {"stdev": dev.id, "idev": dev.dev_id, "hwpt": dev.hwpt_id}

    def replace(self, dev: int, pt: int) -> dict[str, Any]:
        cmd = self.st.cmd(t.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, dev)
        cmd.mock_domain_replace.pt_id = pt
        self.st.call(cmd)
        return {"hwpt": int(cmd.mock_domain_replace.pt_id)}

    # --- HWPTs and the vIOMMU ---------------------------------------------------------

    def hwpt_alloc(
        self,
        dev: int,
        pt: int,
        nest_parent: bool,
        data: str,
        fault: int,
        dirty: bool = False,
        pasid: bool = False,
    ) -> dict[str, Any]:
        flags = int(uapi.IOMMU_HWPT_ALLOC_NEST_PARENT) if nest_parent else 0
        if dirty:
            flags |= int(uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        if pasid:
            flags |= int(uapi.IOMMU_HWPT_ALLOC_PASID)
        data_type, payload, length = {
            "none": (int(uapi.IOMMU_HWPT_DATA_NONE), None, None),
            "valid": (t.IOMMU_HWPT_DATA_SELFTEST, SELFTEST_DATA, None),
            "short": (t.IOMMU_HWPT_DATA_SELFTEST, SELFTEST_DATA, 3),
            "badtype": (0xFFFF, SELFTEST_DATA, None),
        }[data]
        hwpt = self.ictx.hwpt_alloc(
            dev, pt, flags=flags, data_type=data_type, data=payload, data_len=length,
            fault=None if fault < 0 else fault,
        )  # fmt: skip
        if pt in self._viommus:
            self._viommu_nested.add(hwpt.id)
        return {"id": hwpt.id}

    def viommu_alloc(self, dev: int, hwpt: int) -> dict[str, Any]:
        viommu = self.ictx.viommu(dev, hwpt, t.IOMMU_VIOMMU_TYPE_SELFTEST)
        self._viommus.add(viommu.id)
        return {"id": viommu.id}

    def vdevice_alloc(self, viommu: int, dev: int, virt_id: int) -> dict[str, Any]:
        cmd = uapi.iommu_vdevice_alloc(
            ctypes.sizeof(uapi.iommu_vdevice_alloc), viommu, dev, 0, virt_id
        )
        self._call("IOMMU_VDEVICE_ALLOC", uapi.IOMMU_VDEVICE_ALLOC, cmd)
        return {"id": int(cmd.out_vdevice_id)}

    def veventq_alloc(
        self, viommu: int, depth: int, type: int = t.IOMMU_VEVENTQ_TYPE_SELFTEST
    ) -> dict[str, Any]:
        cmd = uapi.iommu_veventq_alloc(
            ctypes.sizeof(uapi.iommu_veventq_alloc), 0, viommu, type, depth, 0, 0, 0
        )
        self._call("IOMMU_VEVENTQ_ALLOC", uapi.IOMMU_VEVENTQ_ALLOC, cmd)
        qid = int(cmd.out_veventq_id)
        self.fds[qid] = int(cmd.out_veventq_fd)
        self.kinds[qid] = "VEVENTQ"
        return {"id": qid}

    def vfio_ioas(self, action: str, ioas: int) -> dict[str, Any]:
        op = {"get": uapi.IOMMU_VFIO_IOAS_GET, "set": uapi.IOMMU_VFIO_IOAS_SET,
              "clear": uapi.IOMMU_VFIO_IOAS_CLEAR}.get(action, 7)  # fmt: skip
        cmd = uapi.iommu_vfio_ioas(ctypes.sizeof(uapi.iommu_vfio_ioas), ioas, int(op), 0)
        self._call("IOMMU_VFIO_IOAS", uapi.IOMMU_VFIO_IOAS, cmd)
        return {"ioas": int(cmd.ioas_id)} if action == "get" else {}

    def fault_alloc(self) -> dict[str, Any]:
        cmd = uapi.iommu_fault_alloc(ctypes.sizeof(uapi.iommu_fault_alloc), 0, 0, 0)
        self._call("IOMMU_FAULT_QUEUE_ALLOC", uapi.IOMMU_FAULT_QUEUE_ALLOC, cmd)
        qid = int(cmd.out_fault_id)
        self.fds[qid] = int(cmd.out_fault_fd)
        self.kinds[qid] = "FAULT"
        return {"id": qid}

    def destroy(self, id: int) -> dict[str, Any]:
        self.ictx.destroy(id)
        return {}

    # --- options, hardware info, IOVA ranges ------------------------------------------

    def option(self, option: str, action: str, object_id: int, value: int) -> dict[str, Any]:
        """IOMMU_OPTION; ``action`` is the op field (``op`` names the step)."""
        request = OPTION_OPS[action]
        val = self.ictx.option(OPTION_IDS[option], request, object_id=object_id, val64=value)
        return {"value": val} if action == "get" else {}

    def hw_info(self, dev: int, data_type: str) -> dict[str, Any]:
        info = self.ictx.hw_info(dev, data_len=64, data_type=HW_INFO_TYPES[data_type])
        return {
            "type": info.data_type,
            "length": info.data_len,
            "test_reg": int.from_bytes(info.data[4:8], "little"),
            "capabilities": info.capabilities,
            "max_pasid_log2": info.max_pasid_log2,
        }

    def iova_ranges(self, ioas: int, capacity: int) -> dict[str, Any]:
        array = (uapi.iommu_iova_range * max(capacity, 1))()
        cmd = uapi.iommu_ioas_iova_ranges(
            ctypes.sizeof(uapi.iommu_ioas_iova_ranges), ioas, capacity, 0,
            ctypes.addressof(array), 0,
        )  # fmt: skip
        self._call("IOMMU_IOAS_IOVA_RANGES", uapi.IOMMU_IOAS_IOVA_RANGES, cmd)
        count = int(cmd.num_iovas)
        return {
            "ranges": [[int(r.start), int(r.last)] for r in array[:count]],
            "alignment": int(cmd.out_iova_alignment),
        }

    def allow_iovas(self, ioas: int, kind: str) -> dict[str, Any]:
        ranges = ALLOW_LISTS[kind]
        array = (uapi.iommu_iova_range * max(len(ranges), 1))(
            *(uapi.iommu_iova_range(start, last) for start, last in ranges)
        )
        cmd = uapi.iommu_ioas_allow_iovas(
            ctypes.sizeof(uapi.iommu_ioas_allow_iovas), ioas, len(ranges), 0,
            ctypes.addressof(array),
        )  # fmt: skip
        self._call("IOMMU_IOAS_ALLOW_IOVAS", uapi.IOMMU_IOAS_ALLOW_IOVAS, cmd)
        return {}

    # --- dirty tracking ---------------------------------------------------------------

    def set_dirty_tracking(self, hwpt: int, enable: bool, badflags: bool) -> dict[str, Any]:
        flags = 1 << 31 if badflags else int(enable)
        cmd = uapi.iommu_hwpt_set_dirty_tracking(
            ctypes.sizeof(uapi.iommu_hwpt_set_dirty_tracking), flags, hwpt, 0
        )
        self._call("IOMMU_HWPT_SET_DIRTY_TRACKING", uapi.IOMMU_HWPT_SET_DIRTY_TRACKING, cmd)
        return {}

    def mark_dirty(self, hwpt: int, page: int, npages: int, mask: int) -> dict[str, Any]:
        count = self.st.set_dirty(
            hwpt, APERTURE + page * PAGE_SIZE, npages * PAGE_SIZE, PAGE_SIZE,
            mask.to_bytes(8, "little"),
        )  # fmt: skip
        return {"count": count}

    def dirty_bitmap(
        self, hwpt: int, page: int, npages: int, shape: str, no_clear: bool
    ) -> dict[str, Any]:
        iova, length, flags = APERTURE + page * PAGE_SIZE, npages * PAGE_SIZE, 0
        if shape == "zero":
            length = 0
        elif shape == "unaligned":
            iova += PAGE_SIZE // 4
        elif shape == "wrap":
            iova, length = HIGH, 2 * PAGE_SIZE
        elif shape == "badflags":
            flags = 1 << 31
        if no_clear:
            flags |= int(uapi.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR)
        bitmap = ctypes.create_string_buffer(8)
        cmd = uapi.iommu_hwpt_get_dirty_bitmap(
            ctypes.sizeof(uapi.iommu_hwpt_get_dirty_bitmap), hwpt, flags, 0, iova, length,
            PAGE_SIZE, ctypes.addressof(bitmap),
        )  # fmt: skip
        self._call("IOMMU_HWPT_GET_DIRTY_BITMAP", uapi.IOMMU_HWPT_GET_DIRTY_BITMAP, cmd)
        return {"bitmap": int.from_bytes(bitmap.raw, "little")}

    # --- PASID attachments of mock devices --------------------------------------------

    def _pasid_cmd(self, op: int, dev: int, pasid: int, pt: int) -> None:
        cmd = self.st.cmd(op, dev)
        cmd.pasid_attach.pasid = pasid  # attach, replace, detach, check share the layout
        cmd.pasid_attach.pt_id = pt
        self.st.call(cmd)

    def pasid_attach(self, dev: int, pasid: int, pt: int) -> dict[str, Any]:
        self._pasid_cmd(t.IOMMU_TEST_OP_PASID_ATTACH, dev, pasid, pt)
        return {}

    def pasid_replace(self, dev: int, pasid: int, pt: int) -> dict[str, Any]:
        self._pasid_cmd(t.IOMMU_TEST_OP_PASID_REPLACE, dev, pasid, pt)
        return {}

    def pasid_detach(self, dev: int, pasid: int) -> dict[str, Any]:
        self._pasid_cmd(t.IOMMU_TEST_OP_PASID_DETACH, dev, pasid, 0)
        return {}

    def pasid_check(self, dev: int, pasid: int, hwpt: int) -> dict[str, Any]:
        self._pasid_cmd(t.IOMMU_TEST_OP_PASID_CHECK_HWPT, dev, pasid, hwpt)
        return {}

    # --- invalidation -----------------------------------------------------------------

    def invalidate(
        self, target: int, data_type: str, entry: str, index: int, virt_id: int
    ) -> dict[str, Any]:
        flags = {"all": t.IOMMU_TEST_INVALIDATE_FLAG_ALL, "badflags": 0xFFFF_FFFF}.get(entry, 0)
        if (
            self.plant == "invalidate-nested-viommu-with-veventq"
            and target in self._viommu_nested
            and any(kind == "VEVENTQ" for kind in self.kinds.values())
        ):
            flags = 0xFFFF_FFFF  # the planted bug
        bad_index = entry == "badid"
        if data_type in ("hwpt", "badtype"):
            kind = (
                t.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST
                if data_type == "hwpt"
                else t.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID
            )
            one: Any = t.iommu_hwpt_invalidate_selftest(
                flags, t.MOCK_NESTED_DOMAIN_IOTLB_ID_MAX + 1 if bad_index else index
            )
        else:
            kind = t.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST
            one = t.iommu_viommu_invalidate_selftest(
                flags, virt_id, t.MOCK_DEV_CACHE_ID_MAX + 1 if bad_index else index
            )
        size = ctypes.sizeof(one)
        if entry == "empty":
            done = invalidate(self.ictx, target, kind, [], entry_len=size, entry_num=0)
        elif entry == "nolen":
            done = invalidate(self.ictx, target, kind, bytes(one), entry_len=0, entry_num=1)
        else:
            done = invalidate(self.ictx, target, kind, [one])
        return {"done": done}

    # --- events and faults ------------------------------------------------------------

    def trigger_vevent(self, dev: int) -> dict[str, Any]:
        self.st.trigger_vevent(dev)
        return {}

    def trigger_iopf(self, dev: int) -> dict[str, Any]:
        self.st.trigger_iopf(dev)
        return {}

    def _fd(self, queue: int, kind: str) -> int:
        if self.kinds.get(queue) != kind or queue not in self.fds:
            raise OSError(errno.EBADF, f"no open {kind} fd for object {queue}")
        return self.fds[queue]

    def read_vevents(self, queue: int) -> dict[str, Any]:
        fd = self._fd(queue, "VEVENTQ")
        records: list[list[Any]] = []
        while data := os.read(fd, 4096):
            for event in split_vevents(data, self.event_payload):
                records.append(["lost" if event.lost_events else "event", event.sequence])
        return {"records": records}

    def read_faults(self, queue: int) -> dict[str, Any]:
        fd = self._fd(queue, "FAULT")
        count = 0
        while data := os.read(fd, 64 * PGFAULT):
            count += len(data) // PGFAULT
        return {"records": count}

    def close_fd(self, queue: int) -> dict[str, Any]:
        if queue not in self.fds:
            raise OSError(errno.EBADF, f"no open queue fd for object {queue}")
        os.close(self.fds.pop(queue))
        self.kinds.pop(queue, None)
        return {}


def queue_fds() -> int:
    """Open fds of this process that are iommufd vEVENTQ or fault queues (from /proc)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}").endswith(QUEUE_LINKS):
                count += 1
    return count


_SESSION: dict[str, Any] = {}


def start(make: Callable[[], Session]) -> str:
    """Start an example on a fresh session from ``make`` (closing an earlier one); a
    kernel-log mark for ``end``.  Tier 2's ``fuzz_smmuv3.begin`` comes through here too."""
    old = _SESSION.pop("session", None)
    if old is not None:
        old.close()
    mark = str(system.dmesg_mark())
    _SESSION["session"] = make()
    _SESSION["mark"] = mark
    return mark


@method
def begin(plant: str | None = None) -> str:
    """Start an example on the mock: a fresh session; returns a kernel-log mark."""
    return start(lambda: Session(plant))


@method
def step(op: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run one step in the current session."""
    session = _SESSION.get("session")
    if session is None:
        raise RuntimeError("fuzz.step before fuzz.begin")
    result: dict[str, Any] = session.execute(op, args)
    return result


@method
def end() -> dict[str, Any]:
    """End the example: queue fds open before closing, fds left after, kernel log since."""
    session = _SESSION.pop("session", None)
    open_before = queue_fds()
    if session is not None:
        session.close()
    return {
        "queue_fds": open_before,
        "queue_fds_after_close": queue_fds(),
        "dmesg": system.dmesg(since=_SESSION.pop("mark", None)),
    }


def replay(make: Callable[[], Session], steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Replay ``steps`` in one fresh session from ``make``; each answer, then ``end``'s."""
    start(make)
    answers = [step(s["op"], s["args"]) for s in steps]
    return {"answers": answers, **end()}


@method
def run(steps: list[dict[str, Any]], plant: str | None = None) -> dict[str, Any]:
    """Replay ``steps`` on the mock in one fresh session; each answer, then ``end``'s."""
    return replay(lambda: Session(plant), steps)
