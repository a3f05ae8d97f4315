"""The iommufd driver: ``IommuFD`` (/dev/iommu) and the objects allocated on it.

Every operation has one form that expects success (it returns the kernel's answer or
raises ``IoctlError``) and is turned into its *expects errno N* form by
``expect_errno(errno.EINVAL, ioas.map, ...)``.  Arguments accept objects or raw IDs, so
negative tests can pass IDs that do not exist.  Arrays, vendor data and out-parameters
are ctypes buffers kept alive for the duration of the call.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.driver.backend import Backend, Channel, clip, open_channel
from harness.driver.errors import IoctlError, issues
from harness.driver.layout import U32, layout
from harness.driver.objects import (
    RANK_FAULT,
    RANK_IOAS,
    RANK_NESTED,
    RANK_PAGING,
    RANK_QUEUE,
    RANK_VDEVICE,
    RANK_VIOMMU,
    HasDevId,
    HasId,
    IommufdObject,
    Owned,
    dev_id,
    obj_id,
    sequence,
    teardown,
)
from harness.uapi import iommufd as uapi
from harness.uapi import iommufd_test as test_uapi
from harness.uapi._struct import UapiStruct

IOMMUFD_PATH = "/dev/iommu"
U64_MAX = (1 << 64) - 1

# plain ints: IntFlag arithmetic costs a microsecond on the map/unmap fast path
PROT_READ = int(uapi.IOMMU_IOAS_MAP_READABLE)
PROT_WRITE = int(uapi.IOMMU_IOAS_MAP_WRITEABLE)
PROT_RW = PROT_READ | PROT_WRITE
FIXED_IOVA = int(uapi.IOMMU_IOAS_MAP_FIXED_IOVA)

_MAP = ctypes.sizeof(uapi.iommu_ioas_map)
_MAP_FILE = ctypes.sizeof(uapi.iommu_ioas_map_file)
_UNMAP = ctypes.sizeof(uapi.iommu_ioas_unmap)
_COPY = ctypes.sizeof(uapi.iommu_ioas_copy)
_IOAS_ALLOC = ctypes.sizeof(uapi.iommu_ioas_alloc)
_RANGES = ctypes.sizeof(uapi.iommu_ioas_iova_ranges)
_ALLOW = ctypes.sizeof(uapi.iommu_ioas_allow_iovas)
_OPTION = ctypes.sizeof(uapi.iommu_option)
_VFIO_IOAS = ctypes.sizeof(uapi.iommu_vfio_ioas)
_HWPT_ALLOC = ctypes.sizeof(uapi.iommu_hwpt_alloc)
_HW_INFO = ctypes.sizeof(uapi.iommu_hw_info)
_SET_DIRTY_TRACKING_SIZE = ctypes.sizeof(uapi.iommu_hwpt_set_dirty_tracking)
_DIRTY_BITMAP = ctypes.sizeof(uapi.iommu_hwpt_get_dirty_bitmap)
_INVALIDATE = ctypes.sizeof(uapi.iommu_hwpt_invalidate)
_FAULT_ALLOC = ctypes.sizeof(uapi.iommu_fault_alloc)
_VIOMMU_ALLOC = ctypes.sizeof(uapi.iommu_viommu_alloc)
_VDEVICE_ALLOC = ctypes.sizeof(uapi.iommu_vdevice_alloc)
_VEVENTQ_ALLOC = ctypes.sizeof(uapi.iommu_veventq_alloc)
_HW_QUEUE_ALLOC = ctypes.sizeof(uapi.iommu_hw_queue_alloc)
_CHANGE_PROCESS = ctypes.sizeof(uapi.iommu_ioas_change_process)
_PGFAULT = ctypes.sizeof(uapi.iommu_hwpt_pgfault)
_RESPONSE = ctypes.sizeof(uapi.iommu_hwpt_page_response)
_VEVENT_HEADER = ctypes.sizeof(uapi.iommufd_vevent_header)
_IOAS_MAP = int(uapi.IOMMU_IOAS_MAP)
_RLIMIT_MODE = int(uapi.IOMMU_OPTION_RLIMIT_MODE)
_OP_GET = int(uapi.IOMMU_OPTION_OP_GET)
_OP_SET = int(uapi.IOMMU_OPTION_OP_SET)
_IOAS_UNMAP = int(uapi.IOMMU_IOAS_UNMAP)
_HWPT_DATA_NONE = int(uapi.IOMMU_HWPT_DATA_NONE)
_FAULT_ID_VALID = int(uapi.IOMMU_HWPT_FAULT_ID_VALID)
_NEST_PARENT = int(uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)
_DIRTY_TRACKING = int(uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)

# hot paths pack their commands with ``struct`` (see harness.driver.layout)
_HWPT_LAYOUT = layout(uapi.iommu_hwpt_alloc)
_HWPT_FLAGS, _HWPT_DEV, _HWPT_ID = (
    _HWPT_LAYOUT.names.index(name) for name in ("flags", "dev_id", "out_hwpt_id")
)
_IOMMU_HWPT_ALLOC = int(uapi.IOMMU_HWPT_ALLOC)
_INVALIDATE_LAYOUT = layout(uapi.iommu_hwpt_invalidate)
_INVALIDATE_NUM = _INVALIDATE_LAYOUT.offset("entry_num")
_IOMMU_HWPT_INVALIDATE = int(uapi.IOMMU_HWPT_INVALIDATE)

#: HWPT_ALLOC data and invalidation arrays given as ``bytes``, by value -> (buffer,
#: address).  The kernel only reads both (copy_struct_from_user; of the user data only
#: IOMMU_VIOMMU_ALLOC's is written back), so one private copy per distinct value serves
#: every call; cleared when it grows large.
_FROZEN_DATA: dict[bytes, tuple[Any, int]] = {}
_FROZEN_MAX = 256

#: payload bytes after each (non-LOST) vEVENT header, by vEVENTQ type
VEVENT_PAYLOAD_SIZE = {
    uapi.IOMMU_VEVENTQ_TYPE_ARM_SMMUV3: ctypes.sizeof(uapi.iommu_vevent_arm_smmuv3),
    uapi.IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV: ctypes.sizeof(uapi.iommu_vevent_tegra241_cmdqv),
    test_uapi.IOMMU_VEVENTQ_TYPE_SELFTEST: ctypes.sizeof(test_uapi.iommu_viommu_event_selftest),
}

Data = bytes | bytearray | UapiStruct
#: invalidation entries: structs, an array of them, or packed bytes (with ``entry_len``)
Entries = Sequence[UapiStruct] | ctypes.Array[Any] | bytes | bytearray | None


class _UserData:
    """A user buffer for one call: a struct (written back in place) or a copy of bytes."""

    __slots__ = ("addr", "keep", "length")

    def __init__(self, data: Data | None, length: int | None = None) -> None:
        if data is None:
            self.keep: Any = None
            self.addr = 0
            self.length = length or 0
            return
        if isinstance(data, UapiStruct):
            self.keep = data
        else:
            self.keep = ctypes.create_string_buffer(bytes(data), max(len(data), 1))
        self.addr = ctypes.addressof(self.keep)
        self.length = ctypes.sizeof(data) if isinstance(data, UapiStruct) else len(data)
        if length is not None:
            self.length = length

    def bytes(self) -> bytes:
        """The buffer's contents after the call (the kernel may have written into it)."""
        if self.keep is None:
            return b""
        return ctypes.string_at(self.addr, self.length)


