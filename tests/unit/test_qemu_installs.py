"""Which QEMU: build-dir detection, launchers, the trixie tree's fix-ups, ``--qemu`` forms.

No QEMU runs here: build directories are fake ones made in tmp_path, and the launchers
run a shell script standing in for QEMU (it prints its PID and arguments).  The trixie
tree itself needs a Debian mirror; tests/vm/test_qemu11.py builds and runs it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ConfigError
from harness.qemu import installs, probe
from harness.qemu.description import IntelIommu, Machine, SmmuV3
from harness.qemu.probe import MissingCapabilityError, QemuCapabilities

pytestmark = pytest.mark.tier0

FAKE_QEMU = '#!/bin/sh\necho "pid=$$"\nfor a in "$@"; do echo "arg=$a"; done\n'


def _fake_binary(path: Path, text: str = FAKE_QEMU) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_meson_build_dir_uses_the_bundle_then_pc_bios(tmp_path: Path) -> None:
    build = tmp_path / "qemu" / "build"
    binary = _fake_binary(build / "qemu-system-aarch64")
    bundle = build / "qemu-bundle" / "usr" / "local" / "share" / "qemu"
    bundle.mkdir(parents=True)
    (build / "pc-bios").mkdir()
    (tmp_path / "qemu" / "pc-bios").mkdir()  # the source tree's blobs
    assert installs.build_firmware_dirs(binary) == [
        bundle,
        build / "pc-bios",
        tmp_path / "qemu" / "pc-bios",
    ]


def test_in_tree_build_finds_the_source_pc_bios(tmp_path: Path) -> None:
    binary = _fake_binary(tmp_path / "src" / "build" / "qemu-system-x86_64")
    (tmp_path / "src" / "pc-bios").mkdir()
    assert installs.build_firmware_dirs(binary) == [tmp_path / "src" / "pc-bios"]


def test_a_lone_binary_is_not_a_build_dir(tmp_path: Path) -> None:
    binary = _fake_binary(tmp_path / "bin" / "qemu-system-x86_64")
    assert installs.build_firmware_dirs(binary) == []
    assert installs.build_dir_launcher(binary, tmp_path / "launchers") is None


def test_build_dir_launcher_adds_firmware_and_keeps_the_pid(tmp_path: Path) -> None:
    build = tmp_path / "qemu" / "build"
    binary = _fake_binary(build / "qemu-system-aarch64")
    (tmp_path / "qemu" / "pc-bios").mkdir()
    launcher = installs.build_dir_launcher(binary, tmp_path / "launchers")
    assert launcher is not None and launcher.name == "qemu-system-aarch64"
    assert not launcher.is_relative_to(build.parent)  # never written into the user's tree
    proc = subprocess.Popen([str(launcher), "-M", "virt"], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=10)
    lines = out.splitlines()
    assert lines[0] == f"pid={proc.pid}"  # exec: the harness's PID (kill, PDEATHSIG) is QEMU's
    assert lines[1:] == ["arg=-L", f"arg={tmp_path / 'qemu' / 'pc-bios'}", "arg=-M", "arg=virt"]
    target = installs.launcher_target(launcher)
    assert target is not None and target.binary == binary


def test_a_rebuilt_binary_rewrites_the_launcher(tmp_path: Path) -> None:
    build = tmp_path / "build"
    binary = _fake_binary(build / "qemu-system-x86_64")
    (build / "pc-bios").mkdir()
    first = installs.build_dir_launcher(binary, tmp_path / "l")
    assert first is not None
    before = first.read_text()
    _fake_binary(binary, FAKE_QEMU + "# rebuilt\n")
    second = installs.build_dir_launcher(binary, tmp_path / "l")
    assert second == first and second.read_text() != before  # probe cache key changes too
    target = installs.launcher_target(second)
    assert target is not None and target.size == binary.stat().st_size


def test_launcher_target_ignores_other_files(tmp_path: Path) -> None:
    assert installs.launcher_target(_fake_binary(tmp_path / "qemu-system-x86_64")) is None
    assert installs.launcher_target(tmp_path / "missing") is None


def test_relativise_symlinks_keeps_firmware_inside_the_tree(tmp_path: Path) -> None:
    tree = tmp_path / "root"
    seabios = tree / "usr" / "share" / "seabios"
    seabios.mkdir(parents=True)
    (seabios / "bios-256k.bin").write_bytes(b"trixie")
    qemu = tree / "usr" / "share" / "qemu"
    qemu.mkdir(parents=True)
    (qemu / "bios-256k.bin").symlink_to("/usr/share/seabios/bios-256k.bin")
    (qemu / "relative.bin").symlink_to("../seabios/bios-256k.bin")
    leaving = "usr/share/qemu/bios-256k.bin -> /usr/share/seabios/bios-256k.bin"
    assert installs.escapes(tree, qemu) == [leaving]
    assert installs.relativise_symlinks(tree) == 1
    assert os.readlink(qemu / "bios-256k.bin") == "../seabios/bios-256k.bin"
    assert (qemu / "bios-256k.bin").read_bytes() == b"trixie"
    assert installs.escapes(tree, qemu) == []


def test_tree_launcher_runs_the_trees_loader_with_its_data_dirs(tmp_path: Path) -> None:
    final = tmp_path / "11-x86_64-key"
    built = tmp_path / "staging"
    _fake_binary(built / installs.ROOT_DIR / "usr" / "bin" / "qemu-system-aarch64")
    text = installs.tree_launcher_text(
        final, "arm64", "ld-linux-x86-64.so.2", ["/usr/share/qemu", "/usr/share/seabios"],
        built=built, host="x86_64",
    )  # fmt: skip
    root = final / installs.ROOT_DIR
    exec_line = text.splitlines()[-1]
    assert exec_line.startswith(f"exec {root}/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 ")
    assert "--inhibit-cache --library-path" in exec_line
    assert f" {root}/usr/bin/qemu-system-aarch64 -L {root}/usr/share/qemu" in exec_line
    assert f'-L {root}/usr/share/seabios "$@"' in exec_line
    assert f"export QEMU_MODULE_DIR={root}/usr/lib/x86_64-linux-gnu/qemu" in text
    assert str(tmp_path / "staging") not in text  # the published paths only


def test_tree_key_follows_packages_and_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    before = installs.tree_name("x86_64")
    assert before.startswith("11-x86_64-")
    monkeypatch.setattr(installs, "TREE_LAYOUT", installs.TREE_LAYOUT + 1)
    assert installs.tree_name("x86_64") != before


@pytest.mark.parametrize(
    ("value", "named"), [("11", True), (11, True), ("10", True), ("installed", True),
                         ("12", False), ("/usr/bin/qemu-system-x86_64", False), (None, False)],
)  # fmt: skip
def test_is_named(value: Any, named: bool) -> None:
    assert installs.is_named(value) is named


# --- resolve_binary ------------------------------------------------------------------------


def _caps(version: tuple[int, int, int], vtd: set[str] | None = None) -> QemuCapabilities:
    props = vtd if vtd is not None else {"x-scalable-mode", "x-flts", "aw-bits"}
    return QemuCapabilities(
        binary="/q", version=version, package="", devices=frozenset({"intel-iommu"}),
        properties={"intel-iommu": frozenset(props)}, accelerators=frozenset({"tcg"}),
    )  # fmt: skip


def test_resolve_11_builds_the_tree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The build itself needs a Debian mirror: replaced here, run by tests/vm/test_qemu11.py."""
    calls = []
    monkeypatch.setattr(
        installs, "ensure_trixie", lambda arch: calls.append(arch) or tmp_path / "launcher"
    )
    assert probe.resolve_binary("arm64", "11") == str(tmp_path / "launcher")
    assert calls == ["arm64"]


