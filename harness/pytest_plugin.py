"""pytest plugin: the harness's options, markers and fixtures that hand tests booted guests.

Fixtures:

- ``boot_guest``: factory ``boot_guest(arch, viommu=None, devices=("edu",), ...) -> Guest``,
  a fresh guest per call, torn down after the test;
- ``shared_guest``: same signature, but guests are kept for the whole session and handed
  to every test asking for the same machine description (for tests that leave no state
  behind: read-only probing, agent calls); a dead shared guest is replaced;
- ``run_registered``: ``run_registered(name, arch, params=None, viommu_options=None)
  -> Verdict`` runs a registered scenario through ``harness.scenarios.runner``;
- ``registered_scenario``: parametrized over every registered scenario (tier >= 1,
  from ``harness.scenarios``) x arch, with its tier / arch / vIOMMU markers;
- ``artifacts_dir`` (this test's directory), ``seed`` (the session's seed),
  ``host_device`` (``--host-device``, skipped unless bound to vfio-pci).

Every guest a test boots gets its own artifacts directory under
``artifacts/tests/<test>-<time>-<pid>/``; the paths are recorded as JUnit properties.
When the test fails, the paths, the console's last lines and (scenarios) the verdict
table are printed, and a repro bundle (``repro.json``, see ``harness.repro``) is written.
Skips name the exact missing capability (``pytest -rs``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MARKERS = {
    "tier0": "pure Python, no guest",
    "tier1": "boots a guest; kernel's iommufd selftest mock",
    "tier2": "boots a guest; emulated VT-d / SMMUv3 with real DMA",
    "tier3": "QEMU's own nesting: passthrough or L2 inside L1",
    "vtd": "Intel VT-d",
    "smmuv3": "Arm SMMUv3",
    "x86_64": "x86_64 guest",
    "arm64": "arm64 guest",
    "slow": "takes more than a minute",
    "nightly": "runs only in the nightly environment (VIOMMU_NIGHTLY=1, tox -e nightly):"
    " kernel builds from scratch, long fuzzing, the whole selftest matrix",
    "kconfig": "kconfig(*OPTIONS): skip unless the guest kernel has CONFIG_<OPTION>=y/m",
    "kernel_reports_expected": "the test makes the guest kernel report (WARN, stall) on purpose",
}
ARCHES = ("x86_64", "arm64")
VIOMMUS = ("vtd", "smmuv3")

_RECORDS_KEY = pytest.StashKey[list["GuestRun"]]()
_REPORT_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()
_DIR_KEY = pytest.StashKey[Path]()
_SEED_KEY = pytest.StashKey[int]()
_DONE_KEY = pytest.StashKey[bool]()

#: pytest options a test bundle records so that ``harness repro`` re-runs with them
REPLAYED_OPTIONS = ("qemu", "accel", "images", "host_device")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("viommu-harness")
    add = group.addoption
    add(
        "--qemu",
        action="append",
        default=[],
        metavar="[ARCH=]PATH",
        help="QEMU binary to test; ARCH=PATH for one arch, a bare PATH applies to the arch"
        " its name says (qemu-system-aarch64 -> arm64) or to all; repeatable"
        " (default: the installed one per arch)",
    )
    add("--arch", choices=("x86_64", "arm64", "all"), default="all",
        help="run VM tests for this guest arch only")  # fmt: skip
    add("--accel", choices=("auto", "kvm", "tcg"), default="auto",
        help="accelerator; kvm skips tests where KVM is unusable")  # fmt: skip
    add("--viommu", choices=("vtd", "smmuv3", "all"), default="all",
        help="run VM tests for this vIOMMU only")  # fmt: skip
    add("--host-device", metavar="BDF", help="tier 3: a host device for passthrough")
    add("--images", metavar="DIR",
        help="image cache directory (sets $VIOMMU_IMAGE_CACHE; default: XDG cache)")  # fmt: skip
    add("--keep-on-failure", action="store_true",
        help="keep a failed test's guests running until Ctrl-C (use with -s)")  # fmt: skip
    add("--seed", type=int, metavar="N",
        help="seed for scenarios and tests (default: random, shown in the header)")  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    # A runner that starts pytest as a background job of a non-interactive shell leaves
    # SIGINT ignored, and every child inherits that: the tests that send Ctrl-C to a child
    # (bisect, fleet, repro --keep) then wait for nothing.  Python's own handler again
    # (a child gets SIG_DFL across exec, then its KeyboardInterrupt).
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    images = config.getoption("--images", default=None)
    if images:
        os.environ["VIOMMU_IMAGE_CACHE"] = str(Path(images).resolve())
    seed = config.getoption("--seed", default=None)
    workerinput = getattr(config, "workerinput", None)
    if seed is None and workerinput is not None:
        seed = workerinput.get("viommu_seed")
    config.stash[_SEED_KEY] = seed if seed is not None else secrets.randbits(32)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: every worker uses the controller's seed and dies with the controller."""
    from harness.qemu.lifetime import identity

    node.workerinput["viommu_seed"] = node.config.stash[_SEED_KEY]
    node.workerinput["viommu_owner"] = str(identity())


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Sweep what killed runs left (controller only); an xdist worker follows its controller.

    The sweep touches only run directories whose owner is dead, never a live worker's.
    """
    config = session.config
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        if owner := workerinput.get("viommu_owner"):
            from harness.qemu.lifetime import ProcessId, follow_owner

            follow_owner(ProcessId.parse(owner))
        return
    from harness.qemu.rundir import sweep

    reporter = config.pluginmanager.get_plugin("terminalreporter")
    sweep(log=reporter.write_line if reporter is not None else None)


def pytest_report_header(config: pytest.Config) -> list[str]:
    from harness.artifacts import artifacts_root
    from harness.images.cache import default_root

    return [
        f"viommu-harness: seed {config.stash[_SEED_KEY]} (replay with --seed),"
        f" artifacts {artifacts_root() / 'tests'}, images {default_root()}"
    ]


NIGHTLY_ENV = "VIOMMU_NIGHTLY"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(NIGHTLY_ENV) != "1":  # CI's budget: nightly tests are not collected
        nightly = [item for item in items if item.get_closest_marker("nightly")]
        if nightly:
            config.hook.pytest_deselected(items=nightly)
            items[:] = [item for item in items if not item.get_closest_marker("nightly")]
    arch = config.getoption("--arch")
    viommu = config.getoption("--viommu")
    for item in items:
        if arch != "all":
            other = set(ARCHES) - {arch}
            if any(item.get_closest_marker(m) for m in other):
                item.add_marker(pytest.mark.skip(reason=f"--arch={arch} deselects this guest arch"))
        if viommu != "all":
            other = set(VIOMMUS) - {viommu}
            if any(item.get_closest_marker(m) for m in other):
                item.add_marker(pytest.mark.skip(reason=f"--viommu={viommu} deselects this vIOMMU"))


# -- registered scenarios ----------------------------------------------------------------


def scenario_cases(registry: Mapping[str, Any] | None = None) -> list[Any]:
    """``pytest.param((name, arch))`` for every registered scenario of tier >= 1 x arch.

    Only scenarios registered by ``harness.scenarios`` modules count (tests may register
    their own, which they run themselves).  Marks: ``tier<N>``, the arch, the vIOMMU the
    scenario's guest has on that arch, and ``slow`` for tier 3.
    """
    if registry is None:
        from harness.scenarios.base import load_all

        registry = load_all()
    cases = []
    for name in sorted(registry):
        scenario = registry[name]
        module = getattr(scenario.run, "__module__", "")
        if scenario.tier < 1 or not module.startswith("harness.scenarios."):
            continue
        for arch in scenario.arches:
            marks = [getattr(pytest.mark, f"tier{scenario.tier}"), getattr(pytest.mark, arch)]
            kind = scenario.guest(arch).viommu
            if kind in VIOMMUS:
                marks.append(getattr(pytest.mark, kind))
            if scenario.tier >= 3:
                marks.append(pytest.mark.slow)
            cases.append(pytest.param((name, arch), marks=marks, id=f"{name}-{arch}"))
    return cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "registered_scenario" in metafunc.fixturenames:
        metafunc.parametrize("registered_scenario", scenario_cases())


# -- skip reasons ------------------------------------------------------------------------


def qemu_for(values: Sequence[str], arch: str) -> str | None:
    """The ``--qemu`` binary for ``arch`` (``ARCH=PATH``, or a PATH whose name fits)."""
    names = {"x86_64": ("x86_64",), "arm64": ("aarch64", "arm64")}
    fallback = None
    for value in values:
        prefix, sep, path = value.partition("=")
        if sep and prefix in ARCHES:
            if prefix == arch:
                return path
            continue
        base = Path(value).name
        if any(n in base for n in names[arch]):
            return value
        if not any(n in base for other in ARCHES for n in names[other]):
            fallback = value
    return fallback


def kvm_skip_reason(arch: str, accel: str) -> str | None:
    """Why ``accel`` cannot be used for an ``arch`` guest on this host, or None."""
    if accel != "kvm":
        return None
    from harness.host import host_arch
    from harness.qemu import accel as accel_mod

    if host_arch() != arch:
        return f"no KVM: an {arch} guest cannot use KVM on this {host_arch()} host"
    if not os.path.exists("/dev/kvm"):
        return "no KVM: /dev/kvm does not exist"
    if not accel_mod.kvm_available(arch):
        return "no KVM: /dev/kvm is not readable and writable by this user"
    if accel_mod.kvm_verdict(arch) is False:
        return (
            "no usable KVM: guests stopped with a KVM internal error on this host"
            " (remembered in ~/.cache/viommu-harness/kvm-verdict.json)"
        )
    return None


def kconfig_missing(config_text: str, options: Sequence[str]) -> list[str]:
    """Which ``CONFIG_`` options are neither ``=y`` nor ``=m`` in a kernel .config."""
    present = set(re.findall(r"^(CONFIG_[A-Za-z0-9_]+)=[ym]$", config_text, re.M))
    wanted = [o if o.startswith("CONFIG_") else f"CONFIG_{o}" for o in options]
    return [o for o in wanted if o not in present]


def kconfig_skip_reason(image: Any, options: Sequence[str]) -> str | None:
    """``guest kernel ... lacks CONFIG_X`` when the image's kernel misses an option."""
    if not options:
        return None
    try:
        text = Path(image.config).read_text()
    except OSError as exc:
        return f"guest kernel config unreadable ({exc})"
    missing = kconfig_missing(text, options)
    if missing:
        release = getattr(image, "kernel_release", "") or image.key
        return f"guest kernel {release} lacks {', '.join(missing)} (image {image.key})"
    return None