def _hwpt_data(data: Data | None, length: int | None) -> tuple[Any, int, int]:
    """(keepalive, address, length) of user data the kernel only reads (``_FROZEN_DATA``)."""
    if type(data) is bytes:
        frozen = _FROZEN_DATA.get(data)
        if frozen is None:
            if len(_FROZEN_DATA) >= _FROZEN_MAX:
                _FROZEN_DATA.clear()
            buf = ctypes.create_string_buffer(data, max(len(data), 1))
            frozen = _FROZEN_DATA[data] = (buf, ctypes.addressof(buf))
        return frozen[0], frozen[1], len(data) if length is None else length
    user = _UserData(data, length)
    return user.keep, user.addr, user.length


def _pack_entries(entries: Entries, entry_len: int | None) -> tuple[Any, int, int, int]:
    """(keepalive, address, entry_len, count) of an invalidation array.

    The kernel only reads the array, so one struct is passed where it lies (no copy).
    """
    if entries is None:
        return None, 0, entry_len or 0, 0
    if isinstance(entries, (bytes, bytearray)):
        if entry_len is None:
            raise ValueError("raw invalidation bytes need an explicit entry_len")
        count = len(entries) // entry_len if entry_len else 0
        if type(entries) is bytes:  # immutable: one kept copy per value serves every call
            keep, addr, _ = _hwpt_data(entries, None)
            return keep, addr, entry_len, count
        packed = bytes(entries)
    elif isinstance(entries, ctypes.Array) and entry_len in (None, ctypes.sizeof(entries._type_)):
        # an array of entries is contiguous already: passed where it lies
        return entries, ctypes.addressof(entries), ctypes.sizeof(entries._type_), len(entries)
    else:
        count = len(entries)
        size = ctypes.sizeof(type(entries[0])) if count else (entry_len or 0)
        if entry_len is None or entry_len == size:
            if count == 1 and isinstance(entries[0], UapiStruct):
                return entries[0], ctypes.addressof(entries[0]), size, 1
            packed = b"".join(entries)  # each struct's buffer, as bytes() would give it
        else:
            packed = b"".join(bytes(e)[:entry_len].ljust(entry_len, b"\0") for e in entries)
        entry_len = size if entry_len is None else entry_len
    keep = ctypes.create_string_buffer(packed, max(len(packed), 1))
    return keep, ctypes.addressof(keep), entry_len, count


def invalidate(
    ictx: IommuFD,
    target: int | HasId,
    data_type: int,
    entries: Entries,
    *,
    entry_len: int | None = None,
    entry_num: int | None = None,
) -> int:
    """IOMMU_HWPT_INVALIDATE on a nested HWPT or a vIOMMU; returns the entries the kernel handled.

    On failure the ``IoctlError`` carries ``entries_done`` (the kernel's ``entry_num``).
    """
    return _invalidate(ictx.chan, target, data_type, entries, entry_len, entry_num)


def _invalidate(
    chan: Channel,
    target: int | HasId,
    data_type: int,
    entries: Entries,
    entry_len: int | None,
    entry_num: int | None,
) -> int:
    if entry_len is None and type(entries) is list and len(entries) == 1:
        keep = entries[0]  # one struct, where it lies: the kernel only reads the array
        addr, elen, count = ctypes.addressof(keep), ctypes.sizeof(type(keep)), 1
    else:
        keep, addr, elen, count = _pack_entries(entries, entry_len)
    num = count if entry_num is None else entry_num
    target_id = target if isinstance(target, int) else target.id
    try:
        cmd = bytearray(
            _INVALIDATE_LAYOUT.pack(_INVALIDATE, target_id, addr, data_type, elen, num, 0)
        )
    except struct.error:  # out-of-range values (negative tests): wrap them as C does
        cmd = bytearray(
            uapi.iommu_hwpt_invalidate(_INVALIDATE, target_id, addr, data_type, elen, num, 0)
        )
    try:
        chan.call_buf("IOMMU_HWPT_INVALIDATE", _IOMMU_HWPT_INVALIDATE, cmd, _INVALIDATE_LAYOUT)
    except IoctlError as err:
        err.entries_done = U32.unpack_from(cmd, _INVALIDATE_NUM)[0]
        shown = uapi.iommu_hwpt_invalidate.from_buffer(cmd)
        shown.entry_num = num
        err.args_repr = repr(shown)
        raise
    del keep  # alive until the kernel has read the array
    done: int = U32.unpack_from(cmd, _INVALIDATE_NUM)[0]
    return done


invalidate.ioctl_name = "IOMMU_HWPT_INVALIDATE"  # type: ignore[attr-defined]


@dataclass(frozen=True)
class IovaRanges:
    """IOMMU_IOAS_IOVA_RANGES: the allowed ``(start, last)`` ranges and the IOVA alignment."""

    ranges: list[tuple[int, int]]
    alignment: int


