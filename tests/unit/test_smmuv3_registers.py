"""SMMUv3 ID registers: field positions vs arm-smmu-v3.h, round trips, errors, QEMU prediction."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import ConfigError, DecodeError, EncodeError
from harness.smmuv3 import (
    Aidr,
    Idr0,
    Idr1,
    Idr3,
    Idr5,
    Iidr,
    decode_aidr,
    decode_hw_info,
    decode_id_regs,
    decode_idr0,
    decode_idr1,
    decode_idr2,
    decode_idr3,
    decode_idr4,
    decode_idr5,
    decode_iidr,
    encode_hw_info,
    predict_id_regs,
    predict_idrs,
)
from harness.smmuv3.registers import SmmuHwInfo

pytestmark = pytest.mark.tier0


def genmask(msb: int, lsb: int) -> int:
    return ((1 << (msb - lsb + 1)) - 1) << lsb


# (register class, field, mask from drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.h)
KERNEL_MASKS = [
    (Idr0, "st_level", genmask(28, 27)),
    (Idr0, "stall_model", genmask(25, 24)),
    (Idr0, "ttendian", genmask(22, 21)),
    (Idr0, "cd2l", 1 << 19),
    (Idr0, "vmid16", 1 << 18),
    (Idr0, "pri", 1 << 16),
    (Idr0, "sev", 1 << 14),
    (Idr0, "msi", 1 << 13),
    (Idr0, "asid16", 1 << 12),
    (Idr0, "ats", 1 << 10),
    (Idr0, "hyp", 1 << 9),
    (Idr0, "httu", genmask(7, 6)),
    (Idr0, "cohacc", 1 << 4),
    (Idr0, "ttf", genmask(3, 2)),
    (Idr0, "s1p", 1 << 1),
    (Idr0, "s2p", 1 << 0),
    (Idr1, "tables_preset", 1 << 30),
    (Idr1, "queues_preset", 1 << 29),
    (Idr1, "rel", 1 << 28),
    (Idr1, "attr_types_ovr", 1 << 27),
    (Idr1, "cmdqs", genmask(25, 21)),
    (Idr1, "eventqs", genmask(20, 16)),
    (Idr1, "priqs", genmask(15, 11)),
    (Idr1, "ssidsize", genmask(10, 6)),
    (Idr1, "sidsize", genmask(5, 0)),
    (Idr3, "fwb", 1 << 8),
    (Idr3, "ril", 1 << 10),
    (Idr3, "bbml", genmask(12, 11)),
    (Idr5, "stall_max", genmask(31, 16)),
    (Idr5, "ds", 1 << 7),
    (Idr5, "gran64k", 1 << 6),
    (Idr5, "gran16k", 1 << 5),
    (Idr5, "gran4k", 1 << 4),
    (Idr5, "oas", genmask(2, 0)),
    (Idr5, "vax", genmask(11, 10)),
    (Iidr, "product_id", genmask(31, 20)),
    (Iidr, "variant", genmask(19, 16)),
    (Iidr, "revision", genmask(15, 12)),
    (Iidr, "implementer", genmask(11, 0)),
]


@pytest.mark.parametrize(("cls", "name", "kernel_mask"), KERNEL_MASKS)
def test_field_position_matches_kernel_mask(cls: Any, name: str, kernel_mask: int) -> None:
    field = cls.LAYOUT.by_name[name]
    value: int | bool = True if field.is_flag else (1 << field.width) - 1
    assert cls(**{name: value}).encode() == kernel_mask


@pytest.mark.parametrize("cls", [Idr0, Idr1, Idr3, Idr5, Iidr, Aidr])
def test_dataclass_fields_are_the_layout_fields(cls: Any) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    assert names == [f.name for f in cls.LAYOUT.fields]


def test_qemu_nested_idr3_measured_value_decodes() -> None:
    idr3 = decode_idr3(0x1414)
    assert (idr3.had, idr3.xnx, idr3.ril, idr3.bbml) == (True, True, True, 2)
    assert not idr3.fwb and not idr3.stt
    assert idr3.encode() == 0x1414


def test_idr0_known_value() -> None:
    idr0 = decode_idr0(0x0D44101B)
    assert idr0.s1p and idr0.s2p and idr0.cohacc and idr0.asid16 and idr0.vmid16
    assert (idr0.ttf, idr0.ttendian, idr0.stall_model, idr0.st_level) == (2, 2, 1, 1)
    assert idr0.term_model and not idr0.ats and not idr0.pri
    assert (idr0.asid_bits, idr0.vmid_bits) == (16, 16)


def test_idr5_oas_bits_and_aidr_version() -> None:
    assert decode_idr5(0x74).oas_bits == 44
    assert decode_idr5(0x75).oas_bits == 48
    assert decode_aidr(0x1).version == "3.1"


# Field values limited to the encodings the architecture defines.
VALID_FIELDS: dict[type, dict[str, st.SearchStrategy[int]]] = {
    Idr0: {
        "ttf": st.integers(1, 3),
        "ttendian": st.sampled_from([0, 2, 3]),
        "stall_model": st.integers(0, 2),
        "st_level": st.integers(0, 1),
    },
    Idr1: {
        "sidsize": st.integers(0, 32),
        "ssidsize": st.integers(0, 20),
        "cmdqs": st.integers(0, 19),
        "eventqs": st.integers(0, 19),
    },
    Idr3: {"bbml": st.integers(0, 2)},
    Idr5: {"vax": st.integers(0, 2)},
    Iidr: {},
    Aidr: {"arch_major_rev": st.just(0)},
}
DECODERS = {
    Idr0: decode_idr0,
    Idr1: decode_idr1,
    Idr3: decode_idr3,
    Idr5: decode_idr5,
    Iidr: decode_iidr,
    Aidr: decode_aidr,
}


def register_values(cls: Any) -> st.SearchStrategy[dict[str, int | bool]]:
    """Every field of `cls` drawn within its width (or its valid encodings)."""
    overrides = VALID_FIELDS[cls]
    return st.fixed_dictionaries(
        {
            f.name: overrides[f.name]
            if f.name in overrides
            else (st.booleans() if f.is_flag else st.integers(0, (1 << f.width) - 1))
            for f in cls.LAYOUT.fields
        }
    )


@pytest.mark.parametrize("cls", list(DECODERS))
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_register_round_trip(cls: Any, data: st.DataObject) -> None:
    reg = cls(**data.draw(register_values(cls)))
    value = reg.encode()
    assert value & cls.LAYOUT.reserved[0] == 0
    assert DECODERS[cls](value) == reg


@settings(max_examples=50, deadline=None)
@given(value=st.integers(0, 0xFFFF_FFFF))
def test_idr2_idr4_round_trip(value: int) -> None:
    assert decode_idr4(value).encode() == value
    masked = value & 0x3FF
    assert decode_idr2(masked).encode() == masked


@pytest.mark.parametrize(
    ("decode", "value", "field"),
    [
        (decode_idr0, 0x0D44101B | 1 << 29, "SMMU_IDR0.RES0[29]"),
        (decode_idr0, 0x0D44101B | 1 << 31, "SMMU_IDR0.RES0[31]"),
        (decode_idr0, 0x0D44101B & ~0xC, "SMMU_IDR0.TTF"),
        (decode_idr0, (0x0D44101B & ~(3 << 21)) | 1 << 21, "SMMU_IDR0.TTENDIAN"),
        (decode_idr0, 0x0D44101B | 3 << 24, "SMMU_IDR0.STALL_MODEL"),
        (decode_idr0, 0x0D44101B | 3 << 27, "SMMU_IDR0.ST_LEVEL"),
        (decode_idr1, 33, "SMMU_IDR1.SIDSIZE"),
        (decode_idr1, 21 << 6, "SMMU_IDR1.SSIDSIZE"),
        (decode_idr1, 20 << 21, "SMMU_IDR1.CMDQS"),
        (decode_idr1, 20 << 16, "SMMU_IDR1.EVENTQS"),
        (decode_idr2, 1 << 10, "SMMU_IDR2.RES0[31:10]"),
        (decode_idr3, 1 << 6, "SMMU_IDR3.RES0[6]"),
        (decode_idr3, 1 << 24, "SMMU_IDR3.RES0[31:24]"),
        (decode_idr3, 3 << 11, "SMMU_IDR3.BBML"),
        (decode_idr5, 1 << 3, "SMMU_IDR5.RES0[3]"),
        (decode_idr5, 1 << 12, "SMMU_IDR5.RES0[15:12]"),
        (decode_idr5, 3 << 10, "SMMU_IDR5.VAX"),
        (decode_aidr, 1 << 8, "SMMU_AIDR.RES0[31:8]"),
        (decode_aidr, 0x11, "SMMU_AIDR.ArchMajorRev"),
        (decode_iidr, -1, "SMMU_IIDR"),
        (decode_iidr, 1 << 32, "SMMU_IIDR"),
    ],
)
def test_register_decode_errors_name_the_field(
    decode: Callable[[int], object], value: int, field: str
) -> None:
    with pytest.raises(DecodeError) as info:
        decode(value)
    assert info.value.field == field


def test_register_encode_rejects_oversized_field() -> None:
    with pytest.raises(EncodeError) as info:
        Idr1(sidsize=64).encode()
    assert info.value.field == "SMMU_IDR1.SIDSIZE"


def test_decode_id_regs_sequence_and_mapping_agree() -> None:
    values = predict_idrs({"stage": "nested"})
    from_map = decode_id_regs(values)
    from_seq = decode_id_regs([values[f"IDR{i}"] for i in range(6)], values["IIDR"], values["AIDR"])
    assert from_map == from_seq
    assert from_map.encode() == values


def test_decode_id_regs_errors() -> None:
    with pytest.raises(DecodeError, match="need 6"):
        decode_id_regs([0] * 5)
    with pytest.raises(DecodeError) as info:
        decode_id_regs({"IDR0": 0x0D44101B})
    assert info.value.field == "SMMU_IDR1"
    with pytest.raises(DecodeError) as info:
        decode_id_regs([0x0D44101B | 1 << 16, 20 << 11, 0, 0, 0, 0])
    assert info.value.field == "SMMU_IDR1.PRIQS"


def test_hw_info_round_trip_and_errata_flag() -> None:
    regs = predict_id_regs({"stage": "nested"})
    data = encode_hw_info(SmmuHwInfo(flags=1, regs=regs))
    assert len(data) == 40
    assert struct.unpack_from("<I", data, 8 + 3 * 4)[0] == 0x1414
    info = decode_hw_info(data)
    assert info.regs == regs and info.errata_repeat_tlbi_cfgi


def test_hw_info_errors() -> None:
    good = encode_hw_info(SmmuHwInfo(flags=0, regs=predict_id_regs()))
    with pytest.raises(DecodeError, match="need 40 bytes"):
        decode_hw_info(good[:36])
    with pytest.raises(DecodeError) as info:
        decode_hw_info(good[:4] + b"\x01\x00\x00\x00" + good[8:])
    assert info.value.field == "iommu_hw_info_arm_smmuv3.__reserved"


# Hand-computed from smmuv3_init_regs(): the same bits spelled with arm-smmu-v3.h masks.
QEMU_IDR0_COMMON = (
    1 << 27  # ST_LEVEL = 2-level
    | 1 << 26  # TERM_MODEL
    | 1 << 24  # STALL_MODEL = no stall
    | 2 << 21  # TTENDIAN = little
    | 1 << 18  # VMID16
    | 1 << 12  # ASID16
    | 1 << 4  # COHACC
    | 2 << 2  # TTF = AArch64
)


@pytest.mark.parametrize(
    ("stage", "idr0", "idr3"),
    [
        ("1", QEMU_IDR0_COMMON | 1 << 1, 0x1404),
        ("2", QEMU_IDR0_COMMON | 1 << 0, 0x1414),
        ("nested", QEMU_IDR0_COMMON | 1 << 1 | 1 << 0, 0x1414),
    ],
)
def test_predict_qemu_stages(stage: str, idr0: int, idr3: int) -> None:
    regs = predict_idrs({"stage": stage})
    assert regs == {
        "IDR0": idr0,
        "IDR1": 19 << 21 | 19 << 16 | 16,
        "IDR2": 0,
        "IDR3": idr3,
        "IDR4": 0,
        "IDR5": 4 | 1 << 4 | 1 << 5 | 1 << 6,
        "IIDR": 0,
        "AIDR": 1,
    }
    decode_id_regs(regs)


def test_predict_default_is_stage1_and_int_stage_accepted() -> None:
    assert predict_idrs() == predict_idrs({"stage": "1"})
    assert predict_idrs({"iommu": "arm-smmuv3", "stage": "nested"}) == predict_idrs(
        {"iommu": "smmuv3", "stage": "nested"}
    )
    assert predict_idrs({"stage": 2}) == predict_idrs({"stage": "2"})


def test_predict_accel_properties() -> None:
    regs = predict_id_regs({"accel": True, "ril": False, "ats": True, "oas": 48, "pasid": True})
    assert regs.idr0.ats and not regs.idr3.ril
    assert regs.idr5.oas_bits == 48 and regs.idr1.ssidsize == 16
    assert predict_id_regs({"accel": True, "ssidsize": 20}).idr1.ssidsize == 20
    plain = predict_id_regs({"accel": True})
    assert plain == predict_id_regs({"stage": "1"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stage": "3"}, "stage='3'"),
        ({"iommu": "intel-iommu"}, "iommu='intel-iommu'"),
        ({"colour": "blue"}, "'colour'"),
        ({"accel": "yes"}, "accel='yes'"),
        ({"oas": True}, "oas=True"),
        ({"ril": False}, "ril can only be disabled if accel=on"),
        ({"ats": True}, "ats can only be enabled if accel=on"),
        ({"oas": 48}, "44 bits if accel=off"),
        ({"pasid": True}, "pasid can only be enabled if accel=on"),
        ({"ssidsize": 8}, "pasid can only be enabled if accel=on"),
        ({"accel": True, "stage": "nested"}, "only stage1"),
        ({"accel": True, "oas": 52}, "44 or 48"),
        ({"accel": True, "pasid": True, "ssidsize": 4}, "either pasid or ssidsize"),
        ({"accel": True, "ssidsize": 21}, "outside 0..20"),
    ],
)
def test_predict_rejects_what_qemu_rejects(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        predict_idrs(options)
