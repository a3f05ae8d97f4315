"""Python overhead of the driver per ioctl: IOAS map + unmap of one page, C vs Python, in a guest.

Boots a tier 1 guest (TCG here: KVM is unusable on these hosts), runs
bench/driver_map_unmap.c (built statically on the host for the guest's arch) and the same
loop through ``harness.driver`` (``mock.bench_map_unmap``), and prints the ratio.  Also
times, on the host, the two ways of issuing an ioctl from Python (``fcntl.ioctl`` on a
ctypes struct vs a ctypes call into libc's ``ioctl``) on a trivial ioctl.

Usage: .venv/bin/python bench/driver_map_unmap.py [x86_64|arm64] [iterations]
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import images
from harness.artifacts import new_artifacts_dir
from harness.guest import Guest
from harness.profiles import guest_machine
from harness.scenarios.base import load_all

SOURCE = Path(__file__).with_suffix(".c")
COMPILERS = {"x86_64": "gcc", "arm64": "aarch64-linux-gnu-gcc"}
HOST_LOOPS = 200_000


def host_trivial_ioctl() -> dict[str, float]:
    """Nanoseconds per FIONREAD on a pipe: fcntl.ioctl vs ctypes libc.ioctl (host)."""
    read_end, write_end = os.pipe()
    buf = ctypes.c_int()
    libc = ctypes.CDLL(None, use_errno=True)
    libc_ioctl = libc.ioctl
    libc_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
    address = ctypes.addressof(buf)
    out: dict[str, float] = {}
    calls: tuple[tuple[str, Callable[[], object]], ...] = (
        ("host_fcntl_ioctl_ns", lambda: fcntl.ioctl(read_end, termios.FIONREAD, buf, True)),
        ("host_ctypes_ioctl_ns", lambda: libc_ioctl(read_end, termios.FIONREAD, address)),
    )
    for name, call in calls:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter_ns()
            for _ in range(HOST_LOOPS):
                call()
            best = min(best, (time.perf_counter_ns() - start) / HOST_LOOPS)
        out[name] = best
    os.close(read_end)
    os.close(write_end)
    return out


def build(arch: str, directory: Path) -> Path:
    binary = directory / f"driver_map_unmap-{arch}"
    subprocess.run([COMPILERS[arch], "-O2", "-static", "-o", str(binary), str(SOURCE)], check=True)
    return binary


def guest_figures(arch: str, iterations: int) -> dict[str, float]:
    load_all()
    image = images.ensure(arch)
    machine = guest_machine(image, None, (), accel="tcg")
    with tempfile.TemporaryDirectory() as tmp:
        binary = build(arch, Path(tmp))
        artifacts = new_artifacts_dir(f"bench-driver-{arch}")
        with Guest(machine, artifacts, ready_marker=image.ready_marker) as guest:
            guest.call(
                "system.write_file", path="/tmp/map_unmap", data=binary.read_bytes(), mode=0o755
            )
            run = guest.call("system.run", argv=["/tmp/map_unmap", str(iterations)], timeout=900)
            if run["status"] != 0:
                raise SystemExit(f"C baseline failed: {run['stderr'].decode()}")
            figures = {
                key: float(value)
                for key, value in (line.split(": ") for line in run["stdout"].decode().splitlines())
            }
            figures.update(guest.call("mock.bench_map_unmap", iterations=iterations, timeout=900))
    return figures


def main() -> None:
    arch = sys.argv[1] if len(sys.argv) > 1 else "x86_64"
    iterations = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    host = host_trivial_ioctl()
    print(f"host fcntl.ioctl trivial ioctl: {host['host_fcntl_ioctl_ns'] / 1000:.3f} us")
    ratio = host["host_ctypes_ioctl_ns"] / host["host_fcntl_ioctl_ns"]
    print(f"host ctypes libc.ioctl trivial ioctl: {host['host_ctypes_ioctl_ns'] / 1000:.3f} us "
          f"({ratio:.2f}x fcntl)")  # fmt: skip
    g = guest_figures(arch, iterations)
    c = g["c_map_unmap_ns"]
    for key, label in (
        ("c_map_unmap_ns", "C map+unmap"),
        ("py_fcntl_map_unmap_ns", "bare fcntl map+unmap"),
        ("py_driver_map_unmap_ns", "driver map+unmap"),
    ):
        print(f"{arch} guest (tcg) {label}: {g[key] / 1000:.2f} us ({g[key] / c:.2f}x C)")
    overhead = (g["py_driver_map_unmap_ns"] - c) / 2
    print(f"{arch} guest (tcg) driver overhead per ioctl: {overhead / 1000:.2f} us")
    opt = g["c_option_ns"]
    print(f"{arch} guest (tcg) C trivial ioctl (IOMMU_OPTION get): {opt / 1000:.2f} us")
    print(f"{arch} guest (tcg) driver trivial ioctl: {g['py_driver_option_ns'] / 1000:.2f} us "
          f"({g['py_driver_option_ns'] / opt:.2f}x C)")  # fmt: skip


if __name__ == "__main__":
    main()
