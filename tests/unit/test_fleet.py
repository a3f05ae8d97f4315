"""The fleet: fleet-file parsing, resource routing and unschedulable cells, result merging,
archives, versions and the per-run TLS (a real scheduler and client on loopback)."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ConfigError, HarnessError
from harness.fleet.capabilities import HostCaps, requirements, route
from harness.fleet.cell import archive, cell_junit
from harness.fleet.merge import (
    CellResult,
    avocado_results,
    cell_dir,
    exit_status,
    merged_junit,
    unpack,
    write_results,
)
from harness.fleet.spec import DEFAULT_PREFIX, load_fleet, parse_fleet
from harness.fleet.version import mismatch
from harness.qualify.matrix import Variant

pytestmark = pytest.mark.tier0

GOOD = {
    "name": "lab",
    "scheduler": "192.0.2.1:8786",
    "retries": 1,
    "hosts": [
        {"name": "x1", "address": "192.0.2.10", "user": "ci", "key": "/k/id", "slots": 2,
         "labels": ["vtd"], "host_device": "0000:01:00.0"},
        {"name": "a1", "address": "arm.example", "port": 2222, "prefix": "/srv/h"},
    ],
}  # fmt: skip


def _variant(vid: str, arch: str = "x86_64", accel: str = "auto", scenario: str = "s") -> Variant:
    return Variant(
        id=vid, scenario=scenario, arch=arch, viommu="vtd" if arch == "x86_64" else "smmuv3",
        options_label="o", viommu_options={}, qemu_label="installed", qemu=None,
        kernel_label="default", kernel={"flavor": "default"}, accel=accel,
    )  # fmt: skip


# --- fleet file ------------------------------------------------------------------------


def test_parse_remote_fleet() -> None:
    fleet = parse_fleet(GOOD)
    assert (fleet.name, fleet.retries, fleet.local) == ("lab", 1, False)
    assert (fleet.scheduler_host, fleet.scheduler_port) == ("192.0.2.1", 8786)
    x1, a1 = fleet.hosts
    assert (x1.slots, x1.labels, x1.host_device, x1.port) == (2, ("vtd",), "0000:01:00.0", 22)
    assert x1.prefix == DEFAULT_PREFIX and x1.remote_python == f"{DEFAULT_PREFIX}/bin/python"
    assert (a1.port, a1.prefix, a1.slots, a1.user) == (2222, "/srv/h", 1, None)
    assert fleet.dashboard is None  # no dashboard unless asked for
    assert fleet.host("a1") is a1
    with pytest.raises(ConfigError, match="no host 'zz'"):
        fleet.host("zz")


def test_parse_local_fleet() -> None:
    fleet = parse_fleet({"name": "here", "local": {"slots": 2}})
    assert fleet.local and fleet.scheduler_host == "127.0.0.1"
    assert [(h.name, h.slots, h.address) for h in fleet.hosts] == [("local", 2, None)]
    assert parse_fleet({"local": True}).hosts[0].slots == 1


def _with(**changes: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if key.startswith("h0_"):
            if value is None:
                data["hosts"][0].pop(key[3:])
            else:
                data["hosts"][0][key[3:]] = value
        elif value is None:
            data.pop(key)
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "fleet: expected a mapping"),
        (_with(colour="red"), "fleet.colour: unknown key"),
        (_with(hosts=[]), "hosts: expected a non-empty list"),
        (_with(scheduler=None), "scheduler: missing"),
        (_with(scheduler="1.2.3.4:99999"), "scheduler: port '99999'"),
        (_with(retries=-1), "retries: -1 is not an integer in 0..10"),
        (_with(retries=True), "retries: True is not an integer"),
        (_with(connect_timeout=0), "connect_timeout: 0 is not a positive"),
        (_with(prefix="opt/h"), "prefix: 'opt/h' is not an absolute path"),
        (_with(h0_address=None), r"hosts\[0\]\.address: missing"),
        (_with(h0_port="ssh"), r"hosts\[0\]\.port: 'ssh' is not an integer"),
        (_with(h0_slots=0), r"hosts\[0\]\.slots: 0 is not an integer in 1..64"),
        (_with(h0_name="a1"), r"hosts\[1\]\.name: 'a1' is used by another host"),
        (_with(h0_name="bad name"), r"hosts\[0\]\.name: 'bad name' is not a name"),
        (_with(h0_labels="vtd"), r"hosts\[0\]\.labels: expected a list"),
        (_with(h0_host_device="01:00"), r"hosts\[0\]\.host_device: '01:00' is not a PCI"),
        (_with(h0_address="-oProxyCommand=x"), r"hosts\[0\]\.address: .* is not a host"),
        (_with(h0_extra=1), r"hosts\[0\]\.extra: unknown key"),
        ({"local": {"slots": 1}, "hosts": GOOD["hosts"]}, "local: a fleet is either local"),
        ({"local": {"cores": 1}}, "local.cores: unknown key"),
        ({"local": True, "scheduler": "192.0.2.1"}, "a local fleet listens on loopback"),
        ({"local": False}, "local: false is not a fleet"),
    ],
)
def test_bad_fleet_is_one_line_naming_the_key(data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_fleet(data)
    assert "\n" not in str(info.value)


def test_load_fleet_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such fleet file"):
        load_fleet(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("hosts: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML") as info:
        load_fleet(bad)
    assert "\n" not in str(info.value)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("scheduler: 10.0.0.1\nhosts:\n  - {name: h, address: 10.0.0.2, slots: x}\n")
    with pytest.raises(ConfigError, match=r"wrong\.yaml: hosts\[0\]\.slots"):
        load_fleet(wrong)
    good = tmp_path / "good.yaml"
    good.write_text("scheduler: 10.0.0.1\nhosts:\n  - {name: h, address: 10.0.0.2, key: ~/k}\n")
    assert load_fleet(good).hosts[0].key == str(Path("~/k").expanduser())


# --- capabilities and routing -----------------------------------------------------------


def _caps(name: str, arch: str, **kw: Any) -> HostCaps:
    return HostCaps(name=name, arch=arch, **kw)


def test_resources_from_capabilities() -> None:
    caps = _caps(
        "x", "x86_64", slots=2, qemu={"x86_64": "10.0.2", "arm64": ""},
        kvm={"x86_64": "untried", "arm64": "no: not the host's arch"}, iommufd=True,
        tier3="no --host-device given", labels=("vtd",),
    )  # fmt: skip
    assert caps.resources() == {
        "slot": 2.0, "qemu-x86_64": 2.0, "kvm-x86_64": 2.0, "iommufd": 2.0, "label-vtd": 2.0
    }  # fmt: skip
    caps.kvm["x86_64"] = "no: KVM did not run a guest here"
    caps.tier3 = "yes"
    res = caps.resources()
    assert "kvm-x86_64" not in res and res["tier3"] == 2.0
    assert HostCaps.from_json(json.loads(json.dumps(caps.to_json()))) == caps


def test_requirements() -> None:
    assert requirements(_variant("a")) == {"slot": 1.0, "qemu-x86_64": 1.0}
    assert requirements(_variant("b", "arm64", accel="kvm")) == {
        "slot": 1.0, "qemu-arm64": 1.0, "kvm-arm64": 1.0
    }  # fmt: skip
    assert requirements(_variant("c", scenario="tier3-passthrough"))["tier3"] == 1.0


def test_route_pins_cells_to_capable_hosts_and_names_what_is_missing() -> None:
    hosts = {
        "x86-kvm": {"slot": 1.0, "qemu-x86_64": 1.0, "qemu-arm64": 1.0, "kvm-x86_64": 1.0},
        "x86-tcg": {"slot": 1.0, "qemu-x86_64": 1.0},
    }
    cells = [
        _variant("tcg-x86"),
        _variant("kvm-x86", accel="kvm"),
        _variant("tcg-arm", "arm64"),
        _variant("kvm-arm", "arm64", accel="kvm"),
        _variant("t3", scenario="tier3-passthrough"),
    ]
    routes = {r.variant.id: r for r in route(cells, hosts)}
    assert routes["tcg-x86"].hosts == ("x86-kvm", "x86-tcg")
    assert routes["kvm-x86"].hosts == ("x86-kvm",)
    assert routes["tcg-arm"].hosts == ("x86-kvm",)
    assert routes["kvm-arm"].hosts == ()
    assert routes["kvm-arm"].missing == "no host has usable KVM for arm64 guests"
    assert routes["t3"].hosts == ()
    assert "tier 3" in routes["t3"].missing and "iommufd" in routes["t3"].missing
    assert all(r.missing == "" for r in routes.values() if r.hosts)
    # every capability exists somewhere, but no one host has them all
    split = {"a": {"slot": 1.0, "qemu-arm64": 1.0}, "b": {"slot": 1.0, "kvm-arm64": 1.0}}
    (r,) = route([_variant("k", "arm64", accel="kvm")], split)
    assert r.hosts == () and r.missing.startswith("no host has all of") and "lacks" in r.missing
    (r,) = route([_variant("n")], {})
    assert r.missing == "no host in the fleet"


# --- merging ---------------------------------------------------------------------------


def _results(tmp_path: Path) -> list[CellResult]:
    passed = _variant("s.x86_64.vtd-a")
    failed = _variant("s.x86_64.vtd-b")
    lost = _variant("s.arm64.smmuv3-c", "arm64")
    nowhere = _variant("s.arm64.smmuv3-k", "arm64", accel="kvm")
    art = cell_dir(tmp_path, "h1", passed.id)
    art.mkdir(parents=True)
    (art / "console.log").write_text("boot\n")
    return [
        CellResult(passed, "passed", "", "h1",
                   {"seconds": 12.5, "qemu_version": "10.0.2", "seed": 7},
                   cell_junit(passed.id, "h1", "passed", "", 12.5), art),
        CellResult(failed, "failed", "check x failed", "h2", {"seconds": 3.0},
                   cell_junit(failed.id, "h2", "failed", "check x failed", 3.0)),
        CellResult(lost, "error", "host h3 lost mid-cell (worker died; not retried)", "h3"),
        CellResult(nowhere, "unschedulable",
                   "unschedulable: no host has usable KVM for arm64 guests"),
    ]  # fmt: skip


def test_merged_junit_has_every_cell_with_its_host(tmp_path: Path) -> None:
    results = _results(tmp_path)
    top = ET.fromstring(merged_junit(results))
    suite = top.find("testsuite")
    assert suite is not None
    assert {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "4", "failures": "1", "errors": "2", "skipped": "0"
    }  # fmt: skip
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert [cases[r.variant.id].get("hostname") for r in results] == ["h1", "h2", "h3", ""]
    assert cases["s.x86_64.vtd-a"].get("classname") == "fleet.h1"
    error = cases["s.arm64.smmuv3-c"].find("error")
    assert error is not None and "h3 lost" in (error.get("message") or "")
    assert cases["s.arm64.smmuv3-k"].find("error") is not None


def test_report_has_host_column_and_fleet_statuses(tmp_path: Path) -> None:
    results = _results(tmp_path)
    data = avocado_results(results, tmp_path)
    assert [t["status"] for t in data["tests"]] == ["PASS", "FAIL", "ERROR", "UNSCHEDULABLE"]
    json_path, html_path = write_results(tmp_path, "ci", "", results, 60.0, {"h3": "lost"})
    report = json.loads(json_path.read_text())
    rows = {v["id"]: v for v in report["variants"]}
    assert [(rows[r.variant.id]["host"], rows[r.variant.id]["status"]) for r in results] == [
        ("h1", "passed"), ("h2", "failed"), ("h3", "error"), ("", "unschedulable")
    ]  # fmt: skip
    assert rows["s.x86_64.vtd-a"]["artifacts"] == "results/h1/s.x86_64.vtd-a"
    assert rows["s.x86_64.vtd-a"]["qemu_version"] == "10.0.2"
    assert "lost mid-cell" in rows["s.arm64.smmuv3-c"]["reason"]
    page = html_path.read_text()
    assert "<th>host</th>" in page and "<td>h3</td>" in page
    assert "class='unschedulable'" in page
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["lost_hosts"] == {"h3": "lost"}
    assert ET.parse(tmp_path / "results.xml").getroot().tag == "testsuites"


def test_exit_status() -> None:
    ok = CellResult(_variant("a"), "passed")
    skip = CellResult(_variant("b"), "skipped", "no QEMU property")
    assert exit_status([ok, skip], {}) == 0
    assert exit_status([ok], {"h": "lost"}) == 1
    for bad in ("failed", "error", "unschedulable"):
        assert exit_status([ok, CellResult(_variant("c"), bad)], {}) == 1


def test_archive_round_trip_and_unsafe_archives(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "console.log").write_text("hello\n")
    (src / "sub" / "qmp.jsonl").write_bytes(b"\x00\x01")
    (src / "link").symlink_to("/etc/passwd")
    dest = tmp_path / "dest"
    unpack(archive(src), dest)
    assert (dest / "console.log").read_text() == "hello\n"
    assert (dest / "sub" / "qmp.jsonl").read_bytes() == b"\x00\x01"
    assert not (dest / "link").exists()  # symlinks are not archived
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(HarnessError, match="cell archive"):
        unpack(evil.getvalue(), tmp_path / "evil")
    assert not (tmp_path / "escaped.txt").exists()
    with pytest.raises(HarnessError):
        unpack(b"not a tar", tmp_path / "junk")


def test_cell_dir_names_are_safe(tmp_path: Path) -> None:
    assert cell_dir(tmp_path, "../h", "a/b") == tmp_path / "results" / "_h" / "a_b"
    assert cell_dir(tmp_path, "", "c").parent.name == "unscheduled"


def test_version_mismatch_is_one_line() -> None:
    ctl = {"harness": "0.1.0+abc", "distributed": "2026.8.0", "python": "3.11"}
    assert mismatch(ctl, dict(ctl)) is None
    text = mismatch(ctl, {**ctl, "distributed": "2025.1.0"})
    assert text is not None and "\n" not in text
    assert "distributed 2025.1.0 (controller 2026.8.0)" in text and "harness 0" not in text


# --- TLS -------------------------------------------------------------------------------


def test_per_run_tls_admits_only_this_runs_certificates(tmp_path: Path) -> None:
    import dask
    from distributed import Client, Scheduler
    from distributed.security import Security

    from harness.fleet.tls import make_certificates

    certs = make_certificates()
    other = make_certificates()

    async def scenario() -> tuple[str, bool, bool]:
        async with Scheduler(host="127.0.0.1", port=0, protocol="tls", dashboard=False,
                             security=certs.security("scheduler")) as s:  # fmt: skip
            async with Client(s.address, asynchronous=True, security=certs.security()) as c:
                ok = (await c.scheduler.identity())["type"] == "Scheduler"
            refused = False
            try:
                async with Client(s.address, asynchronous=True, security=other.security(),
                                  timeout=3):  # fmt: skip
                    pass
            except (OSError, TimeoutError):
                refused = True
            try:
                async with Client(s.address.replace("tls://", "tcp://"), asynchronous=True,
                                  security=Security(), timeout=3):  # fmt: skip
                    pass
            except (OSError, TimeoutError):
                refused = refused and True
            else:
                refused = False
            return s.address, ok, refused

    with dask.config.set({"temporary-directory": str(tmp_path)}):
        address, ok, refused = asyncio.run(scenario())
    assert address.startswith("tls://127.0.0.1:")
    assert ok
    assert refused
    assert "PRIVATE KEY" in certs.worker_config()["distributed.comm.tls.worker.key"]
    assert certs.ca != other.ca


# --- the whole path on a local fleet, without booting a guest ----------------------------

NO_QEMU_MATRIX = """\
name: no-qemu
accel: kvm
timeout: 60
scenarios: [smoke-vfio-edu]
qemu:
  missing: {x86_64: /nonexistent/qemu-system-x86_64, arm64: /nonexistent/qemu-system-aarch64}
