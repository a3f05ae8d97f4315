"""Replaying a repro bundle: boot its machine and re-run the scenario, or re-run its test.

The bundle format (writing, reading, validation) is ``harness.repro``; this module is
what ``harness repro`` (``harness.commands.repro``) and ``--keep-on-failure`` do with it:
``replay_scenario`` boots the recorded machine through ``scenarios.runner.execute``,
``replay_test`` re-runs a pytest test with its recorded options, and ``keep_alive`` holds
guests up with instructions for attaching until Ctrl-C.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from harness.artifacts import new_artifacts_dir
from harness.guest import Guest
from harness.qemu import probe
from harness.repro import Bundle, BundleError, resolve_scenario
from harness.scenarios.base import Prepared, Verdict
from harness.scenarios.runner import execute


def attach_text(guest: Guest) -> str:
    """How a human attaches to a running guest."""
    return (
        f"guest {guest.vm.name} kept alive:\n"
        f"  ssh:       {guest.ssh_command()}\n"
        f"  qmp:       {guest.vm.user_qmp_socket}\n"
        f"  hmp:       {guest.vm.hmp_socket}\n"
        f"  console:   {guest.vm.console_log}\n"
        f"  artifacts: {guest.artifacts}"
    )


def keep_alive(guests: Iterable[Guest], write: Callable[[str], None] = print) -> str:
    """Print how to attach, then wait for Ctrl-C, SIGTERM or the guests' end; says which."""
    kept = list(guests)
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:  # entered before the prompt: a Ctrl-C right after it must still be ours
        for guest in kept:
            write(attach_text(guest))
        write("Ctrl-C tears down")
        while not stop.wait(0.5):
            causes = [g.vm.health().cause for g in kept]
            if all(causes):
                write(f"guest stopped: {causes[0]}")
                return "stopped"
        return "sigterm"
    except KeyboardInterrupt:
        return "interrupted"
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        write("tearing down")


def replay_scenario(
    bundle: Bundle,
    *,
    qemu: str | None = None,
    keep: bool = False,
    artifacts: Path | None = None,
    write: Callable[[str], None] = print,
) -> Verdict:
    """Boot the bundle's machine and run its scenario with the recorded params and seed.

    Raises ``BundleError`` for an unknown scenario, ``MissingCapabilityError`` when the
    QEMU binary lacks what the recorded machine needs.
    """
    scenario = resolve_scenario(bundle)
    record = bundle.guests[0]
    binary = probe.resolve_binary(record.machine.arch, qemu or record.qemu["path"])
    machine = probe.adapt_machine(record.machine, probe.probe(binary))
    prepared = Prepared(
        machine=machine,
        binary=binary,
        ready_marker=record.ready_marker,
        image=dict(record.image),
        viommu_options=dict(bundle.scenario.get("viommu_options") or {}),
    )
    artifacts = artifacts or new_artifacts_dir(f"repro-{scenario.name}-{record.machine.arch}")

    def hold(guest: Guest, verdict: Verdict) -> None:
        write(verdict.summary())
        keep_alive([guest], write)

    return execute(
        scenario,
        prepared,
        dict(bundle.scenario["params"]),
        artifacts,
        before_teardown=hold if keep else None,
    )


def rerun_command(bundle: Bundle, *, keep: bool = False, qemu: str | None = None) -> list[str]:
    """The pytest command line that re-runs a test bundle's test (``qemu`` overrides)."""
    override = ["--qemu", qemu] if qemu else []
    argv = [sys.executable, "-m", "pytest", bundle.test["nodeid"], *override,
            *bundle.test["options"]]  # fmt: skip
    if bundle.seed is not None:
        argv += ["--seed", str(bundle.seed)]
    if keep:
        argv += ["--keep-on-failure", "-s"]
    return argv


def replay_test(bundle: Bundle, *, keep: bool = False, qemu: str | None = None) -> int:
    """Re-run a test bundle's pytest test (same options and seed); pytest's exit status.

    Raises ``BundleError`` when the recorded root directory no longer exists.
    """
    rootdir = Path(bundle.test["rootdir"])
    if not rootdir.is_dir():
        raise BundleError(f"{bundle.path}: test.rootdir {rootdir} no longer exists")
    argv = rerun_command(bundle, keep=keep, qemu=qemu)
    print("re-running: " + " ".join(argv[1:]), flush=True)
    return subprocess.call(argv, cwd=rootdir)