def host_device_skip_reason(
    bdf: str | None, sysfs: Path = Path("/sys/bus/pci/devices")
) -> str | None:
    """Why ``--host-device`` cannot be passed through, or None."""
    if not bdf:
        return "no host device: pass --host-device BDF (a device bound to vfio-pci)"
    full = bdf if bdf.count(":") == 2 else f"0000:{bdf}"
    dev = sysfs / full
    if not dev.exists():
        return f"host device {full} does not exist"
    driver = dev / "driver"
    bound = os.path.basename(os.readlink(driver)) if driver.is_symlink() else None
    if bound != "vfio-pci":
        return f"host device {full} is bound to {bound or 'no driver'}, not vfio-pci"
    if not (dev / "iommu_group").exists():
        return f"host device {full} has no IOMMU group (host IOMMU off?)"
    return None


def _kconfig_options(item: pytest.Item) -> list[str]:
    return [str(o) for mark in item.iter_markers("kconfig") for o in mark.args]


# -- per-test records --------------------------------------------------------------------


@dataclass
class GuestRun:
    """A guest (or a scenario run's guest) a test used, with what a repro bundle needs."""

    label: str
    artifacts: Path
    guest: Any = None
    record: dict[str, Any] | None = None
    verdict: Any = None
    bundle: Path | None = None
    shared: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def console_tail(self, lines: int = 25) -> str:
        if self.guest is not None:
            tail: str = self.guest.vm.console_tail(lines)
            return tail
        try:
            text = (self.artifacts / "console.log").read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "\n".join(text.splitlines()[-lines:])


