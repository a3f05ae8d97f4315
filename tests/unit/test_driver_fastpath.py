"""The driver's fast paths on the fake kernel: what they send, and that they never send stale data.

One-entry invalidations pass the entry where it lies and reuse their command; ``nested``
sends its last command again for the same arguments.  Both must still show the kernel
every change the caller makes, and map every refusal to the same ``IoctlError``.
"""

from __future__ import annotations

import ctypes
import errno
import struct
from typing import Any

import pytest

from harness.driver import IoctlError, IommuFD, NestedHwpt
from harness.uapi import iommufd as uapi
from harness.uapi import iommufd_test as t
from tests.unit.test_driver import FakeKernel

pytestmark = pytest.mark.tier0

KIND = t.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


@pytest.fixture
def nested(kernel: FakeKernel) -> NestedHwpt:
    ictx = IommuFD(backend=kernel)
    parent = ictx.ioas().paging_hwpt(7, nest_parent=True)
    return parent.nested(7, t.IOMMU_HWPT_DATA_SELFTEST, b"\0" * 8)


def _record_invalidations(kernel: FakeKernel) -> list[tuple[int, int, int, bytes]]:
    """(hwpt_id, data_uptr, entry_num, the entries' bytes) of every invalidation."""
    seen: list[tuple[int, int, int, bytes]] = []

    def handle(fd: int, arg: Any) -> None:
        _, hwpt, ptr, _, elen, num, _ = struct.unpack_from("=IIQIIII", arg)
        seen.append((hwpt, ptr, num, ctypes.string_at(ptr, elen * num)))

    kernel.handlers[uapi.IOMMU_HWPT_INVALIDATE] = handle
    return seen


def test_one_entry_is_read_where_it_lies_and_changes_reach_the_kernel(
    kernel: FakeKernel, nested: NestedHwpt
) -> None:
    seen = _record_invalidations(kernel)
    entry = t.iommu_hwpt_invalidate_selftest(flags=0, iotlb_id=1)
    assert nested.invalidate([entry], KIND) == 1
    assert nested.invalidate([entry], KIND) == 1
    entry.iotlb_id = 2  # the same struct, changed: the next call must send the new value
    assert nested.invalidate([entry], KIND) == 1
    other = t.iommu_hwpt_invalidate_selftest(flags=0, iotlb_id=3)
    assert nested.invalidate([other], KIND) == 1
    assert [(hwpt, ptr, num) for hwpt, ptr, num, _ in seen] == [
        (nested.id, ctypes.addressof(entry), 1)
    ] * 3 + [(nested.id, ctypes.addressof(other), 1)]
    assert [data for *_, data in seen] == [
        struct.pack("=II", 0, 1), struct.pack("=II", 0, 1),
        struct.pack("=II", 0, 2), struct.pack("=II", 0, 3),
    ]  # fmt: skip


def test_a_refused_one_entry_invalidation_reports_and_the_next_sends_it_whole(
    kernel: FakeKernel, nested: NestedHwpt
) -> None:
    sent: list[int] = []

    def refuse_once(fd: int, arg: Any) -> None:
        sent.append(struct.unpack_from("=I", arg, 24)[0])
        if len(sent) == 2:
            struct.pack_into("=I", arg, 24, 0)
            raise OSError(errno.EINVAL, "bad entry")

    kernel.handlers[uapi.IOMMU_HWPT_INVALIDATE] = refuse_once
    entry = t.iommu_hwpt_invalidate_selftest(flags=0, iotlb_id=1)
    nested.invalidate([entry], KIND)
    with pytest.raises(IoctlError) as info:
        nested.invalidate([entry], KIND)
    assert (info.value.ioctl, info.value.errno, info.value.entries_done) == (
        "IOMMU_HWPT_INVALIDATE", errno.EINVAL, 0
    )  # fmt: skip
    assert f"hwpt_id={nested.id}" in info.value.args_repr
    assert "entry_num=1" in info.value.args_repr
    assert "entry_num=0 done" in str(info.value)
    assert nested.invalidate([entry], KIND) == 1
    assert sent == [1, 1, 1]


