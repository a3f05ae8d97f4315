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

With ``--kill-harness`` the harness itself dies instead: each cycle (boot -> scenario ->
teardown, no fault) runs in a child process that the soak SIGKILLs at a random moment of
its boot, scenario or teardown (kills are counted by the phase they landed in; "exit" is
after teardown).  Its QEMU must be gone and its ports closed within 2 s (parent-death
signal); the next cycle's child sweeps at its start, and only then are the killed
cycle's leaks counted: processes, listening ports, run directories and key files.

Usage: .venv/bin/python bench/soak.py [--cycles N] [--seed S] [--scenario NAME|roundtrip]
                                      [--kill-harness]
Prints the seed first, then one ``name: value unit`` line per figure.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import faulthandler
import os
import queue
import random
import re
import secrets
import signal
import statistics
import subprocess
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
from harness.qemu import lifetime
from harness.qemu.leaks import (
    descendants,
    leftovers,
    listening_sockets,
    open_fds,
    process_alive,
    tcp_sockets,
)
from harness.qemu.rundir import KEY_FILES, owner_of, sweep, sweep_bases
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


# -- --kill-harness: the harness process itself is SIGKILLed ------------------------------

#: phases a harness kill is aimed at, and how long after the phase starts it may land (s);
#: teardown takes ~0.06 s here, so a kill aimed at it may land after it ("exit")
KILL_PHASES = {"boot": 4.0, "scenario": PHASE + 2.0, "teardown": 0.08}
#: QEMU must be gone this long after its harness was SIGKILLed
DEATH_BOUND = 2.0


def say(line: str) -> None:
    """Child -> soak: one protocol line on stdout."""
    print(line, flush=True)


def child_cycle(args: argparse.Namespace) -> int:
    """One cycle in a child process: sweep (a harness start), boot, scenario, teardown."""
    swept = sweep()
    say(f"swept {len(swept.removed)} {len(swept.killed)}")
    rng = random.Random(args.cycle_child)
    image = images.ensure("x86_64")
    viommu = None if args.scenario == "roundtrip" else make_viommu("vtd")
    devices = () if args.scenario == "roundtrip" else ("edu",)
    machine = guest_machine(image, viommu, devices, accel=args.accel)
    artifacts = new_artifacts_dir(f"soak-kill-{args.cycle_child}", artifacts_root() / "soak")
    guest = Guest(
        machine, artifacts, ready_marker=image.ready_marker, name="soak",
        boot_timeout=BOOT_TIMEOUT, ssh_timeout=SSH_TIMEOUT, hang_timeout=HANG_TIMEOUT,
    )  # fmt: skip
    say(f"rundir {guest.vm.run_dir}")
    say("phase boot")
    try:
        guest.start()
        say(f"qemu {guest.vm.pid} {guest.vm.ssh_port}")
        say("phase scenario")
        scenario_phase(guest, args.scenario, {"seed": rng.randrange(1 << 32)}, [])
    finally:
        say("phase teardown")
        guest.close()
    say("done")
    return 0


def dirs_owned_by(pid: int) -> list[Path]:
    """Run directories whose recorded owner is ``pid``."""
    found = []
    for base in sweep_bases():
        for path in base.glob("viommu-*"):
            owner = owner_of(path)
            if owner is not None and owner.pid == pid:
                found.append(path)
    return found


@dataclass
class Killed:
    """What a SIGKILLed harness child had when it died, checked after the next sweep."""

    index: int
    phase: str
    processes: list[int]
    ports: list[int]
    dirs: list[Path]
    gone_s: float | None = None

    def leaks(self) -> dict[str, int]:
        """What is still there: processes, listening ports, run directories, key files."""
        listening = {s.local_port for s in tcp_sockets() if s.state == "LISTEN"}
        return {
            "processes": sum(process_alive(p) for p in self.processes),
            "ports": sum(p in listening for p in self.ports),
            "dirs": sum(d.exists() for d in self.dirs),
            "key_files": sum((d / k).exists() for d in self.dirs for k in KEY_FILES),
        }


