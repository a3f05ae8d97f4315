"""What a running guest exposes on the host: private files, loopback-only ports, key-only SSH.

Checked on a live guest, from the file system and the kernel's socket table rather than
from the command line the harness built: the run directory is 0700 and the QMP socket
and SSH keys in it are owner-only; every TCP port QEMU listens on is bound to 127.0.0.1
(``/proc/net/tcp``, matched to QEMU's own socket inodes); the guest's sshd takes keys only
and presents the host key the harness made for it (any other is refused).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from harness.agent.client import AgentUnreachableError, connect_ssh
from harness.agent.keys import make_host_key
from harness.guest import HOST_KEY_INSTALLED
from harness.qemu.leaks import listening_sockets

VARIANTS = [
    pytest.param("x86_64", marks=pytest.mark.x86_64),
    pytest.param("arm64", marks=pytest.mark.arm64),
]


def mode(path: os.PathLike[str] | str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("arch", VARIANTS)
def test_private_files_loopback_ports_key_only_ssh(
    shared_guest: Any, arch: str, tmp_path: Path
) -> None:
    guest = shared_guest(arch, None, devices=(), name=f"tier1-{arch}")
    vm = guest.vm
    run_dir = vm.run_dir

    # 1. run directory 0700, everything in it owner-only (QMP socket, keys)
    assert os.lstat(run_dir).st_uid == os.getuid()
    assert mode(run_dir) == 0o700, oct(mode(run_dir))
    assert stat.S_ISSOCK(os.lstat(vm.qmp_socket).st_mode)
    assert mode(vm.qmp_socket) & 0o077 == 0, f"qmp.sock is {oct(mode(vm.qmp_socket))}"
    for name in ("id_ed25519", "authorized_keys", "ssh_host_ed25519_key"):
        assert mode(run_dir / name) == 0o600, f"{name} is {oct(mode(run_dir / name))}"
    for entry in run_dir.iterdir():
        assert mode(entry) & 0o077 == 0, f"{entry} is {oct(mode(entry))}"
    # the private key never lands in the artifacts (which CI uploads)
    for artifact in guest.artifacts.rglob("*"):
        if artifact.is_file() and artifact.stat().st_size < 16 << 20:
            assert b"PRIVATE KEY" not in artifact.read_bytes(), artifact

    # 2. QEMU listens on loopback only, and the forwarded SSH port is one of its sockets
    assert vm.pid is not None
    listening = listening_sockets(vm.pid)
    assert vm.ssh_port in {s.local_port for s in listening}, listening
    exposed = [s for s in listening if s.local_address != "127.0.0.1"]
    assert not exposed, f"QEMU listens beyond loopback: {exposed}"

    # 3. the guest's sshd: root by key only
    config = guest.run("/usr/sbin/sshd -T 2>/dev/null", timeout=60).stdout.lower().splitlines()
    assert "passwordauthentication no" in config
    assert "kbdinteractiveauthentication no" in config
    assert "pubkeyauthentication yes" in config

    # 4. the harness verifies the guest's host key: another key is refused at once
    assert HOST_KEY_INSTALLED in vm.console_text()
    tmp_path.chmod(0o700)
    impostor = make_host_key(tmp_path).public_line
    assert vm.ssh_port is not None and guest._key_file is not None
    with pytest.raises(AgentUnreachableError, match="host key is not the one this run gave"):
        connect_ssh(vm.ssh_port, guest._key_file, timeout=30, host_key=impostor).close()
