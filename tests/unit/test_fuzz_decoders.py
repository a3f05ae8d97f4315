"""Random input into every public decoder of harness.vtd, harness.smmuv3 and harness.rings.

The contract (``harness.errors``): a decoder given bad input raises ``DecodeError`` and
nothing else; an encoder given an unencodable value raises ``EncodeError``; a ring checker
never raises and reports what is wrong in its verdict.  Inputs are random bytes of the
right and wrong sizes, word lists with out-of-range words, and integers of any sign and
width.  ``max_examples`` is bounded so that the whole file runs in seconds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import rings, smmuv3, vtd
from harness.errors import DecodeError, EncodeError
from harness.rings.verdict import RingVerdict

pytestmark = pytest.mark.tier0

#: examples per test; ``VIOMMU_FUZZ_EXAMPLES=5000`` for a deeper run than CI's
EXAMPLES = settings(
    max_examples=int(os.environ.get("VIOMMU_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)

#: any int a caller might pass: register-sized, negative, wider than 64 bits
ints = st.one_of(
    st.integers(min_value=0, max_value=(1 << 64) - 1),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.sampled_from([0, 1, -1, (1 << 32) - 1, 1 << 32, (1 << 64) - 1, 1 << 64]),
)


def blobs(size: int) -> st.SearchStrategy[bytes]:
    """Bytes of exactly ``size`` (the interesting case) or of any length up to 2 x size."""
    return st.one_of(st.binary(min_size=size, max_size=size), st.binary(max_size=2 * size))


def words(size: int) -> st.SearchStrategy[Any]:
    """``WordsLike``: bytes, or a list of 64-bit words (some out of range or negative)."""
    count = size // 8
    return st.one_of(
        blobs(size),
        st.lists(st.integers(min_value=0, max_value=(1 << 64) - 1), min_size=count,
                 max_size=count),
        st.lists(ints, max_size=2 * count),
    )  # fmt: skip


def expect(error: type[Exception], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; only ``error`` may escape (anything else fails the test, named)."""
    try:
        return fn(*args, **kwargs)
    except error:
        return None
    except Exception as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        raise AssertionError(
            f"{name} raised {type(exc).__name__}: {exc} (only {error.__name__} is allowed)"
        ) from exc


# -- harness.vtd ---------------------------------------------------------------------------

VTD_BYTES = {
    "RootEntry": (vtd.RootEntry.decode, 16),
    "ContextEntry": (vtd.ContextEntry.decode, 16),
    "ScalableRootEntry": (vtd.ScalableRootEntry.decode, 16),
    "ScalableContextEntry": (vtd.ScalableContextEntry.decode, 32),
    "PasidDirEntry": (vtd.PasidDirEntry.decode, 8),
    "PasidEntry": (vtd.PasidEntry.decode, 64),
    "FaultRecord": (vtd.FaultRecord.decode, 16),
    "PageRequest": (vtd.PageRequest.decode, 32),
    "decode_invalidation": (vtd.decode_invalidation, 32),
    "InvalidationDescriptor": (vtd.InvalidationDescriptor.decode, 32),
    "IotlbInvalidation": (vtd.IotlbInvalidation.decode, 16),
    "ContextCacheInvalidation": (vtd.ContextCacheInvalidation.decode, 16),
    "PasidIotlbInvalidation": (vtd.PasidIotlbInvalidation.decode, 16),
    "PasidCacheInvalidation": (vtd.PasidCacheInvalidation.decode, 16),
    "DeviceTlbInvalidation": (vtd.DeviceTlbInvalidation.decode, 16),
    "PasidDeviceTlbInvalidation": (vtd.PasidDeviceTlbInvalidation.decode, 16),
    "IecInvalidation": (vtd.IecInvalidation.decode, 16),
    "InvalidationWait": (vtd.InvalidationWait.decode, 16),
}


