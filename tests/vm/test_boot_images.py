"""Boot each arch's guest image under QEMU (TCG) to the init's ready marker, then log in.

Direct QEMU subprocesses on purpose: this checks the images alone, not the machine layer.
Builds the images first on a cold cache (``harness.images.ensure``).
"""

from __future__ import annotations

import base64
import contextlib
import io
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from harness.images import GuestImage, ensure

pytestmark = pytest.mark.slow

MARKER_TIMEOUT = 180.0
FW_CFG_NAME = "opt/viommu-harness/authorized_keys"


@dataclass
class Guest:
    """A running QEMU with the console captured to a file."""

    process: subprocess.Popen[bytes]
    console: Path
    port: int
    key: paramiko.Ed25519Key
    started: float

    def console_text(self) -> str:
        return self.console.read_text(errors="replace")

    def wait_for(self, marker: str, timeout: float) -> float:
        """Seconds from QEMU's start until ``marker`` is on the console; fails with its tail."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            text = self.console_text()
            if marker in text:
                return time.monotonic() - self.started
            if self.process.poll() is not None or "Kernel panic" in text:
                break
            time.sleep(0.1)
        tail = "\n".join(self.console_text().splitlines()[-30:])
        pytest.fail(f"no {marker!r} after {time.monotonic() - self.started:.0f}s:\n{tail}")

    def ssh(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(
            "127.0.0.1",
            port=self.port,
            username="root",
            pkey=self.key,
            allow_agent=False,
            look_for_keys=False,
            timeout=30,
            banner_timeout=60,
            auth_timeout=60,
        )
        return client


def run(client: paramiko.SSHClient, command: str) -> str:
    """Output of a command in the guest; fails the test on a non-zero exit."""
    _stdin, stdout, stderr = client.exec_command(command, timeout=120)
    output = stdout.read().decode()
    status = stdout.channel.recv_exit_status()
    assert status == 0, f"{command!r} exited {status}: {stderr.read().decode()}"
    return output


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def qemu_argv(
    image: GuestImage, port: int, extra_append: str = "", uefi: bool = False
) -> list[str]:
    """The smallest command line that boots the image with SSH forwarded to 127.0.0.1."""
    if image.arch == "x86_64":
        argv = ["qemu-system-x86_64", "-M", "q35", "-cpu", "max"]
    else:
        argv = ["qemu-system-aarch64", "-M", "virt,gic-version=3", "-cpu", "max,pauth-impdef=on"]
        if uefi:
            assert image.uefi_firmware is not None
            argv += ["-bios", str(image.uefi_firmware)]
    append = " ".join([*image.cmdline, extra_append]).strip()
    return [
        *argv,
        "-accel",
        "tcg",
        "-m",
        "2G",
        "-smp",
        "2",
        "-nographic",
        "-monitor",
        "none",
        "-no-reboot",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initramfs),
        "-append",
        append,
        "-netdev",
        f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device",
        "virtio-net-pci,netdev=net0",
    ]


def new_key() -> tuple[paramiko.Ed25519Key, bytes]:
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem.decode())), public + b" test\n"


@pytest.fixture(params=[pytest.param("x86_64", marks=pytest.mark.x86_64),
                        pytest.param("arm64", marks=pytest.mark.arm64)])  # fmt: skip
def image(request: pytest.FixtureRequest) -> GuestImage:
    arch: str = request.param
    binary = "qemu-system-x86_64" if arch == "x86_64" else "qemu-system-aarch64"
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} not installed")
    return ensure(arch)


@contextlib.contextmanager
def boot(
    image: GuestImage, tmp_path: Path, *, key_by: str = "fw_cfg", uefi: bool = False
) -> Iterator[Guest]:
    """Start QEMU (key through fw_cfg or the kernel command line); always kill it after."""
    key, public = new_key()
    public_file = tmp_path / "authorized_keys"
    public_file.write_bytes(public)
    port = free_port()
    extra = ""
    if key_by == "cmdline":
        extra = "viommu.authorized_key=" + base64.b64encode(public).decode()
    argv = qemu_argv(image, port, extra, uefi)
    if key_by == "fw_cfg":
        argv += ["-fw_cfg", f"name={FW_CFG_NAME},file={public_file}"]
    console = tmp_path / "console.log"
    (tmp_path / "argv").write_text(" ".join(argv) + "\n")
    with console.open("wb") as output:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        yield Guest(process, console, port, key, time.monotonic())
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_boots_to_marker_and_accepts_the_fw_cfg_key(
    image: GuestImage, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    with boot(image, tmp_path) as guest:
        seconds = guest.wait_for(image.ready_marker, MARKER_TIMEOUT)
        record_property("seconds_to_marker", round(seconds, 1))
        print(f"{image.arch}: ready marker after {seconds:.1f}s")
        assert "authorized key from fw_cfg" in guest.console_text()
        with guest.ssh() as client:
            assert run(client, "uname -r").strip() == image.kernel_release
            mounts = run(client, "cat /proc/mounts")
            assert " /sys/kernel/debug debugfs " in mounts
            assert " /dev/pts devpts " in mounts
            assert run(client, "test -c /dev/iommu && echo yes").strip() == "yes"
            assert (
                run(client, "python3 -c 'import ctypes, sys; print(sys.version_info[0])'") == "3\n"
            )
            address = run(client, "ip -4 -o addr show dev eth0")
            assert "10.0.2.15/24" in address
            assert run(client, "ls /sys/kernel/debug/iommu >/dev/null && echo ok").strip() == "ok"
            assert run(client, "lspci -n | wc -l").strip() != "0"
            assert run(client, "awk 'BEGIN { print 6 * 7 }'").strip() == "42"
            zombies = run(
                client, "sh -c 'sleep 0.1 &'; sleep 1; ps -eo stat= | grep -c '^Z' || true"
            )
            assert zombies.strip() == "0"
            client.exec_command("poweroff -f")
        assert guest.process.wait(timeout=60) == 0


@pytest.mark.x86_64
def test_key_from_the_kernel_command_line(tmp_path: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not installed")
    image = ensure("x86_64")
    with boot(image, tmp_path, key_by="cmdline") as guest:
        guest.wait_for(image.ready_marker, MARKER_TIMEOUT)
        assert "authorized key from the kernel command line" in guest.console_text()
        with guest.ssh() as client:
            assert run(client, "id -u").strip() == "0"


@pytest.mark.arm64
def test_arm64_boots_through_uefi_and_acpi(tmp_path: Path) -> None:
    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 not installed")
    image = ensure("arm64")
    assert image.uefi_firmware is not None
    if not image.uefi_firmware.is_file():
        pytest.skip(f"{image.uefi_firmware} missing (Debian package qemu-efi-aarch64)")
    with boot(image, tmp_path, uefi=True) as guest:
        seconds = guest.wait_for(image.ready_marker, MARKER_TIMEOUT)
        print(f"arm64 UEFI: ready marker after {seconds:.1f}s")
        with guest.ssh() as client:
            assert run(client, "test -d /sys/firmware/acpi/tables && echo acpi").strip() == "acpi"
            assert run(client, "test -e /sys/firmware/acpi/tables/IORT && echo iort") == "iort\n"
