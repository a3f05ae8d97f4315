"""The bisection: verify the endpoints, drive ``git bisect run``, always restore the tree.

``Bisection(git, good, bad, plan).run()`` opens a ``git bisect`` session in the user's
tree, checks that ``--bad`` fails and ``--good`` passes (each as one step), marks them and
hands ``git bisect run`` the step command (``harness.bisect.step``).  While git runs, it
prints one line per step from the records the steps write.  Whatever happens (a first bad
commit, a step that aborts, an exception, Ctrl-C, SIGTERM) it ends the steps' process
group, runs ``git bisect reset`` and checks that the tree is back on the branch or commit
it started on; a tree left elsewhere is a ``BisectError`` naming both.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from harness.bisect.git import Git, Position
from harness.bisect.step import (
    BAD,
    GOOD,
    PLAN_FILE,
    RECORD_FILE,
    SKIP,
    STARTED_FILE,
    STEPS_DIR,
    Plan,
    StepRecord,
    step_argv,
    step_env,
)
from harness.errors import HarnessError
from harness.images.progress import format_duration

LOG_FILE = "bisect.log"
GIT_LOG_FILE = "git-bisect-log.txt"
OUTCOME_FILE = "bisect.json"
#: seconds a step's process group gets after SIGTERM before SIGKILL
KILL_GRACE = 20.0


class BisectError(HarnessError):
    """The bisection could not run or finish (an endpoint that does not verify, a tree
    left off its starting point): one line naming why and the log."""


class Terminated(KeyboardInterrupt):
    """SIGTERM reached the bisection: unwound like Ctrl-C, so the tree is restored."""


@dataclass
class Outcome:
    """How a bisection ended: the first bad commit (or why none), its row, the evidence."""

    first_bad: str | None
    subject: str
    failing: list[dict[str, Any]]
    candidates: list[str]
    reason: str
    run_dir: str
    log: str
    restored: str
    wall_s: float
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def found(self) -> bool:
        """True when a single first bad commit was named."""
        return self.first_bad is not None


def _describe_failing(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    row = rows[0]
    more = f" (+{len(rows) - 1} more)" if len(rows) > 1 else ""
    return f"{row['name']}: expected {row['expected']!r}, got {row['got']!r}{more}"


def step_line(record: StepRecord) -> str:
    """The end of a step's progress line: build time, state (and why), step time."""
    built = "not built"
    if record.built_s is not None:
        built = f"built in {format_duration(record.built_s)}"
        built += f" ({record.build_note})" if record.build_note else ""
    state = record.state
    if record.state == "bad":
        state += f" ({_describe_failing(record.failing)})"
    elif record.error:
        state += f" ({record.phase}: {record.error})"
    return f"{built}, {state}, step {format_duration(record.elapsed_s)}"


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` in the main thread (elsewhere: nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while the tree is being restored (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


class Bisection:
    """One bisection of ``git``'s tree between ``good`` and ``bad`` with ``plan``'s test."""

    def __init__(
        self,
        git: Git,
        good: str,
        bad: str,
        plan: Plan,
        *,
        verify: bool = True,
        argv: list[str] | None = None,
        write: Callable[[str], None] = lambda text: print(text, end="", flush=True),
        poll: float = 0.5,
    ) -> None:
        self.git, self.good, self.bad, self.plan = git, good, bad, plan
        self.run_dir = Path(plan.run_dir)
        self.plan_path = plan.save(self.run_dir / PLAN_FILE)
        self.argv = argv or step_argv(self.plan_path)
        self.verify = verify
        self.write = write
        self.poll = poll
        self.log_path = self.run_dir / LOG_FILE
        self.started = time.monotonic()
        self.role = ""
        self.estimate = 0
        self._announced: set[str] = set()
        self._finished: set[str] = set()
        self.records: list[StepRecord] = []

    # -- progress --------------------------------------------------------------------

    def _report_steps(self) -> None:
        steps = self.run_dir / STEPS_DIR
        if not steps.is_dir():
            return
        for path in sorted(p for p in steps.iterdir() if p.is_dir()):
            if path.name in self._finished:
                continue
            if path.name not in self._announced and (path / STARTED_FILE).is_file():
                self._announced.add(path.name)
                record = StepRecord.read(path / STARTED_FILE)
                planned = self.estimate + (2 if self.verify else 0)  # the endpoints first
                total = f"/~{planned}" if self.estimate else ""
                role = f" ({self.role})" if self.role else ""
                self.write(
                    f"step {record.index}{total}{role}  {record.commit[:12]}"
                    f"  {record.subject[:60]}  ... "
                )
            if (path / RECORD_FILE).is_file():
                self._finished.add(path.name)
                record = StepRecord.read(path / RECORD_FILE)
                self.records.append(record)
                elapsed = format_duration(time.monotonic() - self.started)
                self.write(f"{step_line(record)}, elapsed {elapsed}\n")

    # -- processes -------------------------------------------------------------------

    def _spawn(self, argv: list[str]) -> int:
        """Run ``argv`` in the tree in its own process group (output to the log); its status.

        Interrupted (Ctrl-C, SIGTERM, any exception), the whole group is ended first.
        """
        with self.log_path.open("a") as log:
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
            process = subprocess.Popen(
                argv,
                cwd=self.git.tree,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=step_env(),
                start_new_session=True,
            )
            try:
                while process.poll() is None:
                    self._report_steps()
                    time.sleep(self.poll)
                self._report_steps()
                return process.returncode
            finally:
                if process.poll() is None:
                    self._end_group(process)

    def _end_group(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM the step's process group, SIGKILL what is left after ``KILL_GRACE``."""
        for sig, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                process.poll()  # reap the leader: a zombie still counts in its group
                try:
                    os.killpg(process.pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.1)

    def _git(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = self.git.run(*args, check=False)
        with self.log_path.open("a") as log:
            log.write(f"$ git {' '.join(args)}\n{done.stdout}{done.stderr}")
        if done.returncode != 0:
            first = (done.stderr.strip() or done.stdout.strip() or "?").splitlines()[0]
            raise BisectError(f"git {' '.join(args)}: {first} (log: {self.log_path})")
        return done

    # -- the bisection ---------------------------------------------------------------

    def _check_endpoint(self, rev: str, commit: str, want: int) -> None:
        self.role = "--bad" if want == BAD else "--good"
        self._git("checkout", "-q", "--detach", commit)
        code = self._spawn(self.argv)
        self.role = ""
        record = next((r for r in reversed(self.records) if r.commit == commit), None)
        if code == want:
            return
        option = "--bad" if want == BAD else "--good"
        if code == SKIP:
            why = f"could not be tested ({record.phase}: {record.error})" if record else "skipped"
        elif code == GOOD:
            why = f"passes {self.plan.test}: nothing to bisect (a flake?)"
        elif code == BAD:
            detail = _describe_failing(record.failing) if record else "?"
            why = f"fails {self.plan.test} too: {detail}"
        else:
            why = f"aborted the step (exit {code}: {record.error if record else 'see the log'})"
        raise BisectError(
            f"{option} {rev} ({commit[:12]}) {why}; --no-verify-endpoints skips this check;"
            f" log: {self.log_path}"
        )

    def _estimate(self, bad: str, good: str) -> None:
        count = len(self.git.candidates(bad, [good]))
        self.estimate = max(1, math.ceil(math.log2(count))) if count > 1 else 0
        self.write(
            f"bisecting {count - 1} commits between {good[:12]} and {bad[:12]}"
            f" (~{self.estimate} steps); log: {self.log_path}\n"
        )

    def _outcome(self, run_status: int | None, restored: Position) -> Outcome:
        bad, goods, skipped = self.git.bisect_refs()
        candidates = self.git.candidates(bad, goods) if bad and goods else []
        first_bad = candidates[0] if len(candidates) == 1 else None
        reason = ""
        if first_bad is None:
            if candidates and set(candidates) - {bad} <= set(skipped):
                reason = (
                    f"only skipped commits left: the first bad commit is one of {len(candidates)}"
                )
            elif run_status not in (None, 0):
                last = self.records[-1] if self.records else None
                why = f": {last.error}" if last and last.error else ""
                reason = f"git bisect run stopped (exit {run_status}){why}"
            else:
                reason = "git bisect named no first bad commit"
        record = next((r for r in self.records if r.commit == first_bad and r.state == "bad"), None)
        failing = record.failing if record else []
        return Outcome(
            first_bad=first_bad,
            subject=self.git.subject(first_bad) if first_bad else "",
            failing=failing,
            candidates=candidates if first_bad is None else [],
            reason=reason,
            run_dir=str(self.run_dir),
            log=str(self.log_path),
            restored=restored.describe(),
            wall_s=round(time.monotonic() - self.started, 1),
            steps=[asdict(r) for r in self.records],
        )

    def run(self) -> Outcome:
        """Bisect; the tree ends where it started (checked), whatever happens."""
        start = self.git.position()
        good = self.git.resolve(self.good, "--good")
        bad = self.git.resolve(self.bad, "--bad")
        opened = False
        run_status: int | None = None
        outcome: Outcome | None = None
        try:
            with _sigterm_raises():
                self._git("bisect", "start")
                opened = True
                self._estimate(bad, good)
                if self.verify:
                    self._check_endpoint(self.bad, bad, BAD)
                    self._check_endpoint(self.good, good, GOOD)
                self._git("bisect", "bad", bad)
                self._git("bisect", "good", good)
                bad_ref, goods, _ = self.git.bisect_refs()
                if len(self.git.candidates(str(bad_ref), goods)) > 1:
                    run_status = self._spawn(["git", "bisect", "run", *self.argv])
                with self.log_path.open("a") as log:
                    log.write(f"git bisect run: exit {run_status}\n")
                outcome = self._outcome(run_status, start)
                (self.run_dir / GIT_LOG_FILE).write_text(self.git.out("bisect", "log") + "\n")
        finally:
            if opened:
                with _signals_ignored():
                    self._restore(start)
        assert outcome is not None
        outcome.restored = self.git.position().describe()
        (self.run_dir / OUTCOME_FILE).write_text(json.dumps(asdict(outcome), indent=1, default=str))
        return outcome

    def _restore(self, start: Position) -> None:
        reset = self.git.run("bisect", "reset", check=False)
        with self.log_path.open("a") as log:
            log.write(f"$ git bisect reset\n{reset.stdout}{reset.stderr}")
        now = self.git.position()
        if now != start:
            raise BisectError(
                f"{self.git.tree} was left on {now.describe()}, not {start.describe()}"
                f" (git bisect reset: exit {reset.returncode}; log: {self.log_path})"
            )
