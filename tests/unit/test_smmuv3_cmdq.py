"""Command-queue commands and the kernel vSMMU's checks on invalidation commands."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from harness.errors import DecodeError, EncodeError
from harness.smmuv3 import (
    OPCODES,
    Command,
    VsmmuContext,
    check_vsmmu_invalidation,
    check_vsmmu_invalidation_array,
    decode_command,
    decode_id_regs,
    encode_command,
    make_command,
    predict_id_regs,
)
from harness.smmuv3.cmdq import LAYOUTS

pytestmark = pytest.mark.tier0


def genmask(msb: int, lsb: int) -> int:
    return ((1 << (msb - lsb + 1)) - 1) << lsb


def to_bytes(word0: int, word1: int) -> bytes:
    return word0.to_bytes(8, "little") + word1.to_bytes(8, "little")


def test_opcodes_match_kernel_enum() -> None:
    kernel = {
        "PREFETCH_CONFIG": 0x1,
        "CFGI_STE": 0x3,
        "CFGI_STE_RANGE": 0x4,
        "CFGI_CD": 0x5,
        "CFGI_CD_ALL": 0x6,
        "TLBI_NH_ALL": 0x10,
        "TLBI_NH_ASID": 0x11,
        "TLBI_NH_VA": 0x12,
        "TLBI_NH_VAA": 0x13,
        "TLBI_EL2_ALL": 0x20,
        "TLBI_EL2_ASID": 0x21,
        "TLBI_EL2_VA": 0x22,
        "TLBI_S12_VMALL": 0x28,
        "TLBI_S2_IPA": 0x2A,
        "TLBI_NSNH_ALL": 0x30,
        "ATC_INV": 0x40,
        "PRI_RESP": 0x41,
        "RESUME": 0x44,
        "CMD_SYNC": 0x46,
    }
    assert {name: OPCODES[name] for name in kernel} == kernel


# Vectors built the way arm-smmu-v3.h's arm_smmu_make_cmd_*() helpers build them.
KERNEL_VECTORS = [
    (make_command("CFGI_STE", sid=0x18, leaf=True), (0x03 | 0x18 << 32, 1)),
    (make_command("CFGI_ALL"), (0x04, 31)),
    (make_command("CFGI_CD", sid=0x18, ssid=5, leaf=True), (0x05 | 5 << 12 | 0x18 << 32, 1)),
    (make_command("CFGI_CD_ALL", sid=0x18), (0x06 | 0x18 << 32, 0)),
    (make_command("PREFETCH_CONFIG", sid=0x18), (0x01 | 0x18 << 32, 0)),
    (
        make_command("ATC_INV", sid=0x18, ssv=True, ssid=3, address=0x1234_5000, size=2),
        (0x40 | 1 << 11 | 3 << 12 | 0x18 << 32, 2 | 0x1234_5000),
    ),
    (make_command("ATC_INV", sid=0x18, size=52), (0x40 | 0x18 << 32, 52)),
    (make_command("RESUME", sid=7, stag=0x55, resp=1), (0x44 | 1 << 12 | 7 << 32, 0x55)),
    (
        make_command("PRI_RESP", sid=7, ssv=True, ssid=9, prg_index=0x1FF, resp=2),
        (0x41 | 1 << 11 | 9 << 12 | 7 << 32, 0x1FF | 2 << 12),
    ),
    (
        make_command("CMD_SYNC", cs=1, msh=3, msiattr=0xF, msiaddr=0x8000_0004),
        (0x46 | 1 << 12 | 3 << 22 | 0xF << 24, 0x8000_0004),
    ),
    (make_command("TLBI_NH_ASID", asid=0x1234, vmid=0x56), (0x11 | 0x56 << 32 | 0x1234 << 48, 0)),
    (make_command("TLBI_NH_ALL", vmid=0x56), (0x10 | 0x56 << 32, 0)),
    (
        make_command(
            "TLBI_NH_VA",
            asid=5,
            vmid=3,
            address=0x1234_5000,
            leaf=True,
            tg=1,
            ttl=3,
            num=2,
            scale=1,
        ),
        (0x12 | 2 << 12 | 1 << 20 | 3 << 32 | 5 << 48, 1 | 3 << 8 | 1 << 10 | 0x1234_5000),
    ),
    (make_command("TLBI_S12_VMALL", vmid=9), (0x28 | 9 << 32, 0)),
    (
        make_command("TLBI_S2_IPA", vmid=9, address=0x4000_0000, leaf=True),
        (0x2A | 9 << 32, 1 | 0x4000_0000),
    ),
    (make_command("TLBI_NSNH_ALL"), (0x30, 0)),
    (make_command("SYNC"), (0x46, 0)),
    (make_command("CMD_STALL_TERM", sid=4), (0x45 | 4 << 32, 0)),
]


@pytest.mark.parametrize(("command", "expected"), KERNEL_VECTORS)
def test_command_known_vectors(command: Command, expected: tuple[int, int]) -> None:
    assert command.words() == expected
    assert encode_command(command) == to_bytes(*expected)
    assert decode_command(to_bytes(*expected)) == command


def test_command_names() -> None:
    assert make_command("CFGI_ALL").name == "CMD_CFGI_ALL"
    assert make_command("CFGI_STE_RANGE", range=3).name == "CMD_CFGI_STE_RANGE"
    assert make_command("CMD_SYNC").name == "CMD_SYNC"
    assert make_command("TLBI_NH_VA").name == "CMD_TLBI_NH_VA"
    assert Command(0x77).name == "CMD_0x77"


def masked(field_mask: int) -> Callable[[int], int]:
    return lambda value: value & field_mask


def command_values(opcode: int) -> st.SearchStrategy[dict[str, Any]]:
    layout = LAYOUTS[opcode]
    fields = {}
    for field in layout.fields:
        if field.name == "opcode":
            continue
        if field.address:
            fields[field.name] = st.integers(0, (1 << 64) - 1).map(masked(field.mask))
        elif field.is_flag:
            fields[field.name] = st.booleans()
        else:
            fields[field.name] = st.integers(0, (1 << field.width) - 1)
    return st.fixed_dictionaries(fields)


@pytest.mark.parametrize("name", sorted(OPCODES))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_command_round_trip(name: str, data: st.DataObject) -> None:
    opcode = OPCODES[name]
    values = data.draw(command_values(opcode))
    command = Command(opcode, **values)
    raw = command.encode()
    try:
        decoded = decode_command(raw)
    except DecodeError as error:
        # Only the reserved combinations the decoder knows about may be refused.
        assert error.field.endswith((".TG", ".CS", ".Resp"))
        assume(False)
        raise
    assert decoded == command
    assert decoded.encode() == raw


@pytest.mark.parametrize(
    ("words", "field"),
    [
        ((0x00, 0), "CMD.Opcode"),
        ((0x07, 0), "CMD.Opcode"),
        ((0x02, 0), "CMD.Opcode"),
        ((0xFF, 0), "CMD.Opcode"),
        ((0x03 | 1 << 9, 0), "CMD_CFGI_STE.RES0[9:8]"),
        ((0x03, 1 << 1), "CMD_CFGI_STE.RES0[127:65]"),
        ((0x10 | 1 << 48, 0), "CMD_TLBI_NH_ALL.RES0[63:48]"),
        ((0x13 | 1 << 48, 0), "CMD_TLBI_NH_VAA.RES0[63:48]"),
        ((0x12 | 1 << 26, 0), "CMD_TLBI_NH_VA.RES0[31:26]"),
        ((0x12 | 1 << 12, 0), "CMD_TLBI_NH_VA.TG"),
        ((0x12, 1 << 8), "CMD_TLBI_NH_VA.TG"),
        ((0x2A, 1 << 56), "CMD_TLBI_S2_IPA.RES0[127:120]"),
        ((0x46 | 3 << 12, 0), "CMD_SYNC.CS"),
        ((0x46, 1), "CMD_SYNC.RES0[65:64]"),
        ((0x44 | 3 << 12, 0), "CMD_RESUME.Resp"),
        ((0x41, 3 << 12), "CMD_PRI_RESP.Resp"),
        ((0x40, 1 << 6), "CMD_ATC_INV.RES0[75:70]"),
    ],
)
def test_command_decode_errors_name_the_field(words: tuple[int, int], field: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_command(to_bytes(*words))
    assert info.value.field == field


def test_command_decode_size_errors() -> None:
    with pytest.raises(DecodeError, match="need 16 bytes"):
        decode_command(bytes(15))
    with pytest.raises(DecodeError, match="need 2"):
        decode_command([0x03])


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (Command(OPCODES["CFGI_CD"], asid=3), "CMD_CFGI_CD.asid"),
        (Command(OPCODES["CFGI_STE"], sid=1 << 32), "CMD_CFGI_STE.StreamID"),
        (Command(OPCODES["TLBI_NH_VA"], address=0x1234), "CMD_TLBI_NH_VA.Address"),
        (Command(OPCODES["TLBI_S2_IPA"], address=1 << 56), "CMD_TLBI_S2_IPA.Address"),
        (Command(OPCODES["CMD_SYNC"], msiaddr=0x1001), "CMD_SYNC.MSIAddress"),
        (Command(0x77), "CMD.Opcode"),
    ],
)
def test_command_encode_errors_name_the_field(command: Command, field: str) -> None:
    with pytest.raises(EncodeError) as info:
        command.encode()
    assert info.value.field == field


def test_make_command_errors() -> None:
    with pytest.raises(EncodeError) as info:
        make_command("TLBI_EVERYTHING")
    assert info.value.field == "CMD.Opcode"
    with pytest.raises(EncodeError) as info:
        make_command("CFGI_STE", colour=1)
    assert info.value.field == "CMD_CFGI_STE"


# --- vSMMU invalidation (arm_vsmmu_validate_user_cmd / arm_vsmmu_convert_user_cmd) ---

CTX = VsmmuContext(vmid=7, vsid_to_sid={0x10: 0x200})


def test_tlbi_nh_asid_gets_the_vmid() -> None:
    verdict = check_vsmmu_invalidation(make_command("TLBI_NH_ASID", asid=5, vmid=99), CTX)
    assert verdict.ok
    assert verdict.issued == (0x11 | 7 << 32 | 5 << 48, 0)


def test_tlbi_nsnh_all_becomes_nh_all() -> None:
    verdict = check_vsmmu_invalidation(make_command("TLBI_NSNH_ALL"), CTX)
    assert verdict.issued == (0x10 | 7 << 32, 0)
    bad = check_vsmmu_invalidation((0x30 | 1 << 32, 0), CTX)
    assert bad.errno == errno.EIO


def test_tlbi_nh_all_and_vaa() -> None:
    assert check_vsmmu_invalidation(make_command("TLBI_NH_ALL", vmid=3), CTX).issued == (
        0x10 | 7 << 32,
        0,
    )
    vaa = make_command("TLBI_NH_VAA", address=0x5000, leaf=True)
    assert check_vsmmu_invalidation(vaa, CTX).issued == (0x13 | 7 << 32, 0x5001)
    assert check_vsmmu_invalidation((0x13 | 1 << 48, 0), CTX).errno == errno.EIO


@pytest.mark.parametrize(
    ("fields", "ctx", "ok"),
    [
        ({"tg": 1, "ttl": 3}, CTX, True),
        ({"tg": 1, "num": 3, "scale": 2}, CTX, True),
        ({"num": 1}, CTX, False),  # NUM set while TG == 0
        ({"ttl": 1}, CTX, False),  # TTL set while TG == 0
        ({"tg": 1}, CTX, False),  # reserved NUM == SCALE == TTL == 0
        ({"tg": 2, "ttl": 1}, CTX, False),  # needs DS
        ({"tg": 2, "ttl": 1}, VsmmuContext(ds=True), True),
        ({"tg": 1, "ttl": 3, "scale": 32}, CTX, False),  # SCALE bit 5 needs DS
        ({"tg": 1, "ttl": 3, "scale": 32}, VsmmuContext(ds=True), True),
        ({"tg": 1, "ttl": 3}, VsmmuContext(range_inv=False), False),
        ({}, VsmmuContext(range_inv=False), True),
        ({"asid": 0x100}, VsmmuContext(asid_bits=8), False),
        ({"asid": 0xFF}, VsmmuContext(asid_bits=8), True),
        ({"asid": 0xFFFF}, CTX, True),
    ],
)
def test_tlbi_nh_va_range_and_asid_rules(
    fields: dict[str, int], ctx: VsmmuContext, ok: bool
) -> None:
    command = make_command("TLBI_NH_VA", address=0x1234_5000, **fields)
    verdict = check_vsmmu_invalidation(command, ctx)
    assert verdict.ok is ok
    assert verdict.errno == (0 if ok else errno.EIO)
    if ok:
        assert verdict.issued is not None
        assert (verdict.issued[0] >> 32) & 0xFFFF == ctx.vmid
        assert verdict.issued[1] == command.words()[1]


def test_atc_inv_rules_and_sid_translation() -> None:
    command = make_command("ATC_INV", sid=0x10, address=0x8000, size=3)
    assert check_vsmmu_invalidation(command, CTX).errno == errno.EIO  # no ATS
    ats = VsmmuContext(ats=True, vsid_to_sid={0x10: 0x200})
    verdict = check_vsmmu_invalidation(command, ats)
    assert verdict.issued == (0x40 | 0x200 << 32, 0x8003)
    assert check_vsmmu_invalidation(make_command("ATC_INV", sid=0x10, size=52), ats).ok
    assert check_vsmmu_invalidation((0x40 | 0x10 << 32, 53), ats).errno == errno.EIO
    with_ssid = make_command("ATC_INV", sid=0x10, ssv=True, ssid=4, global_inv=True)
    assert check_vsmmu_invalidation(with_ssid, ats).errno == errno.EIO  # no substreams
    ssid_ctx = VsmmuContext(ats=True, ssid_bits=20, vsid_to_sid={0x10: 0x200})
    assert check_vsmmu_invalidation(with_ssid, ssid_ctx).ok
    unknown = make_command("ATC_INV", sid=0x11)
    assert check_vsmmu_invalidation(unknown, ats).errno == errno.EIO


def test_cfgi_cd_rules_and_sid_translation() -> None:
    verdict = check_vsmmu_invalidation(make_command("CFGI_CD", sid=0x10, leaf=True), CTX)
    assert verdict.issued == (0x05 | 0x200 << 32, 1)
    with_ssid = make_command("CFGI_CD", sid=0x10, ssid=3)
    assert check_vsmmu_invalidation(with_ssid, CTX).errno == errno.EIO
    assert check_vsmmu_invalidation(with_ssid, VsmmuContext(ssid_bits=8, vsid_to_sid={0x10: 1})).ok
    assert check_vsmmu_invalidation(make_command("CFGI_CD_ALL", sid=0x10), CTX).issued == (
        0x06 | 0x200 << 32,
        0,
    )
    assert check_vsmmu_invalidation((0x06 | 0x10 << 32, 1), CTX).errno == errno.EIO  # Leaf
    secure = make_command("CFGI_CD", sid=0x10, ssec=True)
    assert check_vsmmu_invalidation(secure, CTX).errno == errno.EIO
    assert check_vsmmu_invalidation(make_command("CFGI_CD", sid=0x99), CTX).errno == errno.EIO


@pytest.mark.parametrize(
    "command",
    [
        make_command("CFGI_STE", sid=0x10),
        make_command("CFGI_ALL"),
        make_command("CFGI_STE_RANGE", sid=0, range=4),
        make_command("CMD_SYNC"),
        make_command("TLBI_S12_VMALL", vmid=7),
        make_command("TLBI_S2_IPA", vmid=7, address=0x1000),
        make_command("TLBI_EL2_ALL"),
        make_command("PRI_RESP", sid=0x10),
        make_command("RESUME", sid=0x10),
        make_command("PREFETCH_CONFIG", sid=0x10),
    ],
)
def test_opcodes_the_vsmmu_refuses(command: Command) -> None:
    verdict = check_vsmmu_invalidation(command, CTX)
    assert verdict.errno == errno.EIO and verdict.issued is None
    assert "not accepted" in verdict.reason


def test_command_forms_agree() -> None:
    command = make_command("TLBI_NH_ASID", asid=3)
    as_bytes = check_vsmmu_invalidation(command.encode(), CTX)
    assert as_bytes == check_vsmmu_invalidation(command, CTX)
    assert as_bytes == check_vsmmu_invalidation(command.words(), CTX)
    with pytest.raises(DecodeError):
        check_vsmmu_invalidation(bytes(8), CTX)


def test_context_from_predicted_qemu_registers() -> None:
    ctx = VsmmuContext.from_id_regs(predict_id_regs({"stage": "nested"}), vmid=3)
    assert (ctx.asid_bits, ctx.range_inv, ctx.ds, ctx.ats, ctx.ssid_bits) == (
        16,
        True,
        False,
        False,
        0,
    )
    host = decode_id_regs([0x0D44141B, 0x02730010 | 20 << 6, 0, 0x1414, 0, 0x74 | 1 << 7])
    ctx = VsmmuContext.from_id_regs(host, vsid_to_sid={1: 2})
    assert ctx.ats and ctx.ssid_bits == 20 and ctx.ds and ctx.vsid_to_sid == {1: 2}


def test_array_stops_at_first_refusal_without_issuing_pending_batch() -> None:
    good = make_command("TLBI_NH_ASID", asid=1)
    bad = make_command("CFGI_STE", sid=1)
    verdict = check_vsmmu_invalidation_array([good, good, good, bad, good], CTX)
    assert (verdict.errno, verdict.entry_num, verdict.issued) == (errno.EIO, 3, ())
    assert len(verdict.verdicts) == 4


def test_array_issues_in_batches_of_63() -> None:
    good = make_command("TLBI_NH_ASID", asid=1)
    done = check_vsmmu_invalidation_array([good] * 100, CTX)
    assert (done.errno, done.entry_num, len(done.issued)) == (0, 100, 100)
    failed = check_vsmmu_invalidation_array([good] * 70 + [make_command("CMD_SYNC")], CTX)
    assert (failed.errno, failed.entry_num, len(failed.issued)) == (errno.EIO, 70, 63)
    assert check_vsmmu_invalidation_array([], CTX).entry_num == 0


def sparse_word(low: int) -> st.SearchStrategy[int]:
    """A 64-bit word with up to three random bits at or above bit `low`."""
    return st.sets(st.integers(low, 63), max_size=3).map(lambda bits: sum(1 << b for b in bits))


@settings(max_examples=200, deadline=None)
@given(
    opcode=st.sampled_from(sorted(OPCODES.values())),
    word0=sparse_word(8),
    word1=sparse_word(0),
)
def test_only_the_eight_forwarded_opcodes_can_pass(opcode: int, word0: int, word1: int) -> None:
    ctx = VsmmuContext(ats=True, ds=True, ssid_bits=20, vmid=5, vsid_to_sid={0: 9})
    verdict = check_vsmmu_invalidation((opcode | word0, word1), ctx)
    forwarded = (0x30, 0x12, 0x13, 0x10, 0x11, 0x40, 0x05, 0x06)
    if opcode not in forwarded:
        assert verdict.errno == errno.EIO
    if verdict.ok:
        assert verdict.issued is not None
        if opcode in (0x10, 0x11, 0x12, 0x13, 0x30):
            assert verdict.issued[0] & genmask(47, 32) == 5 << 32
        else:
            assert verdict.issued[0] >> 32 == 9
