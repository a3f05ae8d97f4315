"""pytest plugin: the harness's options, markers and fixtures that hand tests booted guests.

Every guest a test boots gets its own artifacts directory (argv, console, QMP
transcript, QEMU log with traces, dmesg, agent log).  When the test fails, its path and
the console's last lines are printed, and recorded as JUnit properties.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
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
}

_GUESTS_KEY = pytest.StashKey[list[Any]]()
_REPORT_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("viommu-harness")
    group.addoption("--qemu", help="QEMU binary to test (default: the installed one per arch)")
    group.addoption("--arch", choices=("x86_64", "arm64", "all"), default="all",
                    help="run VM tests for this guest arch only")  # fmt: skip
    group.addoption("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    group.addoption("--viommu", choices=("vtd", "smmuv3", "all"), default="all",
                    help="run VM tests for this vIOMMU only")  # fmt: skip
    group.addoption("--host-device", metavar="BDF", help="tier 3: a host device for passthrough")
    group.addoption("--images", metavar="DIR", help="image cache directory (XDG cache default)")
    group.addoption("--keep-on-failure", action="store_true",
                    help="leave a failed test's guest running until Enter is pressed")  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    images = config.getoption("--images", default=None)
    if images:
        os.environ["VIOMMU_IMAGE_CACHE"] = str(Path(images).resolve())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    arch = config.getoption("--arch")
    viommu = config.getoption("--viommu")
    for item in items:
        if arch != "all":
            other = {"x86_64", "arm64"} - {arch}
            if any(item.get_closest_marker(m) for m in other):
                item.add_marker(pytest.mark.skip(reason=f"--arch={arch} deselects this guest arch"))
        if viommu != "all":
            other = {"vtd", "smmuv3"} - {viommu}
            if any(item.get_closest_marker(m) for m in other):
                item.add_marker(pytest.mark.skip(reason=f"--viommu={viommu} deselects this vIOMMU"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report: pytest.TestReport = yield
    item.stash.setdefault(_REPORT_KEY, {})[report.when] = report
    if report.failed:
        for guest in item.stash.get(_GUESTS_KEY, []):
            vm = guest.vm
            report.sections.append(
                (
                    f"guest {vm.name}: artifacts {vm.artifacts}",
                    f"health: {vm.health().cause or 'running'}\n"
                    f"--- console (last lines) ---\n{vm.console_tail()}",
                )
            )
            item.user_properties.append((f"artifacts:{vm.name}", str(vm.artifacts)))
    return report


def _failed(item: pytest.Item) -> bool:
    return any(r.failed for r in item.stash.get(_REPORT_KEY, {}).values())


def artifacts_dir_for(item: pytest.Item) -> Path:
    """``artifacts/tests/<test id>`` for one test (unique per xdist worker and rerun)."""
    from harness.artifacts import new_artifacts_dir

    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid.split("::", 1)[-1])
    return new_artifacts_dir(name, Path(os.environ.get("VIOMMU_ARTIFACTS") or "artifacts")
                             .resolve() / "tests")  # fmt: skip


BootGuest = Callable[..., Any]


def _keep(config: pytest.Config, guests: list[Any]) -> None:
    """Leave a failed test's guests running until Ctrl-C, printing how to attach."""
    capman = config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        for guest in guests:
            print(
                f"\nkept {guest.vm.name}:\n  ssh: {guest.ssh_command()}"
                f"\n  qmp: {guest.vm.qmp_socket}\n  console: {guest.vm.console_log}"
            )
        print("Ctrl-C tears them down", flush=True)
        try:
            while any(g.vm.health().cause is None for g in guests):
                time.sleep(1)
        except KeyboardInterrupt:
            pass


@pytest.fixture
def boot_guest(request: pytest.FixtureRequest) -> Iterator[BootGuest]:
    """Factory: ``boot_guest(arch, viommu="vtd", devices=("edu",), **options) -> Guest``.

    The guest is torn down after the test, whatever happened; on failure its artifacts
    path and console tail are printed.
    """
    from harness import images
    from harness.guest import Guest
    from harness.profiles import guest_machine, make_viommu
    from harness.qemu.probe import MissingCapabilityError, probe, require_properties, resolve_binary

    config = request.config
    started: list[Any] = []
    request.node.stash[_GUESTS_KEY] = started

    def boot(
        arch: str,
        viommu: str | None = None,
        devices: Sequence[str] = ("edu",),
        viommu_options: dict[str, Any] | None = None,
        name: str | None = None,
        **machine_options: Any,
    ) -> Any:
        image = images.ensure(arch)
        machine = guest_machine(
            image,
            make_viommu(viommu, viommu_options),
            devices,
            accel=machine_options.pop("accel", config.getoption("--accel")),
            **machine_options,
        )
        binary = resolve_binary(arch, config.getoption("--qemu"))
        try:
            require_properties(machine, probe(binary))
        except MissingCapabilityError as exc:
            pytest.skip(str(exc))
        label = name or f"{arch}-{viommu or 'none'}"
        guest = Guest(
            machine,
            artifacts_dir_for(request.node) / label,
            ready_marker=image.ready_marker,
            name=label,
            qemu=binary,
        )
        started.append(guest)
        guest.start()
        return guest

    yield boot
    if config.getoption("--keep-on-failure") and _failed(request.node):
        _keep(config, started)
    for guest in reversed(started):
        guest.close()