def test_a_partial_success_is_returned_and_not_sent_again(
    kernel: FakeKernel, nested: NestedHwpt
) -> None:
    sent: list[int] = []

    def partial(fd: int, arg: Any) -> None:
        sent.append(struct.unpack_from("=I", arg, 24)[0])
        if len(sent) == 1:
            struct.pack_into("=I", arg, 24, 0)

    kernel.handlers[uapi.IOMMU_HWPT_INVALIDATE] = partial
    entry = t.iommu_hwpt_invalidate_selftest(flags=0, iotlb_id=1)
    assert nested.invalidate([entry], KIND) == 0
    assert nested.invalidate([entry], KIND) == 1
    assert sent == [1, 1]


def _record_allocs(kernel: FakeKernel) -> list[tuple[Any, ...]]:
    """(flags, dev_id, pt_id, data_type, data, fault_id) of every HWPT_ALLOC; IDs from 50."""
    seen: list[tuple[Any, ...]] = []

    def handle(fd: int, arg: Any) -> None:
        _, flags, dev, pt, _, _, dtype, dlen, ptr, fault = struct.unpack_from("=8IQI", arg)
        seen.append((flags, dev, pt, dtype, ctypes.string_at(ptr, dlen) if dlen else b"", fault))
        struct.pack_into("=I", arg, 16, 50 + len(seen))

    kernel.handlers[uapi.IOMMU_HWPT_ALLOC] = handle
    return seen


def test_nested_again_sends_the_same_command_and_new_arguments_a_new_one(
    kernel: FakeKernel,
) -> None:
    ictx = IommuFD(backend=kernel)
    ioas = ictx.ioas()
    seen = _record_allocs(kernel)
    parent = ioas.paging_hwpt(7, nest_parent=True)
    fault = ictx.fault_queue()
    data, struct_data = b"\1" * 8, t.iommu_hwpt_selftest(iotlb=5)
    first = parent.nested(7, t.IOMMU_HWPT_DATA_SELFTEST, data)
    again = parent.nested(7, t.IOMMU_HWPT_DATA_SELFTEST, data)
    other = parent.nested(7, t.IOMMU_HWPT_DATA_SELFTEST, b"\2" * 8)
    faulting = parent.nested(7, t.IOMMU_HWPT_DATA_SELFTEST, other_data := b"\2" * 8, fault=fault)
    after = parent.nested(7, t.IOMMU_HWPT_DATA_SELFTEST, other_data)
    live = parent.nested(7, t.IOMMU_HWPT_DATA_SELFTEST, struct_data)
    struct_data.iotlb = 6  # read where it lies: the next send carries the change
    live_again = parent.nested(7, t.IOMMU_HWPT_DATA_SELFTEST, struct_data)
    hwpts = [first, again, other, faulting, after, live, live_again]
    assert [h.id for h in hwpts] == list(range(52, 59))
    assert all(isinstance(h, NestedHwpt) and h.parent is parent and h.dev_id == 7 for h in hwpts)
    valid = int(uapi.IOMMU_HWPT_FAULT_ID_VALID)
    kind = int(t.IOMMU_HWPT_DATA_SELFTEST)
    assert seen[1:] == [
        (0, 7, parent.id, kind, data, 0),
        (0, 7, parent.id, kind, data, 0),
        (0, 7, parent.id, kind, b"\2" * 8, 0),
        (valid, 7, parent.id, kind, b"\2" * 8, fault.id),
        (0, 7, parent.id, kind, b"\2" * 8, 0),
        (0, 7, parent.id, kind, struct.pack("=II", 5, 0), 0),
        (0, 7, parent.id, kind, struct.pack("=II", 6, 0), 0),
    ]
    assert faulting.flags == valid and after.flags == 0


def test_nested_with_a_bytearray_sends_its_current_bytes(kernel: FakeKernel) -> None:
    ictx = IommuFD(backend=kernel)
    seen = _record_allocs(kernel)
    parent = ictx.ioas().paging_hwpt(7, nest_parent=True)
    data = bytearray(b"\1" * 8)
    parent.nested(7, t.IOMMU_HWPT_DATA_SELFTEST, data)
    data[0] = 9
    parent.nested(7, t.IOMMU_HWPT_DATA_SELFTEST, data)
    assert [row[4] for row in seen[1:]] == [b"\1" * 8, b"\x09" + b"\1" * 7]


