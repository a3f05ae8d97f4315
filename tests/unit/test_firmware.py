"""harness.firmware: ACPI headers, IORT parsing and the CANWBS patch, early cpio, capability."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import ConfigError, DecodeError, EncodeError
from harness.firmware import acpi, iort
from harness.firmware.capability import nesting_capability
from harness.firmware.initrd import (
    ACPI_DIR,
    combined_initrd_key,
    early_cpio,
    prepend_tables,
    tables_in_initrd,
)
from harness.images.cpio import write_files
from harness.smmuv3 import predict_idrs

pytestmark = pytest.mark.tier0

QEMU_RC_FLAGS = 0x03


def find_cpio_data(path: str, data: bytes) -> list[tuple[str, bytes]]:
    """lib/earlycpio.c find_cpio_data() applied repeatedly, as acpi_table_upgrade() does."""
    found: list[tuple[str, bytes]] = []
    pos, prefix = 0, path.encode()
    header_len = 8 * 14 - 2
    while len(data) - pos > header_len:
        if data[pos] == 0:
            pos += 4
            continue
        try:
            magic = int(data[pos : pos + 6], 16)
            fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            break
        if magic - 0x070701 > 1:
            break
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name_at = pos + header_len
        data_at = (name_at + namesize + 3) & ~3
        next_at = (data_at + filesize + 3) & ~3
        if next_at > len(data):
            break
        name = data[name_at : name_at + namesize - 1]
        if mode & 0o170000 == 0o100000 and name.startswith(prefix):
            found.append((name[len(prefix) :].decode(), data[data_at : data_at + filesize]))
        pos = next_at
    return found


# -- ACPI headers -----------------------------------------------------------------------


def test_build_table_round_trips_and_sums_to_zero() -> None:
    table = acpi.build_table("IORT", b"\x01\x02\x03", oem_revision=7)
    header = acpi.verify_table(table, "IORT")
    assert (header.signature, header.length, header.oem_revision) == ("IORT", 39, 7)
    assert header.identity == "IORT-BOCHS -BXPC    "
    assert acpi.byte_sum(table) == 0


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda t: t[:-1], "acpi_table_header.length"),
        (lambda t: t[:20] + bytes([t[20] ^ 1]) + t[21:], "acpi_table_header.checksum"),
        (lambda t: b"ZZZZ" + t[4:], "acpi_table_header.signature"),
        (lambda t: t[:30], "acpi_table_header"),
    ],
    ids=["short", "checksum", "signature", "truncated-header"],
)
def test_verify_table_refuses_what_the_kernel_refuses(mutate: object, field: str) -> None:
    table = acpi.build_table("IORT", bytes(16))
    with pytest.raises(DecodeError) as err:
        acpi.verify_table(mutate(table))  # type: ignore[operator]
    assert err.value.field == field


def test_build_table_refuses_wrong_width_ids() -> None:
    with pytest.raises(EncodeError, match="oem_id"):
        acpi.build_table("IORT", b"", oem_id="BOCHS")


def test_upgrade_needs_same_identity_and_newer_revision() -> None:
    old = acpi.parse_header(acpi.build_table("IORT", b"", oem_revision=1))
    newer = acpi.parse_header(acpi.build_table("IORT", b"", oem_revision=2))
    other = acpi.parse_header(acpi.build_table("IORT", b"", oem_revision=2, oem_table_id="X" * 8))
    assert acpi.upgrades(newer, old)
    assert not acpi.upgrades(old, old)
    assert not acpi.upgrades(other, old)


# -- IORT ----------------------------------------------------------------------------------


def test_qemu_shaped_iort_parses() -> None:
    table = iort.parse_iort(iort.build_iort())
    assert [n.type_name for n in table.nodes] == ["ITS_GROUP", "SMMU_V3", "PCI_ROOT_COMPLEX"]
    (rc,) = table.root_complexes
    assert rc.memory_flags == QEMU_RC_FLAGS
    assert rc.canwbs is False and table.canwbs is False
    assert rc.pci_segment == 0
    assert rc.mappings[0].output_reference == table.nodes[1].offset
    assert table.nodes[0].memory_flags is None


def test_node_running_past_the_table_is_a_decode_error() -> None:
    data = bytearray(iort.build_iort())
    last = iort.parse_iort(bytes(data)).nodes[-1]
    struct.pack_into("<H", data, last.offset + 1, last.length + 4)
    with pytest.raises(DecodeError, match=r"IORT\.node\[2\]\.length"):
        iort.parse_iort(acpi.with_checksum(bytes(data)))


def test_short_root_complex_node_is_a_decode_error() -> None:
    data = bytearray(iort.build_iort(smmu_base=None))
    rc = iort.parse_iort(bytes(data)).root_complexes[0]
    struct.pack_into("<BHBIII", data, rc.offset, 2, 20, 3, 2, 0, 0)
    with pytest.raises(DecodeError):
        iort.parse_iort(acpi.with_checksum(bytes(data)))


def test_set_canwbs_patches_flag_revision_and_checksum_only() -> None:
    original = iort.build_iort()
    patch = iort.set_canwbs(original)
    assert patch.patched.canwbs
    assert patch.patched.root_complexes[0].memory_flags == QEMU_RC_FLAGS | iort.MF_CANWBS
    assert patch.patched.header.oem_revision == patch.original.header.oem_revision + 1
    assert acpi.byte_sum(patch.table) == 0
    rc_flags = patch.original.root_complexes[0].offset + iort.RC_MEMORY_FLAGS
    assert set(patch.changed_offsets) == {acpi.CHECKSUM_OFFSET, acpi.OEM_REVISION_OFFSET, rc_flags}
    assert acpi.upgrades(patch.patched.header, patch.original.header)


def test_set_canwbs_by_segment() -> None:
    patch = iort.set_canwbs(iort.build_iort(rc_segments=(0, 1)), segments=(1,))
    assert [rc.canwbs for rc in patch.patched.root_complexes] == [False, True]
    assert not patch.patched.canwbs


@pytest.mark.parametrize(
    ("table", "field"),
    [
        (iort.build_iort(rc_segments=()), "IORT.root_complex"),
        (iort.build_iort(oem_revision=0xFFFF_FFFF), "IORT.oem_revision"),
    ],
    ids=["no-root-complex", "revision-exhausted"],
)
def test_set_canwbs_refusals(table: bytes, field: str) -> None:
    with pytest.raises(EncodeError) as err:
        iort.set_canwbs(table)
    assert err.value.field == field


def test_set_canwbs_refuses_a_broken_table() -> None:
    table = bytearray(iort.build_iort())
    table[40] ^= 0xFF
    with pytest.raises(DecodeError, match="checksum"):
        iort.set_canwbs(bytes(table))


@settings(max_examples=60, deadline=None)
@given(
    flags=st.integers(0, 255),
    segments=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=4, unique=True),
    smmu=st.booleans(),
    oem_revision=st.integers(0, 0xFFFF_FFFE),
)
def test_set_canwbs_property(
    flags: int, segments: list[int], smmu: bool, oem_revision: int
) -> None:
    table = iort.build_iort(
        rc_memory_flags=flags,
        rc_segments=segments,
        smmu_base=0x9050000 if smmu else None,
        oem_revision=oem_revision,
    )
    patch = iort.set_canwbs(table)
    assert patch.patched.canwbs
    for before, after in zip(patch.original.nodes, patch.patched.nodes, strict=True):
        if before.type == iort.TYPE_ROOT_COMPLEX:
            assert after.memory_flags == (before.memory_flags or 0) | iort.MF_CANWBS
        else:
            assert after.data == before.data
    assert acpi.verify_table(patch.table).length == len(table)


# -- early cpio and combined initrds ------------------------------------------------------------


def stock_initramfs(tmp_path: Path) -> Path:
    path = tmp_path / "initramfs.cpio"
    stream = io.BytesIO()
    write_files({"init": b"#!/bin/sh\n", "etc/hostname": b"guest\n"}, stream)
    path.write_bytes(stream.getvalue())
    return path


def test_combined_initrd_is_what_the_kernel_finds(tmp_path: Path) -> None:
    patched = iort.set_canwbs(iort.build_iort()).table
    initramfs = stock_initramfs(tmp_path)
    combined = prepend_tables(initramfs, {"IORT.aml": patched}, tmp_path / "cache")
    data = combined.read_bytes()
    assert find_cpio_data(ACPI_DIR + "/", data) == [("IORT.aml", patched)]
    assert data.endswith(initramfs.read_bytes())
    assert len(early_cpio({"IORT.aml": patched})) % 4 == 0
    assert tables_in_initrd(combined) == {"IORT.aml": patched}
    assert find_cpio_data("init", data)


def test_combined_initrd_is_cached_by_content(tmp_path: Path) -> None:
    initramfs = stock_initramfs(tmp_path)
    cache = tmp_path / "cache"
    first = prepend_tables(initramfs, {"IORT.aml": b"A" * 40}, cache)
    again = prepend_tables(initramfs, {"IORT.aml": b"A" * 40}, cache)
    other = prepend_tables(initramfs, {"IORT.aml": b"B" * 40}, cache)
    assert first == again != other
    os.utime(initramfs, ns=(1, 1))
    assert combined_initrd_key(initramfs, {"IORT.aml": b"A" * 40}) not in first.name


@pytest.mark.parametrize("tables", [{}, {"sub/IORT.aml": b"x"}, {"": b"x"}])
def test_early_cpio_refuses_bad_names(tables: dict[str, bytes]) -> None:
    with pytest.raises(ConfigError):
        early_cpio(tables)


def test_tables_in_initrd_refuses_a_non_cpio(tmp_path: Path) -> None:
    path = tmp_path / "initrd.gz"
    path.write_bytes(b"\x1f\x8b" + bytes(200))
    with pytest.raises(DecodeError, match="initrd"):
        tables_in_initrd(path)


# -- capability report -------------------------------------------------------------------------


def test_stock_qemu_nested_explains_the_refusal() -> None:
    report = nesting_capability(
        predict_idrs({"stage": "nested"}), iort.parse_iort(iort.build_iort())
    )
    assert report.nest_parent and not report.viommu
    assert "IDR3.FWB=0 and IORT CANWBS=0" in report.explain()
    assert "0x03" in report.explain()
    assert report.to_json()["IORT.rc_memory_flags"] == ["0x03"]


def test_patched_iort_allows_a_viommu() -> None:
    patched = iort.set_canwbs(iort.build_iort()).patched
    report = nesting_capability(predict_idrs({"stage": "nested"}), patched)
    assert report.viommu
    assert report.explain() == "nest parent and vIOMMU allowed (IORT CANWBS=1)"


def test_fwb_alone_allows_a_viommu() -> None:
    idrs = dict(predict_idrs({"stage": "nested"}))
    idrs["IDR3"] |= 1 << 8
    assert nesting_capability(idrs, None).viommu


@pytest.mark.parametrize("stage", ["1", "2"])
def test_single_stage_has_no_nest_parent(stage: str) -> None:
    report = nesting_capability(predict_idrs({"stage": stage}), None)
    assert not report.nest_parent and not report.viommu
    assert "no nesting" in report.explain()


def test_prune_keeps_the_most_recently_used(tmp_path: Path) -> None:
    from harness.firmware.initrd import KEEP_COMBINED, prune

    initramfs = stock_initramfs(tmp_path)
    cache = tmp_path / "cache"
    made = [prepend_tables(initramfs, {"IORT.aml": bytes([i]) * 40}, cache) for i in range(3)]
    for age, path in enumerate(made):
        os.utime(path, (1000 + age, 1000 + age))
    assert prune(cache, keep=1) == [made[1], made[0]]
    assert list(cache.glob("initrd-*.cpio")) == [made[2]]
    more = [prepend_tables(initramfs, {"IORT.aml": bytes([i]) * 40}, cache) for i in range(9)]
    assert len(list(cache.glob("initrd-*.cpio"))) == KEEP_COMBINED
    assert more[-1].exists()
