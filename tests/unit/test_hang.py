"""Wedged-guest detection: a lockup on the console plus an idle QEMU is ``hung``, in bound.

The machine is never launched: its console log is written by the test, and QEMU's CPU
time comes from a fake (``_cpu_seconds``) growing at a chosen rate of real time, or from a
real idle or busy host process.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.qemu import machine as machine_mod
from harness.qemu.description import Machine
from harness.qemu.machine import (
    WEDGED,
    MachineHealth,
    QemuMachine,
    cpu_used,
    lockup_signature,
)

pytestmark = pytest.mark.tier0

HANG = 0.6
#: slack for a loaded 2-core host between "hung" being true and health() saying so
SLACK = 1.5

BOOT = """\
[    0.000000] Linux version 7.3.4 (viommu-harness) #1 SMP PREEMPT_DYNAMIC
[    1.234567] Run /init as init process
viommu-init: ready after 0.8s
"""
RCU_STALL = """\
[   22.101010] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:
[   22.101500] rcu: 	0-...!: (1 GPs behind) idle=8f4/1/0x4000000000000000 softirq=900/901 fqs=0
[   22.102000] rcu: rcu_sched kthread timer wakeup didn't happen for 5251 jiffies! g1713 f0x0 \
RCU_GP_WAIT_FQS(5) ->state=0x402
[   22.102100] rcu: 	Possible timer handling issue on cpu=0 timer-softirq=414
[   22.103000]  smp_call_function_many_cond+0x123/0x4c0
"""
SOFT_LOCKUP = "[   48.000001] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [kworker/1:2:97]\n"


def test_lockup_signature_names_the_first_lockup_line() -> None:
    assert lockup_signature(BOOT) is None
    assert lockup_signature(BOOT + RCU_STALL + SOFT_LOCKUP) == (
        "RCU stall",
        "rcu: INFO: rcu_sched detected stalls on CPUs/tasks:",
    )
    assert lockup_signature(BOOT + SOFT_LOCKUP + RCU_STALL) == (
        "soft lockup",
        "watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [kworker/1:2:97]",
    )
    kind, line = lockup_signature(RCU_STALL.splitlines()[2]) or ("", "")
    assert kind == "RCU stall" and "timer wakeup didn't happen for 5251 jiffies" in line
    assert lockup_signature("rcu: INFO: rcu_preempt self-detected stall on CPU\n") is not None
    # a boot log talking about RCU is no stall
    assert lockup_signature("[ 0.1] rcu: Hierarchical RCU implementation.\n") is None


def test_cpu_used_over_the_window() -> None:
    samples = [(0.0, 10.0), (1.0, 10.5), (2.0, 10.5), (3.0, 10.52)]
    assert cpu_used(samples, 2.0) == pytest.approx(0.02)  # 1.0 -> 3.0
    assert cpu_used(samples, 3.0) == pytest.approx(0.52)
    assert cpu_used(samples, 3.5) is None  # not enough history yet
    assert cpu_used([], 1.0) is None


@pytest.fixture
def make_vm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., QemuMachine]]:
    """Unlaunched machines with a short hang timeout (and idle window); closed afterwards."""
    monkeypatch.setattr(machine_mod, "MIN_IDLE_WINDOW", HANG / 2)
    made: list[QemuMachine] = []

    def make(console: str, hang_timeout: float | None = HANG) -> QemuMachine:
        machine = Machine(arch="x86_64", kernel=Path("/k/bzImage"), initrd=Path("/k/r.cpio"))
        vm = QemuMachine(machine, tmp_path / f"vm{len(made)}", hang_timeout=hang_timeout,
                         log=lambda msg: None)  # fmt: skip
        vm.console_log.write_text(console)
        made.append(vm)
        return vm

    yield make
    for vm in made:
        vm.close()


def fake_cpu(vm: QemuMachine, monkeypatch: pytest.MonkeyPatch, rate: float) -> None:
    """QEMU's CPU time grows by ``rate`` CPU seconds per second of real time."""
    start = time.monotonic()
    monkeypatch.setattr(vm, "_cpu_seconds", lambda: 100.0 + rate * (time.monotonic() - start))


def wait_health(vm: QemuMachine, within: float) -> tuple[MachineHealth, float]:
    """Poll health(include_hang=True) like a waiter does; (the result, seconds waited)."""
    start = time.monotonic()
    while True:
        health = vm.health(include_hang=True)
        took = time.monotonic() - start
        if health.cause is not None or took > within:
            return health, took
        time.sleep(0.05)


