"""L1 of the simulated tier 3: an arm64 TCG guest at EL2 whose emulated SMMUv3 nests.

L1 boots the ``l1`` image flavor (QEMU 11.1.3 from trixie-backports) with
``virtualization=on`` (its kernel runs KVM in VHE mode, so L2 runs under KVM: QEMU's
``arm-smmuv3,accel=on`` requires KVM), the IORT override of the SMMUv3 tier (CANWBS:
without it L1's kernel refuses the vIOMMU QEMU asks for), QEMU's ``edu`` (the device L2
gets) and a read-only virtio-blk *payload disk* with L2's kernel, initramfs and UEFI
firmware.  The disk is an ext4 image made with ``mke2fs -d`` from the cached default
arm64 image and cached by content: attaching it costs nothing per run, where copying
the ~130 MB over SSH would cost a minute under TCG.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness import images
from harness.cachedir import cache_dir as shared_cache_dir
from harness.errors import ConfigError, HarnessError
from harness.firmware.initrd import early_cpio
from harness.firmware.override import IORT_SYSFS
from harness.guest import Guest
from harness.qemu.description import Machine
from harness.tier3.l2 import L2Guest, L2Machine
from harness.tier3.passthrough import AccelSmmuTopology, Topology, l2_machine
from harness.tier3.rmr import relax_rmrs

L1_FLAVOR = "l1"
L1_MEMORY_MB = 3072
L2_MEMORY_MB = 1024
PAYLOAD_DRIVE = "tier3-payload"
#: the payload disk as L1 sees it: the only virtio-blk device, so the first one
PAYLOAD_DEVICE = "/dev/vda"
L2_QEMU = {"arm64": "qemu-system-aarch64", "x86_64": "qemu-system-x86_64"}

Log = Callable[[str], None]


def cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/viommu-harness/tier3`` (or ``$VIOMMU_TIER3_CACHE``)."""
    return shared_cache_dir("tier3", "VIOMMU_TIER3_CACHE")