def _records(item: pytest.Item) -> list[GuestRun]:
    return item.stash.setdefault(_RECORDS_KEY, [])


def _add_property(item: pytest.Item, name: str, value: str) -> None:
    if (name, value) not in item.user_properties:
        item.user_properties.append((name, value))


def artifacts_dir_of(item: pytest.Item) -> Path:
    """``artifacts/tests/<test id>-<time>-<pid>``: one per test (unique across xdist workers)."""
    if _DIR_KEY not in item.stash:
        from harness.artifacts import artifacts_root, new_artifacts_dir

        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid.split("::", 1)[-1])
        item.stash[_DIR_KEY] = new_artifacts_dir(name, artifacts_root() / "tests")
        _add_property(item, "artifacts", str(item.stash[_DIR_KEY]))
    return item.stash[_DIR_KEY]


artifacts_dir_for = artifacts_dir_of


def _register(item: pytest.Item, run: GuestRun) -> None:
    _records(item).append(run)
    _add_property(item, f"artifacts:{run.label}", str(run.artifacts))


def _unique_subdir(parent: Path, label: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label) or "guest"
    path = parent / safe
    n = 2
    while path.exists():
        path = parent / f"{safe}-{n}"
        n += 1
    path.mkdir(parents=True)
    return path


def _replayed_options(config: pytest.Config) -> list[str]:
    options = ["-p", "harness.pytest_plugin"]  # a no-op where a conftest already loads it
    for value in config.getoption("qemu") or []:
        options += ["--qemu", value]
    if config.getoption("accel") != "auto":
        options += ["--accel", config.getoption("accel")]
    if os.environ.get("VIOMMU_IMAGE_CACHE"):
        options += ["--images", os.environ["VIOMMU_IMAGE_CACHE"]]
    if config.getoption("host_device"):
        options += ["--host-device", config.getoption("host_device")]
    return options


