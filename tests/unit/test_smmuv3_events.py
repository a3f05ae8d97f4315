"""SMMUv3 event records and the guest dmesg event-report parser."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import DecodeError, EncodeError
from harness.smmuv3 import EVENT_IDS, SmmuEvent, decode_event, encode_event, parse_dmesg_events
from harness.smmuv3.events import LAYOUTS

pytestmark = pytest.mark.tier0


def to_bytes(*values: int) -> bytes:
    return b"".join(v.to_bytes(8, "little") for v in values)


def genmask(msb: int, lsb: int) -> int:
    return ((1 << (msb - lsb + 1)) - 1) << lsb


def test_event_ids_match_kernel() -> None:
    kernel = {
        "C_BAD_STREAMID": 0x02,
        "F_STE_FETCH": 0x03,
        "C_BAD_STE": 0x04,
        "F_STREAM_DISABLED": 0x06,
        "C_BAD_SUBSTREAMID": 0x08,
        "F_CD_FETCH": 0x09,
        "C_BAD_CD": 0x0A,
        "F_TRANSLATION": 0x10,
        "F_ADDR_SIZE": 0x11,
        "F_ACCESS": 0x12,
        "F_PERMISSION": 0x13,
        "F_VMS_FETCH": 0x25,
    }
    assert {name: EVENT_IDS[name] for name in kernel} == kernel


def test_stage1_translation_fault_by_hand() -> None:
    # EVTQ_0_ID, EVTQ_0_SSV, EVTQ_0_SSID, EVTQ_0_SID; EVTQ_1_RnW, EVTQ_1_CLASS; EVTQ_2_ADDR
    raw = to_bytes(0x10 | 1 << 11 | 3 << 12 | 0x18 << 32, 1 << 35 | 2 << 40, 0x800_0123, 0)
    event = decode_event(raw)
    assert (event.event_id, event.name, event.sid, event.ssid) == (0x10, "F_TRANSLATION", 0x18, 3)
    assert event.address == 0x800_0123 and event.ipa is None
    assert not event.is_write and event.rnw is True and not event.stage2
    assert event.class_name == "IN" and event.stag == 0 and not event.stall
    assert event.forwarded_to_vevent
    assert (
        encode_event(
            "F_TRANSLATION", sid=0x18, ssid=3, address=0x800_0123, is_write=False, event_class="IN"
        )
        == raw[:8] + (1 << 35 | 2 << 40).to_bytes(8, "little") + raw[16:]
    )


def test_stage2_permission_fault_on_table_walk_by_hand() -> None:
    # S2 (bit 39), CLASS TT (1), TT_READ (bit 44), PnU (bit 33), Stall + STAG; IPA in word 3.
    word1 = 0x42 | 1 << 31 | 1 << 33 | 1 << 39 | 1 << 40 | 1 << 44
    event = decode_event(to_bytes(0x13 | 0x7 << 32, word1, 0xFFFF_0000_1000, 0x4000_1000))
    assert event.name == "F_PERMISSION" and event.ssid is None
    assert event.stage2 and event.ipa == 0x4000_1000 and event.class_name == "TT"
    assert event.tt_rnw is True and event.privileged and event.is_write
    assert event.stall and event.stag == 0x42
    assert not event.forwarded_to_vevent


@pytest.mark.parametrize(
    ("raw", "checks"),
    [
        (to_bytes(0x04 | 1 << 11 | 5 << 12 | 9 << 32, 0, 0, 0), {"name": "C_BAD_STE", "ssid": 5}),
        (to_bytes(0x04 | 5 << 12 | 9 << 32, 0, 0, 0), {"name": "C_BAD_STE", "ssid": None}),
        (to_bytes(0x06 | 9 << 32, 0, 0, 0), {"name": "F_STREAM_DISABLED", "ssid": None}),
        (to_bytes(0x08 | 7 << 12 | 9 << 32, 0, 0, 0), {"name": "C_BAD_SUBSTREAMID", "ssid": 7}),
        (to_bytes(0x03 | 9 << 32, 0, 0, 0x8000_0240), {"fetch_addr": 0x8000_0240, "address": None}),
        (to_bytes(0x09 | 9 << 32, 0xABCD, 0, 0x8000_0040), {"fetch_addr": 0x8000_0040}),
        (
            to_bytes(0x0B | 9 << 32, 1 << 39 | 1 << 40, 0x1000, 0x9000_0008),
            {"fetch_addr": 0x9000_0008, "stage2": True},
        ),
        (to_bytes(0x07 | 9 << 32, 1 << 35, 0x1000, 0), {"name": "F_TRANSL_FORBIDDEN", "rnw": True}),
        (
            to_bytes(0x01 | 9 << 32, 1 << 34 | 0x77, 0x2000, 0),
            {"name": "F_UUT", "instruction": True},
        ),
        (to_bytes(0xE3 | 9 << 32, 1, 2, 3), {"name": "IMPDEF_EVENT_0xe3", "sid": 9}),
        (to_bytes(0x21 | 9 << 32, 0x55, 0, 0), {"name": "F_CFG_CONFLICT"}),
        (
            to_bytes(0x20 | 9 << 32, 1 << 39, 0x3000, 0x44),
            {"name": "F_TLB_CONFLICT", "stage2": True},
        ),
        (
            to_bytes(0x24 | 1 << 11 | 9 << 32, 0x12, 0x4000, 0),
            {"name": "E_PAGE_REQUEST", "ssid": 0},
        ),
        (to_bytes(0x25 | 9 << 32, 0, 0, 0x5000), {"name": "F_VMS_FETCH", "fetch_addr": 0x5000}),
        (to_bytes(0x05 | 9 << 32, 0x1F, 0x6000, 0), {"name": "F_BAD_ATS_TREQ", "address": 0x6000}),
    ],
)
def test_event_types_decode(raw: bytes, checks: dict[str, object]) -> None:
    event = decode_event(raw)
    for name, value in checks.items():
        assert getattr(event, name) == value, name
    assert event.raw == tuple(int.from_bytes(raw[i : i + 8], "little") for i in range(0, 32, 8))


def test_stage1_fault_ipa_word_is_unknown_and_not_checked() -> None:
    event = decode_event(to_bytes(0x10 | 1 << 32, 0, 0x1234, 0xDEAD_BEEF_1234_5678))
    assert event.ipa is None


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (to_bytes(0x04 | 1 << 8, 0, 0, 0), "C_BAD_STE.RES0[10:8]"),
        (to_bytes(0x04, 1, 0, 0), "C_BAD_STE.RES0[127:64]"),
        (to_bytes(0x02, 0, 0, 1 << 63), "C_BAD_STREAMID.RES0[255:192]"),
        (to_bytes(0x06 | 1 << 11, 0, 0, 0), "F_STREAM_DISABLED.RES0[31:8]"),
        (to_bytes(0x08 | 1 << 11, 0, 0, 0), "C_BAD_SUBSTREAMID.RES0[11:8]"),
        (to_bytes(0x07, 1 << 34, 0, 0), "F_TRANSL_FORBIDDEN.RES0[98:64]"),
        (to_bytes(0x10, 1 << 16, 0, 0), "F_TRANSLATION.RES0[94:80]"),
        (to_bytes(0x10, 1 << 39, 0, 0x4000_0001), "F_TRANSLATION.RES0[203:192]"),
        (to_bytes(0x13, 1 << 45, 0, 0), "F_PERMISSION.RES0[127:109]"),
        (to_bytes(0x03, 0, 0, 0x1001), "F_STE_FETCH.RES0[194:192]"),
        (to_bytes(0x09, 0, 0x8000_0040, 0), "F_CD_FETCH.RES0[191:128]"),
        (to_bytes(0x01, 1 << 36, 0, 0), "F_UUT.RES0[127:100]"),
    ],
)
def test_event_res0_errors_name_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_event(raw)
    assert info.value.field == field


def test_non_strict_accepts_qemu_records() -> None:
    # QEMU puts the F_CD_FETCH address in word 2 and keeps the IPA's page offset.
    cd_fetch = decode_event(to_bytes(0x09 | 4 << 32, 0, 0x8000_0040, 0), strict=False)
    assert cd_fetch.name == "F_CD_FETCH" and cd_fetch.fetch_addr == 0
    s2 = decode_event(to_bytes(0x10, 1 << 39, 0x1234, 0x4000_0123), strict=False)
    assert s2.ipa == 0x4000_0000


@pytest.mark.parametrize("event_id", [0x00, 0x0C, 0x14, 0x30, 0xDF, 0xF0, 0xFF])
def test_unknown_event_ids(event_id: int) -> None:
    with pytest.raises(DecodeError) as info:
        decode_event(to_bytes(event_id, 0, 0, 0))
    assert info.value.field == "EVT.EventID"
    with pytest.raises(DecodeError):
        decode_event(to_bytes(event_id, 0, 0, 0), strict=False)


@pytest.mark.parametrize("size", [0, 16, 31, 33])
def test_event_wrong_size(size: int) -> None:
    with pytest.raises(DecodeError, match="need 32 bytes"):
        decode_event(bytes(size))


@pytest.mark.parametrize(
    ("event", "kwargs", "field"),
    [
        ("C_BAD_STE", {"ipa": 0x1000}, "C_BAD_STE.IPA"),
        ("F_STREAM_DISABLED", {"ssid": 1}, "F_STREAM_DISABLED.SubstreamID"),
        ("C_BAD_CD", {"is_write": True}, "C_BAD_CD.RnW"),
        ("F_TRANSLATION", {"event_class": "XX"}, "F_TRANSLATION.CLASS"),
        ("F_TRANSLATION", {"sid": 1 << 32}, "F_TRANSLATION.StreamID"),
        ("F_STE_FETCH", {"fetch_addr": 0x1001}, "F_STE_FETCH.FetchAddr"),
        ("F_TRANSLATION", {"ipa": 0x1234}, "F_TRANSLATION.IPA"),
        ("F_NOTHING", {}, "EVT.EventID"),
        (0xE0, {}, "EVT.EventID"),
    ],
)
def test_encode_event_errors(event: str | int, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(EncodeError) as info:
        encode_event(event, **kwargs)
    assert info.value.field == field


def event_kwargs(name: str) -> st.SearchStrategy[dict[str, Any]]:
    layout = LAYOUTS[EVENT_IDS[name]]
    have = set(layout.by_name)
    strategies: dict[str, st.SearchStrategy[object]] = {"sid": st.integers(0, (1 << 32) - 1)}
    optional: dict[str, st.SearchStrategy[object]] = {}
    if "ssid" in have:
        if "ssv" in have:
            optional["ssid"] = st.one_of(st.none(), st.integers(0, (1 << 20) - 1))
        else:
            strategies["ssid"] = st.integers(0, (1 << 20) - 1)
    pool = {
        "input_addr": ("address", st.integers(0, (1 << 64) - 1)),
        "fetch_addr": ("fetch_addr", st.integers(0, (1 << 53) - 1).map(lambda v: v << 3)),
        "rnw": ("is_write", st.booleans()),
        "pnu": ("privileged", st.booleans()),
        "ind": ("instruction", st.booleans()),
        "event_class": ("event_class", st.integers(0, 3)),
        "stall": ("stall", st.booleans()),
        "stag": ("stag", st.integers(0, 0xFFFF)),
        "ttrnw": ("tt_rnw", st.booleans()),
    }
    for key, (kwarg, strategy) in pool.items():
        if key in have:
            strategies[kwarg] = strategy
    if "s2" in have:
        strategies["stage2"] = st.booleans()
    if "ipa" in have:
        strategies["ipa"] = st.integers(0, (1 << 44) - 1).map(lambda v: v << 12)
    return st.fixed_dictionaries(strategies, optional=optional)


@pytest.mark.parametrize("name", sorted(EVENT_IDS))
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_event_round_trip(name: str, data: st.DataObject) -> None:
    kwargs = data.draw(event_kwargs(name))
    event = decode_event(encode_event(name, **kwargs))
    assert isinstance(event, SmmuEvent)
    assert event.name == name and event.sid == kwargs["sid"]
    assert event.ssid == kwargs.get("ssid")
    assert event.address == kwargs.get("address")
    assert event.fetch_addr == kwargs.get("fetch_addr")
    if "is_write" in kwargs:
        assert event.is_write == kwargs["is_write"]
    if "stage2" in kwargs:
        assert event.stage2 == kwargs["stage2"]
        expected_ipa = kwargs["ipa"] if kwargs["stage2"] and "ipa" in kwargs else None
        assert event.ipa == expected_ipa
    for key in ("privileged", "instruction", "event_class", "stall", "stag"):
        if key in kwargs:
            assert getattr(event, key) == kwargs[key], key
    if "tt_rnw" in kwargs:
        assert event.tt_rnw == (kwargs["tt_rnw"] if kwargs["event_class"] == 1 else None)


# --- dmesg ---

PREFIX = "[   12.345678] arm-smmu-v3 arm-smmu-v3.0.auto: "


def dump(raw: bytes) -> list[str]:
    event_id = raw[0]
    lines = [f"{PREFIX}event 0x{event_id:02x} received:"]
    for i in range(0, 32, 8):
        lines.append(f"{PREFIX}\t0x{int.from_bytes(raw[i : i + 8], 'little'):016x}")
    return lines


def test_parse_dmesg_translation_fault_with_summary() -> None:
    raw = encode_event(
        "F_TRANSLATION", sid=0x18, address=0x800_0000, is_write=True, event_class="IN"
    )
    log = [
        "[   12.000000] some other driver: hello",
        *dump(raw),
        f"{PREFIX}event: F_TRANSLATION client: 0000:00:03.0 sid: 0x18 ssid: 0x0"
        " iova: 0x8000000 ipa: 0x0",
        f'{PREFIX}unpriv data write s1 "Input address caused fault" stag: 0x0',
    ]
    (report,) = parse_dmesg_events("\n".join(log))
    assert report.device == "arm-smmu-v3 arm-smmu-v3.0.auto" and report.event_id == 0x10
    assert report.event is not None and report.event.address == 0x800_0000
    assert report.event.is_write and report.event.sid == 0x18
    assert (report.name, report.client, report.sid, report.ssid) == (
        "F_TRANSLATION",
        "0000:00:03.0",
        0x18,
        0,
    )
    assert report.addresses == {"iova": 0x800_0000, "ipa": 0}
    assert report.privileged is False and report.instruction is False
    assert report.read is False and report.stage2 is False and report.stall is False
    assert report.class_text == "Input address caused fault" and report.stag == 0
    assert report.tt_read is None


def test_parse_dmesg_several_kinds() -> None:
    bad_ste = encode_event("C_BAD_STE", sid=0x8)
    cd_fetch = encode_event("F_CD_FETCH", sid=0x8, fetch_addr=0x4000_0040)
    perm = encode_event("F_PERMISSION", sid=0x8, stage2=False, event_class="TT", tt_rnw=True)
    log = [
        *dump(bad_ste),
        f"{PREFIX}event: C_BAD_STE client: (unassigned sid) sid: 0x8 ssid: 0x0",
        *dump(cd_fetch),
        f"{PREFIX}event: F_CD_FETCH client: 0000:00:03.0 sid: 0x8 ssid: 0x0 fetch_addr: 0x40000040",
        *dump(perm),
        f"{PREFIX}event: F_PERMISSION client: 0000:00:03.0 sid: 0x8 ssid: 0x0 iova: 0x0 ipa: 0x0",
        f'{PREFIX}priv inst read s1 "Stage 1 translation table fetch" ttd_read stall stag: 0x7',
    ]
    reports = parse_dmesg_events(log)
    assert [r.name for r in reports] == ["C_BAD_STE", "F_CD_FETCH", "F_PERMISSION"]
    assert reports[0].client == "(unassigned sid)" and reports[0].addresses == {}
    assert reports[1].addresses == {"fetch_addr": 0x4000_0040}
    assert reports[1].event is not None and reports[1].event.fetch_addr == 0x4000_0040
    perm_report = reports[2]
    assert perm_report.tt_read is True and perm_report.stall and perm_report.stag == 7
    assert perm_report.privileged and perm_report.instruction and perm_report.read


def test_parse_dmesg_raw_only_and_truncated_reports() -> None:
    raw = encode_event("C_BAD_CD", sid=3, ssid=2)
    lines = dump(raw)
    without_stamp = [line.split("] ", 1)[1] for line in lines]
    (full,) = parse_dmesg_events(without_stamp)
    assert full.event is not None and full.event.name == "C_BAD_CD" and full.name is None
    (partial,) = parse_dmesg_events(lines[:3])
    assert partial.raw and len(partial.raw) == 2 and partial.event is None
    assert parse_dmesg_events("nothing here\n") == []
