"""Stream table entries and the kernel vSMMU's rules for the nested-HWPT STE."""

from __future__ import annotations

import dataclasses
import errno
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from harness.errors import DecodeError, EncodeError
from harness.smmuv3 import (
    Eats,
    S1Dss,
    S1Fmt,
    Ste,
    SteConfig,
    abort_ste,
    build_nested_ste,
    bypass_ste,
    decode_ste,
    encode_ste,
    s1_ste,
    s2_ste,
    validate_nested_ste,
)
from harness.smmuv3.ste import STE_LAYOUT
from harness.smmuv3.vste import NESTING_ALLOWED_0, NESTING_ALLOWED_1

pytestmark = pytest.mark.tier0


def genmask(msb: int, lsb: int) -> int:
    return ((1 << (msb - lsb + 1)) - 1) << lsb


def words(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 8], "little") for i in range(0, len(data), 8)]


def to_bytes(*values: int) -> bytes:
    return b"".join(v.to_bytes(8, "little") for v in values)


# name -> (word, mask) from STRTAB_STE_* in arm-smmu-v3.h
KERNEL_MASKS = {
    "v": (0, 1 << 0),
    "config": (0, genmask(3, 1)),
    "s1fmt": (0, genmask(5, 4)),
    "s1cdmax": (0, genmask(63, 59)),
    "s1dss": (1, genmask(1, 0)),
    "s1cir": (1, genmask(3, 2)),
    "s1cor": (1, genmask(5, 4)),
    "s1csh": (1, genmask(7, 6)),
    "mev": (1, 1 << 19),
    "s2fwb": (1, 1 << 25),
    "s1stalld": (1, 1 << 27),
    "eats": (1, genmask(29, 28)),
    "strw": (1, genmask(31, 30)),
    "shcfg": (1, genmask(45, 44)),
    "s2vmid": (2, genmask(15, 0)),
    "s2t0sz": (2, genmask(37, 32)),
    "s2sl0": (2, genmask(39, 38)),
    "s2ir0": (2, genmask(41, 40)),
    "s2or0": (2, genmask(43, 42)),
    "s2sh0": (2, genmask(45, 44)),
    "s2tg": (2, genmask(47, 46)),
    "s2ps": (2, genmask(50, 48)),
    "s2aa64": (2, 1 << 51),
    "s2endi": (2, 1 << 52),
    "s2ptw": (2, 1 << 54),
    "s2s": (2, 1 << 57),
    "s2r": (2, 1 << 58),
}


@pytest.mark.parametrize("name", sorted(KERNEL_MASKS))
def test_ste_field_matches_kernel_mask(name: str) -> None:
    word, kernel_mask = KERNEL_MASKS[name]
    field = STE_LAYOUT.by_name[name]
    value: Any = True if field.is_flag else (1 << field.width) - 1
    encoded = words(Ste(**{name: value}).encode())
    assert encoded[word] == kernel_mask
    assert sum(encoded) == kernel_mask


def test_ste_address_fields_cover_kernel_masks() -> None:
    kernel_ctxptr, kernel_s2ttb = genmask(51, 6), genmask(51, 4)
    assert STE_LAYOUT.by_name["s1_context_ptr"].mask & kernel_ctxptr == kernel_ctxptr
    assert STE_LAYOUT.by_name["s2ttb"].mask & kernel_s2ttb == kernel_s2ttb
    ste = Ste(s1_context_ptr=kernel_ctxptr, s2ttb=kernel_s2ttb)
    assert words(ste.encode())[0] == kernel_ctxptr
    assert words(ste.encode())[3] == kernel_s2ttb


def test_ste_dataclass_fields_are_the_layout_fields() -> None:
    assert [f.name for f in dataclasses.fields(Ste)] == [f.name for f in STE_LAYOUT.fields]


