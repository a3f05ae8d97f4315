"""The iommufd driver on a fake kernel: bytes passed, free order, errors, expect_errno."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guests.agent.server import error_payload
from harness.driver import (
    FIXED_IOVA,
    PROT_RW,
    CheckTable,
    DmaBuffer,
    ExpectError,
    IoctlError,
    IommuFD,
    NestedHwpt,
    PagingHwpt,
    Selftest,
    TeardownError,
    errno_name,
    expect_errno,
    format_rows,
)
from harness.driver.iommufd import split_faults, split_vevents
from harness.errors import HarnessError
from harness.uapi import iommufd as uapi
from harness.uapi import iommufd_test as t

pytestmark = pytest.mark.tier0

#: ioctls that allocate an object, with the offset of their out ID (and out fd)
_ALLOC_OUT = {
    uapi.IOMMU_IOAS_ALLOC: (8, None),
    uapi.IOMMU_HWPT_ALLOC: (16, None),
    uapi.IOMMU_VIOMMU_ALLOC: (20, None),
    uapi.IOMMU_VDEVICE_ALLOC: (12, None),
    uapi.IOMMU_FAULT_QUEUE_ALLOC: (8, 12),
    uapi.IOMMU_VEVENTQ_ALLOC: (20, 24),
    uapi.IOMMU_HW_QUEUE_ALLOC: (20, None),
}

Handler = Callable[[int, Any], int | None]


class FakeKernel:
    """A Backend that records every call and plays a tiny iommufd: IDs from 1, fds from 100."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.next_id = 1
        self.next_fd = 100
        self.fail: dict[int, int] = {}
        self.handlers: dict[int, Handler] = {}
        self.reads: dict[int, list[bytes]] = {}

    def _fd(self) -> int:
        self.next_fd += 1
        return self.next_fd

    def open(self, path: str, flags: int) -> int:
        fd = self._fd()
        self.calls.append(("open", path, fd))
        return fd

    def close(self, fd: int) -> None:
        self.calls.append(("close", fd))

    def ioctl(self, fd: int, request: int, arg: Any) -> int:
        data = arg if isinstance(arg, int) else bytes(arg)
        self.calls.append(("ioctl", fd, request, data))
        if request in self.fail:
            raise OSError(self.fail.pop(request), "fake")
        if request in self.handlers:
            return self.handlers[request](fd, arg) or 0
        if request == t.IOMMU_TEST_CMD and not isinstance(arg, int):
            return self._test_cmd(arg)
        if request in _ALLOC_OUT and not isinstance(arg, int):
            id_offset, fd_offset = _ALLOC_OUT[request]
            struct.pack_into("=I", arg, id_offset, self.next_id)
            self.next_id += 1
            if fd_offset is not None:
                struct.pack_into("=I", arg, fd_offset, self._fd())
        return 0

    def _test_cmd(self, cmd: Any) -> int:
        if cmd.op in (t.IOMMU_TEST_OP_MOCK_DOMAIN, t.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS):
            cmd.mock_domain.out_stdev_id = self.next_id
            cmd.mock_domain.out_hwpt_id = self.next_id + 1
            cmd.mock_domain.out_idev_id = self.next_id + 2
            self.next_id += 3
        return 0

    def read(self, fd: int, count: int) -> bytes:
        self.calls.append(("read", fd, count))
        queue = self.reads.get(fd, [])
        return queue.pop(0) if queue else b""

    def write(self, fd: int, data: bytes) -> int:
        self.calls.append(("write", fd, bytes(data)))
        return len(data)

    def pread(self, fd: int, count: int, offset: int) -> bytes:
        return bytes(count)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        return len(data)

    def mmap(self, fd: int, length: int, offset: int, prot: int) -> mmap.mmap:
        return mmap.mmap(-1, length)

    # --- views of what happened ---

    def ioctls(self, request: int | None = None) -> list[Any]:
        return [c[3] for c in self.calls if c[0] == "ioctl" and request in (None, c[2])]

    def destroyed(self) -> list[int]:
        """IDs passed to IOMMU_DESTROY, in order."""
        return [
            struct.unpack_from("=II", c[3])[1]
            for c in self.calls
            if c[0] == "ioctl" and c[2] == uapi.IOMMU_DESTROY
        ]


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


