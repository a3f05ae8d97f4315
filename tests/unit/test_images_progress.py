"""Progress reporting of image builds: estimation and how often lines are printed."""

from __future__ import annotations

import io

import pytest

from harness.images.progress import (
    StepEstimate,
    StreamProgress,
    describe_progress,
    format_duration,
    is_kbuild_step,
)

pytestmark = pytest.mark.tier0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("line", "is_step"),
    [
        ("  CC      drivers/iommu/iommufd/main.o", True),
        ("  HOSTCC  scripts/basic/fixdep", True),
        ("  LD      vmlinux.o", True),
        ("  AS      arch/x86/entry/entry_64.o", True),
        ("  OBJCOPY arch/x86/boot/setup.bin", True),
        ("  Kernel: arch/x86/boot/bzImage is ready  (#1)", False),
        ("make[1]: Entering directory '/tmp/o'", False),
        ("drivers/x.c:12:3: warning: unused variable", False),
        ("", False),
    ],
)
def test_kbuild_steps_are_recognised(line: str, is_step: bool) -> None:
    assert is_kbuild_step(line) is is_step


def test_estimate_counts_steps_against_the_expected_total() -> None:
    estimate = StepEstimate(4)
    assert estimate.feed("  CC      a.o")
    assert not estimate.feed("warning: x")
    assert estimate.fraction == 0.25
    for _ in range(10):
        estimate.feed("  CC      b.o")
    assert estimate.steps == 11
    assert estimate.fraction == 0.99


def test_estimate_with_no_expectation_does_not_divide_by_zero() -> None:
    estimate = StepEstimate(0)
    estimate.feed("  CC      a.o")
    assert estimate.fraction == 0.99


def test_durations_and_progress_text() -> None:
    assert format_duration(42.9) == "42s"
    assert format_duration(185) == "3m05s"
    assert format_duration(3720) == "1h02m"
    assert describe_progress(0.5, 120, "CC x.o") == " 50% 2m00s elapsed, ~2m00s left: CC x.o"
    assert describe_progress(None, 5) == "5s elapsed"


def test_log_output_prints_about_every_ten_percent() -> None:
    stream = io.StringIO()
    clock = FakeClock()
    progress = StreamProgress(stream, is_tty=False, clock=clock)
    progress.begin("kernel x86_64: compile")
    for step in range(1, 1001):
        clock.now = step * 0.1
        progress.update(step / 1000, "CC x.o")
    progress.end()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[images] kernel x86_64: compile ..."
    assert lines[-1] == "[images] kernel x86_64: compile: done in 1m40s"
    assert 9 <= len(lines) - 2 <= 13
    assert "\r" not in stream.getvalue()


def test_log_output_without_fraction_prints_every_thirty_seconds() -> None:
    stream = io.StringIO()
    clock = FakeClock()
    progress = StreamProgress(stream, is_tty=False, clock=clock)
    progress.begin("rootfs")
    for second in range(1, 101):
        clock.now = float(second)
        progress.update(None, "downloading")
    assert len(stream.getvalue().splitlines()) == 1 + 3


def test_tty_output_redraws_one_line_throttled() -> None:
    stream = io.StringIO()
    clock = FakeClock()
    progress = StreamProgress(stream, is_tty=True, clock=clock)
    progress.begin("compile")
    for step in range(100):
        clock.now = step * 0.01
        progress.update(step / 100, "CC x.o")
    assert 3 <= stream.getvalue().count("\r") <= 6
    progress.end()
    assert stream.getvalue().endswith("compile: done in 0s\n")


def test_failure_prints_the_log_tail() -> None:
    stream = io.StringIO()
    progress = StreamProgress(stream, is_tty=False)
    progress.begin("compile")
    progress.failed("make: exited with status 2; log: /x/build.log", "line 1\nError 2")
    text = stream.getvalue()
    assert "FAILED: make: exited with status 2; log: /x/build.log" in text
    assert "    line 1\n    Error 2\n" in text
