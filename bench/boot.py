"""Boot to agent-ready, against the floor: the same kernel and machine with a bare initramfs.

For each arch (x86_64: q35 + VT-d + edu; arm64: virt + SMMUv3 + edu), alternately:

- **floor**: the guest's kernel booted with an initramfs holding only a static init that
  prints a marker (bench/c/floor_init.c, built here with the arch's (cross) gcc
  -static, packed as newc cpio with ``harness.images.cpio``): launch -> marker;
- **guest**: the real image through ``harness.guest.Guest``: launch -> ready marker
  (init done, sshd listening) -> SSH answers -> agent ready (code shipped, hello).

Prints the median of ``--runs`` of each, one ``name: value unit`` line per figure with
its ratio to the floor (the goal, issue 19: agent ready within 1.3x the floor), then where the
guest's time goes (kernel to /init, init, SSH, agent start) from the console's
timestamps and the harness's timings.

Usage: .venv/bin/python bench/boot.py [--runs N] [--arch x86_64|arm64|all] [--accel auto]
"""

from __future__ import annotations

import argparse
import re
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import images
from harness.artifacts import artifacts_root, new_artifacts_dir
from harness.guest import Guest
from harness.images import cpio
from harness.images.arches import ARCHES
from harness.profiles import VIOMMU_FOR_ARCH, guest_machine, make_viommu
from harness.qemu.description import Machine
from harness.qemu.machine import QemuMachine
from harness.qemu.rundir import sweep

FLOOR_SOURCE = Path(__file__).resolve().parent / "c" / "floor_init.c"
FLOOR_MARKER = "VIOMMU-FLOOR-READY"
#: agent ready within this many times the floor (issue 19)
GOAL = 1.3
RUN_INIT = re.compile(r"^\[\s*([0-9.]+)\] Run /init as init process", re.M)
INIT_READY = re.compile(r"viommu-init: ready after ([0-9.]+)s")
FLOOR_UPTIME = re.compile(r"floor-init: uptime ([0-9.]+) s")


def floor_initramfs(arch: str, directory: Path) -> Path:
    """A newc cpio with /dev/console and a static /init that prints FLOOR_MARKER."""
    binary = directory / f"floor-init-{arch}"
    compiler = f"{ARCHES[arch].cross_compile}gcc"
    subprocess.run([compiler, "-Os", "-static", "-o", str(binary), str(FLOOR_SOURCE)], check=True)
    archive = directory / f"floor-{arch}.cpio"
    with archive.open("wb") as stream:
        writer = cpio.Writer(stream)
        writer.add(cpio.Entry("dev", stat.S_IFDIR | 0o755))
        writer.add(cpio.Entry("dev/console", stat.S_IFCHR | 0o600, rdev_major=5, rdev_minor=1))
        writer.add(cpio.Entry("init", stat.S_IFREG | 0o755, data=binary.read_bytes()))
        writer.close()
    return archive


def boot_floor(machine: Machine, artifacts: Path) -> dict[str, float]:
    """Launch -> floor marker, in seconds (and the guest's uptime at the marker)."""
    vm = QemuMachine(machine, artifacts, name="floor", ready_marker=FLOOR_MARKER,
                     log=lambda m: None)  # fmt: skip
    with vm:
        start = time.monotonic()
        vm.launch(ready_timeout=300)
        took = time.monotonic() - start
        uptime = FLOOR_UPTIME.search(vm.console_text())
    return {"marker": took, "uptime": float(uptime.group(1)) if uptime else float("nan")}


def boot_guest(machine: Machine, image: Any, artifacts: Path) -> dict[str, float]:
    """The real guest: seconds to marker, SSH, agent, and guest-side init timings."""
    with Guest(machine, artifacts, ready_marker=image.ready_marker, log=lambda m: None) as guest:
        timings = dict(guest.timings)
        console = guest.vm.console_text()
        accel = guest.vm.accel
    figures = {
        "marker": timings["boot_to_marker_s"],
        "ssh": timings["boot_to_ssh_s"],
        "agent": timings["boot_to_agent_s"],
        "accel_kvm": float(accel == "kvm"),
    }
    if (run_init := RUN_INIT.search(console)) and (ready := INIT_READY.search(console)):
        figures["kernel_to_init"] = float(run_init.group(1))
        figures["init"] = float(ready.group(1)) - float(run_init.group(1))
    return figures


def median(runs: list[dict[str, float]], key: str) -> float:
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else float("nan")


def bench_arch(arch: str, runs: int, accel: str, directory: Path) -> None:
    image = images.ensure(arch)
    machine = guest_machine(image, make_viommu(VIOMMU_FOR_ARCH[arch]), ("edu",), accel=accel)
    floor_machine = replace(machine, initrd=floor_initramfs(arch, directory))
    root = artifacts_root() / "bench-boot"
    floors: list[dict[str, float]] = []
    guests: list[dict[str, float]] = []
    for n in range(runs):  # alternate, so that load changes hit both alike
        floors.append(boot_floor(floor_machine, new_artifacts_dir(f"floor-{arch}-{n}", root)))
        guests.append(boot_guest(machine, image, new_artifacts_dir(f"guest-{arch}-{n}", root)))
        print(f"# {arch} run {n}: floor {floors[-1]['marker']:.2f}s, guest marker "
              f"{guests[-1]['marker']:.2f}s ssh {guests[-1]['ssh']:.2f}s agent "
              f"{guests[-1]['agent']:.2f}s", file=sys.stderr, flush=True)  # fmt: skip
    floor = median(floors, "marker")
    mode = "kvm" if median(guests, "accel_kvm") >= 0.5 else "tcg"
    prefix = f"boot.{arch}.{mode}"
    print(f"{prefix}.runs: {runs} runs")
    print(f"{prefix}.floor_marker: {floor:.2f} s (1.00x floor)")
    for key, label in (("marker", "guest_marker"), ("ssh", "guest_ssh"), ("agent", "agent_ready")):
        value = median(guests, key)
        print(f"{prefix}.{label}: {value:.2f} s ({value / floor:.2f}x floor)")
    agent = median(guests, "agent")
    print(f"{prefix}.agent_ready_goal: {GOAL * floor:.2f} s ({GOAL:.2f}x floor; "
          f"{'met' if agent <= GOAL * floor else 'missed'})")  # fmt: skip
    # where the time goes
    print(f"{prefix}.floor_guest_uptime_at_marker: {median(floors, 'uptime'):.2f} s")
    print(f"{prefix}.guest_kernel_to_init: {median(guests, 'kernel_to_init'):.2f} s (guest clock)")
    print(f"{prefix}.guest_init_to_ready: {median(guests, 'init'):.2f} s (guest clock)")
    print(f"{prefix}.marker_to_ssh: {median(guests, 'ssh') - median(guests, 'marker'):.2f} s")
    print(f"{prefix}.ssh_to_agent: {median(guests, 'agent') - median(guests, 'ssh'):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--arch", choices=("x86_64", "arm64", "all"), default="all")
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    args = parser.parse_args()
    arches = ("x86_64", "arm64") if args.arch == "all" else (args.arch,)
    sweep()  # a harness start: what killed runs left
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        for arch in arches:
            bench_arch(arch, args.runs, "tcg" if arch != "x86_64" else args.accel, Path(tmp))


if __name__ == "__main__":
    main()
