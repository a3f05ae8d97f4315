"""L2: a QEMU running inside L1, driven through the same machine and guest APIs as L1.

``L2Machine`` is a ``QemuMachine`` whose process lives in L1: it runs on an SSH exec
channel of L1's connection (the channel's exit status is QEMU's; its stderr streams to
``qemu-stderr.log``), its console and QEMU log are mirrored into the artifacts directory
(``LogMirror``), and its QMP socket is bridged to a local unix socket (``ChannelForward``),
so ``QmpSession``, ``wait_ready``, panic detection, ``TraceWindow`` and teardown work as
for a local guest.  ``L2Guest`` is a ``Guest`` over it: SSH reaches L2's sshd through a
direct-tcpip channel to L2's user-network forward on L1's loopback.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import paramiko

from harness.errors import HarnessError
from harness.guest import Guest
from harness.qemu.argv import RunEndpoints, build_argv
from harness.qemu.description import Machine
from harness.qemu.machine import (
    KVM_INTERNAL_ERROR,
    PANIC_PATTERNS,
    MachineError,
    MachineHealth,
    QemuMachine,
)
from harness.qemu.qmp import QmpError, QmpSession
from harness.qemu.rundir import remove_run_dir
from harness.tier3.forward import ChannelForward, LogMirror, direct_tcpip, unix_bridge

Log = Callable[[str], None]


def startup_trace_args(patterns: Sequence[str]) -> list[str]:
    """``-trace enable=P`` for each pattern: allocations at realize time precede QMP."""
    return [arg for pattern in patterns for arg in ("-trace", f"enable={pattern}")]


class L2Machine(QemuMachine):
    """A QEMU process in L1 (``l1``: the booted L1 ``Guest``), seen as a local machine."""

    def __init__(
        self,
        machine: Machine,
        artifacts: Path,
        *,
        l1: Guest,
        remote_dir: str,
        qemu: str = "qemu-system-aarch64",
        ready_marker: str | None = None,
        name: str = "l2",
        log: Log | None = None,
        trace_patterns: Sequence[str] = (),
        hang_timeout: float | None = 60.0,
        teardown_grace: float = 5.0,
    ) -> None:
        super().__init__(
            machine,
            artifacts,
            name=name,
            qemu=qemu,
            ready_marker=ready_marker,
            log=log,
            hang_timeout=hang_timeout,
            teardown_grace=teardown_grace,
        )
        self.l1 = l1
        self.remote_dir = remote_dir
        self.trace_patterns = tuple(trace_patterns)
        self.l1_ssh_port: int | None = None
        self.remote_pid: int | None = None
        self._chan: paramiko.Channel | None = None
        self._mirrors: list[LogMirror] = []
        self._forwards: list[ChannelForward] = []
        self._pumps: list[threading.Thread] = []
        self._exit_status: int | None = None

    # -- where things are in L1 ----------------------------------------------------------

    def remote(self, name: str) -> str:
        return f"{self.remote_dir}/{name}"

    def _ssh(self) -> paramiko.SSHClient:
        agent = self.l1.agent
        if agent is None:
            raise HarnessError("L1's agent is not connected")
        return agent.ssh

    def _endpoints(self) -> RunEndpoints:
        keys = None
        if self.authorized_key is not None:
            keys = Path(self.remote("authorized_keys"))
            self.l1.call(
                "system.write_file",
                path=str(keys),
                data=(self.authorized_key.strip() + "\n").encode(),
                mode=0o600,
            )
        return RunEndpoints(
            qmp_socket=Path(self.remote("qmp.sock")),
            console_log=Path(self.remote("console.log")),
            qemu_log=Path(self.remote("qemu.log")),
            authorized_keys=keys,
            ssh_port=self.l1_ssh_port,
        )

    @property
    def pid(self) -> int | None:
        return self.remote_pid

    # -- launch --------------------------------------------------------------------------

    def launch(self, ready_timeout: float | None = None) -> None:
        """Start QEMU in L1, bridge QMP, mirror its logs, and wait for the ready marker."""
        self.l1_ssh_port = int(self.l1.call("l1.free_port"))
        accel = self.machine.accel if self.machine.accel != "auto" else "kvm"
        self._start(accel)
        if self.ready_marker is not None:
            self.wait_ready(ready_timeout or (240.0 if accel == "kvm" else 900.0))

    def _start(self, accel: str) -> None:
        self.accel = accel
        for path in (self.console_log, self.qemu_log, self.stderr_log):
            path.unlink(missing_ok=True)
            path.touch()
        self.argv = build_argv(self.machine, self._endpoints(), accel, self.qemu)
        self.argv += startup_trace_args(self.trace_patterns)
        (self.artifacts / "argv.json").write_text(json.dumps(self.argv, indent=1) + "\n")
        (self.artifacts / "machine.json").write_text(
            json.dumps(self.machine.describe(), indent=1) + "\n"
        )
        self.l1.run(
            f"rm -f {shlex.quote(self.remote('qmp.sock'))}"
            f" {shlex.quote(self.remote('console.log'))} {shlex.quote(self.remote('qemu.log'))}"
        )
        client = self._ssh()
        transport = client.get_transport()
        if transport is None:
            raise MachineError("the SSH connection to L1 is closed", self.artifacts)
        self._log(f"starting {self.argv[0]} in L1 ({accel}); artifacts in {self.artifacts}")
        chan = transport.open_session(timeout=15)
        command = (
            f"cd {shlex.quote(self.remote_dir)} && umask 077 && echo $$ &&"
            f" exec {shlex.join(self.argv)}"
        )
        chan.exec_command(command)
        self._chan = chan
        self.remote_pid = self._read_pid(chan)
        for remote, local in (
            (self.remote("console.log"), self.console_log),
            (self.remote("qemu.log"), self.qemu_log),
        ):
            self._mirrors.append(LogMirror(client, remote, local))
        pump = threading.Thread(target=self._pump_stderr, args=(chan,), daemon=True)
        pump.start()
        self._pumps.append(pump)
        qmp_forward = ChannelForward(
            unix_bridge(client, self.remote("qmp.sock")), unix_path=self.qmp_socket, name="l2-qmp"
        )
        self._forwards.append(qmp_forward)
        self.ssh_port = self._ssh_forward(client)
        self.qmp = QmpSession(self.artifacts / "qmp.jsonl", watch=self._qmp_watch)
        try:
            self.qmp.connect(self.qmp_socket, timeout=60.0, abort=self._exited)
        except QmpError as exc:
            self._raise_failure(f"QMP: {exc}")
        self._watch = threading.Thread(
            target=self._watch_l2, name=f"watch-{self.name}", daemon=True
        )
        self._watch.start()

    def _ssh_forward(self, client: paramiko.SSHClient) -> int:
        assert self.l1_ssh_port is not None
        forward = ChannelForward(direct_tcpip(client, self.l1_ssh_port), name="l2-ssh")
        self._forwards.append(forward)
        return forward.port

    def _read_pid(self, chan: paramiko.Channel) -> int:
        data = b""
        deadline = time.monotonic() + 30
        while b"\n" not in data:
            if chan.recv_ready():
                data += chan.recv(64)
            elif chan.exit_status_ready() or time.monotonic() > deadline:
                raise MachineError(f"QEMU did not start in L1 ({data!r:.60})", self.artifacts)
            else:
                time.sleep(0.02)
        line, _, rest = data.partition(b"\n")
        if rest:
            with open(self.console_log.with_name("qemu-stdout.log"), "ab") as out:
                out.write(rest)
        return int(line)

    def _pump_stderr(self, chan: paramiko.Channel) -> None:
        with open(self.stderr_log, "ab") as err:
            while True:
                try:
                    data = chan.recv_stderr(4096)
                except (OSError, EOFError):
                    break
                if not data:
                    break
                err.write(data)
                err.flush()
        with contextlib.suppress(OSError, EOFError):
            self._exit_status = chan.recv_exit_status()

    # -- health --------------------------------------------------------------------------

    def _process_state(self) -> str | None:
        return None

    def _exited(self) -> str | None:
        chan = self._chan
        if chan is None or not chan.exit_status_ready():
            return None
        return self._detect().cause

    def _watch_l2(self) -> None:
        while not self._closed:
            health = self._detect()
            if health.cause is not None:
                self._health = health
                return
            time.sleep(0.2)

    def _detect(self) -> MachineHealth:
        err = self._stderr_text()
        if m := KVM_INTERNAL_ERROR.search(err):
            return MachineHealth(m.group(0).strip(), "kvm-internal-error")
        if self.qmp is not None and self.qmp.events("GUEST_PANICKED"):
            return MachineHealth("L2 panicked (GUEST_PANICKED event)", "panic")
        console = self.console_text(tail_bytes=64 * 1024)
        for pat in PANIC_PATTERNS:
            if m := pat.search(console):
                return MachineHealth(f"L2 kernel: {m.group(0).strip()}", "panic")
        chan = self._chan
        if chan is not None and chan.exit_status_ready():
            for pump in self._pumps:
                pump.join(1.0)
            status = chan.recv_exit_status()
            last = self._stderr_text().strip().splitlines()[-1:] or [""]
            return MachineHealth(
                f"QEMU in L1 exited with status {status}: {last[0]}".strip(), "exited"
            )
        if (cause := self.l1.vm.health().cause) is not None:
            return MachineHealth(f"L1 stopped: {cause}", "exited")
        return MachineHealth(None)

    # -- logs ----------------------------------------------------------------------------

    def sync_logs(self, timeout: float = 15.0) -> bool:
        """Wait until the local mirrors hold what the files in L1 hold now."""
        sizes = self.l1.call("l1.file_sizes", paths=[m.remote for m in self._mirrors])
        return all(m.catch_up(max(0, int(sizes[m.remote])), timeout) for m in self._mirrors)

    # -- teardown ------------------------------------------------------------------------

    def _stop_process(self, grace: float | None = None) -> None:
        grace = self.teardown_grace if grace is None else grace
        chan = self._chan
        if chan is not None and not chan.exit_status_ready() and self.qmp is not None:
            with contextlib.suppress(QmpError):
                self.qmp.execute("quit", timeout=grace, watched=False)
            deadline = time.monotonic() + grace
            while not chan.exit_status_ready() and time.monotonic() < deadline:
                time.sleep(0.05)
        if chan is not None and not chan.exit_status_ready() and self.remote_pid is not None:
            with contextlib.suppress(HarnessError):
                self.l1.call("l1.stop", pid=self.remote_pid, grace=grace, timeout=grace + 20)
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        with contextlib.suppress(HarnessError):
            if self.l1.vm.health().cause is None and self._mirrors:
                self.sync_logs(timeout=3.0)
        for mirror in self._mirrors:
            mirror.close()
        self._mirrors.clear()
        for forward in self._forwards:
            forward.close()
        self._forwards.clear()
        if chan is not None:
            chan.close()
        for pump in self._pumps:
            pump.join(2.0)
        self._chan = None

    def kill(self, sig: int = 9) -> None:
        """Send ``sig`` to QEMU in L1 (fault injection); teardown still happens in ``close``."""
        if self.remote_pid is not None:
            self.l1.run(f"kill -{int(sig)} {self.remote_pid}")


class L2Guest(Guest):
    """A ``Guest`` whose machine is an ``L2Machine`` (QEMU inside L1)."""

    def __init__(
        self,
        vm: L2Machine,
        *,
        boot_timeout: float | None = None,
        ssh_timeout: float = 180.0,
        log: Log | None = None,
    ) -> None:
        super().__init__(
            vm.machine,
            vm.artifacts,
            ready_marker=vm.ready_marker or "",
            name=vm.name,
            boot_timeout=boot_timeout,
            ssh_timeout=ssh_timeout,
            log=log,
        )
        remove_run_dir(self.vm.run_dir)  # the local QemuMachine Guest made is never launched
        self.vm = vm
        vm._log = self.log