def _line_queue(stream: Any) -> queue.SimpleQueue[str | None]:
    """Lines of ``stream`` as a thread reads them; None at EOF."""
    box: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def pump() -> None:
        for line in stream:
            box.put(line.rstrip("\n"))
        box.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return box


class KillCycle:
    """One child cycle and the SIGKILL aimed at it."""

    def __init__(self, index: int, args: argparse.Namespace, rng: random.Random, log_dir: Path):
        self.index = index
        self.target = rng.choice(sorted(KILL_PHASES))
        self.delay = rng.uniform(0.0, KILL_PHASES[self.target])
        argv = [sys.executable, __file__, "--cycle-child", str(rng.randrange(1 << 32)),
                "--scenario", args.scenario, "--accel", args.accel]  # fmt: skip
        self.log_path = log_dir / f"cycle-{index:04d}.log"
        with open(self.log_path, "w") as log:
            self.proc = lifetime.popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
        self.phase = "start"
        self.swept: tuple[int, int] | None = None
        self.run_dir: Path | None = None

    def run(self, on_swept: Callable[[], None]) -> Killed | None:
        """Follow the child, kill it at the drawn moment; what it left, or None if it finished."""
        assert self.proc.stdout is not None
        kill_at: float | None = None
        snapshot: Killed | None = None
        pending = _line_queue(self.proc.stdout)
        limit = time.monotonic() + CYCLE_LIMIT
        while True:
            wait = (kill_at if kill_at is not None else limit) - time.monotonic()
            try:
                line = pending.get(timeout=max(wait, 0.0))
            except queue.Empty:
                if kill_at is None:
                    raise RuntimeError(f"cycle {self.index}: child stuck in {self.phase}") from None
                return self._kill(snapshot or self._snapshot())
            if line is None:
                self.proc.wait()
                return None
            word, _, rest = line.partition(" ")
            if word == "swept":
                removed, killed = map(int, rest.split())
                self.swept = (removed, killed)
                on_swept()
            elif word == "rundir":
                self.run_dir = Path(rest)
            elif word in ("phase", "done"):
                self.phase = rest if word == "phase" else "exit"
                if rest == self.target and kill_at is None:
                    kill_at = time.monotonic() + self.delay
                    if self.delay < 0.2:  # no time to read /proc at the kill: now
                        snapshot = self._snapshot()
                if snapshot is not None:
                    snapshot.phase = self.phase

    def _snapshot(self) -> Killed:
        """The child's processes, their listening ports and its run directories, now."""
        procs = descendants(self.proc.pid)
        ports = sorted({s.local_port for p in procs for s in listening_sockets(p)})
        dirs = dirs_owned_by(self.proc.pid)
        if self.run_dir is not None and self.run_dir not in dirs:
            dirs.append(self.run_dir)
        return Killed(self.index, self.phase, procs, ports, dirs)

    def _kill(self, snapshot: Killed) -> Killed:
        """SIGKILL the child; how long until its processes are gone and their ports closed."""
        self.proc.kill()
        start = time.monotonic()
        self.proc.wait()
        while time.monotonic() - start < 10.0:
            listening = {s.local_port for s in tcp_sockets() if s.state == "LISTEN"}
            if not any(process_alive(p) for p in snapshot.processes) and not (
                listening & set(snapshot.ports)
            ):
                break
            time.sleep(0.005)
        snapshot.gone_s = time.monotonic() - start if snapshot.processes else None
        return snapshot


