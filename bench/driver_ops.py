"""Driver overhead per operation: ``harness.driver`` vs the same ioctls in C, same guest, same run.

Boots a guest with the kernel's iommufd selftest mock (x86_64 by default; TCG here), then
runs two programs on the same iommufd setup (an IOAS with a mock device, a nest-parent
HWPT with a nested selftest HWPT):

- bench/c/driver_ops.c, compiled statically on the host for the guest's arch against
  the real Linux 7.3 uAPI headers, shipped with ``system.write_file``;
- this file, run in the guest by the guest's Python (``--guest``) through the driver's
  public API (``IommuFD``, ``IOAS.map/unmap``, ``IOAS.paging_hwpt``, ``PagingHwpt.nested``,
  ``NestedHwpt.invalidate``, ``close``), importing the driver from the agent's bundle.

Per operation it prints the C figure, the bare ``fcntl.ioctl`` floor (the same ioctls with
structs built before the loop: what any Python driver pays before doing anything, as a
ratio to C) and the driver's figure as ratios to both, judged against the goal of 1.5x
the floor; for invalidation also the same call with pre-packed entries (what packing a
list of structs on every call costs).

Usage: .venv/bin/python bench/driver_ops.py [--arch x86_64|arm64] [--iterations N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "c" / "driver_ops.c"
#: operations in the order both programs print them; ops that run n/4 times are slower
OPS = (
    "map_unmap_4k",
    "map_unmap_2m",
    "hwpt_alloc_free",
    "nested_alloc_free",
    "invalidate_1",
    "invalidate_64",
)
GOAL = 1.5
"""Driver time / bare fcntl.ioctl time, per operation."""


# -- guest side (standard library + the shipped harness.driver only) ---------------------


def _best(op: Callable[[], object], n: int) -> float:
    """Nanoseconds per call of ``op``: the best of two passes of ``n`` calls."""
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter_ns()
        for _ in range(n):
            op()
        best = min(best, (time.perf_counter_ns() - start) / n)
    return best


def _bare(fd: int, calls: list[tuple[int, Any]]) -> Callable[[], None]:
    """The same ioctls as pre-built ``fcntl.ioctl`` calls: the floor for any Python driver."""
    import fcntl

    ioctl = fcntl.ioctl

    def op() -> None:
        for request, arg in calls:
            ioctl(fd, request, arg, True)

    return op


def _bare_alloc_free(fd: int, alloc: Any, destroy: Any) -> Callable[[], None]:
    """IOMMU_HWPT_ALLOC then IOMMU_DESTROY of the new ID, structs pre-built: the floor."""
    import fcntl

    from harness.uapi import iommufd as u

    ioctl, alloc_nr, destroy_nr = fcntl.ioctl, u.IOMMU_HWPT_ALLOC, u.IOMMU_DESTROY

    def op() -> None:
        ioctl(fd, alloc_nr, alloc, True)
        destroy.id = alloc.out_hwpt_id
        ioctl(fd, destroy_nr, destroy, True)

    return op


def guest_main(n: int) -> dict[str, float]:
    """The operations through the driver's public API, in the guest."""
    import ctypes

    from harness.driver import DmaBuffer, IommuFD, Selftest
    from harness.uapi import iommufd as u
    from harness.uapi import iommufd_test as t

    size_4k, size_2m, iova = 4096, 2 << 20, t.MOCK_APERTURE_START
    data = bytes(t.iommu_hwpt_selftest(iotlb=t.IOMMU_TEST_IOTLB_DEFAULT))
    kind = t.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST
    out: dict[str, float] = {}
    with IommuFD() as ictx, DmaBuffer(size_2m) as buf:
        ioas = ictx.ioas()
        dev = Selftest(ictx).mock_domain(ioas)
        parent = ioas.paging_hwpt(dev, nest_parent=True)
        nested = parent.nested(dev, t.IOMMU_HWPT_DATA_SELFTEST, data)
        one = [t.iommu_hwpt_invalidate_selftest(0, 0)]
        many = [
            t.iommu_hwpt_invalidate_selftest(0, i % (t.MOCK_NESTED_DOMAIN_IOTLB_ID_MAX + 1))
            for i in range(64)
        ]
        packed_one, packed_many = b"".join(map(bytes, one)), b"".join(map(bytes, many))
        addr, quarter = buf.addr, max(1, n // 4)

        def map_unmap(length: int) -> Callable[[], None]:
            def op() -> None:
                ioas.map(addr, length, iova)
                ioas.unmap(iova, length)

            return op

        out["map_unmap_4k"] = _best(map_unmap(size_4k), n)
        out["map_unmap_2m"] = _best(map_unmap(size_2m), quarter)
        out["hwpt_alloc_free"] = _best(lambda: ioas.paging_hwpt(dev).close(), quarter)
        out["nested_alloc_free"] = _best(
            lambda: parent.nested(dev, t.IOMMU_HWPT_DATA_SELFTEST, data).close(), quarter
        )
        out["invalidate_1"] = _best(lambda: nested.invalidate(one, kind), n)
        out["invalidate_64"] = _best(lambda: nested.invalidate(many, kind), quarter)
        # the floor of every operation: the same ioctls, structs built before the loop
        flags = u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE
        flags |= u.IOMMU_IOAS_MAP_WRITEABLE
        fd = ictx.fd
        for name, length, times in (
            ("map_unmap_4k", size_4k, n),
            ("map_unmap_2m", size_2m, quarter),
        ):
            bare_map = u.iommu_ioas_map(40, flags, ioas.id, 0, addr, length, iova)
            bare_unmap = u.iommu_ioas_unmap(24, ioas.id, iova, length)
            out[f"{name}_fcntl"] = _best(
                _bare(fd, [(u.IOMMU_IOAS_MAP, bare_map), (u.IOMMU_IOAS_UNMAP, bare_unmap)]), times
            )
        paging = u.iommu_hwpt_alloc(48, 0, dev.dev_id, ioas.id, 0, 0, 0, 0, 0, 0, 0)
        out["hwpt_alloc_free_fcntl"] = _best(
            _bare_alloc_free(fd, paging, u.iommu_destroy(8, 0)), quarter
        )
        user = ctypes.create_string_buffer(data, len(data))
        nest = u.iommu_hwpt_alloc(
            48, 0, dev.dev_id, parent.id, 0, 0, t.IOMMU_HWPT_DATA_SELFTEST, len(data),
            ctypes.addressof(user), 0, 0,
        )  # fmt: skip
        out["nested_alloc_free_fcntl"] = _best(
            _bare_alloc_free(fd, nest, u.iommu_destroy(8, 0)), quarter
        )
        entry = ctypes.create_string_buffer(packed_one, len(packed_one))
        bare_inv = u.iommu_hwpt_invalidate(32, nested.id, ctypes.addressof(entry), kind, 8, 1, 0)
        out["invalidate_1_fcntl"] = _best(_bare(fd, [(u.IOMMU_HWPT_INVALIDATE, bare_inv)]), n)
        entries = ctypes.create_string_buffer(packed_many, len(packed_many))
        bare_many = u.iommu_hwpt_invalidate(
            32, nested.id, ctypes.addressof(entries), kind, 8, len(many), 0
        )
        out["invalidate_64_fcntl"] = _best(
            _bare(fd, [(u.IOMMU_HWPT_INVALIDATE, bare_many)]), quarter
        )
        out["invalidate_1_packed"] = _best(
            lambda: nested.invalidate(packed_one, kind, entry_len=8), n
        )
        out["invalidate_64_packed"] = _best(
            lambda: nested.invalidate(packed_many, kind, entry_len=8), quarter
        )
    return out


# -- host side ---------------------------------------------------------------------------


def build(arch: str, directory: Path) -> Path:
    """The C baseline, static, for ``arch``, against the real uAPI headers."""
    import subprocess

    from harness.images.arches import ARCHES
    from harness.uapi.headers import ensure_uapi_tree, kernel_arch

    headers = ensure_uapi_tree(arch=kernel_arch(arch))
    binary = directory / f"driver_ops-{arch}"
    subprocess.run(
        [f"{ARCHES[arch].cross_compile}gcc", "-O2", "-static", "-o", str(binary), str(SOURCE),
         *(f"-I{d}" for d in headers.include_dirs)],
        check=True,
    )  # fmt: skip
    return binary


def host_main(arch: str, n: int, accel: str) -> None:
    import tempfile

    from harness import images
    from harness.agent.bundle import agent_bundle
    from harness.artifacts import artifacts_root, new_artifacts_dir
    from harness.guest import Guest
    from harness.profiles import guest_machine

    image = images.ensure(arch)
    machine = guest_machine(image, None, (), accel=accel)
    with tempfile.TemporaryDirectory(prefix="bench-driver-") as tmp:
        binary = build(arch, Path(tmp))
        artifacts = new_artifacts_dir(f"driver-ops-{arch}", artifacts_root() / "bench")
        with Guest(machine, artifacts, ready_marker=image.ready_marker,
                   log=lambda m: None) as guest:  # fmt: skip
            guest.call("system.write_file", path="/tmp/driver_ops", data=binary.read_bytes(),
                       mode=0o755)  # fmt: skip
            guest.call("system.write_file", path="/tmp/driver_ops.py",
                       data=Path(__file__).read_bytes())  # fmt: skip
            c_run = guest.call("system.run", argv=["/tmp/driver_ops", str(n)], timeout=1800)
            if c_run["status"] != 0:
                raise SystemExit(f"C baseline failed: {c_run['stderr'].decode().strip()}")
            bundle = f"/run/viommu-agent/{agent_bundle()[1]}"
            py_run = guest.call(
                "system.run",
                argv=["python3", "/tmp/driver_ops.py", "--guest", "--iterations", str(n),
                      "--bundle", bundle],
                timeout=1800,
            )  # fmt: skip
            if py_run["status"] != 0:
                raise SystemExit(f"Python run failed: {py_run['stderr'].decode().strip()}")
            mode = guest.vm.accel
    c = {k: float(v) for k, v in (line.split(": ") for line in c_run["stdout"].decode().split("\n")
                                   if line)}  # fmt: skip
    py = json.loads(py_run["stdout"])
    prefix = f"driver.{arch}.{mode}"
    print(f"{prefix}.iterations: {n} iterations (n/4 for 2m, alloc and 64-entry ops)")
    for op in OPS:
        floor = py[f"{op}_fcntl"]
        ratio = py[op] / floor
        verdict = "met" if ratio <= GOAL else "missed"
        print(f"{prefix}.c.{op}: {c[op]:.0f} ns")
        print(f"{prefix}.py_fcntl.{op}: {floor:.0f} ns ({floor / c[op]:.2f}x C; bare fcntl.ioctl,"
              " the floor for any Python driver)")  # fmt: skip
        over = (py[op] - floor) / 1000
        print(f"{prefix}.py.{op}: {py[op]:.0f} ns ({ratio:.2f}x floor, goal {GOAL}x {verdict}; "
              f"{py[op] / c[op]:.2f}x C; +{over:.1f} us over the floor)")  # fmt: skip
    for op in ("invalidate_1", "invalidate_64"):
        packed = py[f"{op}_packed"]
        print(f"{prefix}.py.{op}_prepacked: {packed:.0f} ns "
              f"({packed / py[f'{op}_fcntl']:.2f}x floor; {packed / c[op]:.2f}x C)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("x86_64", "arm64"), default="x86_64")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    parser.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bundle", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.guest:
        sys.path.insert(0, args.bundle)
        print(json.dumps(guest_main(args.iterations)))
        return
    sys.path.insert(0, str(HERE.parent))
    from harness.qemu.rundir import sweep

    sweep()  # a harness start: what killed runs left
    host_main(args.arch, args.iterations, args.accel)


if __name__ == "__main__":
    main()