def test_s1_ste_matches_kernel_cdtable_ste() -> None:
    # arm_smmu_make_cdtable_ste(): V | CFG_S1_TRANS | S1FMT | ctxptr | S1CDMAX;
    # S1DSS | S1CIR=WBRA | S1COR=WBRA | S1CSH=ISH | STRW=NSEL1
    ste = s1_ste(0x4000_0000, s1fmt=S1Fmt.L2_4K, s1cdmax=10, s1dss=S1Dss.SSID0)
    assert words(ste.encode()) == [
        1 | 5 << 1 | 1 << 4 | 0x4000_0000 | 10 << 59,
        2 | 1 << 2 | 1 << 4 | 3 << 6,
        0,
        0,
        0,
        0,
        0,
        0,
    ]
    assert ste.stage1 and not ste.stage2 and ste.config_name == "S1_TRANS"


def test_s2_ste_matches_kernel_s2_domain_ste() -> None:
    ste = s2_ste(5, 0x8000_1000, t0sz=16, sl0=2, tg=0, ps=5)
    vtcr = 16 | 2 << 6 | 1 << 8 | 1 << 10 | 3 << 12 | 0 << 14 | 5 << 16
    assert words(ste.encode())[:4] == [
        1 | 6 << 1,
        1 << 44,
        5 | vtcr << 32 | 1 << 51 | 1 << 54 | 1 << 58,
        0x8000_1000,
    ]
    assert ste.stage2 and not ste.stage1


def test_abort_bypass_and_invalid_ste() -> None:
    assert words(abort_ste().encode())[0] == 1
    assert words(bypass_ste().encode())[:2] == [1 | 4 << 1, 1 << 44]
    assert Ste().config_name == "INVALID"
    assert decode_ste(bytes(64)) == Ste()


def valid_ste_words() -> st.SearchStrategy[list[int]]:
    return st.tuples(*[st.integers(0, (1 << 64) - 1) for _ in range(8)]).map(
        lambda ws: [w & ~STE_LAYOUT.reserved[i] for i, w in enumerate(ws)]
    )


@settings(max_examples=200, deadline=None)
@given(raw=valid_ste_words(), config=st.sampled_from(list(SteConfig)))
def test_ste_round_trip(raw: list[int], config: SteConfig) -> None:
    raw[0] = (raw[0] & ~genmask(3, 1)) | config << 1
    try:
        ste = decode_ste(to_bytes(*raw))
    except DecodeError:
        assume(False)
        raise
    assert words(encode_ste(ste)) == raw
    assert decode_ste(raw) == ste


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({0: 1 << 56}, "STE.RES0[58:56]"),
        ({1: 1 << 41}, "STE.RES0[107:105]"),
        ({3: 1 << 63}, "STE.RES0[255]"),
        ({3: 1 << 56}, "STE.RES0[252:248]"),
        ({4: 1 << 40}, "STE.RES0[301:296]"),
        ({5: 1 << 56}, "STE.RES0[383:376]"),
        ({6: 1 << 3}, "STE.RES0[387]"),
        ({6: 1 << 63}, "STE.RES0[447]"),
        ({0: 1 | 2 << 1}, "STE.Config"),
        ({0: 1 | 1 << 1}, "STE.Config"),
        ({0: 1 | 5 << 1 | 21 << 59}, "STE.S1CDMax"),
        ({0: 1 | 5 << 1 | 3 << 4 | 1 << 59}, "STE.S1Fmt"),
        ({0: 1 | 5 << 1 | 1 << 59, 1: 3}, "STE.S1DSS"),
        ({0: 1 | 5 << 1, 1: 1 << 30}, "STE.STRW"),
        ({0: 1 | 6 << 1, 2: 3 << 46}, "STE.S2TG"),
    ],
)
def test_ste_decode_errors_name_the_field(raw: dict[int, int], field: str) -> None:
    data = [raw.get(i, 0) for i in range(8)]
    with pytest.raises(DecodeError) as info:
        decode_ste(to_bytes(*data))
    assert info.value.field == field


def test_ste_ignored_fields_are_not_checked() -> None:
    # S1Fmt/S1DSS are IGNORED without substreams, S2TG without stage 2, all when V == 0.
    assert decode_ste(to_bytes(1 | 5 << 1 | 3 << 4, 3, 3 << 46, 0, 0, 0, 0, 0)).s1fmt == 3
    assert decode_ste(to_bytes(2 << 1, 0, 0, 0, 0, 0, 0, 0)).config == 2