@dataclass(frozen=True)
class HwInfo:
    """IOMMU_GET_HW_INFO: vendor data and generic capabilities of the IOMMU behind a device."""

    data_type: int
    data_len: int
    data: bytes
    capabilities: int
    max_pasid_log2: int


@dataclass
class FaultGroup:
    """One page-request group read from a fault queue: records sharing a cookie."""

    cookie: int
    records: list[uapi.iommu_hwpt_pgfault] = field(default_factory=list)

    @property
    def last(self) -> bool:
        """The group's final record carries IOMMU_PGFAULT_FLAGS_LAST_PAGE."""
        return bool(self.records and self.records[-1].flags & uapi.IOMMU_PGFAULT_FLAGS_LAST_PAGE)


@dataclass(frozen=True)
class VEvent:
    """One record read from a vEVENTQ: header and vendor payload (None for LOST_EVENTS)."""

    flags: int
    sequence: int
    payload: bytes | None

    @property
    def lost_events(self) -> bool:
        return bool(self.flags & uapi.IOMMU_VEVENTQ_FLAG_LOST_EVENTS)


def split_faults(data: bytes) -> list[FaultGroup]:
    """Split one read() of a fault fd into groups of consecutive records with one cookie."""
    groups: list[FaultGroup] = []
    for offset in range(0, len(data) - len(data) % _PGFAULT, _PGFAULT):
        record = uapi.iommu_hwpt_pgfault.from_buffer_copy(data, offset)
        if not groups or groups[-1].cookie != record.cookie or groups[-1].last:
            groups.append(FaultGroup(int(record.cookie)))
        groups[-1].records.append(record)
    return groups


def split_vevents(data: bytes, payload_size: int) -> list[VEvent]:
    """Split one read() of a vEVENTQ fd into records (LOST_EVENTS headers have no payload)."""
    events: list[VEvent] = []
    offset = 0
    while len(data) - offset >= _VEVENT_HEADER:
        header = uapi.iommufd_vevent_header.from_buffer_copy(data, offset)
        offset += _VEVENT_HEADER
        if header.flags & uapi.IOMMU_VEVENTQ_FLAG_LOST_EVENTS:
            events.append(VEvent(int(header.flags), int(header.sequence), None))
            continue
        events.append(
            VEvent(int(header.flags), int(header.sequence), data[offset : offset + payload_size])
        )
        offset += payload_size
    return events


