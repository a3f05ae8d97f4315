"""harness.klog on captured kernel reports, and the kernel-health row built from it."""
# ruff: noqa: E501  (captured kernel log lines are kept whole)

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness import klog
from harness.agent.client import AgentError
from harness.scenarios.runner import SPLATS_FILE, kernel_health

WARN = """\
[   12.000001] vfio-pci 0000:00:02.0: enabling device (0000 -> 0002)
[   12.345678] ------------[ cut here ]------------
[   12.345690] WARNING: CPU: 1 PID: 321 at drivers/iommu/iommufd/viommu.c:142 iommufd_vdevice_destroy+0x5c/0x80
[   12.345700] Modules linked in:
[   12.345710] CPU: 1 UID: 0 PID: 321 Comm: python3 Not tainted 7.3.4 #1
[   12.345720] Call trace:
[   12.345730]  iommufd_vdevice_destroy+0x5c/0x80
[   12.345740]  iommufd_object_remove+0x10c/0x1a0
[   12.345750] ---[ end trace 0000000000000000 ]---
[   12.400000] edu: DMA done
"""

KASAN = """\
[   30.100000] ==================================================================
[   30.100001] BUG: KASAN: slab-use-after-free in iommufd_hw_queue_destroy+0x40/0x90
[   30.100002] Read of size 8 at addr ffff0000c1234560 by task python3/400
"""

RCU_STALL = """\
[   22.123456] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:
[   22.123460] rcu:     1-...!: (0 ticks this GP) idle=1234/0/0x0 softirq=10/10 fqs=0
[   22.200000] rcu: rcu_sched kthread timer wakeup didn't happen for 20998 jiffies! g1 f0x0
"""

LOCKDEP = "[    5.0] WARNING: possible circular locking dependency detected\n"
REFCOUNT = "[    6.0] refcount_t: underflow; use-after-free.\n"
SOFT_LOCKUP = "[   40.0] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [python3:99]\n"
UBSAN = "[    7.0] UBSAN: shift-out-of-bounds in drivers/iommu/io-pgtable-arm.c:300:20\n"

#: lines a healthy nesting run prints that must not count as reports
HEALTHY = """\
[    1.0] DMAR: [DMA Write NO_PASID] Request device [00:03.0] fault addr 0x8000000 [fault reason 0x71] SM: Present bit in first-level paging entry is clear
[    1.1] arm-smmu-v3 arm-smmu-v3.0.auto: event 0x10 received:
[    1.2] vfio-pci 0000:00:02.0: resetting
[    1.3] viommu-harness-mark-0123456789ab
[    1.4] rcu: Hierarchical RCU implementation.
[    1.5] Warning: unable to open an initial console.
"""


@pytest.mark.parametrize(
    ("text", "kind", "first"),
    [
        (WARN, "warning", "WARNING: CPU: 1 PID: 321 at drivers/iommu/iommufd/viommu.c:142"),
        (KASAN, "kasan", "BUG: KASAN: slab-use-after-free"),
        (RCU_STALL, "rcu-stall", "rcu: INFO: rcu_sched detected stalls"),
        (LOCKDEP, "lockdep", "WARNING: possible circular locking dependency"),
        (REFCOUNT, "refcount", "refcount_t: underflow"),
        (SOFT_LOCKUP, "soft-lockup", "watchdog: BUG: soft lockup"),
        (UBSAN, "ubsan", "UBSAN: shift-out-of-bounds"),
    ],
)
def test_each_report_kind_is_found_with_its_first_line(text: str, kind: str, first: str) -> None:
    splats = klog.find_splats(HEALTHY + text)
    assert splats, f"no report found in:\n{text}"
    assert splats[0].kind == kind
    assert first in splats[0].first_line


WARN_73 = """\
[  180.442065] ------------[ cut here ]------------
[  180.442158] WARNING: drivers/iommu/iommufd/iommufd_private.h:241 at iommufd_device_unbind+0x6b/0xa0, CPU#0: python3/78
[  180.443614] CPU: 0 UID: 0 PID: 78 Comm: python3 Tainted: G        W           7.3.4 #2
"""


@pytest.mark.parametrize(
    ("text", "title"),
    [
        (WARN_73, "WARNING: drivers/iommu/iommufd/iommufd_private.h:241 at iommufd_device_unbind"),
        (WARN, "WARNING: at drivers/iommu/iommufd/viommu.c:142 iommufd_vdevice_destroy"),
    ],
)
def test_a_warns_title_drops_time_offsets_cpu_and_task(text: str, title: str) -> None:
    """7.x prints ``WARNING: file:line at fn+off/size, CPU#n: comm/pid`` (older kernels
    ``WARNING: CPU: n PID: p at file:line fn+off/size``); both are warnings, and their
    titles are what a repeat of the same report has in common."""
    (splat,) = klog.find_splats(HEALTHY + text)
    assert splat.kind == "warning" and splat.title == title


def test_a_warn_keeps_its_call_trace_up_to_the_end_marker() -> None:
    (splat,) = klog.find_splats(WARN)
    assert splat.first_line.endswith("iommufd_vdevice_destroy+0x5c/0x80")
    assert any("iommufd_object_remove" in line for line in splat.lines)
    assert splat.lines[-1].endswith("---[ end trace 0000000000000000 ]---")
    assert not any("edu: DMA done" in line for line in splat.lines)


def test_a_healthy_log_has_no_reports() -> None:
    assert klog.find_splats(HEALTHY) == []


def test_stalls_are_told_apart_from_other_reports() -> None:
    assert [s.kind for s in klog.stalls(WARN + RCU_STALL + SOFT_LOCKUP)] == [
        "rcu-stall",
        "rcu-stall",
        "soft-lockup",
    ]


class _Vm:
    def __init__(self, console: str) -> None:
        self._console = console

    def console_text(self) -> str:
        return self._console


class _Guest:
    """A guest whose agent answers ``system.dmesg`` with a captured log (or fails)."""

    def __init__(self, dmesg: str | None, artifacts: Path, console: str = "") -> None:
        self.dmesg = dmesg
        self.artifacts = artifacts
        self.vm = _Vm(console)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def call(self, method: str, **params: Any) -> Any:
        self.calls.append((method, params))
        if self.dmesg is None:
            raise AgentError("system.dmesg: LookupError: mark no longer in the kernel log")
        return self.dmesg


def test_kernel_health_row_passes_on_a_clean_log(tmp_path: Path) -> None:
    guest = _Guest(HEALTHY, tmp_path)
    row = kernel_health(guest, "mark-1")  # type: ignore[arg-type]
    assert row.ok and row.kind == "effect"
    assert guest.calls[0] == ("system.dmesg", {"since": "mark-1", "timeout": 30})
    assert not (tmp_path / SPLATS_FILE).exists()


def test_kernel_health_row_fails_on_a_captured_warn(tmp_path: Path) -> None:
    """The mutation test of the kernel-health row: a WARN in the log fails it."""
    row = kernel_health(_Guest(HEALTHY + WARN, tmp_path), "m")  # type: ignore[arg-type]
    assert not row.ok
    assert "viommu.c:142" in str(row.got)
    saved = (tmp_path / SPLATS_FILE).read_text()
    assert "iommufd_object_remove" in saved


def test_kernel_health_falls_back_to_the_console(tmp_path: Path) -> None:
    row = kernel_health(_Guest(None, tmp_path, console=KASAN), "m")  # type: ignore[arg-type]
    assert not row.ok and "console" in row.note and "KASAN" in str(row.got)