@pytest.fixture
def ictx(kernel: FakeKernel) -> IommuFD:
    return IommuFD(backend=kernel)


# --- argument packing -------------------------------------------------------------------


def test_map_fixed_iova_passes_the_kernel_layout(kernel: FakeKernel, ictx: IommuFD) -> None:
    ioas = ictx.ioas()
    assert ioas.map(0x7F00_0000_0000, 0x2000, 0x10_0000) == 0x10_0000
    (sent,) = kernel.ioctls(uapi.IOMMU_IOAS_MAP)
    assert sent == struct.pack(
        "=IIIIQQQ", 40, FIXED_IOVA | PROT_RW, ioas.id, 0, 0x7F00_0000_0000, 0x2000, 0x10_0000
    )


def test_map_returns_the_iova_the_kernel_chose(kernel: FakeKernel, ictx: IommuFD) -> None:
    def choose(fd: int, arg: Any) -> None:
        struct.pack_into("=Q", arg, 32, 0x100_0000)

    kernel.handlers[uapi.IOMMU_IOAS_MAP] = choose
    ioas = ictx.ioas()
    assert ioas.map(0x1000, 0x1000, prot=uapi.IOMMU_IOAS_MAP_READABLE) == 0x100_0000
    flags = struct.unpack_from("=I", kernel.ioctls(uapi.IOMMU_IOAS_MAP)[0], 4)[0]
    assert flags == uapi.IOMMU_IOAS_MAP_READABLE


@settings(max_examples=50, deadline=None)
@given(
    iova=st.integers(0, (1 << 64) - 1),
    length=st.integers(0, (1 << 64) - 1),
    ioas_id=st.integers(1, (1 << 32) - 1),
)
def test_unmap_packs_any_range_and_returns_the_kernels_length(
    iova: int, length: int, ioas_id: int
) -> None:
    kernel = FakeKernel()
    kernel.next_id = ioas_id
    kernel.handlers[uapi.IOMMU_IOAS_UNMAP] = lambda fd, arg: struct.pack_into("=Q", arg, 16, 7)
    ioas = IommuFD(backend=kernel).ioas()
    assert ioas.unmap(iova, length) == 7
    assert kernel.ioctls(uapi.IOMMU_IOAS_UNMAP)[0] == struct.pack(
        "=IIQQ", 24, ioas_id, iova, length
    )


def test_unmap_all_is_zero_to_u64_max(kernel: FakeKernel, ictx: IommuFD) -> None:
    ictx.ioas().unmap_all()
    assert struct.unpack("=IIQQ", kernel.ioctls(uapi.IOMMU_IOAS_UNMAP)[0])[2:] == (0, (1 << 64) - 1)


def test_copy_names_both_ioas(kernel: FakeKernel, ictx: IommuFD) -> None:
    src, dst = ictx.ioas(), ictx.ioas()
    dst.copy_from(src, 0x1000, 0x2000, 0x5000)
    assert kernel.ioctls(uapi.IOMMU_IOAS_COPY)[0] == struct.pack(
        "=IIIIQQQ", 40, FIXED_IOVA | PROT_RW, dst.id, src.id, 0x2000, 0x5000, 0x1000
    )


def test_iova_ranges_grows_its_array_on_emsgsize(kernel: FakeKernel, ictx: IommuFD) -> None:
    def ranges(fd: int, arg: Any) -> None:
        capacity = struct.unpack_from("=I", arg, 8)[0]
        struct.pack_into("=I", arg, 8, 3)
        struct.pack_into("=Q", arg, 24, 4096)
        if capacity < 3:
            raise OSError(errno.EMSGSIZE, "too small")
        base = struct.unpack_from("=Q", arg, 16)[0]
        ctypes.memmove(base, struct.pack("=6Q", 0, 9, 20, 29, 40, 49), 48)

    kernel.handlers[uapi.IOMMU_IOAS_IOVA_RANGES] = ranges
    result = ictx.ioas().iova_ranges(capacity=1)
    assert result.ranges == [(0, 9), (20, 29), (40, 49)]
    assert result.alignment == 4096
    assert len(kernel.ioctls(uapi.IOMMU_IOAS_IOVA_RANGES)) == 2


