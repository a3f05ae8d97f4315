"""Tier 1 guest half: the iommufd errno contract of seed 001, probed ioctl by ioctl.

For every iommufd ioctl of the guest kernel: a size below the kernel's minimum (EINVAL),
non-zero bytes beyond the structure (E2BIG), zero bytes beyond it (accepted: same
answer as the exact size), a NULL argument (EFAULT), an unknown flag or a non-zero
reserved field (EOPNOTSUPP), an ID that does not exist (ENOENT), arithmetic overflow
(EOVERFLOW) where the ioctl takes ranges; plus ioctl numbers iommufd does not know
(ENOTTY).  ``expected`` is what drivers/iommu/iommufd/*.c of the guest kernel returns;
``seed`` is what seed 001's documented contract says; rows where they differ carry a
note.  Requests are built as raw bytes and issued through the driver's one ioctl path.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from guests.agent.server import method
from harness.driver import PAGE_SIZE, CheckTable, DmaBuffer, IoctlError, IommuFD, Selftest
from harness.driver.errors import errno_name
from harness.scenarios.guest._rows import EFFECT
from harness.uapi import iommufd as uapi
from harness.uapi import iommufd_test as t
from harness.uapi._ioctl import _IO, _IOWR
from harness.uapi._struct import UapiStruct

U64_MAX = (1 << 64) - 1
BOGUS = 0xFFFF_FF00
TRAILER = 8

#: ioctls documented by seed 001 (QEMU's linux/iommufd.h of ~Linux 6.7)
IN_SEED = frozenset(
    {
        "IOMMU_DESTROY", "IOMMU_IOAS_ALLOC", "IOMMU_IOAS_ALLOW_IOVAS", "IOMMU_IOAS_COPY",
        "IOMMU_IOAS_IOVA_RANGES", "IOMMU_IOAS_MAP", "IOMMU_IOAS_UNMAP", "IOMMU_OPTION",
        "IOMMU_VFIO_IOAS", "IOMMU_HWPT_ALLOC", "IOMMU_GET_HW_INFO",
        "IOMMU_HWPT_SET_DIRTY_TRACKING", "IOMMU_HWPT_GET_DIRTY_BITMAP",
    }
)  # fmt: skip

#: the errno seed 001's general contract gives each kind of case
SEED_RULE = {
    "size": errno.EINVAL,
    "trailing": errno.E2BIG,
    "flag": errno.EOPNOTSUPP,
    "reserved": errno.EOPNOTSUPP,
    "enoent": errno.ENOENT,
    "overflow": errno.EOVERFLOW,
    "enotty": errno.ENOTTY,
}


@dataclass
class Fixture:
    """Live objects the cases point at, so that only the probed field is wrong."""

    ictx: IommuFD
    st: Selftest
    ioas: int
    dev: int
    parent: int
    dirty: int
    viommu: int
    nested: int
    buf: DmaBuffer
    memfd: DmaBuffer


Value = int | Callable[[Fixture], int]


@dataclass
class Case:
    """One probe: ``fields`` override the ioctl's valid arguments; ``kind`` picks the seed rule."""

    name: str
    kind: str
    expected: int
    note: str = ""
    fields: dict[str, Value] = field(default_factory=dict)


def case(name: str, kind: str, expected: int, note: str = "", **fields: Value) -> Case:
    return Case(name, kind, expected, note, fields)


