"""SMMUv3 scenarios without a guest: registry, guest-half memory layout, predictions, parsing."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from harness.pgtable import walk_arm
from harness.qemu.trace import parse_trace_line
from harness.rings.veventq import encode_vevent
from harness.scenarios import smmuv3 as host
from harness.scenarios.base import load_all
from harness.scenarios.guest import smmuv3 as guest
from harness.smmuv3 import (
    VsmmuContext,
    check_vsmmu_invalidation,
    encode_event,
    lookup_cd,
    make_command,
    validate_nested_ste,
)
from harness.smmuv3.ste import S1Fmt

pytestmark = pytest.mark.tier0

NAMES = ("smmuv3-capabilities", "smmuv3-cd-binding", "smmuv3-invalidation", "smmuv3-fault-rings")


class Buffer:
    """The guest's DmaBuffer, as far as the session's memory helpers use it."""

    def __init__(self, size: int) -> None:
        self.memory = bytearray(size)

    def write(self, offset: int, data: bytes) -> None:
        self.memory[offset : offset + len(data)] = data

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.memory[offset : offset + length])


class Reader:
    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer

    def read(self, address: int, size: int) -> bytes:
        return self.buffer.read(address - guest.IPA_BASE, size)


def fake_session() -> Any:
    session = guest.Session.__new__(guest.Session)
    session.buf = Buffer(guest.BUFFER_SIZE)  # type: ignore[assignment]
    return session


@pytest.mark.parametrize("name", NAMES)
def test_registered_for_arm64_tier2(name: str) -> None:
    scenario = load_all()[name]
    spec = scenario.guest("arm64")
    assert (scenario.tier, scenario.arches, scenario.viommu) == (2, ("arm64",), "smmuv3")
    assert spec.firmware == "uefi" and spec.viommu_options == {"stage": "nested"}
    assert spec.devices == ("edu:mask=0xffffffffffff",)


@pytest.mark.parametrize(
    ("bdf", "sid"), [("0000:00:01.0", 0x8), ("00:02.0", 0x10), ("0000:01:00.3", 0x103)]
)
def test_stream_id_is_the_requester_id(bdf: str, sid: int) -> None:
    assert guest.stream_id(bdf) == sid


def test_patterns_differ_by_label() -> None:
    assert guest.pattern("a") != guest.pattern("b")
    assert len(guest.pattern("a", 4)) == 4


@pytest.mark.parametrize(
    "case",
    [c for c in host.BINDING_CASES if c["kind"] != "abort" and c["kind"] != "bypass"],
    ids=lambda c: c["label"],
)
def test_binding_layout_walks_like_the_smmu(case: dict[str, Any]) -> None:
    """The bytes the guest half writes: CD table -> CD -> TTB0 -> IPA of the data slots."""
    session = fake_session()
    granule = case["granule"]
    setup = guest._s1_setup(
        session, granule, case["iova"], case["asid"], block=case.get("block", False)
    )
    two_level = case["kind"] == "s1-2level"
    s1cdmax = case.get("s1cdmax", 0) if two_level else 0
    s1fmt = S1Fmt.L2_4K if two_level else S1Fmt.LINEAR
    session.write_cd_table({0: setup["cd"]}, setup["cd_base"], s1cdmax, s1fmt)
    cd = lookup_cd(Reader(session.buf), base=setup["cd_base"], s1fmt=s1fmt, s1cdmax=s1cdmax, ssid=0)
    assert cd.v and cd.asid == case["asid"]
    memory = session.buf.memory
    for iova, ipa in ((setup["src_iova"], setup["src_ipa"]), (setup["dst_iova"], setup["dst_ipa"])):
        walked = walk_arm(
            memory,
            guest.IPA_BASE,
            cd.ttb0,
            iova + case.get("offset", 0),
            granule=granule,
            t0sz=cd.t0sz,
            ips=44,
        )
        assert getattr(walked, "output", None) == ipa + case.get("offset", 0), walked
    assert setup["dst_iova"] + case.get("offset", 0) + case.get("length", 256) <= 1 << 48


def test_binding_vstes_are_accepted_by_the_kernel_rules() -> None:
    from harness.smmuv3 import build_nested_ste

    for kind in ("abort", "bypass"):
        assert validate_nested_ste(build_nested_ste(kind)).ok
    vste = build_nested_ste("s1", cd_table=guest.IPA_BASE, s1fmt=S1Fmt.L2_4K, s1cdmax=7, s1dss=2)
    assert validate_nested_ste(vste).installs == "nested"


def test_invalidation_commands_are_ones_the_vsmmu_forwards() -> None:
    ctx = VsmmuContext(vsid_to_sid={host.VSID: 8})
    for case in host.invalidation_cases(host.VSID):
        for spec in case.commands or ():
            command = make_command(spec["name"], **spec.get("fields", {}))
            assert check_vsmmu_invalidation(command, ctx).ok, case.label


def test_every_forwarded_command_type_has_an_effect_case() -> None:
    """Every type arm_vsmmu_cache_invalidate() (7.3) forwards with no ATS is covered."""
    covered = {
        spec["name"] for case in host.invalidation_cases(host.VSID) for spec in case.commands or ()
    }
    assert covered == {
        "TLBI_NH_VA", "TLBI_NH_VAA", "TLBI_NH_ASID", "TLBI_NH_ALL", "TLBI_NSNH_ALL",
        "CFGI_CD", "CFGI_CD_ALL",
    }  # fmt: skip
    kinds = {case.change for case in host.invalidation_cases(host.VSID)}
    assert kinds == {"pte", "cd", "ste"}


def test_negative_controls_are_predicted_and_differ_from_the_right_command() -> None:
    """Each wrong invalidation differs from the right one; the model predicts its errno."""
    ctx = VsmmuContext(vsid_to_sid={host.VSID: 8})
    wrong_errnos = {}
    for case in host.invalidation_cases(host.VSID):
        assert host._predict_batch(case.commands or (), ctx)[0] == "success", case.label
        for label, commands in case.wrong:
            assert list(commands) != list(case.commands or ()), (case.label, label)
            wrong_errnos[(case.label, label)] = host._predict_batch(commands, ctx)
    assert wrong_errnos[("cfgi-cd", "unknown vSID")] == ("EIO", 0)
    assert wrong_errnos[("tlbi-nh-va", "wrong ASID")] == ("success", 1)
    assert sum(len(c.wrong) for c in host.invalidation_cases(host.VSID)) >= 8


def test_malformed_predictions() -> None:
    ctx = VsmmuContext(vsid_to_sid={host.VSID: 8})
    got = [
        tuple(c["predicted"]) if "predicted" in c else host._predict_batch(c["commands"], ctx)
        for c in host._malformed_cases(host.VSID)
    ]
    assert got == [
        ("success", 3),
        ("EIO", 1),
        ("EIO", 0),
        ("EIO", 2),
        ("EIO", 0),
        ("EIO", 1),
        ("EIO", 1),
        ("EINVAL", 0),
    ]


def test_trace_matching_on_qemu_lines() -> None:
    lines = [
        "4242@1763740000.000001:smmuv3_range_inval vmid=1 asid=33 addr=0x30000000 tg=0"
        " num_pages=0x1 ttl=0 leaf=1 stage=1",
        "4242@1763740000.000002:smmuv3_cmdq_cfgi_ste streamid= 0x8",
        "4242@1763740000.000003:smmuv3_cmdq_cfgi_cd sid=0x9",
    ]
    records = [r for r in map(parse_trace_line, lines) if r is not None]
    assert host._trace_matches(records, "smmuv3_range_inval", {"asid": 33, "addr": 0x3000_0000}, 8)
    assert host._trace_matches(records, "smmuv3_cmdq_cfgi_ste", {"streamid": "physical"}, 8)
    assert not host._trace_matches(records, "smmuv3_cmdq_cfgi_cd", {"sid": "physical"}, 8)


def test_event_summary() -> None:
    record = encode_event("F_TRANSLATION", sid=host.VSID, address=0x2000_8000, is_write=False)
    data = encode_vevent(0, record) + encode_vevent(3, lost=True)
    assert host.event_summary(data) == ["0 F_TRANSLATION sid=0x42 addr=0x20008000", "3 LOST_EVENTS"]
    assert host.event_summary(struct.pack("<I", 1))[0].startswith("unparsable")


def test_override_active_means_an_initrd_from_the_firmware_cache(tmp_path: Any) -> None:
    from harness.firmware.override import cache_root
    from harness.qemu.description import Machine

    stock = Machine(arch="arm64", kernel=tmp_path / "k", initrd=tmp_path / "i.cpio")
    assert not host.override_active(stock)
    assert host.override_active(stock.with_(initrd=cache_root() / "initrd" / "initrd-x.cpio"))


class FakeVm:
    def __init__(self, machine: Any, binary: str) -> None:
        self.machine = machine
        self.argv = [binary]


class FakeGuest:
    """Canned agent answers for the capability scenario's host half."""

    def __init__(self, machine: Any, binary: str, caps: dict[str, Any], tmp_path: Any) -> None:
        self.vm = FakeVm(machine, binary)
        self.artifacts = tmp_path
        self.caps = caps

    def call(self, method: str, **params: Any) -> Any:
        answers = {
            "pci.find": ["0000:00:01.0"],
            "pci.bind_vfio": {
                "device": {"driver": "vfio-pci", "vfio_cdev": "/dev/vfio/devices/vfio0"}
            },
            "smmuv3.capabilities": self.caps,
        }
        return answers[method]