def test_allow_iovas_passes_the_ranges_by_pointer(kernel: FakeKernel, ictx: IommuFD) -> None:
    seen: list[bytes] = []

    def capture(fd: int, arg: Any) -> None:
        _, _, num, _, ptr = struct.unpack_from("=IIIIQ", arg)
        seen.append(ctypes.string_at(ptr, num * 16))

    kernel.handlers[uapi.IOMMU_IOAS_ALLOW_IOVAS] = capture
    ictx.ioas().allow_iovas([(0x1000, 0x1FFF), (0x10000, 0x1FFFF)])
    assert seen == [struct.pack("=4Q", 0x1000, 0x1FFF, 0x10000, 0x1FFFF)]


def test_nested_hwpt_passes_vendor_data_and_fault_id(kernel: FakeKernel, ictx: IommuFD) -> None:
    seen: list[tuple[int, ...]] = []

    def capture(fd: int, arg: Any) -> None:
        fields = struct.unpack_from("=8IQII", arg)
        seen.append(fields)
        if fields[6]:
            seen.append(struct.unpack("=II", ctypes.string_at(fields[8], fields[7])))
        struct.pack_into("=I", arg, 16, 40 + len(seen))

    kernel.handlers[uapi.IOMMU_HWPT_ALLOC] = capture
    ioas = ictx.ioas()
    parent = ioas.paging_hwpt(7, nest_parent=True)
    fault = ictx.fault_queue()
    data = t.iommu_hwpt_selftest(iotlb=t.IOMMU_TEST_IOTLB_DEFAULT)
    nested = parent.nested(7, t.IOMMU_HWPT_DATA_SELFTEST, data, fault=fault)
    assert isinstance(parent, PagingHwpt) and parent.nest_parent
    assert isinstance(nested, NestedHwpt) and nested.parent is parent
    assert seen[0][:4] == (48, uapi.IOMMU_HWPT_ALLOC_NEST_PARENT, 7, ioas.id)
    size, flags, dev, pt, _, _, dtype, dlen, _, fault_id, _ = seen[1]
    assert (size, dev, pt, dtype, dlen) == (48, 7, parent.id, t.IOMMU_HWPT_DATA_SELFTEST, 8)
    assert flags == uapi.IOMMU_HWPT_FAULT_ID_VALID and fault_id == fault.id
    assert seen[2] == (t.IOMMU_TEST_IOTLB_DEFAULT, 0)


def test_invalidate_packs_entries_and_reports_entry_num(kernel: FakeKernel, ictx: IommuFD) -> None:
    seen: list[bytes] = []

    def handle(fd: int, arg: Any) -> None:
        _, _, ptr, _, elen, num, _ = struct.unpack_from("=IIQIIII", arg)
        seen.append(ctypes.string_at(ptr, elen * num))
        struct.pack_into("=I", arg, 24, 1)
        raise OSError(errno.EOPNOTSUPP, "second entry has bad flags")

    kernel.handlers[uapi.IOMMU_HWPT_INVALIDATE] = handle
    nested = ictx.hwpt_alloc(1, 2, data_type=t.IOMMU_HWPT_DATA_SELFTEST, data=b"\0" * 8)
    assert isinstance(nested, NestedHwpt)
    entries = [
        t.iommu_hwpt_invalidate_selftest(flags=0, iotlb_id=0),
        t.iommu_hwpt_invalidate_selftest(flags=0xFFFFFFFF, iotlb_id=1),
    ]
    err = expect_errno(
        errno.EOPNOTSUPP, nested.invalidate, entries, t.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST
    )
    assert err.entries_done == 1
    assert "entry_num=1 done" in str(err)
    assert seen == [struct.pack("=4I", 0, 0, 0xFFFFFFFF, 1)]
    sent = kernel.ioctls(uapi.IOMMU_HWPT_INVALIDATE)[0]
    assert struct.unpack_from("=II", sent) == (32, nested.id)
    assert struct.unpack_from("=IIII", sent, 16) == (t.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, 8, 2, 0)