@dataclass
class Spec:
    """An ioctl, its structure, the field its kernel minimum size ends at, and its cases.

    ``valid`` are arguments that pass every check; each case changes some of them.  The
    size and trailing-byte probes use the first case's arguments (which fail with a known
    errno, so nothing is created and the exact-size answer can be compared).
    """

    name: str
    request: int
    struct: type[UapiStruct]
    last: str
    valid: dict[str, Value]
    cases: list[Case]

    @property
    def size(self) -> int:
        return ctypes.sizeof(self.struct)

    @property
    def min_size(self) -> int:
        member = getattr(self.struct, self.last)
        return int(member.offset + member.size)

    def build(self, f: Fixture, fields: dict[str, Value]) -> UapiStruct:
        """The struct (``size`` = sizeof) with valid arguments and ``fields`` applied."""
        obj = self.struct()
        ctypes.memmove(ctypes.addressof(obj), self.size.to_bytes(4, "little"), 4)
        for name, value in {**self.valid, **fields}.items():
            number = value(f) if callable(value) else value
            member = getattr(self.struct, name, None)
            if member is None:
                setattr(obj, name, number)
                continue
            raw = number.to_bytes(min(member.size, 8), "little")
            ctypes.memmove(ctypes.addressof(obj) + member.offset, raw, len(raw))
        return obj


def at(name: str) -> Callable[[Fixture], int]:
    """A fixture value, looked up when the case runs."""

    def get(f: Fixture) -> int:
        value = getattr(f, name)
        return int(getattr(value, "addr", value))

    return get


RW = uapi.IOMMU_IOAS_MAP_READABLE | uapi.IOMMU_IOAS_MAP_WRITEABLE
FIXED = uapi.IOMMU_IOAS_MAP_FIXED_IOVA
HIGH = (1 << 64) - PAGE_SIZE  # HIGH + 2 pages wraps
MAPPED = t.MOCK_APERTURE_START  # the fixture maps one page here
UNMAPPED = 0x7000_0000  # inside the mock aperture, never mapped
TWO_PAGES = 2 * PAGE_SIZE
SEL_DATA = t.iommu_hwpt_selftest(iotlb=t.IOMMU_TEST_IOTLB_DEFAULT)
SELFTEST_QUEUE: dict[str, Value] = {
    "viommu_id": at("viommu"),
    "type": t.IOMMU_HW_QUEUE_TYPE_SELFTEST,
}


def _sel_data_addr(f: Fixture) -> int:
    return ctypes.addressof(SEL_DATA)


PT_NOTE = "kernel: a pt_id naming no object is EINVAL (hw_pagetable.c), not ENOENT"
DIRTY_NOTE = "kernel: __reserved is not checked (hw_pagetable.c); seed: must be 0"
NOIOMMU_NOTE = "kernel built without CONFIG_IOMMUFD_NOIOMMU: every call is EOPNOTSUPP"


