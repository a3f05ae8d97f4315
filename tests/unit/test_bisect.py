"""``harness bisect`` on real git repositories, with the build and the scenario faked.

Why fakes: a real step builds a kernel (minutes, 2 cores) and boots a guest (needs the VM
lock); ``tests/vm/test_bisect.py`` does that for real.  Here every repository, every
``git bisect`` command and every step process is real: ``git bisect run`` starts a step
script that is ``harness.bisect.step.main`` with ``BUILDERS`` / ``TESTERS`` replaced by
fakes that read the checked-out files (``state.txt``: ``ok`` passes, anything else fails
the row ``state``; a ``broken`` file fails the build; ``no-boot`` fails before the guest is
ready).  The QEMU-tree tests use a fake QEMU tree (a ``configure`` script and a ``ninja``
on PATH that only write files), because no QEMU source tree is on this machine and a
real QEMU build takes 15+ minutes of both cores.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness import cli, repro
from harness.agent.client import AgentConnectionLostError
from harness.artifacts import default_root
from harness.bisect import qemu_tree, step
from harness.bisect.git import BisectInputError, Git, check_inputs
from harness.bisect.session import BisectError, Bisection
from harness.commands import bisect as bisect_command
from harness.errors import PrerequisiteError
from harness.images.errors import ImageBuildError, KernelConfigError
from harness.profiles import make_devices, make_viommu
from harness.qemu.description import Machine
from harness.qemu.machine import MachineError
from harness.scenarios.base import Check, Prepared, Verdict, get
from harness.scenarios.tier1 import Tier1UnavailableError

pytestmark = pytest.mark.tier0

FAKE_STEP = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from harness.bisect import step
    from harness.images.errors import ImageBuildError
    from harness.qemu.machine import MachineError
    from harness.scenarios.base import Check, Verdict

    def build(plan, step_dir):
        tree = Path(plan.tree)
        if (tree / "broken").exists():
            raise ImageBuildError("make bzImage", "fake compile error")
        return step.Built(0.01, log="fake")

    def test(plan, built, artifacts, on_ready):
        tree = Path(plan.tree)
        if (tree / "no-boot").exists():
            raise MachineError("fake: no ready marker")
        on_ready(None)
        if (tree / "hang").exists():  # the interrupt tests end this step from outside
            (Path(plan.run_dir) / "hanging.pid").write_text(str(os.getpid()))
            time.sleep(120)
        verdict = Verdict("fake")
        verdict.add(Check.equal("state", "ok", (tree / "state.txt").read_text().strip()))
        return verdict

    step.BUILDERS["kernel"] = build
    step.TESTERS["run"] = test
    sys.exit(step.main(Path(sys.argv[1])))
    """
)


