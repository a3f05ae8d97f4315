"""The Dask task for one matrix cell: run it on this host, return everything as data.

``run_cell`` runs on a worker.  It announces the cell's start on the ``viommu-fleet``
event topic (so the controller knows which host a lost cell was on), runs the variant
through ``harness.qualify.selftests.run_variant`` (a scenario or a kernel-selftest cell)
in a private scratch directory, and returns a ``dict``: the cell's status and reason, its
JUnit, the host's identity (name, node, kernel, QEMU), the timings, and the artifacts as
a ``tar.gz`` archive.  The scratch directory is removed
before it returns, whatever happens.  The matrix's ``timeout`` holds as under avocado:
when it passes, the cell's QEMU is killed and the cell is an error saying it timed out.
"""

from __future__ import annotations

import contextlib
import io
import json
import platform
import shutil
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from harness.qualify.matrix import Variant
from harness.qualify.report import verdict_info

TOPIC = "viommu-fleet"
CELL_PREFIX = "viommu-fleet-cell-"
#: artifacts larger than this are left out of the archive (listed in its MANIFEST)
MAX_FILE_BYTES = 64 * 1024 * 1024


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return platform.node()


def _announce(event: dict[str, Any]) -> None:
    with contextlib.suppress(ImportError, ValueError):
        from distributed import get_worker

        get_worker().log_event(TOPIC, event)


def archive(directory: Path) -> bytes:
    """``directory`` as a gzip'd tar (regular files and directories only)."""
    buf = io.BytesIO()
    skipped = []
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for path in sorted(directory.rglob("*")):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue
            if path.is_file() and path.stat().st_size > MAX_FILE_BYTES:
                skipped.append(str(path.relative_to(directory)))
                continue
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
        if skipped:
            data = ("left out (over 64 MiB):\n" + "\n".join(skipped) + "\n").encode()
            info = tarfile.TarInfo("MANIFEST-left-out.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def cell_junit(
    cell_id: str, host: str, status: str, reason: str, seconds: float, details: str = ""
) -> str:
    """A one-testcase JUnit document for a cell (classname ``fleet.<host>``)."""
    suite = ET.Element(
        "testsuite",
        name="viommu-harness-fleet",
        tests="1",
        failures="1" if status == "failed" else "0",
        errors="1" if status in ("error", "unschedulable") else "0",
        skipped="1" if status == "skipped" else "0",
        time=f"{seconds:.3f}",
    )
    case = ET.SubElement(
        suite, "testcase", classname=f"fleet.{host}", name=cell_id, time=f"{seconds:.3f}"
    )
    if status == "failed":
        ET.SubElement(case, "failure", message=reason).text = details or reason
    elif status in ("error", "unschedulable"):
        ET.SubElement(case, "error", message=reason, type=status).text = details or reason
    elif status == "skipped":
        ET.SubElement(case, "skipped", message=reason)
    props = ET.SubElement(case, "properties")
    ET.SubElement(props, "property", name="host", value=host)
    return ET.tostring(suite, encoding="unicode")


def _qemu_started(artifacts: Path) -> float | None:
    """Wall-clock time QEMU was started (its argv.json's mtime), if it was."""
    try:
        return (artifacts / "argv.json").stat().st_mtime
    except OSError:
        return None


def run_cell(variant_json: dict[str, Any], submitted: float | None = None) -> dict[str, Any]:
    """Run one cell here; the result dict described in the module docstring."""
    from harness.images.errors import PrerequisiteError
    from harness.qemu.probe import MissingCapabilityError, probe, resolve_binary
    from harness.qualify.selftests import run_variant

    started = time.time()
    variant = Variant.from_json(variant_json)
    host = _worker_name()
    _announce({"event": "start", "cell": variant.id, "host": host, "time": started})
    identity: dict[str, Any] = {"host": host, "node": platform.node(),
                                "kernel": platform.release(), "qemu": ""}  # fmt: skip
    with contextlib.suppress(Exception):
        identity["qemu"] = probe(resolve_binary(variant.arch, variant.qemu)).version_text
    scratch = Path(tempfile.mkdtemp(prefix=CELL_PREFIX))
    artifacts = scratch / "artifacts"
    info: dict[str, Any] = {"variant": variant.to_json(), **identity}
    details = ""
    timer = threading.Timer(variant.timeout, _time_out, (artifacts, info))
    timer.daemon = True
    timer.start()
    try:
        try:
            verdict, extra = run_variant(variant, artifacts, lambda text: None)
        except (MissingCapabilityError, PrerequisiteError) as exc:
            info.update(status="skipped", reason=str(exc).splitlines()[0])
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if info.get("timed_out"):
                reason = f"timed out after {variant.timeout:.0f} s ({reason})"
            info.update(status="error", reason=reason)
            details = str(exc)
        else:
            info.update(verdict_info(verdict), **extra)
            details = verdict.table() + "\n" + verdict.summary()
            with contextlib.suppress(OSError):
                (artifacts / "verdict.txt").write_text(details + "\n")
        ended = time.time()
        qemu_start = _qemu_started(artifacts)
        info["timings"] = {
            "submitted": submitted,
            "started": started,
            "qemu_started": qemu_start,
            "ended": ended,
        }
        info["seconds"] = ended - started
        info["junit"] = cell_junit(
            variant.id, host, info["status"], info["reason"], ended - started, details
        )
        with contextlib.suppress(OSError):
            artifacts.mkdir(parents=True, exist_ok=True)
            (artifacts / "cell.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
        info["archive"] = archive(artifacts) if artifacts.is_dir() else b""
        info["returned"] = time.time()
        return info
    finally:
        timer.cancel()
        shutil.rmtree(scratch, ignore_errors=True)


def _time_out(artifacts: Path, info: dict[str, Any]) -> None:
    """The cell's timeout: kill its QEMU (found by its artifacts path), so the scenario
    ends with the machine's own error, reported as a timeout."""
    from harness.qemu.leaks import processes_mentioning
    from harness.qemu.rundir import kill_and_wait

    info["timed_out"] = True
    kill_and_wait(processes_mentioning(f"{artifacts}/"))
