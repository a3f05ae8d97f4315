"""Tier 2's fuzz model (the SMMUv3 driver's answers) and its state machine.

The predictions are checked against what drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3-iommufd.c,
drivers/iommu/iommufd/*.c and drivers/vfio/*.c (Linux 7.3) say, case by case; the state
machine runs against a stand-in kernel that answers as the model predicts (a unit test
cannot boot a guest; tests/vm/test_fuzz.py runs tier 2 on QEMU's SMMUv3).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from harness.fuzz import model as model_mod
from harness.fuzz.reduce import replay, signature
from harness.fuzz.runner import fuzz
from harness.fuzz.smmuv3_model import SmmuFacts, SmmuModel, command_words
from harness.fuzz.smmuv3_rules import SmmuMachine
from harness.smmuv3.registers import decode_id_regs
from tests.unit.test_fuzz_rules import ModelKernel

pytestmark = pytest.mark.tier0

#: QEMU 10.0's SMMUv3 with stage=nested, as read over QMP (IDR0: S1P, S2P, 16-bit ASID, no
#: ATS; IDR3: RIL; IIDR made up, QEMU's is 0)
RAW = {"IDR0": 0xD44101B, "IDR1": 0x2730010, "IDR2": 0, "IDR3": 0x1414, "IDR4": 0,
       "IDR5": 0x74, "IIDR": 0x1234, "AIDR": 1}  # fmt: skip
FACTS = SmmuFacts(decode_id_regs(RAW), RAW)


class Kernel:
    """Applies a model's predictions as if the kernel had answered them (fresh IDs)."""

    def __init__(self) -> None:
        self.m = SmmuModel(FACTS)
        self.ids = itertools.count(1)

    def do(self, op: str, **args: Any) -> model_mod.Prediction:
        pred = self.m.predict(op, **args)
        obs: dict[str, Any] = {"outcome": pred.outcome, **pred.fields}
        if pred.outcome == "ok":
            obs["id"] = next(self.ids)
            obs.setdefault("hwpt", obs["id"])
        assert pred.settle(obs) is None
        return pred

    def new(self, op: str, **args: Any) -> int:
        """Run an allocation that must succeed; the new object's handle."""
        before = self.m._next
        pred = self.do(op, **args)
        assert pred.outcome == "ok", (op, args, pred.outcome)
        return before


@pytest.fixture
def k() -> Kernel:
    kernel = Kernel()
    kernel.new("bind")
    return kernel


def stack(k: Kernel, ste: str = "s1", vdevice: bool = True) -> dict[str, int]:
    """IOAS, nest parent, vIOMMU, (vDEVICE 0x42), nested HWPT: their handles."""
    dev = 0
    ioas = k.new("ioas_alloc")
    s2 = k.new("hwpt_alloc", dev=dev, pt=ioas, flags="nest_parent")
    viommu = k.new("viommu_alloc", dev=dev, hwpt=s2)
    out = {"dev": dev, "ioas": ioas, "s2": s2, "viommu": viommu}
    if vdevice:
        out["vdev"] = k.new("vdevice_alloc", viommu=viommu, dev=dev, virt_id=0x42)
    out["nested"] = k.new("hwpt_alloc", dev=dev, pt=viommu, ste=ste)
    return out


def outcome(k: Kernel, op: str, **args: Any) -> str:
    return k.m.predict(op, **args).outcome


# --- the device ------------------------------------------------------------------------------


def test_attach_takes_ioas_and_hwpts_only_and_needs_a_bound_device(k: Kernel) -> None:
    ioas = k.new("ioas_alloc")
    assert outcome(k, "attach", pt=ioas) == "ok"
    objs = stack(k)
    assert outcome(k, "attach", pt=objs["viommu"]) == "EINVAL"
    assert outcome(k, "attach", pt=objs["vdev"]) == "EINVAL"
    assert outcome(k, "attach", pt=None) == "ENOENT"
    k.do("unbind")
    assert outcome(k, "attach", pt=ioas) == "EBADF"
    assert outcome(k, "detach") == "EBADF"