def _write_test_bundle(item: pytest.Item, runs: list[GuestRun], error: str | None) -> Path | None:
    from harness import repro

    records = [r.record for r in runs if r.record is not None]
    if not records:
        return None
    bundle = repro.failed_test_bundle(
        nodeid=item.nodeid,
        rootdir=item.config.rootpath,
        options=_replayed_options(item.config),
        seed=item.config.stash[_SEED_KEY],
        guests=records,
        error=error,
    )
    return repro.write_bundle(bundle, artifacts_dir_of(item))


def _on_failure(item: pytest.Item, report: pytest.TestReport) -> None:
    runs = _records(item)
    for run in runs:
        text = ""
        if run.guest is not None:
            text += f"health: {run.guest.vm.health().cause or 'running'}\n"
        if run.verdict is not None:
            text += f"--- verdict ---\n{run.verdict.table()}\n"
        text += f"--- console (last lines) ---\n{run.console_tail()}"
        if run.bundle is not None:
            text += f"\n--- repro ---\npython -m harness repro {run.bundle}"
        shared = " (shared)" if run.shared else ""
        report.sections.append((f"guest {run.label}{shared}: artifacts {run.artifacts}", text))
    if item.stash.get(_DONE_KEY, False):
        return
    item.stash[_DONE_KEY] = True
    bundles = [r.bundle for r in runs if r.bundle is not None]
    if not bundles and any(r.record is not None and not r.shared for r in runs):
        crash = getattr(getattr(report.longrepr, "reprcrash", None), "message", None)
        lines = str(crash or report.longreprtext).strip().splitlines() or [""]
        with contextlib.suppress(OSError):
            path = _write_test_bundle(item, runs, lines[0][:500])
            if path is not None:
                bundles.append(path)
                report.sections.append(("repro", f"python -m harness repro {path}"))
    for path in bundles:
        _add_property(item, "repro", str(path))
        if ("repro", str(path)) not in report.user_properties:
            report.user_properties.append(("repro", str(path)))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report: pytest.TestReport = yield
    item.stash.setdefault(_REPORT_KEY, {})[report.when] = report
    if report.failed:
        _on_failure(item, report)
    return report


def _failed(item: pytest.Item) -> bool:
    return any(r.failed for r in item.stash.get(_REPORT_KEY, {}).values())


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def artifacts_dir(request: pytest.FixtureRequest) -> Path:
    """This test's artifacts directory (recorded in the JUnit XML, printed on failure)."""
    return artifacts_dir_of(request.node)


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """The session's seed (``--seed N`` to replay; recorded in repro bundles)."""
    return request.config.stash[_SEED_KEY]


@pytest.fixture
def host_device(request: pytest.FixtureRequest) -> str:
    """``--host-device``: skipped unless it names a device bound to vfio-pci."""
    bdf = request.config.getoption("--host-device")
    reason = host_device_skip_reason(bdf)
    if reason:
        pytest.skip(reason)
    return str(bdf)


def _keep(config: pytest.Config, guests: list[Any]) -> None:
    """Leave a failed test's guests running until Ctrl-C, printing how to attach."""
    from harness.replay import keep_alive

    live = [g for g in guests if g.vm.health().cause is None]
    if not live:
        return
    capman = config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        keep_alive(live, lambda text: print(text, flush=True))


@dataclass
class _BootPlan:
    machine: Any
    binary: str
    image: Any


