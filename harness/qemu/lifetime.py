"""Processes that die with the harness process that owns them, even when it is SIGKILLed.

Two mechanisms:

- ``popen()`` starts a child (QEMU) with the kernel's parent-death signal
  (``prctl(PR_SET_PDEATHSIG, SIGKILL)`` set in the child before exec).  The signal fires
  when the *thread* that forked the child ends, not the process, so ``popen()`` forks
  from the main thread when called there (it lives as long as the process) and otherwise
  hands the fork to one long-lived spawner thread that never ends before the process does.
  A child whose parent is already gone by the time the signal is armed exits at once.
- ``follow_owner()`` is for harness processes that do not descend directly from their
  owner (avocado's runner forks the test that boots QEMU; pytest-xdist workers): a
  daemon thread waits on a pidfd of the owner and, when it ends, SIGKILLs the
  intermediate processes between owner and this one and then this process, whose QEMUs
  then die by their own parent-death signal.

``ProcessId`` names a process by PID *and* start time (``/proc/PID/stat`` field 22, in
clock ticks since boot) and boot id, so a reused PID is not mistaken for its predecessor.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import os
import queue
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

PR_SET_PDEATHSIG = 1
#: environment variable naming a harness process's owner (``ProcessId`` text)
OWNER_ENV = "VIOMMU_HARNESS_OWNER"
#: how often the fallback watcher (no pidfd) checks the owner
POLL_S = 0.1

# resolved once in the parent: the child only calls through the pointer before exec
_LIBC = ctypes.CDLL(None, use_errno=True)
_PRCTL = _LIBC.prctl


def boot_id() -> str:
    """This boot's random id (``/proc/sys/kernel/random/boot_id``)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` from field 3 (state) on, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks after boot (stat field 22); None when gone."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def parent_of(pid: int) -> int | None:
    """The parent PID of ``pid`` (stat field 4), or None when it is gone."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields and len(fields) > 1 else None


@dataclass(frozen=True)
class ProcessId:
    """A process by PID, start time and boot: a reused PID is another process."""

    pid: int
    start: int
    boot: str

    def __str__(self) -> str:
        return f"{self.pid}:{self.start}:{self.boot}"

    @classmethod
    def parse(cls, text: str) -> ProcessId:
        """The inverse of ``str()``; HarnessError on anything else."""
        try:
            pid, start, boot = text.strip().split(":", 2)
            return cls(int(pid), int(start), boot)
        except ValueError:
            raise HarnessError(f"bad process id {text!r} (expected PID:START:BOOT)") from None

    def alive(self) -> bool:
        """Whether this very process still runs (not a zombie, not a successor on its PID).

        Conservative: a process whose state cannot be read but that exists counts as alive.
        """
        if self.boot != boot_id():
            return False
        fields = _stat_fields(self.pid)
        if fields is None:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        if fields[0] in ("Z", "X", "x"):
            return False
        return len(fields) <= 19 or int(fields[19]) == self.start


def identity(pid: int | None = None) -> ProcessId | None:
    """The ``ProcessId`` of ``pid`` (default: this process), or None when it is gone."""
    pid = os.getpid() if pid is None else pid
    start = start_ticks(pid)
    return None if start is None else ProcessId(pid, start, boot_id())


def die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: SIGKILL this child when the forking thread ends; exit if it already has."""

    def hook() -> None:
        if _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(125)

    return hook


class _Spawner:
    """One daemon thread that forks for callers on other threads and never ends."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
        self._jobs = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="harness-spawner", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            job, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:  # handed to the caller
                future.set_exception(exc)

    def run(self, job: Callable[[], Any]) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((job, future))
        return future.result()


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def _spawner_thread() -> _Spawner:
    global _spawner
    with _spawner_lock:
        if _spawner is None or not _spawner._thread.is_alive():
            _spawner = _Spawner()
        return _spawner


def popen(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(argv, **kwargs)`` for a child that dies (SIGKILL) with this process.

    Forks from the main thread, or from the spawner thread when called elsewhere, so the
    parent-death signal does not fire when a short-lived caller thread ends.
    """
    if "preexec_fn" in kwargs:
        raise HarnessError("lifetime.popen sets preexec_fn itself")
    parent = os.getpid()

    def start() -> subprocess.Popen[Any]:
        return subprocess.Popen(list(argv), preexec_fn=die_with_parent(parent), **kwargs)

    if threading.current_thread() is threading.main_thread():
        return start()
    result: subprocess.Popen[Any] = _spawner_thread().run(start)
    return result


def _chain_to(owner: ProcessId) -> list[ProcessId]:
    """The processes between ``owner`` and this one (parent first); empty if not a descendant."""
    chain: list[ProcessId] = []
    pid = os.getppid()
    while pid > 1 and pid != owner.pid:
        ident = identity(pid)
        if ident is None:
            return []
        chain.append(ident)
        pid = parent_of(pid) or 0
    return chain if pid == owner.pid else []


def _wait_gone(owner: ProcessId) -> None:
    """Block until ``owner`` has ended (pidfd when the kernel has it, else polling)."""
    try:
        fd = os.pidfd_open(owner.pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        while owner.alive():
            time.sleep(POLL_S)
        return
    try:
        if not owner.alive():  # the PID was reused before the pidfd was opened
            return
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll():
            pass
    finally:
        os.close(fd)


def _die(chain: Sequence[ProcessId]) -> None:
    for ident in chain:
        if ident.alive():
            with contextlib.suppress(OSError):
                os.kill(ident.pid, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def follow_owner(owner: ProcessId) -> threading.Thread | None:
    """Die (SIGKILL) when ``owner`` ends, taking the processes between us with us.

    Returns the watching daemon thread, or None when ``owner`` is this process.  An owner
    already gone kills this process at once.
    """
    if owner.pid == os.getpid():
        return None
    chain = _chain_to(owner)

    def watch() -> None:
        _wait_gone(owner)
        _die(chain)

    thread = threading.Thread(target=watch, name="harness-lifeline", daemon=True)
    thread.start()
    return thread


def follow_env_owner() -> threading.Thread | None:
    """``follow_owner()`` for the owner named in ``$VIOMMU_HARNESS_OWNER``, if any."""
    text = os.environ.get(OWNER_ENV)
    if not text:
        return None
    return follow_owner(ProcessId.parse(text))


@contextlib.contextmanager
def owner_environment() -> Any:
    """Within: child processes find this process in ``$VIOMMU_HARNESS_OWNER``."""
    me = identity()
    saved = os.environ.get(OWNER_ENV)
    os.environ[OWNER_ENV] = str(me)
    try:
        yield me
    finally:
        if saved is None:
            os.environ.pop(OWNER_ENV, None)
        else:
            os.environ[OWNER_ENV] = saved
