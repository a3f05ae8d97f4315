"""A booted guest with its agent: the object scenarios, tests and the CLI work with.

``Guest`` = ``QemuMachine`` (QEMU, QMP, console) + a per-run SSH key + ``Agent``.
Entering boots and connects; leaving saves the guest's dmesg into the artifacts and
tears everything down, whatever happened in between.

Every failure that ends the guest's usefulness (``MachineError``, ``AgentUnreachableError``,
``AgentConnectionLostError``) says its cause on its first line and ends that line with
``[artifacts: DIR]``.  Timeouts: ``boot_timeout`` (ready marker; 180 s TCG / 60 s KVM),
``ssh_timeout`` (120 s), ``hang_timeout`` (30 s stopped, paused, or wedged: an RCU
stall or soft lockup on the console while QEMU idles), each call's own.  A hang fails
whatever waits on the guest (boot, SSH, agent call, command) at the hang timeout, naming
its cause on the first line.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from harness.agent.client import (
    Agent,
    AgentConnectionLostError,
    AgentError,
    AgentUnreachableError,
    CommandResult,
    connect_ssh,
)
from harness.agent.keys import make_host_key, make_run_key
from harness.qemu.description import Machine
from harness.qemu.machine import QemuMachine
from harness.qemu.qmp import QmpError

#: what the guest's init prints once it installed the host key the harness made
HOST_KEY_INSTALLED = "viommu-init: host key from fw_cfg"


class Guest:
    """Boot ``machine``, wait for its ready marker, connect the agent."""

    def __init__(
        self,
        machine: Machine,
        artifacts: Path,
        *,
        ready_marker: str,
        name: str = "guest",
        qemu: str | None = None,
        boot_timeout: float | None = None,
        ssh_timeout: float = 120.0,
        log: Callable[[str], None] | None = None,
        hang_timeout: float | None = 30.0,
        teardown_grace: float = 3.0,
    ) -> None:
        self.log = log or (lambda msg: print(f"[{name}] {msg}", file=sys.stderr))
        self.vm = QemuMachine(
            machine,
            artifacts,
            name=name,
            qemu=qemu,
            ready_marker=ready_marker,
            log=self.log,
            hang_timeout=hang_timeout,
            teardown_grace=teardown_grace,
        )
        self.artifacts = artifacts
        self.boot_timeout = boot_timeout
        self.ssh_timeout = ssh_timeout
        self.agent: Agent | None = None
        self.timings: dict[str, float] = {}
        self._key_file: Path | None = None
        self._host_key: str | None = None
        #: a call or command lost the guest: teardown does not wait on it for dmesg
        self._lost = False

    def __enter__(self) -> Guest:
        try:
            self.start()
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

    def _health(self) -> str | None:
        """Why waiting on this guest is pointless: QEMU gone, a panic, or a hang."""
        return self.vm.health(include_hang=True).cause

    def start(self) -> None:
        key = make_run_key(self.vm.run_dir)
        host_key = make_host_key(self.vm.run_dir)
        self._key_file = key.private_key
        self.vm.authorized_key = key.public_line
        self.vm.host_key = host_key.private_key
        self._host_key = host_key.public_line
        t0 = time.monotonic()
        self.vm.launch(ready_timeout=self.boot_timeout)
        self.timings["boot_to_marker_s"] = time.monotonic() - t0
        self._connect(t0)
        self._write_timings()
        self.log(f"ready in {self.timings['boot_to_agent_s']:.1f}s ({self.vm.accel})")

    def _connect(self, t0: float) -> None:
        """SSH in with the run key (the host key pinned) and start the agent."""
        assert self.vm.ssh_port is not None and self._key_file is not None
        # an older image's init makes its own host key: then there is nothing to verify
        verified = HOST_KEY_INSTALLED in self.vm.console_text()
        with self._located():
            ssh = connect_ssh(
                self.vm.ssh_port,
                self._key_file,
                self.ssh_timeout,
                self._health,
                check_command=False,  # agent.hello is the check
                host_key=self._host_key if verified else None,
            )
            self.timings["boot_to_ssh_s"] = time.monotonic() - t0
            agent = Agent(ssh, self.artifacts / "agent.log", health=self._health)
            self.agent = agent
            agent.start()
        self.timings["boot_to_agent_s"] = time.monotonic() - t0

    def system_reset(self) -> float:
        """Reset the machine over QMP (``system_reset``: the same QEMU, its hot-plugged
        devices kept) and reconnect once the guest is back; seconds until the agent answers."""
        if self.vm.qmp is None or self.vm.ready_marker is None:
            raise AgentError("system_reset needs a launched machine with a ready marker")
        booted = self.vm.console_text().count(self.vm.ready_marker)
        first_boot = dict(self.timings)
        if self.agent is not None:
            self.agent.close()
            self.agent = None
        t0 = time.monotonic()
        # -no-reboot turns every reset request into a shutdown: let resets reset until
        # the guest is back (SeaBIOS resets once more after a warm reset), then a guest
        # reboot ends QEMU again
        self.vm.qmp.execute("set-action", {"reboot": "reset"})
        try:
            self.vm.qmp.execute("system_reset")
            self.vm.wait_ready(self.boot_timeout, seen=booted)
        finally:
            with contextlib.suppress(QmpError):
                self.vm.qmp.execute("set-action", {"reboot": "shutdown"})
        self._connect(t0)
        took = self.timings["boot_to_agent_s"]
        self.timings = {**first_boot, "reset_to_agent_s": took}
        self.log(f"back after system_reset in {took:.1f}s")
        return took

    def _write_timings(self) -> None:
        (self.artifacts / "timings.json").write_text(json.dumps(self.timings, indent=1) + "\n")

    @contextlib.contextmanager
    def _located(self) -> Iterator[None]:
        """Re-raise a lost or unreachable guest with the artifacts path on the first line."""
        try:
            yield
        except (AgentConnectionLostError, AgentUnreachableError) as exc:
            self._lost = True
            text = str(exc)
            if "[artifacts: " in text:
                raise
            first, nl, rest = text.partition("\n")
            raise type(exc)(f"{first} [artifacts: {self.artifacts}]{nl}{rest}") from exc

    def call(self, method: str, timeout: float = 120.0, **params: Any) -> Any:
        """Call an agent method in the guest."""
        if self.agent is None:
            raise AgentError("guest agent is not connected")
        with self._located():
            return self.agent.call(method, timeout=timeout, **params)

    def run(self, command: str, timeout: float = 120.0, **options: Any) -> CommandResult:
        """Run a shell command in the guest (``options``: ``Agent.run``'s on_output, pty)."""
        if self.agent is None:
            raise AgentError("guest agent is not connected")
        with self._located():
            return self.agent.run(command, timeout, **options)

    def ssh_command(self) -> str:
        """How a human attaches to this guest."""
        return " ".join(
            [
                "ssh", "-i", shlex.quote(str(self._key_file)), "-p", str(self.vm.ssh_port),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "root@127.0.0.1",
            ]
        )  # fmt: skip

    def save_dmesg(self) -> None:
        """Best-effort: the guest's kernel log into the artifacts."""
        if self.agent is None or self._lost or self.vm.health().cause or self.vm.stall():
            return
        with contextlib.suppress(AgentError):
            text = self.agent.call("system.dmesg", timeout=15)
            (self.artifacts / "dmesg.txt").write_text(text)

    def close(self) -> None:
        """Save dmesg, close the agent and SSH, stop QEMU, remove the run dir."""
        start = time.monotonic()
        try:
            self.save_dmesg()
        finally:
            if self.agent is not None:
                self.agent.close()
                self.agent = None
            closed = self.vm.last_teardown_s is not None
            self.vm.close()
            if not closed:
                self.timings["teardown_s"] = time.monotonic() - start
                with contextlib.suppress(OSError):
                    self._write_timings()
