"""Bad input gets a clear error naming the problem, never a stray exception.

- machine descriptions (``Machine`` and ``machine_from_dict``): ``ConfigError`` naming
  the field and what was wrong;
- unknown scenario names: ``ConfigError`` listing the known ones, from the registry, the
  runner (before anything boots) and the CLI;
- corrupt repro bundles: ``BundleError`` naming the file and the problem;
- agent replies that break the protocol, from a fake guest on the other end of a socket
  pair: ``AgentProtocolError`` (or ``AgentConnectionLostError`` for a channel that dies),
  after which the agent refuses further calls.
"""

from __future__ import annotations

import copy
import json
import select
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guests.agent.protocol import ProtocolError, decode, encode
from harness import repro
from harness.agent import client
from harness.agent.client import (
    Agent,
    AgentConnectionLostError,
    AgentProtocolError,
    AgentRemoteError,
)
from harness.errors import ConfigError
from harness.profiles import make_devices, make_viommu
from harness.qemu.description import IntelIommu, Machine, SmmuV3, machine_from_dict

pytestmark = pytest.mark.tier0

FUZZ = settings(max_examples=200, deadline=None, database=None)


# -- machine descriptions ------------------------------------------------------------------


def good_description() -> dict[str, Any]:
    machine = Machine(
        arch="x86_64",
        kernel=Path("/images/bzImage"),
        initrd=Path("/images/initramfs.cpio"),
        viommu=make_viommu("vtd"),
        devices=make_devices(["edu"]),
    )
    return machine.describe()


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.__setitem__(key, value)


MALFORMED = [
    ("not an object", lambda d: d.clear() or d.update(_list=1), "machine._list: unknown field"),
    ("unknown field", _set("cpus", 4), "machine.cpus: unknown field of Machine"),
    ("missing arch", lambda d: d.pop("arch"), "missing 1 required positional argument: 'arch'"),
    ("bad arch", _set("arch", "riscv64"), "arch='riscv64': expected one of x86_64, arm64"),
    ("arch not a string", _set("arch", 5), "arch=5: expected one of"),
    ("bad accel", _set("accel", "hvf"), "accel='hvf': expected one of kvm, tcg, auto"),
    ("memory a string", _set("memory_mb", "lots"), "memory_mb='lots': expected an integer"),
    ("memory a float", _set("memory_mb", 2048.5), "memory_mb=2048.5: expected an integer"),
    ("memory a bool", _set("memory_mb", True), "memory_mb=True: expected an integer"),
    ("memory too small", _set("memory_mb", 16), "memory_mb=16: expected 64..65536"),
    ("smp null", _set("smp", None), "smp=None: expected an integer"),
    ("smp zero", _set("smp", 0), "smp=0: expected 1..64"),
    ("append null", _set("append", None), "append=None: expected a string"),
    ("kernel a number", _set("kernel", 5), "machine.kernel=5: expected a path string"),
    ("extra_args a string", _set("extra_args", "-device foo"),
     "machine.extra_args='-device foo': expected a list"),
    ("extra_args numbers", _set("extra_args", [1, 2]),
     "extra_args=(1, 2): expected a list of strings"),
    ("devices a string", _set("devices", "edu"), "machine.devices='edu': expected a list"),
    ("device without type", _set("devices", [{"id": "edu0"}]),
     "machine.devices[0]: unknown or missing 'type'"),
    ("device of unknown type", _set("devices", [{"type": "Floppy"}]),
     "machine.devices[0]: unknown or missing 'type'"),
    ("device unknown field", _set("devices", [{"type": "Edu", "irq": 5}]),
     "machine.devices[0].irq: unknown field of Edu"),
    ("device id a number", _set("devices", [{"type": "Edu", "id": 7}]),
     "edu.id=7: expected a string"),
    ("device id invalid", _set("devices", [{"type": "Edu", "id": "edu 0"}]),
     "edu.id: 'edu 0' is not a valid QEMU id"),
    ("duplicate ids", _set("devices", [{"type": "Edu"}, {"type": "Edu"}]),
     "device id 'edu0' is used twice"),
    ("two NICs", _set("devices", [{"type": "UserNic"}, {"type": "UserNic", "id": "n1"}]),
     "only one user-mode NIC"),
    ("dma mask a string", _set("devices", [{"type": "Edu", "dma_mask": "x"}]),
     "edu.dma_mask='x': expected an integer or null"),
    ("vfio host missing", _set("devices", [{"type": "VfioPci"}]), "vfio-pci: host BDF is required"),
    ("vfio host garbage", _set("devices", [{"type": "VfioPci", "host": "zz"}]),
     "vfio-pci host='zz': not a PCI address"),
    ("viommu of unknown type", _set("viommu", {"type": "AmdIommu"}),
     "machine.viommu: unknown or missing 'type'"),
    ("viommu not an object", _set("viommu", "vtd"), "machine.viommu: unknown or missing 'type'"),
    ("aw_bits a string", _set("viommu", {"type": "IntelIommu", "aw_bits": "48"}),
     "intel-iommu.aw_bits='48': expected an integer or null"),
    ("aw_bits 64", _set("viommu", {"type": "IntelIommu", "aw_bits": 64}),
     "intel-iommu aw-bits=64: QEMU supports 39 or 48"),
    ("flts a string", _set("viommu", {"type": "IntelIommu", "flts": "yes"}),
     "intel-iommu.flts='yes': expected a boolean or null"),
    ("flts without scalable mode", _set("viommu", {"type": "IntelIommu", "flts": True}),
     "intel-iommu x-flts=on needs x-scalable-mode=on"),
    ("smmuv3 on x86", _set("viommu", {"type": "SmmuV3"}), "viommu=smmuv3 needs arch=arm64"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_machine_description(
    mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    description = good_description()
    mutate(description)
    with pytest.raises(ConfigError) as info:
        machine_from_dict(description)
    assert message in str(info.value)


@pytest.mark.parametrize("value", [None, [], "machine", 5])
def test_machine_description_not_an_object(value: Any) -> None:
    with pytest.raises(ConfigError, match="machine: expected an object"):
        machine_from_dict(value)


def test_good_description_round_trips() -> None:
    description = good_description()
    assert machine_from_dict(description).describe() == description


def test_direct_construction_is_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"memory_mb='2G': expected an integer"):
        Machine(arch="x86_64", kernel=Path("k"), initrd=Path("i"), memory_mb="2G")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"arm-smmuv3.stage=1: expected one of"):
        SmmuV3(stage=1).validate()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"intel-iommu.caching_mode=1: expected a boolean"):
        IntelIommu(caching_mode=1).validate()  # type: ignore[arg-type]


