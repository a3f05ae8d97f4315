"""harness.firmware.override: IORT cache keys, storing, the override initrd, no needless boots."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from harness.errors import ConfigError, DecodeError
from harness.firmware import override
from harness.firmware.initrd import tables_in_initrd
from harness.firmware.iort import build_iort, parse_iort
from harness.images.cpio import write_files
from harness.qemu.description import Edu, Machine, SmmuV3

pytestmark = pytest.mark.tier0


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "firmware-cache"
    monkeypatch.setenv("VIOMMU_FIRMWARE_CACHE", str(root))
    return root


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    kernel = tmp_path / "Image"
    kernel.write_bytes(b"kernel")
    initrd = tmp_path / "initramfs.cpio"
    stream = io.BytesIO()
    write_files({"init": b"#!/bin/sh\n"}, stream)
    initrd.write_bytes(stream.getvalue())
    uefi = tmp_path / "QEMU_EFI.fd"
    uefi.write_bytes(b"\0" * 64)
    return Machine(
        arch="arm64",
        kernel=kernel,
        initrd=initrd,
        firmware="uefi",
        uefi_code=uefi,
        viommu=SmmuV3(stage="nested"),
        devices=(Edu(),),
    )


@pytest.fixture
def binary(tmp_path: Path) -> str:
    path = tmp_path / "qemu-system-aarch64"
    path.write_bytes(b"qemu")
    return str(path)


def test_cache_key_follows_binary_and_topology_only(
    machine: Machine, binary: str, tmp_path: Path
) -> None:
    key = override.iort_cache_key(binary, machine)
    other_kernel = tmp_path / "Image2"
    other_kernel.write_bytes(b"other")
    same = machine.with_(kernel=other_kernel, memory_mb=4096, append="x=1", accel="tcg")
    assert override.iort_cache_key(binary, same) == key
    assert override.iort_cache_key(binary, machine.with_(viommu=SmmuV3(stage="1"))) != key
    assert override.iort_cache_key(binary, machine.with_(devices=())) != key
    other_binary = tmp_path / "qemu-11"
    other_binary.write_bytes(b"qemu 11")
    assert override.iort_cache_key(str(other_binary), machine) != key


def test_store_and_read_back(cache: Path, machine: Machine, binary: str) -> None:
    assert override.cached_iort(binary, machine) is None
    table = build_iort()
    path = override.store_iort(binary, machine, table, {"fetched_from": "test"})
    assert path.is_relative_to(cache)
    assert override.cached_iort(binary, machine) == table
    override.drop_cached_iort(binary, machine)
    assert override.cached_iort(binary, machine) is None


def test_store_refuses_a_broken_table(cache: Path, machine: Machine, binary: str) -> None:
    with pytest.raises(DecodeError):
        override.store_iort(binary, machine, build_iort()[:-1])


def test_override_from_cache_does_not_boot(
    cache: Path, machine: Machine, binary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_boot(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("booted although the IORT was cached")

    monkeypatch.setattr(override, "fetch_iort", no_boot)
    override.store_iort(binary, machine, build_iort())
    result = override.iort_override(machine, binary, ready_marker="READY")
    assert not result.fetched_by_boot and result.needed
    assert result.patched.canwbs and not result.original.canwbs
    tables = tables_in_initrd(result.initrd)
    assert parse_iort(tables["IORT.aml"]).header.oem_revision == 2
    assert result.initrd.read_bytes().endswith(machine.initrd.read_bytes())
    booted = override.override_machine(machine, result)
    assert booted.initrd == result.initrd and booted.kernel == machine.kernel


def test_override_without_cache_boots_once(
    cache: Path, machine: Machine, binary: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    boots: list[Machine] = []

    def fake_fetch(m: Machine, b: str, **kwargs: object) -> bytes:
        boots.append(m)
        return build_iort()

    monkeypatch.setattr(override, "fetch_iort", fake_fetch)
    first = override.iort_override(machine, binary, ready_marker="R", artifacts=tmp_path / "a")
    second = override.iort_override(machine, binary, ready_marker="R", artifacts=tmp_path / "b")
    assert [first.fetched_by_boot, second.fetched_by_boot] == [True, False]
    assert boots == [machine]
    assert first.initrd == second.initrd


def test_override_needs_uefi(machine: Machine, binary: str, cache: Path) -> None:
    override.store_iort(binary, machine, build_iort())
    result = override.iort_override(machine, binary, ready_marker="R")
    direct = machine.with_(firmware="direct", uefi_code=None)
    with pytest.raises(ConfigError, match="uefi"):
        override.override_machine(direct, result)
    with pytest.raises(ConfigError, match="ACPI"):
        override.fetch_iort(direct, binary, ready_marker="R", artifacts=cache)
