"""The qualification report: one row per variant, from avocado's ``results.json``.

Each row says passed / failed / skipped with the reason, the QEMU and kernel versions,
the seed, and links (relative to the job directory) to the variant's artifacts, its
avocado debug log and, for a failure, its repro bundle.  Written as
``qualification.json`` and ``qualification.html`` in avocado's job directory, beside
avocado's own ``results.html`` / ``results.json`` / ``results.xml``.

A matrix with two or more QEMUs also gets the QEMU columns side by side and every
difference between them (``harness.qualify.compare``; capabilities from the
``qemu-capabilities.json`` the job records), in both reports and in
``qemu-differences.txt``.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.qualify import selftests
from harness.qualify.compare import Comparison, compare, differences_text
from harness.qualify.matrix import Variant

REPORT_JSON = "qualification.json"
REPORT_HTML = "qualification.html"
DIFFERENCES_TEXT = "qemu-differences.txt"
CAPABILITIES_JSON = "qemu-capabilities.json"
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
        check_results=[[c.name, c.ok, _short(c.got)] for c in verdict.checks],
    )
    return info


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    error: bool = False  # an exception, no verdict (avocado ERROR / a fleet cell's error)
    #: the verdict's rows: [name, ok, short repr of what was observed]
    check_results: list[list[Any]] = field(default_factory=list)
    #: a kernel-selftest variant: per binary, counts and the results that did not pass
    kselftest: list[dict[str, Any]] = field(default_factory=list)


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
        error = info.get("status") == "error" or info.get("report_status") == "error"
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
                error=bool(test) and (error or avocado_status == "ERROR"),
                check_results=_check_results(info),
                kselftest=list(info.get("kselftest") or []),
            )
        )
    return rows


def _check_results(info: dict[str, Any]) -> list[list[Any]]:
    """The verdict rows of a variant: from its result, else its artifacts' ``verdict.json``."""
    found = info.get("check_results")
    if isinstance(found, list):
        return [list(item) for item in found if isinstance(item, list) and len(item) == 3]
    artifacts = info.get("artifacts")
    if not artifacts:
        return []
    try:
        verdict = json.loads((Path(str(artifacts)) / "verdict.json").read_text())
        return [[c["name"], bool(c["ok"]), _short(c.get("got"))] for c in verdict["checks"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def load_capabilities(logdir: Path) -> dict[str, Any]:
    """The QEMU capabilities the job recorded (label -> arch -> probe JSON), {} if none."""
    try:
        data = json.loads((logdir / CAPABILITIES_JSON).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def qemu_comparison(rows: Sequence[Row], capabilities: dict[str, Any] | None) -> Comparison | None:
    """The QEMU columns side by side, or None when the rows have one QEMU only."""
    if len({r.qemu for r in rows}) < 2:
        return None
    return compare(rows, capabilities)


def totals(rows: Sequence[Row]) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    return counts


def text_table(rows: Sequence[Row], capabilities: dict[str, Any] | None = None) -> str:
    """A plain table for the terminal; then, with several QEMUs, every difference."""
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
    comparison = qemu_comparison(rows, capabilities)
    if comparison is not None:
        lines += ["", differences_text(comparison)]
    if cells := [r for r in rows if r.kselftest]:
        lines += ["", selftests.text_table(cells)]
    return "\n".join(lines)


_CSS = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; }
td, th { border: 1px solid #bbb; padding: 4px 8px; text-align: left; vertical-align: top; }
.passed { background: #dfd; } .failed { background: #fdd; } .skipped { background: #eee; }
.error { background: #fcb; } .unschedulable { background: #fec; }
.differs { outline: 2px solid #c60; }
code { font-size: 90%; }
"""


def _link(target: str | None, text: str) -> str:
    if not target:
        return ""
    return f'<a href="{html.escape(target)}">{html.escape(text)}</a>'


def _comparison_html(comparison: Comparison) -> list[str]:
    """The QEMU columns side by side, then the list of differences."""
    labels = comparison.labels
    versions = comparison.versions
    head = "".join(
        f"<th>QEMU {html.escape(label)}"
        + (f"<br><small>{html.escape('; '.join(sorted(set(versions[label].values()))))}</small>"
           if versions.get(label) else "")
        + "</th>"
        for label in labels
    )  # fmt: skip
    out = [
        f"<h2>QEMU {' vs '.join(html.escape(label) for label in labels)}</h2>",
        "<table><tr><th>scenario</th><th>arch</th><th>vIOMMU options</th>"
        f"{head}<th>differences</th></tr>",
    ]
    for cell in comparison.cells:
        tds = []
        for label in labels:
            run = cell.runs.get(label)
            if run is None:
                tds.append("<td>not in matrix</td>")
                continue
            failed = [n for n, ok, _ in run.checks if not ok]
            detail = (
                f"<br><small>failed: {html.escape(', '.join(failed))}</small>" if failed else ""
            )
            if run.outcome in ("error", "skipped") and run.reason:
                detail = f"<br><small>{html.escape(run.reason[:200])}</small>"
            tds.append(f"<td class='{run.outcome}'>{run.outcome}{detail}</td>")
        diffs = "<br>".join(f"[{d.kind}] {html.escape(d.text)}" for d in cell.differences)
        mark = " class='differs'" if cell.differences else ""
        out.append(
            f"<tr{mark}><td>{html.escape(cell.scenario)}</td><td>{html.escape(cell.arch)}</td>"
            f"<td>{html.escape(cell.viommu)} {html.escape(cell.options)}</td>{''.join(tds)}"
            f"<td>{diffs}</td></tr>"
        )
    out.append("</table>")
    found = comparison.differences
    out.append(f"<h3>Every difference ({len(found)})</h3><ul>")
    out += [
        f"<li><b>{d.kind}</b> {html.escape(d.where)}: {html.escape(d.text)}</li>" for d in found
    ]
    out.append("</ul>" if found else "<li>none</li></ul>")
    return out


def render_html(
    name: str,
    description: str,
    rows: Sequence[Row],
    seconds: float | None,
    comparison: Comparison | None = None,
) -> str:
    counts = totals(rows)
    head = ", ".join(f"{n} {k}" for k, n in counts.items())
    fleet = any(r.host for r in rows)
    cells = [r for r in rows if r.kselftest]
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Qualification {html.escape(name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Qualification: {html.escape(name)}</h1>",
        f"<p>{html.escape(description)}</p>" if description else "",
        f"<p><b>{html.escape(head)}</b>{took}. Avocado's report: "
        f"{_link('results.html', 'results.html')}, {_link('results.xml', 'xUnit')}, "
        f"{_link('results.json', 'JSON')}.</p>",
        *(_comparison_html(comparison) if comparison is not None else []),
        *(selftests.html_table(cells) if cells else []),
        "<h2>Variants</h2>" if comparison is not None or cells else "",
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
    """Write ``qualification.json`` and ``qualification.html`` into the job directory.

    With several QEMUs, also their comparison (and ``qemu-differences.txt``).
    """
    comparison = qemu_comparison(rows, load_capabilities(logdir))
    data: dict[str, Any] = {
        "matrix": name,
        "description": description,
        "totals": totals(rows),
        "seconds": seconds,
        "variants": [asdict(r) for r in rows],
    }
    if comparison is not None:
        data["qemu_comparison"] = comparison.to_json()
        (logdir / DIFFERENCES_TEXT).write_text(differences_text(comparison) + "\n")
    json_path = logdir / REPORT_JSON
    json_path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    html_path = logdir / REPORT_HTML
    html_path.write_text(render_html(name, description, rows, seconds, comparison))
    return json_path, html_path
