"""Faults the harness must survive: each detected before a deadline, reported, cleaned up.

Every test injects one fault into a real guest (x86_64, no vIOMMU: the harness's
machinery is what is under test, and this guest boots fastest) and checks three things:

1. the failure is *detected* before a deadline derived from the configured timeouts
   (a correctness bound, not a performance figure);
2. it is *reported*: the error's first line names the cause and the artifacts directory,
   which holds the console log, the QMP transcript and the command line;
3. after ``close()`` *nothing is left*: no QEMU process, no listening or open forwarded
   port (``/proc/net/tcp``), no run directory (QMP socket, keys) — and teardown itself
   finished within its bound.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.agent.client import AgentConnectionLostError, AgentUnreachableError
from harness.agent.keys import RunKey, make_run_key
from harness.guest import Guest
from harness.qemu.leaks import leftovers
from harness.qemu.machine import MachineError
from harness.qemu.qmp import QmpError

pytestmark = pytest.mark.x86_64

#: the timeouts the fault tests configure (defaults are larger: 30 s, 120 s, 180 s)
HANG_TIMEOUT = 3.0
SSH_TIMEOUT = 10.0
BOOT_TIMEOUT = 25.0
CALL_TIMEOUT = 8.0
TEARDOWN_GRACE = 3.0
#: teardown's worst case: quit, SIGTERM and SIGKILL each wait; a dmesg save may take 15 s
TEARDOWN_BOUND = 3 * TEARDOWN_GRACE + 10.0 + 15.0
#: slack for a loaded 2-core host between "the fault happened" and "the error surfaced"
SLACK = 4.0
#: when, after the call starts, an injected fault fires
DELAY = 1.5

GuestFactory = Callable[..., Guest]


@pytest.fixture
def make_guest(request: pytest.FixtureRequest, artifacts_dir: Path) -> Iterator[GuestFactory]:
    """Factory for unstarted guests with the short timeouts above; closes them all."""
    from harness import images
    from harness.images.errors import PrerequisiteError
    from harness.profiles import guest_machine
    from harness.qemu.probe import resolve_binary

    accel = request.config.getoption("--accel")
    try:
        binary = resolve_binary("x86_64", None)
        image = images.ensure("x86_64")
    except PrerequisiteError as exc:  # QemuNotFoundError included
        pytest.skip(f"cannot boot an x86_64 guest: {exc}")
    made: list[Guest] = []

    def make(name: str = "guest", append: str = "", **options: Any) -> Guest:
        machine = guest_machine(image, None, (), accel=accel, append=append)
        settings: dict[str, Any] = {
            "boot_timeout": BOOT_TIMEOUT,
            "ssh_timeout": SSH_TIMEOUT,
            "hang_timeout": HANG_TIMEOUT,
            "teardown_grace": TEARDOWN_GRACE,
            **options,
        }
        directory = artifacts_dir / f"{name}-{len(made)}"
        guest = Guest(
            machine, directory, ready_marker=image.ready_marker, name=name, qemu=binary,
            **settings,
        )  # fmt: skip
        made.append(guest)
        return guest

    yield make
    for guest in made:
        guest.close()


def first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0]


def assert_reported(exc: BaseException, cause: str, guest: Guest) -> None:
    """One line: the cause and the artifacts directory; the artifacts hold the evidence."""
    line = first_line(exc)
    assert re.search(cause, line), f"cause {cause!r} not in {line!r}"
    assert f"[artifacts: {guest.artifacts}]" in line, line
    for name in ("argv.json", "console.log", "qmp.jsonl", "qemu-stderr.log"):
        assert (guest.artifacts / name).exists(), f"{name} missing in {guest.artifacts}"


def assert_cleaned_up(guest: Guest) -> None:
    """Close; then no process, port, connection or run directory is left, in bounded time."""
    pid, port, run_dir = guest.vm.pid, guest.vm.ssh_port, guest.vm.run_dir
    guest.close()
    problems = leftovers(pid, port, run_dir)
    assert not problems, f"left behind: {problems}"
    assert guest.timings["teardown_s"] < TEARDOWN_BOUND, guest.timings


def in_guest_later(guest: Guest, action: str, delay: float = DELAY) -> None:
    """Run ``action`` (shell) in the guest ``delay`` seconds from now, detached."""
    script = f"sleep {delay}; {action}"
    guest.call("system.run", argv=f"setsid sh -c '{script}' >/dev/null 2>&1 </dev/null &")


def on_host_later(action: Callable[[], object], delay: float = DELAY) -> list[float]:
    """Run ``action`` on the host ``delay`` seconds from now; returns [time it ran]."""
    fired: list[float] = []

    def fire() -> None:
        fired.append(time.monotonic())
        with contextlib.suppress(Exception):  # e.g. 'quit' loses its own connection
            action()

    timer = threading.Timer(delay, fire)
    timer.daemon = True
    timer.start()
    return fired


# -- faults during an agent call ---------------------------------------------------------


def _sigkill(guest: Guest) -> list[float]:
    pid = guest.vm.pid
    assert pid is not None
    return on_host_later(lambda: os.kill(pid, signal.SIGKILL))


def _sigstop(guest: Guest) -> list[float]:
    pid = guest.vm.pid
    assert pid is not None
    return on_host_later(lambda: os.kill(pid, signal.SIGSTOP))


def _qmp(command: str) -> Callable[[Guest], list[float]]:
    def inject(guest: Guest) -> list[float]:
        qmp = guest.vm.qmp
        assert qmp is not None
        return on_host_later(lambda: qmp.execute(command, timeout=10))

    return inject


def _in_guest(action: str) -> Callable[[Guest], list[float]]:
    def inject(guest: Guest) -> list[float]:
        in_guest_later(guest, action)
        return [time.monotonic() + DELAY]

    return inject


def _ssh_drop(guest: Guest) -> list[float]:
    """SIGKILL the sshd process serving the agent's connection (nearest sshd* ancestor)."""
    stat = guest.call("system.read_file", path="/proc/self/stat").decode()
    agent_pid = int(stat.split()[0])
    walk = (
        f"p={agent_pid}; while [ $p -gt 1 ]; do case $(cat /proc/$p/comm) in"
        " sshd*) kill -9 $p; break;; esac; p=$(cut -d\\  -f4 /proc/$p/stat); done"
    )
    return _in_guest(walk)(guest)


