"""``harness qualify --fleet``: the matrix's cells as Dask tasks on the fleet's hosts.

Each cell is one task needing the resources of ``capabilities.requirements`` (so it runs
only on a host that can, one per slot); a cell no live host can run is *unschedulable*
with the missing capability.  Results come back as data and are unpacked under
``<run dir>/results/<host>/<cell>/``.  A host lost mid-cell gives that cell an *error*
naming the host (Dask's ``KilledWorker``: ``allowed-failures`` is the fleet's ``retries``);
cells only the lost host could run are ended as errors too; the rest go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.fleet.capabilities import missing, requirements, route
from harness.fleet.cell import TOPIC, run_cell
from harness.fleet.cluster import FleetCluster
from harness.fleet.merge import CellResult, cell_dir, unpack
from harness.fleet.spec import Fleet
from harness.qualify.matrix import Variant

#: seconds a cell no live host can run waits (a KilledWorker may still be on its way)
ORPHAN_GRACE = 5.0
POLL = 1.0


@dataclass
class FleetOutcome:
    """Every cell's result, the hosts lost or never up, and timing figures."""

    results: list[CellResult]
    lost: dict[str, str]
    seconds: float
    overhead: dict[str, float] = field(default_factory=dict)


def _log(text: str) -> None:
    print(f"[fleet] {text}", file=sys.stderr, flush=True)


def overhead(results: Sequence[CellResult]) -> dict[str, float]:
    """Medians (and maxima) in seconds: submit -> the task starting on its host
    (``dispatch``; includes waiting for a free slot), task start -> the cell's QEMU
    starting (the harness's own preparation), submit -> QEMU, and the cell's end -> its
    result (archive included) unpacked on the controller."""
    spans: dict[str, list[float]] = {"dispatch": [], "task_to_qemu": [], "submit_to_qemu": [],
                                     "end_to_result": []}  # fmt: skip
    for r in results:
        t = r.info.get("timings") or {}
        sub, start, qemu, end = (t.get(k) for k in ("submitted", "started", "qemu_started",
                                                    "ended"))  # fmt: skip
        if sub is not None and start is not None:
            spans["dispatch"].append(float(start) - float(sub))
        if start is not None and qemu is not None:
            spans["task_to_qemu"].append(float(qemu) - float(start))
        if sub is not None and qemu is not None:
            spans["submit_to_qemu"].append(float(qemu) - float(sub))
        if end is not None and r.received is not None:
            spans["end_to_result"].append(r.received - float(end))
    out: dict[str, float] = {}
    for name, values in spans.items():
        if values:
            out[f"{name}_s"] = statistics.median(values)
            out[f"{name}_max_s"] = max(values)
    return out


async def run_cells(
    cluster: FleetCluster,
    variants: Sequence[Variant],
    root: Path,
    log: Callable[[str], None] = _log,
) -> tuple[list[CellResult], dict[str, str]]:
    """Submit every schedulable cell, collect each outcome; (results in matrix order, lost)."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    client = cluster.client
    hosts = await cluster.live_hosts()
    results: dict[str, CellResult] = {}
    lost: dict[str, str] = dict(cluster.down)
    for plan in route(variants, hosts):
        if not plan.hosts:
            why = f"unschedulable: {plan.missing}"
            results[plan.variant.id] = CellResult(plan.variant, "unschedulable", why)
            log(f"{plan.variant.id}: {why}")
    started: dict[str, str] = {}

    def on_event(event: Any) -> None:
        _, msg = event
        if isinstance(msg, dict) and msg.get("event") == "start":
            host = cluster.names.get(str(msg.get("host")), str(msg.get("host")))
            started[str(msg.get("cell"))] = host
            log(f"{msg.get('cell')}: started on {host}")

    client.subscribe_topic(TOPIC, on_event)
    futures: dict[Any, Variant] = {}
    for v in variants:
        if v.id in results:
            continue
        fut = client.submit(run_cell, v.to_json(), time.time(), key=f"cell-{v.id}",
                            resources=requirements(v), pure=False)  # fmt: skip
        futures[fut] = v
    orphans: dict[str, str] = {}

    async def watch_hosts() -> None:
        known = set(hosts)
        gone_at: dict[str, float] = {}
        while True:
            await asyncio.sleep(POLL)
            live = await cluster.live_hosts()
            for name in known - set(live):
                if name not in lost:
                    lost[name] = f"host {name} lost (its worker left the scheduler)"
                    gone_at[name] = time.monotonic()
                    log(lost[name])
            if not gone_at or time.monotonic() - max(gone_at.values()) < ORPHAN_GRACE:
                continue
            for fut, v in list(futures.items()):
                if fut.done() or v.id in orphans:
                    continue
                if not any(not missing(requirements(v), res) for res in live.values()):
                    orphans[v.id] = f"no live host can run it (lost: {', '.join(sorted(gone_at))})"
                    await fut.cancel()

    watcher = asyncio.ensure_future(watch_hosts())
    try:
        async for fut in as_completed(list(futures)):
            v = futures[fut]
            host = started.get(v.id, "")
            if fut.status == "cancelled":
                reason = orphans.get(v.id, "cancelled")
                results[v.id] = CellResult(v, "error", reason, host)
            elif fut.status == "error":
                exc = await fut.exception()
                if isinstance(exc, KilledWorker):
                    where = host or "its host"
                    reason = f"host {where} lost mid-cell (worker died; not retried)"
                else:
                    reason = f"on {host or '?'}: {type(exc).__name__}: {exc}".splitlines()[0]
                results[v.id] = CellResult(v, "error", reason, host)
            else:
                info = await fut
                received = time.time()
                host = cluster.names.get(str(info.get("host")), str(info.get("host")))
                info["host"] = host
                info["received"] = received
                dest = cell_dir(root, host, v.id)
                archive = info.pop("archive", b"")
                if archive:
                    unpack(archive, dest)
                results[v.id] = CellResult(
                    v, str(info["status"]), str(info.get("reason") or ""), host, info,
                    str(info.get("junit") or ""), dest, received,
                )  # fmt: skip
            r = results[v.id]
            log(f"{v.id}: {r.status} on {r.host or '-'}" + (f": {r.reason}" if r.reason else ""))
            del futures[fut]
    finally:
        watcher.cancel()
        with contextlib.suppress(BaseException):
            await watcher
        for fut in futures:
            with contextlib.suppress(Exception):
                await fut.cancel()
    return [results[v.id] for v in variants], lost


async def run_fleet_async(fleet: Fleet, variants: Sequence[Variant], root: Path) -> FleetOutcome:
    """Start the fleet's cluster, run the cells, tear everything down."""
    start = time.monotonic()
    async with FleetCluster(fleet) as cluster:
        for name, why in cluster.down.items():
            _log(f"host {name} is down: {why}")
        _log(f"cluster up in {time.monotonic() - start:.1f} s: scheduler {cluster.address},"
             f" hosts {', '.join(sorted(cluster.caps))}")  # fmt: skip
        results, lost = await run_cells(cluster, variants, root)
    seconds = time.monotonic() - start
    return FleetOutcome(results, lost, seconds, overhead(results))


def run_fleet(fleet: Fleet, variants: Sequence[Variant], root: Path) -> FleetOutcome:
    """``run_fleet_async`` from synchronous code; Ctrl-C tears the cluster down first."""
    return asyncio.run(run_fleet_async(fleet, variants, root))
