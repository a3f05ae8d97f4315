"""VFIO side of the driver against a fake kernel: cdev bind/attach/detach, container, group."""

from __future__ import annotations

import ctypes
import errno
import struct
from typing import Any

import pytest

from harness.driver import IommuFD, VfioContainer, VfioDevice, VfioGroup, expect_errno
from harness.uapi import iommufd as iuapi
from harness.uapi import vfio as uapi
from tests.unit.test_driver import FakeKernel

pytestmark = pytest.mark.tier0


@pytest.fixture
def kernel() -> FakeKernel:
    fake = FakeKernel()

    def bind(fd: int, arg: Any) -> None:
        struct.pack_into("=I", arg, 12, 5)

    def attach(fd: int, arg: Any) -> None:
        pt = struct.unpack_from("=I", arg, 8)[0]
        struct.pack_into("=I", arg, 8, pt + 100)

    fake.handlers[uapi.VFIO_DEVICE_BIND_IOMMUFD] = bind
    fake.handlers[uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT] = attach
    return fake


def test_bind_attach_replace_detach_bytes(kernel: FakeKernel) -> None:
    ictx = IommuFD(backend=kernel)
    dev = VfioDevice("/dev/vfio/devices/vfio0", backend=kernel)
    assert dev.bind(ictx) == 5 and dev.dev_id == 5
    assert dev.attach(7) == 107
    assert dev.attach(8, pasid=3) == 108
    dev.detach(pasid=3)
    bind, attach, attach_pasid, detach = (
        c[3] for c in kernel.calls if c[0] == "ioctl" and c[1] == dev.fd
    )
    assert bind == struct.pack("=IIiIQ", 24, 0, ictx.fd, 0, 0)
    assert attach == struct.pack("=IIII", 16, 0, 7, 0)
    assert attach_pasid == struct.pack("=IIII", 16, uapi.VFIO_DEVICE_ATTACH_PASID, 8, 3)
    assert detach == struct.pack("=III", 12, uapi.VFIO_DEVICE_DETACH_PASID, 3)
    assert dev.attached == {None: 107}


def test_bind_token_sets_the_flag_and_pointer(kernel: FakeKernel) -> None:
    seen: list[bytes] = []

    def bind(fd: int, arg: Any) -> None:
        ptr = struct.unpack_from("=Q", arg, 16)[0]
        seen.append(ctypes.string_at(ptr, 16))

    kernel.handlers[uapi.VFIO_DEVICE_BIND_IOMMUFD] = bind
    ictx = IommuFD(backend=kernel)
    VfioDevice("/dev/vfio/devices/vfio0", backend=kernel).bind(ictx, token=b"T" * 16)
    flags = struct.unpack_from("=I", kernel.ioctls(uapi.VFIO_DEVICE_BIND_IOMMUFD)[0], 4)[0]
    assert flags == uapi.VFIO_DEVICE_BIND_FLAG_TOKEN and seen == [b"T" * 16]


def test_seed_004_overrides_reach_the_kernel(kernel: FakeKernel) -> None:
    ictx = IommuFD(backend=kernel)
    dev = VfioDevice("/dev/vfio/devices/vfio0", backend=kernel)
    kernel.fail[uapi.VFIO_DEVICE_BIND_IOMMUFD] = errno.EINVAL
    err = expect_errno(errno.EINVAL, dev.bind, ictx, argsz=8)
    assert err.ioctl == "VFIO_DEVICE_BIND_IOMMUFD"
    assert struct.unpack_from("=I", kernel.ioctls(uapi.VFIO_DEVICE_BIND_IOMMUFD)[0])[0] == 8
    kernel.fail[uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT] = errno.EINVAL
    expect_errno(errno.EINVAL, dev.attach, 1, flags=0x80)
    assert (
        struct.unpack_from("=II", kernel.ioctls(uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT)[0])[1] == 0x80
    )
    assert dev.attached == {}


def test_iommufd_teardown_detaches_bound_devices_first(kernel: FakeKernel) -> None:
    ictx = IommuFD(backend=kernel)
    ioas = ictx.ioas()
    dev = VfioDevice("/dev/vfio/devices/vfio0", backend=kernel)
    dev.bind(ictx)
    hwpt = ioas.paging_hwpt(dev)
    dev.attach(hwpt)
    start = len(kernel.calls)
    ictx.close()
    kinds = [(c[0], c[2]) for c in kernel.calls[start:] if c[0] == "ioctl"]
    assert kinds == [
        ("ioctl", uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT),
        ("ioctl", iuapi.IOMMU_DESTROY),
        ("ioctl", iuapi.IOMMU_DESTROY),
    ]
    assert kernel.destroyed() == [hwpt.id, ioas.id]
    assert dev.fd >= 0
    dev.close()


def test_closing_the_device_forgets_its_binding(kernel: FakeKernel) -> None:
    ictx = IommuFD(backend=kernel)
    dev = VfioDevice("/dev/vfio/devices/vfio0", backend=kernel)
    dev.bind(ictx)
    dev.attach(3)
    fd = dev.fd
    dev.close()
    assert ("close", fd) in kernel.calls and not ictx.objects
    ictx.close()
    assert not kernel.ioctls(uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT)