def specs(noiommu: bool) -> list[Spec]:
    """Every iommufd ioctl of the guest kernel with its cases and the kernel's answers."""
    e = errno
    flag31 = 1 << 31
    out = [
        Spec(
            "IOMMU_DESTROY", uapi.IOMMU_DESTROY, uapi.iommu_destroy, "id", {},
            [case("id does not exist", "enoent", e.ENOENT, id=BOGUS)],
        ),
        Spec(
            "IOMMU_IOAS_ALLOC", uapi.IOMMU_IOAS_ALLOC, uapi.iommu_ioas_alloc, "out_ioas_id", {},
            [case("unknown flag", "flag", e.EOPNOTSUPP, flags=flag31)],
        ),
        Spec(
            "IOMMU_IOAS_ALLOW_IOVAS", uapi.IOMMU_IOAS_ALLOW_IOVAS, uapi.iommu_ioas_allow_iovas,
            "allowed_iovas", {"ioas_id": at("ioas")},
            [
                case("ioas_id does not exist", "enoent", e.ENOENT, ioas_id=BOGUS),
                case("__reserved non-zero", "reserved", e.EOPNOTSUPP, __reserved=1),
            ],
        ),
        Spec(
            "IOMMU_IOAS_COPY", uapi.IOMMU_IOAS_COPY, uapi.iommu_ioas_copy, "src_iova",
            {"flags": RW, "dst_ioas_id": at("ioas"), "src_ioas_id": at("ioas"),
             "length": PAGE_SIZE, "src_iova": MAPPED},
            [
                case("src_ioas_id does not exist", "enoent", e.ENOENT, src_ioas_id=BOGUS),
                case("unknown flag", "flag", e.EOPNOTSUPP, flags=RW | flag31),
                case("src iova not mapped", "enoent", e.ENOENT, src_iova=UNMAPPED),
                case("length >= ULONG_MAX", "overflow", e.EOVERFLOW, length=U64_MAX),
                case("src_iova + length wraps", "overflow", e.EOVERFLOW,
                     src_iova=HIGH, length=TWO_PAGES),
            ],
        ),
        Spec(
            "IOMMU_IOAS_IOVA_RANGES", uapi.IOMMU_IOAS_IOVA_RANGES, uapi.iommu_ioas_iova_ranges,
            "out_iova_alignment", {"ioas_id": at("ioas")},
            [
                case("ioas_id does not exist", "enoent", e.ENOENT, ioas_id=BOGUS),
                case("__reserved non-zero", "reserved", e.EOPNOTSUPP, __reserved=1),
            ],
        ),
        Spec(
            "IOMMU_IOAS_MAP", uapi.IOMMU_IOAS_MAP, uapi.iommu_ioas_map, "iova",
            {"flags": RW, "ioas_id": at("ioas"), "user_va": at("buf"), "length": PAGE_SIZE},
            [
                case("ioas_id does not exist", "enoent", e.ENOENT, ioas_id=BOGUS),
                case("unknown flag", "flag", e.EOPNOTSUPP, flags=RW | flag31),
                case("__reserved non-zero", "reserved", e.EOPNOTSUPP, __reserved=1),
                case("iova >= ULONG_MAX", "overflow", e.EOVERFLOW, flags=RW | FIXED, iova=U64_MAX),
                case("length >= ULONG_MAX", "overflow", e.EOVERFLOW, length=U64_MAX),
                case("fixed iova + length wraps", "overflow", e.EOVERFLOW,
                     flags=RW | FIXED, iova=HIGH, length=TWO_PAGES),
            ],
        ),
        Spec(
            "IOMMU_IOAS_UNMAP", uapi.IOMMU_IOAS_UNMAP, uapi.iommu_ioas_unmap, "length",
            {"ioas_id": at("ioas"), "iova": MAPPED, "length": PAGE_SIZE},
            [
                case("ioas_id does not exist", "enoent", e.ENOENT, ioas_id=BOGUS),
                case("range not mapped", "enoent", e.ENOENT, iova=UNMAPPED),
                case("iova >= ULONG_MAX", "overflow", e.EOVERFLOW, iova=U64_MAX),
                case("iova + length wraps", "overflow", e.EOVERFLOW,
                     iova=1 << 63, length=(1 << 63) + PAGE_SIZE),
            ],
        ),
        Spec(
            "IOMMU_OPTION", uapi.IOMMU_OPTION, uapi.iommu_option, "val64",
            {"option_id": uapi.IOMMU_OPTION_HUGE_PAGES, "op": uapi.IOMMU_OPTION_OP_GET,
             "object_id": at("ioas")},
            [
                case("object_id does not exist", "enoent", e.ENOENT, object_id=BOGUS),
                case("unknown option_id", "flag", e.EOPNOTSUPP, option_id=0xFFFF),
                case("unknown op", "flag", e.EOPNOTSUPP,
                     option_id=uapi.IOMMU_OPTION_RLIMIT_MODE, op=7, object_id=0),
                case("__reserved non-zero", "reserved", e.EOPNOTSUPP, __reserved=1),
            ],
        ),
        Spec(
            "IOMMU_VFIO_IOAS", uapi.IOMMU_VFIO_IOAS, uapi.iommu_vfio_ioas, "__reserved",
            {"op": uapi.IOMMU_VFIO_IOAS_SET, "ioas_id": at("ioas")},
            [
                case("SET: ioas_id does not exist", "enoent", e.ENOENT, ioas_id=BOGUS),
                case("unknown op", "flag", e.EOPNOTSUPP, op=0xFFFF),
                case("__reserved non-zero", "reserved", e.EOPNOTSUPP, __reserved=1),
            ],
        ),
        Spec(
            "IOMMU_HWPT_ALLOC", uapi.IOMMU_HWPT_ALLOC, uapi.iommu_hwpt_alloc, "__reserved",
            {"dev_id": at("dev"), "pt_id": at("ioas")},
            [
                case("dev_id does not exist", "enoent", e.ENOENT, dev_id=BOGUS),
                case("unknown flag", "flag", e.EOPNOTSUPP, flags=flag31),
                case("__reserved non-zero", "reserved", e.EOPNOTSUPP, __reserved=1),
                case("unknown data_type", "flag", e.EOPNOTSUPP, pt_id=at("parent"),
                     data_type=0xFFFF, data_len=ctypes.sizeof(SEL_DATA), data_uptr=_sel_data_addr),
                case("pt_id does not exist", "enoent", e.EINVAL, PT_NOTE, pt_id=BOGUS),
            ],
        ),
        Spec(
            "IOMMU_GET_HW_INFO", uapi.IOMMU_GET_HW_INFO, uapi.iommu_hw_info, "__reserved",
            {"dev_id": at("dev")},
            [
                case("dev_id does not exist", "enoent", e.ENOENT, dev_id=BOGUS),
                case("unknown flag", "flag", e.EOPNOTSUPP, flags=flag31),
                case("__reserved non-zero", "reserved", e.EOPNOTSUPP, __reserved=1),
            ],
        ),
        Spec(
            "IOMMU_HWPT_SET_DIRTY_TRACKING", uapi.IOMMU_HWPT_SET_DIRTY_TRACKING,
            uapi.iommu_hwpt_set_dirty_tracking, "__reserved", {"hwpt_id": at("dirty")},
            [
                case("hwpt_id does not exist", "enoent", e.ENOENT, hwpt_id=BOGUS),
                case("unknown flag", "flag", e.EOPNOTSUPP, flags=flag31),
                case("__reserved non-zero", "reserved", 0, DIRTY_NOTE, __reserved=1),
            ],
        ),
        Spec(
            "IOMMU_HWPT_GET_DIRTY_BITMAP", uapi.IOMMU_HWPT_GET_DIRTY_BITMAP,
            uapi.iommu_hwpt_get_dirty_bitmap, "data",
            {"hwpt_id": at("dirty"), "iova": MAPPED, "length": PAGE_SIZE,
             "page_size": PAGE_SIZE, "data": at("buf")},
            [
                case("hwpt_id does not exist", "enoent", e.ENOENT, hwpt_id=BOGUS),
                case("unknown flag", "flag", e.EOPNOTSUPP, flags=flag31),
                case("__reserved non-zero", "reserved", e.EOPNOTSUPP, __reserved=1),
                case("iova + length wraps", "overflow", e.EOVERFLOW, iova=HIGH, length=TWO_PAGES),
            ],
        ),
        Spec(
            "IOMMU_HWPT_INVALIDATE", uapi.IOMMU_HWPT_INVALIDATE, uapi.iommu_hwpt_invalidate,
            "__reserved",
            {"hwpt_id": at("nested"), "data_type": t.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST},
            [
                case("hwpt_id does not exist", "enoent", e.ENOENT, hwpt_id=BOGUS),
                case("__reserved non-zero", "reserved", e.EOPNOTSUPP, __reserved=1),
            ],
        ),
        Spec(
            "IOMMU_FAULT_QUEUE_ALLOC", uapi.IOMMU_FAULT_QUEUE_ALLOC, uapi.iommu_fault_alloc,
            "out_fault_fd", {},
            [case("unknown flag", "flag", e.EOPNOTSUPP, flags=1)],
        ),
        Spec(
            "IOMMU_IOAS_MAP_FILE", uapi.IOMMU_IOAS_MAP_FILE, uapi.iommu_ioas_map_file, "iova",
            {"flags": RW, "ioas_id": at("ioas"), "fd": lambda f: f.memfd.fd, "length": PAGE_SIZE},
            [
                case("ioas_id does not exist", "enoent", e.ENOENT, ioas_id=BOGUS),
                case("unknown flag", "flag", e.EOPNOTSUPP, flags=RW | flag31),
                case("iova >= ULONG_MAX", "overflow", e.EOVERFLOW, flags=RW | FIXED, iova=U64_MAX),
                case("start + length wraps", "overflow", e.EOVERFLOW, start=HIGH, length=TWO_PAGES),
            ],
        ),
        Spec(
            "IOMMU_VIOMMU_ALLOC", uapi.IOMMU_VIOMMU_ALLOC, uapi.iommu_viommu_alloc, "out_viommu_id",
            {"type": t.IOMMU_VIOMMU_TYPE_SELFTEST, "dev_id": at("dev"), "hwpt_id": at("parent")},
            [
                case("dev_id does not exist", "enoent", e.ENOENT, dev_id=BOGUS),
                case("unknown flag", "flag", e.EOPNOTSUPP, flags=1),
                case("hwpt_id does not exist", "enoent", e.ENOENT, hwpt_id=BOGUS),
            ],
        ),
        Spec(
            "IOMMU_VDEVICE_ALLOC", uapi.IOMMU_VDEVICE_ALLOC, uapi.iommu_vdevice_alloc, "virt_id",
            {"viommu_id": at("viommu"), "dev_id": at("dev"), "virt_id": 0x99},
            [
                case("viommu_id does not exist", "enoent", e.ENOENT, viommu_id=BOGUS),
                case("dev_id does not exist", "enoent", e.ENOENT, dev_id=BOGUS),
            ],
        ),
        Spec(
            "IOMMU_IOAS_CHANGE_PROCESS", uapi.IOMMU_IOAS_CHANGE_PROCESS,
            uapi.iommu_ioas_change_process, "__reserved", {},
            [case("__reserved non-zero", "reserved", e.EOPNOTSUPP, __reserved=1)],
        ),
        Spec(
            "IOMMU_VEVENTQ_ALLOC", uapi.IOMMU_VEVENTQ_ALLOC, uapi.iommu_veventq_alloc,
            "out_veventq_fd",
            {"viommu_id": at("viommu"), "type": t.IOMMU_VEVENTQ_TYPE_SELFTEST, "veventq_depth": 2},
            [
                case("viommu_id does not exist", "enoent", e.ENOENT, viommu_id=BOGUS),
                case("unknown flag", "flag", e.EOPNOTSUPP, flags=1),
                case("__reserved non-zero", "reserved", e.EOPNOTSUPP, __reserved=1),
            ],
        ),
        Spec(
            "IOMMU_HW_QUEUE_ALLOC", uapi.IOMMU_HW_QUEUE_ALLOC, uapi.iommu_hw_queue_alloc, "length",
            {**SELFTEST_QUEUE, "nesting_parent_iova": MAPPED, "length": PAGE_SIZE},
            [
                case("viommu_id does not exist", "enoent", e.ENOENT, viommu_id=BOGUS),
                case("unknown flag", "flag", e.EOPNOTSUPP, flags=1),
                case("iova + length wraps", "overflow", e.EOVERFLOW, nesting_parent_iova=U64_MAX),
            ],
        ),
        Spec(
            "IOMMU_TEST_CMD", t.IOMMU_TEST_CMD, t.iommu_test_cmd, "last",
            {"op": t.IOMMU_TEST_OP_MOCK_DOMAIN, "id": at("ioas")},
            [
                case("MOCK_DOMAIN: pt_id does not exist", "enoent", e.ENOENT, id=BOGUS),
                case("unknown op", "flag", e.EOPNOTSUPP, op=0xFFFF),
            ],
        ),
        Spec(
            "IOMMU_IOAS_NOIOMMU_GET_PA", uapi.IOMMU_IOAS_NOIOMMU_GET_PA,
            uapi.iommu_ioas_noiommu_get_pa, "out_phys",
            {"ioas_id": at("ioas"), "iova": MAPPED, "length": PAGE_SIZE},
            [
                case("ioas_id does not exist", "enoent", e.ENOENT if noiommu else e.EOPNOTSUPP,
                     "" if noiommu else NOIOMMU_NOTE, ioas_id=BOGUS),
                case("unknown flag", "flag", e.EOPNOTSUPP, flags=1),
                case("iova >= ULONG_MAX", "overflow", e.EOVERFLOW if noiommu else e.EOPNOTSUPP,
                     "" if noiommu else NOIOMMU_NOTE, iova=U64_MAX),
            ],
        ),
    ]  # fmt: skip
    return out


