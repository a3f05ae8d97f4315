"""Boot vIOMMU guests, reach them both ways (QMP and agent), and survive their deaths."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness.agent.client import AgentConnectionLostError, AgentRemoteError
from harness.qemu.trace import TraceWindow, set_trace_events

EDU = (0x1234, 0x11E8)


def listening(port: int) -> bool:
    """Whether anything listens on 127.0.0.1:port (from /proc/net/tcp, state 0A)."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.split(":")[1], 16) == port:
                return True
    return False


def assert_nothing_left(guest: Any) -> None:
    """No QEMU process, no listening port, no run directory once the guest is closed."""
    pid, port, run_dir = guest.vm.pid, guest.vm.ssh_port, guest.vm.run_dir
    guest.close()
    if pid is not None:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
    assert port is None or not listening(port)
    assert not Path(run_dir).exists()


def bind_edu(guest: Any) -> dict[str, Any]:
    (bdf,) = guest.call("pci.find", vendor=EDU[0], device=EDU[1])
    bound = guest.call("pci.bind_vfio", bdf=bdf)
    return dict(bound["device"])


VARIANTS = [
    pytest.param("x86_64", "vtd", "vtd_*", marks=[pytest.mark.x86_64, pytest.mark.vtd]),
    pytest.param("arm64", "smmuv3", "smmuv3_*", marks=[pytest.mark.arm64, pytest.mark.smmuv3]),
]


@pytest.mark.parametrize(("arch", "viommu", "trace"), VARIANTS)
def test_guest_reachable_with_edu_on_vfio(
    boot_guest: Any, arch: str, viommu: str, trace: str
) -> None:
    guest = boot_guest(arch, viommu)
    info = guest.call("system.info")
    assert info["kernel"].endswith("-viommu-harness")
    assert guest.vm.qmp.execute("query-status")["status"] == "running"

    assert guest.call("selfcheck.devices")["iommu"] is True
    assert set_trace_events(guest.vm.qmp, [trace]) > 0
    window = TraceWindow(guest.vm.qemu_log)
    device = bind_edu(guest)
    assert device["driver"] == "vfio-pci"
    assert device["iommu_group"] is not None
    assert device["vfio_cdev"] == "/dev/vfio/devices/vfio0"
    assert "vfio0" in guest.call("selfcheck.devices")["vfio_devices"]
    # Binding the cdev to iommufd and attaching it to an IOAS makes the guest's IOMMU
    # driver program the vIOMMU for edu; QEMU's trace shows that programming.
    opened = guest.call("selfcheck.open_cdev", path=device["vfio_cdev"])
    assert opened["bound"], opened.get("error")
    deadline = time.monotonic() + 10
    while not window.records(trace) and time.monotonic() < deadline:
        time.sleep(0.2)
    records = window.records(trace)
    assert records, f"no {trace} trace record after binding edu to vfio-pci"
    assert all(r.timestamp is not None for r in records)


@pytest.mark.x86_64
def test_remote_error_carries_errno(boot_guest: Any) -> None:
    guest = boot_guest("x86_64", "vtd", devices=())
    with pytest.raises(AgentRemoteError) as info:
        guest.call("system.read_file", path="/sys/nonexistent")
    assert info.value.errno == 2
    assert info.value.remote_type == "FileNotFoundError"
    assert "Traceback" in info.value.remote_traceback


@pytest.mark.x86_64
def test_qemu_killed_mid_call_is_reported_and_cleaned(boot_guest: Any) -> None:
    guest = boot_guest("x86_64", "vtd", devices=())
    pid = guest.vm.pid
    threading.Timer(1.0, os.kill, (pid, signal.SIGKILL)).start()
    start = time.monotonic()
    with pytest.raises(AgentConnectionLostError, match="killed by signal 9"):
        guest.call("system.sleep", seconds=60, timeout=60)
    assert time.monotonic() - start < 15
    assert guest.vm.health().kind == "exited"
    assert_nothing_left(guest)


@pytest.mark.x86_64
def test_guest_panic_is_reported_and_cleaned(boot_guest: Any) -> None:
    guest = boot_guest("x86_64", "vtd", devices=())
    start = time.monotonic()
    with pytest.raises(AgentConnectionLostError, match="panic"):
        guest.call("system.run", argv="echo c > /proc/sysrq-trigger", timeout=60)
    assert time.monotonic() - start < 15
    assert guest.vm.health().kind == "panic"
    assert (guest.vm.artifacts / "console.log").exists()
    assert_nothing_left(guest)