def test_attach_to_an_ioas_makes_one_auto_domain_and_leaving_frees_it(k: Kernel) -> None:
    ioas = k.new("ioas_alloc")
    k.do("attach", pt=ioas)
    auto = [o for o in k.m.live("HWPT_PAGING") if o.auto]
    assert len(auto) == 1 and k.m.device().attached is auto[0]  # type: ignore[union-attr]
    assert k.m.predict("attach", pt=ioas).fields["hwpt"] == auto[0].kid  # the same one
    assert outcome(k, "destroy", target=ioas) == "EBUSY"  # the auto domain holds the IOAS
    k.do("detach")
    assert not auto[0].alive and outcome(k, "destroy", target=ioas) == "ok"


def test_a_translating_vste_needs_a_vdevice_abort_and_bypass_do_not(k: Kernel) -> None:
    without = stack(k, "s1", vdevice=False)
    assert outcome(k, "attach", pt=without["nested"]) == "ENOENT"  # iommufd_viommu_get_vdev_id
    for ste in ("abort", "bypass", "invalid"):
        nested = k.new("hwpt_alloc", dev=0, pt=without["viommu"], ste=ste)
        assert outcome(k, "attach", pt=nested) == "ok", ste
    k.new("vdevice_alloc", viommu=without["viommu"], dev=0, virt_id=1)
    assert outcome(k, "attach", pt=without["nested"]) == "ok"


def test_unbind_destroys_the_vdevice_and_its_id_is_never_reused(k: Kernel) -> None:
    objs = stack(k)
    vdev_id = k.m.objs[objs["vdev"]].kid
    k.do("unbind")
    assert outcome(k, "destroy", target=objs["vdev"]) == "ENOENT"
    assert vdev_id in k.m.tombstones and vdev_id not in k.m.free_ids(8)
    assert outcome(k, "destroy", target=objs["viommu"]) == "EBUSY"  # the nested HWPT holds it
    k.new("bind")
    assert outcome(k, "vdevice_alloc", viommu=objs["viommu"], dev=k.m.device().handle,  # type: ignore[union-attr]
                   virt_id=0x42) == "ok"  # fmt: skip


def test_the_ste_attach_installs_follows_what_the_device_is_attached_to(k: Kernel) -> None:
    """Read back over QMP after every accepted attach and detach (SmmuObserver)."""
    objs = stack(k)
    assert k.m.predict("attach", pt=objs["ioas"]).fields["ste_config"] == "s1"  # auto domain
    assert k.m.predict("attach", pt=objs["s2"]).fields["ste_config"] == "s2"
    nested = k.m.predict("attach", pt=objs["nested"]).fields
    assert nested["ste_config"] == "nested" and nested["ste_s1ctxptr"] == 0x4000_0000
    for ste, want in (("abort", "abort"), ("invalid", "abort"), ("bypass", "s2")):
        hwpt = k.new("hwpt_alloc", dev=0, pt=objs["viommu"], ste=ste)
        assert k.m.predict("attach", pt=hwpt).fields["ste_config"] == want, ste
    assert k.m.predict("detach").fields == {"ste_config": "abort"}


def _landed(k: Kernel, src: int, dst: int) -> Any:
    return k.m.predict("dma", src=src, dst=dst, marker=1).fields["landed"]


def test_dma_lands_where_both_pages_translate_through_the_attachment(k: Kernel) -> None:
    objs = stack(k, "bypass")
    k.do("map", ioas=objs["ioas"], page=2, npages=2)
    other = k.new("ioas_alloc")
    k.do("copy", dst=other, src=objs["ioas"], src_page=2, dst_page=9, npages=2)
    assert _landed(k, 2, 3) is None  # detached: the blocked domain faults everything
    k.do("attach", pt=objs["ioas"])  # the auto domain (stage 1) maps the IOAS
    assert (_landed(k, 2, 3), _landed(k, 3, 2), _landed(k, 2, 4), _landed(k, 5, 2)) == (
        3, 2, None, None,
    )  # fmt: skip
    k.do("attach", pt=other)  # pages 9, 10 map buffer pages 2, 3 (the copy's source)
    assert (_landed(k, 9, 10), _landed(k, 2, 3)) == (3, None)
    k.do("attach", pt=objs["nested"])  # a bypass vSTE: the nest parent's stage 2
    assert _landed(k, 2, 3) == 3
    k.do("unmap", ioas=objs["ioas"], page=3, npages=1)  # ENOENT: it splits no area
    assert _landed(k, 2, 3) == 3
    k.do("unmap", ioas=objs["ioas"], page=2, npages=2)
    k.do("map", ioas=objs["ioas"], page=2, npages=1)
    assert (_landed(k, 2, 3), _landed(k, 2, 2)) == (None, 2)
    abort = k.new("hwpt_alloc", dev=0, pt=objs["viommu"], ste="abort")
    k.do("attach", pt=abort)
    assert _landed(k, 2, 2) is None


