"""The qualification report: one row per variant, from avocado's ``results.json``.

Each row says passed / failed / skipped with the reason, the QEMU and kernel versions,
the seed, and links (relative to the job directory) to the variant's artifacts, its
avocado debug log and, for a failure, its repro bundle.  Written as
``qualification.json`` and ``qualification.html`` in avocado's job directory, beside
avocado's own ``results.html`` / ``results.json`` / ``results.xml``.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.qualify.matrix import Variant

REPORT_JSON = "qualification.json"
REPORT_HTML = "qualification.html"
STATUS = {
    "PASS": "passed",
    "WARN": "passed",
    "FAIL": "failed",
    "ERROR": "failed",
    "INTERRUPTED": "failed",
    "INTERRUPT": "failed",
    "CANCEL": "skipped",
    "SKIP": "skipped",
    "UNSCHEDULABLE": "unschedulable",  # fleet runs: no host can run the variant
}
#: statuses a fleet run's whiteboard may give a row instead of the avocado mapping
FLEET_STATUSES = ("error", "unschedulable")


#: verdict facts a variant's result carries (identities a release manager compares)
VERDICT_FACTS = ("qemu_version", "kernel_release", "qemu_binary", "image_key", "seed", "accel")


def verdict_info(verdict: Any) -> dict[str, Any]:
    """A variant's result fields from its ``Verdict``: status, first failure, counts, facts."""
    info: dict[str, Any] = {k: verdict.facts[k] for k in VERDICT_FACTS if verdict.facts.get(k)}
    info.update(
        status="passed" if verdict.passed else "failed",
        reason="" if verdict.passed else verdict.summary().splitlines()[0],
        checks=len(verdict.checks),
        effect_checks=verdict.count("effect"),
        failed_checks=[c.name for c in verdict.failures],
    )
    return info


@dataclass
class Row:
    """One variant's outcome."""

    id: str
    scenario: str
    arch: str
    viommu: str
    options: str
    viommu_options: dict[str, Any]
    qemu: str
    qemu_version: str
    kernel: str
    kernel_release: str
    status: str
    avocado_status: str
    reason: str
    seconds: float | None
    seed: int | None
    artifacts: str | None
    debug_log: str | None
    repro_bundle: str | None
    host: str = ""  # fleet runs: the host that ran the variant


def _rel(path: Any, logdir: Path) -> str | None:
    if not path:
        return None
    p = Path(str(path))
    if not p.exists():
        return None
    return os.path.relpath(p, logdir)


