"""A fleet host's side: ``python -m harness.fleet.worker``, started by the controller over SSH.

Protocol (no secret ever on a command line, in an environment or on disk):

1. The controller writes one JSON line to standard input: the host's name, slots, labels,
   host device and scratch directory, the scheduler's address, the controller's versions
   and, unless only probing, the worker's TLS configuration (in-memory PEM).
2. This process answers on standard error with ``FLEET-ERROR <one line>`` (a version
   mismatch, a bad request) and exits 3, or with ``FLEET-CAPS <json>`` (its probe).
3. Unless probing, it starts a ``distributed.Worker`` whose resources are its
   capabilities, listening on the address the SSH connection came in on, and prints
   ``FLEET-READY worker at <address>``.
4. It lives until the scheduler closes it or its standard input reaches end of file (the
   SSH session ended: the controller closed it, was interrupted or died).  Then it kills
   the QEMUs it started, removes its run and scratch directories, and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

READY = "FLEET-READY"
CAPS = "FLEET-CAPS"
ERROR = "FLEET-ERROR"
SCRATCH_PREFIX = "viommu-fleet-"


def _say(tag: str, text: str) -> None:
    print(f"{tag} {text}", file=sys.stderr, flush=True)


def listen_address() -> str:
    """The address the controller reached this host on (``$SSH_CONNECTION``), else loopback."""
    fields = os.environ.get("SSH_CONNECTION", "").split()
    return fields[2] if len(fields) == 4 else "127.0.0.1"


def _descendants() -> list[int]:
    """Every live descendant of this process (from /proc)."""
    from harness.qemu.lifetime import parent_of

    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (ppid := parent_of(int(entry))) is not None:
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cleanup(scratch: Path) -> None:
    """Kill every descendant (QEMU), remove this process's run dirs and the scratch dir."""
    from harness.qemu.lifetime import identity
    from harness.qemu.rundir import kill_and_wait, owner_of, remove_run_dir, sweep_bases

    kill_and_wait(_descendants())
    me = identity()
    for base in sweep_bases():
        for path in base.glob("viommu-*"):
            owner = owner_of(path)
            if owner is not None and me is not None and owner.pid == me.pid:
                remove_run_dir(path)
    shutil.rmtree(scratch, ignore_errors=True)


def _watch_stdin(scratch: Path) -> None:
    """End this process (after ``cleanup``) when standard input reaches end of file."""

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(sys.stdin.fileno(), 4096):
                pass
        cleanup(scratch)
        os._exit(0)

    threading.Thread(target=watch, name="fleet-stdin", daemon=True).start()


def _sweep_stale(base: Path) -> None:
    """Scratch directories of fleet workers that died without removing them."""
    from harness.qemu.leaks import process_alive

    for path in base.glob(f"{SCRATCH_PREFIX}*"):
        pid_text = path.name[len(SCRATCH_PREFIX) :].split("-")[0]
        if pid_text.isdigit() and not process_alive(int(pid_text)):
            shutil.rmtree(path, ignore_errors=True)


async def _serve(request: dict[str, Any], resources: dict[str, float], scratch: Path) -> None:
    import dask
    from distributed import Worker
    from distributed.security import Security

    dask.config.set(request.get("config") or {})
    # distributed.scheduler.allowed-failures is the scheduler's (controller's) setting.
    security = Security(require_encryption=True)
    host = request.get("listen") or listen_address()
    worker = Worker(
        request["scheduler"],
        name=request["name"],
        nthreads=int(request.get("slots", 1)),
        resources=resources,
        security=security,
        host=host,
        protocol="tls",
        dashboard=False,
        local_directory=str(scratch / "dask"),
        memory_limit=0,
    )
    await worker
    _say(READY, f"worker at {worker.address}")
    await worker.finished()


def main() -> int:
    """The entry point; the exit status is 3 for a refused request."""
    from harness.fleet.capabilities import probe_host
    from harness.fleet.version import identity, mismatch

    line = sys.stdin.readline()
    try:
        request = json.loads(line)
        name = str(request["name"])
    except (ValueError, KeyError, TypeError):
        _say(ERROR, "expected one JSON request line on standard input")
        return 3
    problem = mismatch(dict(request.get("versions") or {}), identity())
    if problem:
        _say(ERROR, problem)
        return 3
    if request.get("scratch"):
        os.makedirs(request["scratch"], exist_ok=True)
        os.environ["TMPDIR"] = request["scratch"]
        tempfile.tempdir = None
    base = Path(tempfile.gettempdir())
    _sweep_stale(base)
    from harness.qemu.rundir import sweep

    sweep()
    caps = probe_host(name, int(request.get("slots", 1)), request.get("labels") or (),
                      request.get("host_device"))  # fmt: skip
    _say(CAPS, json.dumps(caps.to_json()))
    if request.get("probe_only"):
        return 0
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=base))
    os.environ["TMPDIR"] = str(scratch)
    tempfile.tempdir = None
    _watch_stdin(scratch)

    def stop(*_: object) -> None:
        cleanup(scratch)
        os._exit(0)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        asyncio.run(_serve(request, caps.resources(), scratch))
    finally:
        cleanup(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