def test_a_refused_repeat_of_nested_maps_the_error(kernel: FakeKernel) -> None:
    ictx = IommuFD(backend=kernel)
    parent = ictx.ioas().paging_hwpt(7, nest_parent=True)
    parent.nested(7, t.IOMMU_HWPT_DATA_SELFTEST, b"\0" * 8).close()
    kernel.fail[uapi.IOMMU_HWPT_ALLOC] = errno.ENOMEM
    with pytest.raises(IoctlError) as info:
        parent.nested(7, t.IOMMU_HWPT_DATA_SELFTEST, b"\0" * 8)
    assert (info.value.ioctl, info.value.errno) == ("IOMMU_HWPT_ALLOC", errno.ENOMEM)
    assert f"iommu_hwpt_alloc(size=48, flags=0, dev_id=7, pt_id={parent.id}" in str(info.value)
    assert [o.kind for o in ictx.objects] == ["IOAS", "HWPT_PAGING"]


def test_close_destroys_once_and_a_refusal_names_the_object(kernel: FakeKernel) -> None:
    ictx = IommuFD(backend=kernel)
    ioas = ictx.ioas()
    kernel.fail[uapi.IOMMU_DESTROY] = errno.EBUSY
    with pytest.raises(IoctlError) as info:
        ioas.close()
    assert info.value.args_repr == f"iommu_destroy(size=8, id={ioas.id})"
    assert ioas.alive and ioas in ictx.objects
    ioas.close()
    ioas.close()
    assert kernel.destroyed() == [ioas.id, ioas.id] and not ictx.objects


def test_packed_bytes_and_arrays_are_sent_without_packing_and_never_stale(
    kernel: FakeKernel, nested: NestedHwpt
) -> None:
    seen = _record_invalidations(kernel)
    packed = struct.pack("=4I", 0, 1, 0, 2)
    assert nested.invalidate(packed, KIND, entry_len=8) == 2
    assert nested.invalidate(packed, KIND, entry_len=8) == 2
    assert nested.invalidate(struct.pack("=2I", 0, 3), KIND, entry_len=8) == 1
    array = (t.iommu_hwpt_invalidate_selftest * 3)()
    array[2].iotlb_id = 3
    assert nested.invalidate(array, KIND) == 3
    array[0].iotlb_id = 1  # read where it lies: the change reaches the kernel
    assert nested.invalidate(array, KIND) == 3
    assert [data for *_, data in seen] == [
        packed, packed, struct.pack("=2I", 0, 3),
        struct.pack("=6I", 0, 0, 0, 0, 0, 3), struct.pack("=6I", 0, 1, 0, 0, 0, 3),
    ]  # fmt: skip
    assert seen[0][1] == seen[1][1]  # one kept copy of the same bytes
    assert seen[3][1] == seen[4][1] == ctypes.addressof(array)


def test_every_command_carries_its_own_struct_size(kernel: FakeKernel) -> None:
    """Each ioctl's leading ``size`` field is sizeof its struct (a shadowed constant once sent
    SET_DIRTY_TRACKING with size 2, the value of IOMMU_HWPT_ALLOC_DIRTY_TRACKING)."""
    sizes: dict[str, int] = {}
    for name, request, struct_type in (
        ("HWPT_ALLOC", uapi.IOMMU_HWPT_ALLOC, uapi.iommu_hwpt_alloc),
        (
            "SET_DIRTY_TRACKING",
            uapi.IOMMU_HWPT_SET_DIRTY_TRACKING,
            uapi.iommu_hwpt_set_dirty_tracking,
        ),
    ):
        previous = kernel.handlers.get(request)

        def handle(fd: int, arg: Any, n: str = name, prev: Any = previous) -> Any:
            sizes[n] = struct.unpack_from("=I", bytes(arg))[0]
            return prev(fd, arg) if prev is not None else None

        kernel.handlers[request] = handle
        sizes[f"want {name}"] = ctypes.sizeof(struct_type)
    hwpt = IommuFD(backend=kernel).ioas().paging_hwpt(7, dirty_tracking=True)
    hwpt.set_dirty_tracking(True)
    assert sizes["HWPT_ALLOC"] == sizes["want HWPT_ALLOC"]
    assert sizes["SET_DIRTY_TRACKING"] == sizes["want SET_DIRTY_TRACKING"]