def _plan(
    config: pytest.Config,
    item: pytest.Item,
    arch: str,
    viommu: str | None,
    devices: Sequence[str],
    viommu_options: dict[str, Any] | None,
    machine_options: dict[str, Any],
) -> _BootPlan:
    """Image, machine and binary for a test guest; skips name what is missing."""
    from harness import images
    from harness.errors import PrerequisiteError
    from harness.profiles import guest_machine, make_viommu
    from harness.qemu.probe import (
        MissingCapabilityError,
        QemuNotFoundError,
        probe,
        require_properties,
        resolve_binary,
    )

    accel = machine_options.pop("accel", config.getoption("--accel"))
    if reason := kvm_skip_reason(arch, accel):
        pytest.skip(reason)
    viommu_desc = make_viommu(viommu, viommu_options)
    try:
        binary = resolve_binary(arch, qemu_for(config.getoption("qemu") or [], arch))
    except QemuNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        image = images.ensure(arch)
    except PrerequisiteError as exc:
        pytest.skip(f"cannot build the {arch} guest image: {exc}")
    if reason := kconfig_skip_reason(image, _kconfig_options(item)):
        pytest.skip(reason)
    machine = guest_machine(image, viommu_desc, devices, accel=accel, **machine_options)
    try:
        require_properties(machine, probe(binary))
    except MissingCapabilityError as exc:
        pytest.skip(str(exc))
    return _BootPlan(machine, binary, image)


def _record(plan: _BootPlan, guest: Any, label: str) -> dict[str, Any]:
    from harness.repro import guest_record
    from harness.scenarios.runner import image_identity

    return guest_record(
        name=label,
        machine=plan.machine,
        binary=plan.binary,
        ready_marker=plan.image.ready_marker,
        image=image_identity(plan.image),
        accel_used=guest.vm.accel,
        artifacts=guest.artifacts,
    )


BootGuest = Callable[..., Any]


@pytest.fixture
def boot_guest(request: pytest.FixtureRequest) -> Iterator[BootGuest]:
    """Factory: ``boot_guest(arch, viommu=None, devices=("edu",), **options) -> Guest``.

    The guest is torn down after the test, whatever happened; on failure its artifacts
    path and console tail are printed and a repro bundle is written.
    """
    from harness.guest import Guest

    config = request.config
    item = request.node
    started: list[Any] = []

    def boot(
        arch: str,
        viommu: str | None = None,
        devices: Sequence[str] = ("edu",),
        viommu_options: dict[str, Any] | None = None,
        name: str | None = None,
        **machine_options: Any,
    ) -> Any:
        plan = _plan(config, item, arch, viommu, devices, viommu_options, machine_options)
        label = name or f"{arch}-{viommu or 'none'}"
        directory = _unique_subdir(artifacts_dir_of(item), label)
        guest = Guest(
            plan.machine,
            directory,
            ready_marker=plan.image.ready_marker,
            name=label,
            qemu=plan.binary,
        )
        run = GuestRun(label, directory, guest=guest)
        _register(item, run)
        started.append((guest, run, plan))
        try:
            guest.start()
        finally:
            with contextlib.suppress(Exception):
                run.record = _record(plan, guest, label)
        marks.append((guest, guest.call("system.dmesg_mark", timeout=15)))
        return guest

    marks: list[tuple[Any, str]] = []
    yield boot
    if config.getoption("--keep-on-failure") and _failed(item):
        _keep(config, [g for g, _, _ in started])
    try:
        _check_kernel_health(item, marks)
    finally:
        for guest, _, _ in reversed(started):
            guest.close()


def _check_kernel_health(item: pytest.Item, marks: Sequence[tuple[Any, str]]) -> None:
    """Fail the test if a live guest's kernel logged a WARN/BUG/Oops/sanitizer/stall report
    since the test got it (``harness.klog``); ``@pytest.mark.kernel_reports_expected`` opts
    out (tests that make the kernel report on purpose)."""
    from harness.scenarios.runner import kernel_health

    if item.get_closest_marker("kernel_reports_expected") or _failed(item):
        return
    problems = []
    for guest, mark in marks:
        if guest.agent is None or guest.vm.health().cause or guest.vm.stall():
            continue  # a guest the test ended on purpose: nothing to read
        row = kernel_health(guest, mark)
        if not row.ok:
            problems.append(f"{guest.vm.name}: {row.got} ({row.note})")
    if problems:
        pytest.fail("guest kernel reported a problem during the test: " + "; ".join(problems))


