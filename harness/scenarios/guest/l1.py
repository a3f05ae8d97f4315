"""Guest half of tier 3 that runs in L1: the "host" of an L2 QEMU.

L1 plays the KVM host of a passthrough setup: it binds a device to vfio-pci, mounts the
payload disk that carries L2's kernel, initramfs and firmware, makes a private run
directory, and reports what the host-side checks need (``/dev/kvm``, ``/dev/iommu``,
the IOMMU's GET_HW_INFO).  L2's QEMU itself runs on an SSH exec channel that the host
opens (``harness.tier3.l2``), so its exit status and stderr reach the host directly;
the functions here look after it by PID.  ``hw_info`` is ``harness.driver.vfio.iommu_info``,
which the real-host path calls on the host itself (``harness.tier3.hostcheck``).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any

from guests.agent.server import method

RUN_ROOT = "/run/tier3"
PAYLOAD_MOUNT = "/run/tier3-payload"


@method
def hw_info(cdev: str) -> dict[str, Any]:
    """``iommu_info`` of L1's IOMMU for the device L2 gets (L1 is L2's host)."""
    from harness.driver.vfio import iommu_info

    return iommu_info(cdev)


@method
def prepare(bdf: str, payload_device: str | None, run_id: str) -> dict[str, Any]:
    """Bind ``bdf`` to vfio-pci, mount the payload disk, make L2's run directory; the facts."""
    from guests.agent.pci import bind_vfio

    bound = bind_vfio(bdf)["device"]
    run_dir = os.path.join(RUN_ROOT, run_id)
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    os.chmod(run_dir, 0o700)
    payload: dict[str, int] = {}
    if payload_device:
        os.makedirs(PAYLOAD_MOUNT, exist_ok=True)
        if not os.path.ismount(PAYLOAD_MOUNT):
            status = os.system(f"mount -o ro {payload_device} {PAYLOAD_MOUNT}")
            if status != 0:
                raise OSError(f"mount {payload_device} on {PAYLOAD_MOUNT}: status {status}")
        payload = {
            name: os.path.getsize(os.path.join(PAYLOAD_MOUNT, name))
            for name in sorted(os.listdir(PAYLOAD_MOUNT))
            if os.path.isfile(os.path.join(PAYLOAD_MOUNT, name))
        }
    return {
        "device": bound,
        "run_dir": run_dir,
        "payload_dir": PAYLOAD_MOUNT,
        "payload": payload,
        "kvm": os.path.exists("/dev/kvm"),
        "iommu": os.path.exists("/dev/iommu"),
    }


@method
def free_port() -> int:
    """A TCP port on L1's loopback that was free a moment ago (for L2's SSH forward)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except OSError:
        return None


@method
def process_state(pid: int) -> str | None:
    """The kernel's state letter of ``pid`` (``None`` once it is gone; ``Z`` unreaped)."""
    return _state(pid)


@method
def stop(pid: int, grace: float = 3.0) -> str:
    """SIGTERM, then SIGKILL after ``grace`` seconds; how the process ended."""
    for sig, wait in ((signal.SIGCONT, 0.0), (signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if _state(pid) in (None, "Z"):
            return "gone" if sig == signal.SIGCONT else f"ended after {sig.name}"
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return "gone"
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _state(pid) not in (None, "Z"):
            time.sleep(0.05)
    return "ended after SIGKILL" if _state(pid) in (None, "Z") else "still running"


@method
def file_sizes(paths: list[str]) -> dict[str, int]:
    """Sizes of files (-1 for a missing one): how far a host-side mirror must catch up."""
    sizes = {}
    for path in paths:
        try:
            sizes[path] = os.path.getsize(path)
        except OSError:
            sizes[path] = -1
    return sizes