@pytest.mark.parametrize("name", sorted(VTD_BYTES))
def test_vtd_byte_decoders(name: str) -> None:
    decode, size = VTD_BYTES[name]

    @EXAMPLES
    @given(data=blobs(size))
    def run(data: bytes) -> None:
        expect(DecodeError, decode, data)
        expect(DecodeError, decode, bytearray(data))
        expect(DecodeError, decode, memoryview(data))

    run()


@pytest.mark.parametrize("register", [vtd.Cap, vtd.Ecap], ids=["Cap", "Ecap"])
@EXAMPLES
@given(value=ints, strict=st.booleans())
def test_vtd_register_decoders(register: Any, value: int, strict: bool) -> None:
    decoded = expect(DecodeError, register.decode, value, strict=strict)
    if decoded is not None:
        expect(DecodeError, decoded.check)


@EXAMPLES
@given(reason=ints, pasid=ints)
def test_vtd_int_lookups(reason: int, pasid: int) -> None:
    expect(DecodeError, vtd.fault_reason_name, reason)
    expect(DecodeError, vtd.fault_kind, reason)
    expect(EncodeError, vtd.pasid_index, pasid)


DMAR_LINES = [
    "DMAR: [DMA Write PASID 0x0] Request device [0000:00:03.0] fault addr 0x8000000"
    " [fault reason 0x71] SM: Present bit in first-level paging entry is clear",
    "DMAR: [DMA Read NO_PASID] Request device [00:03.0] fault addr 0x1000 [fault reason 0x05]"
    " PTE Write access is not set",
    "DMAR: [INTR-REMAP] Request device [f0:1f.0] fault index 0x0 [fault reason 0x22]",
    "DMAR: Invalid page request: 0x123",
]


def mutated_lines(samples: list[str]) -> st.SearchStrategy[str]:
    """Real log lines with random edits (so parsers get past their first regex)."""

    def mutate(line: str, position: int, junk: str, cut: bool) -> str:
        position %= len(line) + 1
        return line[:position] + junk + ("" if cut else line[position:])

    return st.builds(mutate, st.sampled_from(samples), st.integers(0, 300),
                     st.text(max_size=12), st.booleans())  # fmt: skip


@EXAMPLES
@given(lines=st.lists(st.one_of(st.text(max_size=200), mutated_lines(DMAR_LINES)), max_size=6),
       strict=st.booleans())  # fmt: skip
def test_vtd_dmesg_parsers(lines: list[str], strict: bool) -> None:
    text = "\n".join(f"[{i:12.6f}] {line}" for i, line in enumerate(lines))
    expect(DecodeError, vtd.dmar_faults, text)
    expect(DecodeError, vtd.parse_dmesg_faults, text, strict=strict)


@EXAMPLES
@given(sid=ints, address=ints, order=ints, pasid=ints, reason=ints, write=st.booleans())
def test_vtd_encoders(sid: int, address: int, order: int, pasid: int, reason: int,
                      write: bool) -> None:  # fmt: skip
    expect(EncodeError, vtd.DeviceTlbInvalidation.for_range, sid, address, order)
    expect(EncodeError, vtd.PasidDeviceTlbInvalidation.for_range, sid, pasid, address, order)
    expect(EncodeError, vtd.FaultRecord.dma, sid, address, reason, is_write=write, pasid=pasid)
    entry = expect(EncodeError, vtd.PasidEntry.first_stage, address, sid, levels=order % 7)
    if entry is not None:
        expect(EncodeError, entry.encode)


# -- harness.smmuv3 ------------------------------------------------------------------------

SMMU_WORDS = {
    "decode_ste": (smmuv3.decode_ste, 64),
    "decode_cd": (smmuv3.decode_cd, 64),
    "decode_l1cd": (smmuv3.decode_l1cd, 8),
    "decode_command": (smmuv3.decode_command, 16),
    "decode_event": (smmuv3.decode_event, 32),
}


@pytest.mark.parametrize("name", sorted(SMMU_WORDS))
def test_smmuv3_word_decoders(name: str) -> None:
    decode, size = SMMU_WORDS[name]

    @EXAMPLES
    @given(data=words(size))
    def run(data: Any) -> None:
        decoded = expect(DecodeError, decode, data)
        if decoded is not None and name == "decode_ste":
            expect(EncodeError, smmuv3.encode_ste, decoded)
        if decoded is not None and name == "decode_cd":
            expect(EncodeError, smmuv3.encode_cd, decoded)
        if decoded is not None and name == "decode_command":
            expect(EncodeError, smmuv3.encode_command, decoded)

    run()