viommus:
  vtd: {options: {flts: {scalable_mode: true, flts: true}}}
  smmuv3: {options: {nested: {stage: nested}}}
"""


def test_local_fleet_runs_routes_and_reports(tmp_path: Path) -> None:
    """A LocalCluster with TLS: the x86_64 cell runs on ``local`` (and errors: its QEMU does
    not exist), the arm64 KVM cell is unschedulable here, and the run exits 1."""
    import subprocess
    import sys

    from harness.host import host_arch
    from harness.qemu.accel import kvm_access_problem, kvm_verdict

    matrix = tmp_path / "m.yaml"
    matrix.write_text(NO_QEMU_MATRIX)
    fleet = tmp_path / "local.yaml"
    fleet.write_text("name: here\nlocal: {slots: 1}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "qualify", "--matrix", str(matrix), "--fleet",
         str(fleet), "--results", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    (run_dir,) = (tmp_path / "out").glob("fleet-here-*")
    rows = {v["arch"]: v for v in json.loads((run_dir / "qualification.json").read_text())[
        "variants"]}  # fmt: skip
    arm = rows["arm64"]
    x86 = rows["x86_64"]
    if host_arch() == "x86_64":
        assert arm["status"] == "unschedulable"
        assert arm["reason"] == "unschedulable: no host has usable KVM for arm64 guests"
        assert arm["host"] == ""
    kvm_here = kvm_access_problem() is None and kvm_verdict(host_arch()) is not False
    if host_arch() == "x86_64" and kvm_here:
        assert (x86["status"], x86["host"]) == ("error", "local")
        assert "/nonexistent/qemu-system-x86_64" in x86["reason"]
        assert (run_dir / "results" / "local" / x86["id"] / "cell.json").is_file()
    elif host_arch() == "x86_64":
        assert x86["status"] == "unschedulable" and "KVM for x86_64" in x86["reason"]
    cases = list(ET.parse(run_dir / "results.xml").getroot().iter("testcase"))
    assert len(cases) == 2 and all(c.find("error") is not None for c in cases)
    assert "unschedulable" in proc.stderr and "cluster up" in proc.stderr


def test_fleet_command_bad_file_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "f.yaml"
    bad.write_text("hosts:\n  - {name: a}\n")
    proc = subprocess.run([sys.executable, "-m", "harness", "fleet", "probe", str(bad)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("harness fleet")]
    assert lines == [f"harness fleet: error: {bad}: hosts[0].address: missing"], proc.stderr


def test_overhead_figures_from_cell_timings() -> None:
    from harness.fleet.run import overhead

    def cell(sub: float, start: float, qemu: float | None, end: float, got: float) -> CellResult:
        timings = {"submitted": sub, "started": start, "qemu_started": qemu, "ended": end}
        return CellResult(_variant(f"c{sub}"), "passed", info={"timings": timings}, received=got)

    figures = overhead([cell(0, 1, 3, 10, 10.5), cell(0, 2, 6, 20, 20.1), cell(0, 3, None, 5, 6)])
    assert figures["dispatch_s"] == 2 and figures["dispatch_max_s"] == 3
    assert figures["task_to_qemu_s"] == 3 and figures["task_to_qemu_max_s"] == 4
    assert figures["submit_to_qemu_s"] == 4.5
    assert figures["end_to_result_s"] == 0.5 and figures["end_to_result_max_s"] == 1
    assert overhead([CellResult(_variant("x"), "error", "lost")]) == {}


def test_image_copy_is_checked_by_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.fleet.deploy import DeployError, image_tar, manifest, receive

    src = tmp_path / "src" / "kernel" / "x86_64-0123456789abcdef"
    src.mkdir(parents=True)
    (src / "bzImage").write_bytes(b"kernel" * 1000)
    (src / "meta.json").write_text("{}")
    monkeypatch.setenv("VIOMMU_IMAGE_CACHE", str(tmp_path / "host-cache"))
    digests = manifest(src)
    assert sorted(digests) == ["bzImage", "meta.json"]
    receive("kernel", src.name, io.BytesIO(image_tar(src, digests)))
    final = tmp_path / "host-cache" / "kernel" / src.name
    assert manifest(final) == digests and not (final / ".fleet-manifest.json").exists()
    # a copy that arrives with other contents is refused and leaves nothing behind
    tampered = {**digests, "bzImage": "0" * 64}
    with pytest.raises(DeployError, match="sha256 mismatch after copy"):
        receive("kernel", "x86_64-fedcba9876543210", io.BytesIO(image_tar(src, tampered)))
    assert sorted(p.name for p in final.parent.iterdir()) == [src.name]
    with pytest.raises(DeployError, match="bad image artifact"):
        receive("../etc", "x", io.BytesIO(b""))
