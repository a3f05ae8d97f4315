"""Reach sockets and files inside L1 over L1's SSH connection, as if they were local.

- ``ChannelForward``: a local listening socket (TCP on 127.0.0.1, or a unix socket in a
  private directory); every connection to it becomes a new SSH channel into L1 and bytes
  are copied both ways.  ``direct_tcpip`` opens a port-forward channel to a port on L1's
  loopback (L2's SSH); ``unix_bridge`` opens an exec channel whose command connects to a
  unix socket in L1 (L2's QMP socket: sshd's stream-local forwarding has no paramiko API).
- ``LogMirror``: a file in L1 followed with ``tail -F`` on an exec channel and appended to
  a local file, so the harness's readers (console, QEMU log and trace events) work on it.

With these, ``QmpSession``, ``connect_ssh`` and ``TraceWindow`` run unchanged against L2.
"""

from __future__ import annotations

import contextlib
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paramiko

from harness.errors import HarnessError

Opener = Callable[[], paramiko.Channel]

#: Runs in L1: connect to a unix socket (waiting up to argv[2] seconds for it) and copy
#: stdin -> socket and socket -> stdout until either side closes.
UNIX_BRIDGE = r"""
import os, selectors, socket, sys, time
path, wait = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + wait
while True:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        break
    except OSError as exc:
        s.close()
        if time.monotonic() > deadline:
            sys.exit("bridge: %s: %s" % (path, exc))
        time.sleep(0.1)
sel = selectors.DefaultSelector()
sel.register(0, selectors.EVENT_READ)
sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj == 0:
            data = os.read(0, 65536)
            if not data:
                s.shutdown(socket.SHUT_WR)
                sel.unregister(0)
                continue
            s.sendall(data)
        else:
            data = s.recv(65536)
            if not data:
                sys.exit(0)
            os.write(1, data)
"""


class ForwardError(HarnessError):
    """A channel into L1 could not be opened."""


def _transport(client: paramiko.SSHClient) -> paramiko.Transport:
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise ForwardError("the SSH connection to L1 is closed")
    return transport


def direct_tcpip(client: paramiko.SSHClient, port: int, host: str = "127.0.0.1") -> Opener:
    """Channels to ``host:port`` as seen from L1 (sshd's TCP forwarding)."""

    def open_channel() -> paramiko.Channel:
        return _transport(client).open_channel(
            "direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=15
        )

    return open_channel


def unix_bridge_command(path: str, wait: float = 30.0, python: str = "python3") -> str:
    """The L1 command that bridges its stdio to the unix socket ``path``."""
    return shlex.join([python, "-c", UNIX_BRIDGE, path, str(wait)])


def unix_bridge(client: paramiko.SSHClient, path: str, wait: float = 30.0) -> Opener:
    """Channels to the unix socket ``path`` in L1, through an exec'd bridge."""
    command = unix_bridge_command(path, wait)

    def open_channel() -> paramiko.Channel:
        chan = _transport(client).open_session(timeout=15)
        chan.exec_command(command)
        return chan

    return open_channel


class ChannelForward:
    """A local socket whose connections are carried by SSH channels into L1."""

    def __init__(self, opener: Opener, *, unix_path: Path | None = None, name: str = "") -> None:
        self.name = name
        self._opener = opener
        self._closed = threading.Event()
        self._pumps: list[threading.Thread] = []
        self.errors: list[str] = []
        if unix_path is not None:
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(str(unix_path))
            unix_path.chmod(0o600)
        else:
            self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._listener.bind(("127.0.0.1", 0))
        self.unix_path = unix_path
        self._listener.listen(8)
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, name=f"fwd-{name}", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        """The local TCP port (TCP forwards only)."""
        port: int = self._listener.getsockname()[1]
        return port

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            pump = threading.Thread(target=self._pump, args=(conn,), daemon=True)
            pump.start()
            self._pumps.append(pump)

    def _pump(self, conn: socket.socket) -> None:
        try:
            chan = self._opener()
        except (paramiko.SSHException, OSError, EOFError, HarnessError) as exc:
            self.errors.append(f"{self.name}: cannot open a channel into L1: {exc}")
            conn.close()
            return
        try:
            while not self._closed.is_set():
                ready, _, _ = select.select([conn, chan], [], [], 0.2)  # type: ignore[type-var]
                if conn in ready:
                    data = conn.recv(65536)
                    if not data:
                        chan.shutdown_write()
                        break
                    chan.sendall(data)
                if chan in ready:
                    data = chan.recv(65536)
                    if not data:
                        break
                    conn.sendall(data)
            while not self._closed.is_set() and not chan.closed:  # drain after a half-close
                ready2, _, _ = select.select([chan], [], [], 0.2)
                if chan in ready2:
                    data = chan.recv(65536)
                    if not data:
                        break
                    conn.sendall(data)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.errors.append(f"{self.name}: {type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(Exception):
                chan.close()
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        """Stop accepting, end every carried connection; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(2.0)
        for pump in self._pumps:
            pump.join(2.0)
        if self.unix_path is not None:
            self.unix_path.unlink(missing_ok=True)


class LogMirror:
    """A file in L1, followed (``tail -F``) and appended to a local file as it grows."""

    def __init__(self, client: paramiko.SSHClient, remote: str, local: Path) -> None:
        self.remote = remote
        self.local = local
        self.received = 0
        self._cond = threading.Condition()
        self._done = False
        self._chan = _transport(client).open_session(timeout=15)
        self._chan.exec_command(f"exec tail -c +1 -F {shlex.quote(remote)} 2>/dev/null")
        self._file = open(local, "ab")  # noqa: SIM115 - closed by the pump
        self._thread = threading.Thread(target=self._pump, name=f"mirror-{local.name}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            while True:
                data = self._chan.recv(1 << 16)
                if not data:
                    break
                self._file.write(data)
                self._file.flush()
                with self._cond:
                    self.received += len(data)
                    self._cond.notify_all()
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            self._file.close()
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def catch_up(self, size: int, timeout: float = 10.0) -> bool:
        """Wait until ``size`` bytes arrived (the remote size a moment ago); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.received < size and not self._done:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return self.received >= size

    def close(self) -> None:
        """Stop following; what arrived stays in the local file."""
        with contextlib.suppress(Exception):
            self._chan.close()
        self._thread.join(2.0)