class IommuFD:
    """An open /dev/iommu: allocates objects and frees the ones still alive on ``close()``."""

    def __init__(self, path: str = IOMMUFD_PATH, *, backend: Backend | None = None) -> None:
        self.path = path
        self.chan: Channel = open_channel(path, os.O_RDWR | os.O_CLOEXEC, backend, "iommufd")
        #: live objects by creation sequence (``Owner.owned``)
        self.owned: dict[int, Owned] = {}
        self.teardown_errors: list[str] = []

    @property
    def fd(self) -> int:
        return self.chan.fd

    @property
    def objects(self) -> list[Owned]:
        """Objects still alive, oldest first."""
        return sorted(self.owned.values(), key=lambda o: o.seq)

    def call(self, name: str, request: int, arg: Any) -> int:
        """Issue any ioctl on this fd (``arg`` a struct, a writable buffer or an int)."""
        return self.chan.call(name, request, arg)

    # --- generic ----------------------------------------------------------------------

    @issues("IOMMU_DESTROY")
    def destroy(self, object_id: int | HasId) -> None:
        """IOMMU_DESTROY by ID, bypassing object tracking (for negative tests)."""
        cmd = uapi.iommu_destroy(ctypes.sizeof(uapi.iommu_destroy), obj_id(object_id))
        self.chan.call("IOMMU_DESTROY", uapi.IOMMU_DESTROY, cmd)

    @issues("IOMMU_OPTION")
    def option(self, option_id: int, op: int, *, object_id: int = 0, val64: int = 0) -> int:
        """IOMMU_OPTION: returns val64 after the call (the value read, or the one set)."""
        cmd = uapi.iommu_option(_OPTION, option_id, op, 0, object_id, val64)
        self.chan.call("IOMMU_OPTION", uapi.IOMMU_OPTION, cmd)
        return int(cmd.val64)

    def get_rlimit_mode(self) -> int:
        return self.option(_RLIMIT_MODE, _OP_GET)

    def set_rlimit_mode(self, mode: int) -> None:
        self.option(_RLIMIT_MODE, _OP_SET, val64=mode)

    @issues("IOMMU_IOAS_CHANGE_PROCESS")
    def change_process(self) -> None:
        cmd = uapi.iommu_ioas_change_process(_CHANGE_PROCESS, 0)
        self.chan.call("IOMMU_IOAS_CHANGE_PROCESS", uapi.IOMMU_IOAS_CHANGE_PROCESS, cmd)

    @issues("IOMMU_GET_HW_INFO")
    def hw_info(
        self, dev: int | HasDevId, *, data_len: int = 256, data_type: int | None = None
    ) -> HwInfo:
        """IOMMU_GET_HW_INFO; ``data_type`` sets IOMMU_HW_INFO_FLAG_INPUT_TYPE."""
        buf = ctypes.create_string_buffer(max(data_len, 1))
        cmd = uapi.iommu_hw_info(
            _HW_INFO, 0, dev_id(dev), data_len, ctypes.addressof(buf) if data_len else 0
        )
        if data_type is not None:
            cmd.flags = uapi.IOMMU_HW_INFO_FLAG_INPUT_TYPE
            cmd.in_data_type = data_type
        self.chan.call("IOMMU_GET_HW_INFO", uapi.IOMMU_GET_HW_INFO, cmd)
        kernel_len = int(cmd.data_len)
        return HwInfo(
            data_type=int(cmd.out_data_type),
            data_len=kernel_len,
            data=buf.raw[: min(kernel_len, data_len)],
            capabilities=int(cmd.out_capabilities),
            max_pasid_log2=int(cmd.out_max_pasid_log2),
        )

    def mmap(self, offset: int, length: int) -> mmap.mmap:
        """mmap a window the kernel handed out (e.g. a vIOMMU's ``out_mmap_offset``)."""
        return self.chan.mmap("mmap(iommufd)", length, offset, mmap.PROT_READ | mmap.PROT_WRITE)

    # --- VFIO compatibility IOAS ------------------------------------------------------

    def _vfio_ioas(self, op: int, ioas_id: int) -> int:
        cmd = uapi.iommu_vfio_ioas(_VFIO_IOAS, ioas_id, op, 0)
        self.chan.call("IOMMU_VFIO_IOAS", uapi.IOMMU_VFIO_IOAS, cmd)
        return int(cmd.ioas_id)

    @issues("IOMMU_VFIO_IOAS")
    def vfio_ioas_get(self) -> int:
        """The compat IOAS ID (ENODEV when there is none)."""
        return self._vfio_ioas(uapi.IOMMU_VFIO_IOAS_GET, 0)

    @issues("IOMMU_VFIO_IOAS")
    def vfio_ioas_set(self, ioas: int | HasId) -> None:
        self._vfio_ioas(uapi.IOMMU_VFIO_IOAS_SET, obj_id(ioas))

    @issues("IOMMU_VFIO_IOAS")
    def vfio_ioas_clear(self) -> None:
        self._vfio_ioas(uapi.IOMMU_VFIO_IOAS_CLEAR, 0)

    # --- allocation -------------------------------------------------------------------

    @issues("IOMMU_IOAS_ALLOC")
    def ioas(self) -> IOAS:
        """IOMMU_IOAS_ALLOC: a new, empty IO address space."""
        cmd = uapi.iommu_ioas_alloc(_IOAS_ALLOC, 0, 0)
        self.chan.call("IOMMU_IOAS_ALLOC", uapi.IOMMU_IOAS_ALLOC, cmd)
        return IOAS(self, int(cmd.out_ioas_id))

    @issues("IOMMU_FAULT_QUEUE_ALLOC")
    def fault_queue(self) -> FaultQueue:
        """IOMMU_FAULT_QUEUE_ALLOC: a fault object and the fd its page requests are read from."""
        cmd = uapi.iommu_fault_alloc(_FAULT_ALLOC, 0, 0, 0)
        self.chan.call("IOMMU_FAULT_QUEUE_ALLOC", uapi.IOMMU_FAULT_QUEUE_ALLOC, cmd)
        return FaultQueue(self, int(cmd.out_fault_id), int(cmd.out_fault_fd))

    @issues("IOMMU_HWPT_ALLOC")
    def hwpt_alloc(
        self,
        dev: int | HasDevId,
        pt: int | HasId,
        *,
        flags: int = 0,
        data_type: int = uapi.IOMMU_HWPT_DATA_NONE,
        data: Data | None = None,
        data_len: int | None = None,
        fault: int | HasId | None = None,
    ) -> Hwpt:
        """IOMMU_HWPT_ALLOC over an IOAS (paging), a paging HWPT or a vIOMMU (nested).

        ``fault`` attaches a fault queue (and sets IOMMU_HWPT_FAULT_ID_VALID).
        """
        hwpt_id, dev_no, flags = self._alloc_hwpt(
            self._hwpt_command(dev, pt, flags, data_type, data, data_len, fault)
        )
        if isinstance(pt, _NestingParent) or (isinstance(pt, int) and data_type != _HWPT_DATA_NONE):
            return NestedHwpt(self, hwpt_id, parent=pt, dev=dev_no, flags=flags)
        return PagingHwpt(self, hwpt_id, ioas=pt, dev=dev_no, flags=flags)

    def _alloc_hwpt(self, command: tuple[bytearray, Any]) -> tuple[int, int, int]:
        """Send a ``_hwpt_command``: (the new HWPT's ID, the device ID, the flags sent)."""
        cmd, keep = command
        self.chan.call_buf("IOMMU_HWPT_ALLOC", _IOMMU_HWPT_ALLOC, cmd, _HWPT_LAYOUT)
        del keep  # alive until the kernel has copied the data
        sent = _HWPT_LAYOUT.unpack_from(cmd)
        return sent[_HWPT_ID], sent[_HWPT_DEV], sent[_HWPT_FLAGS]

    def _hwpt_command(
        self,
        dev: int | HasDevId,
        pt: int | HasId,
        flags: int,
        data_type: int,
        data: Data | None,
        data_len: int | None,
        fault: int | HasId | None,
    ) -> tuple[bytearray, Any]:
        """The IOMMU_HWPT_ALLOC command, and what keeps its user data alive."""
        if type(data) is bytes and data_len is None and (frozen := _FROZEN_DATA.get(data)):
            keep, addr = frozen  # the common case, without a call
            length = len(data)
        else:
            keep, addr, length = _hwpt_data(data, data_len)
        fault_id = 0
        if fault is not None:
            flags |= _FAULT_ID_VALID
            fault_id = fault if isinstance(fault, int) else fault.id
        dev_no = dev if isinstance(dev, int) else dev.dev_id
        pt_id = pt if isinstance(pt, int) else pt.id
        try:
            cmd = bytearray(
                _HWPT_LAYOUT.pack(
                    _HWPT_ALLOC, flags, dev_no, pt_id, 0, 0, data_type, length, addr, fault_id, 0
                )
            )
        except struct.error:  # out-of-range values (negative tests): wrap them as C does
            cmd = bytearray(
                uapi.iommu_hwpt_alloc(
                    _HWPT_ALLOC, flags, dev_no, pt_id, 0, 0, data_type, length, addr, fault_id, 0
                )
            )
        return cmd, keep

    @issues("IOMMU_VIOMMU_ALLOC")
    def viommu(
        self,
        dev: int | HasDevId,
        parent: int | HasId,
        viommu_type: int,
        data: Data | None = None,
        *,
        flags: int = 0,
        data_len: int | None = None,
    ) -> VIOMMU:
        """IOMMU_VIOMMU_ALLOC over a nest-parent HWPT; a struct ``data`` gets its out fields."""
        user = _UserData(data, data_len)
        cmd = uapi.iommu_viommu_alloc(
            _VIOMMU_ALLOC, flags, viommu_type, dev_id(dev), obj_id(parent), 0, user.length, 0,
            user.addr,
        )  # fmt: skip
        self.chan.call("IOMMU_VIOMMU_ALLOC", uapi.IOMMU_VIOMMU_ALLOC, cmd)
        return VIOMMU(self, int(cmd.out_viommu_id), parent, viommu_type, user.bytes())

    # --- lifetime ---------------------------------------------------------------------

    def close(self, *, destroy: bool = True) -> None:
        """Destroy what is still alive (by teardown rank), then close the fd.

        Raises the first ``IoctlError``-derived refusal after the fd is closed, so a
        teardown the kernel refused fails the caller instead of passing silently.
        ``destroy=False`` only closes the fd: the kernel frees every object itself, which
        is what to do after raw ioctls may have created objects nobody tracks.
        """
        if self.chan.fd < 0:
            return
        if not destroy:
            for obj in list(self.owned.values()):
                obj.forget()
        errors = teardown(list(self.owned.values()))
        self.chan.close()
        self.teardown_errors.extend(f"{what}: {err}" for what, err in errors)
        if errors:
            raise TeardownError(errors)

    def __enter__(self) -> IommuFD:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close()
            return
        with contextlib.suppress(TeardownError):
            self.close()

    def __repr__(self) -> str:
        return f"IommuFD(fd={self.chan.fd}, objects={len(self.owned)})"


