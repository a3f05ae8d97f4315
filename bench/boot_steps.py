"""The steps of a guest's boot, each against its own measured floor (bench/boot.py's table).

A guest's launch -> agent ready is five consecutive steps; each has a floor, what the step
costs when only the work it cannot avoid is left, measured in the same run:

==================  =========================================  ===============================
step                time                                       floor
==================  =========================================  ===============================
launch_to_kernel    host marker - guest uptime at ready        the floor guest's, likewise
                    (QEMU start, firmware, kernel + initrd
                    load)
kernel_to_init      "Run /init" (guest clock)                  the floor guest's "Run /init"
init_to_ready       init's "ready after" - "Run /init"         a second sshd start until it
                                                               listens, in the booted guest
marker_to_ssh       host: marker -> SSH key accepted           a second SSH connect + auth
ssh_to_agent        host: SSH -> agent.hello answered          a second agent start, new conn.
==================  =========================================  ===============================

The steps add up to agent ready (launch_to_kernel takes the console-read slack); their
floors add up to what agent ready could be with every step at its floor, shown as a ratio
to the bare-initramfs floor boot, so the goal (a ratio to that floor) reads as within
reach of these steps or not.  The last three floors are warm (programs already read and,
under TCG, already translated): a lower bound of what a first start could cost.
Pure: parses consoles and takes per-run figures in seconds.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

RUN_INIT = re.compile(r"^\[\s*([0-9.]+)\] Run /init as init process", re.M)
INIT_READY = re.compile(r"viommu-init: ready after ([0-9.]+)s")
FLOOR_UPTIME = re.compile(r"floor-init: uptime ([0-9.]+) s")
UNPACK_START = re.compile(r"^\[\s*([0-9.]+)\] Unpacking initramfs\.\.\.", re.M)
UNPACK_END = re.compile(r"^\[\s*([0-9.]+)\] Freeing initrd memory:", re.M)

#: Figures of one run, in seconds.  Floor boot: ``marker`` (host, launch -> marker),
#: ``uptime`` (guest clock at the marker), and the console's ``kernel_to_init`` /
#: ``unpack``.  Guest: ``marker`` / ``ssh`` / ``agent`` (host, from launch), ``ready``
#: (guest clock at init's ready line), the console's, and the warm floors measured in the
#: booted guest: ``sshd_restart``, ``ssh_reconnect``, ``agent_restart`` (and the facts
#: ``process_start``, ``python_start``, ``exec_true``).
Run = dict[str, float]


@dataclass(frozen=True)
class Step:
    """One step of the boot: its median time and its median measured floor, in seconds."""

    name: str
    took: float
    floor: float
    #: how the floor was measured, for the reader
    how: str
    #: figures that judge nothing but say where the step's time goes: (name, seconds, how)
    facts: tuple[tuple[str, float, str], ...] = ()

    @property
    def ratio(self) -> float:
        """Times its own floor."""
        return self.took / self.floor if self.floor > 0 else math.nan


def console_times(console: str) -> dict[str, float]:
    """Guest-clock figures from a console: ``kernel_to_init``, ``ready``, ``unpack``.

    ``ready`` is init's own "ready after" uptime (or the floor init's uptime line);
    ``unpack`` is the kernel's initramfs unpack ("Unpacking initramfs..." to "Freeing
    initrd memory"; it runs beside other initcalls, so it is not all on the way to /init).
    A figure whose lines are missing is left out.
    """
    times: dict[str, float] = {}
    if run_init := RUN_INIT.search(console):
        times["kernel_to_init"] = float(run_init.group(1))
    if ready := INIT_READY.search(console) or FLOOR_UPTIME.search(console):
        times["ready"] = float(ready.group(1))
    start, end = UNPACK_START.search(console), UNPACK_END.search(console)
    if start and end:
        times["unpack"] = float(end.group(1)) - float(start.group(1))
    return times


def _median(values: Iterable[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


def median(runs: Sequence[Run], key: str) -> float:
    """The median of ``key`` over the runs that have it; NaN if none has."""
    return _median(run.get(key, math.nan) for run in runs)


def span(runs: Sequence[Run], end: str, start: str | None = None) -> float:
    """The median over runs of ``run[end] - run[start]`` (of ``run[end]`` without a start)."""
    return _median(
        run.get(end, math.nan) - (run.get(start, math.nan) if start else 0.0) for run in runs
    )


def steps(floors: Sequence[Run], guests: Sequence[Run]) -> list[Step]:
    """The five steps, each the median over runs of its per-run time and floor."""
    return [
        Step(
            "launch_to_kernel",
            span(guests, "marker", "ready"),
            span(floors, "marker", "ready"),
            "the floor guest's launch to its kernel's clock at the marker",
        ),
        Step(
            "kernel_to_init",
            span(guests, "kernel_to_init"),
            span(floors, "kernel_to_init"),
            "the floor guest's kernel to /init (its initramfs: one static binary)",
            (
                ("initramfs_unpack", median(guests, "unpack"), "kernel timestamps"),
                ("floor_initramfs_unpack", median(floors, "unpack"), "the floor guest's"),
            ),
        ),
        Step(
            "init_to_ready",
            span(guests, "ready", "kernel_to_init"),
            median(guests, "sshd_restart"),
            "a second sshd start until it listens, in the booted guest (warm)",
            (("process_start", median(guests, "process_start"), "one /bin/true, warm"),),
        ),
        Step(
            "marker_to_ssh",
            span(guests, "ssh", "marker"),
            median(guests, "ssh_reconnect"),
            "a second SSH connect + auth to the booted guest (warm)",
        ),
        Step(
            "ssh_to_agent",
            span(guests, "agent", "ssh"),
            median(guests, "agent_restart"),
            "a second agent start on a new SSH connection (warm)",
            (
                ("python_start", median(guests, "python_start"), "python3 -I -S -c pass, warm"),
                ("exec_true", median(guests, "exec_true"), "true over a new SSH channel, warm"),
            ),
        ),
    ]


def step_lines(prefix: str, table: Sequence[Step], floor: float, goal: float) -> list[str]:
    """``name: value unit`` lines: each step, its floor and facts; both sums against ``floor``.

    ``floor`` is the bare-initramfs boot (launch -> marker); ``goal`` the wanted ratio of
    agent ready to it.
    """
    lines: list[str] = []
    for step in table:
        lines.append(
            f"{prefix}.step.{step.name}: {step.took:.2f} s ({step.ratio:.2f}x its floor, "
            f"{step.took - step.floor:+.2f} s)"
        )
        lines.append(
            f"{prefix}.step.{step.name}.floor: {step.floor:.2f} s "
            f"({step.floor / floor:.2f}x floor; {step.how})"
        )
        for name, seconds, how in step.facts:
            lines.append(f"{prefix}.step.{step.name}.{name}: {seconds:.2f} s ({how})")
    took = sum(step.took for step in table)
    floors = sum(step.floor for step in table)
    lines.append(f"{prefix}.steps_sum: {took:.2f} s ({took / floor:.2f}x floor)")
    if floors / floor <= goal:
        reach = f"within reach: {goal * floor - floors:.2f} s to spare at every step's floor"
    else:
        reach = f"out of reach while these steps remain: {floors - goal * floor:.2f} s over"
    lines.append(
        f"{prefix}.step_floors_sum: {floors:.2f} s ({floors / floor:.2f}x floor; "
        f"goal {goal:.2f}x {reach})"
    )
    return lines
