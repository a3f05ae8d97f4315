"""A fleet run's results: each cell's archive unpacked under ``results/<host>/<cell>/``,
one merged JUnit (``results.xml``), an avocado-style ``results.json`` and the
qualification report (``harness.qualify.report``) with a host column.

Pure apart from writing files: unit-tested with made-up cell results.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.fleet.cell import cell_junit
from harness.qualify.matrix import Variant

RESULTS = "results"
JUNIT = "results.xml"
AVOCADO_JSON = "results.json"
#: cell status -> avocado's status word
AVOCADO_STATUS = {
    "passed": "PASS",
    "failed": "FAIL",
    "error": "ERROR",
    "skipped": "CANCEL",
    "unschedulable": "UNSCHEDULABLE",
}
BAD = ("failed", "error", "unschedulable")
_SAFE = re.compile(r"[^A-Za-z0-9_.+-]")


@dataclass
class CellResult:
    """One cell's outcome on the controller."""

    variant: Variant
    status: str  # passed | failed | skipped | error | unschedulable
    reason: str = ""
    host: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    junit: str = ""
    artifacts: Path | None = None
    received: float | None = None

    @property
    def seconds(self) -> float:
        value = self.info.get("seconds")
        return float(value) if isinstance(value, int | float) else 0.0


def safe_name(text: str) -> str:
    """``text`` as one path component."""
    name = _SAFE.sub("_", text).lstrip(".")
    return name or "_"


def cell_dir(root: Path, host: str, cell: str) -> Path:
    """``root/results/<host>/<cell>`` (``unscheduled`` for a cell that never ran)."""
    return root / RESULTS / safe_name(host or "unscheduled") / safe_name(cell)


def safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract ``tar`` into ``dest`` refusing what could escape it (the ``data`` filter).

    Python before 3.11.4 (Debian 12 ships 3.11.2) has no extraction filters: there only
    plain files and directories with relative, ``..``-free names are extracted.
    """
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    for member in tar:
        parts = Path(member.name).parts
        if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"refusing archive member {member.name!r}")
        tar.extract(member, dest, set_attrs=False)


def unpack(archive: bytes, dest: Path) -> None:
    """Unpack a cell's ``tar.gz`` into ``dest``; HarnessError for an unsafe or bad archive."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            safe_extract(tar, dest)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise HarnessError(f"cell archive for {dest}: {exc}") from None


def merged_junit(results: Sequence[CellResult], name: str = "viommu-harness-fleet") -> str:
    """One ``<testsuites>``: every cell's testcase (from its JUnit, else made here)."""
    suite = ET.Element("testsuite", name=name)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total = 0.0
    for r in results:
        text = r.junit or cell_junit(r.variant.id, r.host or "-", r.status, r.reason, r.seconds)
        try:
            cases = ET.fromstring(text).iter("testcase")
        except ET.ParseError:
            cases = ET.fromstring(
                cell_junit(r.variant.id, r.host or "-", "error", "unreadable JUnit", r.seconds)
            ).iter("testcase")
        for case in cases:
            case.set("hostname", r.host or "")
            suite.append(case)
            counts["tests"] += 1
            counts["failures"] += case.find("failure") is not None
            counts["errors"] += case.find("error") is not None
            counts["skipped"] += case.find("skipped") is not None
            total += float(case.get("time") or 0)
    for key, value in counts.items():
        suite.set(key, str(value))
    suite.set("time", f"{total:.3f}")
    top = ET.Element("testsuites", name=name)
    top.append(suite)
    return ET.tostring(top, encoding="unicode")


def avocado_results(results: Sequence[CellResult], root: Path) -> dict[str, Any]:
    """The run as avocado's ``results.json`` (what ``report.collect`` reads)."""
    tests = []
    for r in results:
        board = {k: v for k, v in r.info.items() if k not in ("archive", "junit")}
        board.update(status=r.status, reason=r.reason, host=r.host)
        if r.status in ("error", "unschedulable"):
            board["report_status"] = r.status
        if r.artifacts is not None:
            board["artifacts"] = str(r.artifacts)
        tests.append(
            {
                "name": f"fleet:{r.host or 'unscheduled'};{r.variant.id}",
                "id": r.variant.id,
                "status": AVOCADO_STATUS[r.status],
                "fail_reason": r.reason,
                "time_elapsed": r.seconds,
                "logdir": str(r.artifacts) if r.artifacts is not None else None,
                "whiteboard": json.dumps(board, default=str),
            }
        )
    counts = {s: sum(1 for r in results if r.status == s) for s in AVOCADO_STATUS}
    return {
        "job_id": root.name,
        "debuglog": str(root / "fleet.log"),
        "total": len(results),
        "pass": counts["passed"],
        "failures": counts["failed"],
        "errors": counts["error"],
        "cancel": counts["skipped"],
        "unschedulable": counts["unschedulable"],
        "tests": tests,
    }


def write_results(
    root: Path,
    name: str,
    description: str,
    results: Sequence[CellResult],
    seconds: float | None,
    lost: Mapping[str, str],
) -> tuple[Path, Path]:
    """``results.xml``, ``results.json`` and ``qualification.{json,html}`` in ``root``."""
    from harness.qualify.report import collect, write_report

    root.mkdir(parents=True, exist_ok=True)
    (root / JUNIT).write_text(merged_junit(results) + "\n")
    data = avocado_results(results, root)
    data["lost_hosts"] = dict(lost)
    (root / AVOCADO_JSON).write_text(json.dumps(data, indent=1, default=str) + "\n")
    rows = collect(root, [r.variant for r in results])
    return write_report(root, name, description, rows, seconds)


def exit_status(results: Sequence[CellResult], lost: Mapping[str, str]) -> int:
    """1 for any failed, error or unschedulable cell or any lost (or unreachable) host."""
    return 1 if lost or any(r.status in BAD for r in results) else 0
