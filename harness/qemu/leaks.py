"""What a machine can leave behind after teardown, read from the process table and /proc/net.

Used by the fault tests and the soak: after ``close()`` there must be no QEMU process,
no listening port, no open connection to the forwarded port and no run directory.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from harness.qemu.lifetime import parent_of

#: /proc/net/tcp states (include/net/tcp_states.h)
TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


@dataclass(frozen=True)
class TcpSocket:
    """One row of /proc/net/tcp or tcp6."""

    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    state: str
    inode: int


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # tcp6: four host-order 32-bit words
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def tcp_sockets(proc: Path = Path("/proc")) -> list[TcpSocket]:
    """Every TCP socket of this network namespace (IPv4 and IPv6)."""
    out: list[TcpSocket] = []
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote = fields[1].split(":"), fields[2].split(":")
            out.append(
                TcpSocket(
                    local_address=_address(local[0]),
                    local_port=int(local[1], 16),
                    remote_address=_address(remote[0]),
                    remote_port=int(remote[1], 16),
                    state=TCP_STATES.get(fields[3], fields[3]),
                    inode=int(fields[9]),
                )
            )
    return out


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` has open."""
    inodes: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(fd_dir / name)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def listening_sockets(pid: int) -> list[TcpSocket]:
    """The TCP sockets process ``pid`` listens on."""
    mine = socket_inodes(pid)
    return [s for s in tcp_sockets() if s.state == "LISTEN" and s.inode in mine]


def process_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie whose threads have all exited.

    A killed multi-threaded process (QEMU) shows its leader as a zombie while its other
    threads still exit, holding its files and sockets: it counts as alive until they have.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[0] != "Z":
        return True
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (e.g. a run directory)."""
    found: list[int] = []
    needle = text.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and process_alive(int(entry)):
            found.append(int(entry))
    return found


def leftovers(pid: int | None, port: int | None, run_dir: Path | None) -> list[str]:
    """What a closed machine left behind, one line each; empty when nothing."""
    problems: list[str] = []
    if pid is not None and process_alive(pid):
        problems.append(f"QEMU process {pid} is still alive")
    if run_dir is not None:
        for other in processes_mentioning(str(run_dir)):
            if other != pid:
                problems.append(f"process {other} still refers to {run_dir}")
        if run_dir.exists():
            problems.append(f"run directory {run_dir} still exists")
    if port is not None:
        for sock in tcp_sockets():
            if sock.local_port == port and sock.state == "LISTEN":
                problems.append(f"port {port} still listening on {sock.local_address}")
            elif sock.remote_port == port and sock.state not in ("TIME_WAIT", "CLOSE"):
                problems.append(
                    f"connection {sock.local_address}:{sock.local_port} -> port {port}"
                    f" still {sock.state}"
                )
    return problems


def open_fds() -> int:
    """How many file descriptors this process has open (leak checks across cycles)."""
    return len(os.listdir("/proc/self/fd"))


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (children, theirs, ...), from every process's parent."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (parent := parent_of(int(entry))) is not None:
            children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return [p for p in found if process_alive(p)]
