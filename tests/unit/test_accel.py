"""Accelerator choice: KVM access is reported (auto: one line and TCG; kvm: an error)."""

from __future__ import annotations

import getpass
import grp
import os
import pwd
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.qemu import accel
from harness.qemu.description import Machine
from harness.qemu.machine import QemuMachine

pytestmark = pytest.mark.tier0


def x86(**kw: object) -> Machine:
    return Machine(arch="x86_64", kernel=Path("/k/bzImage"), initrd=Path("/k/rootfs.cpio"), **kw)  # type: ignore[arg-type]


def some_group() -> grp.struct_group:
    """A real non-root group of this host that this user may give a file to (root: any;
    an ordinary user: its own primary group), to own the fake device."""
    if os.geteuid() != 0:
        return grp.getgrgid(os.getegid())
    return next(g for g in grp.getgrall() if g.gr_gid != 0)


@pytest.fixture
def device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake /dev/kvm, group ``some_group()``, mode 0660, that 'alice' may not open."""
    fake = tmp_path / "kvm"
    fake.touch()
    os.chown(fake, -1, some_group().gr_gid)
    fake.chmod(0o660)
    monkeypatch.setattr(accel, "KVM_DEVICE", fake)
    monkeypatch.setattr(getpass, "getuser", lambda: "alice")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    monkeypatch.setattr(os, "getgroups", lambda: [])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no remembered verdict
    return fake


def test_no_problem_when_the_device_opens(device: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) == str(device))
    assert accel.kvm_access_problem() is None


def test_a_missing_device_is_named(tmp_path: Path) -> None:
    problem = accel.kvm_access_problem(tmp_path / "nokvm")
    assert problem is not None and problem.startswith(f"{tmp_path / 'nokvm'} does not exist")


def test_permission_names_the_user_and_the_group_that_grants_it(device: Path) -> None:
    group = some_group().gr_name
    problem = accel.kvm_access_problem()
    assert problem is not None
    owner = pwd.getpwuid(device.stat().st_uid).pw_name  # root, or the user running the tests
    assert f"{device} (0660 {owner}:{group}): permission denied for user 'alice'" in problem
    assert f"membership of group {group!r} grants it" in problem
    assert f"usermod -aG {group} alice" in problem
    assert "\n" not in problem


def test_a_member_whose_session_predates_it_is_told_to_log_in_again(
    device: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accel, "_members", lambda group: ["bob", "alice"])
    problem = accel.kvm_access_problem()
    assert problem is not None
    assert f"'alice' is in group {some_group().gr_name!r} but this session is not" in problem


def test_a_device_no_group_may_open_says_so(device: Path) -> None:
    device.chmod(0o600)
    problem = accel.kvm_access_problem()
    assert problem is not None and "no group grants it" in problem
    assert "membership" not in problem


def test_auto_without_access_is_tcg_with_one_line_why(device: Path) -> None:
    choice = accel.choose_accel(x86(), host="x86_64")
    assert choice.accel == "tcg" and not choice.fallback
    assert choice.note is not None and "\n" not in choice.note
    assert choice.note.startswith("using TCG, not KVM: ")
    assert "permission denied for user 'alice'" in choice.note
    assert f"group {some_group().gr_name!r}" in choice.note


def test_kvm_without_access_is_an_error_naming_the_same(device: Path) -> None:
    with pytest.raises(accel.KvmAccessError) as info:
        accel.choose_accel(x86(accel="kvm"), host="x86_64")
    assert isinstance(info.value, ConfigError)
    text = str(info.value)
    assert text.startswith("accel=kvm: ") and "permission denied for user 'alice'" in text
    assert f"group {some_group().gr_name!r}" in text


def test_auto_with_access_tries_kvm_then_follows_the_verdict(
    device: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    assert accel.choose_accel(x86(), host="x86_64") == accel.AccelChoice("kvm", None, True)
    accel.record_kvm_verdict("x86_64", usable=False, reason="no console output")
    choice = accel.choose_accel(x86(), host="x86_64")
    assert choice.accel == "tcg" and choice.note is not None
    assert "KVM did not run a guest on this host (no console output" in choice.note
    accel.record_kvm_verdict("x86_64", usable=True, reason="guest booted")
    assert accel.choose_accel(x86(), host="x86_64").accel == "kvm"


def test_other_arch_and_tcg_say_nothing(device: Path) -> None:
    assert accel.choose_accel(x86(), host="arm64") == accel.AccelChoice("tcg")
    assert accel.choose_accel(x86(accel="tcg"), host="x86_64") == accel.AccelChoice("tcg")
    with pytest.raises(ConfigError, match="x86_64 guests cannot use KVM on this arm64 host"):
        accel.choose_accel(x86(accel="kvm"), host="arm64")


def test_launch_with_kvm_and_no_access_fails_before_starting_qemu(
    device: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accel, "host_arch", lambda: "x86_64")
    logged: list[str] = []
    vm = QemuMachine(x86(accel="kvm"), tmp_path / "art", qemu="/nonexistent", log=logged.append)
    try:
        with pytest.raises(accel.KvmAccessError, match="permission denied for user 'alice'"):
            vm.launch()
        assert vm.pid is None and not (tmp_path / "art" / "argv.json").exists()
    finally:
        vm.close()


def test_launch_with_auto_and_no_access_logs_one_line_then_uses_tcg(
    device: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accel, "host_arch", lambda: "x86_64")
    logged: list[str] = []
    vm = QemuMachine(x86(), tmp_path / "art", qemu="/nonexistent", log=logged.append)
    try:
        with pytest.raises(Exception, match="cannot run /nonexistent"):
            vm.launch()
        assert vm.accel == "tcg"
        notes = [line for line in logged if "KVM" in line]
        assert len(notes) == 1 and "permission denied for user 'alice'" in notes[0], logged
    finally:
        vm.close()


def test_an_accel_option_of_the_description_replaces_the_default() -> None:
    from harness.qemu.argv import X86_TCG_ACCEL, RunEndpoints, build_argv

    run = RunEndpoints(Path("/r/qmp.sock"), Path("/a/console.log"), Path("/a/qemu.log"))
    plain = build_argv(x86(), run, "tcg")
    assert plain.count("-accel") == 1 and plain[plain.index("-accel") + 1] == X86_TCG_ACCEL
    single = build_argv(x86(extra_args=("-accel", "tcg,thread=single")), run, "tcg")
    assert single.count("-accel") == 1 and single[single.index("-accel") + 1] == "tcg,thread=single"


def test_only_x86_64_tcg_runs_single_threaded() -> None:
    from harness.qemu.argv import RunEndpoints, build_argv

    run = RunEndpoints(Path("/r/qmp.sock"), Path("/a/console.log"), Path("/a/qemu.log"))
    arm = Machine(arch="arm64", kernel=Path("/k/Image"), initrd=Path("/k/r.cpio"))
    assert build_argv(arm, run, "tcg")[build_argv(arm, run, "tcg").index("-accel") + 1] == "tcg"
    kvm = build_argv(x86(), run, "kvm")
    assert kvm[kvm.index("-accel") + 1] == "kvm"