@EXAMPLES
@given(data=words(32))
def test_smmuv3_event_decoder_lenient(data: Any) -> None:
    expect(DecodeError, smmuv3.decode_event, data, strict=False)


REGISTER_DECODERS = [
    smmuv3.decode_idr0, smmuv3.decode_idr1, smmuv3.decode_idr2, smmuv3.decode_idr3,
    smmuv3.decode_idr4, smmuv3.decode_idr5, smmuv3.decode_iidr, smmuv3.decode_aidr,
]  # fmt: skip


@EXAMPLES
@given(values=st.lists(ints, min_size=8, max_size=8))
def test_smmuv3_register_decoders(values: list[int]) -> None:
    for decode, value in zip(REGISTER_DECODERS, values, strict=True):
        expect(DecodeError, decode, value)
    expect(DecodeError, smmuv3.decode_id_regs, values[:6], values[6], values[7])
    keyed = dict(zip(("idr0", "idr1", "idr2", "idr3", "idr4", "idr5"), values, strict=False))
    expect(DecodeError, smmuv3.decode_id_regs, keyed)
    expect(DecodeError, smmuv3.decode_id_regs, values[: values[0] % 7])


@EXAMPLES
@given(data=blobs(40))
def test_smmuv3_hw_info_decoder(data: bytes) -> None:
    info = expect(DecodeError, smmuv3.decode_hw_info, data)
    if info is not None:
        assert smmuv3.decode_hw_info(expect(EncodeError, smmuv3.encode_hw_info, info)) == info


@EXAMPLES
@given(data=words(64), flags=ints, commands=st.lists(words(16), max_size=4))
def test_smmuv3_vsmmu_checkers(data: Any, flags: int, commands: list[Any]) -> None:
    expect(DecodeError, smmuv3.validate_nested_ste, data, flags=flags)
    for command in commands:
        expect(DecodeError, smmuv3.check_vsmmu_invalidation, command)
    expect(DecodeError, smmuv3.check_vsmmu_invalidation_array, commands)


@EXAMPLES
@given(memory=st.dictionaries(st.integers(0, 1 << 16).map(lambda a: a * 8), st.binary(
    min_size=8, max_size=64), max_size=8), base=ints, fmt=ints, cdmax=ints, ssid=ints)  # fmt: skip
def test_smmuv3_cd_table_walk(
    memory: dict[int, bytes], base: int, fmt: int, cdmax: int, ssid: int
) -> None:
    sparse = smmuv3.SparseMemory()
    for address, data in memory.items():
        sparse.write(address, data)
    expect(DecodeError, smmuv3.lookup_cd, sparse, base=base, s1fmt=fmt, s1cdmax=cdmax, ssid=ssid)


SMMU_EVENT_LINES = [
    "arm-smmu-v3 arm-smmu-v3.0.auto: event 0x10 received:",
    "arm-smmu-v3 arm-smmu-v3.0.auto: \t0x0000000800000010",
    "arm-smmu-v3 arm-smmu-v3.0.auto: event: F_TRANSLATION client: 0000:00:02.0 sid: 0x8"
    " ssid: 0x0 iova: 0x8000000 ipa: 0x0",
    'arm-smmu-v3 arm-smmu-v3.0.auto: unpriv data write s1 "Input address caused fault"',
]


@EXAMPLES
@given(lines=st.lists(st.one_of(st.text(max_size=120), mutated_lines(SMMU_EVENT_LINES)),
                      max_size=8))  # fmt: skip
def test_smmuv3_dmesg_parser(lines: list[str]) -> None:
    expect(DecodeError, smmuv3.parse_dmesg_events, lines)
    expect(DecodeError, smmuv3.parse_dmesg_events, "\n".join(lines))


