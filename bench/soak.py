"""Soak: N cycles of boot -> scenario -> teardown with faults injected at random points.

Each cycle boots an x86_64 guest (VT-d + edu; TCG here), runs a scenario (the registered
``smoke-vfio-edu`` by default, or ``--scenario roundtrip``: agent calls, SSH commands
and QMP commands) and tears the guest down.  With probability ``--fault-rate`` a fault
is injected at a random moment of the boot or of the scenario: QEMU SIGKILL / SIGSTOP,
QMP ``stop`` / ``quit``, a guest panic, a guest poweroff, the agent's SSH connection
killed, the guest's network taken down.  Every fault must surface as an error whose
first line names it (else the cycle counts as ``unexpected``), and after every cycle
nothing may be left: no QEMU process, listening port, connection or run directory, and
no growth in this process's file descriptors or threads.

Usage: .venv/bin/python bench/soak.py [--cycles N] [--seed S] [--scenario NAME|roundtrip]
Prints the seed first, then one ``name: value unit`` line per figure.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import faulthandler
import os
import random
import re
import secrets
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import images
from harness.artifacts import artifacts_root, new_artifacts_dir
from harness.guest import Guest
from harness.profiles import guest_machine, make_viommu
from harness.qemu.leaks import leftovers, open_fds
from harness.scenarios.base import get as get_scenario

HANG_TIMEOUT = 3.0
CALL_TIMEOUT = 10.0
SSH_TIMEOUT = 30.0
BOOT_TIMEOUT = 150.0
#: how long the scenario phase lasts at least (faults are drawn inside it)
PHASE = 4.0
#: after a fault fired, the error must surface within this (longest: a call timeout)
DETECTION_BOUND = CALL_TIMEOUT + HANG_TIMEOUT + 5.0
#: a cycle that takes longer is stuck: all threads' stacks are dumped and the soak exits
CYCLE_LIMIT = BOOT_TIMEOUT + SSH_TIMEOUT + 120.0

KILL_SSHD = (
    "p=$$; while [ $p -gt 1 ]; do case $(cat /proc/$p/comm) in"
    " sshd*) kill -9 $p; break;; esac; p=$(cut -d\\  -f4 /proc/$p/stat); done"
)


@dataclass(frozen=True)
class Fault:
    """A fault: where it may land, how to inject it, the cause its error must name."""

    name: str
    phases: tuple[str, ...]
    cause: str


FAULTS = [
    Fault("sigkill", ("boot", "scenario"), r"killed by signal 9"),
    Fault("sigstop", ("boot", "scenario"), r"guest hung: the QEMU process is stopped"),
    Fault("qmp-stop", ("scenario",), r"guest hung: the VM is paused"),
    Fault("qmp-quit", ("scenario",), r"status 0 after a shutdown \('quit'"),
    Fault("panic", ("scenario",), r"panic"),
    Fault("poweroff", ("scenario",), r"status 0 after a shutdown \(the guest powered off\)"),
    Fault("ssh-drop", ("scenario",), r"the SSH connection to the guest dropped"),
    Fault("net-down", ("scenario",), r"no (reply|result) within"),
]


def inject(guest: Guest, fault: str) -> None:
    """Do it now (from a timer thread); a failure of the injection itself is expected."""
    pid = guest.vm.pid
    qmp = guest.vm.qmp
    with contextlib.suppress(Exception):
        if fault == "sigkill" and pid:
            os.kill(pid, signal.SIGKILL)
        elif fault == "sigstop" and pid:
            os.kill(pid, signal.SIGSTOP)
        elif fault in ("qmp-stop", "qmp-quit") and qmp is not None:
            qmp.execute(fault.removeprefix("qmp-"), timeout=10)
        elif fault == "panic":
            guest.run("echo c > /proc/sysrq-trigger", timeout=20)
        elif fault == "poweroff":
            guest.run("poweroff -f", timeout=20)
        elif fault == "ssh-drop":
            guest.run(KILL_SSHD, timeout=20)
        elif fault == "net-down":
            guest.run("ip link set eth0 down", timeout=20)


def classify(exc: BaseException) -> str:
    """A short cause category for the report, from the error's first line."""
    line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for pattern, name in (
        (r"killed by signal 9", "qemu-killed"),
        (r"guest hung: the QEMU process is stopped", "qemu-stopped"),
        (r"guest hung: the VM is paused", "vm-paused"),
        (r"'quit' over QMP", "qmp-quit"),
        (r"the guest powered off", "guest-poweroff"),
        (r"panic", "guest-panic"),
        (r"SSH connection to the guest dropped", "ssh-dropped"),
        (r"no (reply|result) within", "call-timeout"),
        (r"did not answer", "ssh-unreachable"),
        (r"no ready marker", "boot-timeout"),
    ):
        if re.search(pattern, line):
            return name
    return f"other ({type(exc).__name__}: {line[:80]})"


@dataclass
class Cycle:
    """One cycle's outcome."""

    fault: str
    phase: str
    cause: str
    expected: bool
    teardown_s: float
    total_s: float
    leaks: list[str]


def scenario_phase(guest: Guest, scenario: str, params: dict[str, Any], fired: list[float]) -> None:
    """Run the scenario, then round trips until the phase is over and any fault is seen."""
    start = time.monotonic()
    if scenario != "roundtrip":
        verdict = get_scenario(scenario).run(guest, params)
        if not verdict.passed:
            raise RuntimeError(f"scenario failed: {verdict.summary().splitlines()[0]}")
    n = 0
    while True:
        now = time.monotonic()
        if now - start > PHASE and not fired:
            return
        if fired and now - fired[0] > DETECTION_BOUND:
            raise RuntimeError(f"fault undetected {now - fired[0]:.1f}s after it fired")
        n += 1
        if n % 3 == 0:
            assert guest.vm.qmp is not None
            guest.vm.qmp.execute("query-status", timeout=CALL_TIMEOUT)
        elif n % 3 == 1:
            guest.call("system.info", timeout=CALL_TIMEOUT)
        else:
            guest.run("true", timeout=CALL_TIMEOUT)


