"""Host side of the agent: SSH with a per-run key, code shipping, RPC calls.

``Agent.call("pci.bind_vfio", bdf=...)`` looks like a local call and returns the
guest's structured result.  A guest-side exception comes back as ``AgentRemoteError``
carrying the guest's exception type, errno and traceback.  A dead channel or a timeout
becomes ``AgentConnectionLost`` whose message says why, asking the machine (``health``)
whether QEMU died or the guest panicked.

Bounds: ``connect_ssh`` gives up after its ``timeout`` (each attempt's own timeouts are
cut to what is left); a call or command fails at its ``timeout`` at the latest, within
``POLL`` seconds of the machine reporting a cause or of the SSH connection dropping.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import select
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import paramiko

from guests.agent.protocol import MAX_LINE, PROTOCOL_VERSION, ProtocolError, decode, encode
from harness.agent.bundle import agent_bundle, framed_bundle
from harness.errors import HarnessError

#: Runs in the guest (``python3 -I -S``): read the bundle (``<size> <digest>`` line, then
#: zlib-compressed ``<path>\n<size>\n<bytes>`` records), unpack it once per boot, serve on
#: stdio.  Only ``os``, ``sys`` and ``zlib``: every import is slow in a TCG guest.
BOOTSTRAP = r"""
import os, sys, zlib
inp = sys.stdin.buffer
size, digest = inp.readline().split()
size = int(size)
data = inp.read(size)
if len(data) != size:
    sys.exit("agent: bundle truncated (%d of %d bytes)" % (len(data), size))
root = "/run/viommu-agent"
os.makedirs(root, mode=0o700, exist_ok=True)
path = os.path.join(root, digest.decode())
if not os.path.isdir(path):
    tmp = "%s.%d.tmp" % (path, os.getpid())
    data = zlib.decompress(data)
    size = len(data)
    pos = 0
    while pos < size:
        name_end = data.index(b"\n", pos)
        size_end = data.index(b"\n", name_end + 1)
        end = size_end + 1 + int(data[name_end + 1 : size_end])
        name = data[pos:name_end].decode()
        if name.startswith("/") or ".." in name.split("/"):
            sys.exit("agent: bad path in bundle: %r" % name)
        full = os.path.join(tmp, name)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data[size_end + 1 : end])
        pos = end
    try:
        os.rename(tmp, path)
    except OSError:
        pass