@dataclass(frozen=True)
class Fault:
    """A fault injected during an agent call, and how the harness must report it."""

    name: str
    inject: Callable[[Guest], list[float]]
    cause: str
    kind: str | None  # the machine's health afterwards (None: QEMU still fine)
    bound: float  # seconds from the fault to the error


FAULTS = [
    Fault("qemu-sigkill", _sigkill, r"QEMU killed by signal 9", "exited", SLACK),
    Fault("guest-panic", _in_guest("echo c > /proc/sysrq-trigger"), r"panic", "panic", SLACK),
    Fault("qemu-sigstop", _sigstop, r"guest hung: the QEMU process is stopped", "hung",
          HANG_TIMEOUT + SLACK),
    Fault("qmp-stop", _qmp("stop"), r"guest hung: the VM is paused", "hung",
          HANG_TIMEOUT + SLACK),
    Fault("qmp-quit", _qmp("quit"), r"QEMU exited with status 0 after a shutdown \('quit'",
          "exited", SLACK),
    Fault("guest-poweroff", _in_guest("poweroff -f"),
          r"QEMU exited with status 0 after a shutdown \(the guest powered off\)", "exited",
          SLACK),
    Fault("ssh-dropped", _ssh_drop, r"the SSH connection to the guest dropped", None, SLACK),
    Fault("network-down", _in_guest("ip link set eth0 down"),
          rf"no reply within {CALL_TIMEOUT:g}s", None, CALL_TIMEOUT + SLACK),
]  # fmt: skip


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_during_agent_call(make_guest: GuestFactory, fault: Fault) -> None:
    guest = make_guest(fault.name)
    guest.start()
    fired = fault.inject(guest)
    with pytest.raises(AgentConnectionLostError) as info:
        guest.call("system.sleep", seconds=120, timeout=CALL_TIMEOUT)
    detected = time.monotonic()
    assert fired, "the fault never fired"
    assert detected - fired[0] < fault.bound, f"{detected - fired[0]:.1f}s: {info.value}"
    assert_reported(info.value, fault.cause, guest)
    assert guest.vm.health(include_hang=True).kind == fault.kind, guest.vm.health(True)
    if fault.kind == "hung":  # only waiters hear of a hang: a paused guest may be kept to poke at
        assert guest.vm.health().cause is None
    # the agent refuses further calls at once, naming the first failure
    with pytest.raises(AgentConnectionLostError, match="agent unusable"):
        guest.call("system.info", timeout=CALL_TIMEOUT)
    assert_cleaned_up(guest)


