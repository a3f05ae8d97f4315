"""A running QEMU guest: launch, readiness, health, teardown on every path.

``QemuMachine`` owns one QEMU process, its private run directory (QMP socket, SSH key)
and its artifacts directory (argv, console, QMP transcript, QEMU log with trace events,
stderr).  Teardown is ``quit`` over QMP, then SIGTERM, then SIGKILL, each with a bounded
wait, and runs whatever happened before (``with QemuMachine(...)`` or ``close()``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from harness.errors import HarnessError
from harness.qemu import accel as accel_mod
from harness.qemu.argv import RunEndpoints, build_argv, resolved_accel
from harness.qemu.description import Machine, UserNic
from harness.qemu.qmp import QmpError, QmpSession
from harness.qemu.rundir import free_loopback_port, private_run_dir, remove_run_dir

PANIC_PATTERNS = (
    re.compile(r"Kernel panic - not syncing.*"),
    re.compile(r"BUG: kernel NULL pointer dereference.*"),
)
KVM_INTERNAL_ERROR = re.compile(r"KVM internal error.*")
HOSTFWD_ERROR = re.compile(r"Could not set up host forwarding rule")


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


@dataclass(frozen=True)
class MachineHealth:
    """Why a machine is no longer usable, or ``None`` fields when it is fine."""

    cause: str | None
    kind: str | None = None  # "exited", "panic", "kvm-internal-error", "qmp-closed"


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
    ) -> None:
        self.machine = machine
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
        )

    def launch(self, ready_timeout: float | None = None) -> None:
        """Start QEMU (resolving ``accel=auto``) and, with a ready marker, wait for it."""
        accel = resolved_accel(self.machine, accel_mod.kvm_verdict(self.machine.arch) is not False)
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
                if not (accel == "kvm" and self.machine.accel == "auto"):
                    if attempt < 2 and HOSTFWD_ERROR.search(self._stderr_text()):
                        self._log(f"port {self.ssh_port} was taken; retrying with another")
                        self._stop_process()
                        continue
                    raise
                # auto: a guest that does not come up under KVM means KVM is unusable here
                accel_mod.record_kvm_verdict(self.machine.arch, usable=False, reason=exc.cause)
                self._log(f"warning: KVM unusable ({exc.cause}); falling back to TCG")
                self._stop_process()
                accel = "tcg"
        if accel == "kvm" and self.machine.accel == "auto" and self.ready_marker is not None:
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
        self._log(f"starting {Path(self.argv[0]).name} ({accel}); artifacts in {self.artifacts}")
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._stderr,
                stderr=self._stderr,
                start_new_session=True,
            )
        except OSError as exc:
            self._stderr.close()
            raise MachineError(f"cannot run {self.argv[0]}: {exc}", self.artifacts) from None
        self.qmp = QmpSession(self.artifacts / "qmp.jsonl")
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

    # -- health ------------------------------------------------------------------------

    def _watchdog(self) -> None:
        """Record the first reason the machine became unusable."""
        proc = self._proc
        while proc is not None and not self._closed:
            cause = self._detect()
            if cause.cause is not None:
                self._health = cause
                return
            if proc.poll() is not None:
                continue
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
            return MachineHealth(f"QEMU {how} {last[0]}".strip(), "exited")
        return MachineHealth(None)

    def health(self) -> MachineHealth:
        """The current health; checks now rather than waiting for the watchdog."""
        if self._health.cause is None:
            self._health = self._detect()
        return self._health

    def _raise_failure(self, default: str) -> None:
        health = self.health()
        cause = health.cause or default
        tail = self.console_tail()
        if health.kind == "panic":
            raise GuestPanicError(cause, self.artifacts, tail)
        if health.kind == "kvm-internal-error":
            raise KvmInternalError(cause, self.artifacts, tail)
        raise MachineError(cause, self.artifacts, tail)

    def wait_ready(self, timeout: float | None = None) -> float:
        """Wait for the ready marker on the console; returns seconds since launch."""
        if self.ready_marker is None:
            raise HarnessError("no ready marker configured for this machine")
        timeout = timeout or (60.0 if self.accel == "kvm" else 180.0)
        start = time.monotonic()
        while True:
            if self.ready_marker in self.console_text():
                return time.monotonic() - start
            if self.health().cause is not None:
                self._raise_failure("stopped")
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

    def console_tail(self, lines: int = 25) -> str:
        return "\n".join(self.console_text(tail_bytes=16 * 1024).splitlines()[-lines:])

    def _stderr_text(self) -> str:
        try:
            return self.stderr_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- teardown ----------------------------------------------------------------------

    def _stop_process(self, grace: float = 3.0) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None and self.qmp is not None:
            with contextlib.suppress(QmpError):
                self.qmp.execute("quit", timeout=grace)
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
        try:
            self._stop_process()
        finally:
            remove_run_dir(self.run_dir)
            if self._watch is not None:
                self._watch.join(2.0)
