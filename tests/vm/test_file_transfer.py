"""Moving files into and out of a guest over SFTP (``Agent.put_file`` / ``get_file``)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from harness.agent.client import AgentConnectionLostError, AgentError

pytestmark = pytest.mark.tier1

ARCHES = [
    pytest.param("x86_64", "vtd", marks=[pytest.mark.x86_64, pytest.mark.vtd]),
    pytest.param("arm64", "smmuv3", marks=[pytest.mark.arm64, pytest.mark.smmuv3]),
]
SIZE = 6 * 1024 * 1024 + 123  # a few MiB, not a multiple of any transfer block


@pytest.mark.parametrize(("arch", "viommu"), ARCHES)
def test_put_file_arrives_intact_and_get_file_brings_it_back(
    shared_guest: Any, tmp_path: Path, record_property: Any, arch: str, viommu: str
) -> None:
    guest = shared_guest(arch, viommu, devices=())
    payload = os.urandom(SIZE)
    local = tmp_path / "payload.bin"
    local.write_bytes(payload)
    remote = f"/root/payload-{os.getpid()}.bin"

    started = time.monotonic()
    written = guest.agent.put_file(local, remote, mode=0o600)
    took = time.monotonic() - started
    record_property("put_MiB_per_s", f"{SIZE / 2**20 / took:.1f}")

    assert written == SIZE
    listed = guest.run(f"sha256sum {remote} && stat -c '%s %a' {remote} && ls {remote}.part")
    digest, _, rest = listed.stdout.partition(" ")
    assert digest == hashlib.sha256(payload).hexdigest()
    assert f"{SIZE} 600" in rest
    assert listed.status != 0  # no temporary file left behind

    back = tmp_path / "back.bin"
    assert guest.agent.get_file(remote, back) == SIZE
    assert back.read_bytes() == payload
    guest.run(f"rm -f {remote}")


@pytest.mark.parametrize(("arch", "viommu"), ARCHES[:1])
def test_missing_files_fail_with_one_line_errors(
    shared_guest: Any, tmp_path: Path, arch: str, viommu: str
) -> None:
    guest = shared_guest(arch, viommu, devices=())
    with pytest.raises(AgentError, match="no-such-file"):
        guest.agent.get_file("/root/no-such-file", tmp_path / "x")
    with pytest.raises(AgentError, match="put"):
        guest.agent.put_file(tmp_path / "absent", "/root/absent")
    # the connection is still usable afterwards
    assert guest.call("agent.hello")["protocol"]


@pytest.mark.parametrize(("arch", "viommu"), ARCHES[:1])
def test_run_streams_output_on_a_pty_and_gives_up_on_silence(
    shared_guest: Any, arch: str, viommu: str
) -> None:
    guest = shared_guest(arch, viommu, devices=())
    arrivals: list[tuple[float, bytes]] = []
    done = guest.run(
        "echo first; echo err >&2; sleep 2; echo second",
        on_output=lambda chunk: arrivals.append((time.monotonic(), chunk)),
        pty=True,
    )
    assert done.status == 0
    # on a pty stderr is merged and lines come with CR LF
    assert done.stdout.replace("\r", "").split() == ["first", "err", "second"]
    first = next(t for t, chunk in arrivals if b"first" in chunk)
    second = next(t for t, chunk in arrivals if b"second" in chunk)
    assert second - first > 1.5  # the first line arrived while the command still ran

    started = time.monotonic()
    with pytest.raises(AgentConnectionLostError, match="no output for 3s"):
        guest.run("echo hello; sleep 60", timeout=50, idle_timeout=3, pty=True)
    assert time.monotonic() - started < 20
    assert guest.run("true").status == 0  # the guest and the agent are still usable