def git(tree: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}  # fmt: skip
    return subprocess.run(
        ["git", "-C", str(tree), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def make_repo(path: Path, commits: list[dict[str, str | None]]) -> list[str]:
    """A repo on branch ``main`` whose commit i sets the files of ``commits[i]`` (None
    removes one); the subjects are ``c0``, ``c1``, ...  Returns the commit ids."""
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    ids = []
    for i, files in enumerate(commits):
        for name, text in files.items():
            if text is None:
                (path / name).unlink()
            else:
                (path / name).write_text(text)
        git(path, "add", "-A")
        git(path, "commit", "-q", "--allow-empty", "-m", f"c{i}")
        ids.append(git(path, "rev-parse", "HEAD"))
    return ids


@pytest.fixture
def fake_step(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_step.py"
    script.write_text(FAKE_STEP)
    return [sys.executable, str(script)]


def plan_for(tree: Path, run_dir: Path) -> step.Plan:
    run_dir.mkdir(exist_ok=True)
    return step.Plan(tree=str(tree), kind="kernel", arch="x86_64", run_dir=str(run_dir),
                     scenario="fake", params={"seed": 1})  # fmt: skip


def bisection(tree: Path, tmp: Path, argv: list[str], good: str, bad: str, **kw: Any) -> Bisection:
    plan = plan_for(tree, tmp / "run")
    lines: list[str] = kw.pop("lines", [])
    return Bisection(
        Git.open(tree), good, bad, plan, argv=[*argv, str(tmp / "run" / step.PLAN_FILE)],
        write=kw.pop("write", lines.append), poll=0.05, **kw,
    )  # fmt: skip


def assert_restored(tree: Path, branch: str = "refs/heads/main") -> None:
    assert git(tree, "symbolic-ref", "HEAD") == branch
    assert not (tree / ".git" / "BISECT_START").exists()
    assert git(tree, "status", "--porcelain") == ""


SERIES: list[dict[str, str | None]] = [
    {"state.txt": "ok\n", "a": "0"},
    {"a": "1"},
    {"a": "2"},
    {"a": "3"},
    {"state.txt": "BUG\n"},  # c4: the planted commit
    {"a": "5"},
    {"a": "6"},
    {"a": "7"},
]


def test_names_the_planted_commit_and_restores_the_branch(
    tmp_path: Path, fake_step: list[str]
) -> None:
    tree = tmp_path / "tree"
    ids = make_repo(tree, SERIES)
    lines: list[str] = []
    outcome = bisection(tree, tmp_path, fake_step, ids[0], "main", lines=lines).run()
    assert outcome.first_bad == ids[4]
    assert outcome.subject == "c4"
    assert outcome.failing[0]["name"] == "state"
    assert (outcome.failing[0]["expected"], outcome.failing[0]["got"]) == ("ok", "BUG")
    assert_restored(tree)
    # the endpoints were checked first (--bad fails, --good passes), then ~3 steps
    states = [(s["commit"], s["state"]) for s in outcome.steps]
    assert states[:2] == [(ids[-1], "bad"), (ids[0], "good")]
    assert 2 <= len(states) - 2 <= 3
    text = "".join(lines)
    assert text.count("\n") == len(outcome.steps) + 1  # a header, then one line per step
    assert "(--bad)" in text and "built in 0s, bad (state: expected 'ok', got 'BUG')" in text
    assert Path(outcome.log).is_file() and "git bisect run" in Path(outcome.log).read_text()
    assert (tmp_path / "run" / "git-bisect-log.txt").read_text().count("# bad:") >= 1


def test_a_failed_build_is_skipped_and_the_bisection_converges(
    tmp_path: Path, fake_step: list[str]
) -> None:
    series = [dict(c) for c in SERIES]
    series[2]["broken"] = ""  # c2 and c6 fail to build (c3 and c7 fix it)
    series[3]["broken"] = None
    series[6]["broken"] = ""
    series[7]["broken"] = None
    series.insert(4, {"a": "3b", "broken": ""})  # c4 does not build either...
    series.insert(5, {"broken": None})  # ...and c5 fixes it: the planted one is now c6
    tree = tmp_path / "tree"
    ids = make_repo(tree, series)
    outcome = bisection(tree, tmp_path, fake_step, ids[0], ids[-1]).run()
    assert outcome.first_bad == ids[6], outcome
    skipped = [s for s in outcome.steps if s["state"] == "skip"]
    assert skipped and all(s["phase"] == "build" and s["exit_code"] == 125 for s in skipped)
    assert "ImageBuildError: make bzImage: fake compile error" in skipped[0]["error"]
    assert_restored(tree)


def test_only_skipped_commits_left_names_no_commit(tmp_path: Path, fake_step: list[str]) -> None:
    series = [{"state.txt": "ok\n"}, {"broken": ""}, {"a": "2"}, {"broken": None, "state.txt": "x"}]
    tree = tmp_path / "tree"
    ids = make_repo(tree, series)
    outcome = bisection(tree, tmp_path, fake_step, ids[0], ids[-1]).run()
    assert outcome.first_bad is None
    assert set(outcome.candidates) == {ids[1], ids[2], ids[3]}
    assert "only skipped commits left" in outcome.reason
    assert_restored(tree)


def test_a_guest_that_does_not_boot_is_skipped(tmp_path: Path, fake_step: list[str]) -> None:
    series = [dict(c) for c in SERIES]
    series[5]["no-boot"] = ""  # c5 builds but does not boot (git tests it after c3)
    series[6]["no-boot"] = None
    tree = tmp_path / "tree"
    ids = make_repo(tree, series)
    outcome = bisection(tree, tmp_path, fake_step, ids[0], ids[-1]).run()
    assert outcome.first_bad == ids[4]
    (c5,) = [s for s in outcome.steps if s["commit"] == ids[5]]
    assert (c5["state"], c5["phase"], c5["exit_code"]) == ("skip", "boot", 125)
    assert c5["error"] == "MachineError: fake: no ready marker"


def test_endpoints_are_verified(tmp_path: Path, fake_step: list[str]) -> None:
    tree = tmp_path / "tree"
    ids = make_repo(tree, SERIES)
    with pytest.raises(BisectError, match=r"--bad \w+ \(\w+\) passes fake: nothing to bisect"):
        bisection(tree, tmp_path, fake_step, ids[0], ids[2]).run()
    assert_restored(tree)
    with pytest.raises(BisectError, match=r"--good \w+ \(\w+\) fails fake too: state: expected"):
        bisection(tree, tmp_path, fake_step, ids[5], ids[7]).run()
    assert_restored(tree)


def test_no_verify_endpoints_bisects_without_testing_them(
    tmp_path: Path, fake_step: list[str]
) -> None:
    tree = tmp_path / "tree"
    ids = make_repo(tree, SERIES)
    outcome = bisection(tree, tmp_path, fake_step, ids[0], ids[-1], verify=False).run()
    assert outcome.first_bad == ids[4]
    assert ids[0] not in [s["commit"] for s in outcome.steps]
    assert ids[-1] not in [s["commit"] for s in outcome.steps]


def _hanging_series() -> list[dict[str, str | None]]:
    series = [dict(c) for c in SERIES]
    series[4]["hang"] = ""  # the first midpoint tested after the endpoints hangs
    return series


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_tree_restored_after_an_exception_mid_bisect(
    tmp_path: Path, fake_step: list[str], error: BaseException
) -> None:
    """The driver fails while a step runs (as Ctrl-C would raise in its wait loop): the
    step's process group is ended and the tree is back on ``main``."""
    tree = tmp_path / "tree"
    ids = make_repo(tree, _hanging_series())
    pid_file = tmp_path / "run" / "hanging.pid"

    def write(text: str) -> None:
        if pid_file.exists():
            raise error

    with pytest.raises(type(error)):
        bisection(tree, tmp_path, fake_step, ids[0], ids[-1], write=write).run()
    assert _gone(int(pid_file.read_text()))
    assert_restored(tree)


DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from harness.bisect.git import Git
    from harness.bisect.session import Bisection
    from harness.bisect.step import Plan, PLAN_FILE
    tree, run_dir, script, good, bad = sys.argv[1:6]
    plan = Plan(tree=tree, kind="kernel", arch="x86_64", run_dir=run_dir, scenario="fake")
    argv = [sys.executable, script, str(Path(run_dir) / PLAN_FILE)]
    try:
        Bisection(Git.open(Path(tree)), good, bad, plan, argv=argv, poll=0.05).run()
    except KeyboardInterrupt as exc:
        print("interrupted:", type(exc).__name__, flush=True)
        sys.exit(130)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_tree_restored_after_a_signal(tmp_path: Path, fake_step: list[str], sig: int) -> None:
    """SIGTERM or SIGINT to a bisecting process (its own main thread): it ends the step
    that hangs, resets the bisection and exits; the tree is back on ``main``."""
    tree = tmp_path / "tree"
    ids = make_repo(tree, _hanging_series())
    (tmp_path / "run").mkdir()
    (tmp_path / "driver.py").write_text(DRIVER)
    driver = subprocess.Popen(
        [sys.executable, str(tmp_path / "driver.py"), str(tree), str(tmp_path / "run"),
         fake_step[1], ids[0], ids[-1]],
        stdout=subprocess.PIPE, text=True, env=step.step_env(),
    )  # fmt: skip
    pid_file = tmp_path / "run" / "hanging.pid"
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.05)
        assert pid_file.exists(), "the hanging step never started"
        driver.send_signal(sig)
        out, _ = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    expected = "Terminated" if sig == signal.SIGTERM else "KeyboardInterrupt"
    assert driver.returncode == 130 and f"interrupted: {expected}" in out
    assert _gone(int(pid_file.read_text()))
    assert_restored(tree)


# -- refusals ---------------------------------------------------------------------------


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = cli.main(["bisect", *argv])
    err = capsys.readouterr().err.strip()
    return status, err


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, list[str]]:
    tree = tmp_path / "tree"
    return tree, make_repo(tree, SERIES)


def test_refuses_a_directory_that_is_not_a_git_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "plain").mkdir()
    status, err = run_cli(["--good", "a", "--bad", "b", "--kernel-tree",
                           str(tmp_path / "plain"), "tier1-viommu"], capsys)  # fmt: skip
    assert status == 1 and len(err.splitlines()) == 1
    assert "plain: not a git work tree" in err