def _whiteboard(test: dict[str, Any]) -> dict[str, Any]:
    for text in (test.get("whiteboard"),):
        if text:
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    logdir = test.get("logdir")
    if logdir:
        try:
            data = json.loads((Path(logdir) / "variant.json").read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            pass
    return {}


def collect(logdir: Path, variants: Sequence[Variant]) -> list[Row]:
    """Rows for every variant, in matrix order (``not run`` when avocado has no result)."""
    results = json.loads((logdir / "results.json").read_text())
    by_id: dict[str, dict[str, Any]] = {}
    for test in results.get("tests", []):
        name = str(test.get("name") or test.get("id") or "")
        by_id[name.rpartition(";")[2]] = test
    rows = []
    for v in variants:
        test = by_id.get(v.id)
        info = _whiteboard(test) if test else {}
        avocado_status = str(test.get("status", "")) if test else "NOT RUN"
        status = STATUS.get(avocado_status, "failed")
        if info.get("report_status") in FLEET_STATUSES:
            status = str(info["report_status"])
        reason = str(info.get("reason") or (test or {}).get("fail_reason") or "")
        if avocado_status == "INTERRUPTED" and not reason:
            reason = "interrupted (timeout?)"
        if not test:
            reason = "no avocado result for this variant"
        test_logdir = Path(test["logdir"]) if test and test.get("logdir") else None
        rows.append(
            Row(
                id=v.id,
                scenario=v.scenario,
                arch=v.arch,
                viommu=v.viommu,
                options=v.options_label,
                viommu_options=v.viommu_options,
                qemu=v.qemu_label,
                qemu_version=str(info.get("qemu_version") or ""),
                kernel=v.kernel_label,
                kernel_release=str(info.get("kernel_release") or ""),
                status=status,
                avocado_status=avocado_status,
                reason=reason if status != "passed" else "",
                seconds=float(test["time_elapsed"]) if test and test.get("time_elapsed") else None,
                seed=info.get("seed"),
                artifacts=_rel(info.get("artifacts"), logdir),
                debug_log=_rel(test_logdir / "debug.log", logdir) if test_logdir else None,
                repro_bundle=_rel(info.get("repro_bundle"), logdir),
                host=str(info.get("host") or ""),
            )
        )
    return rows


def totals(rows: Sequence[Row]) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    return counts


def text_table(rows: Sequence[Row]) -> str:
    """A plain table for the terminal."""
    width = max((len(r.id) for r in rows), default=10)
    hw = max((len(r.host) for r in rows), default=0)
    host_head = f"{'host':<{hw}}  " if hw else ""
    lines = [f"{'variant':<{width}}  {host_head}{'status':<7}  {'qemu':<16} {'kernel':<24} reason"]
    for r in rows:
        host = f"{r.host:<{hw}}  " if hw else ""
        lines.append(
            f"{r.id:<{width}}  {host}{r.status:<7}  {r.qemu_version.split(' (')[0][:16]:<16} "
            f"{r.kernel_release[:24]:<24} {r.reason[:100]}"
        )
    return "\n".join(lines)


_CSS = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; }
td, th { border: 1px solid #bbb; padding: 4px 8px; text-align: left; vertical-align: top; }
.passed { background: #dfd; } .failed { background: #fdd; } .skipped { background: #eee; }
.error { background: #fcb; } .unschedulable { background: #fec; }
code { font-size: 90%; }
"""


def _link(target: str | None, text: str) -> str:
    if not target:
        return ""
    return f'<a href="{html.escape(target)}">{html.escape(text)}</a>'


def render_html(name: str, description: str, rows: Sequence[Row], seconds: float | None) -> str:
    counts = totals(rows)
    head = ", ".join(f"{n} {k}" for k, n in counts.items())
    fleet = any(r.host for r in rows)
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Qualification {html.escape(name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Qualification: {html.escape(name)}</h1>",
        f"<p>{html.escape(description)}</p>" if description else "",
        f"<p><b>{html.escape(head)}</b>{took}. Avocado's report: "
        f"{_link('results.html', 'results.html')}, {_link('results.xml', 'xUnit')}, "
        f"{_link('results.json', 'JSON')}.</p>",
        "<table><tr><th>variant</th>" + ("<th>host</th>" if fleet else "") +
        "<th>status</th><th>vIOMMU options</th><th>QEMU</th>"
        "<th>kernel</th><th>seed</th><th>time</th><th>reason</th><th>links</th></tr>",
    ]  # fmt: skip
    for r in rows:
        opts = ", ".join(f"{k}={v}" for k, v in r.viommu_options.items()) or "defaults"
        links = " ".join(
            filter(None, [_link(r.artifacts, "artifacts"), _link(r.debug_log, "log"),
                          _link(r.repro_bundle, "repro")])
        )  # fmt: skip
        took_row = f"{r.seconds:.1f} s" if r.seconds is not None else ""
        out.append(
            f"<tr class='{r.status}'><td><code>{html.escape(r.id)}</code></td>"
            + (f"<td>{html.escape(r.host)}</td>" if fleet else "")
            + f"<td>{r.status}</td>"
            f"<td>{html.escape(r.viommu)} {html.escape(r.options)}: {html.escape(opts)}</td>"
            f"<td>{html.escape(r.qemu)}: {html.escape(r.qemu_version)}</td>"
            f"<td>{html.escape(r.kernel)}: {html.escape(r.kernel_release)}</td>"
            f"<td>{r.seed if r.seed is not None else ''}</td><td>{took_row}</td>"
            f"<td>{html.escape(r.reason)}</td><td>{links}</td></tr>"
        )
    out.append("</table></body></html>")
    return "\n".join(out)


def write_report(
    logdir: Path,
    name: str,
    description: str,
    rows: Sequence[Row],
    seconds: float | None = None,
) -> tuple[Path, Path]:
    """Write ``qualification.json`` and ``qualification.html`` into the job directory."""
    data = {
        "matrix": name,
        "description": description,
        "totals": totals(rows),
        "seconds": seconds,
        "variants": [asdict(r) for r in rows],
    }
    json_path = logdir / REPORT_JSON
    json_path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    html_path = logdir / REPORT_HTML
    html_path.write_text(render_html(name, description, rows, seconds))
    return json_path, html_path
