"""``harness qualify --fleet`` on three simulated hosts: network namespaces with their own sshd.

The fixture makes, per run, a bridge in the root namespace holding a private /24 and
three namespaces, each joined to the bridge by a veth pair, with one address on its veth
and no default route (nothing is forwarded out: the addresses exist only on links this
test creates).  Each namespace runs Debian's ``sshd`` with its own config, host key and
port, key-only auth with a per-run client key, and gets its own deploy prefix (the
"hosts" share this file system) through ``harness fleet deploy``.  Then:

- ``harness fleet probe`` prints the three hosts' capability table, and refuses a host
  whose installed harness differs from the controller's in one line;
- the three-cell matrix ``tests/qualification/fleet-ci.yaml`` runs on a one-host fleet
  (all cells there, one at a time) and across the three: every cell passes on a recorded
  host, cells run at once on different hosts, the merged JUnit / report have a host
  column, artifacts are unpacked under ``results/<host>/<cell>/``;
- Ctrl-C (SIGINT) on the controller while cells run tears everything down on every host;
- one host's processes are all SIGKILLed while its cell's QEMU runs: exactly that cell is
  an *error* naming the host, the others pass, the exit status is 1, and nothing is left
  (no QEMU, worker or SSH session on any host or the controller, no scratch directory on
  the survivors, none after the sweep on the killed one).

Namespaces, veth links, the bridge and the sshd processes are removed afterwards.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = [pytest.mark.x86_64, pytest.mark.arm64]

ROOT = Path(__file__).resolve().parents[2]
MATRIX = ROOT / "tests" / "qualification" / "fleet-ci.yaml"
HOSTS = 3
SSH_PORT = 2222
PYTHON = [sys.executable, "-m", "harness"]


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


@dataclass
class SimHost:
    """One simulated host: its namespace, address, sshd and deploy prefix."""

    name: str
    netns: str
    address: str
    dir: Path
    sshd: subprocess.Popen[bytes] | None = None

    @property
    def prefix(self) -> Path:
        return self.dir / "prefix"

    @property
    def scratch(self) -> Path:
        return self.dir / "scratch"

    def pids(self) -> list[int]:
        """Every process in the host's namespace."""
        out = _run("ip", "netns", "pids", self.netns, check=False).stdout
        return [int(p) for p in out.split()]

    def commands(self) -> list[str]:
        names = []
        for pid in self.pids():
            with contextlib.suppress(OSError):
                names.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                             .decode(errors="replace").strip())  # fmt: skip
        return names


