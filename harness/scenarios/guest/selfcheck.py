"""A trivial guest half proving the scenario plumbing: which iommufd nodes exist."""

from __future__ import annotations

import ctypes
import fcntl
import os
from typing import Any

from guests.agent.server import method


@method
def devices() -> dict[str, Any]:
    """Presence of /dev/iommu and the vfio cdevs in the guest."""
    vfio = "/dev/vfio/devices"
    return {
        "iommu": os.path.exists("/dev/iommu"),
        "vfio_devices": sorted(os.listdir(vfio)) if os.path.isdir(vfio) else [],
    }


def _ioctl(fd: int, request: int, arg: ctypes.Structure) -> None:
    buf = bytearray(bytes(arg))
    fcntl.ioctl(fd, request, buf)
    ctypes.memmove(ctypes.addressof(arg), bytes(buf), len(buf))


@method
def open_cdev(path: str) -> dict[str, Any]:
    """Open a vfio cdev, bind it to a fresh iommufd and attach it to an IOAS.

    Attaching makes the guest's IOMMU driver install a domain for the device, i.e.
    program the vIOMMU (context / stream table entries and invalidations).
    """
    from harness.uapi import iommufd as iu
    from harness.uapi import vfio as vu

    dev = os.open(path, os.O_RDWR)
    iommu = os.open("/dev/iommu", os.O_RDWR)
    try:
        bind = vu.vfio_device_bind_iommufd(argsz=ctypes.sizeof(vu.vfio_device_bind_iommufd),
                                           iommufd=iommu)  # fmt: skip
        _ioctl(dev, vu.VFIO_DEVICE_BIND_IOMMUFD, bind)
        ioas = iu.iommu_ioas_alloc(size=ctypes.sizeof(iu.iommu_ioas_alloc))
        _ioctl(iommu, iu.IOMMU_IOAS_ALLOC, ioas)
        attach = vu.vfio_device_attach_iommufd_pt(
            argsz=ctypes.sizeof(vu.vfio_device_attach_iommufd_pt), pt_id=ioas.out_ioas_id
        )
        _ioctl(dev, vu.VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach)
        return {"bound": True, "devid": bind.out_devid, "ioas": ioas.out_ioas_id,
                "hwpt": attach.pt_id}  # fmt: skip
    except OSError as exc:
        return {"bound": False, "error": f"{exc.strerror} (errno {exc.errno})"}
    finally:
        os.close(dev)
        os.close(iommu)