def _identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass(frozen=True)
class Payload:
    """The files L2 boots from, by their names on the payload disk."""

    kernel: Path
    initrd: Path
    firmware: Path | None

    names = {"kernel": "Image", "initrd": "initramfs.cpio", "firmware": "QEMU_EFI.fd"}

    def files(self) -> dict[str, Path]:
        out = {self.names["kernel"]: self.kernel, self.names["initrd"]: self.initrd}
        if self.firmware is not None:
            out[self.names["firmware"]] = self.firmware
        return out

    def key(self) -> str:
        """A hash of the files' identities (name, size, mtime) and the disk layout."""
        text = json.dumps(
            {name: _identity(path) for name, path in self.files().items()}, sort_keys=True
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_mke2fs() -> str | None:
    """mke2fs on PATH or in /usr/sbin, where it lives but an ordinary user's PATH on
    Debian does not look."""
    return shutil.which("mke2fs") or shutil.which("mke2fs", path="/usr/sbin:/sbin")


def payload_disk(payload: Payload, directory: Path | None = None, log: Log | None = None) -> Path:
    """The cached ext4 image holding ``payload`` (built with ``mke2fs -d`` when missing)."""
    directory = directory or cache_dir()
    disk = directory / f"payload-{payload.key()}.img"
    if disk.exists():
        return disk
    mke2fs = find_mke2fs()
    if mke2fs is None:
        raise HarnessError("mke2fs not found: install e2fsprogs (scripts/setup.sh does)")
    staging = directory / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "root").mkdir(parents=True)
    started = time.monotonic()
    try:
        total = 0
        for name, path in payload.files().items():
            target = staging / "root" / name
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
            total += path.stat().st_size
        size_mb = total // 2**20 + 32
        tmp = staging / "disk.img"
        result = subprocess.run(
            [
                mke2fs,
                "-q",
                "-F",
                "-t",
                "ext4",
                "-O",
                "^has_journal",
                "-L",
                "l2payload",
                "-d",
                str(staging / "root"),
                str(tmp),
                f"{size_mb}M",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise HarnessError(f"mke2fs: status {result.returncode}: {result.stderr.strip()}")
        tmp.replace(disk)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if log is not None:
        log(f"tier3: payload disk {disk.name} ({size_mb} MiB) in {time.monotonic() - started:.1f}s")
    return disk


def default_payload(arch: str = "arm64") -> Payload:
    """L2 boots the default image of ``arch`` (UEFI firmware from the host's package)."""
    image = images.ensure(arch)
    return Payload(image.kernel, image.initramfs, image.uefi_firmware)


def payload_args(disk: Path) -> tuple[str, ...]:
    """The read-only virtio-mmio disk (off PCI: L1's SMMU sees only the device under test)."""
    return (
        "-drive",
        f"if=none,id={PAYLOAD_DRIVE},format=raw,readonly=on,file={disk}",
        "-device",
        f"virtio-blk-device,drive={PAYLOAD_DRIVE}",
    )


def l1_machine(machine: Machine, *, disk: Path | None, el2: bool) -> Machine:
    """``machine`` (L1's vIOMMU and edu, already on the l1 image) with EL2 and the payload."""
    extra: tuple[str, ...] = ("-machine", "virtualization=on") if el2 else ()
    if disk is not None:
        extra += payload_args(disk)
    return machine.with_(
        extra_args=(*machine.extra_args, *extra), memory_mb=max(machine.memory_mb, L1_MEMORY_MB)
    )


def with_l1_image(machine: Machine) -> Machine:
    """``machine`` booting the ``l1`` flavor (same kernel, root filesystem with QEMU 11)."""
    image = images.ensure(machine.arch, L1_FLAVOR)
    return replace(machine, kernel=image.kernel, initrd=image.initramfs)


@dataclass
class L2Run:
    """What ``start_l2`` set up in L1 for one L2."""

    bdf: str
    prepared: dict[str, Any]
    guest: L2Guest
    facts: dict[str, Any]


def l2_iort_key(machine: Machine, qemu_version: str) -> str:
    """The cache key of the IORT L2's QEMU builds: its version and L2's topology."""
    described = machine.describe()
    for name in ("kernel", "initrd", "append", "uefi_code", "memory_mb", "accel", "cpu"):
        described.pop(name, None)
    text = json.dumps({"qemu": qemu_version, "machine": described}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _l2_vm(
    l1: Guest,
    machine: Machine,
    artifacts: Path,
    run_dir: str,
    name: str,
    *,
    ready_marker: str,
    trace_patterns: Sequence[str] = (),
    log: Log | None = None,
) -> L2Guest:
    vm = L2Machine(
        machine,
        artifacts,
        l1=l1,
        remote_dir=run_dir,
        qemu=L2_QEMU[machine.arch],
        ready_marker=ready_marker,
        name=name,
        log=log,
        trace_patterns=trace_patterns,
    )
    return L2Guest(vm, log=log)


def relaxed_iort_initrd(
    l1: Guest,
    machine: Machine,
    run_dir: str,
    artifacts: Path,
    *,
    ready_marker: str,
    log: Log | None = None,
) -> tuple[Machine, dict[str, Any]]:
    """L2 booting with its IORT's RMR relaxed (see ``harness.tier3.rmr``).

    QEMU's own IORT for this topology is cached on the host; on a cold cache one stock
    boot of L2 reads it.  The upgraded table goes into L1 as a small early cpio that L1
    puts in front of the payload's initramfs.
    """
    version = bytes(l1.call("system.run", argv=[L2_QEMU[machine.arch], "--version"])["stdout"])
    key = l2_iort_key(machine, version.decode(errors="replace").splitlines()[0])
    cached = cache_dir() / "iort" / f"l2-{key}.aml"
    facts: dict[str, Any] = {"l2_iort_key": key, "l2_iort_fetched_by_boot": False}
    if not cached.exists():
        started = time.monotonic()
        stock = _l2_vm(
            l1,
            machine,
            artifacts / "iort-fetch",
            run_dir,
            "l2-iort-fetch",
            ready_marker=ready_marker,
            log=log,
        )
        with stock:
            table = bytes(stock.call("system.read_file", path=IORT_SYSFS))
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(table)
        tmp.replace(cached)
        facts.update(
            l2_iort_fetched_by_boot=True, l2_iort_fetch_s=round(time.monotonic() - started, 1)
        )
    patch = relax_rmrs(cached.read_bytes())
    facts["l2_iort_override"] = patch.describe()
    early = f"{run_dir}/iort-early.cpio"
    combined = f"{run_dir}/initrd.cpio"
    l1.call("system.write_file", path=early, data=early_cpio({"IORT.aml": patch.table}), mode=0o600)
    result = l1.run(f"cat {early} {machine.initrd} > {combined}", timeout=120)
    if result.status != 0:
        raise HarnessError(f"L1: cannot build L2's initrd ({result.stderr.strip()})")
    return machine.with_(initrd=Path(combined)), facts


@contextlib.contextmanager
def start_l2(
    l1: Guest,
    bdf: str,
    topology: Topology,
    artifacts: Path,
    *,
    accel: str = "kvm",
    ready_marker: str = images.READY_MARKER,
    trace_patterns: Sequence[str] = (),
    run_id: str = "l2",
    memory_mb: int = L2_MEMORY_MB,
    relax_rmr: bool = True,
    log: Log | None = None,
) -> Iterator[L2Run]:
    """Boot L2 in L1 with ``bdf`` (an L1 device) passed through ``topology``; tear down after."""
    prepared = l1.call("l1.prepare", bdf=bdf, payload_device=PAYLOAD_DEVICE, run_id=run_id)
    if accel == "kvm" and not prepared["kvm"]:
        raise ConfigError("L1 has no /dev/kvm: boot it with virtualization=on (EL2)")
    machine = l2_machine(prepared["payload_dir"], topology, accel=accel, memory_mb=memory_mb)
    facts: dict[str, Any] = {}
    if relax_rmr and isinstance(topology, AccelSmmuTopology):
        machine, facts = relaxed_iort_initrd(
            l1, machine, prepared["run_dir"], artifacts, ready_marker=ready_marker, log=log
        )
    guest = _l2_vm(
        l1,
        machine,
        artifacts,
        prepared["run_dir"],
        run_id,
        ready_marker=ready_marker,
        trace_patterns=trace_patterns,
        log=log,
    )
    with guest:
        yield L2Run(bdf, prepared, guest, facts)
