"""VFIO: a device cdev bound to an iommufd, the type1 container and its iommufd compat path.

``VfioDevice("/dev/vfio/devices/vfio0")`` opens a device cdev; ``bind(ictx)`` binds it
(VFIO_DEVICE_BIND_IOMMUFD), ``attach(pt)`` / ``attach(pt)`` again (replace) /
``detach()`` move it between page tables, with or without a PASID.  Regions, BAR mmap,
IRQ eventfds and reset work on a bound device.  ``VfioContainer()`` is /dev/vfio/vfio
(type1); ``VfioContainer.over(ictx)`` issues the same container ioctls on an iommufd,
which answers them through its VFIO compatibility layer.  ``argsz`` / ``flags``
overrides exist for the error-path tests of seed 004.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from typing import Any

from harness.driver.backend import Backend, Channel, Closing, open_channel
from harness.driver.errors import IoctlError, errno_name, issues
from harness.driver.iommufd import IommuFD
from harness.driver.objects import RANK_DEVICE, HasId, Owned, obj_id
from harness.uapi import vfio as uapi

VFIO_CONTAINER_PATH = "/dev/vfio/vfio"

_BIND = ctypes.sizeof(uapi.vfio_device_bind_iommufd)
_ATTACH = ctypes.sizeof(uapi.vfio_device_attach_iommufd_pt)
_DETACH = ctypes.sizeof(uapi.vfio_device_detach_iommufd_pt)
_DEVICE_INFO = ctypes.sizeof(uapi.vfio_device_info)
_REGION_INFO = ctypes.sizeof(uapi.vfio_region_info)
_IRQ_INFO = ctypes.sizeof(uapi.vfio_irq_info)
_TYPE1_INFO = ctypes.sizeof(uapi.vfio_iommu_type1_info)
_DMA_MAP = ctypes.sizeof(uapi.vfio_iommu_type1_dma_map)
_DMA_UNMAP = ctypes.sizeof(uapi.vfio_iommu_type1_dma_unmap)
_GROUP_STATUS = ctypes.sizeof(uapi.vfio_group_status)


def _info_buffer(
    chan: Channel, name: str, request: int, head: bytes, argsz: int | None
) -> bytearray:
    """Issue an INFO ioctl whose ``argsz`` may grow for capabilities; returns the final buffer."""
    size = len(head) if argsz is None else argsz
    while True:
        buf = bytearray(max(size, len(head)))
        buf[: len(head)] = head
        buf[0:4] = size.to_bytes(4, "little")
        chan.call(name, request, buf)
        wanted = int.from_bytes(buf[0:4], "little")
        if argsz is not None or wanted <= size:
            return buf
        size = wanted


class _Binding(Owned):
    """A device's binding to an iommufd; tearing it down detaches the device everywhere."""

    rank = RANK_DEVICE
    kind = "VFIO_DEVICE"

    def __init__(self, ictx: IommuFD, device: VfioDevice) -> None:
        self.device = device
        super().__init__(ictx)

    def _release(self) -> None:
        for pasid in sorted(self.device.attached, key=lambda p: -1 if p is None else p):
            if self.device.chan.fd >= 0:
                self.device.detach(pasid=pasid)

    def __repr__(self) -> str:
        return f"VfioDevice({self.device.path}, dev_id={self.device.dev_id})"