def test_refuses_a_dirty_tree_naming_the_files(
    repo: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    tree, ids = repo
    (tree / "a").write_text("edited")
    (tree / "untracked").write_text("survives a checkout")
    status, err = run_cli(["--good", ids[0], "--bad", "main", "--kernel-tree", str(tree),
                           "tier1-viommu"], capsys)  # fmt: skip
    assert status == 1 and len(err.splitlines()) == 1
    assert "uncommitted changes a checkout would lose: a (commit or stash" in err
    assert (tree / "a").read_text() == "edited"


def test_refuses_while_a_bisect_is_in_progress(
    repo: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    tree, ids = repo
    git(tree, "bisect", "start")
    status, err = run_cli(["--good", ids[0], "--bad", "main", "--kernel-tree", str(tree),
                           "tier1-viommu"], capsys)  # fmt: skip
    assert status == 1 and "a git bisect is already in progress" in err
    assert (tree / ".git" / "BISECT_START").exists()  # the user's session is left alone


def test_refuses_unknown_revisions_and_a_good_that_is_no_ancestor(
    repo: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    tree, ids = repo
    base = ["--kernel-tree", str(tree), "tier1-viommu"]
    status, err = run_cli(["--good", "nosuch", "--bad", "main", *base], capsys)
    assert status == 1 and err.endswith(f"--good nosuch: unknown revision in {tree}")
    status, err = run_cli(["--good", ids[0], "--bad", "v9.9", *base], capsys)
    assert status == 1 and err.endswith(f"--bad v9.9: unknown revision in {tree}")
    git(tree, "checkout", "-q", "-b", "side", ids[1])
    (tree / "side").write_text("x")
    git(tree, "add", "side")
    git(tree, "commit", "-q", "-m", "side")
    git(tree, "checkout", "-q", "main")
    status, err = run_cli(["--good", "side", "--bad", "main", *base], capsys)
    assert status == 1 and "--good side" in err and "is not an ancestor of --bad main" in err
    status, err = run_cli(["--good", "main", "--bad", ids[-1], *base], capsys)
    assert status == 1 and "are the same commit" in err


def test_check_inputs_accepts_a_clean_tree(repo: tuple[Path, list[str]]) -> None:
    tree, ids = repo
    (tree / "untracked").write_text("x")  # untracked files survive checkouts
    assert check_inputs(Git.open(tree), ids[0], "main") == (ids[0], ids[-1])
    with pytest.raises(BisectInputError):
        check_inputs(Git.open(tree), "main", ids[0])


def test_refuses_a_wrong_arch_an_unknown_scenario_and_a_non_kernel_tree(
    repo: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    tree, ids = repo
    args = ["--good", ids[0], "--bad", "main", "--kernel-tree", str(tree)]
    status, err = run_cli([*args, "--arch", "arm64", "vtd-nesting"], capsys)
    assert status == 1 and err.endswith("scenario vtd-nesting runs on x86_64, not arm64")
    status, err = run_cli([*args, "no-such-scenario"], capsys)
    assert status == 1 and "no-such-scenario" in err and len(err.splitlines()) == 1
    status, err = run_cli([*args, "tier1-viommu"], capsys)
    assert status == 1 and "not a kernel tree (no Makefile and Kconfig)" in err
    status, err = run_cli(["--good", ids[0], "--bad", "main", "--qemu-tree", str(tree),
                           "tier1-viommu"], capsys)  # fmt: skip
    assert status == 1 and err.endswith("no configure script (not a QEMU source tree)")
    status, err = run_cli([*args, "--kernel-flavor", "nosuch", "tier1-viommu"], capsys)
    assert status == 1 and "unknown kernel flavor 'nosuch'" in err
    assert_restored(tree)  # nothing was started


def _bundle_args(bundle: Path, **kw: Any) -> argparse.Namespace:
    values = {"test": str(bundle), "arch": None, "param": [], "seed": None, "viommu_opt": []}
    return argparse.Namespace(**{**values, **kw})


def test_a_scenario_bundle_is_a_test_and_a_test_bundle_is_refused(tmp_path: Path) -> None:
    files = {}
    for name in ("kernel", "initrd", "qemu"):
        files[name] = tmp_path / name
        files[name].write_bytes(b"x")
    machine = Machine(arch="x86_64", kernel=files["kernel"], initrd=files["initrd"],
                      viommu=make_viommu("vtd", {}), devices=make_devices(["edu"]))  # fmt: skip
    prepared = Prepared(machine, str(files["qemu"]), "READY", {"key": "k"}, {})
    failed = Verdict("vtd-nesting", [Check.equal("x", 1, 2)])
    data = repro.scenario_bundle(get("vtd-nesting"), {"seed": 5}, prepared, None, tmp_path,
                                 verdict=failed)  # fmt: skip
    bundle = repro.write_bundle(data, tmp_path / "scenario")
    assert bisect_command._test(_bundle_args(bundle.parent)) == {
        "bundle": str(bundle.parent), "arch": "x86_64"
    }  # fmt: skip
    with pytest.raises(BisectInputError, match="the bundle's arch is x86_64, not --arch arm64"):
        bisect_command._test(_bundle_args(bundle, arch="arm64"))
    with pytest.raises(BisectInputError, match="a bundle's recorded ones are used"):
        bisect_command._test(_bundle_args(bundle, seed=3))
    record = repro.guest_record(name="g", machine=machine, binary=str(files["qemu"]),
                                ready_marker="READY", image={}, accel_used="tcg",
                                artifacts=tmp_path)  # fmt: skip
    data = repro.failed_test_bundle(nodeid="tests/vm/test_x.py::test_y", rootdir=tmp_path,
                                    options=[], seed=1, guests=[record], error="E")  # fmt: skip
    test_bundle = repro.write_bundle(data, tmp_path / "test")
    with pytest.raises(BisectInputError, match=r"a test bundle \(tests/vm/test_x.py::test_y\)"):
        bisect_command._test(_bundle_args(test_bundle))


def test_the_bisection_directory_stays_out_of_the_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    monkeypatch.setenv("VIOMMU_ARTIFACTS", str(tree / "artifacts"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert bisect_command.bisect_root(tree, None) == default_root()
    monkeypatch.setenv("VIOMMU_ARTIFACTS", str(tmp_path / "elsewhere"))
    assert bisect_command.bisect_root(tree, None) == tmp_path / "elsewhere"
    assert bisect_command.bisect_root(tree, tmp_path / "given") == tmp_path / "given"
    with pytest.raises(BisectInputError, match=r"inside .*tree: its files would change"):
        bisect_command.bisect_root(tree, tree / "out")


# -- one step, classified -----------------------------------------------------------------


def _classify(
    tmp_path: Path,
    build: Callable[[step.Plan, Path], step.Built] | None = None,
    test: step.Tester | None = None,
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> step.StepRecord:
    assert monkeypatch is not None
    monkeypatch.setitem(step.BUILDERS, "kernel", build or (lambda plan, d: step.Built(1.5)))
    if test is not None:
        monkeypatch.setitem(step.TESTERS, "run", test)
    record = step.StepRecord(1, "c" * 40, "subject", str(tmp_path))
    record.exit_code = step.classify(plan_for(tmp_path, tmp_path / "run"), record, tmp_path)
    return record


def _raise(exc: BaseException) -> Callable[..., Any]:
    def fn(*args: Any) -> Any:
        raise exc

    return fn


def _ready_then(exc: BaseException) -> step.Tester:
    def fn(plan: step.Plan, built: step.Built, artifacts: Path, on_ready: Any) -> Verdict:
        on_ready(None)
        raise exc

    return fn


def _verdict(*checks: Check) -> step.Tester:
    def fn(plan: step.Plan, built: step.Built, artifacts: Path, on_ready: Any) -> Verdict:
        on_ready(None)
        return Verdict("fake", list(checks))

    return fn


@pytest.mark.parametrize(
    ("build", "test", "code", "phase"),
    [
        (_raise(ImageBuildError("make", "error 2")), None, 125, "build"),
        (_raise(KernelConfigError("kernel config", "IOMMUFD=n")), None, 125, "build"),
        (_raise(PrerequisiteError("gcc missing")), None, 128, "build"),
        (None, _raise(MachineError("no ready marker")), 125, "boot"),
        (None, _raise(PrerequisiteError("no QEMU")), 128, "boot"),
        (None, _ready_then(Tier1UnavailableError("guest kernel lacks IOMMUFD_TEST")), 125,
         "scenario"),
        (None, _ready_then(AgentConnectionLostError("guest died mid-ioctl")), 1, "scenario"),
        (None, _verdict(Check.equal("x", 1, 1)), 0, "done"),
        (None, _verdict(Check.equal("x", 1, 1), Check.equal("y", 2, 3)), 1, "done"),
        (None, _verdict(), 1, "done"),
    ],
)  # fmt: skip
def test_step_classification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, build: Any, test: Any, code: int, phase: str
) -> None:
    record = _classify(tmp_path, build, test, monkeypatch)
    assert (record.exit_code, record.phase) == (code, phase)
    assert record.state == step.STATES[code]
    if code == 1:
        assert record.failing
    if phase != "build":
        assert record.built_s == 1.5


def test_a_row_raised_after_ready_is_the_failing_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = _classify(tmp_path, None, _ready_then(AgentConnectionLostError("gone")), monkeypatch)
    assert record.failing[0]["name"] == step.RAISED_ROW
    assert record.failing[0]["got"] == "AgentConnectionLostError: gone"


def test_a_harness_bug_aborts_the_bisection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "tree"
    make_repo(tree, SERIES[:2])
    plan = plan_for(tree, tmp_path / "run")
    monkeypatch.setitem(step.BUILDERS, "kernel", _raise(TypeError("a bug")))
    assert step.main(plan.save(tmp_path / "run" / step.PLAN_FILE)) == step.ABORT
    (record_path,) = (tmp_path / "run" / "steps").glob(f"*/{step.RECORD_FILE}")
    record = step.StepRecord.read(record_path)
    assert (record.state, record.error, record.subject) == ("abort", "TypeError: a bug", "c1")


# -- QEMU trees (a fake tree: see the module docstring) ---------------------------------

FAKE_CONFIGURE = """#!/bin/sh
echo "configure $*" >> configure-runs.txt
[ -e "$(dirname "$0")/configure-fails" ] && exit 1
echo "rule fake" > build.ninja
"""

FAKE_NINJA = """#!/bin/sh
# ninja -C BUILD -jN TARGET
build="$2"; target="$4"
src="$(cat "$build/src")"
[ -e "$src/broken" ] && { echo "error: fake compile error"; exit 1; }
echo "ninja $*" >> "$build/ninja-runs.txt"
printf '#!/bin/sh\\n' > "$build/$target"; chmod +x "$build/$target"
"""


@pytest.fixture
def qemu_tree_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    tree = tmp_path / "qemu"
    tree.mkdir()
    (tree / "configure").write_text(FAKE_CONFIGURE)
    (tree / "configure").chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ninja").write_text(FAKE_NINJA)
    (bin_dir / "ninja").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tree


def test_qemu_command_lines(tmp_path: Path) -> None:
    tree = Path("/src/qemu")
    assert qemu_tree.configure_command(tree, "arm64") == [
        "/src/qemu/configure", "--target-list=aarch64-softmmu", "--disable-docs"
    ]  # fmt: skip
    build = qemu_tree.build_dir(tree, "x86_64", tmp_path)
    assert build.parent.parent == tmp_path and build.name == "x86_64-softmmu"
    assert qemu_tree.build_command(build, "x86_64", 2) == [
        "ninja", "-C", str(build), "-j2", "qemu-system-x86_64"
    ]  # fmt: skip
    assert qemu_tree.binary_path(build, "arm64") == build / "qemu-system-aarch64"
    # one build directory per tree (and arch), never inside the tree
    assert qemu_tree.build_dir(Path("/other/qemu"), "x86_64", tmp_path) != build
    assert qemu_tree.build_dir(tree, "arm64", tmp_path) != build


def test_qemu_tree_configures_once_then_builds_incrementally(qemu_tree_env: Path) -> None:
    tree = qemu_tree_env
    build = qemu_tree.build_dir(tree, "x86_64")
    build.mkdir(parents=True)
    (build / "src").write_text(str(tree))  # tells the fake ninja which tree it builds
    log = build.parent / "log"
    first = qemu_tree.build_qemu(tree, "x86_64", log, jobs=2)
    second = qemu_tree.build_qemu(tree, "x86_64", log, jobs=2)
    assert first.configured and not second.configured
    assert first.binary == build / "qemu-system-x86_64" and first.binary.is_file()
    assert (build / "configure-runs.txt").read_text().splitlines() == [
        "configure --target-list=x86_64-softmmu --disable-docs"
    ]
    assert len((build / "ninja-runs.txt").read_text().splitlines()) == 2
    assert sorted(p.name for p in tree.iterdir()) == ["configure"]  # nothing written in the tree
    with open(tree / "configure", "a") as f:  # the script changed: configure again
        f.write("# changed\n")
    assert qemu_tree.build_qemu(tree, "x86_64", log, jobs=2).configured


@pytest.mark.parametrize("breakage", ["broken", "configure-fails"])
def test_qemu_tree_build_failure_is_a_skip(
    qemu_tree_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, breakage: str
) -> None:
    tree = qemu_tree_env
    build = qemu_tree.build_dir(tree, "x86_64")
    build.mkdir(parents=True)
    (build / "src").write_text(str(tree))
    (tree / breakage).write_text("")
    plan = step.Plan(tree=str(tree), kind="qemu", arch="x86_64", run_dir=str(tmp_path),
                     scenario="fake")  # fmt: skip
    record = step.StepRecord(1, "c" * 40, "s", str(tmp_path))
    monkeypatch.setitem(step.TESTERS, "run", _raise(AssertionError("must not run")))
    assert step.classify(plan, record, tmp_path) == step.SKIP
    assert record.phase == "build" and record.error.startswith("ImageBuildError: qemu ")
    assert "fake compile error" in (tmp_path / "build.log").read_text() or breakage != "broken"


def test_qemu_step_hands_the_built_binary_to_the_test(
    qemu_tree_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = qemu_tree_env
    build = qemu_tree.build_dir(tree, "arm64")
    build.mkdir(parents=True)
    (build / "src").write_text(str(tree))
    seen: list[str | None] = []

    def test(plan: step.Plan, built: step.Built, artifacts: Path, on_ready: Any) -> Verdict:
        seen.append(built.qemu)
        on_ready(None)
        return Verdict("fake", [Check.equal("x", 1, 1)])

    monkeypatch.setitem(step.TESTERS, "run", test)
    plan = step.Plan(tree=str(tree), kind="qemu", arch="arm64", run_dir=str(tmp_path),
                     scenario="fake")  # fmt: skip
    record = step.StepRecord(1, "c" * 40, "s", str(tmp_path))
    assert step.classify(plan, record, tmp_path) == step.GOOD
    assert seen == [str(build / "qemu-system-aarch64")]


# -- what a step boots (the boot itself faked: it needs the VM lock and minutes) ----------


def test_a_kernel_step_runs_the_scenario_on_the_tree_and_a_qemu_step_on_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []

    def fake_run_scenario(name: str, arch: str, params: Any, **kw: Any) -> Verdict:
        calls.append({"name": name, "arch": arch, "params": params, **kw})
        return Verdict(name, [Check.equal("x", 1, 1)])

    monkeypatch.setattr(step, "run_scenario", fake_run_scenario)
    plan = plan_for(tmp_path, tmp_path / "run")
    step.run_test(plan, step.Built(1.0, kernel=tmp_path / "bzImage"), tmp_path, lambda g: None)
    plan.kind, plan.qemu = "qemu", "/usr/bin/qemu-system-x86_64"
    step.run_test(plan, step.Built(1.0, qemu="/build/qemu-system-x86_64"), tmp_path, print)
    kernel_call, qemu_call = calls
    assert kernel_call["kernel_tree"] == tmp_path and kernel_call["params"] == {"seed": 1}
    assert kernel_call["qemu"] is None and kernel_call["artifacts"] == tmp_path
    assert qemu_call["kernel_tree"] is None and qemu_call["qemu"] == "/build/qemu-system-x86_64"


def test_a_bundle_step_boots_the_recorded_machine_with_the_built_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {}
    for name in ("kernel", "initrd", "qemu", "bzImage", "initramfs"):
        files[name] = tmp_path / name
        files[name].write_bytes(b"x")
    files["qemu"].chmod(0o755)
    vtd = make_viommu("vtd", {"flts": False})
    machine = Machine(arch="x86_64", kernel=files["kernel"], initrd=files["initrd"],
                      viommu=vtd, devices=make_devices(["edu"]))  # fmt: skip
    prepared = Prepared(machine, str(files["qemu"]), "READY", {"key": "k"}, {"flts": False})
    failed = Verdict("vtd-nesting", [Check.equal("x", 1, 2)])
    data = repro.scenario_bundle(get("vtd-nesting"), {"seed": 5}, prepared, None, tmp_path,
                                 verdict=failed)  # fmt: skip
    bundle = repro.write_bundle(data, tmp_path / "b")
    seen: dict[str, Any] = {}

    def fake_execute(
        scenario: Any, prep: Prepared, params: Any, artifacts: Path, **kw: Any
    ) -> Verdict:
        seen.update(scenario=scenario.name, prepared=prep, params=params, artifacts=artifacts)
        return Verdict(scenario.name, [Check.equal("x", 1, 1)])

    monkeypatch.setattr(step, "execute", fake_execute)
    monkeypatch.setattr(step.probe, "require_properties", lambda machine, caps: None)
    monkeypatch.setattr(step.probe, "probe", lambda binary: None)
    plan = step.Plan(tree=str(tmp_path), kind="kernel", arch="x86_64", run_dir=str(tmp_path),
                     bundle=str(bundle))  # fmt: skip
    built = step.Built(2.0, kernel=files["bzImage"], initrd=files["initramfs"], image={"key": "t"})
    assert step.run_test(plan, built, tmp_path / "step", lambda g: None).passed
    booted = seen["prepared"]
    assert (seen["scenario"], seen["params"]) == ("vtd-nesting", {"seed": 5})
    assert booted.machine.kernel == files["bzImage"] and booted.machine.initrd == files["initramfs"]
    assert booted.machine.viommu == machine.viommu and booted.binary == str(files["qemu"])
    assert booted.image == {"key": "t"} and booted.viommu_options == {"flts": False}


def test_compile_note_tells_a_fresh_build_from_a_cached_kernel(tmp_path: Path) -> None:
    from harness.images.cache import META

    (tmp_path / META).write_text('{"build_seconds": 58.2, "from_scratch": false}')
    assert step.compile_note(tmp_path, time.time() - 10) == "new kernel: 58s incremental"
    assert step.compile_note(tmp_path, time.time() + 100) == "cached kernel"
    assert step.compile_note(tmp_path / "missing", time.time()) == ""
