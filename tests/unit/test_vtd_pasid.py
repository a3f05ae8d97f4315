"""Scalable-mode PASID-table and PASID-directory entries."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import DecodeError, EncodeError
from harness.vtd import Fspm, PasidDirEntry, PasidEntry, Pgtt, pasid_index

pytestmark = pytest.mark.tier0

U64 = (1 << 64) - 1
PAGE_MASK = U64 & ~0xFFF


def kernel_entry(
    *,
    fsptptr: int = 0,
    slptptr: int = 0,
    did: int = 0,
    agaw: int = 2,
    pgtt: int = 1,
    fl5lp: bool = False,
    pgsnp: bool = False,
    pwsnp: bool = False,
) -> list[int]:
    """A PASID entry written with the kernel's pasid_set_* helpers (pasid.h), transcribed."""
    val = [0] * 8  # pasid_clear_entry

    def set_bits(index: int, mask: int, bits: int) -> None:
        val[index] = (val[index] & ~mask) | bits

    if pgtt in (1, 3):
        set_bits(2, PAGE_MASK, fsptptr)  # pasid_set_flptr
        if fl5lp:
            set_bits(2, 0b1100, 1 << 2)  # pasid_set_flpm
    if pgtt in (2, 3):
        set_bits(0, PAGE_MASK, slptptr)  # pasid_set_slptr
    if pgsnp:
        set_bits(1, 1 << 24, 1 << 24)  # pasid_set_pgsnp
    set_bits(1, 0xFFFF, did)  # pasid_set_domain_id
    set_bits(0, 0b11100, agaw << 2)  # pasid_set_address_width
    set_bits(1, 1 << 23, int(pwsnp) << 23)  # pasid_set_page_snoop
    set_bits(0, 0b111 << 6, pgtt << 6)  # pasid_set_translation_type
    set_bits(0, 1, 1)  # pasid_set_present
    return val


def as_bytes(words: list[int]) -> bytes:
    return struct.pack("<8Q", *words)


def test_kernel_first_level_entry_decodes() -> None:
    raw = kernel_entry(fsptptr=0x1234_5000, did=7, agaw=2, fl5lp=True, pgsnp=True, pwsnp=True)
    entry = PasidEntry.decode(as_bytes(raw))
    assert entry.present and entry.pgtt == Pgtt.FIRST_STAGE and entry.pgtt_name == "first-stage"
    assert entry.fsptptr == 0x1234_5000 and entry.did == 7 and entry.aw == 2
    assert entry.fspm == Fspm.LEVEL5 and entry.first_stage_levels == 5
    assert entry.pgsnp and entry.pwsnp and not entry.sre and not entry.fpd
    assert entry.uses_first_stage and not entry.uses_second_stage
    assert entry.encode() == as_bytes(raw)


def test_first_stage_builder_matches_the_kernel() -> None:
    ours = PasidEntry.first_stage(0xABC000, 42, levels=4, pwsnp=True)
    assert ours.to_words() == kernel_entry(fsptptr=0xABC000, did=42, pwsnp=True)


def test_second_stage_and_nested_entries() -> None:
    ss = PasidEntry.decode(as_bytes(kernel_entry(slptptr=0x7000, did=3, agaw=1, pgtt=2)))
    assert ss.pgtt_name == "second-stage" and ss.slptptr == 0x7000 and ss.second_stage_levels == 3
    nested = PasidEntry.decode(
        as_bytes(kernel_entry(fsptptr=0x9000, slptptr=0xA000, did=1, pgtt=3))
    )
    assert nested.uses_first_stage and nested.uses_second_stage
    assert PasidEntry(present=True, pgtt=Pgtt.PASS_THROUGH).pgtt_name == "pass-through"


def test_zero_entry_is_a_non_present_entry() -> None:
    entry = PasidEntry.decode(bytes(64))
    assert entry == PasidEntry() and not entry.present


def test_nested_flags_from_the_iommufd_vtd_s1_uapi() -> None:
    entry = PasidEntry.first_stage(0x5000, 9, sre=True, wpe=True, eafe=True)
    words = entry.to_words()
    assert words[2] & 0b1001_0001 == 0b1001_0001  # SRE bit 0, WPE bit 4, EAFE bit 7


fields = st.fixed_dictionaries(
    {
        "present": st.booleans(),
        "fpd": st.booleans(),
        "aw": st.integers(0, 3),
        "slee": st.booleans(),
        "pgtt": st.integers(1, 4),
        "slade": st.booleans(),
        "slptptr": st.integers(0, (1 << 52) - 1).map(lambda p: p << 12),
        "did": st.integers(0, 0xFFFF),
        "pwsnp": st.booleans(),
        "pgsnp": st.booleans(),
        "emt": st.integers(0, 7),
        "pat": st.integers(0, 0xFFFF_FFFF),
        "sre": st.booleans(),
        "ere": st.booleans(),
        "fspm": st.integers(0, 1),
        "wpe": st.booleans(),
        "nxe": st.booleans(),
        "smep": st.booleans(),
        "eafe": st.booleans(),
        "fsptptr": st.integers(0, (1 << 52) - 1).map(lambda p: p << 12),
    }
)


