"""The monitors a person or a tool outside the harness uses, on a live guest of each arch.

The harness holds its own QMP connection; a second QMP socket and an HMP socket in the same
private run directory are free for others.  A plain ``qemu.qmp`` client gets the greeting
and a ``query-status`` answer while the harness keeps driving the guest, an HMP client gets
``info status``, and ``harness rings`` reads the vIOMMU through the second socket.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from typing import Any

import pytest
from qemu.qmp.legacy import QEMUMonitorProtocol

from harness.commands import rings as rings_cmd
from harness.profiles import VIOMMU_FOR_ARCH
from harness.qemu.qmp import QmpSession

VARIANTS = [
    pytest.param("x86_64", marks=[pytest.mark.x86_64, pytest.mark.vtd]),
    pytest.param("arm64", marks=[pytest.mark.arm64, pytest.mark.smmuv3]),
]


def hmp_exchange(path: str, line: str, until: bytes, timeout: float = 20.0) -> str:
    """Connect to an HMP socket, wait for the prompt, send ``line``, read until ``until``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        data = b""
        deadline = time.monotonic() + timeout
        while b"(qemu) " not in data and time.monotonic() < deadline:
            data += sock.recv(4096)
        assert b"(qemu) " in data, f"no HMP prompt: {data!r}"
        sock.sendall(line.encode() + b"\n")
        answer = b""
        while until not in answer and time.monotonic() < deadline:
            answer += sock.recv(4096)
        return answer.decode(errors="replace")


@pytest.mark.parametrize("arch", VARIANTS)
def test_user_monitors_answer_while_the_harness_is_attached(shared_guest: Any, arch: str) -> None:
    guest = shared_guest(arch, VIOMMU_FOR_ARCH[arch], devices=("edu",))
    vm = guest.vm
    for path in (vm.user_qmp_socket, vm.hmp_socket):
        assert path.parent == vm.run_dir
        assert stat.S_ISSOCK(os.lstat(path).st_mode), path
        assert stat.S_IMODE(os.lstat(path).st_mode) & 0o077 == 0, oct(os.lstat(path).st_mode)

    client = QEMUMonitorProtocol(str(vm.user_qmp_socket))
    greeting = client.connect(negotiate=True)
    try:
        assert greeting is not None and "QMP" in greeting, greeting
        assert "version" in greeting["QMP"]
        status = client.cmd_raw("query-status")
        assert status["return"]["running"] is True, status
        assert status["return"]["status"] == "running"
        # the harness's own monitor and the guest still answer while the user is attached
        assert vm.qmp.execute("query-status")["running"] is True
        assert guest.run("echo alive", timeout=60).stdout.strip() == "alive"
        again = client.cmd_raw("query-status")
        assert again["return"]["running"] is True
    finally:
        client.close()

    answer = hmp_exchange(str(vm.hmp_socket), "info status", b"VM status")
    assert "VM status: running" in answer, answer

    # harness rings through the user's socket: the vIOMMU found in the memory map, read
    session = QmpSession()
    try:
        session.connect(vm.user_qmp_socket)
        records = rings_cmd.collect(session, last=4, pause=True)
    finally:
        session.close()
    head = records[0]
    assert head["queue"] == {"x86_64": "vtd", "arm64": "smmuv3"}[arch], head
    assert vm.qmp.execute("query-status")["running"] is True  # the snapshot resumed the VM