scalars = st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats()
json_values = st.recursive(
    scalars | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@FUZZ
@given(data=st.data())
def test_random_field_values_give_config_errors(data: st.DataObject) -> None:
    """Any JSON value in any field (top level, vIOMMU, device) is accepted or refused cleanly."""
    description = good_description()
    target = data.draw(st.sampled_from(["machine", "viommu", "device"]))
    holder = {
        "machine": description,
        "viommu": description["viommu"],
        "device": description["devices"][0],
    }[target]
    key = data.draw(st.sampled_from(sorted(holder)))
    holder[key] = data.draw(json_values)
    try:
        machine_from_dict(description)
    except ConfigError as exc:
        assert str(exc)
    except Exception as exc:
        raise AssertionError(
            f"{target}.{key}={holder[key]!r}: {type(exc).__name__}: {exc}"
        ) from exc


# -- unknown scenarios ---------------------------------------------------------------------


def test_unknown_scenario_lists_known_ones() -> None:
    from harness.scenarios.base import get

    with pytest.raises(ConfigError) as info:
        get("no-such-scenario")
    assert "unknown scenario 'no-such-scenario'; known: " in str(info.value)
    assert "smoke-vfio-edu" in str(info.value)


def test_runner_refuses_unknown_scenario_before_booting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from harness.scenarios import runner

    def no_boot(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an unknown scenario must not get as far as booting")

    monkeypatch.setattr(runner, "prepare_machine", no_boot)
    with pytest.raises(ConfigError, match="unknown scenario 'typo-scenario'"):
        runner.run_scenario("typo-scenario", "x86_64", artifacts=tmp_path)
    assert not list(tmp_path.iterdir())


def test_scenario_on_the_wrong_arch() -> None:
    from harness.scenarios.base import get
    from harness.scenarios.runner import prepare_machine

    scenario = get("smoke-vfio-edu")
    with pytest.raises(ConfigError, match="runs on x86_64, arm64, not riscv64"):
        prepare_machine(scenario, "riscv64")


def test_cli_unknown_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    status = main(["run", "no-such-scenario", "--arch", "x86_64"])
    assert status != 0
    err = capsys.readouterr().err
    assert "unknown scenario 'no-such-scenario'" in err
    assert len(err.strip().splitlines()) == 1


# -- corrupt repro bundles -----------------------------------------------------------------


@pytest.fixture
def bundle_text(tmp_path: Path) -> str:
    """A valid test bundle's JSON text (files need not exist to parse it)."""
    machine = machine_from_dict(good_description())
    record = {
        "name": "guest",
        "machine": machine.describe(),
        "ready_marker": "VIOMMU-HARNESS-READY",
        "qemu": {"path": "/usr/bin/qemu-system-x86_64", "sha256": None},
        "kernel": {"path": str(machine.kernel), "sha256": "00" * 32},
        "initrd": {"path": str(machine.initrd), "sha256": None},
        "image": {"key": "k"},
        "accel_used": "tcg",
        "artifacts": str(tmp_path),
    }
    bundle = repro.failed_test_bundle(
        nodeid="tests/vm/test_x.py::test_y", rootdir=tmp_path, options=["-p", "x"],
        seed=7, guests=[record], error="boom",
    )  # fmt: skip
    text = json.dumps(bundle)
    repro.parse_bundle(json.loads(text), tmp_path / "repro.json")  # it is valid
    return text


def _bundle_error(tmp_path: Path, content: bytes) -> str:
    path = tmp_path / "repro.json"
    path.write_bytes(content)
    with pytest.raises(repro.BundleError) as info:
        repro.read_bundle(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert "\n" not in message
    return message


CORRUPTIONS = [
    ("empty file", lambda t: b"", "not valid JSON"),
    ("truncated", lambda t: t[: len(t) // 2].encode(), "not valid JSON"),
    ("binary garbage", lambda t: b"\xff\xfe\x00\x01", "cannot read"),
    ("deeply nested", lambda t: b"[" * 100_000, "not valid JSON (nested too deeply)"),
    ("a list", lambda t: b"[1, 2]", "expected a JSON object, got list"),
    ("wrong format", lambda t: t.replace("viommu-harness-repro/1", "other/9").encode(),
     "unsupported format 'other/9'"),
    ("wrong kind", lambda t: t.replace('"kind": "test"', '"kind": "movie"').encode(),
     "'kind': 'movie' is not one of scenario, test"),
    ("seed a string", lambda t: t.replace('"seed": 7', '"seed": "7"').encode(),
     "'seed': expected an integer, got str"),
    ("no guests", lambda t: json.dumps({**json.loads(t), "guests": []}).encode(),
     "'guests': empty"),
    ("bad machine", lambda t: t.replace('"memory_mb": 2048', '"memory_mb": "2G"').encode(),
     "guests[0].machine: memory_mb='2G': expected an integer"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("corrupt", "message"), [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS]
)
def test_corrupt_bundle(
    tmp_path: Path, bundle_text: str, corrupt: Callable[[str], bytes], message: str
) -> None:
    assert message in _bundle_error(tmp_path, corrupt(bundle_text))


def test_missing_bundle(tmp_path: Path) -> None:
    with pytest.raises(repro.BundleError, match="no such file"):
        repro.read_bundle(tmp_path / "nothing" / "repro.json")


def _drop_paths(value: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{prefix}{key}"
            yield from _drop_paths(item, f"{prefix}{key}/")


@FUZZ
@given(data=st.data())
def test_random_bundle_damage(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject,
                              ) -> None:  # fmt: skip
    """Cut, flip bytes, drop keys or change values: a BundleError, or a bundle that parses."""
    machine = machine_from_dict(good_description())
    record = {"name": "g", "machine": machine.describe(), "ready_marker": "R",
              "qemu": {"path": "q", "sha256": None}, "kernel": {"path": "k", "sha256": None},
              "initrd": {"path": "i", "sha256": None}}  # fmt: skip
    bundle = repro.failed_test_bundle(nodeid="t", rootdir=Path("/src"), options=[], seed=1,
                                      guests=[record], error=None)  # fmt: skip
    how = data.draw(st.sampled_from(["cut", "flip", "drop", "replace"]))
    if how in ("cut", "flip"):
        raw = bytearray(json.dumps(bundle).encode())
        at = data.draw(st.integers(0, len(raw) - 1))
        if how == "cut":
            raw = raw[:at]
        else:
            raw[at] = data.draw(st.integers(0, 255))
        content = bytes(raw)
    else:
        damaged = copy.deepcopy(bundle)
        where = data.draw(st.sampled_from(sorted(_drop_paths(damaged))))
        *parents, leaf = where.split("/")
        holder = damaged
        for part in parents:
            holder = holder[part]
        if how == "drop":
            del holder[leaf]
        else:
            holder[leaf] = data.draw(json_values)
        content = json.dumps(damaged).encode()
    bundle_file = tmp_path_factory.mktemp("bundle") / "repro.json"
    bundle_file.write_bytes(content)
    try:
        repro.read_bundle(bundle_file)
    except repro.BundleError as exc:
        assert str(exc).startswith(str(bundle_file))
    except Exception as exc:
        raise AssertionError(f"{how}: {type(exc).__name__}: {exc}") from exc


# -- agent replies that break the protocol -------------------------------------------------


class FakeChannel:
    """The paramiko Channel calls the agent client makes, over one end of a socket pair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False
        self.eof_received = False
        self.command = ""

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def exec_command(self, command: str) -> None:
        self.command = command

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_ready(self) -> bool:
        return bool(select.select([self.sock], [], [], 0)[0]) and not self.eof_received

    def recv(self, size: int) -> bytes:
        data = self.sock.recv(size)
        self.eof_received = not data
        return data

    def recv_stderr(self, size: int) -> bytes:
        return b""

    def fileno(self) -> int:
        return self.sock.fileno()

    def exit_status_ready(self) -> bool:
        return self.eof_received

    def recv_exit_status(self) -> int:
        return 1

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class FakeTransport:
    def __init__(self, channel: FakeChannel) -> None:
        self.channel = channel

    def open_session(self, timeout: float | None = None) -> FakeChannel:
        return self.channel

    def is_active(self) -> bool:
        return True


class FakeSSH:
    def __init__(self, channel: FakeChannel) -> None:
        self.transport = FakeTransport(channel)

    def get_transport(self) -> FakeTransport:
        return self.transport

    def close(self) -> None:
        pass


Reply = Callable[[dict[str, Any]], bytes | None]
HELLO: Reply = lambda req: encode(  # noqa: E731
    {"id": req["id"], "result": {"protocol": 1, "modules": ["system"]}}
)


@pytest.fixture
def fake_agent() -> Iterator[Callable[..., Agent]]:
    """``fake_agent(*replies)``: an Agent whose guest answers each request with the next reply.

    A reply is the raw bytes to send back (``None``: close the channel instead).  The
    first reply answers ``agent.hello``.
    """
    agents: list[Agent] = []
    threads: list[threading.Thread] = []

    def make(*replies: Reply) -> Agent:
        host, guest = socket.socketpair()

        def serve() -> None:
            with guest, guest.makefile("rb") as stream:
                size = int(stream.readline().split()[0])
                assert len(stream.read(size)) == size  # the code bundle
                for reply in replies:
                    line = stream.readline()
                    if not line:
                        return
                    data = reply(json.loads(line))
                    if data is None:
                        return
                    guest.sendall(data)
                    if getattr(reply, "close_after", False):
                        return
                stream.read()  # keep the channel open until the host closes it

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        agent = Agent(FakeSSH(FakeChannel(host)))  # type: ignore[arg-type]
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.close()
    for thread in threads:
        thread.join(5)


def _raw(data: bytes) -> Reply:
    return lambda req: data


def _then_close(reply: Reply) -> Reply:
    """``reply``, after which the guest closes the channel."""

    def send(req: dict[str, Any]) -> bytes | None:
        return reply(req)

    send.close_after = True  # type: ignore[attr-defined]
    return send


def _reply(**fields: Any) -> Reply:
    return lambda req: encode({"id": req["id"], **fields})


BAD_REPLIES = [
    ("not JSON", _raw(b"hello there\n"), AgentProtocolError, "not JSON"),
    ("not UTF-8", _raw(b"\xff\xfe{}\n"), AgentProtocolError, "not JSON"),
    ("a list", _raw(b"[1, 2]\n"), AgentProtocolError, "expected an object, got list"),
    ("wrong id", lambda req: encode({"id": req["id"] + 40, "result": 1}), AgentProtocolError,
     "reply id 42 for request 2"),
    ("no result", _reply(status="ok"), AgentProtocolError, "reply has neither result nor error"),
    ("error not an object", _reply(error="oops"), AgentProtocolError, "malformed error 'oops'"),
    ("bad base64", lambda req: b'{"id": %d, "result": {"__b64__": "QQ"}}\n' % req["id"],
     AgentProtocolError, "not JSON"),
    ("truncated then closed", _then_close(_raw(b'{"id": 2, "res')), AgentConnectionLostError,
     "system.info: the agent's channel closed; the agent exited with status 1"),
    ("channel closed", lambda req: None, AgentConnectionLostError,
     "system.info: the agent's channel closed"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("reply", "error", "message"), [b[1:] for b in BAD_REPLIES], ids=[b[0] for b in BAD_REPLIES]
)
def test_bad_agent_reply(
    fake_agent: Callable[..., Agent], reply: Reply, error: type[Exception], message: str
) -> None:
    agent = fake_agent(HELLO, reply)
    agent.start()
    assert agent.modules == ["system"]
    with pytest.raises(error) as info:
        agent.call("system.info", timeout=5)
    assert message in str(info.value)
    # the session is not trusted any more: the next call fails at once, saying why
    with pytest.raises(AgentConnectionLostError, match="agent unusable"):
        agent.call("system.info", timeout=5)


def test_remote_error_is_not_a_protocol_error(fake_agent: Callable[..., Agent]) -> None:
    error = {"type": "FileNotFoundError", "message": "nope", "errno": 2, "traceback": "tb"}
    agent = fake_agent(HELLO, _reply(error=error), _reply(result=3))
    agent.start()
    with pytest.raises(AgentRemoteError) as info:
        agent.call("system.read_file", path="/x")
    assert (info.value.remote_type, info.value.errno) == ("FileNotFoundError", 2)
    assert agent.call("system.info") == 3  # a remote error leaves the session usable


def test_silent_agent_times_out(fake_agent: Callable[..., Agent]) -> None:
    agent = fake_agent(HELLO, _raw(b""))
    agent.start()
    with pytest.raises(AgentConnectionLostError, match=r"system.sleep: no reply within 0.5s"):
        agent.call("system.sleep", timeout=0.5, seconds=10)


@pytest.mark.parametrize(
    ("hello", "message"),
    [
        (_reply(result=5), "agent.hello: expected protocol and modules"),
        (_reply(result={"protocol": 1}), "agent.hello: expected protocol and modules"),
        (_reply(result={"protocol": 9, "modules": []}), "speaks protocol 9, this host 1"),
    ],
    ids=["not an object", "no modules", "other protocol"],
)
def test_bad_hello(fake_agent: Callable[..., Agent], hello: Reply, message: str) -> None:
    agent = fake_agent(hello)
    with pytest.raises(AgentProtocolError, match=message):
        agent.start()


def test_endless_line_is_refused(
    fake_agent: Callable[..., Agent], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "MAX_LINE", 1000)
    agent = fake_agent(HELLO, _raw(b"x" * 5000))
    agent.start()
    with pytest.raises(AgentProtocolError, match="longer than 1000 bytes without a newline"):
        agent.call("system.info", timeout=5)


@FUZZ
@given(line=st.binary(max_size=200))
def test_protocol_decode_random_bytes(line: bytes) -> None:
    try:
        message = decode(line)
    except ProtocolError as exc:
        assert str(exc)
    else:
        assert isinstance(message, dict)


# -- QEMU binaries that are not QEMU -------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (None, "cannot run it"),
        ("#!/bin/sh\nexit 3\n", "QEMU exited with status 3"),
    ],
    ids=["not executable", "exits at once"],
)
def test_probe_of_a_broken_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str | None, message: str
) -> None:
    """A clear HarnessError at once, and no run directory left behind."""
    from harness.errors import HarnessError
    from harness.qemu.probe import _probe_live

    runtime = tmp_path / "runtime"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    binary = tmp_path / "qemu-system-x86_64"
    binary.write_text(script or "")
    binary.chmod(0o755 if script else 0o644)
    with pytest.raises(HarnessError, match=f"probing {binary} failed: .*{message}"):
        _probe_live(str(binary))
    assert not list(runtime.iterdir())