# -- faults around boot, SSH and QMP -----------------------------------------------------


def test_qemu_killed_during_boot(make_guest: GuestFactory) -> None:
    guest = make_guest("boot-kill")
    fired: list[float] = []

    def kill_once_started() -> None:
        while guest.vm.pid is None:
            time.sleep(0.05)
        time.sleep(1.0)
        fired.append(time.monotonic())
        os.kill(guest.vm.pid, signal.SIGKILL)

    threading.Thread(target=kill_once_started, daemon=True).start()
    with pytest.raises(MachineError) as info:
        guest.start()
    assert fired and time.monotonic() - fired[0] < SLACK
    assert info.value.cause.startswith("QEMU killed by signal 9"), info.value.cause
    assert f"[artifacts: {guest.artifacts}]" in first_line(info.value)
    assert_cleaned_up(guest)


def test_boot_never_ready(make_guest: GuestFactory) -> None:
    """An init that never prints the ready marker (here: cat on the console) times out."""
    guest = make_guest("never-ready", append="rdinit=/bin/cat", boot_timeout=12.0)
    start = time.monotonic()
    with pytest.raises(MachineError) as info:
        guest.start()
    assert 12.0 <= time.monotonic() - start < 12.0 + SLACK
    assert_reported(info.value, r"no ready marker 'VIOMMU-HARNESS-READY' .* within 12s", guest)
    assert guest.vm.health().cause is None  # QEMU was fine: the guest never got ready
    assert_cleaned_up(guest)


def _wrong_key(directory: Path, comment: str = "viommu-harness") -> RunKey:
    """The run key's private half, but another key's public line for the guest."""
    real = make_run_key(directory, comment)
    (directory / "other").mkdir(mode=0o700)
    other = make_run_key(directory / "other", comment)
    return RunKey(private_key=real.private_key, public_line=other.public_line)


@pytest.mark.parametrize(
    ("case", "cause"),
    [
        ("wrong-key", r"the guest's sshd refused the run key"),
        ("wrong-address", r"no SSH server answered behind the forwarded port"),
    ],
)
def test_ssh_never_answers(
    make_guest: GuestFactory, monkeypatch: pytest.MonkeyPatch, case: str, cause: str
) -> None:
    if case == "wrong-key":
        monkeypatch.setattr("harness.guest.make_run_key", _wrong_key)
        guest = make_guest(case)
    else:  # eth0 on another subnet: slirp cannot reach the guest's sshd
        guest = make_guest(case, append="viommu.ip=10.0.3.15/24")
    marker: list[float] = []
    original = guest.vm.wait_ready

    def timed_wait_ready(timeout: float | None = None) -> float:
        took = original(timeout)
        marker.append(time.monotonic())
        return took

    monkeypatch.setattr(guest.vm, "wait_ready", timed_wait_ready)
    with pytest.raises(AgentUnreachableError) as info:
        guest.start()
    assert marker, "the guest never printed its ready marker"
    assert time.monotonic() - marker[0] < SSH_TIMEOUT + SLACK
    assert_reported(info.value, rf"did not answer in {SSH_TIMEOUT:.0f}s: {cause}", guest)
    assert guest.vm.health().cause is None
    assert_cleaned_up(guest)


def test_qmp_command_to_stopped_then_killed_qemu(make_guest: GuestFactory) -> None:
    """A QMP command to a stopped QEMU fails at the hang timeout; a kill ends one at once."""
    guest = make_guest("qmp-faults")
    guest.start()
    qmp, pid = guest.vm.qmp, guest.vm.pid
    assert qmp is not None and pid is not None
    os.kill(pid, signal.SIGSTOP)
    start = time.monotonic()
    with pytest.raises(QmpError, match=r"query-status: guest hung: the QEMU process is stopped"):
        qmp.execute("query-status", timeout=60)
    assert time.monotonic() - start < HANG_TIMEOUT + SLACK

    fired = on_host_later(lambda: os.kill(pid, signal.SIGKILL))
    with pytest.raises(QmpError) as info:
        qmp.execute("query-status", timeout=60, watched=False)
    assert fired and time.monotonic() - fired[0] < SLACK
    assert "QEMU killed by signal 9" in first_line(info.value), info.value
    assert guest.vm.health().kind == "exited"
    assert_cleaned_up(guest)