class TeardownError(IoctlError):
    """``IommuFD.close()`` could not destroy some objects (the fd was closed anyway).

    Carries the first refusal's ioctl and errno; ``failures`` lists every object refused.
    """

    def __init__(self, errors: list[tuple[str, IoctlError]]) -> None:
        first = errors[0][1]
        summary = "; ".join(f"{obj}: {err.ioctl} {err.errno_name}" for obj, err in errors)
        super().__init__(first.ioctl, first.errno or 0, f"teardown refused: {summary}")
        self.failures = [f"{obj}: {err}" for obj, err in errors]

    def __reduce__(self) -> tuple[Any, ...]:
        return (IoctlError, (self.ioctl, self.errno, self.args_repr))


class _Invalidatable(IommufdObject):
    """An object IOMMU_HWPT_INVALIDATE accepts: a nested HWPT or a vIOMMU.

    One entry is passed where it lies (the kernel only reads the array), and the command
    for it is kept and reused while the same struct and type come back (the fast path,
    like ``IOAS.map``: an object to invalidate is not for concurrent threads).
    """

    ictx: IommuFD
    #: (entry, data_type, command) of the last one-entry invalidation
    _last: tuple[UapiStruct, int, uapi.iommu_hwpt_invalidate] | None = None

    @issues("IOMMU_HWPT_INVALIDATE")
    def invalidate(
        self,
        entries: Entries,
        data_type: int,
        *,
        entry_len: int | None = None,
        entry_num: int | None = None,
    ) -> int:
        """Invalidate the caches this object owns with an array of entries.

        Returns the number of entries the kernel handled (see ``invalidate``).
        """
        if entry_len is None and entry_num is None and type(entries) is list and len(entries) == 1:
            last = self._last
            if last is None or last[0] is not entries[0] or last[1] != data_type:
                last = self._last = _one_entry(self.id, entries[0], data_type)
            cmd = last[2]
            chan = self.ictx.chan
            try:
                chan._ioctl(chan.fd, _IOMMU_HWPT_INVALIDATE, cmd)
            except OSError as exc:
                raise _refused(cmd, exc.errno or 0, 1) from None
            done: int = cmd.entry_num
            if done != 1:  # a partial success: the next call builds its command afresh
                self._last = None
            return done
        return _invalidate(self.ictx.chan, self.id, data_type, entries, entry_len, entry_num)


def _one_entry(
    target_id: int, entry: UapiStruct, data_type: int
) -> tuple[UapiStruct, int, uapi.iommu_hwpt_invalidate]:
    cmd = uapi.iommu_hwpt_invalidate(
        _INVALIDATE, target_id, ctypes.addressof(entry), data_type, ctypes.sizeof(entry), 1, 0
    )
    return entry, data_type, cmd


def _refused(cmd: uapi.iommu_hwpt_invalidate, err: int, num: int) -> IoctlError:
    """The IoctlError of a refused invalidation: entries done, the command as it was sent."""
    error = IoctlError("IOMMU_HWPT_INVALIDATE", err)
    error.entries_done = int(cmd.entry_num)
    cmd.entry_num = num
    error.args_repr = repr(cmd)
    return error


class _NestingParent(IommufdObject):
    """What nested HWPTs are allocated over: a nest-parent paging HWPT or a vIOMMU.

    ``nested`` keeps its last command and sends it again for the same arguments (the fast
    path, like ``IOAS.map``: a parent is not for concurrent threads).
    """

    ictx: IommuFD
    #: (dev, data_type, data, flags, command, what keeps its data) of the last ``nested``
    _last_nested: (
        tuple[int | HasDevId, int, Data | None, int, uapi.iommu_hwpt_alloc, Any] | None
    ) = None

    @issues("IOMMU_HWPT_ALLOC")
    def nested(
        self,
        dev: int | HasDevId,
        data_type: int,
        data: Data | None,
        *,
        flags: int = 0,
        data_len: int | None = None,
        fault: int | HasId | None = None,
    ) -> NestedHwpt:
        """IOMMU_HWPT_ALLOC of a nested (user-managed stage-1) HWPT with this as ``pt_id``."""
        ictx = self.ictx
        last = self._last_nested
        if (
            last is not None
            and last[0] is dev
            and last[1] == data_type
            and last[2] is data
            and last[3] == flags
            and data_len is None
            and fault is None
        ):  # the same allocation again: the command as built last time
            cmd = last[4]
            chan = ictx.chan
            try:
                chan._ioctl(chan.fd, _IOMMU_HWPT_ALLOC, cmd)
            except OSError as exc:
                raise IoctlError("IOMMU_HWPT_ALLOC", exc.errno or 0, clip(repr(cmd))) from None
            return NestedHwpt(ictx, cmd.out_hwpt_id, parent=self, dev=cmd.dev_id, flags=flags)
        buf, keep = ictx._hwpt_command(dev, self, flags, data_type, data, data_len, fault)
        ictx.chan.call_buf("IOMMU_HWPT_ALLOC", _IOMMU_HWPT_ALLOC, buf, _HWPT_LAYOUT)
        sent = _HWPT_LAYOUT.unpack_from(buf)
        if fault is None and data_len is None and (data is None or type(data) is bytes
                                                   or isinstance(data, UapiStruct)):  # fmt: skip
            # what the command points at stays as it is (bytes: an immutable copy, kept
            # here) or is read where it lies (a struct): the command can be sent again
            cmd = uapi.iommu_hwpt_alloc.from_buffer(buf)
            self._last_nested = (dev, data_type, data, flags, cmd, keep)
        return NestedHwpt(
            ictx, sent[_HWPT_ID], parent=self, dev=sent[_HWPT_DEV], flags=sent[_HWPT_FLAGS]
        )