def test_no_dma_prediction_through_a_translating_vste(k: Kernel) -> None:
    objs = stack(k, "s1")
    k.do("attach", pt=objs["nested"])
    assert not k.m.dma_translates()
    k.do("attach", pt=objs["ioas"])
    assert k.m.dma_translates()
    k.do("unbind")
    assert not k.m.dma_translates() and outcome(k, "dma", src=0, dst=0, marker=1) == "EBADF"


def test_the_device_object_cannot_be_destroyed_while_vfio_holds_it(k: Kernel) -> None:
    assert outcome(k, "destroy", target=0, role="DEVICE") == "EBUSY"


# --- HWPT_ALLOC ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "ste", "fault", "want"),
    [
        ("none", "none", False, "ok"),
        ("nest_parent", "none", False, "ok"),
        ("pasid", "none", False, "ok"),
        ("dirty", "none", False, "EOPNOTSUPP"),  # no IOMMU_CAP_DIRTY_TRACKING on QEMU's SMMU
        ("bad", "none", False, "EOPNOTSUPP"),
        ("nest_parent", "none", True, "EOPNOTSUPP"),  # FAULT_ID_VALID with NEST_PARENT
        ("none", "abort", False, "EOPNOTSUPP"),  # paging with user data
        ("none", "none", True, "ok"),
    ],
)
def test_a_paging_hwpt_follows_the_smmu_driver(
    k: Kernel, flags: str, ste: str, fault: bool, want: str
) -> None:
    ioas = k.new("ioas_alloc")
    queue = k.new("fault_alloc") if fault else -1
    assert outcome(k, "hwpt_alloc", dev=0, pt=ioas, flags=flags, ste=ste, fault=queue) == want


@pytest.mark.parametrize(
    ("ste", "flags", "want"),
    [
        ("s1", "none", "ok"),
        ("invalid", "none", "ok"),  # V == 0: zeroed, an abort STE at attach
        ("s1", "pasid", "EOPNOTSUPP"),  # arm_vsmmu_alloc_domain_nested: flags
        ("none", "none", "EOPNOTSUPP"),  # no user data
        ("short", "none", "EINVAL"),
        ("long", "none", "EINVAL"),  # longer than iommu_hwpt_arm_smmuv3: data_len < len
        ("badtype", "none", "EINVAL"),
        ("badbits", "none", "EIO"),
        ("badcfg", "none", "EIO"),
        ("badeats", "none", "EIO"),
    ],
)
def test_a_nested_hwpt_follows_the_vsmmu(k: Kernel, ste: str, flags: str, want: str) -> None:
    objs = stack(k)
    assert outcome(k, "hwpt_alloc", dev=0, pt=objs["viommu"], ste=ste, flags=flags) == want


def test_nesting_goes_through_a_viommu_only(k: Kernel) -> None:
    objs = stack(k)
    assert outcome(k, "hwpt_alloc", dev=0, pt=objs["s2"], ste="s1") == "EOPNOTSUPP"
    assert outcome(k, "hwpt_alloc", dev=0, pt=objs["vdev"], ste="s1") == "EINVAL"
    assert outcome(k, "hwpt_alloc", dev=0, pt=None, ste="s1") == "EINVAL"  # not ENOENT
    assert outcome(k, "hwpt_alloc", dev=None, pt=objs["viommu"], ste="s1") == "ENOENT"


# --- vIOMMU and vEVENTQ ----------------------------------------------------------------------