@EXAMPLES
@given(event=st.one_of(ints, st.text(max_size=20), st.sampled_from(sorted(smmuv3.EVENT_IDS))),
       sid=ints, ssid=ints, address=ints, write=st.booleans())  # fmt: skip
def test_smmuv3_encoders(event: Any, sid: int, ssid: int, address: int, write: bool) -> None:
    expect(EncodeError, smmuv3.encode_event, event, sid=sid, ssid=ssid, address=address,
           is_write=write)  # fmt: skip
    expect(EncodeError, smmuv3.s2_ste, sid, address, t0sz=ssid % 64)
    expect(EncodeError, smmuv3.make_s1_cd, address, sid, t0sz=ssid)
    expect(EncodeError, smmuv3.build_nested_ste, "s1", cd_table=address, s1cdmax=ssid)


@EXAMPLES
@given(name=st.one_of(st.sampled_from(sorted(smmuv3.OPCODES)), st.text(max_size=16)),
       values=st.dictionaries(st.sampled_from(["sid", "ssid", "asid", "vmid", "address",
                                               "leaf", "num", "scale", "ssv", "size"]),
                              ints, max_size=4))  # fmt: skip
def test_smmuv3_make_command(name: str, values: dict[str, int]) -> None:
    command = expect(EncodeError, smmuv3.make_command, name, **values)
    if command is not None:
        expect(EncodeError, smmuv3.encode_command, command)


# -- harness.rings -------------------------------------------------------------------------


def verdict_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """A checker returns a verdict and never raises, whatever it is fed."""
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:
        raise AssertionError(
            f"{fn.__qualname__} raised {type(exc).__name__}: {exc} (checkers never raise)"
        ) from exc
    assert isinstance(result, RingVerdict)


@EXAMPLES
@given(data=st.binary(max_size=200), record_size=st.integers(-8, 80))
def test_rings_veventq(data: bytes, record_size: int) -> None:
    expect(DecodeError, rings.parse_veventq, data, record_size)
    verdict_of(rings.check_veventq, data)
    verdict_of(rings.check_veventq, data, strict=False, first_sequence=record_size)


@EXAMPLES
@given(faults=st.binary(max_size=200), responses=st.binary(max_size=80))
def test_rings_fault_queue(faults: bytes, responses: bytes) -> None:
    verdict_of(rings.check_fault_queue, faults, responses)


@EXAMPLES
@given(queue=st.binary(max_size=300), log2size=st.integers(-2, 24), prod=ints, cons=ints,
       strict=st.booleans())  # fmt: skip
def test_rings_smmu_evtq(queue: bytes, log2size: int, prod: int, cons: int, strict: bool) -> None:
    verdict_of(rings.check_smmu_evtq, queue, log2size, prod, cons, strict=strict)


@EXAMPLES
@given(frcd=st.binary(max_size=300), fsts=ints, queue=st.binary(max_size=300), head=ints,
       tail=ints, prs=ints)  # fmt: skip
def test_rings_vtd(frcd: bytes, fsts: int, queue: bytes, head: int, tail: int, prs: int) -> None:
    verdict_of(rings.check_fault_recording, frcd, fsts)
    verdict_of(rings.check_page_request_queue, queue, head, tail, prs)


@EXAMPLES
@given(fault_region=st.binary(max_size=400), response_region=st.binary(max_size=400))
def test_rings_legacy_regions(fault_region: bytes, response_region: bytes) -> None:
    verdict_of(rings.check_fault_region, fault_region)
    verdict_of(rings.check_legacy_rings, fault_region, response_region)


def _legacy_region(header: list[int]) -> bytes:
    """A region whose header words are chosen (so checks get past the header), rest zero."""
    head = b"".join((w & 0xFFFFFFFF).to_bytes(4, "little") for w in header)
    return head + bytes(4096 + 64 * 8)


@EXAMPLES
@given(header=st.lists(ints, min_size=4, max_size=8))
def test_rings_legacy_headers(header: list[int]) -> None:
    verdict_of(rings.check_fault_region, _legacy_region(header))