#: ioctl numbers iommufd does not implement: (label, request)
UNKNOWN_IOCTLS = [
    ("nr 0x7f, below IOMMUFD_CMD_BASE", _IO(uapi.IOMMUFD_TYPE, uapi.IOMMUFD_CMD_BASE - 1)),
    ("nr 0x96, after the last command", _IO(uapi.IOMMUFD_TYPE, 0x96)),
    ("nr 0x9f, before IOMMU_TEST_CMD", _IO(uapi.IOMMUFD_TYPE, 0x9F)),
    ("nr 0xa1, past IOMMU_TEST_CMD", _IO(uapi.IOMMUFD_TYPE, 0xA1)),
    (
        "IOMMU_IOAS_MAP's nr with _IOWR bits",
        _IOWR(uapi.IOMMUFD_TYPE, uapi.IOMMUFD_CMD_IOAS_MAP, uapi.iommu_ioas_map),
    ),
    ("IOMMU_DESTROY's nr with type 'x'", _IO(ord("x"), uapi.IOMMUFD_CMD_DESTROY)),
]


def _kconfig() -> dict[str, str]:
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return dict(
                line.strip().split("=", 1)
                for line in f
                if line.startswith("CONFIG_") and "=" in line
            )
    except OSError:
        return {}


def _fixture(ictx: IommuFD, buf: DmaBuffer, memfd: DmaBuffer) -> Fixture:
    st = Selftest(ictx)
    st.set_temp_memory_limit()
    ioas = ictx.ioas()
    dev = st.mock_domain(ioas)
    ioas.map(buf.addr, PAGE_SIZE, MAPPED)
    parent = ioas.paging_hwpt(dev, nest_parent=True)
    dirty = ioas.paging_hwpt(dev, dirty_tracking=True)
    viommu = ictx.viommu(dev, parent, t.IOMMU_VIOMMU_TYPE_SELFTEST)
    nested = viommu.nested(dev, t.IOMMU_HWPT_DATA_SELFTEST, bytes(SEL_DATA))
    return Fixture(
        ictx, st, ioas.id, dev.dev_id, parent.id, dirty.id, viommu.id, nested.id, buf, memfd
    )