def kill_soak(args: argparse.Namespace, rng: random.Random, log: Callable[[str], None]) -> int:
    """``--kill-harness``: SIGKILL a child harness per cycle; count leaks after each sweep."""
    log_dir = new_artifacts_dir("soak-kill", artifacts_root() / "soak")
    log(f"child logs in {log_dir}")
    kills: collections.Counter[str] = collections.Counter()
    leaks: collections.Counter[str] = collections.Counter()
    deaths: list[float] = []
    swept_dirs = swept_qemus = failed = 0
    previous: Killed | None = None
    for index in range(args.cycles):
        cycle = KillCycle(index, args, rng, log_dir)
        checked: dict[str, int] = {}

        def check_previous(prev: Killed | None = previous, out: dict[str, int] = checked) -> None:
            if prev is not None:
                out.update(prev.leaks())

        killed = cycle.run(check_previous)
        if cycle.swept is not None:
            swept_dirs += cycle.swept[0]
            swept_qemus += cycle.swept[1]
        if previous is not None:
            if not checked:  # the child died before its sweep: check after our own
                sweep(log=log)
                checked = previous.leaks()
            leaks.update(checked)
            if any(checked.values()):
                log(f"cycle {previous.index}: LEFT BEHIND after the sweep: {checked}")
        if killed is None:
            kills["not reached (cycle finished)"] += 1
            failed += cycle.proc.returncode != 0
            # a cycle that finished cleans up after itself, no sweep needed
            left = Killed(index, "finished", [], [], dirs_owned_by(cycle.proc.pid))
            if cycle.run_dir is not None and cycle.run_dir not in left.dirs:
                left.dirs.append(cycle.run_dir)
            leaks.update(left.leaks())
            mark = "ok" if cycle.proc.returncode == 0 else f"FAILED (see {cycle.log_path})"
            log(f"cycle {index}: kill aimed at {cycle.target}+{cycle.delay:.1f}s not reached;"
                f" child exited {cycle.proc.returncode} [{mark}]")  # fmt: skip
            previous = None
            continue
        kills[killed.phase] += 1
        if killed.gone_s is not None:
            deaths.append(killed.gone_s)
        gone = f"{killed.gone_s:.3f}s" if killed.gone_s is not None else "-"
        log(f"cycle {index}: harness SIGKILLed in {killed.phase} (aimed {cycle.target}"
            f"+{cycle.delay:.1f}s); {len(killed.processes)} child processes gone after {gone},"
            f" {len(killed.dirs)} run dirs left for the sweep")  # fmt: skip
        previous = killed
    if previous is not None:  # the last kill: the next harness start is this sweep
        swept = sweep(log=log)
        swept_dirs += len(swept.removed)
        swept_qemus += len(swept.killed)
        leaks.update(previous.leaks())
    print(f"cycles: {args.cycles} cycles")
    for phase in ("boot", "scenario", "teardown", "exit"):
        print(f"kills[{phase}]: {kills[phase]} kills")
    print(f"kills_not_reached: {kills['not reached (cycle finished)']} cycles")
    print(f"finished_cycles_failed: {failed} cycles")
    if deaths:
        print(f"qemu_gone_after_kill_max: {max(deaths):.3f} s")
        print(f"qemu_gone_after_kill_median: {statistics.median(deaths):.3f} s")
    print(f"qemu_slower_than_{DEATH_BOUND:g}s: {sum(d > DEATH_BOUND for d in deaths)} kills")
    print(f"swept_dirs: {swept_dirs} dirs")
    print(f"swept_qemus: {swept_qemus} processes")
    for name, unit in (("processes", "processes"), ("ports", "ports"), ("dirs", "dirs"),
                       ("key_files", "files")):  # fmt: skip
        print(f"leaked_{name}: {leaks[name]} {unit}")
    bad = failed or any(leaks.values()) or any(d > DEATH_BOUND for d in deaths)
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--scenario", default="smoke-vfio-edu",
                        help="a registered x86_64 scenario, or 'roundtrip'")  # fmt: skip
    parser.add_argument("--fault-rate", type=float, default=0.7)
    parser.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    parser.add_argument("--kill-harness", action="store_true",
                        help="SIGKILL the harness (one child per cycle), not QEMU")  # fmt: skip
    parser.add_argument("--cycle-child", type=int, metavar="SEED", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cycle_child is not None:
        return child_cycle(args)
    sweep()  # a harness start: what killed runs left
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    print(f"seed: {seed}", flush=True)
    rng = random.Random(seed)
    image = images.ensure("x86_64")
    if args.scenario != "roundtrip":
        get_scenario(args.scenario)  # unknown names fail before anything boots

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.kill_harness:
        return kill_soak(args, rng, log)

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