def test_invalidate_entry_len_override_pads_each_entry(kernel: FakeKernel, ictx: IommuFD) -> None:
    seen: list[tuple[int, int, bytes]] = []

    def handle(fd: int, arg: Any) -> None:
        _, _, ptr, _, elen, num, _ = struct.unpack_from("=IIQIIII", arg)
        seen.append((elen, num, ctypes.string_at(ptr, elen * num) if ptr else b""))

    kernel.handlers[uapi.IOMMU_HWPT_INVALIDATE] = handle
    entry = t.iommu_hwpt_invalidate_selftest(flags=1, iotlb_id=2)
    ictx.hwpt_alloc(1, 2, data_type=1, data=b"x").close()
    viommu = ictx.viommu(1, 2, t.IOMMU_VIOMMU_TYPE_SELFTEST)
    viommu.invalidate([entry], 5, entry_len=12)
    viommu.invalidate(None, 5, entry_len=8, entry_num=1)
    viommu.invalidate([], 5)
    assert seen[0] == (12, 1, struct.pack("=II", 1, 2) + bytes(4))
    assert seen[1] == (8, 1, b"")
    assert seen[2][:2] == (0, 0)


def test_mock_domain_and_checks_use_iommu_test_cmd(kernel: FakeKernel, ictx: IommuFD) -> None:
    st_ = Selftest(ictx)
    ioas = ictx.ioas()
    dev = st_.mock_domain(ioas)
    assert (dev.id, dev.hwpt_id, dev.dev_id) == (2, 3, 4)
    st_.check_iotlb(9, 3, 0xBADBEEF)
    mock, check = kernel.ioctls(t.IOMMU_TEST_CMD)
    size = ctypes.sizeof(t.iommu_test_cmd)
    assert struct.unpack_from("=IIII", mock) == (size, t.IOMMU_TEST_OP_MOCK_DOMAIN, ioas.id, 0)
    assert len(mock) == size
    assert struct.unpack_from("=IIIIII", check) == (
        size, t.IOMMU_TEST_OP_MD_CHECK_IOTLB, 9, 0, 3, 0xBADBEEF,
    )  # fmt: skip


def test_trigger_iopf_fields(kernel: FakeKernel, ictx: IommuFD) -> None:
    Selftest(ictx).trigger_iopf(5, pasid=0x10, grpid=3, perm=1, addr=0xDEAD000)
    (sent,) = kernel.ioctls(t.IOMMU_TEST_CMD)
    assert struct.unpack_from("=IIIIIIIIQ", sent, 0) == (
        ctypes.sizeof(t.iommu_test_cmd), t.IOMMU_TEST_OP_TRIGGER_IOPF, 0, 0, 5, 0x10, 3, 1,
        0xDEAD000,
    )  # fmt: skip


def test_hw_info_input_type_sets_the_flag(kernel: FakeKernel, ictx: IommuFD) -> None:
    def answer(fd: int, arg: Any) -> None:
        ptr = struct.unpack_from("=Q", arg, 16)[0]
        ctypes.memmove(ptr, struct.pack("=II", 0, 0xDEADBEEF), 8)
        struct.pack_into("=I", arg, 12, 8)
        struct.pack_into("=I", arg, 24, t.IOMMU_HW_INFO_TYPE_SELFTEST)
        struct.pack_into("=Q", arg, 32, 1)

    kernel.handlers[uapi.IOMMU_GET_HW_INFO] = answer
    info = ictx.hw_info(3, data_len=16, data_type=t.IOMMU_HW_INFO_TYPE_SELFTEST)
    sent = kernel.ioctls(uapi.IOMMU_GET_HW_INFO)[0]
    assert struct.unpack_from("=IIII", sent) == (40, uapi.IOMMU_HW_INFO_FLAG_INPUT_TYPE, 3, 16)
    assert (info.data_type, info.data_len, info.capabilities) == (
        t.IOMMU_HW_INFO_TYPE_SELFTEST, 8, 1,
    )  # fmt: skip
    assert info.data == struct.pack("=II", 0, 0xDEADBEEF)