class VfioDevice(Closing):
    """A VFIO device fd: a cdev (/dev/vfio/devices/vfioN) or one obtained from a group."""

    def __init__(self, path: str, *, backend: Backend | None = None) -> None:
        self.path = path
        self.chan = open_channel(path, os.O_RDWR | os.O_CLOEXEC, backend, path)
        self._init_state()

    @classmethod
    def from_fd(cls, fd: int, backend: Backend, label: str) -> VfioDevice:
        """Wrap a device fd from VFIO_GROUP_GET_DEVICE_FD."""
        device = cls.__new__(cls)
        device.path = label
        device.chan = Channel(fd, backend, label)
        device._init_state()
        return device

    def _init_state(self) -> None:
        self.ictx: IommuFD | None = None
        self._dev_id: int | None = None
        #: what is attached, by PASID (None: the device's RID)
        self.attached: dict[int | None, int] = {}
        self._binding: _Binding | None = None

    @property
    def fd(self) -> int:
        return self.chan.fd

    @property
    def dev_id(self) -> int:
        """The iommufd device ID from ``bind`` (AttributeError-free: 0 before binding)."""
        return self._dev_id or 0

    # --- iommufd binding --------------------------------------------------------------

    @issues("VFIO_DEVICE_BIND_IOMMUFD")
    def bind(
        self,
        ictx: IommuFD | int,
        *,
        flags: int = 0,
        token: bytes | None = None,
        argsz: int | None = None,
    ) -> int:
        """VFIO_DEVICE_BIND_IOMMUFD to ``ictx`` (or a raw fd, negative: noiommu); returns dev_id."""
        keep = None
        token_ptr = 0
        if token is not None:
            keep = ctypes.create_string_buffer(token, len(token))
            token_ptr = ctypes.addressof(keep)
            flags |= uapi.VFIO_DEVICE_BIND_FLAG_TOKEN
        fd = ictx if isinstance(ictx, int) else ictx.fd
        cmd = uapi.vfio_device_bind_iommufd(
            _BIND if argsz is None else argsz, flags, fd, 0, token_ptr
        )
        self.chan.call("VFIO_DEVICE_BIND_IOMMUFD", uapi.VFIO_DEVICE_BIND_IOMMUFD, cmd)
        del keep
        self._dev_id = int(cmd.out_devid)
        if isinstance(ictx, IommuFD):
            self.ictx = ictx
            self._binding = _Binding(ictx, self)
        return self._dev_id

    @issues("VFIO_DEVICE_ATTACH_IOMMUFD_PT")
    def attach(
        self,
        pt: int | HasId,
        *,
        pasid: int | None = None,
        flags: int | None = None,
        argsz: int | None = None,
    ) -> int:
        """Attach (or replace) the RID or ``pasid`` to an IOAS / HWPT; returns the HWPT ID."""
        if flags is None:
            flags = 0 if pasid is None else uapi.VFIO_DEVICE_ATTACH_PASID
        cmd = uapi.vfio_device_attach_iommufd_pt(
            _ATTACH if argsz is None else argsz, flags, obj_id(pt), pasid or 0
        )
        self.chan.call("VFIO_DEVICE_ATTACH_IOMMUFD_PT", uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, cmd)
        self.attached[pasid] = int(cmd.pt_id)
        return int(cmd.pt_id)

    @issues("VFIO_DEVICE_DETACH_IOMMUFD_PT")
    def detach(
        self, *, pasid: int | None = None, flags: int | None = None, argsz: int | None = None
    ) -> None:
        """Detach the RID or ``pasid`` (the device then blocks DMA)."""
        if flags is None:
            flags = 0 if pasid is None else uapi.VFIO_DEVICE_DETACH_PASID
        cmd = uapi.vfio_device_detach_iommufd_pt(
            _DETACH if argsz is None else argsz, flags, pasid or 0
        )
        self.chan.call("VFIO_DEVICE_DETACH_IOMMUFD_PT", uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, cmd)
        self.attached.pop(pasid, None)

    # --- device information, regions, IRQs ----------------------------------------------

    @issues("VFIO_DEVICE_GET_INFO")
    def info(self) -> uapi.vfio_device_info:
        buf = _info_buffer(
            self.chan,
            "VFIO_DEVICE_GET_INFO",
            uapi.VFIO_DEVICE_GET_INFO,
            bytes(uapi.vfio_device_info(_DEVICE_INFO)),
            None,
        )
        return uapi.vfio_device_info.from_bytes(buf)

    @issues("VFIO_DEVICE_GET_REGION_INFO")
    def region_info(self, index: int) -> uapi.RegionInfo:
        """VFIO_DEVICE_GET_REGION_INFO with its capability chain decoded."""
        head = bytes(uapi.vfio_region_info(_REGION_INFO, 0, index))
        buf = _info_buffer(
            self.chan, "VFIO_DEVICE_GET_REGION_INFO", uapi.VFIO_DEVICE_GET_REGION_INFO, head, None
        )
        return uapi.decode_region_info(buf)

    def read_region(self, index: int, offset: int, length: int) -> bytes:
        """pread ``length`` bytes at ``offset`` in region ``index`` (config space: 7)."""
        base = self.region_info(index).offset
        return self.chan.pread(f"pread(region {index})", length, base + offset)

    def write_region(self, index: int, offset: int, data: bytes) -> int:
        base = self.region_info(index).offset
        return self.chan.pwrite(f"pwrite(region {index})", data, base + offset)

    def mmap_region(
        self,
        index: int,
        offset: int = 0,
        length: int | None = None,
        prot: int = mmap.PROT_READ | mmap.PROT_WRITE,
    ) -> mmap.mmap:
        """mmap (part of) a BAR region; the region must be mmap-able."""
        region = self.region_info(index)
        size = region.size - offset if length is None else length
        return self.chan.mmap(f"mmap(region {index})", size, region.offset + offset, prot)

    @issues("VFIO_DEVICE_GET_IRQ_INFO")
    def irq_info(self, index: int) -> uapi.vfio_irq_info:
        cmd = uapi.vfio_irq_info(_IRQ_INFO, 0, index, 0)
        self.chan.call("VFIO_DEVICE_GET_IRQ_INFO", uapi.VFIO_DEVICE_GET_IRQ_INFO, cmd)
        return cmd

    @issues("VFIO_DEVICE_SET_IRQS")
    def set_irqs(
        self,
        index: int,
        flags: int,
        *,
        start: int = 0,
        count: int | None = None,
        eventfds: tuple[int, ...] = (),
        bools: tuple[bool, ...] = (),
    ) -> None:
        arg = bytearray(
            uapi.encode_irq_set(
                index, flags, start=start, count=count, eventfds=eventfds, bools=bools
            )
        )
        self.chan.call("VFIO_DEVICE_SET_IRQS", uapi.VFIO_DEVICE_SET_IRQS, arg)

    def irq_eventfds(self, index: int, count: int = 1) -> list[int]:
        """Trigger ``count`` vectors of IRQ ``index`` into new eventfds (the caller closes them)."""
        fds = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(count)]
        try:
            self.set_irqs(
                index,
                uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_TRIGGER,
                eventfds=tuple(fds),
            )
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def disable_irqs(self, index: int) -> None:
        self.set_irqs(
            index, uapi.VFIO_IRQ_SET_DATA_NONE | uapi.VFIO_IRQ_SET_ACTION_TRIGGER, count=0
        )

    @issues("VFIO_DEVICE_RESET")
    def reset(self) -> None:
        self.chan.call("VFIO_DEVICE_RESET", uapi.VFIO_DEVICE_RESET, 0)

    # --- lifetime ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the device fd (the kernel detaches and unbinds it)."""
        if self._binding is not None:
            self._binding.forget()
            self._binding = None
        self.attached.clear()
        self.chan.close()

    def __repr__(self) -> str:
        return f"VfioDevice({self.path}, fd={self.chan.fd}, dev_id={self._dev_id})"


