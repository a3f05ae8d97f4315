"""Per-architecture facts of the guest images: Debian arch, kernel target, console, firmware."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.errors import ConfigError
from harness.host import host_arch

READY_MARKER = "VIOMMU-HARNESS-READY"
"""Line the guest's init prints on the console once sshd listens (guests/init/init)."""


@dataclass(frozen=True)
class ArchSpec:
    """How to build and boot the guest images of one architecture."""

    name: str
    debian_arch: str
    kernel_arch: str
    gnu_triplet: str
    image_target: str
    image_path: str
    console: str
    qemu_binary: str
    expected_kernel_steps: int
    uefi_firmware: Path | None = None
    extra_cmdline: tuple[str, ...] = ()

    @property
    def cmdline(self) -> tuple[str, ...]:
        """Kernel command-line defaults for booting this arch's images under QEMU."""
        return (f"console={self.console}", "panic=-1", *self.extra_cmdline)

    @property
    def cross_compile(self) -> str:
        """``CROSS_COMPILE`` prefix for this host: empty when building natively."""
        return "" if host_arch() == self.name else f"{self.gnu_triplet}-"

    def kernel_fields(self) -> dict[str, str]:
        """The fields that determine the kernel build (part of the kernel's cache key)."""
        return {
            "arch": self.name,
            "kernel_arch": self.kernel_arch,
            "cross_compile": self.cross_compile,
            "image_target": self.image_target,
        }


ARCHES: dict[str, ArchSpec] = {
    "x86_64": ArchSpec(
        name="x86_64",
        debian_arch="amd64",
        kernel_arch="x86_64",
        gnu_triplet="x86_64-linux-gnu",
        image_target="bzImage",
        image_path="arch/x86/boot/bzImage",
        console="ttyS0",
        qemu_binary="qemu-system-x86_64",
        expected_kernel_steps=2300,
        # TCG on a loaded host can miss the IO-APIC timer check's window, and with
        # interrupt remapping that check panics ("timer doesn't work through
        # Interrupt-remapped IO-APIC"); a virtual machine's timer needs no check.
        extra_cmdline=("no_timer_check",),
    ),
    "arm64": ArchSpec(
        name="arm64",
        debian_arch="arm64",
        kernel_arch="arm64",
        gnu_triplet="aarch64-linux-gnu",
        image_target="Image",
        image_path="arch/arm64/boot/Image",
        console="ttyAMA0",
        qemu_binary="qemu-system-aarch64",
        expected_kernel_steps=2250,
        uefi_firmware=Path("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"),
    ),
}


def arch_spec(name: str) -> ArchSpec:
    """The spec of a guest architecture, or ConfigError naming the known ones."""
    try:
        return ARCHES[name]
    except KeyError:
        known = ", ".join(ARCHES)
        raise ConfigError(f"unknown guest arch {name!r} (known: {known})") from None