def test_viommu_data_comes_back_with_out_fields(kernel: FakeKernel, ictx: IommuFD) -> None:
    def loopback(fd: int, arg: Any) -> None:
        ptr = struct.unpack_from("=Q", arg, 32)[0]
        in_data = struct.unpack("=I", ctypes.string_at(ptr, 4))[0]
        ctypes.memmove(ptr + 4, struct.pack("=I", in_data), 4)
        struct.pack_into("=I", arg, 20, 77)

    kernel.handlers[uapi.IOMMU_VIOMMU_ALLOC] = loopback
    data = t.iommu_viommu_selftest(in_data=0xBEEF)
    viommu = ictx.viommu(1, 2, t.IOMMU_VIOMMU_TYPE_SELFTEST, data)
    assert viommu.id == 77 and data.out_data == 0xBEEF
    assert viommu.data[:8] == struct.pack("=II", 0xBEEF, 0xBEEF)


def test_option_reads_back_val64(kernel: FakeKernel, ictx: IommuFD) -> None:
    kernel.handlers[uapi.IOMMU_OPTION] = lambda fd, arg: struct.pack_into("=Q", arg, 16, 1)
    ioas = ictx.ioas()
    assert ioas.huge_pages is True
    sent = kernel.ioctls(uapi.IOMMU_OPTION)[0]
    assert sent == struct.pack(
        "=IIHHIQ", 24, uapi.IOMMU_OPTION_HUGE_PAGES, uapi.IOMMU_OPTION_OP_GET, 0, ioas.id, 0
    )


# --- queues ---------------------------------------------------------------------------


def _pgfault(cookie: int, *, last: bool, grpid: int = 2) -> bytes:
    flags = uapi.IOMMU_PGFAULT_FLAGS_LAST_PAGE if last else 0
    return bytes(uapi.iommu_hwpt_pgfault(flags, 9, 0, grpid, 3, 0, 0xDEAD000, 0, cookie))


def test_fault_queue_drain_and_respond(kernel: FakeKernel, ictx: IommuFD) -> None:
    fault = ictx.fault_queue()
    kernel.reads[fault.fd] = [
        _pgfault(1, last=False) + _pgfault(1, last=True) + _pgfault(2, last=True)
    ]
    groups = fault.drain()
    assert [(g.cookie, len(g.records), g.last) for g in groups] == [(1, 2, True), (2, 1, True)]
    fault.respond(1)
    assert kernel.calls[-1] == ("write", fault.fd, struct.pack("=II", 1, 0))
    assert [kind for kind, _ in fault.transcript] == ["read", "write"]


def test_fault_queue_unknown_cookie_is_an_ioctl_error(kernel: FakeKernel, ictx: IommuFD) -> None:
    fault = ictx.fault_queue()

    def refuse(fd: int, data: bytes) -> int:
        raise OSError(errno.EINVAL, "unknown cookie")

    kernel.write = refuse  # type: ignore[method-assign]
    err = expect_errno(errno.EINVAL, fault.respond, 42)
    assert err.ioctl == "write(iommufd-pgfault)"


def test_split_vevents_handles_lost_events_headers() -> None:
    data = struct.pack("=IIIII", 0, 5, 0x99, 0, 6) + struct.pack("=I", 0x99)
    data += struct.pack("=II", uapi.IOMMU_VEVENTQ_FLAG_LOST_EVENTS, 8)
    events = split_vevents(data, 4)
    assert [(e.sequence, e.payload, e.lost_events) for e in events] == [
        (5, struct.pack("=I", 0x99), False),
        (6, struct.pack("=I", 0x99), False),
        (8, None, True),
    ]


def test_split_faults_starts_a_group_after_last_page_even_with_same_cookie() -> None:
    data = _pgfault(1, last=True) + _pgfault(1, last=True)
    assert [len(g.records) for g in split_faults(data)] == [1, 1]


# --- object lifetimes -----------------------------------------------------------------


def _build_everything(ictx: IommuFD) -> dict[str, Any]:
    st_ = Selftest(ictx)
    ioas = ictx.ioas()
    dev = st_.mock_domain(ioas)
    parent = ioas.paging_hwpt(dev, nest_parent=True)
    viommu = ictx.viommu(dev, parent, t.IOMMU_VIOMMU_TYPE_SELFTEST)
    fault = ictx.fault_queue()
    nested = viommu.nested(dev, t.IOMMU_HWPT_DATA_SELFTEST, b"\0" * 8, fault=fault)
    vdev = viommu.vdevice(dev, 0x99)
    eventq = viommu.event_queue(t.IOMMU_VEVENTQ_TYPE_SELFTEST, 2)
    return locals()


