"""iommufd.h / iommufd_test.h models: ioctl encoding, layouts the driver relies on, decoding."""

from __future__ import annotations

import ctypes
import shutil
import struct
from enum import Enum
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from harness.uapi import abicheck, headers, iommufd, iommufd_test
from harness.uapi._ioctl import _IO, _IOC, _IOR, _IOW, _IOWR
from harness.uapi._struct import UapiStruct

pytestmark = pytest.mark.tier0


# --- ioctl numbers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (iommufd.IOMMU_DESTROY, 0x3B80),
        (iommufd.IOMMU_IOAS_MAP, 0x3B85),
        (iommufd.IOMMU_HWPT_ALLOC, 0x3B89),
        (iommufd.IOMMU_HWPT_INVALIDATE, 0x3B8D),
        (iommufd.IOMMU_VIOMMU_ALLOC, 0x3B90),
        (iommufd.IOMMU_HW_QUEUE_ALLOC, 0x3B94),
        (iommufd_test.IOMMU_TEST_CMD, 0x3BA0),
        # Well-known ioctls of other subsystems, one per direction.
        (_IOR(0x12, 114, ctypes.c_size_t), 0x80081272),  # BLKGETSIZE64
        (_IOW(ord("f"), 2, ctypes.c_long), 0x40086602),  # FS_IOC_SETFLAGS
        (_IOWR(0xAE, 0x88, ctypes.c_uint32 * 2), 0xC008AE88),  # KVM_GET_MSRS
    ],
)
def test_ioctl_numbers_have_known_values(number: int, expected: int) -> None:
    assert number == expected