@dataclass
class SimFleet:
    """Three namespaces behind a bridge, each with an sshd; the fleet file to reach them."""

    root: Path
    tag: str = field(default_factory=lambda: os.urandom(2).hex())
    subnet: str = ""
    bridge: str = ""
    hosts: list[SimHost] = field(default_factory=list)
    made_run_sshd: bool = False

    @property
    def checkout(self) -> Path:
        """A snapshot of this checkout the controller runs (and deploys) from: others may
        edit the work tree meanwhile, and any edit makes the hosts' code differ."""
        return self.root / "checkout"

    def snapshot(self) -> None:
        self.checkout.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, self.checkout / name)
        for name in ("harness", "guests", "images"):
            shutil.copytree(ROOT / name, self.checkout / name,
                            ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip

    def cli(self) -> dict[str, object]:
        """subprocess keyword arguments running ``python -m harness`` from the snapshot."""
        env = dict(os.environ, PYTHONPATH=str(self.checkout))
        return {"cwd": self.checkout, "env": env}

    def harness(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """``python -m harness ARGS`` from the snapshot."""
        return subprocess.run([*PYTHON, *args], capture_output=True, text=True, check=check,
                              **self.cli())  # type: ignore[call-overload]  # fmt: skip

    @property
    def controller(self) -> str:
        return f"{self.subnet}.1"

    def _free_subnet(self) -> str:
        used = _run("ip", "-4", "-o", "addr").stdout + _run("ip", "-4", "route").stdout
        rng = random.Random()
        for _ in range(100):
            candidate = f"10.{rng.randrange(200, 250)}.{rng.randrange(0, 255)}"
            if f"{candidate}." not in used:
                return candidate
        raise RuntimeError("no free 10.x.y.0/24 for the simulated hosts")

    def up(self) -> None:
        """Make the bridge, namespaces, veth links, keys and sshds."""
        self.subnet = self._free_subnet()
        self.bridge = f"vhbr{self.tag}"
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.controller}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        key = self.root / "id_ed25519"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet-test", "-f", str(key))
        if not Path("/run/sshd").is_dir():
            Path("/run/sshd").mkdir(mode=0o755, parents=True)
            self.made_run_sshd = True
        known = []
        for i in range(HOSTS):
            name = f"sim{i + 1}"
            netns = f"vh{self.tag}-{name}"
            host = SimHost(name, netns, f"{self.subnet}.{11 + i}", self.root / name)
            host.dir.mkdir(mode=0o700)
            self.hosts.append(host)
            outer, inner = f"vh{self.tag}o{i}", f"vh{self.tag}i{i}"
            _run("ip", "netns", "add", netns)
            _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            _run("ip", "link", "set", outer, "master", self.bridge, "up")
            _run("ip", "link", "set", inner, "netns", netns)
            for cmd in (["ip", "link", "set", "lo", "up"],
                        ["ip", "addr", "add", f"{host.address}/24", "dev", inner],
                        ["ip", "link", "set", inner, "up"]):  # fmt: skip
                _run("ip", "netns", "exec", netns, *cmd)
            hostkey = host.dir / "ssh_host_ed25519_key"
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey))
            (host.dir / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
            config = host.dir / "sshd_config"
            config.write_text(
                f"Port {SSH_PORT}\nListenAddress {host.address}\nHostKey {hostkey}\n"
                f"PidFile {host.dir}/sshd.pid\nAuthorizedKeysFile {host.dir}/authorized_keys\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nUsePAM no\n"
                "StrictModes no\nX11Forwarding no\nAllowTcpForwarding no\n"
                "AllowAgentForwarding no\nPermitTunnel no\nMaxSessions 20\n"
                "Subsystem sftp internal-sftp\n"
            )
            host.sshd = subprocess.Popen(
                ["ip", "netns", "exec", netns, "/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                stdout=subprocess.DEVNULL, stderr=open(host.dir / "sshd.log", "wb"),  # noqa: SIM115
            )  # fmt: skip
            pub = Path(f"{hostkey}.pub").read_text().split()
            known.append(f"[{host.address}]:{SSH_PORT} {pub[0]} {pub[1]}")
        (self.root / "known_hosts").write_text("\n".join(known) + "\n")
        deadline = time.monotonic() + 20
        for host in self.hosts:
            while True:
                ok = _run("ip", "netns", "exec", host.netns, "bash", "-c",
                          f"exec 3<>/dev/tcp/{host.address}/{SSH_PORT}", check=False)  # fmt: skip
                if ok.returncode == 0 or host.sshd is None or host.sshd.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd of {host.name} never listened")
                time.sleep(0.1)

    def fleet_file(self, retries: int = 0) -> Path:
        """The fleet YAML for these hosts."""
        lines = [f"name: sim{self.tag}", f"scheduler: {self.controller}",
                 f"retries: {retries}", f"known_hosts: {self.root / 'known_hosts'}",
                 "connect_timeout: 60", "hosts:"]  # fmt: skip
        for h in self.hosts:
            lines += [
                f"  - name: {h.name}", f"    address: {h.address}", f"    port: {SSH_PORT}",
                "    user: root", f"    key: {self.root / 'id_ed25519'}",
                f"    prefix: {h.prefix}", f"    scratch: {h.scratch}", "    labels: [sim]",
            ]  # fmt: skip
        path = self.root / "fleet.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def kill_host(self, host: SimHost) -> None:
        """SIGKILL every process of the host (its sshd, sessions, worker, QEMU)."""
        for pid in host.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def restart_sshd(self, host: SimHost) -> None:
        if host.sshd is not None:
            host.sshd.wait(5)
        host.sshd = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, "/usr/sbin/sshd", "-D", "-e", "-f",
             str(host.dir / "sshd_config")], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def down(self) -> None:
        """Remove everything ``up`` made (idempotent)."""
        for i, host in enumerate(self.hosts):
            for pid in host.pids():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            if host.sshd is not None:
                with contextlib.suppress(Exception):
                    host.sshd.wait(5)
            _run("ip", "link", "del", f"vh{self.tag}o{i}", check=False)  # and its peer
            _run("ip", "netns", "del", host.netns, check=False)
        _run("ip", "link", "del", self.bridge, check=False)
        if self.made_run_sshd:
            with contextlib.suppress(OSError):
                Path("/run/sshd").rmdir()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def simulated_fleet(deploy: bool = True) -> Iterator[SimFleet]:
    """Three simulated hosts, deployed; everything removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="viommu-simfleet-"))
    fleet = SimFleet(root)
    try:
        fleet.snapshot()
        fleet.up()
        path = fleet.fleet_file()
        if deploy:
            out = fleet.harness("fleet", "deploy", str(path), "--arch", "x86_64", "--arch",
                                "arm64")  # fmt: skip
            if out.returncode != 0:
                raise RuntimeError(f"fleet deploy failed: {out.stderr.strip()[-2000:]}")
        yield fleet
    finally:
        fleet.down()


def _skip_unless_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for tool in ("ip", "/usr/sbin/sshd", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (scripts/setup.sh installs openssh-server)")
    from harness import images
    from harness.errors import HarnessError

    for arch in ("x86_64", "arm64"):
        try:
            images.lookup(arch)
        except HarnessError as exc:
            pytest.skip(f"no {arch} guest image: {exc}")


@pytest.fixture(scope="module")
def sim_fleet() -> Iterator[SimFleet]:
    _skip_unless_possible()
    with simulated_fleet() as fleet:
        yield fleet


def _links_gone(fleet: SimFleet) -> bool:
    links = _run("ip", "-o", "link").stdout
    netns = _run("ip", "netns", "list").stdout
    return f"vh{fleet.tag}" not in links and f"vh{fleet.tag}-" not in netns


def _assert_nothing_left(fleet: SimFleet, hosts: list[SimHost]) -> None:
    """No process but the sshd listener on ``hosts``; no fleet process or cell dir here."""
    for host in hosts:
        assert host.sshd is not None
        listener = [str(host.sshd.pid)]
        left = [c for c in host.commands() if "sshd" not in c or "-D" not in c]
        assert left == [], f"{host.name} still runs {left}"
        assert len(host.pids()) <= 2, f"{host.name}: {host.commands()}"  # ip netns exec + sshd
        assert listener
        scratch = list(host.scratch.glob("*")) if host.scratch.exists() else []
        assert scratch == [], f"{host.name} scratch left: {scratch}"
    ps = _run("ps", "-eo", "pid,args").stdout
    assert "harness.fleet.worker" not in ps
    for line in ps.splitlines():
        assert not ("qemu-system" in line and str(fleet.root) in line), line


def _eventually_nothing_left(fleet: SimFleet, hosts: list[SimHost], bound: float = 10.0) -> None:
    """``_assert_nothing_left`` within ``bound`` seconds (workers clean up, then exit)."""
    deadline = time.monotonic() + bound
    while True:
        try:
            _assert_nothing_left(fleet, hosts)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _qualify(fleet: SimFleet, results: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*PYTHON, "qualify", "--matrix", str(MATRIX), "--fleet", str(fleet.root / "fleet.yaml"),
         "--results", str(results), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **fleet.cli(),  # type: ignore[call-overload]
    )  # fmt: skip


def _report(results: Path) -> tuple[Path, dict[str, dict[str, object]]]:
    (run_dir,) = list(results.glob("fleet-*"))
    data = json.loads((run_dir / "qualification.json").read_text())
    return run_dir, {v["id"]: v for v in data["variants"]}


def test_probe_prints_each_hosts_capabilities(sim_fleet: SimFleet) -> None:
    out = sim_fleet.harness("fleet", "probe", str(sim_fleet.root / "fleet.yaml"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["host", "arch", "kernel"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert sorted(rows) == ["sim1", "sim2", "sim3"]
    for row in rows.values():
        assert row[1] == os.uname().machine.replace("aarch64", "arm64")
        assert row[-1] == "sim"  # the fleet file's label
    js = sim_fleet.harness("fleet", "probe", str(sim_fleet.root / "fleet.yaml"), "--json",
                           check=True)  # fmt: skip
    hosts = json.loads(js.stdout)["hosts"]
    assert all(h["resources"]["qemu-x86_64"] == 1 for h in hosts.values())
    _assert_nothing_left(sim_fleet, sim_fleet.hosts)


def test_stale_host_is_refused_in_one_line(sim_fleet: SimFleet) -> None:
    """A host whose installed harness differs from the controller's is down, in one line."""
    host = sim_fleet.hosts[-1]
    site = next(host.prefix.glob("lib/python*/site-packages"))
    module = site / "harness" / "fleet" / "__init__.py"
    original = module.read_text()
    module.write_text(original + "# edited on the host\n")
    try:
        out = sim_fleet.harness("fleet", "probe", str(sim_fleet.root / "fleet.yaml"))
        assert out.returncode == 1
        down = [ln for ln in out.stdout.splitlines() if ln.startswith("down:")]
        assert len(down) == 1 and down[0].startswith(f"down: {host.name}: version mismatch:")
        assert "(controller 0." in down[0], down
        assert sum(ln.startswith("sim") for ln in out.stdout.splitlines()) == HOSTS - 1
    finally:
        module.write_text(original)
    again = sim_fleet.harness("fleet", "probe", str(sim_fleet.root / "fleet.yaml"))
    assert again.returncode == 0, again.stdout + again.stderr


def test_matrix_across_three_hosts(sim_fleet: SimFleet, tmp_path: Path) -> None:
    proc = _qualify(sim_fleet, tmp_path)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    run_dir, rows = _report(tmp_path)
    assert len(rows) == 3 and all(r["status"] == "passed" for r in rows.values()), rows
    hosts = {str(r["host"]) for r in rows.values()}
    assert hosts <= {"sim1", "sim2", "sim3"} and len(hosts) >= 2, rows
    for cell, row in rows.items():
        assert (run_dir / "results" / str(row["host"]) / cell / "console.log").is_file()
        assert (run_dir / "results" / str(row["host"]) / cell / "cell.json").is_file()
    cases = list(ET.parse(run_dir / "results.xml").getroot().iter("testcase"))
    assert sorted(c.get("hostname") or "" for c in cases) == sorted(
        str(r["host"]) for r in rows.values()
    )
    assert "<th>host</th>" in (run_dir / "qualification.html").read_text()
    assert "submit_to_qemu_s" in out + err
    spans = _intervals(run_dir)
    earliest_end = min(e for _, _, e in spans.values())
    assert sum(1 for _, st, _ in spans.values() if st < earliest_end) >= 2  # ran at once
    _assert_nothing_left(sim_fleet, sim_fleet.hosts)


def _intervals(run_dir: Path) -> dict[str, tuple[str, float, float]]:
    """cell -> (host, started, ended) from the cells' timings (``results.json``)."""
    data = json.loads((run_dir / "results.json").read_text())
    out = {}
    for test in data["tests"]:
        board = json.loads(test["whiteboard"])
        t = board["timings"]
        out[test["id"]] = (board["host"], float(t["started"]), float(t["ended"]))
    return out


def test_one_host_runs_its_cells_one_at_a_time(sim_fleet: SimFleet, tmp_path: Path) -> None:
    """A one-host fleet (slots: 1): every cell on that host, never two at once.  The wall
    time and per-cell timings stay in ``results.json`` for the one-vs-three comparison."""
    text = (sim_fleet.root / "fleet.yaml").read_text()
    one = tmp_path / "one.yaml"
    one.write_text(text.split("  - name: sim2")[0])
    start = time.monotonic()
    proc = sim_fleet.harness("qualify", "--matrix", str(MATRIX), "--fleet", str(one),
                             "--results", str(tmp_path / "out"))  # fmt: skip
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir, rows = _report(tmp_path / "out")
    assert {r["host"] for r in rows.values()} == {"sim1"}
    spans = sorted(_intervals(run_dir).values(), key=lambda s: s[1])
    assert len(spans) == 3
    for before, after in itertools.pairwise(spans):
        assert after[1] >= before[2] - 0.5, spans  # the next started after the last ended
    (tmp_path / "wall.json").write_text(json.dumps({"one_host_wall_s": wall}))
    _assert_nothing_left(sim_fleet, sim_fleet.hosts)


def test_ctrl_c_tears_the_cluster_down(sim_fleet: SimFleet, tmp_path: Path) -> None:
    proc = _qualify(sim_fleet, tmp_path)
    assert proc.stderr is not None
    deadline = time.monotonic() + 600
    while not any(any("qemu-system" in c for c in h.commands()) for h in sim_fleet.hosts):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.2)
    running = [h.name for h in sim_fleet.hosts if any("worker" in c for c in h.commands())]
    assert len(running) == HOSTS
    # the scheduler listens only on the fleet file's address (no dashboard, nothing else)
    listening = [ln.split()[3] for ln in _run("ss", "-Hltnp").stdout.splitlines()
                 if f"pid={proc.pid}," in ln]  # fmt: skip
    assert listening and all(a.startswith(f"{sim_fleet.controller}:") for a in listening)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    # each worker sees end of file on its stdin, kills its QEMU, removes its dirs, exits
    _eventually_nothing_left(sim_fleet, sim_fleet.hosts)