def test_close_frees_dependents_first_and_closes_queue_fds_first(
    kernel: FakeKernel, ictx: IommuFD
) -> None:
    objs = _build_everything(ictx)
    fds = (objs["eventq"].fd, objs["fault"].fd, ictx.fd)
    start = len(kernel.calls)
    ictx.close()
    order = [
        objs["eventq"].id, objs["vdev"].id, objs["dev"].id, objs["nested"].id,
        objs["viommu"].id, objs["parent"].id, objs["fault"].id, objs["ioas"].id,
    ]  # fmt: skip
    assert kernel.destroyed() == order
    teardown = [
        ("close", c[1]) if c[0] == "close" else ("destroy", struct.unpack_from("=II", c[3])[1])
        for c in kernel.calls[start:]
    ]
    assert teardown == [
        ("close", fds[0]), ("destroy", order[0]), ("destroy", order[1]), ("destroy", order[2]),
        ("destroy", order[3]), ("destroy", order[4]), ("destroy", order[5]), ("close", fds[1]),
        ("destroy", order[6]), ("destroy", order[7]), ("close", fds[2]),
    ]  # fmt: skip
    assert not ictx.objects


def test_queue_fd_closes_before_its_destroy(kernel: FakeKernel, ictx: IommuFD) -> None:
    fault = ictx.fault_queue()
    fault_fd = fault.fd
    fault.close()
    assert kernel.calls[-2] == ("close", fault_fd)
    assert kernel.calls[-1][2] == uapi.IOMMU_DESTROY
    assert fault.fd == -1


def test_with_blocks_free_in_reverse_order(kernel: FakeKernel) -> None:
    with IommuFD(backend=kernel) as ictx, ictx.ioas() as ioas:
        with ioas.paging_hwpt(3) as hwpt:
            ids = (ioas.id, hwpt.id)
        assert kernel.destroyed() == [ids[1]]
    assert kernel.destroyed() == [ids[1], ids[0]]
    assert kernel.calls[-1][0] == "close"


def test_close_is_idempotent(kernel: FakeKernel, ictx: IommuFD) -> None:
    ioas = ictx.ioas()
    ioas.close()
    ioas.close()
    ictx.close()
    ictx.close()
    assert kernel.destroyed() == [ioas.id]
    assert [c for c in kernel.calls if c[0] == "close"] == [("close", 101)]


def test_refused_destroy_keeps_the_object_alive(kernel: FakeKernel, ictx: IommuFD) -> None:
    ioas = ictx.ioas()
    kernel.fail[uapi.IOMMU_DESTROY] = errno.EBUSY
    err = expect_errno(errno.EBUSY, ioas.destroy)
    assert err.ioctl == "IOMMU_DESTROY" and ioas in ictx.objects
    assert ioas.alive
    ioas.destroy()
    assert ioas not in ictx.objects
    assert kernel.destroyed() == [ioas.id, ioas.id]


def test_teardown_refusal_raises_after_closing_the_fd(kernel: FakeKernel, ictx: IommuFD) -> None:
    ioas = ictx.ioas()
    fd = ictx.fd
    kernel.fail[uapi.IOMMU_DESTROY] = errno.EBUSY
    with pytest.raises(TeardownError) as info:
        ictx.close()
    assert info.value.ioctl == "IOMMU_DESTROY" and info.value.errno == errno.EBUSY
    assert f"IOAS(id={ioas.id}" in info.value.failures[0]
    assert kernel.calls[-1] == ("close", fd)


def test_teardown_during_an_exception_does_not_mask_it(kernel: FakeKernel) -> None:
    with pytest.raises(RuntimeError, match="original"), IommuFD(backend=kernel) as ictx:
        ictx.ioas()
        kernel.fail[uapi.IOMMU_DESTROY] = errno.EBUSY
        raise RuntimeError("original")
    assert ictx.teardown_errors and "EBUSY" in ictx.teardown_errors[0]