class VfioContainer(Closing):
    """The type1 container ioctls, on /dev/vfio/vfio or on an iommufd (compat)."""

    def __init__(self, path: str = VFIO_CONTAINER_PATH, *, backend: Backend | None = None) -> None:
        self.path = path
        self.chan = open_channel(path, os.O_RDWR | os.O_CLOEXEC, backend, path)
        self._owns_fd = True

    @classmethod
    def over(cls, ictx: IommuFD) -> VfioContainer:
        """The compat container: the same ioctls on ``ictx``'s fd (not closed by ``close``)."""
        container = cls.__new__(cls)
        container.path = ictx.path
        container.chan = ictx.chan
        container._owns_fd = False
        return container

    @property
    def fd(self) -> int:
        return self.chan.fd

    @issues("VFIO_GET_API_VERSION")
    def api_version(self) -> int:
        return self.chan.call("VFIO_GET_API_VERSION", uapi.VFIO_GET_API_VERSION, 0)

    @issues("VFIO_CHECK_EXTENSION")
    def check_extension(self, extension: int) -> int:
        return self.chan.call("VFIO_CHECK_EXTENSION", uapi.VFIO_CHECK_EXTENSION, extension)

    @issues("VFIO_SET_IOMMU")
    def set_iommu(self, iommu_type: int = uapi.VFIO_TYPE1v2_IOMMU) -> None:
        self.chan.call("VFIO_SET_IOMMU", uapi.VFIO_SET_IOMMU, iommu_type)

    @issues("VFIO_IOMMU_GET_INFO")
    def info_raw(self, argsz: int | None = None) -> bytes:
        """VFIO_IOMMU_GET_INFO's buffer: at ``argsz`` if given, else grown to what it asks for."""
        head = bytes(uapi.vfio_iommu_type1_info(_TYPE1_INFO))
        return bytes(
            _info_buffer(self.chan, "VFIO_IOMMU_GET_INFO", uapi.VFIO_IOMMU_GET_INFO, head, argsz)
        )

    def info(self) -> uapi.Type1Info:
        """VFIO_IOMMU_GET_INFO with its capability chain (IOVA ranges, DMA avail) decoded."""
        return uapi.decode_type1_info(self.info_raw())

    @issues("VFIO_IOMMU_MAP_DMA")
    def map_dma(
        self,
        vaddr: int,
        iova: int,
        size: int,
        *,
        flags: int = uapi.VFIO_DMA_MAP_FLAG_READ | uapi.VFIO_DMA_MAP_FLAG_WRITE,
        argsz: int | None = None,
    ) -> None:
        cmd = uapi.vfio_iommu_type1_dma_map(
            _DMA_MAP if argsz is None else argsz, flags, vaddr, iova, size
        )
        self.chan.call("VFIO_IOMMU_MAP_DMA", uapi.VFIO_IOMMU_MAP_DMA, cmd)

    @issues("VFIO_IOMMU_UNMAP_DMA")
    def unmap_dma(self, iova: int, size: int, *, flags: int = 0, argsz: int | None = None) -> int:
        """VFIO_IOMMU_UNMAP_DMA; returns the bytes unmapped (the kernel's ``size``)."""
        cmd = uapi.vfio_iommu_type1_dma_unmap(
            _DMA_UNMAP if argsz is None else argsz, flags, iova, size
        )
        self.chan.call("VFIO_IOMMU_UNMAP_DMA", uapi.VFIO_IOMMU_UNMAP_DMA, cmd)
        return _size_of(cmd)

    @issues("VFIO_IOMMU_UNMAP_DMA")
    def unmap_all(self) -> int:
        """VFIO_DMA_UNMAP_FLAG_ALL (iova and size 0); returns the bytes unmapped."""
        return self.unmap_dma(0, 0, flags=uapi.VFIO_DMA_UNMAP_FLAG_ALL)

    def close(self) -> None:
        if self._owns_fd:
            self.chan.close()


