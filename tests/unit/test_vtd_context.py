"""Root and context entries, legacy and scalable mode."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import DecodeError, EncodeError
from harness.vtd import (
    ContextEntry,
    RootEntry,
    ScalableContextEntry,
    ScalableRootEntry,
    TranslationType,
)

pytestmark = pytest.mark.tier0

CLASSES = (RootEntry, ScalableRootEntry, ContextEntry, ScalableContextEntry)


def qwords(*words: int) -> bytes:
    return struct.pack(f"<{len(words)}Q", *words)


def test_legacy_root_entry() -> None:
    entry = RootEntry.decode(qwords(0x1234_5001, 0))
    assert entry == RootEntry(present=True, context_table=0x1234_5000)
    assert entry.encode() == qwords(0x1234_5001, 0)


def test_legacy_root_entry_high_qword_is_reserved() -> None:
    with pytest.raises(DecodeError) as info:
        RootEntry.decode(qwords(0x1001, 1))
    assert info.value.field == "RootEntry.RSVD[64]"


def test_scalable_root_entry() -> None:
    entry = ScalableRootEntry.decode(qwords(0xA001, 0xB001))
    assert entry.lower_present and entry.lower_context_table == 0xA000
    assert entry.upper_present and entry.upper_context_table == 0xB000


def test_legacy_context_entry_as_qemu_reads_it() -> None:
    # hi: AW=2 (48-bit), DID=5; lo: P, TT=0, SLPTPTR 0x7f000
    entry = ContextEntry.decode(qwords(0x7F001, 2 | 5 << 8))
    assert entry.present and entry.tt == TranslationType.UNTRANSLATED
    assert entry.slptptr == 0x7F000 and entry.did == 5 and entry.levels == 4
    assert ContextEntry.decode(qwords(0x7F001, 2 | 0b1111 << 3 | 5 << 8)).ignored == 0b1111


def test_context_entry_reserved_tt_and_bits() -> None:
    with pytest.raises(DecodeError) as info:
        ContextEntry.decode(qwords(0x1001 | 3 << 2, 2))
    assert info.value.field == "ContextEntry.TT"
    with pytest.raises(DecodeError) as info:
        ContextEntry.decode(qwords(0x1001, 2 | 1 << 7))
    assert info.value.field == "ContextEntry.RSVD[71]"
    with pytest.raises(DecodeError) as info:
        ContextEntry.decode(qwords(0x1001, 5))
    assert info.value.field == "ContextEntry.AW"


def test_scalable_context_entry_like_the_kernel_writes_it() -> None:
    # context_set_sm_pre/dte/pasid-dir: PDTS=3 (1024 entries), P, DTE, PASIDE, PRE, RID_PASID 0
    lo = 0x55_5000 | 3 << 9 | 1 | 1 << 2 | 1 << 3 | 1 << 4
    entry = ScalableContextEntry.decode(qwords(lo, 0, 0, 0))
    assert entry.present and entry.dte and entry.pasid_enable and entry.pre
    assert entry.pasid_dir == 0x55_5000 and entry.pasid_dir_entries == 1024
    assert entry.encode() == qwords(lo, 0, 0, 0)


def test_scalable_context_entry_reserved_bits_match_qemu_masks() -> None:
    # QEMU: VTD_SM_CONTEXT_ENTRY_RSVD_VAL0 has 0x1e0, RSVD_VAL1 is 0xffffffffffe00000
    with pytest.raises(DecodeError) as info:
        ScalableContextEntry.decode(qwords(0x1001 | 1 << 5, 0, 0, 0))
    assert info.value.field == "ScalableContextEntry.RSVD[5]"
    with pytest.raises(DecodeError) as info:
        ScalableContextEntry.decode(qwords(0x1001, 1 << 21, 0, 0))
    assert info.value.field == "ScalableContextEntry.RSVD[85]"
    with pytest.raises(DecodeError) as info:
        ScalableContextEntry.decode(qwords(0x1001, 0, 0, 1 << 1))
    assert info.value.field == "ScalableContextEntry.RSVD[193]"


@pytest.mark.parametrize("cls", CLASSES)
def test_short_buffers_are_rejected(cls: type[RootEntry]) -> None:
    size = 8 * cls.LAYOUT.words
    with pytest.raises(DecodeError, match=f"expected {size} bytes"):
        cls.decode(bytes(size - 1))


@pytest.mark.parametrize("cls", CLASSES)
@settings(max_examples=100)
@given(data=st.data())
def test_random_entries_decode_exactly_or_name_the_field(
    cls: type[RootEntry], data: st.DataObject
) -> None:
    raw = data.draw(st.binary(min_size=8 * cls.LAYOUT.words, max_size=8 * cls.LAYOUT.words))
    try:
        entry = cls.decode(raw)
    except DecodeError as exc:
        assert exc.field.startswith(cls.LAYOUT.struct_name + ".")
    else:
        assert entry.encode() == raw


def test_encode_errors() -> None:
    with pytest.raises(EncodeError) as info:
        ContextEntry(present=True, slptptr=0x1800).encode()
    assert info.value.field == "ContextEntry.SLPTPTR"
    with pytest.raises(EncodeError) as info:
        ContextEntry(present=True, tt=3).encode()
    assert info.value.field == "ContextEntry.TT"
    with pytest.raises(EncodeError) as info:
        ScalableContextEntry(rid_pasid=1 << 20).encode()
    assert info.value.field == "ScalableContextEntry.RID_PASID"
