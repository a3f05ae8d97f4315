"""Boot the x86_64 VT-d guest again and again, two at once, and count the hangs.

Reproduces the TCG timer stall (issue 19): an x86_64 guest whose vCPU stops getting timer
interrupts — RCU stall "timer wakeup didn't happen", a CPU waiting on a cross-CPU
TLB-flush call — and whose QEMU then idles.  Each boot is the guest the VM suite uses
(q35 + VT-d scalable with first stage + edu, TCG), under load like CI's ``-n 2``:

- **boot**: launch -> agent ready, then ``--hold`` seconds of a fork loop (IPIs, TLB
  flushes on both vCPUs) in the guest;
- **vfio** (default): the same, after binding edu to vfio-pci and unbinding it
  ``--rebinds`` times (the hang was seen in a vfio test; edu itself has no reset).

Every console is scanned for lockup lines (RCU stall, soft lockup) whether the boot
failed or not.  Prints ``name: value unit`` lines; failures go to stderr with their
artifacts directory.

Usage: .venv/bin/python bench/timer_stall.py [--boots N] [--parallel 2] [--hold S]
       [--workload boot|vfio] [--append KERNEL_ARGS] [--qemu-arg ARG ...]
       (a --qemu-arg=-accel --qemu-arg=OPTS replaces the default -accel: "tcg" gives back
       the multi-threaded TCG that x86_64 ran before argv.X86_TCG_ACCEL)
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import images
from harness.artifacts import artifacts_root, new_artifacts_dir
from harness.errors import HarnessError
from harness.guest import Guest
from harness.profiles import guest_machine, make_viommu
from harness.qemu.description import Machine
from harness.qemu.machine import lockup_signature

EDU = (0x1234, 0x11E8)
BOOT_TIMEOUT = 120.0
SSH_TIMEOUT = 60.0
HANG_TIMEOUT = 10.0
CALL_TIMEOUT = 90.0


@dataclass(frozen=True)
class Outcome:
    """One boot: how it ended, the console's first lockup line, where its artifacts are."""

    verdict: str  # "ok", "hung", "failed"
    first_line: str
    lockup: tuple[str, str] | None
    agent_s: float | None
    artifacts: Path


def workload(guest: Guest, kind: str, hold: float, rebinds: int) -> None:
    """Exercise the booted guest: vfio bind/unbind, then a fork loop for ``hold`` s."""
    if kind == "vfio":  # bind edu to vfio-pci, back to no driver, and again
        (bdf,) = guest.call("pci.find", vendor=EDU[0], device=EDU[1])
        for _ in range(rebinds):
            guest.call("pci.bind_vfio", bdf=bdf)
            unbind = f"echo {bdf} > /sys/bus/pci/devices/{bdf}/driver/unbind"
            if (result := guest.run(unbind)).status != 0:
                raise HarnessError(f"unbinding {bdf} failed: {result.stderr.strip()}")
        guest.call("pci.bind_vfio", bdf=bdf)
    loop = f"end=$(($(date +%s)+{hold:.0f})); while [ $(date +%s) -lt $end ]; do /bin/true; done"
    result = guest.run(loop, timeout=CALL_TIMEOUT)
    if result.status != 0:
        raise HarnessError(f"fork loop failed: {result.stderr.strip()}")


def one_boot(machine: Machine, image: object, n: int, args: argparse.Namespace) -> Outcome:
    """Boot, run the workload, close; never raises for a guest failure."""
    directory = new_artifacts_dir(f"stall-{n}", artifacts_root() / "bench-timer-stall")
    guest = Guest(
        machine, directory, ready_marker=image.ready_marker,  # type: ignore[attr-defined]
        name=f"stall-{n}", boot_timeout=BOOT_TIMEOUT, ssh_timeout=SSH_TIMEOUT,
        hang_timeout=HANG_TIMEOUT, log=lambda msg: None,
    )  # fmt: skip
    verdict, first, agent_s = "ok", "", None
    try:
        with guest:
            agent_s = guest.timings.get("boot_to_agent_s")
            workload(guest, args.workload, args.hold, args.rebinds)
    except HarnessError as exc:
        first = str(exc).splitlines()[0]
        verdict = "hung" if "guest hung" in first else "failed"
    lockup = lockup_signature(guest.vm.console_text())
    return Outcome(verdict, first, lockup, agent_s, directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--hold", type=float, default=3.0, help="seconds of fork loop")
    parser.add_argument("--rebinds", type=int, default=3)
    parser.add_argument("--workload", choices=("boot", "vfio"), default="vfio")
    parser.add_argument("--append", default="", help="extra kernel command line")
    parser.add_argument("--qemu-arg", action="append", default=[], help="extra QEMU argument")
    parser.add_argument("--max-minutes", type=float, default=0, help="stop starting boots after")
    args = parser.parse_args()

    image = images.ensure("x86_64")
    machine = guest_machine(image, make_viommu("vtd"), ("edu",), accel="tcg", append=args.append)
    machine = replace(machine, extra_args=(*machine.extra_args, *args.qemu_arg))
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    counter = iter(range(args.boots))
    start = time.monotonic()
    deadline = start + args.max_minutes * 60 if args.max_minutes else None

    def worker() -> None:
        while deadline is None or time.monotonic() < deadline:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            outcome = one_boot(machine, image, n, args)
            with lock:
                outcomes.append(outcome)
                if outcome.verdict != "ok" or outcome.lockup:
                    print(f"# boot {n}: {outcome.verdict}: {outcome.first_line or '-'};"
                          f" console: {outcome.lockup}; {outcome.artifacts}",
                          file=sys.stderr, flush=True)  # fmt: skip
                if len(outcomes) % 10 == 0:
                    bad = sum(o.verdict != "ok" for o in outcomes)
                    took = time.monotonic() - start
                    progress = f"# {len(outcomes)} boots, {bad} not ok, {took:.0f}s"
                    print(progress, file=sys.stderr, flush=True)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - start

    verdicts = collections.Counter(o.verdict for o in outcomes)
    kinds = collections.Counter(o.lockup[0] for o in outcomes if o.lockup)
    agent = [o.agent_s for o in outcomes if o.agent_s is not None]
    print(f"timer_stall.boots: {len(outcomes)} boots ({args.parallel} at once, "
          f"workload {args.workload}, hold {args.hold:g} s)")  # fmt: skip
    for verdict in ("ok", "hung", "failed"):
        print(f"timer_stall.{verdict}: {verdicts[verdict]} boots")
    print(f"timer_stall.console_lockups: {sum(kinds.values())} boots")
    for kind, count in sorted(kinds.items()):
        print(f"timer_stall.console.{kind.replace(' ', '_')}: {count} boots")
    timer = sum(1 for o in outcomes if o.lockup and "timer wakeup" in o.lockup[1])
    print(f"timer_stall.console.timer_wakeup_first: {timer} boots")
    if agent:
        print(f"timer_stall.agent_ready_median: {statistics.median(agent):.2f} s")
    print(f"timer_stall.wall: {wall:.0f} s ({wall / max(1, len(outcomes)):.1f} s per boot)")


if __name__ == "__main__":
    main()
