"""Host side of the agent: SSH with a per-run key, code shipping, RPC calls.

``Agent.call("pci.bind_vfio", bdf=...)`` looks like a local call and returns the
guest's structured result.  A guest-side exception comes back as ``AgentRemoteError``
carrying the guest's exception type, errno and traceback.  A dead channel or a timeout
becomes ``AgentConnectionLost`` whose message says why, asking the machine (``health``)
whether QEMU died or the guest panicked.
"""

from __future__ import annotations

import collections
import contextlib
import select
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from guests.agent.protocol import ProtocolError, decode, encode
from harness.agent.bundle import agent_bundle
from harness.errors import HarnessError

#: Runs in the guest: read the bundle (length line + zip), cache it, serve on stdio.
BOOTSTRAP = r"""
import hashlib, os, sys, zipfile, io
inp = sys.stdin.buffer
n = int(inp.readline())
data = b""
while len(data) < n:
    chunk = inp.read(n - len(data))
    if not chunk:
        sys.exit("agent: bundle truncated")
    data += chunk
root = "/run/viommu-agent"
os.makedirs(root, mode=0o700, exist_ok=True)
path = os.path.join(root, hashlib.sha256(data).hexdigest()[:16])
if not os.path.isdir(path):
    tmp = "%s.%d.tmp" % (path, os.getpid())
    zipfile.ZipFile(io.BytesIO(data)).extractall(tmp)
    try:
        os.rename(tmp, path)
    except OSError:
        pass
sys.path.insert(0, path)
from guests.agent.server import serve
sys.exit(serve(inp, sys.stdout.buffer))
"""


class AgentError(HarnessError):
    """Base of agent failures."""


class AgentUnreachableError(AgentError):
    """The guest's SSH server never accepted the run key within the timeout."""


class AgentConnectionLostError(AgentError):
    """The channel died or a call timed out; ``cause`` says why (QEMU gone, panic, ...)."""


class AgentProtocolError(AgentError):
    """The guest sent something that is not what the protocol says."""


class AgentRemoteError(AgentError):
    """A guest-side exception: its type, message, errno and traceback."""

    def __init__(self, method: str, payload: dict[str, Any]) -> None:
        self.method = method
        self.remote_type = str(payload.get("type", "Exception"))
        self.remote_message = str(payload.get("message", ""))
        self.errno: int | None = payload.get("errno")
        self.ioctl: str | None = payload.get("ioctl")
        self.remote_traceback = str(payload.get("traceback", ""))
        self.payload = payload
        super().__init__(f"{method}: {self.remote_type}: {self.remote_message}")


@dataclass(frozen=True)
class CommandResult:
    """Exit status and output of a command run over SSH."""

    status: int
    stdout: str
    stderr: str


