"""Predicting CAP/ECAP from intel-iommu options, against registers measured on QEMU 10.0.2.

Every vector below was read from a paused QEMU 10.0.2 (``-M q35 -S``, no guest) with the
HMP command ``xp /3gx 0xfed90000`` (VER, CAP, ECAP of the DMAR unit), TCG unless the row
says ``accel=kvm``.
"""

from __future__ import annotations

import pytest

from harness.errors import ConfigError
from harness.vtd import Cap, Ecap, predict, predict_registers, resolve_config

pytestmark = pytest.mark.tier0

MEASURED: list[tuple[str, int, int]] = [
    # The two vectors from the brief (guest-visible, TCG).
    ("intremap=on,x-scalable-mode=on,x-flts=on,caching-mode=on,aw-bits=48",
     0x01D2008C222F0686, 0x0000880000F00F4A),
    ("intremap=on,x-scalable-mode=on,caching-mode=on,aw-bits=48",
     0x00D2008C222F0686, 0x0000480080F00F4A),
    # Further option sets read the same way.
    ("", 0x00D2008C222F0606, 0x0000000000F00F4A),
    ("version=1", 0x00D2008C222F0606, 0x0000000000F00F4A),
    ("stale-tm=on", 0x00D2008C222F0606, 0x0000000000F00F4A),
    ("aw-bits=39", 0x00D2008C22260206, 0x0000000000F00F4A),
    ("dma-translation=off", 0x00D2008C222F0006, 0x0000000000F00F4A),
    ("device-iotlb=on", 0x00D2008C222F0606, 0x0000000000F00F4E),
    ("snoop-control=on", 0x00D2008C222F0606, 0x0000000000F00FCA),
    ("dma-drain=off", 0x0012008C222F0606, 0x0000000000F00F4A),
    ("pt=off", 0x00D2008C222F0606, 0x0000000000F00F0A),
    ("intremap=off", 0x00D2008C222F0606, 0x0000000000000F42),
    ("intremap=on,eim=on", 0x00D2008C222F0606, 0x0000000000F00F5A),
    ("intremap=on,x-buggy-eim=on", 0x00D2008C222F0606, 0x0000000000F00F5A),
    ("x-scalable-mode=on,x-flts=on,fs1gp=off", 0x00D2008C222F0606, 0x0000880000F00F4A),
    ("x-scalable-mode=on,aw-bits=39", 0x00D2008C22260206, 0x0000480080F00F4A),
    ("x-scalable-mode=on,x-pasid-mode=on", 0x00D2008C222F0606, 0x0000490080F00F4A),
    ("x-scalable-mode=on,x-flts=on,x-pasid-mode=on", 0x01D2008C222F0606, 0x0000890000F00F4A),
    ("caching-mode=on,x-scalable-mode=on,x-flts=on,snoop-control=on,device-iotlb=on,pt=off",
     0x01D2008C222F0686, 0x0000880000F00F8E),
    ("accel=kvm", 0x00D2008C222F0606, 0x0000000000000F42),
    ("accel=kvm,intremap=off", 0x00D2008C222F0606, 0x0000000000000F42),
    ("accel=kvm,kernel-irqchip=split", 0x00D2008C222F0606, 0x0000000000F00F5A),
    ("accel=kvm,kernel-irqchip=split,intremap=on", 0x00D2008C222F0606, 0x0000000000F00F5A),
    ("accel=kvm,kernel-irqchip=split,intremap=on,eim=off",
     0x00D2008C222F0606, 0x0000000000F00F4A),
    ("accel=kvm,kernel-irqchip=split,intremap=off", 0x00D2008C222F0606, 0x0000000000000F42),
]  # fmt: skip

# QEMU 10.0.2 refused these; the option each error must name.
REFUSED: list[tuple[str, str]] = [
    ("x-flts=on", "x-flts"),
    ("x-pasid-mode=on", "x-pasid-mode"),
    ("eim=on,intremap=off", "eim"),
    ("x-scalable-mode=on,dma-drain=off", "dma-drain"),
    ("x-scalable-mode=on,x-pasid-mode=on,device-iotlb=on", "device-iotlb"),
    ("aw-bits=57", "aw-bits"),
    ("aw-bits=52", "aw-bits"),
    ("x-scalable-mode=on,x-flts=on,aw-bits=39", "aw-bits"),
    ("accel=kvm,intremap=on", "intremap"),
    ("accel=kvm,intremap=on,eim=off", "intremap"),
]


def options(text: str) -> dict[str, object]:
    """``a=b,c=d`` as a dict, the way they appear on QEMU's command line."""
    out: dict[str, object] = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=", 1)
        out[key] = value
    return out


