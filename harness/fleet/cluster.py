"""The fleet's Dask cluster, controller side: the scheduler here, one worker per host.

``FleetCluster`` (async context manager) starts an in-process ``distributed.Scheduler``
listening only on the fleet file's address, with TLS from per-run certificates, no
dashboard unless the fleet asks, and ``allowed-failures`` = the fleet's ``retries``
(default 0: a cell whose host dies is not re-run elsewhere).  Each host's worker is
started over SSH with ``asyncssh`` (what Dask's ``SSHCluster`` uses) running
``harness.fleet.worker`` from the host's deploy prefix; that worker's standard input is
its lifeline, so closing the SSH session (or the controller dying) ends it and everything
it started.  A host that cannot start (SSH refused, version mismatch) is recorded as
*down* with its one-line reason and the rest go on.  The ``local`` fleet is a Dask
``LocalCluster`` with the same TLS and resources.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError
from harness.fleet.capabilities import HostCaps, probe_host
from harness.fleet.spec import Fleet, Host
from harness.fleet.tls import RunCertificates, make_certificates
from harness.fleet.version import identity
from harness.fleet.worker import CAPS, ERROR, READY


class FleetError(HarnessError):
    """The fleet cannot be used at all (no scheduler, no host up)."""


def _asyncssh() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import asyncssh
    return asyncssh


async def ssh_connect(fleet: Fleet, host: Host) -> Any:
    """An asyncssh connection to ``host`` (key-only, host key checked against known_hosts)."""
    asyncssh = _asyncssh()
    options: dict[str, Any] = {
        "port": host.port,
        "connect_timeout": fleet.connect_timeout,
        "password_auth": False,
        "kbdint_auth": False,
    }
    if host.user:
        options["username"] = host.user
    if host.key:
        options["client_keys"] = [host.key]
        options["agent_path"] = None
    if fleet.known_hosts:
        options["known_hosts"] = fleet.known_hosts
    try:
        return await asyncssh.connect(host.address, **options)
    except (OSError, asyncssh.Error) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FleetError(f"ssh {host.user or ''}@{host.address}:{host.port}: {text}") from None


@dataclass
class HostWorker:
    """One host's worker process, started over SSH."""

    fleet: Fleet
    host: Host
    connection: Any = None
    process: Any = None
    caps: HostCaps | None = None
    address: str = ""
    log: list[str] = field(default_factory=list)
    drainer: Any = None

    def request(self, scheduler: str, certs: RunCertificates | None) -> dict[str, Any]:
        """The JSON line the host's ``harness.fleet.worker`` reads first."""
        return {
            "name": self.host.name,
            "slots": self.host.slots,
            "labels": list(self.host.labels),
            "host_device": self.host.host_device,
            "scratch": self.host.scratch,
            "scheduler": scheduler,
            "versions": identity(),
            "probe_only": certs is None,
            "config": certs.worker_config() if certs else {},
        }

    async def start(self, scheduler: str, certs: RunCertificates | None) -> None:
        """Connect, send the request, wait for the probe (and the worker, unless probing)."""
        self.connection = await ssh_connect(self.fleet, self.host)
        command = f"exec {shlex.quote(self.host.remote_python)} -m harness.fleet.worker"
        self.process = await self.connection.create_process(command, encoding="utf-8")
        self.process.stdin.write(json.dumps(self.request(scheduler, certs)) + "\n")
        try:
            await asyncio.wait_for(self._read_until(certs is None), self.fleet.connect_timeout
                                   + 120)  # fmt: skip
        except TimeoutError:
            raise FleetError(f"{self.host.name}: worker did not start within the timeout"
                             f" ({' | '.join(self.log[-3:])})") from None  # fmt: skip

    async def _read_until(self, probe_only: bool) -> None:
        while True:
            line = await self.process.stderr.readline()
            if not line:
                status = self.process.exit_status
                tail = " | ".join(self.log[-3:]) or "no output"
                if status == 127 or "No such file" in tail:
                    tail = f"{self.host.remote_python} not found (run harness fleet deploy)"
                raise FleetError(f"{self.host.name}: worker exited ({tail})")
            line = line.rstrip("\n")
            if line.startswith(ERROR):
                raise FleetError(f"{self.host.name}: {line[len(ERROR) :].strip()}")
            if line.startswith(CAPS):
                self.caps = HostCaps.from_json(json.loads(line[len(CAPS) :]))
                if probe_only:
                    return
                continue
            if line.startswith(READY):
                self.address = line.rpartition(" ")[2]
                self.drainer = asyncio.ensure_future(self._drain())
                return
            self.log.append(line)
            del self.log[:-50]

    async def _drain(self) -> None:
        with contextlib.suppress(Exception):
            while line := await self.process.stderr.readline():
                self.log.append(line.rstrip("\n"))
                del self.log[:-200]

    async def close(self, wait: float = 15.0) -> None:
        """End the worker: end of file on its stdin, then the SSH session."""
        if self.process is not None:
            with contextlib.suppress(Exception):
                self.process.stdin.write_eof()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.process.wait_closed(), wait)
        if self.connection is not None:
            self.connection.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.connection.wait_closed(), 5)
        self.process = self.connection = None