class IOAS(IommufdObject):
    """An IO address space: user memory mapped at IOVAs."""

    ictx: IommuFD

    rank = RANK_IOAS
    kind = "IOAS"

    def __init__(self, ictx: IommuFD, ioas_id: int) -> None:
        super().__init__(ictx, ioas_id)
        self._call = ictx.chan.call
        # reused by map / unmap (the fast path): an IOAS is not for concurrent threads
        self._map_cmd = uapi.iommu_ioas_map(_MAP, 0, ioas_id)
        self._unmap_cmd = uapi.iommu_ioas_unmap(_UNMAP, ioas_id)

    @issues("IOMMU_IOAS_MAP")
    def map(
        self,
        user_va: int,
        length: int,
        iova: int | None = None,
        *,
        prot: int = PROT_RW,
        flags: int | None = None,
    ) -> int:
        """IOMMU_IOAS_MAP ``length`` bytes at ``user_va``; at ``iova`` (FIXED) or kernel-chosen.

        Returns the IOVA.  ``flags`` replaces the computed flags entirely (negative tests).
        """
        cmd = self._map_cmd
        if flags is None:
            flags = prot if iova is None else prot | FIXED_IOVA
        cmd.flags = flags
        cmd.user_va = user_va
        cmd.length = length
        cmd.iova = iova or 0
        self._call("IOMMU_IOAS_MAP", _IOAS_MAP, cmd)
        return cmd.iova  # type: ignore[no-any-return]

    @issues("IOMMU_IOAS_MAP_FILE")
    def map_file(
        self,
        fd: int,
        start: int,
        length: int,
        iova: int | None = None,
        *,
        prot: int = PROT_RW,
        flags: int | None = None,
    ) -> int:
        """IOMMU_IOAS_MAP_FILE: map ``length`` bytes of a memfd from ``start``; returns the IOVA."""
        if flags is None:
            flags = prot if iova is None else prot | FIXED_IOVA
        cmd = uapi.iommu_ioas_map_file(_MAP_FILE, flags, self.id, fd, start, length, iova or 0)
        self._call("IOMMU_IOAS_MAP_FILE", uapi.IOMMU_IOAS_MAP_FILE, cmd)
        return int(cmd.iova)

    @issues("IOMMU_IOAS_UNMAP")
    def unmap(self, iova: int, length: int) -> int:
        """IOMMU_IOAS_UNMAP; returns the bytes unmapped."""
        cmd = self._unmap_cmd
        cmd.iova = iova
        cmd.length = length
        self._call("IOMMU_IOAS_UNMAP", _IOAS_UNMAP, cmd)
        return cmd.length  # type: ignore[no-any-return]

    @issues("IOMMU_IOAS_UNMAP")
    def unmap_all(self) -> int:
        """Unmap everything (iova 0, length U64_MAX); returns the bytes unmapped."""
        return self.unmap(0, U64_MAX)

    @issues("IOMMU_IOAS_COPY")
    def copy_from(
        self,
        src: int | HasId,
        src_iova: int,
        length: int,
        dst_iova: int | None = None,
        *,
        prot: int = PROT_RW,
        flags: int | None = None,
    ) -> int:
        """IOMMU_IOAS_COPY a mapping of ``src`` into this IOAS; returns the destination IOVA."""
        if flags is None:
            flags = prot if dst_iova is None else prot | FIXED_IOVA
        cmd = uapi.iommu_ioas_copy(
            _COPY, flags, self.id, obj_id(src), length, dst_iova or 0, src_iova
        )
        self._call("IOMMU_IOAS_COPY", uapi.IOMMU_IOAS_COPY, cmd)
        return int(cmd.dst_iova)

    @issues("IOMMU_IOAS_IOVA_RANGES")
    def iova_ranges(self, capacity: int = 8) -> IovaRanges:
        """IOMMU_IOAS_IOVA_RANGES, retried with a larger array on EMSGSIZE."""
        while True:
            array = (uapi.iommu_iova_range * max(capacity, 1))()
            cmd = uapi.iommu_ioas_iova_ranges(
                _RANGES, self.id, capacity, 0, ctypes.addressof(array), 0
            )
            try:
                self._call("IOMMU_IOAS_IOVA_RANGES", uapi.IOMMU_IOAS_IOVA_RANGES, cmd)
            except IoctlError as err:
                if err.errno != 90 or int(cmd.num_iovas) <= capacity:  # EMSGSIZE
                    raise
                capacity = int(cmd.num_iovas)
                continue
            count = int(cmd.num_iovas)
            return IovaRanges(
                [(int(r.start), int(r.last)) for r in array[:count]], int(cmd.out_iova_alignment)
            )

    @issues("IOMMU_IOAS_ALLOW_IOVAS")
    def allow_iovas(self, ranges: Sequence[tuple[int, int]]) -> None:
        """IOMMU_IOAS_ALLOW_IOVAS: replace the allowed list with inclusive ``(start, last)``."""
        array = (uapi.iommu_iova_range * max(len(ranges), 1))(
            *(uapi.iommu_iova_range(s, e) for s, e in ranges)
        )
        cmd = uapi.iommu_ioas_allow_iovas(
            _ALLOW, self.id, len(ranges), 0, ctypes.addressof(array) if ranges else 0
        )
        self._call("IOMMU_IOAS_ALLOW_IOVAS", uapi.IOMMU_IOAS_ALLOW_IOVAS, cmd)

    @property
    def huge_pages(self) -> bool:
        """IOMMU_OPTION_HUGE_PAGES of this IOAS (False after VFIO_SET_IOMMU(TYPE1) compat)."""
        return bool(
            self.ictx.option(
                uapi.IOMMU_OPTION_HUGE_PAGES, uapi.IOMMU_OPTION_OP_GET, object_id=self.id
            )
        )

    @huge_pages.setter
    def huge_pages(self, enable: bool) -> None:
        self.ictx.option(
            uapi.IOMMU_OPTION_HUGE_PAGES,
            uapi.IOMMU_OPTION_OP_SET,
            object_id=self.id,
            val64=int(enable),
        )

    @issues("IOMMU_HWPT_ALLOC")
    def paging_hwpt(
        self,
        dev: int | HasDevId,
        *,
        nest_parent: bool = False,
        dirty_tracking: bool = False,
        flags: int = 0,
        data_type: int = uapi.IOMMU_HWPT_DATA_NONE,
        data: Data | None = None,
    ) -> PagingHwpt:
        """A paging HWPT holding this IOAS's mappings (optionally a nest parent)."""
        if nest_parent:
            flags |= _NEST_PARENT
        if dirty_tracking:
            flags |= _DIRTY_TRACKING
        ictx = self.ictx
        hwpt_id, dev_no, flags = ictx._alloc_hwpt(
            ictx._hwpt_command(dev, self, flags, data_type, data, None, None)
        )
        return PagingHwpt(ictx, hwpt_id, ioas=self, dev=dev_no, flags=flags)