def test_dropped_ssh_during_command(make_guest: GuestFactory) -> None:
    """``Guest.run`` (a plain SSH command) also ends when the connection drops."""
    guest = make_guest("run-drop")
    guest.start()
    _ssh_drop(guest)
    start = time.monotonic()
    with pytest.raises(AgentConnectionLostError) as info:
        guest.run("sleep 120", timeout=60)
    assert time.monotonic() - start < DELAY + SLACK
    assert_reported(info.value, r"command 'sleep 120'.*SSH connection to the guest dropped", guest)
    assert_cleaned_up(guest)


def test_command_to_paused_guest(make_guest: GuestFactory) -> None:
    """A command sent to a paused guest (whose sshd cannot answer) fails at the hang timeout."""
    guest = make_guest("run-paused")
    guest.start()
    assert guest.vm.qmp is not None
    guest.vm.qmp.execute("stop")
    start = time.monotonic()
    with pytest.raises(AgentConnectionLostError) as info:
        guest.run("true", timeout=60)
    assert time.monotonic() - start < HANG_TIMEOUT + SLACK
    assert_reported(info.value, r"command 'true': guest hung: the VM is paused", guest)
    assert_cleaned_up(guest)


def test_healthy_guest_cleans_up(make_guest: GuestFactory) -> None:
    """The baseline: a guest that did nothing wrong leaves nothing behind either."""
    guest = make_guest("healthy")
    guest.start()
    assert guest.call("system.sleep", seconds=0.1) == 0.1
    assert guest.run("echo ok").stdout == "ok\n"
    pid = guest.vm.pid
    assert pid is not None
    assert_cleaned_up(guest)
    assert guest.vm.last_teardown_s is not None and guest.vm.last_teardown_s < TEARDOWN_GRACE
    assert (guest.artifacts / "dmesg.txt").exists()


# -- a wedged guest, and a KVM that runs no guest ----------------------------------------

RCU_STALL_LINE = "rcu: INFO: rcu_sched detected stalls on CPUs/tasks:"


def _print_on_console(guest: Guest, line: str, within: float = 10.0) -> None:
    """Have the guest kernel print ``line`` (via /dev/kmsg) and wait until the console shows it."""
    guest.run(f"echo '{line}' > /dev/kmsg")
    deadline = time.monotonic() + within
    while line not in guest.vm.console_text(tail_bytes=16 * 1024):
        assert time.monotonic() < deadline, f"{line!r} never reached the console"
        time.sleep(0.1)


def test_wedged_guest_fails_the_waiting_call_naming_the_stall(make_guest: GuestFactory) -> None:
    """A lockup line on the console and an idle QEMU: the call fails within the hang bound.

    The guest prints a (fake) RCU stall line, then QMP ``stop`` freezes it as a guest
    whose timers died would be: QEMU idles.  The error's first line names the stall.
    """
    guest = make_guest("wedged")
    guest.start()
    _print_on_console(guest, RCU_STALL_LINE)
    assert guest.vm.qmp is not None
    fired = on_host_later(lambda: guest.vm.qmp and guest.vm.qmp.execute("stop", timeout=10))
    with pytest.raises(AgentConnectionLostError) as info:
        guest.call("system.sleep", seconds=120, timeout=60)
    detected = time.monotonic()
    assert fired, "the stop never fired"
    assert detected - fired[0] < HANG_TIMEOUT + SLACK, f"{detected - fired[0]:.1f}s: {info.value}"
    assert_reported(
        info.value,
        r"guest hung: the guest is wedged: RCU stall on the console"
        rf" \('{re.escape(RCU_STALL_LINE)}'\) and QEMU idle",
        guest,
    )
    assert guest.vm.health(include_hang=True).kind == "hung"
    assert_cleaned_up(guest)


