"""Private per-machine run directories, the sweep of those a dead run left, loopback ports.

A run directory (``viommu-XXXXXXXX``, 0700) holds a machine's QMP socket and its SSH key
material.  It lives in ``$XDG_RUNTIME_DIR`` when that is set and writable (memory-backed,
per user, cleared at logout and reboot), else in /tmp.  Its ``owner`` file names the
process that made it (PID, start time, boot id: see ``lifetime.ProcessId``).

``sweep()`` removes the run directories whose owner is gone (killed, OOM-killed, a CI time
limit), after SIGKILLing any process of this user still using them (a QEMU whose
parent-death signal could not fire), key files first.  It never touches a directory
whose owner is alive, nor one without an owner record, nor anything not ours.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from harness.qemu.leaks import process_alive, processes_mentioning
from harness.qemu.lifetime import ProcessId, identity

PREFIX = "viommu-"
OWNER_FILE = "owner"
#: files holding key material, removed before anything else
KEY_FILES = ("id_ed25519", "ssh_host_ed25519_key", "authorized_keys")
#: how long the sweep waits for a killed process to vanish
KILL_WAIT_S = 2.0


def run_base() -> Path:
    """Where new run directories go: ``$XDG_RUNTIME_DIR`` if set and writable, else /tmp."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK):
        return Path(base)
    return Path("/tmp")


def sweep_bases() -> list[Path]:
    """Every place a run directory of this user may be: the current base and /tmp."""
    bases = [run_base(), Path("/tmp")]
    return [b for i, b in enumerate(bases) if b not in bases[:i]]


def private_run_dir(prefix: str = PREFIX) -> Path:
    """A fresh 0700 directory for sockets and keys, recording this process as its owner.

    Short path (unix sockets max 107 bytes); ``sweep()`` removes it if this process dies
    without removing it itself.
    """
    if not prefix.startswith(PREFIX):
        raise HarnessError(f"run directory prefix {prefix!r} must start with {PREFIX!r}")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=run_base()))
    path.chmod(0o700)
    me = identity()
    assert me is not None
    fd = os.open(path / OWNER_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{me}\n{pid_namespace()}\n")
    return path


def pid_namespace() -> str:
    """This process's PID namespace (PIDs recorded in another one mean nothing here)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "unknown"


def owner_of(path: Path) -> ProcessId | None:
    """The recorded owner of run directory ``path``; None without a readable record or when
    it was recorded in another PID namespace (whose PIDs this process cannot judge)."""
    try:
        lines = (path / OWNER_FILE).read_text().splitlines()
        owner = ProcessId.parse(lines[0])
    except (OSError, IndexError, HarnessError):
        return None
    if len(lines) < 2 or lines[1] != pid_namespace():
        return None
    return owner


def remove_run_dir(path: Path) -> None:
    """Remove a run directory, key files first, then everything else; missing is fine."""
    for name in KEY_FILES:
        with contextlib.suppress(OSError):
            (path / name).unlink()
    shutil.rmtree(path, ignore_errors=True)


def _own_process(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


def users_of(path: Path) -> list[int]:
    """This user's live processes whose command line names a file in ``path`` (its QEMU)."""
    return [pid for pid in processes_mentioning(f"{path}/") if _own_process(pid)]


def kill_and_wait(pids: Iterable[int], wait: float = KILL_WAIT_S) -> list[int]:
    """SIGKILL ``pids`` and wait up to ``wait`` s for them to vanish; the ones that did not."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    deadline = time.monotonic() + wait
    while (left := [p for p in pids if process_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


@dataclass
class SweepReport:
    """What ``sweep()`` did."""

    removed: list[Path] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)
    #: one line per directory it could not clear (a process that would not die)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line saying what was swept, or '' when nothing was."""
        if not self.removed and not self.problems:
            return ""
        n = len(self.removed)
        text = (
            f"[harness] swept {n} run director{'y' if n == 1 else 'ies'} of dead runs"
            f" (pids {', '.join(str(p) for p in sorted(set(self.owners)))})"
        )
        if self.killed:
            text += f"; killed {len(self.killed)} QEMU{'' if len(self.killed) == 1 else 's'}"
        if self.problems:
            text += "; " + "; ".join(self.problems)
        return text


def stale_run_dirs(bases: Sequence[Path] | None = None) -> list[tuple[Path, ProcessId]]:
    """This user's run directories whose recorded owner is gone, with that owner."""
    found: list[tuple[Path, ProcessId]] = []
    uid = os.getuid()
    for base in sweep_bases() if bases is None else bases:
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            if not name.startswith(PREFIX):
                continue
            path = Path(base) / name
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
                continue
            owner = owner_of(path)
            if owner is not None and not owner.alive():
                found.append((path, owner))
    return found


def sweep(
    bases: Sequence[Path] | None = None, log: Callable[[str], None] | None = None
) -> SweepReport:
    """Remove the run directories of dead runs (killing their QEMUs first); say so in one line.

    ``log`` gets the line (default: stderr) only when something was swept.
    """
    report = SweepReport()
    for path, owner in stale_run_dirs(bases):
        users = users_of(path)
        stuck = kill_and_wait(users)
        report.killed += [p for p in users if p not in stuck]
        if stuck:
            report.problems.append(f"{path}: process {', '.join(map(str, stuck))} would not die")
            continue
        remove_run_dir(path)
        if not path.exists():
            report.removed.append(path)
            report.owners.append(owner.pid)
    if line := report.line():
        (log or (lambda m: print(m, file=sys.stderr, flush=True)))(line)
    return report


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