class Hwpt(IommufdObject):
    """A hardware page table (the kernel's iommu_domain) allocated for ``dev``."""

    kind = "HWPT"

    def __init__(self, ictx: IommuFD, hwpt_id: int, *, dev: int, flags: int) -> None:
        # IommufdObject.__init__ (id, then Owned's registration), without the super() chain
        self.id = hwpt_id
        self.dev_id = dev
        self.flags = flags
        Owned.__init__(self, ictx)


class PagingHwpt(Hwpt, _NestingParent):
    """A kernel-managed HWPT mirroring an IOAS; a nest parent when allocated so."""

    rank = RANK_PAGING
    kind = "HWPT_PAGING"

    def __init__(
        self, ictx: IommuFD, hwpt_id: int, *, ioas: int | HasId, dev: int, flags: int
    ) -> None:
        # Hwpt.__init__, without its frame: allocation is a hot path
        self.id = hwpt_id
        self.dev_id = dev
        self.flags = flags
        self.ioas = ioas
        Owned.__init__(self, ictx)

    @property
    def nest_parent(self) -> bool:
        return bool(self.flags & uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)

    @issues("IOMMU_HWPT_SET_DIRTY_TRACKING")
    def set_dirty_tracking(self, enable: bool, *, flags: int | None = None) -> None:
        value = int(enable) if flags is None else flags
        cmd = uapi.iommu_hwpt_set_dirty_tracking(_SET_DIRTY_TRACKING_SIZE, value, self.id, 0)
        self.ictx.chan.call(
            "IOMMU_HWPT_SET_DIRTY_TRACKING", uapi.IOMMU_HWPT_SET_DIRTY_TRACKING, cmd
        )

    @issues("IOMMU_HWPT_GET_DIRTY_BITMAP")
    def dirty_bitmap(
        self, iova: int, length: int, page_size: int, *, no_clear: bool = False, flags: int = 0
    ) -> bytes:
        """IOMMU_HWPT_GET_DIRTY_BITMAP: one bit per ``page_size`` page from ``iova`` (u64 words)."""
        bits = max(length // page_size, 1) if page_size else 1
        bitmap = ctypes.create_string_buffer((bits + 63) // 64 * 8)
        if no_clear:
            flags |= uapi.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR
        cmd = uapi.iommu_hwpt_get_dirty_bitmap(
            _DIRTY_BITMAP, self.id, flags, 0, iova, length, page_size, ctypes.addressof(bitmap)
        )
        self.ictx.chan.call("IOMMU_HWPT_GET_DIRTY_BITMAP", uapi.IOMMU_HWPT_GET_DIRTY_BITMAP, cmd)
        return bitmap.raw


class NestedHwpt(Hwpt, _Invalidatable):
    """A user-managed HWPT over a nest parent or a vIOMMU; its caches are invalidated by user."""

    rank = RANK_NESTED
    kind = "HWPT_NESTED"

    def __init__(
        self, ictx: IommuFD, hwpt_id: int, *, parent: int | HasId, dev: int, flags: int
    ) -> None:
        # Hwpt.__init__ and Owned.__init__, without their frames: allocation is a hot path
        self.id = hwpt_id
        self.dev_id = dev
        self.flags = flags
        self.parent = parent
        self.ictx = ictx
        self.seq = seq = next(sequence)
        self.alive = True
        ictx.owned[seq] = self


class VIOMMU(_Invalidatable, _NestingParent):
    """A virtual IOMMU over a nest parent: owns vDEVICEs, nested HWPTs, vEVENTQs, HW queues."""

    rank = RANK_VIOMMU
    kind = "VIOMMU"

    def __init__(
        self, ictx: IommuFD, viommu_id: int, parent: int | HasId, viommu_type: int, data: bytes
    ) -> None:
        super().__init__(ictx, viommu_id)
        self.parent = parent
        self.type = viommu_type
        #: the vIOMMU data buffer after the call (with the kernel's out fields)
        self.data = data

    @issues("IOMMU_VDEVICE_ALLOC")
    def vdevice(self, dev: int | HasDevId, virt_id: int) -> VDevice:
        """IOMMU_VDEVICE_ALLOC: give ``dev`` the virtual ID ``virt_id`` on this vIOMMU."""
        cmd = uapi.iommu_vdevice_alloc(_VDEVICE_ALLOC, self.id, dev_id(dev), 0, virt_id)
        self.ictx.chan.call("IOMMU_VDEVICE_ALLOC", uapi.IOMMU_VDEVICE_ALLOC, cmd)
        return VDevice(self.ictx, int(cmd.out_vdevice_id), self, dev_id(dev), virt_id)

    @issues("IOMMU_VEVENTQ_ALLOC")
    def event_queue(
        self, veventq_type: int, depth: int, *, flags: int = 0, payload_size: int | None = None
    ) -> EventQueue:
        """IOMMU_VEVENTQ_ALLOC: a vEVENTQ of one type holding at most ``depth`` events."""
        cmd = uapi.iommu_veventq_alloc(_VEVENTQ_ALLOC, flags, self.id, veventq_type, depth, 0, 0, 0)
        self.ictx.chan.call("IOMMU_VEVENTQ_ALLOC", uapi.IOMMU_VEVENTQ_ALLOC, cmd)
        size = VEVENT_PAYLOAD_SIZE.get(veventq_type, 0) if payload_size is None else payload_size
        return EventQueue(
            self.ictx, int(cmd.out_veventq_id), int(cmd.out_veventq_fd), veventq_type, depth, size
        )

    @issues("IOMMU_HW_QUEUE_ALLOC")
    def hw_queue(
        self, queue_type: int, index: int, iova: int, length: int, *, flags: int = 0
    ) -> HwQueue:
        """IOMMU_HW_QUEUE_ALLOC: hand the HW a guest queue at a nest-parent IOVA."""
        cmd = uapi.iommu_hw_queue_alloc(
            _HW_QUEUE_ALLOC, flags, self.id, queue_type, index, 0, iova, length
        )
        self.ictx.chan.call("IOMMU_HW_QUEUE_ALLOC", uapi.IOMMU_HW_QUEUE_ALLOC, cmd)
        return HwQueue(self.ictx, int(cmd.out_hw_queue_id), self, index)


class VDevice(IommufdObject):
    """A device's virtual ID on a vIOMMU."""

    rank = RANK_VDEVICE
    kind = "VDEVICE"

    def __init__(
        self, ictx: IommuFD, vdevice_id: int, viommu: VIOMMU, dev: int, virt_id: int
    ) -> None:
        super().__init__(ictx, vdevice_id)
        self.viommu = viommu
        self.dev_id = dev
        self.virt_id = virt_id


class HwQueue(IommufdObject):
    """A HW-accelerated vIOMMU queue (pins its nest-parent IOVA range)."""

    rank = RANK_QUEUE
    kind = "HW_QUEUE"

    def __init__(self, ictx: IommuFD, queue_id: int, viommu: VIOMMU, index: int) -> None:
        super().__init__(ictx, queue_id)
        self.viommu = viommu
        self.index = index


class _QueueObject(IommufdObject):
    """An iommufd object with its own fd; the fd is closed before IOMMU_DESTROY."""

    def __init__(self, ictx: IommuFD, object_id: int, fd: int, label: str) -> None:
        super().__init__(ictx, object_id)
        self.chan = Channel(fd, ictx.chan.backend, label)
        #: every read() and write() in order, as ("read" | "write", bytes), for ring checkers
        self.transcript: list[tuple[str, bytes]] = []

    @property
    def fd(self) -> int:
        return self.chan.fd

    def close_fd(self) -> None:
        """Close the fd only (the object then stays until destroyed)."""
        self.chan.close()

    def _release(self) -> None:
        self.chan.close()
        super()._release()


class FaultQueue(_QueueObject):
    """An iommufd fault object: page-request groups are read from, and answered on, its fd."""

    rank = RANK_FAULT
    kind = "FAULT"

    def __init__(self, ictx: IommuFD, fault_id: int, fd: int) -> None:
        super().__init__(ictx, fault_id, fd, "iommufd-pgfault")

    @issues("read(iommufd-pgfault)")
    def read_raw(self, count: int = 64 * _PGFAULT) -> bytes:
        """One read() of ``count`` bytes: whole groups only, b"" when nothing is pending."""
        data = self.chan.read("read(iommufd-pgfault)", count)
        if data:
            self.transcript.append(("read", data))
        return data

    def drain(self, max_records: int = 256) -> list[FaultGroup]:
        """Read until the queue is empty; the page-request groups in delivery order."""
        groups: list[FaultGroup] = []
        while data := self.read_raw(max_records * _PGFAULT):
            groups.extend(split_faults(data))
        return groups

    @issues("write(iommufd-pgfault)")
    def write_raw(self, data: bytes) -> int:
        """One write() of page responses; returns the bytes the kernel accepted."""
        done = self.chan.write("write(iommufd-pgfault)", bytes(data))
        if done:
            self.transcript.append(("write", bytes(data[:done])))
        return done

    @issues("write(iommufd-pgfault)")
    def respond(self, cookie: int, code: int = uapi.IOMMUFD_PAGE_RESP_SUCCESS) -> None:
        """Answer the group ``cookie`` (EINVAL for an unknown cookie or code)."""
        self.write_raw(bytes(uapi.iommu_hwpt_page_response(cookie, code)))


class EventQueue(_QueueObject):
    """A vEVENTQ: vendor events of one type, each after an iommufd_vevent_header."""

    rank = RANK_QUEUE
    kind = "VEVENTQ"

    def __init__(
        self,
        ictx: IommuFD,
        veventq_id: int,
        fd: int,
        veventq_type: int,
        depth: int,
        payload_size: int,
    ) -> None:
        super().__init__(ictx, veventq_id, fd, "iommufd-viommu-event")
        self.type = veventq_type
        self.depth = depth
        self.payload_size = payload_size

    @issues("read(iommufd-viommu-event)")
    def read_raw(self, count: int = 4096) -> bytes:
        """One read(): whole events only, b"" when the queue is empty."""
        data = self.chan.read("read(iommufd-viommu-event)", count)
        if data:
            self.transcript.append(("read", data))
        return data

    def drain(self, count: int = 4096) -> list[VEvent]:
        """Read until the queue is empty; the events in delivery order."""
        events: list[VEvent] = []
        while data := self.read_raw(count):
            events.extend(split_vevents(data, self.payload_size))
        return events


__all__ = [
    "FIXED_IOVA",
    "IOAS",
    "IOMMUFD_PATH",
    "PROT_READ",
    "PROT_RW",
    "PROT_WRITE",
    "U64_MAX",
    "VEVENT_PAYLOAD_SIZE",
    "VIOMMU",
    "EventQueue",
    "FaultGroup",
    "FaultQueue",
    "HwInfo",
    "HwQueue",
    "Hwpt",
    "IommuFD",
    "IovaRanges",
    "NestedHwpt",
    "PagingHwpt",
    "TeardownError",
    "VDevice",
    "VEvent",
    "invalidate",
    "split_faults",
    "split_vevents",
]