def test_a_stall_line_on_a_running_guest_is_not_a_hang(make_guest: GuestFactory) -> None:
    """The same line on a guest that keeps running: calls still work (QEMU is not idle
    enough to call it wedged, even while the guest sleeps through a call)."""
    guest = make_guest("stall-line-only")
    guest.start()
    _print_on_console(guest, RCU_STALL_LINE)
    seconds = HANG_TIMEOUT * 2
    assert guest.call("system.sleep", seconds=seconds, timeout=CALL_TIMEOUT + seconds) == seconds
    assert guest.vm.health(include_hang=True).cause is None
    assert_cleaned_up(guest)


def test_kvm_that_runs_no_guest_falls_back_to_tcg_quickly(
    request: pytest.FixtureRequest,
    make_guest: GuestFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """``accel=auto`` on a host whose KVM is not remembered yet: KVM works, or TCG within 15 s.

    With a fresh verdict cache the launch tries KVM.  Where KVM runs guests the guest
    comes up under it; where it does not (here: /dev/kvm without VMX, the guest prints
    nothing), the launch falls back to TCG within 15 s, says so in one line and remembers.
    """
    from harness.host import host_arch
    from harness.images.cache import default_root
    from harness.qemu import accel

    if request.config.getoption("--accel") != "auto":
        pytest.skip("needs --accel auto")
    if host_arch() != "x86_64" or (problem := accel.kvm_access_problem()) is not None:
        pytest.skip(f"no KVM to try for an x86_64 guest: {problem or host_arch()}")
    monkeypatch.setenv("VIOMMU_IMAGE_CACHE", str(default_root()))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert accel.kvm_verdict("x86_64") is None
    logged: list[tuple[float, str]] = []
    guest = make_guest("kvm-fallback", log=lambda msg: logged.append((time.monotonic(), msg)))
    start = time.monotonic()
    guest.start()
    verdict = accel.kvm_verdict("x86_64")
    if verdict:
        assert guest.vm.accel == "kvm"
    else:
        assert guest.vm.accel == "tcg" and verdict is False
        fallbacks = [(t, msg) for t, msg in logged if "falling back to TCG" in msg]
        assert len(fallbacks) == 1, logged
        when, line = fallbacks[0]
        assert when - start < 15.0, f"fell back after {when - start:.1f}s: {line}"
        assert line.startswith("KVM unusable ("), line
    assert_cleaned_up(guest)


def test_silent_kvm_guest_falls_back_to_tcg_within_15s(
    make_guest: GuestFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A KVM guest that prints nothing, simulated on any host: the KVM attempt is a TCG
    QEMU whose kernel console is ttyS1, so the console log stays empty.  ``auto`` gives up
    on it after ``kvm_silence_timeout`` (10 s), says so in one line, remembers, boots TCG."""
    from harness.images.cache import default_root
    from harness.qemu import accel
    from harness.qemu.argv import build_argv as real_argv

    monkeypatch.setenv("VIOMMU_IMAGE_CACHE", str(default_root()))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(accel, "kvm_access_problem", lambda device=None: None)
    monkeypatch.setattr(accel, "host_arch", lambda: "x86_64")

    def silent_kvm(machine: Any, run: Any, accel_name: str, qemu: str | None = None) -> list[str]:
        if accel_name != "kvm":
            return real_argv(machine, run, accel_name, qemu)
        argv = real_argv(machine, run, "tcg", qemu)
        at = argv.index("-append") + 1
        argv[at] = argv[at].replace("console=ttyS0", "console=ttyS1")
        return argv

    monkeypatch.setattr("harness.qemu.machine.build_argv", silent_kvm)
    logged: list[tuple[float, str]] = []
    guest = make_guest("silent-kvm", log=lambda msg: logged.append((time.monotonic(), msg)))
    start = time.monotonic()
    guest.start()
    assert guest.vm.accel == "tcg"
    fallbacks = [(t, msg) for t, msg in logged if "falling back to TCG" in msg]
    assert len(fallbacks) == 1, logged
    when, line = fallbacks[0]
    assert 10.0 <= when - start < 15.0, f"fell back after {when - start:.1f}s: {line}"
    expected = "KVM unusable (no console output within 10s under KVM (not booting))"
    assert line == f"{expected}; falling back to TCG", line
    assert accel.kvm_verdict("x86_64") is False
    assert_cleaned_up(guest)