@pytest.mark.parametrize("size", [0, 63, 65, 128])
def test_ste_decode_rejects_wrong_size(size: int) -> None:
    with pytest.raises(DecodeError, match="need 64 bytes"):
        decode_ste(bytes(size))


def test_ste_decode_rejects_bad_word_sequence() -> None:
    with pytest.raises(DecodeError, match="need 8"):
        decode_ste([0] * 7)
    with pytest.raises(DecodeError) as info:
        decode_ste([0] * 7 + [1 << 64])
    assert info.value.field == "STE.word7"


@pytest.mark.parametrize(
    ("ste", "field"),
    [
        (Ste(config=8), "STE.Config"),
        (Ste(s1_context_ptr=0x1000_0020), "STE.S1ContextPtr"),
        (Ste(s1_context_ptr=1 << 56), "STE.S1ContextPtr"),
        (Ste(s2vmid=1 << 16), "STE.S2VMID"),
        (Ste(s2ttb=0x1008), "STE.S2TTB"),
        (Ste(s1cdmax=-1), "STE.S1CDMax"),
    ],
)
def test_ste_encode_errors_name_the_field(ste: Ste, field: str) -> None:
    with pytest.raises(EncodeError) as info:
        ste.encode()
    assert info.value.field == field


# --- nested HWPT vSTE (arm-smmu-v3-iommufd.c) ---


def test_nesting_allowed_masks_match_kernel() -> None:
    kernel_0 = 1 | genmask(3, 1) | genmask(5, 4) | genmask(51, 6) | genmask(63, 59)
    kernel_1 = genmask(1, 0) | genmask(3, 2) | genmask(5, 4) | genmask(7, 6)
    kernel_1 |= 1 << 27 | genmask(29, 28)
    assert (kernel_0, kernel_1) == (NESTING_ALLOWED_0, NESTING_ALLOWED_1)


def test_build_nested_ste_s1_and_kernel_verdict() -> None:
    data = build_nested_ste(
        "s1", cd_table=0x4000_0000, s1cdmax=4, s1dss=S1Dss.SSID0, eats=Eats.FULL, s1csh=3
    )
    assert words(data) == [1 | 5 << 1 | 0x4000_0000 | 4 << 59, 2 | 3 << 6 | 1 << 28]
    verdict = validate_nested_ste(data)
    assert verdict.ok and verdict.errno == 0
    assert verdict.enable_ats and verdict.installs == "nested" and verdict.needs_vdevice
    assert verdict.ste == (words(data)[0], 2 | 3 << 6)
    word0, word1 = verdict.physical_words()
    assert word0 == 1 | 7 << 1 | 0x4000_0000 | 4 << 59
    assert word1 == 2 | 3 << 6 | 1 << 19


@pytest.mark.parametrize(
    ("config", "installs"), [("abort", "abort"), ("bypass", "bypass"), (SteConfig.BYPASS, "bypass")]
)
def test_build_nested_ste_abort_bypass(config: str | int, installs: str) -> None:
    verdict = validate_nested_ste(build_nested_ste(config, eats=Eats.FULL))
    assert verdict.ok and verdict.installs == installs
    assert not verdict.enable_ats and not verdict.needs_vdevice
    assert verdict.physical_words() == (0, 0)


def test_non_valid_vste_is_zeroed_and_aborts() -> None:
    assert build_nested_ste(valid=False) == bytes(16)
    verdict = validate_nested_ste(to_bytes(0xFFFF_FFFF_FFFF_FFFE, (1 << 64) - 1))
    assert verdict.ok and verdict.ste == (0, 0) and verdict.installs == "abort"