def canned(
    stage: str = "nested",
    *,
    iort: bytes | None = None,
    viommu: str = "EOPNOTSUPP",
    log: tuple[str, ...] = (),
) -> dict[str, Any]:
    from harness.firmware.iort import build_iort
    from harness.smmuv3 import predict_idrs

    return {
        "tainted": 0,
        "acpi_log": list(log),
        "iort": build_iort() if iort is None else iort,
        "hw_info_type": 2,
        "idrs": predict_idrs({"stage": stage}),
        "hw_info_flags": 0,
        "nest_parent_errno": "success" if stage == "nested" else "EOPNOTSUPP",
        "viommu_errno": viommu if stage == "nested" else "not tried (no nest parent)",
    }


@pytest.fixture
def qemu_machine(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    from harness.qemu.description import Machine, SmmuV3

    monkeypatch.setenv("VIOMMU_FIRMWARE_CACHE", str(tmp_path / "fw"))
    binary = tmp_path / "qemu-system-aarch64"
    binary.write_bytes(b"qemu")
    uefi = tmp_path / "QEMU_EFI.fd"
    uefi.write_bytes(b"fd")
    machine = Machine(
        arch="arm64",
        kernel=tmp_path / "k",
        initrd=tmp_path / "i.cpio",
        firmware="uefi",
        uefi_code=uefi,
        viommu=SmmuV3(stage="nested"),
    )
    return machine, str(binary)


def test_capabilities_stock_path_explains_and_caches(qemu_machine: Any, tmp_path: Any) -> None:
    from harness.firmware.override import cached_iort

    machine, binary = qemu_machine
    verdict = host.smmuv3_capabilities(FakeGuest(machine, binary, canned(), tmp_path), {})
    assert verdict.passed, verdict.summary()
    assert "IDR3.FWB=0 and IORT CANWBS=0" in verdict.facts["capability"]["explanation"]
    assert cached_iort(binary, machine) is not None


def test_capabilities_flags_a_viommu_the_report_did_not_expect(
    qemu_machine: Any, tmp_path: Any
) -> None:
    machine, binary = qemu_machine
    verdict = host.smmuv3_capabilities(
        FakeGuest(machine, binary, canned(viommu="success"), tmp_path), {}
    )
    assert [c.name for c in verdict.failures] == [
        "IOMMU_VIOMMU_ALLOC as the capability report predicts"
    ]


def test_capabilities_with_override(qemu_machine: Any, tmp_path: Any) -> None:
    from harness.firmware.iort import build_iort, set_canwbs
    from harness.firmware.override import cache_root

    machine, binary = qemu_machine
    booted = machine.with_(initrd=cache_root() / "initrd" / "initrd-0.cpio")
    caps = canned(
        iort=set_canwbs(build_iort()).table,
        viommu="success",
        log=("ACPI: Table Upgrade: override [IORT-BOCHS -BXPC    ]",),
    )
    verdict = host.smmuv3_capabilities(FakeGuest(booted, binary, caps, tmp_path), {})
    assert verdict.passed, verdict.summary()
    assert verdict.facts["capability"]["viommu"] is True


def test_capabilities_idr_mismatch_fails(qemu_machine: Any, tmp_path: Any) -> None:
    machine, binary = qemu_machine
    caps = canned()
    caps["idrs"] = {**caps["idrs"], "IDR3": caps["idrs"]["IDR3"] | 1 << 8}
    verdict = host.smmuv3_capabilities(FakeGuest(machine, binary, caps, tmp_path), {})
    names = {c.name for c in verdict.failures}
    assert "IDR3 as predicted for stage=nested" in names and "decoded IDR3.FWB" in names