def test_viommu_types_and_parents(k: Kernel) -> None:
    ioas = k.new("ioas_alloc")
    s1 = k.new("hwpt_alloc", dev=0, pt=ioas)
    s2 = k.new("hwpt_alloc", dev=0, pt=ioas, flags="nest_parent")
    assert outcome(k, "viommu_alloc", dev=None, hwpt=s2, viommu_type="default") == "EOPNOTSUPP"
    assert outcome(k, "viommu_alloc", dev=None, hwpt=s2, viommu_type="tegra") == "ENOENT"
    assert outcome(k, "viommu_alloc", dev=0, hwpt=s2, viommu_type="tegra") == "EOPNOTSUPP"
    assert outcome(k, "viommu_alloc", dev=0, hwpt=s1) == "EINVAL"
    assert outcome(k, "viommu_alloc", dev=0, hwpt=ioas) == "ENOENT"
    assert outcome(k, "viommu_alloc", dev=0, hwpt=s2) == "ok"


def test_one_veventq_per_type_of_any_non_default_type(k: Kernel) -> None:
    viommu = stack(k)["viommu"]
    arm = k.new("veventq_alloc", viommu=viommu, depth=2)
    assert outcome(k, "veventq_alloc", viommu=viommu, depth=2) == "EEXIST"
    tegra = k.new("veventq_alloc", viommu=viommu, depth=2, queue_type="tegra")
    assert outcome(k, "veventq_alloc", viommu=viommu, depth=2, queue_type="default") == "EOPNOTSUPP"
    k.do("close_fd", queue=arm)
    k.do("destroy", target=arm)
    assert outcome(k, "veventq_alloc", viommu=viommu, depth=2) == "ok"
    assert k.m.objs[tegra].alive and k.m.busy(k.m.objs[viommu])


# --- invalidation ----------------------------------------------------------------------------


def _invalidate(k: Kernel, target: int, *kinds: str, layout: str = "exact", vsid: int = 0x42):
    pred = k.m.predict(
        "invalidate", target=target, commands=[command_words(n, vsid) for n in kinds],
        layout=layout,
    )  # fmt: skip
    return pred.outcome, pred.fields["done"]


def test_invalidation_goes_to_the_viommu_command_by_command(k: Kernel) -> None:
    objs = stack(k)
    viommu = objs["viommu"]
    assert _invalidate(k, viommu, "nh_all", "cfgi_cd", "nh_va") == ("ok", 3)
    assert _invalidate(k, viommu, "nh_all", "cfgi_ste") == ("EIO", 1)  # opcode not forwarded
    assert _invalidate(k, viommu, "cfgi_cd", vsid=7) == ("EIO", 0)  # no vDEVICE 7
    assert _invalidate(k, viommu, "res0") == ("EIO", 0)
    assert _invalidate(k, viommu, "nh_va_reserved") == ("EIO", 0)  # TG set, NUM=SCALE=TTL=0
    assert _invalidate(k, viommu, "nh_va_range") == ("ok", 1)
    assert _invalidate(k, viommu, "atc_inv") == ("EIO", 0)  # IDR0.ATS clear here
    assert _invalidate(k, objs["nested"], "nh_all") == ("EOPNOTSUPP", 0)
    assert _invalidate(k, objs["s2"], "nh_all") == ("EINVAL", 0)


@pytest.mark.parametrize(
    ("layout", "want"),
    [("exact", ("ok", 1)), ("short", ("ok", 1)), ("long0", ("ok", 1)),
     ("longx", ("E2BIG", 0)), ("empty", ("EINVAL", 0)), ("nolen", ("EINVAL", 0)),
     ("badtype", ("EINVAL", 0))],
)  # fmt: skip
def test_invalidation_array_layouts(k: Kernel, layout: str, want: tuple[str, int]) -> None:
    assert _invalidate(k, stack(k)["viommu"], "nh_asid", layout=layout) == want


def test_a_short_entry_drops_word_one(k: Kernel) -> None:
    """entry_len 8: copy_struct_from_user zero-fills word 1 (TG 0 then, so NH_VA is plain)."""
    viommu = stack(k)["viommu"]
    assert _invalidate(k, viommu, "nh_va_reserved") == ("EIO", 0)
    assert _invalidate(k, viommu, "nh_va_reserved", layout="short") == ("ok", 1)


