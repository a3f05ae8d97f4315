"""The agent's bootstrap, bundle and RPC server, run locally over pipes (no guest)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guests.agent import server
from guests.agent.protocol import ProtocolError, decode, encode
from harness.agent.bundle import agent_bundle, framed_bundle, read_bundle
from harness.agent.client import BOOTSTRAP

pytestmark = pytest.mark.tier0


class LocalAgent:
    """The real bootstrap and server in a local subprocess, spoken to over pipes."""

    def __init__(self, root: Path) -> None:
        # The bootstrap unpacks into the guest's /run; here into the test's own directory.
        bootstrap = BOOTSTRAP.replace('"/run/viommu-agent"', repr(str(root)))
        assert bootstrap != BOOTSTRAP
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-u", "-c", bootstrap],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(framed_bundle())
        self.proc.stdin.flush()
        self.next_id = 0

    def raw(self, line: bytes) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line)
        self.proc.stdin.flush()
        return decode(self.proc.stdout.readline())

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        reply = self.raw(encode({"id": self.next_id, "method": method, "params": params}))
        assert reply["id"] == self.next_id
        return reply

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(10)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[LocalAgent]:
    a = LocalAgent(tmp_path / "agent")
    yield a
    if a.proc.poll() is None:
        a.proc.kill()
        a.proc.wait()


def test_bundle_is_deterministic_and_pure() -> None:
    data, digest = agent_bundle()
    assert agent_bundle() == (data, digest)
    names = list(read_bundle(data))
    assert "guests/agent/server.py" in names
    assert "harness/errors.py" in names
    assert not any(n.startswith(("harness/qemu/", "harness/agent/")) for n in names)


def test_hello_lists_modules(agent: LocalAgent) -> None:
    result = agent.call("agent.hello")["result"]
    assert result["protocol"] == 1
    assert {"system", "pci", "selfcheck"} <= set(result["modules"])


def test_broken_guest_module_is_reported_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_half.py").write_text("raise ImportError('needs harness.nowhere')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(server, "_MODULES", {**server.BUILTIN_MODULES, "broken": "broken_half"})
    reply = server.handle({"id": 7, "method": "broken.fn", "params": {}})
    assert reply["error"]["type"] == "UnknownMethod"
    assert "needs harness.nowhere" in reply["error"]["message"]
    assert server.handle({"id": 8, "method": "system.info", "params": {}})["result"]["python"]


def test_result_and_bytes_round_trip(agent: LocalAgent) -> None:
    reply = agent.call("system.run", argv=["cat"], input=b"\x00\xffdata")
    assert reply["result"]["status"] == 0
    assert reply["result"]["stdout"] == b"\x00\xffdata"


def test_remote_oserror_carries_errno_and_traceback(agent: LocalAgent) -> None:
    error = agent.call("system.read_file", path="/nonexistent/file")["error"]
    assert error["type"] == "FileNotFoundError"
    assert error["errno"] == 2
    assert "Traceback" in error["traceback"]


def test_unknown_method_and_bad_params(agent: LocalAgent) -> None:
    assert agent.call("no.such")["error"]["type"] == "UnknownMethod"
    assert agent.call("system.read_file", nope=1)["error"]["type"] == "TypeError"


def test_malformed_line_is_answered_not_fatal(agent: LocalAgent) -> None:
    reply = agent.raw(b"this is not json\n")
    assert reply["error"]["type"] == "ProtocolError"
    assert agent.call("agent.hello")["result"]["protocol"] == 1


def test_server_exits_cleanly_on_eof(agent: LocalAgent) -> None:
    agent.call("agent.hello")
    assert agent.close() == 0


def test_decode_rejects_what_the_protocol_does_not_say() -> None:
    with pytest.raises(ProtocolError, match="no newline"):
        decode(b'{"id": 1}')
    with pytest.raises(ProtocolError, match="not JSON"):
        decode(b"{oops\n")
    with pytest.raises(ProtocolError, match="expected an object"):
        decode(b"[1]\n")
    with pytest.raises(TypeError, match="cannot send object"):
        encode({"x": object()})
