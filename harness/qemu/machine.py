"""A running QEMU guest: launch, readiness, health, teardown on every path.

``QemuMachine`` owns one QEMU process, its private run directory (QMP socket, SSH key)
and its artifacts directory (argv, console, QMP transcript, QEMU log with trace events,
stderr).  Teardown is ``quit`` over QMP, then SIGTERM, then SIGKILL, each with a bounded
wait, and runs whatever happened before (``with QemuMachine(...)`` or ``close()``).

Bounds (defaults; all configurable per machine):

- a dead QEMU, a panic or a KVM internal error is seen by the watchdog within 0.1 s and
  by ``health()`` at once;
- a guest that stops running — QEMU stopped by a signal (SIGSTOP) or the VM paused
  (QMP ``stop``) — is reported as ``hung`` once that has lasted ``hang_timeout`` (30 s),
  to whoever waits on it (``health(include_hang=True)``: agent calls, QMP commands, the
  ready and SSH waits); a guest kept alive for poking may stay paused;
- a *wedged* guest — its console shows an RCU stall, a soft or hard lockup or a hung
  task (``harness.klog.STALL_KINDS``) and its QEMU has gone idle (at most
  ``IDLE_CPU_FRACTION`` of a CPU over the idle window: ``hang_timeout`` clamped to
  3-5 s) — is ``hung`` with that cause once QEMU has idled for the longer of the idle
  window and ``hang_timeout``, whatever the waiter's own timeout;
- under KVM, a guest that has not printed one console byte within
  ``kvm_silence_timeout`` (10 s) is not going to boot: with ``accel=auto`` the launch
  falls back to TCG (see ``launch``);
- teardown takes at most ``3 * teardown_grace + 10`` s (19 s): ``quit``, SIGTERM and
  SIGKILL each get their wait; a stopped QEMU is continued first so ``quit`` works.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from harness import klog
from harness.errors import HarnessError
from harness.qemu import accel as accel_mod
from harness.qemu import lifetime
from harness.qemu.argv import RunEndpoints, build_argv
from harness.qemu.description import Machine, UserNic
from harness.qemu.qmp import QmpError, QmpSession
from harness.qemu.rundir import free_loopback_port, private_run_dir, remove_run_dir

PANIC_PATTERNS = (
    re.compile(r"Kernel panic - not syncing.*"),
    re.compile(r"BUG: kernel NULL pointer dereference.*"),
)
KVM_INTERNAL_ERROR = re.compile(r"KVM internal error.*")
HOSTFWD_ERROR = re.compile(r"Could not set up host forwarding rule")
STOPPED_BY_SIGNAL = "the QEMU process is stopped"
#: how a wedged guest's stall reason starts (see ``QemuMachine._wedged``)
WEDGED = "the guest is wedged"
#: how the stall kinds of ``harness.klog`` are named in a hang's cause
STALL_NAMES = {
    "rcu-stall": "RCU stall",
    "soft-lockup": "soft lockup",
    "hard-lockup": "hard lockup",
    "hung-task": "hung task",
}
_LOG_STAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?")
#: QEMU is idle when it used at most this fraction of one host CPU over the idle window.
#: Measured on a 2-core 2.6 GHz host: an idle but healthy x86_64 VT-d TCG guest (agent
#: connected, nothing running) keeps QEMU at 1.6-2.0 %; a paused one at 0-0.3 %.
IDLE_CPU_FRACTION = 0.005
#: seconds of QEMU CPU time history the idle verdict looks at: ``hang_timeout`` when
#: shorter, but never under ``MIN_IDLE_WINDOW`` (CPU time counts in 10 ms ticks)
IDLE_WINDOW = 5.0
MIN_IDLE_WINDOW = 3.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: QMP SHUTDOWN reasons, as a person would say them
SHUTDOWN_REASONS = {
    "host-qmp-quit": "'quit' over QMP",
    "host-signal": "a signal to QEMU",
    "guest-shutdown": "the guest powered off",
    "guest-reset": "the guest rebooted (-no-reboot)",
    "guest-panic": "guest panic",
}


class MachineError(HarnessError):
    """The guest did not come up or stopped working; ``cause`` is a one-line reason."""

    def __init__(self, cause: str, artifacts: Path | None = None, tail: str = "") -> None:
        text = cause
        if artifacts is not None:
            text += f" [artifacts: {artifacts}]"
        if tail:
            text += "\n--- console (last lines) ---\n" + tail
        super().__init__(text)
        self.cause = cause
        self.artifacts = artifacts
        self.tail = tail


class GuestPanicError(MachineError):
    """The guest kernel panicked (console or pvpanic's GUEST_PANICKED)."""


class KvmInternalError(MachineError):
    """QEMU stopped the guest with a KVM internal error (an unusable KVM)."""


def lockup_signature(console: str) -> tuple[str, str] | None:
    """The first stall report in ``console`` (``harness.klog.stalls``) as ``(kind, line)``.

    ``kind`` as a person says it ("RCU stall"), ``line`` without its timestamp; None when
    the console shows no RCU stall, soft or hard lockup or hung task.
    """
    found = klog.stalls(console)
    if not found:
        return None
    first = found[0]
    return STALL_NAMES.get(first.kind, first.kind), _LOG_STAMP.sub("", first.first_line)


def cpu_used(samples: Sequence[tuple[float, float]], window: float) -> float | None:
    """CPU seconds used over the last ``window`` s of ``(when, cpu_seconds)`` samples.

    None while the samples span less than ``window``.
    """
    if not samples:
        return None
    last_when, last_cpu = samples[-1]
    for when, cpu in reversed(samples):
        if last_when - when >= window:
            return last_cpu - cpu
    return None


@dataclass(frozen=True)
class MachineHealth:
    """Why a machine is no longer usable, or ``None`` fields when it is fine."""

    cause: str | None
    kind: str | None = None  # "exited", "panic", "kvm-internal-error", "qmp-closed", "hung"


class QemuMachine:
    """One QEMU process for a ``Machine`` description."""

    def __init__(
        self,
        machine: Machine,
        artifacts: Path,
        *,
        name: str = "guest",
        qemu: str | None = None,
        ready_marker: str | None = None,
        authorized_key: str | None = None,
        log: Any = None,
        hang_timeout: float | None = 30.0,
        teardown_grace: float = 3.0,
        host_key: Path | None = None,
        kvm_silence_timeout: float = 10.0,
    ) -> None:
        self.machine = machine
        #: a private host key file the guest's sshd is to use (fw_cfg), or None
        self.host_key = host_key
        #: how long QEMU may stay stopped / the VM paused before ``health()`` says "hung"
        self.hang_timeout = hang_timeout
        #: seconds a KVM guest may stay silent on its console before it counts as not booting
        self.kvm_silence_timeout = kvm_silence_timeout
        #: the wait given to each teardown step (quit, SIGTERM, SIGKILL)
        self.teardown_grace = teardown_grace
        #: seconds the last teardown took (``None`` before the first)
        self.last_teardown_s: float | None = None
        self.name = name
        self.qemu = qemu
        self.ready_marker = ready_marker
        self.authorized_key = authorized_key
        self.artifacts = artifacts
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.run_dir = private_run_dir()
        self.ssh_port: int | None = None
        self.accel: str | None = None
        self.argv: list[str] = []
        self.qmp: QmpSession | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None
        self._health: MachineHealth = MachineHealth(None)
        self._stall: tuple[str, float] | None = None
        #: (monotonic time, QEMU's CPU seconds) over the last idle window, oldest first
        self._cpu_samples: collections.deque[tuple[float, float]] = collections.deque()
        self._cpu_lock = threading.Lock()
        #: (console size, its lockup signature) of the last scan
        self._lockup_scan: tuple[int, tuple[str, str] | None] | None = None
        self._qmp_lost_at: float | None = None
        self._watch: threading.Thread | None = None
        self._closed = False
        self._log = log or (lambda msg: print(f"[{self.name}] {msg}", file=sys.stderr))
        self.console_log = artifacts / "console.log"
        self.qemu_log = artifacts / "qemu.log"
        self.stderr_log = artifacts / "qemu-stderr.log"

    # -- context manager ---------------------------------------------------------------

    def __enter__(self) -> QemuMachine:
        try:
            self.launch()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- launch ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def user_qmp_socket(self) -> Path:
        """A second QMP monitor, free for people and tools outside the harness."""
        return self.run_dir / "qmp-user.sock"

    @property
    def hmp_socket(self) -> Path:
        """The human monitor (HMP), free for people outside the harness."""
        return self.run_dir / "hmp.sock"

    def _endpoints(self) -> RunEndpoints:
        keys = None
        if self.authorized_key is not None:
            keys = self.run_dir / "authorized_keys"
            keys.write_text(self.authorized_key.strip() + "\n")
            keys.chmod(0o600)
        has_nic = any(isinstance(d, UserNic) for d in self.machine.devices)
        return RunEndpoints(
            qmp_socket=self.qmp_socket,
            console_log=self.console_log,
            qemu_log=self.qemu_log,
            authorized_keys=keys,
            ssh_port=self.ssh_port if has_nic else None,
            host_key=self.host_key,
            user_qmp_socket=self.user_qmp_socket,
            hmp_socket=self.hmp_socket,
        )

    def launch(self, ready_timeout: float | None = None) -> None:
        """Start QEMU and, with a ready marker, wait for it.

        The accelerator comes from ``accel.choose_accel`` (KvmAccessError for ``kvm`` when
        this user cannot open ``/dev/kvm``; ``auto`` says in one line why it uses TCG).  A
        guest that does not come up under KVM picked by ``auto`` — a KVM error, or no
        console byte within ``kvm_silence_timeout`` — is stopped, the verdict remembered,
        and the launch goes on under TCG, saying so in one line.
        """
        choice = accel_mod.choose_accel(self.machine)
        if choice.note is not None:
            self._log(choice.note)
        accel = choice.accel
        for attempt in range(3):
            self.ssh_port = free_loopback_port()
            try:
                self._start(accel)
                if self.ready_marker is not None:
                    self.wait_ready(ready_timeout)
                else:
                    self._wait_qmp()
                break
            except MachineError as exc:
                if attempt < 2 and HOSTFWD_ERROR.search(self._stderr_text()):
                    self._log(f"port {self.ssh_port} was taken; retrying with another")
                    self._stop_process()
                    continue
                if not (accel == "kvm" and choice.fallback):
                    raise
                # a guest that does not come up under KVM means KVM is unusable here
                accel_mod.record_kvm_verdict(self.machine.arch, usable=False, reason=exc.cause)
                self._log(f"KVM unusable ({exc.cause}); falling back to TCG")
                self._stop_process()
                accel = "tcg"
        if accel == "kvm" and choice.fallback and self.ready_marker is not None:
            accel_mod.record_kvm_verdict(self.machine.arch, usable=True, reason="guest booted")

    def _start(self, accel: str) -> None:
        self._stop_process()
        self.accel = accel
        for path in (self.console_log, self.qemu_log, self.qmp_socket):
            path.unlink(missing_ok=True)
        self.argv = build_argv(self.machine, self._endpoints(), accel, self.qemu)
        (self.artifacts / "argv.json").write_text(json.dumps(self.argv, indent=1) + "\n")
        (self.artifacts / "machine.json").write_text(
            json.dumps(self.machine.describe(), indent=1) + "\n"
        )
        self._stderr = open(self.stderr_log, "wb")  # noqa: SIM115 - closed in _stop_process
        self._health = MachineHealth(None)
        self._stall = None
        with self._cpu_lock:
            self._cpu_samples.clear()
        self._lockup_scan = None
        self._qmp_lost_at = None
        self._log(f"starting {Path(self.argv[0]).name} ({accel}); artifacts in {self.artifacts}")
        try:
            # dies with this process even when it is SIGKILLed (parent-death signal)
            self._proc = lifetime.popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._stderr,
                stderr=self._stderr,
                start_new_session=True,
                umask=0o077,  # the QMP socket and QEMU's logs: owner only
            )
        except OSError as exc:
            self._stderr.close()
            raise MachineError(f"cannot run {self.argv[0]}: {exc}", self.artifacts) from None
        self.qmp = QmpSession(self.artifacts / "qmp.jsonl", watch=self._qmp_watch)
        try:
            self.qmp.connect(self.qmp_socket, timeout=15.0, abort=self._exited)
        except QmpError as exc:
            self._raise_failure(f"QMP: {exc}")
        self._watch = threading.Thread(
            target=self._watchdog, name=f"watch-{self.name}", daemon=True
        )
        self._watch.start()

    def _exited(self) -> str | None:
        if self._proc is None or self._proc.poll() is None:
            return None
        return self._detect().cause

    def _wait_qmp(self) -> None:
        assert self.qmp is not None
        self.qmp.execute("query-status")

    def _qmp_watch(self) -> str | None:
        """Why a QMP command cannot be answered: QEMU exited, or it is stopped for too long."""
        if (cause := self._exited()) is not None:
            return cause
        stall = self.stall()
        if stall is not None and stall[0].startswith((STOPPED_BY_SIGNAL, WEDGED)):
            return self._hung(stall)
        return None

    def _stat(self) -> list[str] | None:
        """QEMU's /proc/PID/stat fields after the command name (state first), None if gone."""
        if self._proc is None:
            return None
        try:
            stat = Path(f"/proc/{self._proc.pid}/stat").read_text()
        except OSError:
            return None
        return stat.rpartition(")")[2].split()

    def _process_state(self) -> str | None:
        """The kernel's state letter for QEMU (``T`` when stopped by a signal)."""
        fields = self._stat()
        return None if fields is None else fields[0]

    def _runstate_paused(self) -> float | None:
        """When the VM was paused (last STOP event not followed by RESUME), else None."""
        if self.qmp is None:
            return None
        last = None
        for event in self.qmp.events():
            if event.name == "STOP":
                last = event.received
            elif event.name == "RESUME":
                last = None
        return last

    def _cpu_seconds(self) -> float | None:
        """QEMU's user + system CPU time so far (all its threads), None when unknown."""
        fields = self._stat()
        return None if fields is None else (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def _idle_window(self) -> float:
        return max(MIN_IDLE_WINDOW, min(IDLE_WINDOW, self.hang_timeout or IDLE_WINDOW))

    def _sample_cpu(self, now: float) -> float | None:
        """Record QEMU's CPU time; the CPU seconds used over the idle window, if known."""
        window = self._idle_window()
        with self._cpu_lock:
            samples = self._cpu_samples
            if not samples or now - samples[-1][0] >= 0.05:
                cpu = self._cpu_seconds()
                if cpu is None:
                    return None
                samples.append((now, cpu))
            while len(samples) > 2 and now - samples[1][0] >= window:
                samples.popleft()
            return cpu_used(samples, window)

    def _console_lockup(self) -> tuple[str, str] | None:
        """``lockup_signature`` of the console's last 64 KiB, rescanned only when it grew."""
        size = self._console_size()
        if self._lockup_scan is None or self._lockup_scan[0] != size:
            found = lockup_signature(self.console_text(tail_bytes=64 * 1024))
            self._lockup_scan = (size, found)
        return self._lockup_scan[1]

    def _wedged(self, now: float) -> tuple[str, float] | None:
        """``(reason, since)`` when the console shows a lockup and QEMU has gone idle.

        A VM paused over QMP is idle from its STOP on: with a lockup on the console that is
        reported as the wedge, from the STOP, not as a mere pause (which reached the hang
        bound first or not, depending on when the CPU samples fell).
        """
        window = self._idle_window()
        used = self._sample_cpu(now)
        paused = self._runstate_paused()
        if paused is None and (used is None or used > IDLE_CPU_FRACTION * window):
            return None
        signature = self._console_lockup()
        if signature is None:
            return None
        kind, line = signature
        if paused is not None:
            idle, since = "QEMU idle (the VM is paused)", paused
        else:
            idle, since = f"QEMU idle ({used:.2f}s CPU in {window:g}s)", now - window
        return f"{WEDGED}: {kind} on the console ({line!r}) and {idle}", since

    def stall(self) -> tuple[str, float] | None:
        """``(reason, since)`` while the guest is not running though QEMU is alive.

        In order: wedged (a lockup on the console and QEMU idle), QEMU stopped by a
        signal, the VM paused.
        """
        now = time.monotonic()
        if (wedged := self._wedged(now)) is not None:
            if self._stall is None or not self._stall[0].startswith(WEDGED):
                self._stall = wedged
            return self._stall
        if self._process_state() in ("T", "t"):
            if self._stall is None or not self._stall[0].startswith(STOPPED_BY_SIGNAL):
                self._stall = (f"{STOPPED_BY_SIGNAL} (SIGSTOP or similar)", now)
            return self._stall
        if (paused := self._runstate_paused()) is not None:
            self._stall = ("the VM is paused (QMP STOP event, no RESUME)", paused)
            return self._stall
        self._stall = None
        return None

    def _hung(self, stall: tuple[str, float]) -> str | None:
        reason, since = stall
        stuck = time.monotonic() - since
        if self.hang_timeout is None or stuck < self.hang_timeout:
            return None
        return f"guest hung: {reason} for {stuck:.1f}s (hang timeout {self.hang_timeout:g}s)"

    # -- health ------------------------------------------------------------------------

    def _watchdog(self) -> None:
        """Record the first reason the machine became unusable (and when a stall began)."""
        proc = self._proc
        while proc is not None and not self._closed:
            cause = self._detect()
            if cause.cause is not None:
                self._health = cause
                return
            if proc.poll() is not None:
                continue
            self.stall()
            time.sleep(0.1)

    def _detect(self) -> MachineHealth:
        err = self._stderr_text()
        if m := KVM_INTERNAL_ERROR.search(err):
            return MachineHealth(m.group(0).strip(), "kvm-internal-error")
        if self.qmp is not None and self.qmp.events("GUEST_PANICKED"):
            return MachineHealth("guest panicked (GUEST_PANICKED event)", "panic")
        console = self.console_text(tail_bytes=64 * 1024)
        for pat in PANIC_PATTERNS:
            if m := pat.search(console):
                return MachineHealth(f"guest kernel: {m.group(0).strip()}", "panic")
        if self._proc is not None and (rc := self._proc.poll()) is not None:
            last = err.strip().splitlines()[-1:] or [""]
            how = f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
            if self.qmp is not None and (shutdown := self.qmp.events("SHUTDOWN")):
                reason = shutdown[-1].data.get("reason", "?")
                how += f" after a shutdown ({SHUTDOWN_REASONS.get(reason, reason)})"
            return MachineHealth(f"QEMU {how} {last[0]}".strip(), "exited")
        if self.qmp is not None and self.qmp.disconnected:
            # QEMU closes QMP only when it exits; give the exit a moment to show
            now = time.monotonic()
            self._qmp_lost_at = self._qmp_lost_at or now
            if now - self._qmp_lost_at > 2.0:
                return MachineHealth("QEMU closed the QMP connection but is still running",
                                     "qmp-closed")  # fmt: skip
        return MachineHealth(None)

    def health(self, include_hang: bool = False) -> MachineHealth:
        """The current health; checks now rather than waiting for the watchdog.

        A dead QEMU, a panic or a KVM error is final.  With ``include_hang`` (for callers
        waiting on the guest), a guest stopped or paused longer than ``hang_timeout`` is
        ``hung`` for as long as the stall lasts.
        """
        if self._health.cause is None:
            self._health = self._detect()
        if self._health.cause is not None or not include_hang:
            return self._health
        stall = self.stall()
        if stall is not None and (cause := self._hung(stall)) is not None:
            return MachineHealth(cause, "hung")
        return self._health

    def _raise_failure(self, default: str) -> None:
        health = self.health(include_hang=True)
        cause = health.cause or default
        tail = self.console_tail()
        if health.kind == "panic":
            raise GuestPanicError(cause, self.artifacts, tail)
        if health.kind == "kvm-internal-error":
            raise KvmInternalError(cause, self.artifacts, tail)
        raise MachineError(cause, self.artifacts, tail)

    def wait_ready(self, timeout: float | None = None, seen: int = 0) -> float:
        """Wait for the ready marker on the console (its ``seen + 1``-th appearance: after a
        reset the earlier boots' markers are still there); returns seconds waited."""
        if self.ready_marker is None:
            raise HarnessError("no ready marker configured for this machine")
        timeout = timeout or (60.0 if self.accel == "kvm" else 180.0)
        silence = self.kvm_silence_timeout if self.accel == "kvm" else None
        start = time.monotonic()
        while True:
            if self.console_text().count(self.ready_marker) > seen:
                return time.monotonic() - start
            if self.health(include_hang=True).cause is not None:
                self._raise_failure("stopped")
            if silence is not None and time.monotonic() - start > silence:
                if not self._console_size():
                    raise MachineError(
                        f"no console output within {silence:g}s under KVM (not booting)",
                        self.artifacts,
                    )
                silence = None
            if time.monotonic() - start > timeout:
                raise MachineError(
                    f"no ready marker {self.ready_marker!r} on the console within {timeout:.0f}s",
                    self.artifacts,
                    self.console_tail(),
                )
            time.sleep(0.05)

    def console_text(self, tail_bytes: int | None = None) -> str:
        try:
            with open(self.console_log, "rb") as f:
                if tail_bytes is not None:
                    f.seek(max(0, os.fstat(f.fileno()).st_size - tail_bytes))
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _console_size(self) -> int:
        try:
            return self.console_log.stat().st_size
        except FileNotFoundError:
            return 0

    def console_tail(self, lines: int = 25) -> str:
        return "\n".join(self.console_text(tail_bytes=16 * 1024).splitlines()[-lines:])

    def _stderr_text(self) -> str:
        try:
            return self.stderr_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- teardown ----------------------------------------------------------------------

    def _stop_process(self, grace: float | None = None) -> None:
        grace = self.teardown_grace if grace is None else grace
        proc = self._proc
        if proc is not None and proc.poll() is None and self._process_state() in ("T", "t"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # stopped, it can answer neither quit nor TERM
        if proc is not None and proc.poll() is None and self.qmp is not None:
            with contextlib.suppress(QmpError):
                self.qmp.execute("quit", timeout=grace, watched=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10.0)
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self._proc = None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to QEMU (fault injection); teardown still happens in ``close``."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, sig)

    def close(self) -> None:
        """Stop QEMU and remove the run directory; artifacts stay.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        start = time.monotonic()
        try:
            self._stop_process()
        finally:
            remove_run_dir(self.run_dir)
            if self._watch is not None:
                self._watch.join(2.0)
            self.last_teardown_s = time.monotonic() - start