def test_forget_skips_the_destroy(kernel: FakeKernel, ictx: IommuFD) -> None:
    vdev = ictx.viommu(1, 2, 3).vdevice(1, 0x99)
    vdev.forget()
    ictx.close()
    assert vdev.id not in kernel.destroyed()


# --- error mapping and expect_errno ---------------------------------------------------


def test_refusal_becomes_ioctl_error_naming_ioctl_errno_and_args(
    kernel: FakeKernel, ictx: IommuFD
) -> None:
    ioas = ictx.ioas()
    kernel.fail[uapi.IOMMU_IOAS_MAP] = errno.EINVAL
    with pytest.raises(IoctlError) as info:
        ioas.map(0x1000, 0x1000, 0x2000)
    err = info.value
    assert isinstance(err, OSError) and isinstance(err, HarnessError)
    assert (err.ioctl, err.errno, err.errno_name) == ("IOMMU_IOAS_MAP", errno.EINVAL, "EINVAL")
    assert f"ioas_id={ioas.id}" in err.args_repr and "iova=8192" in err.args_repr
    assert str(err).startswith("IOMMU_IOAS_MAP: EINVAL (Invalid argument); args: iommu_ioas_map(")


def test_test_cmd_errors_name_the_op(kernel: FakeKernel, ictx: IommuFD) -> None:
    kernel.fail[t.IOMMU_TEST_CMD] = errno.EINVAL
    err = expect_errno(errno.EINVAL, Selftest(ictx).check_dev_cache, 1, 0, 5)
    assert err.ioctl == "IOMMU_TEST_CMD(DEV_CHECK_CACHE)"
    assert Selftest(ictx).dev_cache_is(1, 0, 5) is True


def test_iotlb_is_false_only_on_einval(kernel: FakeKernel, ictx: IommuFD) -> None:
    st_ = Selftest(ictx)
    kernel.fail[t.IOMMU_TEST_CMD] = errno.EINVAL
    assert st_.iotlb_is(1, 0, 0) is False
    kernel.fail[t.IOMMU_TEST_CMD] = errno.ENOENT
    with pytest.raises(IoctlError, match="ENOENT"):
        st_.iotlb_is(1, 0, 0)


def test_open_failure_is_an_ioctl_error() -> None:
    with pytest.raises(IoctlError) as info:
        IommuFD("/nonexistent/iommu")
    assert info.value.ioctl == "open(/nonexistent/iommu)" and info.value.errno == errno.ENOENT


def test_expect_errno_returns_the_matching_error(kernel: FakeKernel, ictx: IommuFD) -> None:
    kernel.fail[uapi.IOMMU_IOAS_UNMAP] = errno.ENOENT
    err = expect_errno(errno.ENOENT, ictx.ioas().unmap, 0x1000, 0x1000)
    assert err.errno_name == "ENOENT"


def test_expect_errno_wrong_errno_names_ioctl_expected_and_got(
    kernel: FakeKernel, ictx: IommuFD
) -> None:
    kernel.fail[uapi.IOMMU_IOAS_UNMAP] = errno.EBUSY
    with pytest.raises(ExpectError) as info:
        expect_errno(errno.ENOENT, ictx.ioas().unmap, 0x1000, 0x1000)
    err = info.value
    assert (err.ioctl, err.expected_name, err.errno_name) == ("IOMMU_IOAS_UNMAP", "ENOENT", "EBUSY")
    assert str(err).startswith("IOMMU_IOAS_UNMAP: expected ENOENT, got EBUSY")
    assert isinstance(err, AssertionError) and isinstance(err, HarnessError)


def test_expect_errno_success_is_an_error_and_frees_what_was_made(
    kernel: FakeKernel, ictx: IommuFD
) -> None:
    with pytest.raises(ExpectError) as info:
        expect_errno(errno.EOPNOTSUPP, ictx.ioas)
    assert str(info.value).startswith("IOMMU_IOAS_ALLOC: expected EOPNOTSUPP, got success")
    assert kernel.destroyed() == [1]
    assert not ictx.objects


def test_expect_errno_success_of_an_unmarked_function_names_it() -> None:
    def helper(x: int) -> int:
        return x

    with pytest.raises(ExpectError, match=r"helper: expected EINVAL, got success; args: 5"):
        expect_errno(errno.EINVAL, helper, 5)