@pytest.mark.parametrize(
    ("ste0", "ste1", "reason"),
    [
        (1 | 5 << 1 | 1 << 52, 0, "word 0"),  # S1ContextPtr above bit 51
        (1 | 5 << 1 | 1 << 56, 0, "word 0"),  # RES0
        (1 | 5 << 1, 1 << 19, "word 1"),  # MEV is the kernel's
        (1 | 5 << 1, 1 << 44, "word 1"),  # SHCFG
        (1 | 5 << 1, 1 << 30, "word 1"),  # STRW
        (1 | 6 << 1, 0, "Config"),  # S2 translate
        (1 | 7 << 1, 0, "Config"),  # nested
        (1 | 2 << 1, 0, "Config"),  # reserved
        (1 | 5 << 1, 2 << 28, "EATS"),  # split-stage ATS
        (1 | 5 << 1, 3 << 28, "EATS"),
    ],
)
def test_vste_rejected_with_eio(ste0: int, ste1: int, reason: str) -> None:
    verdict = validate_nested_ste((ste0, ste1))
    assert verdict.errno == errno.EIO and not verdict.ok
    assert reason in verdict.reason


def test_vste_flags_and_size() -> None:
    good = build_nested_ste("abort")
    assert validate_nested_ste(good, flags=1 << 2).ok  # FAULT_ID_VALID is stripped
    assert validate_nested_ste(good, flags=1).errno == errno.EOPNOTSUPP  # NEST_PARENT
    assert validate_nested_ste(good, flags=1 << 3).errno == errno.EOPNOTSUPP
    assert validate_nested_ste(good[:8]).errno == errno.EINVAL
    assert validate_nested_ste(good + bytes(8)).errno == errno.EINVAL
    assert validate_nested_ste((1,)).errno == errno.EINVAL


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"config": "s2"}, "vSTE.Config"),
        ({"config": SteConfig.NESTED}, "vSTE.Config"),
        ({"eats": Eats.SPLIT_STAGE}, "vSTE.EATS"),
        ({"cd_table": 0x4000_0008}, "vSTE.S1ContextPtr"),
        ({"cd_table": 1 << 52}, "vSTE.S1ContextPtr"),
        ({"s1cdmax": 32}, "vSTE.S1CDMax"),
        ({"s1dss": 4}, "vSTE.S1DSS"),
        ({"s1fmt": -1}, "vSTE.S1Fmt"),
    ],
)
def test_build_nested_ste_errors(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(EncodeError) as info:
        build_nested_ste(**kwargs)
    assert info.value.field == field


@settings(max_examples=200, deadline=None)
@given(
    config=st.sampled_from(["abort", "bypass", "s1"]),
    cd_table=st.integers(0, (1 << 46) - 1).map(lambda v: v << 6),
    s1fmt=st.integers(0, 3),
    s1cdmax=st.integers(0, 31),
    s1dss=st.integers(0, 3),
    s1cir=st.integers(0, 3),
    s1cor=st.integers(0, 3),
    s1csh=st.integers(0, 3),
    s1stalld=st.booleans(),
    eats=st.sampled_from([Eats.ABORT, Eats.FULL]),
)
def test_every_built_vste_is_accepted(
    config: str,
    cd_table: int,
    s1fmt: int,
    s1cdmax: int,
    s1dss: int,
    s1cir: int,
    s1cor: int,
    s1csh: int,
    s1stalld: bool,
    eats: int,
) -> None:
    data = build_nested_ste(
        config,
        cd_table=cd_table,
        s1fmt=s1fmt,
        s1cdmax=s1cdmax,
        s1dss=s1dss,
        s1cir=s1cir,
        s1cor=s1cor,
        s1csh=s1csh,
        s1stalld=s1stalld,
        eats=eats,
    )
    verdict = validate_nested_ste(data)
    assert verdict.ok
    assert verdict.enable_ats == (config == "s1" and eats == Eats.FULL)
    assert verdict.ste[1] & (3 << 28) == 0


@settings(max_examples=200, deadline=None)
@given(ste0=st.integers(0, (1 << 64) - 1), ste1=st.integers(0, (1 << 64) - 1))
def test_vste_with_bits_outside_allowed_is_eio(ste0: int, ste1: int) -> None:
    ste0 |= 1
    assume(ste0 & ~NESTING_ALLOWED_0 or ste1 & ~NESTING_ALLOWED_1)
    assert validate_nested_ste((ste0, ste1)).errno == errno.EIO