class VfioGroup(Closing):
    """A VFIO group (/dev/vfio/N): attach it to a container, then get device fds from it."""

    def __init__(self, group: int | str, *, backend: Backend | None = None) -> None:
        self.path = group if isinstance(group, str) else f"/dev/vfio/{group}"
        self.chan = open_channel(self.path, os.O_RDWR | os.O_CLOEXEC, backend, self.path)

    @issues("VFIO_GROUP_GET_STATUS")
    def status(self) -> int:
        """VFIO_GROUP_FLAGS_VIABLE | VFIO_GROUP_FLAGS_CONTAINER_SET."""
        cmd = uapi.vfio_group_status(_GROUP_STATUS, 0)
        self.chan.call("VFIO_GROUP_GET_STATUS", uapi.VFIO_GROUP_GET_STATUS, cmd)
        return int(cmd.flags)

    @issues("VFIO_GROUP_SET_CONTAINER")
    def set_container(self, container: VfioContainer | IommuFD) -> None:
        fd = ctypes.c_int32(container.fd)
        self.chan.call("VFIO_GROUP_SET_CONTAINER", uapi.VFIO_GROUP_SET_CONTAINER, fd)

    @issues("VFIO_GROUP_UNSET_CONTAINER")
    def unset_container(self) -> None:
        self.chan.call("VFIO_GROUP_UNSET_CONTAINER", uapi.VFIO_GROUP_UNSET_CONTAINER, 0)

    @issues("VFIO_GROUP_GET_DEVICE_FD")
    def device(self, name: str) -> VfioDevice:
        """VFIO_GROUP_GET_DEVICE_FD for ``name`` (a PCI BDF such as 0000:00:03.0)."""
        arg = bytearray(name.encode() + b"\0")
        fd = self.chan.call("VFIO_GROUP_GET_DEVICE_FD", uapi.VFIO_GROUP_GET_DEVICE_FD, arg)
        return VfioDevice.from_fd(fd, self.chan.backend, f"{self.path}:{name}")

    def close(self) -> None:
        self.chan.close()


def _size_of(cmd: Any) -> int:
    """A struct's ``size`` field (shadowing ``UapiStruct.size()`` for type checkers)."""
    return int(getattr(cmd, "size"))  # noqa: B009


def iommu_info(cdev: str) -> dict[str, Any]:
    """IOMMU_GET_HW_INFO for a vfio cdev, and whether a nest parent allocates (errno name).

    What tier 3 asks of the IOMMU behind a device, on a real host or in L1; raises
    ``IoctlError`` when the device does not open, bind or answer GET_HW_INFO.
    """
    with VfioDevice(cdev) as dev, IommuFD() as ictx:
        dev_id = dev.bind(ictx)
        info = ictx.hw_info(dev_id)
        ioas = ictx.ioas()
        try:
            ioas.paging_hwpt(dev_id, nest_parent=True)
            nest_parent = "OK"
        except IoctlError as exc:
            nest_parent = errno_name(exc.errno or 0)
        return {
            "data_type": int(info.data_type),
            "data": bytes(info.data),
            "capabilities": int(info.capabilities),
            "nest_parent": nest_parent,
        }
