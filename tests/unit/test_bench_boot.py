"""bench/boot_steps.py: console figures, the step table and its lines (no guest)."""

from __future__ import annotations

import math

import pytest

from bench.boot_steps import Step, console_times, step_lines, steps

pytestmark = pytest.mark.tier0

#: the lines that matter, as an x86_64 guest of this harness printed them (Dec 2026)
GUEST_CONSOLE = """\
[    0.000000] Linux version 7.3.4-viommu-harness (viommu-harness@images)
[    0.638186] Unpacking initramfs...
[    1.548753] Freeing initrd memory: 108408K
[    1.609479] Freeing unused kernel image (initmem) memory: 1048K
[    1.612644] Run /init as init process
viommu-init: host key from fw_cfg
viommu-init: ready after 2.24s: sshd on 10.0.2.15/24 port 22

VIOMMU-HARNESS-READY
"""

FLOOR_CONSOLE = """\
[    0.630001] Unpacking initramfs...
[    0.641001] Freeing initrd memory: 316K
[    0.770000] Run /init as init process

floor-init: uptime 0.790 s
VIOMMU-FLOOR-READY
"""


def test_console_times_of_a_guest() -> None:
    times = console_times(GUEST_CONSOLE)
    assert times["kernel_to_init"] == pytest.approx(1.612644)
    assert times["ready"] == pytest.approx(2.24)
    assert times["unpack"] == pytest.approx(1.548753 - 0.638186)


def test_console_times_of_the_floor_guest() -> None:
    times = console_times(FLOOR_CONSOLE)
    assert times == pytest.approx({"kernel_to_init": 0.77, "ready": 0.79, "unpack": 0.011})


def test_console_times_leave_out_what_the_console_lacks() -> None:
    assert console_times("[    0.1] Unpacking initramfs...\nno init yet\n") == {}


def test_steps_are_medians_of_per_run_spans() -> None:
    floors = [
        {"marker": 1.5, "ready": 0.8, "kernel_to_init": 0.77, "unpack": 0.01},
        {"marker": 1.7, "ready": 0.8, "kernel_to_init": 0.79},
        {"marker": 1.6, "ready": 0.9, "kernel_to_init": 0.75},
    ]
    guest = {"marker": 3.0, "ready": 2.2, "kernel_to_init": 1.6, "ssh": 3.5, "agent": 4.0}
    guest |= {"unpack": 0.9}
    warm = {"sshd_restart": 0.2, "ssh_reconnect": 0.25, "agent_restart": 0.3}
    warm |= {"process_start": 0.02, "python_start": 0.1, "exec_true": 0.05}
    guests = [guest | warm, guest | warm | {"marker": 3.4, "ssh": 3.6}]
    table = {step.name: step for step in steps(floors, guests)}
    assert list(table) == [
        "launch_to_kernel",
        "kernel_to_init",
        "init_to_ready",
        "marker_to_ssh",
        "ssh_to_agent",
    ]
    # per run, then the median: (0.8, 1.2) -> 1.0; the floors' (0.7, 0.9, 0.7) -> 0.7
    assert table["launch_to_kernel"].took == pytest.approx(1.0)
    assert table["launch_to_kernel"].floor == pytest.approx(0.7)
    assert table["kernel_to_init"].took == pytest.approx(1.6)
    assert table["kernel_to_init"].floor == pytest.approx(0.77)
    assert table["init_to_ready"].took == pytest.approx(0.6)
    assert table["init_to_ready"].floor == pytest.approx(0.2)
    assert table["marker_to_ssh"].took == pytest.approx(0.35)  # (0.5, 0.2)
    assert table["ssh_to_agent"].took == pytest.approx(0.45)  # (0.5, 0.4)
    assert table["ssh_to_agent"].ratio == pytest.approx(1.5)
    facts = {name: value for step in table.values() for name, value, _ in step.facts}
    assert facts == pytest.approx(
        {"initramfs_unpack": 0.9, "floor_initramfs_unpack": 0.01, "process_start": 0.02,
         "python_start": 0.1, "exec_true": 0.05}
    )  # fmt: skip


def test_a_run_without_a_figure_does_not_count() -> None:
    guests = [{"marker": 3.0, "ready": 2.0}, {"marker": 9.0}]  # no ready line in run 2
    table = {step.name: step for step in steps([], guests)}
    assert table["launch_to_kernel"].took == pytest.approx(1.0)
    assert math.isnan(table["launch_to_kernel"].floor)
    assert math.isnan(table["init_to_ready"].took)


def test_lines_say_each_step_against_its_floor_and_the_sum_against_the_goal() -> None:
    table = [Step("a", 1.2, 0.4, "how a", (("x", 0.25, "how x"),)), Step("b", 0.6, 0.5, "how b")]
    lines = step_lines("boot.x86_64.tcg", table, floor=1.0, goal=1.3)
    assert lines[:4] == [
        "boot.x86_64.tcg.step.a: 1.20 s (3.00x its floor, +0.80 s)",
        "boot.x86_64.tcg.step.a.floor: 0.40 s (0.40x floor; how a)",
        "boot.x86_64.tcg.step.a.x: 0.25 s (how x)",
        "boot.x86_64.tcg.step.b: 0.60 s (1.20x its floor, +0.10 s)",
    ]
    assert lines[-2] == "boot.x86_64.tcg.steps_sum: 1.80 s (1.80x floor)"
    assert lines[-1] == (
        "boot.x86_64.tcg.step_floors_sum: 0.90 s (0.90x floor; goal 1.30x within reach:"
        " 0.40 s to spare at every step's floor)"
    )
    over = step_lines("p", table, floor=0.5, goal=1.3)[-1]
    assert over == (
        "p.step_floors_sum: 0.90 s (1.80x floor; goal 1.30x out of reach while these steps"
        " remain: 0.25 s over)"
    )