def one_cycle(
    rng: random.Random, index: int, args: argparse.Namespace, image: Any, log: Callable[[str], None]
) -> Cycle:
    viommu = None if args.scenario == "roundtrip" else make_viommu("vtd")
    devices = () if args.scenario == "roundtrip" else ("edu",)
    machine = guest_machine(image, viommu, devices, accel=args.accel)
    fault = rng.choice(FAULTS) if rng.random() < args.fault_rate else None
    phase = rng.choice(fault.phases) if fault else "-"
    delay = rng.uniform(0.2, 8.0) if phase == "boot" else rng.uniform(0.1, PHASE)
    artifacts = new_artifacts_dir(f"soak-{index:04d}", artifacts_root() / "soak")
    guest = Guest(
        machine, artifacts, ready_marker=image.ready_marker, name=f"soak{index}",
        boot_timeout=BOOT_TIMEOUT, ssh_timeout=SSH_TIMEOUT, hang_timeout=HANG_TIMEOUT,
        log=lambda m: None,
    )  # fmt: skip
    fired: list[float] = []
    timer: threading.Timer | None = None

    def fire() -> None:
        assert fault is not None
        fired.append(time.monotonic())
        inject(guest, fault.name)

    def arm() -> None:
        nonlocal timer
        timer = threading.Timer(delay, fire)
        timer.daemon = True
        timer.start()

    cause = "ok"
    error: BaseException | None = None
    t0 = time.monotonic()
    try:
        if phase == "boot":
            arm()
        guest.start()
        if phase == "scenario":
            arm()
        scenario_phase(guest, args.scenario, {"seed": rng.randrange(1 << 32)}, fired)
    except Exception as exc:
        error = exc
        cause = classify(exc)
    finally:
        if timer is not None:
            timer.cancel()
            timer.join()
        pid, port, run_dir = guest.vm.pid, guest.vm.ssh_port, guest.vm.run_dir
        guest.close()
    total = time.monotonic() - t0
    if fault is None or not fired:
        expected = error is None
    else:
        expected = error is not None and bool(re.search(fault.cause, str(error).splitlines()[0]))
    name = fault.name if fault and fired else (f"{fault.name} (not reached)" if fault else "none")
    leaks = leftovers(pid, port, run_dir)
    result = Cycle(name, phase, cause, expected, guest.timings.get("teardown_s", 0.0), total, leaks)
    mark = "ok" if expected and not leaks else "UNEXPECTED"
    detail = f"; error: {str(error).splitlines()[0][:160]}" if error is not None else ""
    log(f"cycle {index}: fault {name} at {phase}+{delay:.1f}s -> {cause} [{mark}] "
        f"teardown {result.teardown_s:.2f}s total {total:.1f}s{detail}")  # fmt: skip
    if leaks:
        log(f"cycle {index}: LEFT BEHIND: {leaks}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--scenario", default="smoke-vfio-edu",
                        help="a registered x86_64 scenario, or 'roundtrip'")  # fmt: skip
    parser.add_argument("--fault-rate", type=float, default=0.7)
    parser.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    print(f"seed: {seed}", flush=True)
    rng = random.Random(seed)
    image = images.ensure("x86_64")
    if args.scenario != "roundtrip":
        get_scenario(args.scenario)  # unknown names fail before anything boots

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    cycles: list[Cycle] = []
    fds = threads = 0
    for index in range(args.cycles):
        faulthandler.dump_traceback_later(CYCLE_LIMIT, exit=True)
        cycles.append(one_cycle(rng, index, args, image, log))
        faulthandler.cancel_dump_traceback_later()
        if index == 0:  # after one cycle: paramiko, QMP and logging have their steady state
            fds, threads = open_fds(), threading.active_count()
    time.sleep(1.0)  # daemon threads of the last cycle wind down
    causes = collections.Counter(c.cause for c in cycles)
    faults = collections.Counter(c.fault for c in cycles)
    teardowns = [c.teardown_s for c in cycles]
    slowest = max(cycles, key=lambda c: c.teardown_s)
    leaks = [leak for c in cycles for leak in c.leaks]
    print(f"cycles: {len(cycles)} cycles")
    for name, count in sorted(faults.items()):
        print(f"injected[{name}]: {count} cycles")
    for name, count in sorted(causes.items()):
        print(f"outcome[{name}]: {count} cycles")
    print(f"failures: {sum(c.cause != 'ok' for c in cycles)} cycles")
    print(f"unexpected: {sum(not c.expected for c in cycles)} cycles")
    print(f"leaked_processes: {sum('process' in leak for leak in leaks)} processes")
    print(f"leaked_ports: {sum('port' in leak for leak in leaks)} ports")
    print(f"leaked_dirs: {sum('directory' in leak for leak in leaks)} dirs")
    print(f"fd_growth: {open_fds() - fds if len(cycles) > 1 else 0} fds")
    print(f"thread_growth: {threading.active_count() - threads if len(cycles) > 1 else 0} threads")
    print(f"teardown_max: {slowest.teardown_s:.2f} s (cycle {cycles.index(slowest)}, "
          f"fault {slowest.fault}, {slowest.cause})")  # fmt: skip
    print(f"teardown_median: {statistics.median(teardowns):.2f} s")
    print(f"cycle_median: {statistics.median(c.total_s for c in cycles):.1f} s")
    bad = any(not c.expected or c.leaks for c in cycles)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
