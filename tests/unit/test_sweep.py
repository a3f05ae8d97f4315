"""Run directories record their owner; the sweep removes exactly those of dead runs.

Fake run directories in ``tmp_path`` with owners that are alive, dead, dead with their
PID reused, from another boot or another PID namespace, or without a record; real
processes stand in for a QEMU that still uses a dead run's directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.qemu import rundir
from harness.qemu.leaks import process_alive
from harness.qemu.lifetime import ProcessId, boot_id, identity
from harness.qemu.rundir import (
    KEY_FILES,
    OWNER_FILE,
    owner_of,
    pid_namespace,
    private_run_dir,
    remove_run_dir,
    run_base,
    stale_run_dirs,
    sweep,
)

pytestmark = pytest.mark.tier0


def me() -> ProcessId:
    ident = identity()
    assert ident is not None
    return ident


def dead_owner() -> ProcessId:
    """The identity a process had while it ran; it has exited and been reaped since."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)  # fmt: skip
    ident = identity(proc.pid)
    assert ident is not None
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait()
    return ident


def fake_run_dir(base: Path, name: str, owner: ProcessId | None, ns: str | None = None) -> Path:
    """A run directory as ``private_run_dir`` makes it, with key files, owned by ``owner``."""
    path = base / name
    path.mkdir(mode=0o700)
    for key in KEY_FILES:
        (path / key).write_text("PRIVATE KEY\n")
    if owner is not None:
        (path / OWNER_FILE).write_text(f"{owner}\n{ns or pid_namespace()}\n")
    return path


@pytest.fixture
def users() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes standing in for QEMUs; whatever the test leaves alive is killed."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def user_of(path: Path) -> subprocess.Popen[bytes]:
    """A process whose command line names a file in ``path``, as QEMU's does (-qmp unix:...)."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", f"unix:{path}/qmp.sock,server=on"]
    )


def test_private_run_dir_records_its_owner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert run_base() == tmp_path
    path = private_run_dir()
    try:
        assert path.parent == tmp_path and path.name.startswith("viommu-")
        assert path.stat().st_mode & 0o777 == 0o700
        assert (path / OWNER_FILE).stat().st_mode & 0o777 == 0o600
        assert owner_of(path) == me()
        assert stale_run_dirs([tmp_path]) == []
    finally:
        remove_run_dir(path)
    assert not path.exists()


def test_run_base_falls_back_to_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing"))
    assert run_base() == Path("/tmp")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert run_base() == Path("/tmp")


def test_sweep_removes_dead_runs_only(tmp_path: Path) -> None:
    live = me()
    dead = dead_owner()
    reused = ProcessId(live.pid, live.start + 1, live.boot)  # this PID, another process
    rebooted = ProcessId(live.pid, live.start, "another-boot")
    dirs = {
        "dead": fake_run_dir(tmp_path, "viommu-dead0001", dead),
        "reused": fake_run_dir(tmp_path, "viommu-reused01", reused),
        "rebooted": fake_run_dir(tmp_path, "viommu-boot0001", rebooted),
        "live": fake_run_dir(tmp_path, "viommu-live0001", live),
        "no-record": fake_run_dir(tmp_path, "viommu-none0001", None),
        "bad-record": fake_run_dir(tmp_path, "viommu-bad00001", None),
        "other-ns": fake_run_dir(tmp_path, "viommu-ns000001", dead, ns="pid:[1]"),
        "not-ours": fake_run_dir(tmp_path, "other-dead0001", dead),
    }
    (dirs["bad-record"] / OWNER_FILE).write_text("garbage\n")
    target = fake_run_dir(tmp_path, "elsewhere", dead)
    (tmp_path / "viommu-link0001").symlink_to(target)
    lines: list[str] = []

    report = sweep([tmp_path], log=lines.append)

    gone = {name for name, path in dirs.items() if not path.exists()}
    assert gone == {"dead", "reused", "rebooted"}
    assert sorted(report.removed) == sorted([dirs["dead"], dirs["reused"], dirs["rebooted"]])
    assert sorted(report.owners) == sorted([dead.pid, live.pid, live.pid])
    assert target.exists() and (tmp_path / "viommu-link0001").is_symlink()
    assert (dirs["live"] / "id_ed25519").exists()
    assert report.killed == [] and report.problems == []
    pids = ", ".join(str(p) for p in sorted({dead.pid, live.pid}))
    assert lines == [f"[harness] swept 3 run directories of dead runs (pids {pids})"]


def test_sweep_kills_a_dead_runs_qemu_and_spares_a_live_runs(
    tmp_path: Path, users: list[subprocess.Popen[bytes]]
) -> None:
    dead_dir = fake_run_dir(tmp_path, "viommu-dead0002", dead_owner())
    live_dir = fake_run_dir(tmp_path, "viommu-live0002", me())
    # a directory whose name extends the dead one's is not the dead run's
    near_dir = fake_run_dir(tmp_path, "viommu-dead00021", me())
    orphan, bystander, near = user_of(dead_dir), user_of(live_dir), user_of(near_dir)
    users += [orphan, bystander, near]
    deadline = time.monotonic() + 10
    while not all(rundir.users_of(d) for d in (dead_dir, live_dir, near_dir)):
        assert time.monotonic() < deadline, "stand-in processes did not start"
        time.sleep(0.02)
    lines: list[str] = []

    report = sweep([tmp_path], log=lines.append)

    assert report.killed == [orphan.pid]
    assert orphan.wait(5) == -9
    assert process_alive(bystander.pid) and process_alive(near.pid)
    assert not dead_dir.exists() and live_dir.exists() and near_dir.exists()
    assert len(lines) == 1 and lines[0].endswith("; killed 1 QEMU"), lines


def test_sweep_removes_key_files_before_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = fake_run_dir(tmp_path, "viommu-keys0001", dead_owner())
    seen: list[list[str]] = []
    real_rmtree = shutil.rmtree

    def rmtree(target: Path, ignore_errors: bool = False) -> None:
        seen.append(sorted(os.listdir(target)))
        real_rmtree(target, ignore_errors=ignore_errors)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    sweep([tmp_path], log=lambda line: None)
    assert seen == [[OWNER_FILE]]
    assert not path.exists()


def test_sweep_says_nothing_when_nothing_is_stale(tmp_path: Path) -> None:
    fake_run_dir(tmp_path, "viommu-live0003", me())
    lines: list[str] = []
    report = sweep([tmp_path], log=lines.append)
    assert lines == [] and report.line() == "" and report.removed == []


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make a directory another user owns")
def test_sweep_leaves_other_users_directories(tmp_path: Path) -> None:
    path = fake_run_dir(tmp_path, "viommu-other001", dead_owner())
    os.chown(path, 65534, 65534)
    assert sweep([tmp_path], log=lambda line: None).removed == []
    assert (path / "id_ed25519").exists()


def test_process_id_judges_zombies_reuse_and_reboots() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ident = identity(proc.pid)
        assert ident is not None and ident.alive()
        assert not ProcessId(ident.pid, ident.start + 1, ident.boot).alive()
        assert not ProcessId(ident.pid, ident.start, "not-" + boot_id()).alive()
        assert ProcessId.parse(str(ident)) == ident
        proc.kill()
        deadline = time.monotonic() + 5
        while ident.alive():  # killed but not yet reaped: a zombie is dead
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert os.path.exists(f"/proc/{proc.pid}")
    finally:
        proc.kill()
        proc.wait()
    assert not ident.alive()
