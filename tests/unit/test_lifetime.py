"""Children die with the harness process that owns them, even when it is SIGKILLed.

Real processes: an owner that starts ``sleep`` through ``lifetime.popen`` (from its main
thread and from a thread that has ended since), and a chain owner -> intermediate ->
follower where the follower watches the owner (``follow_env_owner``), as avocado's
runner and test processes do.  Each owner is SIGKILLed; everything must be gone within
2 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.qemu import lifetime
from harness.qemu.leaks import process_alive

pytestmark = pytest.mark.tier0

ROOT = Path(__file__).resolve().parents[2]
BOUND_S = 2.0

OWNER = textwrap.dedent(
    """
    import sys, threading, time
    sys.path.insert(0, {root!r})
    from harness.qemu import lifetime
    children = []
    def start():
        children.append(lifetime.popen(["sleep", "60"]))
    worker = threading.Thread(target=start)
    worker.start()
    worker.join()  # the forking thread has ended: its child must live on
    children.append(lifetime.popen(["sleep", "60"]))
    print(" ".join(str(c.pid) for c in children), flush=True)
    time.sleep(60)
    """
)

# owner: starts an intermediate with a plain Popen (no death signal), as avocado's job
# starts its runner; the intermediate starts the follower, which starts sleep
CHAIN = textwrap.dedent(
    """
    import subprocess, sys, time
    sys.path.insert(0, {root!r})
    from harness.qemu import lifetime
    with lifetime.owner_environment():
        inner = subprocess.Popen([sys.executable, "-c", {intermediate!r}])
    time.sleep(60)
    """
)
INTERMEDIATE = textwrap.dedent(
    """
    import subprocess, sys, time
    subprocess.Popen([sys.executable, "-c", {follower!r}])
    time.sleep(60)
    """
)
FOLLOWER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {root!r})
    from harness.qemu import lifetime
    lifetime.follow_env_owner()
    child = lifetime.popen(["sleep", "60"])
    print(os.getppid(), os.getpid(), child.pid, flush=True)
    time.sleep(60)
    """
)


def gone_within(pids: list[int], bound: float) -> float:
    """Seconds until every pid is gone; fails the test past ``bound``."""
    start = time.monotonic()
    while alive := [p for p in pids if process_alive(p)]:
        if time.monotonic() - start > bound:
            for pid in alive:
                os.kill(pid, signal.SIGKILL)
            pytest.fail(f"processes {alive} outlived their owner by {bound:g}s")
        time.sleep(0.005)
    return time.monotonic() - start


def test_children_die_with_a_sigkilled_owner() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER.format(root=str(ROOT))], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(pids) == 2 and all(process_alive(p) for p in pids)
        time.sleep(0.3)
        assert all(process_alive(p) for p in pids), "a child died with its forking thread"
    finally:
        owner.kill()
        owner.wait()
    assert gone_within(pids, BOUND_S) < BOUND_S


def test_a_follower_takes_the_chain_down_with_its_owner() -> None:
    follower = FOLLOWER.format(root=str(ROOT))
    intermediate = INTERMEDIATE.format(follower=follower)
    owner = subprocess.Popen(
        [sys.executable, "-c", CHAIN.format(root=str(ROOT), intermediate=intermediate)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(pids) == 3 and all(process_alive(p) for p in pids)
        assert lifetime.parent_of(pids[0]) == owner.pid
    finally:
        owner.kill()
        owner.wait()
    # intermediate, follower and the follower's child
    assert gone_within(pids, BOUND_S) < BOUND_S


def test_follow_owner_of_self_is_a_no_op() -> None:
    me = lifetime.identity()
    assert me is not None
    assert lifetime.follow_owner(me) is None


def test_popen_refuses_a_preexec_fn() -> None:
    with pytest.raises(HarnessError, match="preexec_fn"):
        lifetime.popen(["true"], preexec_fn=lambda: None)


def test_bad_owner_text_is_one_line_error() -> None:
    with pytest.raises(HarnessError, match="bad process id 'x'"):
        lifetime.ProcessId.parse("x")