# --- hw_info ---------------------------------------------------------------------------------


def test_hw_info_returns_qemus_id_registers(k: Kernel) -> None:
    pred = k.m.predict("hw_info", dev=0, info_type="arm")
    assert pred.outcome == "ok"
    assert pred.fields["idr"] == [RAW[f"IDR{i}"] for i in range(6)]
    assert (pred.fields["iidr"], pred.fields["aidr"], pred.fields["data_len"]) == (0x1234, 1, 40)
    assert outcome(k, "hw_info", dev=0, info_type="vtd") == "EOPNOTSUPP"
    assert outcome(k, "hw_info", dev=None, info_type="vtd") == "ENOENT"
    assert outcome(k, "hw_info", dev=None, info_type="badflags") == "EOPNOTSUPP"  # flags first


# --- the state machine -----------------------------------------------------------------------


def run(kernel: ModelKernel, budget: float, **kwargs: Any) -> Any:
    return fuzz(kernel, budget=budget, seed=7, log=lambda _: None, rules=SmmuMachine,
                facts={"facts": FACTS}, **kwargs)  # fmt: skip


def test_a_clean_run_reaches_the_vfio_and_vsmmu_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(ModelKernel(monkeypatch), 8.0)
    assert not result.found, result.summary()
    outcomes = set(result.coverage.outcomes)
    for want in [("VFIO_DEVICE_BIND_IOMMUFD", "ok"), ("VFIO_DEVICE_ATTACH_IOMMUFD_PT", "ok"),
                 ("VFIO_DEVICE_ATTACH_IOMMUFD_PT", "ENOENT"), ("IOMMU_HWPT_INVALIDATE", "EIO"),
                 ("IOMMU_HWPT_INVALIDATE", "ok"), ("IOMMU_GET_HW_INFO", "ok"),
                 ("IOMMU_VIOMMU_ALLOC", "ok"), ("IOMMU_VDEVICE_ALLOC", "ok")]:  # fmt: skip
        assert want in outcomes, want


def test_the_smmu_oracle_fails_an_example_with_an_active_global_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kernel = ModelKernel(monkeypatch)
    end = kernel.end
    monkeypatch.setattr(kernel, "end", lambda: {**end(), "smmu": {"gerror_active": 1}})
    result = run(kernel, 30.0, shrink_limit=2.0, reduce_limit=2.0)
    assert result.failure is not None and "SMMU global error active" in str(result.failure)


def _cfgi_cd_for_a_gone_vdevice(m: model_mod.Model, pred: model_mod.Prediction) -> str | None:
    """The planted divergence: an invalidation the vSMMU refuses (EIO) is answered "ok"
    when the vIOMMU has a vEVENTQ (a state the rules reach only through several steps)."""
    if pred.op != "invalidate" or pred.outcome != "EIO":
        return None
    found = m.lookup(pred.wire["args"]["target"])
    if found is None or found[0] != "VIOMMU":
        return None
    return "ok" if cast_smmu(m).veventqs.get(found[1].handle) else None


def cast_smmu(m: model_mod.Model) -> SmmuModel:
    assert isinstance(m, SmmuModel)
    return m


def test_a_divergence_is_found_and_shrunk(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = ModelKernel(monkeypatch, _cfgi_cd_for_a_gone_vdevice)
    result = run(kernel, 300.0, shrink_limit=10.0, reduce_limit=600.0)
    assert result.failure is not None, result.summary()
    trace = result.failure.trace
    ops = [s["step"]["op"] for s in trace]
    assert ops[-1] == "invalidate" and "expected EIO, got ok" in str(result.failure)
    assert ops[0] == "bind" and {"viommu_alloc", "veventq_alloc"} <= set(ops), ops
    want = signature(trace[-1])  # 1-minimal: no single step can go
    for i in range(len(trace) - 1):
        again = replay(kernel, trace[:i] + trace[i + 1 :], lambda: SmmuModel(FACTS))
        assert not (again and again[-1].get("mismatch") and signature(again[-1]) == want), i
    assert len(ops) <= 10, ops
