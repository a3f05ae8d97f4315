"""The harness SIGKILLed mid-run, at each entry point: nothing it started outlives it.

Each test starts one entry point as a real process — the CLI (``harness run``, and
``harness boot --keep`` as in the issue), a pytest-xdist worker and its controller, the
avocado qualification job — waits until its QEMU is up and listening (found in the
process table under that process), SIGKILLs it, and checks:

1. its QEMU, and every other process it started, is gone within 2 s (QEMU's
   parent-death signal; avocado's runner and test follow the job, xdist workers their
   controller) — all threads exited, not just a zombie leader;
2. within the same 2 s, nothing listens on the ports QEMU listened on;
3. its run directory (keys, QMP socket) is gone after the next harness start
   (``harness sweep`` — any command sweeps at its start).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.qemu.leaks import descendants, listening_sockets, process_alive, tcp_sockets
from harness.qemu.lifetime import parent_of

pytestmark = pytest.mark.x86_64

ROOT = Path(__file__).resolve().parents[2]
#: QEMU (and the rest) must be gone this long after the SIGKILL
DEATH_BOUND = 2.0
#: how long an entry point may take to get its QEMU up (Python start, probe, image lookup)
UP_TIMEOUT = 180.0
QMP_SOCKET = re.compile(rb"unix:([^,\x00]+)/qmp\.sock")


@pytest.fixture(scope="module")
def x86_guest_possible() -> None:
    """Skip, naming what is missing, unless an x86_64 guest can boot here."""
    from harness import images
    from harness.errors import PrerequisiteError
    from harness.qemu.probe import QemuNotFoundError, resolve_binary

    try:
        resolve_binary("x86_64", None)
    except QemuNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        images.ensure("x86_64")
    except PrerequisiteError as exc:
        pytest.skip(f"cannot build the x86_64 guest image: {exc}")


def run_dir_of(qemu: int) -> Path | None:
    """The run directory QEMU's command line names (its QMP socket's directory)."""
    try:
        m = QMP_SOCKET.search(Path(f"/proc/{qemu}/cmdline").read_bytes())
    except OSError:
        return None
    return Path(m.group(1).decode()) if m else None


def is_qemu(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().startswith("qemu-system")
    except OSError:
        return False


@dataclass
class Running:
    """A harness entry point with its QEMU up: what must be gone after the kill."""

    qemu: int
    processes: list[int]
    ports: list[int]
    run_dir: Path


def wait_for_qemu(
    proc: subprocess.Popen[str], output: Path, ready: Callable[[], bool] = lambda: True
) -> Running:
    """Wait until a QEMU under ``proc`` listens on a port and ``ready()``; fail on exit."""
    deadline = time.monotonic() + UP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before its QEMU was up:\n{tail(output)}")
        qemus = [p for p in descendants(proc.pid) if is_qemu(p)]
        for qemu in qemus:
            ports = sorted({s.local_port for s in listening_sockets(qemu)})
            run_dir = run_dir_of(qemu)
            if ports and run_dir is not None and run_dir.is_dir() and ready():
                return Running(qemu, descendants(proc.pid), ports, run_dir)
        time.sleep(0.05)
    pytest.fail(f"no QEMU up within {UP_TIMEOUT:g}s:\n{tail(output)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def assert_nothing_outlives(victim: int, running: Running) -> float:
    """SIGKILL ``victim``; its processes gone within the bound, ports closed, dir swept."""
    assert process_alive(running.qemu)
    os.kill(victim, signal.SIGKILL)
    start = time.monotonic()
    while True:
        alive = [p for p in running.processes if process_alive(p)]
        listening = {s.local_port for s in tcp_sockets() if s.state == "LISTEN"}
        open_ports = sorted(listening & set(running.ports))
        if not alive and not open_ports:
            break
        waited = time.monotonic() - start
        if waited > DEATH_BOUND:
            for pid in alive:
                os.kill(pid, signal.SIGKILL)
            pytest.fail(f"{waited:.1f}s after the SIGKILL of {victim}: processes {alive}"
                        f" (QEMU {running.qemu}) alive, ports {open_ports} listening")  # fmt: skip
        time.sleep(0.005)
    gone = time.monotonic() - start
    # the next harness start sweeps the killed run's directory (keys first)
    swept = subprocess.run(
        [sys.executable, "-m", "harness", "sweep"], cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert swept.returncode == 0, swept.stderr
    assert not running.run_dir.exists(), (
        f"{running.run_dir} survived the next harness start:\n{swept.stdout}{swept.stderr}"
    )
    return gone


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[str], Path]]]:
    """Start a command in its own session, output to a file; kill what is left afterwards."""
    started: list[subprocess.Popen[str]] = []

    def start(argv: list[str], name: str) -> tuple[subprocess.Popen[str], Path]:
        output = tmp_path / f"{name}.log"
        with open(output, "w") as stream:
            proc = subprocess.Popen(
                argv, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT, text=True,
                start_new_session=True,
            )  # fmt: skip
        started.append(proc)
        return proc, output

    yield start
    for proc in started:
        for pid in [proc.pid, *descendants(proc.pid)]:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(30)


CLI_CASES = [
    pytest.param(["run", "smoke-vfio-edu", "--arch", "x86_64"], None, id="run"),
    pytest.param(
        ["boot", "--arch", "x86_64", "--viommu", "none", "--keep"], "guest up", id="boot-keep"
    ),
]


@pytest.mark.parametrize(("args", "marker"), CLI_CASES)
def test_cli_killed(
    x86_guest_possible: None,
    spawn: Callable[..., tuple[subprocess.Popen[str], Path]],
    args: list[str],
    marker: str | None,
) -> None:
    """``harness run`` killed once QEMU is up; ``harness boot --keep`` once the guest is."""
    proc, output = spawn([sys.executable, "-m", "harness", *args], "cli")
    running = wait_for_qemu(proc, output, lambda: marker is None or marker in tail(output))
    assert running.processes == [running.qemu], "the CLI starts QEMU and nothing else"
    gone = assert_nothing_outlives(proc.pid, running)
    print(f"harness {args[0]}: QEMU gone {gone * 1000:.0f} ms after the SIGKILL")


HOLD_TEST = textwrap.dedent(
    """
    import time

    def test_hold(boot_guest):
        boot_guest("x86_64", None, devices=())
        time.sleep(300)
    """
)


@pytest.mark.parametrize("victim", ["worker", "controller"])
def test_xdist_killed(
    x86_guest_possible: None,
    spawn: Callable[..., tuple[subprocess.Popen[str], Path]],
    tmp_path: Path,
    victim: str,
) -> None:
    """A pytest-xdist worker, or its controller, killed while a test holds a booted guest."""
    test_file = tmp_path / "test_hold.py"
    test_file.write_text(HOLD_TEST)
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "harness.pytest_plugin",
            "-n", "1", "--rootdir", str(tmp_path), "-q", str(test_file)]  # fmt: skip
    proc, output = spawn(argv, "pytest")
    running = wait_for_qemu(proc, output)
    worker = parent_of(running.qemu)
    assert worker is not None and worker != proc.pid and parent_of(worker) == proc.pid
    if victim == "worker":
        gone = assert_nothing_outlives(worker, running)
        # the controller sees the crash and ends the session (no test left to run)
        proc.wait(120)
        assert "crashed" in tail(output, 200), tail(output)
    else:  # the worker follows its controller: worker and QEMU go with it
        assert worker in running.processes
        gone = assert_nothing_outlives(proc.pid, running)
    print(f"xdist {victim}: QEMU gone {gone * 1000:.0f} ms after the SIGKILL")


MATRIX = textwrap.dedent(
    """
    name: kill
    accel: auto
    timeout: 600
    scenarios: [smoke-vfio-edu]
    qemu:
      installed: null
    kernels:
      default: null
    viommus:
      vtd:
        options:
          scalable: {scalable_mode: true, flts: false}
    """
)


def test_avocado_job_killed(
    x86_guest_possible: None,
    spawn: Callable[..., tuple[subprocess.Popen[str], Path]],
    tmp_path: Path,
) -> None:
    """``harness qualify`` killed while avocado's test process has its QEMU up."""
    pytest.importorskip("avocado", reason="avocado is not installed (pip install -e '.[qualify]')")
    matrix = tmp_path / "kill.yaml"
    matrix.write_text(MATRIX)
    argv = [sys.executable, "-m", "harness", "qualify", "--matrix", str(matrix),
            "--results", str(tmp_path / "results")]  # fmt: skip
    proc, output = spawn(argv, "qualify")
    running = wait_for_qemu(proc, output)
    # job -> avocado runner -> test process -> QEMU: all of them must go
    assert len(running.processes) >= 3, running.processes
    gone = assert_nothing_outlives(proc.pid, running)
    print(f"avocado job: runner, test and QEMU gone {gone * 1000:.0f} ms after the SIGKILL")
