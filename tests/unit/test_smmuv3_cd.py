"""Context descriptors and CD tables (linear, 2-level with 4KB and 64KB leaves)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from harness.errors import DecodeError, EncodeError
from harness.smmuv3 import (
    Cd,
    L1Cd,
    S1Dss,
    S1Fmt,
    SparseMemory,
    Ste,
    build_cd_table,
    decode_cd,
    decode_l1cd,
    encode_cd,
    lookup_cd,
    lookup_cd_for_ste,
    make_s1_cd,
    s1_ste,
    s2_ste,
)
from harness.smmuv3.cd import CD_LAYOUT, LINUX_MAIR

pytestmark = pytest.mark.tier0


def genmask(msb: int, lsb: int) -> int:
    return ((1 << (msb - lsb + 1)) - 1) << lsb


def words(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 8], "little") for i in range(0, len(data), 8)]


def to_bytes(*values: int) -> bytes:
    return b"".join(v.to_bytes(8, "little") for v in values)


# name -> (word, mask) from CTXDESC_CD_* in arm-smmu-v3.h
KERNEL_MASKS = {
    "t0sz": (0, genmask(5, 0)),
    "tg0": (0, genmask(7, 6)),
    "ir0": (0, genmask(9, 8)),
    "or0": (0, genmask(11, 10)),
    "sh0": (0, genmask(13, 12)),
    "epd0": (0, 1 << 14),
    "epd1": (0, 1 << 30),
    "endi": (0, 1 << 15),
    "v": (0, 1 << 31),
    "ips": (0, genmask(34, 32)),
    "tbi0": (0, 1 << 38),
    "ha": (0, 1 << 43),
    "hd": (0, 1 << 42),
    "aa64": (0, 1 << 41),
    "s": (0, 1 << 44),
    "r": (0, 1 << 45),
    "a": (0, 1 << 46),
    "aset": (0, 1 << 47),
    "asid": (0, genmask(63, 48)),
    "haft": (1, 1 << 3),
}


@pytest.mark.parametrize("name", sorted(KERNEL_MASKS))
def test_cd_field_matches_kernel_mask(name: str) -> None:
    word, kernel_mask = KERNEL_MASKS[name]
    field = CD_LAYOUT.by_name[name]
    value: Any = True if field.is_flag else (1 << field.width) - 1
    encoded = words(Cd(**{name: value}).encode())
    assert encoded[word] == kernel_mask and sum(encoded) == kernel_mask


def test_cd_ttb0_covers_kernel_mask() -> None:
    assert words(Cd(ttb0=genmask(51, 4)).encode())[1] == genmask(51, 4)


def test_cd_dataclass_fields_are_the_layout_fields() -> None:
    assert [f.name for f in dataclasses.fields(Cd)] == [f.name for f in CD_LAYOUT.fields]


def test_make_s1_cd_matches_kernel_s1_cd() -> None:
    cd = make_s1_cd(0x4000_1000, asid=7, t0sz=16, tg0=0, ips=5)
    expected0 = (
        16  # T0SZ
        | 1 << 8  # IRGN0 WBWA
        | 1 << 10  # ORGN0 WBWA
        | 3 << 12  # SH0 inner
        | 1 << 30  # EPD1
        | 1 << 31  # V
        | 5 << 32  # IPS 48 bits
        | 1 << 41  # AA64
        | 1 << 45  # R
        | 1 << 46  # A
        | 1 << 47  # ASET
        | 7 << 48  # ASID
    )
    assert words(encode_cd(cd)) == [expected0, 0x4000_1000, 0, 0xF404_FF44, 0, 0, 0, 0]
    assert cd.mair == LINUX_MAIR


def valid_cd_words() -> st.SearchStrategy[list[int]]:
    return st.tuples(*[st.integers(0, (1 << 64) - 1) for _ in range(8)]).map(
        lambda ws: [w & ~CD_LAYOUT.reserved[i] for i, w in enumerate(ws)]
    )


@settings(max_examples=200, deadline=None)
@given(raw=valid_cd_words())
def test_cd_round_trip(raw: list[int]) -> None:
    try:
        cd = decode_cd(to_bytes(*raw))
    except DecodeError:
        assume(False)
        raise
    assert words(cd.encode()) == raw


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({1: 1 << 56}, "CD.RES0[121:120]"),
        ({2: 1 << 57}, "CD.RES0[185:184]"),
        ({5: 1 << 56}, "CD.RES0[383:376]"),
        ({6: 1 << 48}, "CD.RES0[447:432]"),
        ({7: 1 << 63}, "CD.RES0[511:496]"),
        ({0: 1 << 31 | 3 << 6 | 1 << 30}, "CD.TG0"),
        ({0: 1 << 31 | 1 << 14}, "CD.TG1"),
        ({0: 1 << 31 | 1 << 14 | 1 << 30, 1: 1 << 3}, "CD.HAFT"),
    ],
)
def test_cd_decode_errors_name_the_field(raw: dict[int, int], field: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_cd(to_bytes(*[raw.get(i, 0) for i in range(8)]))
    assert info.value.field == field


def test_cd_granules_ignored_when_walk_disabled_or_invalid() -> None:
    assert decode_cd(to_bytes(1 << 31 | 3 << 6 | 1 << 14 | 1 << 30, 0, 0, 0, 0, 0, 0, 0)).v
    assert decode_cd(to_bytes(3 << 6, 0, 0, 0, 0, 0, 0, 0)).tg0 == 3


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_cd_decode_rejects_wrong_size(size: int) -> None:
    with pytest.raises(DecodeError, match="need 64 bytes"):
        decode_cd(bytes(size))


@pytest.mark.parametrize(
    ("cd", "field"),
    [
        (Cd(ttb0=0x4000_0008), "CD.TTB0"),
        (Cd(asid=1 << 16), "CD.ASID"),
        (Cd(t0sz=64), "CD.T0SZ"),
        (Cd(mair0=1 << 32), "CD.MAIR0"),
    ],
)
def test_cd_encode_errors_name_the_field(cd: Cd, field: str) -> None:
    with pytest.raises(EncodeError) as info:
        cd.encode()
    assert info.value.field == field


def test_l1cd_encode_decode() -> None:
    assert L1Cd(True, 0x1234_5000).encode() == (0x1234_5001).to_bytes(8, "little")
    assert decode_l1cd((0x1234_5001).to_bytes(8, "little")) == L1Cd(True, 0x1234_5000)
    with pytest.raises(DecodeError) as info:
        decode_l1cd((1 << 1).to_bytes(8, "little"))
    assert info.value.field == "L1CD.RES0[11:1]"
    with pytest.raises(DecodeError) as info:
        decode_l1cd((1 << 56).to_bytes(8, "little"))
    assert info.value.field == "L1CD.RES0[63:56]"
    with pytest.raises(EncodeError):
        L1Cd(True, 0x1234_5800).encode()


def cd_for(ssid: int) -> Cd:
    return make_s1_cd(0x8000_0000 + ssid * 0x1000, asid=ssid + 1)


def test_linear_table_layout_and_lookup() -> None:
    table = build_cd_table({1: cd_for(1), 3: cd_for(3)}, base=0x10000, s1cdmax=2)
    assert list(table.memory.blocks) == [0x10000]
    assert len(table.memory.blocks[0x10000]) == 4 * 64
    assert table.memory.read(0x10000 + 64, 64) == cd_for(1).encode()
    assert table.lookup(3) == cd_for(3)
    assert table.lookup(0) == Cd()
    with pytest.raises(DecodeError) as info:
        table.lookup(4)
    assert info.value.field == "SSID"


def test_single_cd_table() -> None:
    table = build_cd_table({0: cd_for(0)}, base=0x10040, s1cdmax=0, s1fmt=S1Fmt.L2_4K)
    assert table.s1fmt == S1Fmt.LINEAR
    assert table.memory.flatten() == (0x10040, cd_for(0).encode())


def test_two_level_4k_layout_by_hand() -> None:
    # S1CDMax 10: 16 L1CDs (128 bytes) at base; 4KB leaves of 64 CDs from the next 4KB.
    table = build_cd_table(
        {0x5: cd_for(0x5), 0x3C1: cd_for(0x3C1)}, base=0x20000, s1cdmax=10, s1fmt=S1Fmt.L2_4K
    )
    assert sorted(table.memory.blocks) == [0x20000, 0x21000, 0x22000]
    l1 = table.memory.blocks[0x20000]
    assert len(l1) == 128
    assert int.from_bytes(l1[0:8], "little") == 0x21001
    assert int.from_bytes(l1[15 * 8 : 16 * 8], "little") == 0x22001
    assert l1[8 : 15 * 8] == bytes(14 * 8)
    assert table.memory.read(0x22000 + 1 * 64, 64) == cd_for(0x3C1).encode()
    assert table.lookup(0x3C1) == cd_for(0x3C1) and table.lookup(0x5) == cd_for(0x5)
    with pytest.raises(DecodeError) as info:
        table.lookup(0x40)
    assert info.value.field == "L1CD.V"


def test_two_level_64k_layout_by_hand() -> None:
    # S1CDMax 12: 4 L1CDs (32 bytes, 64-byte aligned); 64KB leaves of 1024 CDs.
    table = build_cd_table(
        {0x401: cd_for(0x401)}, base=0x30000, s1cdmax=12, s1fmt=S1Fmt.L2_64K, l2_base=0x100000
    )
    l1 = table.memory.blocks[0x30000]
    assert len(l1) == 32
    assert int.from_bytes(l1[8:16], "little") == 0x100001
    assert table.memory.read(0x100000 + 64, 64) == cd_for(0x401).encode()
    assert table.lookup(0x401) == cd_for(0x401)


def test_default_l2_base_follows_l1_table() -> None:
    table = build_cd_table({0: cd_for(0)}, base=0x40, s1cdmax=12, s1fmt=S1Fmt.L2_64K)
    assert sorted(table.memory.blocks) == [0x40, 0x10000]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base": 0x10040, "s1cdmax": 2}, "S1ContextPtr"),
        ({"base": 0x20040, "s1cdmax": 10, "s1fmt": S1Fmt.L2_4K}, "S1ContextPtr"),
        ({"base": 0x0, "s1cdmax": 10, "s1fmt": S1Fmt.L2_4K, "l2_base": 0x1800}, "L1CD.L2Ptr"),
        ({"base": 0x0, "s1cdmax": 21}, "STE.S1CDMax"),
        ({"base": 0x0, "s1cdmax": 2, "s1fmt": 3}, "STE.S1Fmt"),
    ],
)
def test_build_cd_table_errors(kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(EncodeError) as info:
        build_cd_table({0: Cd()}, **kwargs)
    assert info.value.field == field


def test_build_cd_table_rejects_ssid_out_of_range() -> None:
    with pytest.raises(EncodeError) as info:
        build_cd_table({4: Cd()}, base=0, s1cdmax=2)
    assert info.value.field == "SSID"


def test_lookup_rejects_64k_leaf_pointer_with_res0_bits() -> None:
    memory = SparseMemory()
    memory.write(0x1000, L1Cd(True, 0x21000).encode())
    with pytest.raises(DecodeError) as info:
        lookup_cd(memory, base=0x1000, s1fmt=S1Fmt.L2_64K, s1cdmax=12, ssid=1)
    assert info.value.field == "L1CD.L2Ptr"


def test_lookup_outside_memory_is_a_decode_error() -> None:
    with pytest.raises(DecodeError) as info:
        lookup_cd(SparseMemory(), base=0x1000, s1fmt=S1Fmt.LINEAR, s1cdmax=0, ssid=0)
    assert info.value.field == "memory"


def test_sparse_memory_write_inside_block_and_flatten() -> None:
    memory = SparseMemory({0x100: bytes(16)})
    memory.write(0x104, b"\xaa\xbb")
    memory.write(0x200, b"\x01")
    assert memory.read(0x104, 2) == b"\xaa\xbb"
    low, image = memory.flatten()
    assert low == 0x100 and len(image) == 0x101 and image[-1] == 1
    assert SparseMemory().flatten() == (0, b"")


def test_lookup_cd_for_ste_applies_substream_rules() -> None:
    single = build_cd_table({0: cd_for(0)}, base=0x1000, s1cdmax=0)
    ste = s1_ste(0x1000)
    assert lookup_cd_for_ste(single.memory, ste, None) == cd_for(0)
    with pytest.raises(DecodeError, match="C_BAD_SUBSTREAMID"):
        lookup_cd_for_ste(single.memory, ste, 1)
    multi = build_cd_table({0: cd_for(0), 2: cd_for(2)}, base=0x2000, s1cdmax=2)
    ste0 = s1_ste(0x2000, s1cdmax=2, s1dss=S1Dss.SSID0)
    assert lookup_cd_for_ste(multi.memory, ste0, None) == cd_for(0)
    assert lookup_cd_for_ste(multi.memory, ste0, 2) == cd_for(2)
    with pytest.raises(DecodeError, match="F_STREAM_DISABLED"):
        lookup_cd_for_ste(multi.memory, ste0, 0)
    terminate = s1_ste(0x2000, s1cdmax=2, s1dss=S1Dss.TERMINATE)
    with pytest.raises(DecodeError) as info:
        lookup_cd_for_ste(multi.memory, terminate, None)
    assert info.value.field == "STE.S1DSS"
    with pytest.raises(DecodeError) as info:
        lookup_cd_for_ste(multi.memory, s2_ste(1, 0x1000), None)
    assert info.value.field == "STE.Config"
    with pytest.raises(DecodeError):
        lookup_cd_for_ste(multi.memory, Ste(), None)


@settings(max_examples=100, deadline=None)
@given(
    s1fmt=st.sampled_from(list(S1Fmt)),
    s1cdmax=st.integers(0, 12),
    picks=st.lists(st.integers(0, (1 << 12) - 1), max_size=6),
    probe=st.integers(0, (1 << 12) - 1),
)
def test_built_tables_return_every_cd(
    s1fmt: S1Fmt, s1cdmax: int, picks: list[int], probe: int
) -> None:
    ssids = {p & ((1 << s1cdmax) - 1) for p in picks}
    cds = {ssid: cd_for(ssid) for ssid in ssids}
    table = build_cd_table(cds, base=0x100000, s1cdmax=s1cdmax, s1fmt=s1fmt)
    for ssid, cd in cds.items():
        assert table.lookup(ssid) == cd
    probe &= (1 << s1cdmax) - 1
    if probe not in cds:
        try:
            assert table.lookup(probe) == Cd()
        except DecodeError as error:
            assert error.field == "L1CD.V"