class GuestPool:
    """Session-wide guests keyed by machine description and binary, closed at the end."""

    def __init__(self) -> None:
        self.guests: dict[str, tuple[Any, GuestRun]] = {}

    @staticmethod
    def key(plan: _BootPlan) -> str:
        return json.dumps([plan.machine.describe(), plan.binary], sort_keys=True)

    def get(self, plan: _BootPlan, label: str) -> tuple[Any, GuestRun]:
        """The live shared guest for ``plan``; boots (or replaces a dead) one."""
        from harness.artifacts import artifacts_root, new_artifacts_dir
        from harness.guest import Guest

        key = self.key(plan)
        if key in self.guests:
            guest, run = self.guests[key]
            if guest.vm.health().cause is None:
                return guest, run
            guest.close()
            del self.guests[key]
        directory = new_artifacts_dir(label, artifacts_root() / "tests" / "shared")
        guest = Guest(plan.machine, directory, ready_marker=plan.image.ready_marker, name=label,
                      qemu=plan.binary)  # fmt: skip
        run = GuestRun(label, directory, guest=guest, shared=True)
        try:
            guest.start()
        except BaseException:
            guest.close()
            raise
        run.record = _record(plan, guest, label)
        self.guests[key] = (guest, run)
        return guest, run

    def close(self) -> None:
        for guest, _ in self.guests.values():
            guest.close()
        self.guests.clear()


@pytest.fixture(scope="session")
def guest_pool() -> Iterator[GuestPool]:
    """The session's shared guests (one pool per xdist worker)."""
    pool = GuestPool()
    yield pool
    pool.close()


@pytest.fixture
def shared_guest(request: pytest.FixtureRequest, guest_pool: GuestPool) -> Iterator[BootGuest]:
    """Factory like ``boot_guest``, but the guest is shared by every test of the session
    asking for the same machine: only for tests that leave no state behind."""
    config = request.config
    item = request.node
    marks: list[tuple[Any, str]] = []

    def get(
        arch: str,
        viommu: str | None = None,
        devices: Sequence[str] = ("edu",),
        viommu_options: dict[str, Any] | None = None,
        name: str | None = None,
        **machine_options: Any,
    ) -> Any:
        plan = _plan(config, item, arch, viommu, devices, viommu_options, machine_options)
        label = name or f"shared-{arch}-{viommu or 'none'}"
        guest, run = guest_pool.get(plan, label)
        _register(item, run)
        marks.append((guest, guest.call("system.dmesg_mark", timeout=15)))
        return guest

    yield get
    _check_kernel_health(item, marks)


RunRegistered = Callable[..., Any]


@pytest.fixture
def run_registered(request: pytest.FixtureRequest) -> RunRegistered:
    """``run_registered(name, arch=None, params=None, viommu_options=None, seed=None)``.

    Runs a registered scenario with this session's options and seed; its guest's
    artifacts go under this test's directory.  Missing capabilities skip.
    """
    config = request.config
    item = request.node

    def run(
        name: str,
        arch: str | None = None,
        params: Mapping[str, Any] | None = None,
        viommu_options: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ) -> Any:
        from harness.errors import PrerequisiteError
        from harness.qemu.probe import MissingCapabilityError, QemuNotFoundError, resolve_binary
        from harness.repro import BUNDLE_FILE
        from harness.scenarios.base import get
        from harness.scenarios.runner import run_scenario

        scenario = get(name)
        arch = arch or scenario.arches[0]
        accel = config.getoption("--accel")
        if reason := kvm_skip_reason(arch, accel):
            pytest.skip(reason)
        qemu = qemu_for(config.getoption("qemu") or [], arch)
        try:
            resolve_binary(arch, qemu)
        except QemuNotFoundError as exc:
            pytest.skip(str(exc))
        directory = _unique_subdir(artifacts_dir_of(item), f"{name}-{arch}")
        record = GuestRun(f"{name}-{arch}", directory)
        _register(item, record)

        def hold(guest: Any, verdict: Any) -> None:
            if not verdict.passed and config.getoption("--keep-on-failure"):
                _keep(config, [guest])

        try:
            verdict = run_scenario(
                name, arch, params, qemu=qemu, accel=accel, artifacts=directory,
                viommu_options=viommu_options,
                seed=seed if seed is not None else config.stash[_SEED_KEY],
                before_teardown=hold,
            )  # fmt: skip
        except (MissingCapabilityError, PrerequisiteError) as exc:
            pytest.skip(str(exc))
        finally:
            if (directory / BUNDLE_FILE).exists():
                record.bundle = directory / BUNDLE_FILE
        record.verdict = verdict
        return verdict

    return run
