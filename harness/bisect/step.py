"""One bisection step, run by ``git bisect run`` in the user's tree: build, boot, judge.

``git bisect run`` starts ``python -m harness bisect --step PLAN`` (the same Python and
environment as the bisection) at each commit; ``main`` builds the checked-out tree
incrementally, boots the guest, runs the test and exits with what git understands:

====  =====  ==================================================================
exit  state  when
====  =====  ==================================================================
0     good   the verdict passed (the scenario's listed findings aside)
1     bad    a row failed (recorded), or the scenario raised after the guest was up
125   skip   the build failed (``HarnessError`` while building: compile, kernel
             config check, QEMU configure), the guest did not boot or its agent never
             answered (a ``HarnessError`` before the guest was ready), or the guest
             lacks a capability the test needs (``MissingCapabilityError``)
128   abort  a missing prerequisite (``PrerequisiteError``) or a harness bug: no commit
             can change it, so the bisection stops (git aborts on codes >= 128)
====  =====  ==================================================================

The state is decided by exception type and by where it was raised (build, before the
guest was ready, after), never by an error's text.  Each step writes
``steps/NN-COMMIT/started.json`` when it begins and ``step.json`` (a ``StepRecord``) when
it ends, beside the run's artifacts (console, QMP transcript, verdict) in the same
directory.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from harness import images
from harness.bisect.git import Git
from harness.bisect.qemu_tree import build_qemu
from harness.errors import ConfigError, HarnessError, PrerequisiteError
from harness.guest import Guest
from harness.images.cache import read_meta
from harness.qemu import probe
from harness.qemu.probe import MissingCapabilityError
from harness.repro import read_bundle, resolve_scenario
from harness.scenarios.base import Prepared, Verdict, get
from harness.scenarios.runner import execute, image_identity, run_scenario

GOOD, BAD, SKIP, ABORT = 0, 1, 125, 128
STATES = {GOOD: "good", BAD: "bad", SKIP: "skip", ABORT: "abort"}
KINDS = ("kernel", "qemu")

PLAN_FILE = "plan.json"
STEPS_DIR = "steps"
STARTED_FILE = "started.json"
RECORD_FILE = "step.json"
#: the row a step records when the scenario raised after the guest was up
RAISED_ROW = "scenario ran to a verdict"


@dataclass
class Plan:
    """What every step of one bisection does: the tree, what to build, the test to run."""

    tree: str
    kind: str  # "kernel" (--kernel-tree) or "qemu" (--qemu-tree)
    arch: str
    run_dir: str
    scenario: str | None = None
    bundle: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    qemu: str | None = None  # a kernel bisection's QEMU binary (None: the installed one)
    accel: str = "auto"
    kernel_flavor: str = "default"
    viommu_options: dict[str, Any] = field(default_factory=dict)
    jobs: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"bisect plan: kind {self.kind!r} is not one of {KINDS}")
        if (self.scenario is None) == (self.bundle is None):
            raise ConfigError("bisect plan: exactly one of scenario and bundle")

    def save(self, path: Path) -> Path:
        """Write the plan as JSON; returns ``path``."""
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Plan:
        """A plan written by ``save`` (ConfigError naming the file when it is not one)."""
        try:
            data = json.loads(path.read_text())
            names = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in names})
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: not a bisect plan ({exc})") from None

    @property
    def test(self) -> str:
        """The test as the user named it: scenario name or bundle path."""
        return self.scenario or str(self.bundle)


@dataclass
class StepRecord:
    """What one step found: commit, state, build time, failing rows, error, where to look."""

    index: int
    commit: str
    subject: str
    artifacts: str
    exit_code: int = ABORT
    state: str = "abort"
    phase: str = "start"  # build, boot, scenario, done
    built_s: float | None = None
    build_note: str = ""
    elapsed_s: float = 0.0
    failing: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    summary: str = ""
    build_log: str = ""

    def finish(self, code: int, phase: str, error: BaseException | None = None) -> int:
        """Set the exit code, state and phase (and the error's first line); returns the code."""
        self.exit_code, self.state, self.phase = code, STATES[code], phase
        if error is not None:
            first = (str(error).splitlines() or [""])[0]
            self.error = f"{type(error).__name__}: {first}"
        return code

    def write(self, path: Path) -> None:
        """Write the record as JSON (atomically: the bisection polls for it)."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1, default=str) + "\n")
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> StepRecord:
        """A record written by ``write``."""
        data = json.loads(path.read_text())
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Built:
    """What a step's build produced: a kernel (and initramfs) or a QEMU binary."""

    seconds: float
    kernel: Path | None = None
    initrd: Path | None = None
    qemu: str | None = None
    log: str = ""
    image: dict[str, Any] = field(default_factory=dict)  # a built kernel's image identity
    note: str = ""  # what the build did (compiled incrementally, cached, configured)


Builder = Callable[[Plan, Path], Built]
Tester = Callable[[Plan, Built, Path, Callable[[Guest], None]], Verdict]


def compile_note(kernel_dir: Path, since: float) -> str:
    """``new kernel: 21s incremental`` when the kernel in ``kernel_dir`` was built after
    ``since`` (wall clock), i.e. by this step (the image build's own ``build_seconds``,
    which counts any wait for the kernel-build lock); ``cached kernel`` otherwise."""
    try:
        meta = read_meta(kernel_dir)
        built_now = kernel_dir.stat().st_mtime >= since - 1
    except (OSError, ValueError):
        return ""
    if not built_now:
        return "cached kernel"
    how = "from scratch" if meta.get("from_scratch") else "incremental"
    return f"new kernel: {float(meta.get('build_seconds') or 0):.0f}s {how}"


def build_kernel_tree(plan: Plan, step_dir: Path) -> Built:
    """The tree's kernel through ``images.ensure(kernel_tree=...)`` (incremental, cached)."""
    t0, since = time.monotonic(), time.time()
    image = images.ensure(
        plan.arch, kernel_tree=Path(plan.tree), kernel_flavor=plan.kernel_flavor, jobs=plan.jobs
    )
    return Built(
        time.monotonic() - t0,
        kernel=image.kernel,
        initrd=image.initramfs,
        log=str(image.logs.get("kernel", "")),
        image=image_identity(image),
        note=compile_note(image.kernel.parent, since),
    )


def build_qemu_tree(plan: Plan, step_dir: Path) -> Built:
    """The tree's system emulator, built in its cached build directory."""
    log = step_dir / "build.log"
    built = build_qemu(Path(plan.tree), plan.arch, log, jobs=plan.jobs)
    note = "configured and built" if built.configured else "built incrementally"
    return Built(built.seconds, qemu=str(built.binary), log=str(log), note=note)


#: plan.kind -> how a step builds the checked-out tree
BUILDERS: dict[str, Builder] = {"kernel": build_kernel_tree, "qemu": build_qemu_tree}


def _run_bundle(
    plan: Plan, built: Built, artifacts: Path, on_ready: Callable[[Guest], None]
) -> Verdict:
    bundle = read_bundle(str(plan.bundle))
    scenario = resolve_scenario(bundle)
    record = bundle.guests[0]
    machine = record.machine
    if built.kernel is not None:
        machine = replace(machine, kernel=built.kernel, initrd=built.initrd or machine.initrd)
    binary = probe.resolve_binary(machine.arch, built.qemu or plan.qemu or record.qemu["path"])
    probe.require_properties(machine, probe.probe(binary))
    prepared = Prepared(
        machine=machine,
        binary=binary,
        ready_marker=record.ready_marker,
        image=built.image or dict(record.image),
        viommu_options=dict(bundle.scenario.get("viommu_options") or {}),
    )
    params = dict(bundle.scenario["params"])
    return execute(scenario, prepared, params, artifacts, on_ready=on_ready)


def run_test(
    plan: Plan, built: Built, artifacts: Path, on_ready: Callable[[Guest], None]
) -> Verdict:
    """Boot the built kernel or QEMU and run the plan's scenario or bundle; its verdict."""
    if plan.bundle is not None:
        return _run_bundle(plan, built, artifacts, on_ready)
    assert plan.scenario is not None
    tree = Path(plan.tree) if plan.kind == "kernel" else None
    return run_scenario(
        plan.scenario,
        plan.arch,
        plan.params,
        qemu=built.qemu or plan.qemu,
        accel=plan.accel,
        artifacts=artifacts,
        on_ready=on_ready,
        viommu_options=plan.viommu_options or None,
        kernel_tree=tree,  # built above: cached by the tree's state; the verdict records it
        kernel_flavor=plan.kernel_flavor,
    )


#: how a step runs its test once built (the unit tests replace it with a fake)
TESTERS: dict[str, Tester] = {"run": run_test}


def failing_rows(verdict: Verdict) -> list[dict[str, Any]]:
    """The failed rows that make a step bad: all but the scenario's listed findings."""
    try:
        listed = get(verdict.scenario).expected_failures()
    except ConfigError:
        listed = frozenset()
    rows = [
        {"name": c.name, "expected": c.expected, "got": c.got, "note": c.note}
        for c in verdict.failures
        if c.name not in listed
    ]
    if not verdict.checks:
        rows.append({"name": "verdict has rows", "expected": "at least one", "got": 0, "note": ""})
    return rows


def classify(plan: Plan, record: StepRecord, step_dir: Path) -> int:
    """Build, boot and judge the checked-out commit; fills ``record``, returns the exit code."""
    record.phase = "build"
    try:
        built = BUILDERS[plan.kind](plan, step_dir)
    except PrerequisiteError as exc:
        return record.finish(ABORT, "build", exc)
    except HarnessError as exc:
        return record.finish(SKIP, "build", exc)
    record.built_s = round(built.seconds, 1)
    record.build_log, record.build_note = built.log, built.note
    record.phase = "boot"
    ready: list[bool] = []

    def on_ready(guest: Guest) -> None:
        ready.append(True)
        record.phase = "scenario"

    try:
        verdict = TESTERS["run"](plan, built, step_dir, on_ready)
    except MissingCapabilityError as exc:  # e.g. this commit's config lacks what tier 1 needs
        return record.finish(SKIP, record.phase, exc)
    except PrerequisiteError as exc:
        return record.finish(ABORT, record.phase, exc)
    except HarnessError as exc:
        if not ready:  # no boot, no agent: this commit cannot be judged
            return record.finish(SKIP, "boot", exc)
        code = record.finish(BAD, "scenario", exc)
        record.failing = [{"name": RAISED_ROW, "expected": "a verdict", "got": record.error,
                           "note": "the guest was up; the scenario raised"}]  # fmt: skip
        return code
    record.summary = verdict.summary()
    print(verdict.table(), flush=True)
    record.failing = failing_rows(verdict)
    return record.finish(BAD if record.failing else GOOD, "done")


def _next_step_dir(run_dir: Path, commit: str) -> tuple[int, Path]:
    steps = run_dir / STEPS_DIR
    steps.mkdir(parents=True, exist_ok=True)
    index = sum(1 for p in steps.iterdir() if p.is_dir()) + 1
    path = steps / f"{index:02d}-{commit[:12]}"
    path.mkdir()
    return index, path


def main(plan_path: Path) -> int:
    """One step at the checked-out commit; git's exit code (0 good, 1 bad, 125 skip, 128)."""
    t0 = time.monotonic()
    try:
        plan = Plan.load(plan_path)
        git = Git(Path(plan.tree))
        commit = git.head()
        index, step_dir = _next_step_dir(Path(plan.run_dir), commit)
        record = StepRecord(index, commit, git.subject(commit), str(step_dir))
    except Exception:
        traceback.print_exc()
        return ABORT
    record.write(step_dir / STARTED_FILE)
    print(f"[bisect] step {index}: {commit[:12]} {record.subject}", flush=True)
    try:
        code = classify(plan, record, step_dir)
    except Exception as exc:  # a harness bug: no commit can change it
        traceback.print_exc()
        code = record.finish(ABORT, record.phase, exc)
    finally:
        record.elapsed_s = round(time.monotonic() - t0, 1)
        record.write(step_dir / RECORD_FILE)
    detail = f" ({record.error})" if record.error else ""
    print(f"[bisect] step {index}: {commit[:12]} {record.state}{detail}", flush=True)
    return code


def step_argv(plan_path: Path) -> list[str]:
    """The command ``git bisect run`` runs: this Python, ``-m harness bisect --step PLAN``."""
    return [sys.executable, "-m", "harness", "bisect", "--step", str(plan_path)]


def step_env() -> dict[str, str]:
    """The environment of a step: this one, with this checkout importable from any cwd."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