def test_expect_errno_lets_other_exceptions_through() -> None:
    def broken() -> None:
        raise ValueError("not an ioctl")

    with pytest.raises(ValueError, match="not an ioctl"):
        expect_errno(errno.EINVAL, broken)


def test_errno_names_use_the_kernels_spelling() -> None:
    assert errno_name(errno.EOPNOTSUPP) == "EOPNOTSUPP"
    assert errno_name(errno.ENOTTY) == "ENOTTY"
    assert errno_name(0) == "success"
    assert errno_name(4000) == "4000"


def test_agent_forwards_ioctl_errno_name_and_args() -> None:
    err = IoctlError("IOMMU_HWPT_ALLOC", errno.EINVAL, "iommu_hwpt_alloc(size=48)")
    payload = error_payload(err)
    assert payload["ioctl"] == "IOMMU_HWPT_ALLOC"
    assert payload["errno"] == errno.EINVAL and payload["errno_name"] == "EINVAL"
    assert payload["args_repr"] == "iommu_hwpt_alloc(size=48)"
    mismatch = error_payload(ExpectError("IOMMU_DESTROY", errno.EBUSY, 0))
    assert mismatch["ioctl"] == "IOMMU_DESTROY" and mismatch["errno_name"] == "success"


def test_errors_pickle() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(IoctlError("IOMMU_DESTROY", errno.EBUSY, "x")))
    assert (err.ioctl, err.errno, err.args_repr) == ("IOMMU_DESTROY", errno.EBUSY, "x")


# --- check tables ---------------------------------------------------------------------


def test_check_table_records_every_row(kernel: FakeKernel, ictx: IommuFD) -> None:
    table = CheckTable("demo")
    ioas = ictx.ioas()
    kernel.fail[uapi.IOMMU_IOAS_MAP] = errno.EOVERFLOW
    table.errno("map overflow", errno.EOVERFLOW, ioas.map, 0, 1, (1 << 64) - 1)
    table.errno("map unexpectedly fine", errno.EINVAL, ioas.map, 0, 1)
    table.add("value", 3, 4)
    result = table.result()
    assert [r["ok"] for r in result["rows"]] == [True, False, False]
    assert result["rows"][1]["got"] == "success" and result["rows"][1]["ioctl"] == "IOMMU_IOAS_MAP"
    assert result["ok"] is False
    text = format_rows(result["rows"])
    assert "FAIL  map unexpectedly fine" in text


def test_check_table_succeeds_records_the_failure(kernel: FakeKernel, ictx: IommuFD) -> None:
    table = CheckTable("demo")
    kernel.fail[uapi.IOMMU_IOAS_ALLOC] = errno.ENOMEM
    assert table.succeeds("alloc", ictx.ioas) is None
    assert table.rows[0]["got"] == "ENOMEM" and table.rows[0]["ioctl"] == "IOMMU_IOAS_ALLOC"


# --- memory ---------------------------------------------------------------------------


def test_dma_buffer_is_page_aligned_and_readable() -> None:
    with DmaBuffer(5000, fill=0xAB) as buf:
        assert buf.addr % mmap.PAGESIZE == 0 and buf.size == 2 * mmap.PAGESIZE
        assert ctypes.string_at(buf.addr, 4) == b"\xab" * 4
        buf.write(10, b"hello")
        assert buf.read(10, 5) == b"hello"
        assert buf.page(1) == buf.addr + mmap.PAGESIZE


def test_dma_buffer_thp_is_pmd_aligned() -> None:
    with DmaBuffer(4096, thp=True) as buf:
        assert buf.addr % (2 * 1024 * 1024) == 0


def test_dma_buffer_memfd_exposes_its_fd() -> None:
    buf = DmaBuffer(8192, memfd=True)
    fd = buf.fd
    assert os.fstat(fd).st_size >= 8192
    buf.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_close_without_destroy_only_closes_the_fd(kernel: FakeKernel, ictx: IommuFD) -> None:
    ioas = ictx.ioas()
    fd = ictx.fd
    ictx.close(destroy=False)
    assert kernel.destroyed() == [] and kernel.calls[-1] == ("close", fd)
    assert not ioas.alive and not ictx.objects