sys.path.insert(0, path)
from guests.agent.server import serve
sys.exit(serve(inp, sys.stdout.buffer))
"""


#: seconds between checks of the machine's health while waiting for the guest
POLL = 0.25

T = TypeVar("T")


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
    *,
    check_command: bool = True,
    host_key: str | None = None,
) -> paramiko.SSHClient:
    """Connect to root@127.0.0.1:port with the run key, retrying until a command runs.

    Gives up after ``timeout`` seconds (plus at most one second), or as soon as
    ``health`` reports a cause; the error says what the last attempt saw.  Without
    ``check_command`` an accepted key is enough (the caller's first command is the check:
    it saves a TCG guest a shell start).  With ``host_key`` (an OpenSSH public line) the
    guest must present exactly that key; otherwise any key is accepted.
    """
    key = paramiko.Ed25519Key.from_private_key_file(str(key_file))
    deadline = time.monotonic() + timeout
    last = "no attempt"
    refused: str | None = None  # sshd may stop answering at all after refusals
    while (left := deadline - time.monotonic()) > 0:
        if last != "no attempt" and left < 1.0:  # too short for an attempt to say anything
            time.sleep(left)
            break
        if health is not None and (cause := health()):
            raise AgentUnreachableError(f"guest stopped before SSH answered: {cause}")
        client = paramiko.SSHClient()
        if host_key is not None:
            kind, blob = host_key.split()[:2]
            expected = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
            client.get_host_keys().add(f"[127.0.0.1]:{port}", kind, expected)
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        else:  # a guest that made its own host key, reached only on loopback
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(
                "127.0.0.1",
                port=port,
                username="root",
                pkey=key,
                timeout=min(5.0, left),
                banner_timeout=min(10.0, left),
                auth_timeout=min(10.0, left),
                channel_timeout=min(10.0, left),
                allow_agent=False,
                look_for_keys=False,
            )
            if not check_command:
                return client
            _, out, _ = client.exec_command("true", timeout=min(10.0, left))
            if not out.channel.status_event.wait(max(0.1, deadline - time.monotonic())):
                last = "'true' did not finish"
            elif out.channel.recv_exit_status() == 0:
                return client
            else:
                last = "'true' failed"
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise AgentUnreachableError(
                f"SSH on 127.0.0.1:{port}: the host key is not the one this run gave the guest"
                f" ({exc})"
            ) from None
        except paramiko.AuthenticationException as exc:
            last = refused = f"the guest's sshd refused the run key ({type(exc).__name__}: {exc})"
        except (paramiko.SSHException, OSError, EOFError) as exc:
            last = _ssh_failure(exc)
        client.close()
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    if refused is not None and last != refused:
        last = f"{refused}; then {last}"
    raise AgentUnreachableError(f"SSH on 127.0.0.1:{port} did not answer in {timeout:.0f}s: {last}")


def _text(exc: BaseException) -> str:
    """An exception in words, even one without a message (``EOFError()``)."""
    return str(exc) or type(exc).__name__


def _ssh_failure(exc: BaseException) -> str:
    """What one failed SSH attempt says about the guest, in words."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing listens on the forwarded port ({text})"
    # slirp accepts the connection on the guest's behalf, then drops it: no banner, or a
    # transport that dies before authentication ("No existing session")
    if isinstance(exc, EOFError) or any(
        word in str(exc).lower() for word in ("banner", "no existing session")
    ):
        return f"no SSH server answered behind the forwarded port ({text})"
    return text


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

    def start(self, python: str = "python3", timeout: float = 60.0) -> None:
        """Ship the code and start the server in the guest."""
        _, digest = agent_bundle()
        command = f"{shlex.quote(python)} -I -S -u -c {shlex.quote(BOOTSTRAP)}"
        try:
            chan = self._open_exec(command, timeout, "agent start")
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._lost(f"agent start: cannot start the agent ({_text(exc)})") from None
        chan.settimeout(timeout)  # sendall must not block forever on a stalled guest
        try:
            chan.sendall(framed_bundle())
        except (OSError, EOFError, paramiko.SSHException) as exc:
            chan.close()
            raise self._lost(f"agent start: cannot send the code ({_text(exc)})") from None
        self._channel = chan
        self._stderr_thread = threading.Thread(target=self._pump_stderr, daemon=True)
        self._stderr_thread.start()
        hello = self.call("agent.hello", timeout=timeout)
        if not isinstance(hello, dict) or not isinstance(hello.get("modules"), list):
            self._broken = f"agent.hello answered {hello!r:.80}"
            raise AgentProtocolError(f"agent.hello: expected protocol and modules: {hello!r:.80}")
        if hello.get("protocol") != PROTOCOL_VERSION:
            self._broken = f"protocol {hello.get('protocol')!r}"
            raise AgentProtocolError(
                f"agent.hello: the guest agent speaks protocol {hello.get('protocol')!r},"
                f" this host {PROTOCOL_VERSION}"
            )
        self.modules = [str(m) for m in hello["modules"]]
        self._write_log(f"agent started (bundle {digest}, modules {', '.join(self.modules)})\n")

    def _bounded(
        self, request: Callable[[], T], timeout: float, what: str, abort: Callable[[], None]
    ) -> T:
        """``request()`` in a helper thread, given up on when the guest cannot answer.

        paramiko waits for the guest's answer to a channel open or an exec request without
        a bound (or with one it does not check the guest's health against): a paused or
        stopped guest never answers.  Gives up on a cause from ``health`` or at ``timeout``;
        ``abort`` then ends paramiko's wait (closing the channel).
        """
        result: list[T] = []
        failed: list[BaseException] = []

        def run() -> None:
            try:
                result.append(request())
            except BaseException as exc:  # handed to the caller's thread
                failed.append(exc)

        thread = threading.Thread(target=run, name="ssh-request", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while True:
            thread.join(POLL)
            if not thread.is_alive():
                break
            cause = self._health() if self._health is not None else None
            if cause is None and time.monotonic() > deadline:
                cause = f"no result within {timeout:g}s (the guest does not answer SSH requests)"
            if cause is not None:
                abort()
                raise AgentConnectionLostError(f"{what}: {cause}")
        if failed:
            raise failed[0]
        return result[0]

    def _open_exec(
        self, command: str, timeout: float, what: str, pty: bool = False
    ) -> paramiko.Channel:
        """A session channel running ``command``, within ``timeout`` (see ``_bounded``).

        ``pty``: on a pseudo-terminal (line-buffered output, stderr merged into stdout).
        """
        transport = self.ssh.get_transport()
        if transport is None or not transport.is_active():
            raise EOFError("SSH transport is closed")
        deadline = time.monotonic() + timeout
        # paramiko's own bound comes later, so that ours (with its message) ends the wait
        chan = self._bounded(
            lambda: transport.open_session(timeout=timeout + 5.0), timeout, what, lambda: None
        )
        try:
            if pty:
                left = max(0.0, deadline - time.monotonic())
                self._bounded(lambda: chan.get_pty("dumb", 400, 50), left, what, chan.close)
            left = max(0.0, deadline - time.monotonic())
            self._bounded(lambda: chan.exec_command(command), left, what, chan.close)
        except BaseException:
            chan.close()
            raise
        return chan

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
        """Mark the agent unusable; the error says why (machine, SSH, or the agent itself)."""
        cause = self._why()
        self._broken = f"{what}; {cause}" if cause else what
        return AgentConnectionLostError(self._broken)

    def _why(self) -> str | None:
        """The most telling reason the channel stopped: machine, SSH transport, agent."""
        # QEMU's exit shows up a moment after the TCP connection drops
        deadline = time.monotonic() + 1.0
        while True:
            if self._health is not None and (cause := self._health()):
                return cause
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        transport = self.ssh.get_transport()
        if transport is None or not transport.is_active():
            return "the SSH connection to the guest dropped (the machine is still running)"
        chan = self._channel
        if chan is not None and chan.exit_status_ready():
            tail = f": {self._stderr_tail[-1]}" if self._stderr_tail else ""
            return f"the agent exited with status {chan.recv_exit_status()}{tail}"
        if self._stderr_tail:
            return f"agent stderr: {self._stderr_tail[-1]}"
        return None

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
                if len(self._buffer) > MAX_LINE and b"\n" not in self._buffer:
                    self._broken = f"reply longer than {MAX_LINE} bytes without a newline"
                    raise AgentProtocolError(f"{what}: {self._broken}")
                continue
            if chan.closed or chan.eof_received:
                raise self._lost(f"{what}: the agent's channel closed")
            if self._health is not None and (cause := self._health()):
                self._broken = f"{what}: {cause}"
                raise AgentConnectionLostError(self._broken)
            if time.monotonic() > deadline:
                raise self._lost(f"{what}: no reply within {timeout:g}s")
            select.select([chan], [], [], POLL)
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
                raise self._lost(f"{method}: connection lost ({_text(exc)})") from None
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
                    self._broken = f"malformed error {error!r:.80}"
                    raise AgentProtocolError(f"{method}: {self._broken}")
                raise AgentRemoteError(method, error)
            if "result" not in reply:
                self._broken = "reply has neither result nor error"
                raise AgentProtocolError(f"{method}: {self._broken}")
            return reply["result"]

    def put_file(self, local: Path, remote: str, mode: int = 0o644, timeout: float = 300.0) -> int:
        """Copy a host file into the guest over SFTP on the same SSH connection; its size.

        The file is written to ``remote + ".part"`` and renamed, so a guest never sees a
        half-written file under ``remote``.  Fails with ``AgentConnectionLostError`` at
        ``timeout`` or when the machine reports a cause (QEMU gone, a hang).
        """
        return self._sftp(
            f"put {local.name}", timeout, lambda sftp: _sftp_put(sftp, local, remote, mode)
        )

    def get_file(self, remote: str, local: Path, timeout: float = 300.0) -> int:
        """Copy a guest file to the host over SFTP; its size (errors as ``put_file``)."""

        def get(sftp: paramiko.SFTPClient) -> int:
            sftp.get(remote, str(local))
            return local.stat().st_size

        return self._sftp(f"get {remote}", timeout, get)

    def _sftp(self, what: str, timeout: float, action: Callable[[paramiko.SFTPClient], T]) -> T:
        """Run ``action`` on a fresh SFTP session, bounded like every other request."""
        transport = self.ssh.get_transport()
        if transport is None or not transport.is_active():
            raise self._lost(f"{what}: the SSH connection to the guest is closed")
        sessions: list[paramiko.SFTPClient] = []

        def request() -> T:
            sftp = paramiko.SFTPClient.from_transport(transport)
            if sftp is None:
                raise AgentError(f"{what}: the guest refused the SFTP subsystem")
            sessions.append(sftp)
            try:
                return action(sftp)
            finally:
                sftp.close()

        def abort() -> None:
            for sftp in sessions:
                with contextlib.suppress(Exception):
                    sftp.close()

        try:
            return self._bounded(request, timeout, what, abort)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if isinstance(exc, FileNotFoundError | PermissionError):
                raise AgentError(f"{what}: {exc}") from None
            cause = self._why()
            raise AgentConnectionLostError(
                f"{what}: connection lost ({_text(exc)})" + (f"; {cause}" if cause else "")
            ) from None

    def run(
        self,
        command: str,
        timeout: float = 120.0,
        on_output: Callable[[bytes], None] | None = None,
        pty: bool = False,
        idle_timeout: float | None = None,
    ) -> CommandResult:
        """Run a shell command over a separate SSH channel (works without the agent).

        Fails with ``AgentConnectionLostError`` at ``timeout``, or sooner when the machine
        reports a cause or the connection drops; the agent itself stays usable.
        ``on_output`` gets each chunk of standard output as it arrives (live progress);
        the result still holds all of it.  ``pty`` runs it on a pseudo-terminal, so a
        program that buffers a pipe writes each line at once (stderr is then in stdout).
        ``idle_timeout``: fail when the command prints nothing for that long (a guest that
        wedged without a sign QEMU or the console shows).
        """
        what = f"command {command!r:.60}"
        deadline = time.monotonic() + timeout
        out: list[bytes] = []
        err: list[bytes] = []
        heard = time.monotonic()
        try:
            chan = self._open_exec(command, timeout, what, pty=pty)
            try:
                chan.shutdown_write()
                while True:
                    while chan.recv_ready():
                        out.append(chan.recv(1 << 16))
                        heard = time.monotonic()
                        if on_output is not None:
                            on_output(out[-1])
                    while chan.recv_stderr_ready():
                        err.append(chan.recv_stderr(1 << 16))
                    drained = not (chan.recv_ready() or chan.recv_stderr_ready())
                    finished = chan.eof_received or chan.closed
                    if drained and finished and chan.exit_status_ready():
                        break
                    if self._health is not None and (cause := self._health()):
                        raise AgentConnectionLostError(f"{what}: {cause}")
                    if time.monotonic() > deadline:
                        raise AgentConnectionLostError(
                            f"{what}: no result within {timeout:g}s"
                            + (f"; {why}" if (why := self._why()) else "")
                        )
                    if idle_timeout is not None and time.monotonic() - heard > idle_timeout:
                        raise AgentConnectionLostError(
                            f"{what}: no output for {idle_timeout:g}s"
                            + (f"; {why}" if (why := self._why()) else "")
                        )
                    select.select([chan], [], [], POLL)
                status = chan.recv_exit_status()  # -1: killed by a signal, or the link died
                transport = self.ssh.get_transport()
                if status == -1 and (transport is None or not transport.is_active()):
                    raise EOFError("the command's channel closed without an exit status")
            finally:
                chan.close()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            cause = self._why()
            raise AgentConnectionLostError(
                f"{what}: connection lost ({_text(exc)})" + (f"; {cause}" if cause else "")
            ) from None
        return CommandResult(
            status, b"".join(out).decode(errors="replace"), b"".join(err).decode(errors="replace")
        )

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


def _sftp_put(sftp: paramiko.SFTPClient, local: Path, remote: str, mode: int) -> int:
    """Write ``local`` to ``remote`` through a temporary name, set its mode; its size."""
    partial = f"{remote}.part"
    attrs = sftp.put(str(local), partial, confirm=True)
    sftp.chmod(partial, mode)
    sftp.posix_rename(partial, remote)
    return int(attrs.st_size or 0)