def test_host_killed_mid_cell(sim_fleet: SimFleet, tmp_path: Path) -> None:
    proc = _qualify(sim_fleet, tmp_path)
    assert proc.stderr is not None
    victim: SimHost | None = None
    cell = ""
    err_lines: list[str] = []
    deadline = time.monotonic() + 600
    while victim is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        err_lines.append(line)
        if "started on" in line:
            cell = line.split("]", 1)[1].split(":", 1)[0].strip()
            name = line.rsplit(" ", 1)[1].strip()
            victim = next(h for h in sim_fleet.hosts if h.name == name)
    assert victim is not None, "".join(err_lines[-20:])
    while not any("qemu-system" in c for c in victim.commands()):
        assert time.monotonic() < deadline and proc.poll() is None, "".join(err_lines[-20:])
        time.sleep(0.2)
    sim_fleet.kill_host(victim)
    _out, err = proc.communicate(timeout=900)
    assert proc.returncode == 1, err[-3000:]
    run_dir, rows = _report(tmp_path)
    assert victim.name in json.loads((run_dir / "results.json").read_text())["lost_hosts"]
    assert rows[cell]["status"] == "error", rows[cell]
    assert f"host {victim.name} lost mid-cell" in str(rows[cell]["reason"])
    others = {k: v for k, v in rows.items() if k != cell}
    assert all(v["status"] == "passed" for v in others.values()), others
    assert all(v["host"] != victim.name for v in others.values())
    survivors = [h for h in sim_fleet.hosts if h is not victim]
    _eventually_nothing_left(sim_fleet, survivors)
    assert victim.pids() == []
    # the killed host's leftovers go at its next start (any harness command sweeps)
    sim_fleet.restart_sshd(victim)
    time.sleep(1)
    probe = sim_fleet.harness("fleet", "probe", str(sim_fleet.root / "fleet.yaml"))
    assert probe.returncode == 0, probe.stderr
    _assert_nothing_left(sim_fleet, sim_fleet.hosts)
    leftovers = list(victim.scratch.glob("*")) if victim.scratch.exists() else []
    assert leftovers == []


def test_namespaces_links_and_sshd_removed_afterwards() -> None:
    _skip_unless_possible()
    with simulated_fleet(deploy=False) as fleet:
        assert not _links_gone(fleet)
        pids = [h.sshd.pid for h in fleet.hosts if h.sshd is not None]
        assert len(pids) == HOSTS
        routes = _run("ip", "netns", "exec", fleet.hosts[0].netns, "ip", "route").stdout
        assert "default" not in routes and f"{fleet.subnet}.0/24" in routes
    assert _links_gone(fleet)
    assert not fleet.root.exists()
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists()
            or b"sshd" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