def test_ioctl_directions_and_sizes_agree_with_the_c_macros(tmp_path: Path) -> None:
    """_IOR / _IOW / _IOWR with sizes up to the 14-bit limit, against <linux/ioctl.h>."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed (scripts/setup.sh installs it)")
    try:
        include_dirs = headers.ensure_uapi_tree().include_dirs
    except headers.UapiHeadersError as exc:
        pytest.skip(f"no Linux 7.3 uAPI headers: {exc}")
    cases = {
        "T_IO": ("_IO('x', 0)", _IO(ord("x"), 0)),
        "T_IOR": ("_IOR('x', 1, char[24])", _IOR(ord("x"), 1, ctypes.c_char * 24)),
        "T_IOW": ("_IOW('x', 0xfe, __u64)", _IOW(ord("x"), 0xFE, ctypes.c_uint64)),
        "T_IOWR": ("_IOWR(0xff, 0xff, char[16383])", _IOWR(0xFF, 0xFF, ctypes.c_char * 16383)),
    }
    header = tmp_path / "ioctl_cases.h"
    header.write_text(
        "#include <linux/types.h>\n#include <linux/ioctl.h>\n"
        + "".join(f"#define {name} {c_expr}\n" for name, (c_expr, _) in cases.items())
    )
    module = SimpleNamespace(
        __name__="ioctl_cases",
        C_HEADERS=(str(header),),
        STRUCTS=(),
        IOCTLS=tuple(cases),
        **{name: value for name, (_, value) in cases.items()},
    )
    report = abicheck.check([module], include_dirs=include_dirs).modules[0]
    assert report.ioctls == len(cases)
    assert report.ok, [str(problem) for problem in [*report.mismatches, *report.missing]]


def test_ioctl_size_beyond_14_bits_is_refused() -> None:
    with pytest.raises(ValueError, match="14 bits"):
        _IOWR(ord("x"), 1, ctypes.c_char * (1 << 14))
    with pytest.raises(ValueError, match="out of range"):
        _IOC(0, 0x100, 0, 0)


@pytest.mark.parametrize("module", [iommufd, iommufd_test], ids=lambda m: m.__name__)
def test_ioctl_numbers_are_distinct_and_sizeless(module: ModuleType) -> None:
    numbers = [getattr(module, name) for name in module.IOCTLS]
    assert len(set(numbers)) == len(numbers)
    assert all(n >> 16 == 0 and (n >> 8) & 0xFF == iommufd.IOMMUFD_TYPE for n in numbers)


def test_the_selftest_command_does_not_collide_with_iommufd() -> None:
    every = {getattr(iommufd, name) for name in iommufd.IOCTLS}
    assert iommufd_test.IOMMU_TEST_CMD not in every


# --- enums ----------------------------------------------------------------------------


def _enum_classes() -> list[type[Enum]]:
    return [
        value
        for value in vars(iommufd).values()
        if isinstance(value, type)
        and issubclass(value, Enum)
        and value.__module__ == iommufd.__name__
    ]


@pytest.mark.parametrize("enum_cls", _enum_classes(), ids=lambda c: c.__name__)
def test_every_enumerator_is_a_module_constant(enum_cls: type[Enum]) -> None:
    for name, member in enum_cls.__members__.items():
        assert getattr(iommufd, name) is member


def test_hw_info_type_none_and_default_are_the_same_value() -> None:
    assert iommufd.IOMMU_HW_INFO_TYPE_NONE == iommufd.IOMMU_HW_INFO_TYPE_DEFAULT == 0
    assert iommufd.iommu_hw_info_type(2) is iommufd.IOMMU_HW_INFO_TYPE_ARM_SMMUV3


def test_flags_combine_into_the_kernel_bits() -> None:
    flags = iommufd.IOMMU_IOAS_MAP_FIXED_IOVA | iommufd.IOMMU_IOAS_MAP_READABLE
    req = iommufd.iommu_ioas_map(size=ctypes.sizeof(iommufd.iommu_ioas_map), flags=flags)
    assert req.to_bytes()[4:8] == struct.pack("<I", 0b101)


# --- layouts and decoding -------------------------------------------------------------


def test_hw_info_in_and_out_data_type_share_one_field() -> None:
    info = iommufd.iommu_hw_info(in_data_type=iommufd.IOMMU_HW_INFO_TYPE_INTEL_VTD)
    assert info.out_data_type == iommufd.IOMMU_HW_INFO_TYPE_INTEL_VTD
    assert iommufd.iommu_hw_info.in_data_type.offset == 24
    assert ctypes.sizeof(iommufd.iommu_hw_info) == 40


def test_test_cmd_op_arguments_overlay_at_offset_16() -> None:
    cmd = iommufd_test.iommu_test_cmd(op=iommufd_test.IOMMU_TEST_OP_MOCK_DOMAIN, id=7)
    cmd.mock_domain.out_hwpt_id = 0x1234
    raw = cmd.to_bytes()
    assert len(raw) == 72
    assert struct.unpack_from("<IIII", raw, 16) == (0, 0x1234, 0, 0)
    assert cmd.mock_domain_flags.out_hwpt_id == 0x1234
    assert iommufd_test.iommu_test_cmd.last.offset == 64


def test_pgfault_records_decode_from_a_read_buffer() -> None:
    records = [
        struct.pack("<IIIIIIQII", flags, 3, 5, 9, perm, 0, addr, 0, cookie)
        for flags, perm, addr, cookie in ((1, 1, 0x1000, 40), (3, 2, 0x2000, 41))
    ]
    size = ctypes.sizeof(iommufd.iommu_hwpt_pgfault)
    buffer = b"".join(records)
    decoded = [iommufd.iommu_hwpt_pgfault.from_bytes(buffer[i : i + size]) for i in (0, size)]
    assert [(f.addr, f.cookie, f.perm) for f in decoded] == [(0x1000, 40, 1), (0x2000, 41, 2)]
    assert decoded[1].flags & iommufd.IOMMU_PGFAULT_FLAGS_LAST_PAGE


def test_from_bytes_takes_a_prefix_of_a_longer_buffer() -> None:
    header = iommufd.iommufd_vevent_header(flags=iommufd.IOMMU_VEVENTQ_FLAG_LOST_EVENTS, sequence=4)
    event = iommufd.iommu_vevent_arm_smmuv3(evt=(0x10, 1, 2, 3))
    stream = header.to_bytes() + event.to_bytes()
    assert iommufd.iommufd_vevent_header.from_bytes(stream).sequence == 4
    assert iommufd.iommu_vevent_arm_smmuv3.from_bytes(stream[8:]).evt[0] == 0x10


@pytest.mark.parametrize(
    "cls",
    [iommufd.iommu_hwpt_pgfault, iommufd.iommufd_vevent_header, iommufd_test.iommu_test_cmd],
    ids=lambda c: c.__name__,
)
def test_from_bytes_refuses_a_short_buffer(cls: type[UapiStruct]) -> None:
    size = ctypes.sizeof(cls)
    with pytest.raises(ValueError, match=rf"{cls.__name__}: need {size} bytes, got {size - 1}"):
        cls.from_bytes(bytes(size - 1))


def test_as_dict_shows_anonymous_unions_and_arrays_as_plain_values() -> None:
    info = iommufd.iommu_hw_info(size=40, out_data_type=2, __reserved=(1, 2, 3))
    values = info.as_dict()
    assert values["_data_type"] == {"in_data_type": 2, "out_data_type": 2}
    assert values["__reserved"] == [1, 2, 3]
    assert "iommu_hw_info(size=40" in repr(info)