def _raw(obj: UapiStruct, size: int, trailer: bytes = bytes(TRAILER)) -> bytearray:
    data = bytearray(bytes(obj) + trailer)
    data[0:4] = size.to_bytes(4, "little")
    return data


def _issue(ictx: IommuFD, name: str, request: int, arg: bytearray | int) -> int:
    """The errno of one raw call (0 on success); the driver's IoctlError carries it."""
    try:
        ictx.call(name, request, arg)
    except IoctlError as err:
        return err.errno or 0
    return 0


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def _row(
    table: CheckTable, ioctl: str, case: str, kind: str, expected: int, got: int, note: str = ""
) -> None:
    """One effect row: the errno the kernel returned vs the one its source says it returns."""
    in_seed = ioctl in IN_SEED or kind == "enotty"
    seed = SEED_RULE.get(kind)
    seed_text = errno_name(seed) if seed is not None else ""
    if not note and seed is not None and seed != expected:
        note = "kernel differs from seed 001's contract"
    table.add(
        f"{ioctl}: {case}",
        errno_name(expected),
        errno_name(got),
        ioctl=ioctl,
        case=case,
        seed=seed_text if in_seed or not seed_text else f"({seed_text})",
        note=note,
        kind=EFFECT,
    )


def probe_spec(table: CheckTable, spec: Spec, f: Fixture) -> None:
    """All cases of one ioctl, on a fixture of live objects."""
    ictx = f.ictx
    base = spec.build(f, spec.cases[0].fields)

    def issue(arg: bytearray | int) -> int:
        return _issue(ictx, spec.name, spec.request, arg)

    exact = issue(_raw(base, spec.size, b""))
    wide = spec.size + TRAILER
    below = spec.min_size - 1
    _row(table, spec.name, f"size {below}, below the minimum {spec.min_size}", "size",
         errno.EINVAL, issue(_raw(base, below)))  # fmt: skip
    _row(table, spec.name, f"size {wide}, non-zero trailing byte", "trailing",
         errno.E2BIG, issue(_raw(base, wide, b"\xff" + bytes(TRAILER - 1))))  # fmt: skip
    _row(table, spec.name, f"size {wide}, zero trailing bytes (as size {spec.size})", "",
         exact, issue(_raw(base, wide)))  # fmt: skip
    _row(table, spec.name, "NULL argument", "", errno.EFAULT, issue(0))
    for probe_case in spec.cases:
        got = issue(_raw(spec.build(f, probe_case.fields), spec.size, b""))
        _row(
            table,
            spec.name,
            probe_case.name,
            probe_case.kind,
            probe_case.expected,
            got,
            probe_case.note,
        )