def test_resolve_10_checks_the_installed_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The host's QEMU is a stand-in script; its probe answer is replaced (no QEMU runs)."""
    fake = _fake_binary(tmp_path / "qemu-system-x86_64")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(probe, "probe", lambda binary: _caps((10, 0, 2)))
    assert probe.resolve_binary("x86_64", "10") == str(fake)
    assert probe.resolve_binary("x86_64", "installed") == str(fake)
    monkeypatch.setattr(probe, "probe", lambda binary: _caps((9, 2, 0)))
    with pytest.raises(ConfigError, match=r"--qemu 10: the installed QEMU is 9\.2\.0"):
        probe.resolve_binary("x86_64", "10")


def test_resolve_a_build_dir_binary_gives_its_launcher(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    binary = _fake_binary(tmp_path / "qemu" / "build" / "qemu-system-x86_64")
    (tmp_path / "qemu" / "pc-bios").mkdir()
    resolved = Path(probe.resolve_binary("x86_64", str(binary)))
    assert resolved.is_relative_to(tmp_path / "cache")
    target = installs.launcher_target(resolved)
    assert target is not None and target.binary == binary
    plain = _fake_binary(tmp_path / "elsewhere" / "qemu-system-x86_64")
    assert probe.resolve_binary("x86_64", str(plain)) == str(plain)


def test_resolve_unknown_names_the_forms(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not found .*installed, 10, 11"):
        probe.resolve_binary("x86_64", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="unknown guest arch"):
        probe.resolve_binary("riscv64", "11")


# --- property names per QEMU -----------------------------------------------------------------


def _vtd_machine() -> Machine:
    return Machine(
        arch="x86_64", kernel=Path("/k"), initrd=Path("/i"),
        viommu=IntelIommu(scalable_mode=True, flts=True),
    )  # fmt: skip


def test_adapt_uses_qemu11_names_when_the_qemu_has_them() -> None:
    caps = _caps((11, 1, 3), {"scalable-mode", "fsts", "aw-bits"})
    machine = probe.adapt_machine(_vtd_machine(), caps)
    assert isinstance(machine.viommu, IntelIommu)
    assert machine.viommu.properties() == {"scalable-mode": True, "fsts": True}
    back = probe.adapt_machine(machine, _caps((10, 0, 2)))  # a bundle replayed on QEMU 10
    assert isinstance(back.viommu, IntelIommu)
    assert back.viommu.properties() == {"x-scalable-mode": True, "x-flts": True}


def test_pasid_mode_is_pasid_bits_on_qemu11_and_refused_where_neither_exists() -> None:
    machine = Machine(
        arch="x86_64", kernel=Path("/k"), initrd=Path("/i"),
        viommu=IntelIommu(scalable_mode=True, pasid_mode=True),
    )  # fmt: skip
    eleven = probe.adapt_machine(
        machine, _caps((11, 1, 3), {"scalable-mode", "fsts", "pasid-bits"})
    )
    assert isinstance(eleven.viommu, IntelIommu)
    assert eleven.viommu.properties() == {"scalable-mode": True, "pasid-bits": 20}
    caps = _caps((11, 1, 3), {"scalable-mode", "fsts"})
    missing = r"QEMU 11\.1\.3 lacks property intel-iommu\.pasid-bits"
    with pytest.raises(MissingCapabilityError, match=missing):
        probe.adapt_machine(machine, caps)


def test_capabilities_json_round_trip_keeps_trace_events() -> None:
    caps = QemuCapabilities("/q", (11, 1, 3), "Debian", frozenset({"edu"}), {},
                            frozenset({"tcg"}), frozenset({"smmuv3_propagate_event"}))  # fmt: skip
    assert QemuCapabilities.from_json(caps.to_json()) == caps
    old = {k: v for k, v in caps.to_json().items() if k != "trace_events"}  # older cache files
    assert QemuCapabilities.from_json(old).trace_events == frozenset()


def test_adapt_leaves_other_viommus_alone() -> None:
    caps = QemuCapabilities("/q", (11, 1, 3), "", frozenset({"arm-smmuv3"}),
                            {"arm-smmuv3": frozenset({"stage"})}, frozenset())  # fmt: skip
    machine = Machine(arch="arm64", kernel=Path("/k"), initrd=Path("/i"),
                      viommu=SmmuV3(stage="nested"))  # fmt: skip
    assert probe.adapt_machine(machine, caps) == machine