class FleetCluster:
    """``async with FleetCluster(fleet) as cluster``: scheduler, workers, a TLS client."""

    def __init__(self, fleet: Fleet, *, verbose: bool = False) -> None:
        self.fleet = fleet
        self.verbose = verbose
        self.certs: RunCertificates | None = None
        self.scheduler: Any = None
        self.local: Any = None
        self.client: Any = None
        self.workers: dict[str, HostWorker] = {}
        self.caps: dict[str, HostCaps] = {}
        self.down: dict[str, str] = {}  # host -> why it could not start
        self.names: dict[str, str] = {}  # Dask worker name -> host name
        self.scratch: str | None = None  # Dask's directory on the controller

    @property
    def address(self) -> str:
        if self.local is not None:
            return str(self.local.scheduler_address)
        return str(self.scheduler.address) if self.scheduler is not None else ""

    async def __aenter__(self) -> FleetCluster:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start(self) -> None:
        import dask
        from distributed import Client, LocalCluster, Scheduler

        fleet = self.fleet
        if not self.verbose:  # the run's own lines say what matters; Dask's INFO is noise
            for name in ("distributed", "tornado"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
        # Dask's lock and spill files go to a private directory removed at close.
        self.scratch = tempfile.mkdtemp(prefix="viommu-fleet-dask-")
        dask.config.set({"distributed.scheduler.allowed-failures": fleet.retries,
                         "distributed.comm.timeouts.connect": fleet.connect_timeout,
                         "temporary-directory": self.scratch})  # fmt: skip
        self.certs = make_certificates()
        dashboard = fleet.dashboard
        if fleet.local:
            host = fleet.hosts[0]
            caps = await asyncio.to_thread(
                probe_host, host.name, host.slots, host.labels, host.host_device
            )
            self.caps[host.name] = caps
            self.local = await LocalCluster(
                name=fleet.name, n_workers=1, threads_per_worker=host.slots, processes=True,
                host=fleet.scheduler_host, scheduler_port=fleet.scheduler_port,
                protocol="tls", security=self.certs.security("worker"),
                dashboard_address=dashboard, resources=caps.resources(),
                scheduler_kwargs={"allowed_failures": fleet.retries}, asynchronous=True,
                silence_logs=40, memory_limit=0, local_directory=self.scratch,
            )  # fmt: skip
            self.client = await Client(self.local, asynchronous=True,
                                       security=self.certs.security())  # fmt: skip
            info = await self.client.scheduler.identity(n_workers=-1)
            for w in info["workers"].values():
                self.names[str(w["name"])] = host.name
            return
        self.scheduler = Scheduler(
            host=fleet.scheduler_host, port=fleet.scheduler_port, protocol="tls",
            security=self.certs.security("scheduler"), dashboard=dashboard is not None,
            dashboard_address=dashboard, allowed_failures=fleet.retries,
        )  # fmt: skip
        await self.scheduler
        await self._start_workers(self.scheduler.address, self.certs)
        self.client = await Client(self.scheduler.address, asynchronous=True,
                                   security=self.certs.security())  # fmt: skip
        if self.workers:
            await self.client.wait_for_workers(len(self.workers), timeout=fleet.connect_timeout)

    async def _start_workers(self, scheduler: str, certs: RunCertificates) -> None:
        workers = {h.name: HostWorker(self.fleet, h) for h in self.fleet.hosts}
        results = await asyncio.gather(
            *(w.start(scheduler, certs) for w in workers.values()), return_exceptions=True
        )
        for (name, worker), result in zip(workers.items(), results, strict=True):
            if isinstance(result, BaseException):
                await worker.close(wait=2)
                if not isinstance(result, HarnessError | OSError):
                    raise result
                self.down[name] = str(result)
                continue
            if worker.caps is not None:
                self.caps[name] = worker.caps
            self.names[name] = name
            self.workers[name] = worker
        if not self.caps:
            raise FleetError(
                "no host of the fleet started: "
                + "; ".join(self.down.values() or ["the fleet has no hosts"])
            )

    async def live_hosts(self) -> dict[str, dict[str, float]]:
        """Hosts whose worker the scheduler still has -> their resources."""
        info = await self.client.scheduler.identity(n_workers=-1)
        hosts: dict[str, dict[str, float]] = {}
        for w in info["workers"].values():
            name = self.names.get(str(w["name"]), str(w["name"]))
            hosts[name] = {k: float(v) for k, v in (w.get("resources") or {}).items()}
        return hosts

    async def close(self) -> None:
        """Client, scheduler (which tells the workers to stop), then each worker's SSH
        session (end of file on its stdin: it kills what it started and exits)."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
            self.client = None
        if self.local is not None:
            with contextlib.suppress(Exception):
                await self.local.close()
            self.local = None
        if self.scheduler is not None:
            with contextlib.suppress(Exception):
                await self.scheduler.close()
            self.scheduler = None
        await asyncio.gather(*(w.close() for w in self.workers.values()),
                             return_exceptions=True)  # fmt: skip
        self.workers = {}
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


async def probe(fleet: Fleet) -> tuple[dict[str, HostCaps], dict[str, str]]:
    """Every host's capabilities, and the hosts that could not be reached (with why)."""
    async with FleetCluster(fleet) as cluster:
        live = await cluster.live_hosts()
        down = dict(cluster.down)
        for name in cluster.caps:
            if name not in live:
                down[name] = f"{name}: probed, but its worker never reached the scheduler"
        return {n: c for n, c in cluster.caps.items() if n in live}, down
