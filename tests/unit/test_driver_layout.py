"""The driver's precomputed command layouts read and write exactly what the ctypes uAPI does."""

from __future__ import annotations

import ctypes
import errno
import inspect
from typing import Any

import pytest

from harness.driver.backend import Channel
from harness.driver.errors import IoctlError
from harness.driver.layout import layout
from harness.uapi import iommufd, iommufd_test, vfio
from harness.uapi._struct import UapiStruct

pytestmark = pytest.mark.tier0


def _structs() -> list[Any]:
    found = []
    for module in (iommufd, iommufd_test, vfio):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, UapiStruct) and cls is not UapiStruct and cls._fields_:
                found.append(cls)
    return found


@pytest.mark.parametrize("ctype", _structs(), ids=lambda c: c.__name__)
def test_a_layout_packs_the_bytes_ctypes_would(ctype: Any) -> None:
    packed = layout(ctype)
    assert packed.size == ctypes.sizeof(ctype)
    values = {}
    for index, name in enumerate(packed.names):
        size = ctypes.sizeof(dict((f[0], f[1]) for f in ctype._fields_)[name])
        values[name] = (0x0102030405060708 * (index + 1)) & ((1 << (8 * size - 1)) - 1)
    data = packed.pack(*values.values())
    assert data == bytes(ctype(**values))
    assert packed.unpack(data) == tuple(values.values())
    assert [packed.offset(name) for name in values] == [
        getattr(ctype, name).offset for name in values
    ]


def test_a_field_struct_cannot_pack_is_refused_by_name() -> None:
    class Odd(UapiStruct):
        _fields_ = [("size", ctypes.c_uint32), ("ready", ctypes.c_bool)]

    with pytest.raises(TypeError, match=r"Odd\.ready: no struct code for c_bool"):
        layout(Odd)


def test_hwpt_alloc_layout_names_its_scalars_in_order() -> None:
    hwpt = layout(iommufd.iommu_hwpt_alloc)
    assert hwpt.format == "=IIIIIIIIQII"
    assert hwpt.names[:4] == ("size", "flags", "dev_id", "pt_id")
    assert hwpt.offset("out_hwpt_id") == 16 and hwpt.offset("data_uptr") == 32


class _Refusing:
    def ioctl(self, fd: int, request: int, arg: Any) -> int:
        raise OSError(errno.EBUSY, "busy")


def test_a_refused_packed_command_reads_as_its_struct() -> None:
    destroy = layout(iommufd.iommu_destroy)
    chan = Channel(3, _Refusing(), "iommufd")  # type: ignore[arg-type]
    with pytest.raises(IoctlError) as info:
        chan.call_buf(
            "IOMMU_DESTROY", iommufd.IOMMU_DESTROY, bytearray(destroy.pack(8, 42)), destroy
        )
    assert (info.value.ioctl, info.value.errno) == ("IOMMU_DESTROY", errno.EBUSY)
    assert info.value.args_repr == "iommu_destroy(size=8, id=42)"