@settings(max_examples=200)
@given(fields)
def test_round_trip_valid_entries(values: dict[str, object]) -> None:
    entry = PasidEntry(**values)  # type: ignore[arg-type]
    data = entry.encode()
    assert len(data) == 64
    assert PasidEntry.decode(data) == entry


@settings(max_examples=200)
@given(st.binary(min_size=64, max_size=64))
def test_any_64_bytes_decode_exactly_or_name_the_field(data: bytes) -> None:
    try:
        entry = PasidEntry.decode(data)
    except DecodeError as exc:
        assert exc.field.startswith("PasidEntry.")
    else:
        assert entry.encode() == data


@pytest.mark.parametrize(
    ("word", "bits", "field"),
    [
        (0, 1 << 10, "PasidEntry.RSVD[10]"),
        (1, 0x7F << 16, "PasidEntry.RSVD[86:80]"),
        (2, 0xF << 8, "PasidEntry.RSVD[139:136]"),
        (3, 1, "PasidEntry.RSVD[192]"),
        (7, 1 << 63, "PasidEntry.RSVD[511]"),
    ],
)
def test_reserved_bits_are_rejected(word: int, bits: int, field: str) -> None:
    raw = kernel_entry(fsptptr=0x1000, did=1)
    raw[word] |= bits
    with pytest.raises(DecodeError) as info:
        PasidEntry.decode(as_bytes(raw))
    assert info.value.field == field


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        (lambda w: w.__setitem__(0, (w[0] & ~(7 << 6)) | 0 << 6), "PasidEntry.PGTT"),
        (lambda w: w.__setitem__(0, (w[0] & ~(7 << 6)) | 5 << 6), "PasidEntry.PGTT"),
        (lambda w: w.__setitem__(2, w[2] | 2 << 2), "PasidEntry.FSPM"),
        (lambda w: w.__setitem__(0, (w[0] & ~0b11100) | 4 << 2), "PasidEntry.AW"),
    ],
)
def test_impossible_values_are_rejected(patch: object, field: str) -> None:
    raw = kernel_entry(fsptptr=0x1000, did=1)
    patch(raw)  # type: ignore[operator]
    with pytest.raises(DecodeError) as info:
        PasidEntry.decode(as_bytes(raw))
    assert info.value.field == field


@pytest.mark.parametrize("size", [0, 32, 63, 65, 128])
def test_wrong_length_is_rejected(size: int) -> None:
    with pytest.raises(DecodeError, match="expected 64 bytes"):
        PasidEntry.decode(bytes(size))


def test_non_bytes_is_rejected() -> None:
    with pytest.raises(DecodeError) as info:
        PasidEntry.decode("0" * 64)  # type: ignore[arg-type]
    assert info.value.field == "PasidEntry"


@pytest.mark.parametrize(
    ("kwargs", "field", "problem"),
    [
        ({"fsptptr": 0x1001}, "PasidEntry.FSPTPTR", "aligned"),
        ({"slptptr": -4096}, "PasidEntry.SLPTPTR", "64-bit"),
        ({"did": 0x10000}, "PasidEntry.DID", "16 bits"),
        ({"pgtt": 8}, "PasidEntry.PGTT", "3 bits"),
        ({"present": True, "pgtt": 0}, "PasidEntry.PGTT", "reserved"),
        ({"fspm": 2}, "PasidEntry.FSPM", "reserved"),
        ({"aw": 5}, "PasidEntry.AW", "reserved"),
        ({"sre": "yes"}, "PasidEntry.SRE", "bool"),
    ],
)
def test_encode_errors_name_the_field(kwargs: dict[str, object], field: str, problem: str) -> None:
    with pytest.raises(EncodeError, match=problem) as info:
        PasidEntry(**kwargs).encode()  # type: ignore[arg-type]
    assert info.value.field == field


def test_first_stage_levels_must_be_4_or_5() -> None:
    assert PasidEntry.first_stage(0x1000, 1, levels=5).fspm == Fspm.LEVEL5
    with pytest.raises(EncodeError) as info:
        PasidEntry.first_stage(0x1000, 1, levels=3)
    assert info.value.field == "PasidEntry.FSPM"


def test_pasid_dir_entry() -> None:
    entry = PasidDirEntry(present=True, table=0x8000_0000)
    assert entry.encode() == struct.pack("<Q", 0x8000_0001)
    assert PasidDirEntry.decode(struct.pack("<Q", 0x4003)) == PasidDirEntry(True, True, 0x4000)
    with pytest.raises(DecodeError) as info:
        PasidDirEntry.decode(struct.pack("<Q", 0x4005))
    assert info.value.field == "PasidDirEntry.RSVD[2]"


def test_pasid_index() -> None:
    assert pasid_index(0) == (0, 0)
    assert pasid_index(0x12345) == (0x12345 >> 6, 0x05)
    with pytest.raises(EncodeError):
        pasid_index(1 << 20)