def _seed_layout(table: CheckTable, spec: Spec, f: Fixture) -> None:
    """Seed 001's 40-byte iommu_hwpt_alloc (before fault_id) is still accepted."""
    seed_size = 40
    arg = _raw(spec.build(f, {}), seed_size, b"")[:seed_size]
    got = _issue(f.ictx, spec.name, spec.request, arg)
    _row(table, spec.name, "seed 001 layout (size 40, no fault_id)", "", 0, got)


@method
def probe(only: list[str] | None = None) -> dict[str, Any]:
    """Probe every iommufd ioctl; the table has one row per ioctl x case."""
    table = CheckTable(
        "iommufd errno contract: expected = the guest kernel, seed = seed 001's rule "
        "(in parentheses for ioctls newer than the seed)"
    )
    noiommu = _kconfig().get("CONFIG_IOMMUFD_NOIOMMU") == "y"
    probed: list[str] = []
    with DmaBuffer(4 * PAGE_SIZE) as buf, DmaBuffer(4 * PAGE_SIZE, memfd=True) as memfd:
        before = _open_fds()
        for spec in specs(noiommu):
            if only and spec.name not in only:
                continue
            ictx = IommuFD()
            try:
                probe_spec(table, spec, _fixture(ictx, buf, memfd))
                if spec.name == "IOMMU_HWPT_ALLOC":
                    _seed_layout(table, spec, _fixture(ictx, buf, memfd))
            finally:
                ictx.close(destroy=False)
            probed.append(spec.name)
            for fd in _open_fds() - before:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if not only:
            with IommuFD() as ictx:
                for label, request in UNKNOWN_IOCTLS:
                    arg = bytearray(64)
                    arg[0:4] = (64).to_bytes(4, "little")
                    _row(
                        table,
                        "unknown ioctl",
                        label,
                        "enotty",
                        errno.ENOTTY,
                        _issue(ictx, label, request, arg),
                    )
    return table.result(ioctls=probed, noiommu=noiommu)
