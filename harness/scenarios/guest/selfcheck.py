"""A trivial guest half proving the scenario plumbing: which iommufd nodes exist."""

from __future__ import annotations

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