def connect_ssh(
    port: int,
    key_file: Path,
    timeout: float = 120.0,
    health: Callable[[], str | None] | None = None,
) -> paramiko.SSHClient:
    """Connect to root@127.0.0.1:port with the run key, retrying until a command runs."""
    key = paramiko.Ed25519Key.from_private_key_file(str(key_file))
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if health is not None and (cause := health()):
            raise AgentUnreachableError(f"guest stopped before SSH answered: {cause}")
        client = paramiko.SSHClient()
        # Host keys are generated per boot inside a guest reached only on loopback.
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(
                "127.0.0.1",
                port=port,
                username="root",
                pkey=key,
                timeout=5,
                banner_timeout=10,
                auth_timeout=10,
                allow_agent=False,
                look_for_keys=False,
            )
            _, out, _ = client.exec_command("true", timeout=10)
            if out.channel.recv_exit_status() == 0:
                return client
            last = "'true' failed"
        except (paramiko.SSHException, OSError, EOFError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        client.close()
        time.sleep(0.5)
    raise AgentUnreachableError(
        f"SSH on 127.0.0.1:{port} did not answer in {timeout:.0f}s ({last})"
    )


class Agent:
    """An RPC session with the agent in one guest."""

    def __init__(
        self,
        ssh: paramiko.SSHClient,
        log_path: Path | None = None,
        health: Callable[[], str | None] | None = None,
    ) -> None:
        self.ssh = ssh
        self._health = health
        self._log = open(log_path, "ab") if log_path else None  # noqa: SIM115
        self._channel: paramiko.Channel | None = None
        self._buffer = b""
        self._next_id = 0
        self._broken: str | None = None
        self._lock = threading.Lock()
        self._stderr_thread: threading.Thread | None = None
        self.modules: list[str] = []
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=5)

    def start(self, python: str = "python3") -> None:
        """Ship the code and start the server in the guest."""
        data, digest = agent_bundle()
        transport = self.ssh.get_transport()
        if transport is None:
            raise AgentConnectionLostError("SSH transport is closed")
        chan = transport.open_session()
        chan.exec_command(f"{shlex.quote(python)} -u -c {shlex.quote(BOOTSTRAP)}")
        chan.sendall(f"{len(data)}\n".encode() + data)
        self._channel = chan
        self._stderr_thread = threading.Thread(target=self._pump_stderr, daemon=True)
        self._stderr_thread.start()
        hello = self.call("agent.hello", timeout=60)
        self.modules = list(hello["modules"])
        self._write_log(f"agent started (bundle {digest}, modules {', '.join(self.modules)})\n")

    def _pump_stderr(self) -> None:
        chan = self._channel
        while chan is not None:
            try:
                data = chan.recv_stderr(4096)
            except (OSError, EOFError):
                return
            if not data:
                return
            self._write_log(data)
            self._stderr_tail.extend(data.decode(errors="replace").splitlines())

    def _write_log(self, data: str | bytes) -> None:
        if self._log is not None:
            self._log.write(data.encode() if isinstance(data, str) else data)
            self._log.flush()

    def _lost(self, what: str) -> AgentConnectionLostError:
        cause = self._health() if self._health else None
        if cause is None and self._stderr_tail:
            time.sleep(0.2)  # let the stderr pump catch the agent's last words
            cause = f"agent stderr: {self._stderr_tail[-1]}"
        self._broken = f"{what}; {cause}" if cause else what
        return AgentConnectionLostError(self._broken)

    def _readline(self, timeout: float, what: str) -> bytes:
        """One reply line; meanwhile poll the machine's health so a dead guest fails fast."""
        chan = self._channel
        assert chan is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if chan.recv_ready():
                data = chan.recv(1 << 20)
                if not data:
                    raise self._lost(f"{what}: the agent's channel closed")
                self._buffer += data
                continue
            if chan.closed or chan.eof_received:
                raise self._lost(f"{what}: the agent's channel closed")
            if self._health is not None and (cause := self._health()):
                self._broken = f"{what}: {cause}"
                raise AgentConnectionLostError(self._broken)
            if time.monotonic() > deadline:
                raise self._lost(f"{what}: no reply within {timeout:.0f}s")
            select.select([chan], [], [], 0.25)
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"

    def call(self, method: str, timeout: float = 120.0, **params: Any) -> Any:
        """Call ``method`` in the guest and return its result."""
        with self._lock:
            if self._broken is not None:
                raise AgentConnectionLostError(f"agent unusable: {self._broken}")
            if self._channel is None:
                raise AgentError("agent not started")
            self._next_id += 1
            req_id = self._next_id
            try:
                self._channel.sendall(encode({"id": req_id, "method": method, "params": params}))
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise self._lost(f"{method}: connection lost ({exc})") from None
            line = self._readline(timeout, method)
            try:
                reply = decode(line)
            except ProtocolError as exc:
                self._broken = f"protocol error: {exc}"
                raise AgentProtocolError(f"{method}: {exc}") from None
            if reply.get("id") != req_id:
                self._broken = f"reply id {reply.get('id')!r} for request {req_id}"
                raise AgentProtocolError(f"{method}: {self._broken}")
            if "error" in reply:
                error = reply["error"]
                if not isinstance(error, dict):
                    raise AgentProtocolError(f"{method}: malformed error {error!r:.80}")
                raise AgentRemoteError(method, error)
            if "result" not in reply:
                raise AgentProtocolError(f"{method}: reply has neither result nor error")
            return reply["result"]

    def run(self, command: str, timeout: float = 120.0) -> CommandResult:
        """Run a shell command over a separate SSH channel (works without the agent)."""
        try:
            _, out, err = self.ssh.exec_command(command, timeout=timeout)
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
            status = out.channel.recv_exit_status()
        except TimeoutError:
            raise self._lost(f"command {command!r}: no result within {timeout:.0f}s") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._lost(f"command {command!r}: connection lost ({exc})") from None
        return CommandResult(status, stdout, stderr)

    def close(self) -> None:
        """Close the channel and the SSH connection; idempotent."""
        if self._channel is not None:
            with contextlib.suppress(Exception):
                self._channel.close()
            self._channel = None
        with contextlib.suppress(Exception):
            self.ssh.close()
        if self._stderr_thread is not None:
            self._stderr_thread.join(2.0)
            self._stderr_thread = None
        if self._log is not None:
            self._log.close()
            self._log = None