@pytest.mark.parametrize(
    ("text", "cap", "ecap"), MEASURED, ids=[m[0] or "defaults" for m in MEASURED]
)
def test_prediction_matches_measured_registers(text: str, cap: int, ecap: int) -> None:
    got_cap, got_ecap = predict_registers(options(text))
    assert (hex(got_cap.encode()), hex(got_ecap.encode())) == (hex(cap), hex(ecap))


@pytest.mark.parametrize(("text", "option"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_combinations_name_the_option(text: str, option: str) -> None:
    with pytest.raises(ConfigError, match=f"'{option}'"):
        predict_registers(options(text))


def test_brief_vectors_with_python_values() -> None:
    cap, ecap = predict_registers(
        {"intremap": True, "x-scalable-mode": True, "x-flts": True, "caching-mode": True,
         "aw-bits": 48}
    )  # fmt: skip
    assert cap == Cap.decode(0x01D2008C222F0686)
    assert ecap == Ecap.decode(0x0000880000F00F4A)
    assert ecap.smts and ecap.fsts and not ecap.ssts and not ecap.nest and not ecap.pasid


def test_predict_returns_spec_field_names() -> None:
    fields = predict({"x-scalable-mode": "on", "x-flts": "on"})
    assert fields["ECAP.FSTS"] == 1 and fields["ECAP.SSTS"] == 0 and fields["ECAP.NEST"] == 0
    assert fields["CAP.FS1GP"] == 1 and fields["CAP.MGAW"] == 47 and fields["CAP.SAGAW"] == 6
    assert fields["ECAP.IR"] == 1 and fields["ECAP.EIM"] == 0


def test_resolved_auto_choices() -> None:
    tcg = resolve_config({})
    assert tcg.intremap and not tcg.eim and tcg.aw_bits == 48
    split = resolve_config({"accel": "kvm", "kernel-irqchip": "split"})
    assert split.intremap and split.eim
    full = resolve_config({"accel": "kvm"})
    assert not full.intremap and not full.eim


@pytest.mark.parametrize(
    ("opts", "option"),
    [
        ({"x-flts": "maybe"}, "x-flts"),
        ({"caching-mode": 1}, "caching-mode"),
        ({"intremap": "sometimes"}, "intremap"),
        ({"aw-bits": "wide"}, "aw-bits"),
        ({"aw-bits": True}, "aw-bits"),
        ({"accel": "hvf"}, "accel"),
        ({"kernel-irqchip": "yes"}, "kernel-irqchip"),
        ({"x-nest": "on"}, "x-nest"),
    ],
)
def test_bad_option_values_name_the_option(opts: dict[str, object], option: str) -> None:
    with pytest.raises(ConfigError, match=f"'{option}'"):
        predict_registers(opts)


def test_bool_spellings_are_accepted() -> None:
    for on in (True, "on", "true", "yes", "ON"):
        assert predict_registers({"caching-mode": on})[0].cm
    for off in (False, "off", "false", "no"):
        assert not predict_registers({"caching-mode": off})[0].cm
    assert predict_registers({"aw-bits": "39"})[0].max_guest_address_width == 39


def test_qemu_11_sets_esrtps_and_takes_its_new_property_names() -> None:
    # Read by the release matrix from a QEMU 11.1.3 guest (vtd-capabilities, TCG): the same
    # CAP as 10.0.2 plus bit 63 (ESRTPS), the same ECAP; 11 spells x-scalable-mode and
    # x-flts as scalable-mode and fsts.
    options = {"intremap": "on", "scalable-mode": "on", "fsts": "on", "caching-mode": "on"}
    cap, ecap = predict_registers(options, (11, 1, 3))
    assert (cap.encode(), ecap.encode()) == (0x81D2008C222F0686, 0x0000880000F00F4A)
    assert predict_registers(options)[0].encode() == 0x01D2008C222F0686  # 10.0.2: no ESRTPS


def test_qemu_11_pasid_bits_predicts_what_x_pasid_mode_did() -> None:
    ten = predict_registers(options("x-scalable-mode=on,x-flts=on,x-pasid-mode=on"))
    eleven = predict_registers({"scalable-mode": "on", "fsts": "on", "pasid-bits": 20}, (11, 1, 3))
    assert eleven[1].encode() == ten[1].encode() == 0x0000890000F00F4A  # ECAP: PASID, PSS 19
    assert (
        predict_registers({"scalable-mode": "on", "pasid-bits": 0}, (11, 1, 3))[1]
        == (predict_registers(options("x-scalable-mode=on"))[1])
    )
    with pytest.raises(ConfigError, match="pasid-bits"):
        resolve_config({"scalable-mode": "on", "pasid-bits": 16})