def test_container_ioctls_pass_ints_by_value(kernel: FakeKernel) -> None:
    kernel.handlers[uapi.VFIO_CHECK_EXTENSION] = lambda fd, arg: 1 if arg == 3 else 0
    with VfioContainer(backend=kernel) as container:
        assert container.api_version() == 0
        assert container.check_extension(uapi.VFIO_TYPE1v2_IOMMU) == 1
        assert container.check_extension(uapi.__VFIO_RESERVED_TYPE1_NESTING_IOMMU) == 0
        container.set_iommu(uapi.VFIO_TYPE1_IOMMU)
    assert kernel.ioctls(uapi.VFIO_SET_IOMMU) == [uapi.VFIO_TYPE1_IOMMU]


def test_map_and_unmap_dma_bytes(kernel: FakeKernel) -> None:
    kernel.handlers[uapi.VFIO_IOMMU_UNMAP_DMA] = lambda fd, arg: struct.pack_into(
        "=Q", arg, 16, 0x4000
    )
    container = VfioContainer(backend=kernel)
    container.map_dma(0x7000, 0x100000, 0x4000)
    assert container.unmap_all() == 0x4000
    assert kernel.ioctls(uapi.VFIO_IOMMU_MAP_DMA)[0] == struct.pack(
        "=IIQQQ", 32, uapi.VFIO_DMA_MAP_FLAG_READ | uapi.VFIO_DMA_MAP_FLAG_WRITE, 0x7000,
        0x100000, 0x4000,
    )  # fmt: skip
    assert kernel.ioctls(uapi.VFIO_IOMMU_UNMAP_DMA)[0] == struct.pack(
        "=IIQQ", 24, uapi.VFIO_DMA_UNMAP_FLAG_ALL, 0, 0
    )


def test_get_info_grows_to_argsz_and_decodes_caps(kernel: FakeKernel) -> None:
    full = uapi.encode_type1_info(0x1000, iova_ranges=[(0, 0xFFFF)], dma_avail=0xFFFFFFFF)

    def info(fd: int, arg: Any) -> None:
        argsz = struct.unpack_from("=I", arg)[0]
        if argsz < len(full):
            arg[:24] = full[:24]
            struct.pack_into("=I", arg, 16, 0)
        else:
            arg[: len(full)] = full

    kernel.handlers[uapi.VFIO_IOMMU_GET_INFO] = info
    decoded = VfioContainer(backend=kernel).info()
    assert decoded.iova_ranges == [(0, 0xFFFF)] and decoded.dma_avail == 0xFFFFFFFF
    sizes = [struct.unpack_from("=I", b)[0] for b in kernel.ioctls(uapi.VFIO_IOMMU_GET_INFO)]
    assert sizes == [24, len(full)]


def test_compat_container_shares_and_keeps_the_iommufd(kernel: FakeKernel) -> None:
    ictx = IommuFD(backend=kernel)
    compat = VfioContainer.over(ictx)
    compat.check_extension(uapi.VFIO_TYPE1_IOMMU)
    compat.close()
    assert kernel.calls[-1][1] == ictx.fd and ictx.fd >= 0


def test_group_set_container_and_device_fd(kernel: FakeKernel) -> None:
    seen: list[Any] = []

    def get_fd(fd: int, arg: Any) -> int:
        seen.append(bytes(arg))
        return 55

    kernel.handlers[uapi.VFIO_GROUP_GET_DEVICE_FD] = get_fd
    container = VfioContainer(backend=kernel)
    group = VfioGroup(7, backend=kernel)
    group.set_container(container)
    dev = group.device("0000:00:03.0")
    assert group.path == "/dev/vfio/7" and dev.fd == 55
    assert kernel.ioctls(uapi.VFIO_GROUP_SET_CONTAINER) == [struct.pack("=i", container.fd)]
    assert seen == [b"0000:00:03.0\0"]


def test_region_info_and_irq_set(kernel: FakeKernel) -> None:
    def region(fd: int, arg: Any) -> None:
        struct.pack_into("=IIIIQQ", arg, 0, 32, 7, 0, 0, 0x1000, 0x10000000000)

    kernel.handlers[uapi.VFIO_DEVICE_GET_REGION_INFO] = region
    dev = VfioDevice("/dev/vfio/devices/vfio0", backend=kernel)
    info = dev.region_info(0)
    assert (info.size, info.offset, info.flags) == (0x1000, 0x10000000000, 7)
    dev.set_irqs(
        2, uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_TRIGGER, eventfds=(9,)
    )
    assert kernel.ioctls(uapi.VFIO_DEVICE_SET_IRQS)[0] == struct.pack(
        "=IIIIIi", 24, uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_TRIGGER, 2, 0, 1, 9
    )
    dev.reset()
    assert kernel.ioctls(uapi.VFIO_DEVICE_RESET) == [0]