@pytest.mark.parametrize("rate", [0.0, 0.002])  # stopped dead, or barely ticking
def test_lockup_and_idle_qemu_is_hung_within_the_hang_timeout(
    make_vm: Callable[..., QemuMachine], monkeypatch: pytest.MonkeyPatch, rate: float
) -> None:
    vm = make_vm(BOOT + RCU_STALL)
    fake_cpu(vm, monkeypatch, rate)
    health, took = wait_health(vm, HANG + SLACK + 5)
    assert health.kind == "hung", health
    assert HANG - 0.1 <= took < HANG + SLACK, took
    assert health.cause is not None
    assert health.cause.startswith(
        f"guest hung: {WEDGED}: RCU stall on the console"
        " ('rcu: INFO: rcu_sched detected stalls on CPUs/tasks:') and QEMU idle"
    ), health.cause
    assert "\n" not in health.cause
    # only waiters hear of it: the guest may be kept for poking
    assert vm.health().cause is None
    # QMP commands waiting on a wedged guest give up too
    watched = vm._qmp_watch()
    assert watched is not None and watched.startswith(f"guest hung: {WEDGED}: RCU stall"), watched


def test_soft_lockup_is_named(
    make_vm: Callable[..., QemuMachine], monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = make_vm(BOOT + SOFT_LOCKUP)
    fake_cpu(vm, monkeypatch, 0.0)
    health, _ = wait_health(vm, HANG + SLACK)
    assert health.kind == "hung" and health.cause is not None
    assert f"{WEDGED}: soft lockup on the console ('watchdog: BUG: soft lockup" in health.cause


@pytest.mark.parametrize(
    ("console", "rate", "why"),
    [
        (BOOT + RCU_STALL, 0.5, "QEMU still busy: the guest may recover"),
        (BOOT + RCU_STALL, 0.017, "QEMU at an idle healthy guest's 1.7 %: not wedged"),
        (BOOT, 0.0, "idle but nothing on the console: a quiet, healthy guest"),
    ],
)
def test_not_hung_without_both_signs(
    make_vm: Callable[..., QemuMachine],
    monkeypatch: pytest.MonkeyPatch,
    console: str,
    rate: float,
    why: str,
) -> None:
    vm = make_vm(console)
    fake_cpu(vm, monkeypatch, rate)
    health, _ = wait_health(vm, 3 * HANG)
    assert health.cause is None, f"{why}: {health}"
    assert vm.stall() is None, why


def test_a_wedge_that_ends_is_no_longer_hung(
    make_vm: Callable[..., QemuMachine], monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = make_vm(BOOT + RCU_STALL)
    fake_cpu(vm, monkeypatch, 0.0)
    health, _ = wait_health(vm, HANG + SLACK)
    assert health.kind == "hung"
    fake_cpu(vm, monkeypatch, 1.0)  # QEMU runs again: the guest got going
    time.sleep(HANG + 0.2)
    assert vm.health(include_hang=True).cause is None


def test_a_real_idle_process_with_a_stall_on_the_console_is_hung(
    make_vm: Callable[..., QemuMachine],
) -> None:
    """Real /proc CPU accounting: a sleeping process is idle, a spinning one is not."""
    idle = make_vm(BOOT + RCU_STALL)
    busy = make_vm(BOOT + RCU_STALL)
    sleeper = subprocess.Popen(["sleep", "60"])
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        idle._proc, busy._proc = sleeper, spinner
        health, took = wait_health(idle, HANG + SLACK + 2)
        assert health.kind == "hung" and took < HANG + SLACK + 2, (health, took)
        assert health.cause is not None and "QEMU idle (0.00s CPU in 0.6s)" in health.cause
        health, _ = wait_health(busy, 3 * HANG)
        assert health.cause is None, health
    finally:
        idle._proc = busy._proc = None
        for proc in (sleeper, spinner):
            proc.kill()
            proc.wait()


def test_a_stall_printed_while_qemu_idles_is_seen(
    make_vm: Callable[..., QemuMachine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The console is rescanned when it grows (the scan is cached by the console's size)."""
    vm = make_vm(BOOT)
    fake_cpu(vm, monkeypatch, 0.0)
    health, _ = wait_health(vm, 2 * HANG)
    assert health.cause is None, health
    with vm.console_log.open("a") as console:
        console.write(SOFT_LOCKUP)
    health, took = wait_health(vm, HANG + SLACK)
    assert health.kind == "hung" and took < SLACK, (health, took)
    assert health.cause is not None and "soft lockup on the console" in health.cause
