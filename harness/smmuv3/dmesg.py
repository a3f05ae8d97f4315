"""Parse the SMMUv3 event reports the guest kernel writes to dmesg.

Understands arm_smmu_dump_raw_event() ("event 0x10 received:" and four raw words) and the
summary lines arm_smmu_dump_event() prints after it in Linux >= 6.14 ("event: F_TRANSLATION
client: ... sid: ... ssid: ... iova: ... ipa: ..." and the attribute line), with or without
dmesg timestamps.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .events import SmmuEvent, decode_event

_PREFIX = r"^(?:<\d+>)?(?:\[\s*\d+\.\d+\]\s*)?(?P<dev>[^:\[\]]+?):\s"
_RECEIVED = re.compile(_PREFIX + r"event 0x(?P<id>[0-9a-f]{2}) received:\s*$")
_RAW = re.compile(_PREFIX + r"\s*0x(?P<word>[0-9a-f]{16})\s*$")
_SUMMARY = re.compile(
    _PREFIX + r"event: (?P<name>\S+) client: (?P<client>.+?) sid: (?P<sid>0x[0-9a-f]+|0)"
    r" ssid: (?P<ssid>0x[0-9a-f]+|0)(?P<rest>.*)$"
)
_ADDRESSES = re.compile(r"(?P<key>iova|ipa|fetch_addr): (?P<value>0x[0-9a-f]+|0)")
_ATTRS = re.compile(
    _PREFIX + r"(?P<priv>priv|unpriv) (?P<kind>inst|data) (?P<rw>read|write) (?P<stage>s1|s2)"
    r' "(?P<cls>[^"]*)"(?: ttd_(?P<tt>read|write))?(?P<stall> stall)?'
    r" stag: (?P<stag>0x[0-9a-f]+|0)"
)


@dataclass
class DmesgSmmuEvent:
    """One event report found in a kernel log."""

    device: str
    event_id: int
    raw: tuple[int, ...] = ()
    event: SmmuEvent | None = None
    """The raw record decoded (non-strict), once all four words were seen."""
    name: str | None = None
    client: str | None = None
    sid: int | None = None
    ssid: int | None = None
    addresses: dict[str, int] = field(default_factory=dict)
    """iova / ipa / fetch_addr from the summary line."""
    privileged: bool | None = None
    instruction: bool | None = None
    read: bool | None = None
    stage2: bool | None = None
    class_text: str | None = None
    tt_read: bool | None = None
    """ttd_read / ttd_write of a permission fault on a table walk (CLASS TT)."""
    stall: bool | None = None
    stag: int | None = None


def parse_dmesg_events(lines: str | Iterable[str]) -> list[DmesgSmmuEvent]:
    """Every SMMUv3 event report in a log, in order; unrelated lines are skipped."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    events: list[DmesgSmmuEvent] = []
    current: dict[str, DmesgSmmuEvent] = {}
    for line in lines:
        line = line.rstrip("\n")
        if match := _RECEIVED.match(line):
            report = DmesgSmmuEvent(match["dev"].strip(), int(match["id"], 16))
            current[report.device] = report
            events.append(report)
        elif (match := _RAW.match(line)) and match["dev"].strip() in current:
            report = current[match["dev"].strip()]
            if len(report.raw) < 4:
                report.raw = (*report.raw, int(match["word"], 16))
                if len(report.raw) == 4:
                    report.event = decode_event(report.raw, strict=False)
        elif (match := _SUMMARY.match(line)) and match["dev"].strip() in current:
            report = current[match["dev"].strip()]
            report.name = match["name"]
            report.client = match["client"]
            report.sid = int(match["sid"], 16)
            report.ssid = int(match["ssid"], 16)
            report.addresses = {
                m["key"]: int(m["value"], 16) for m in _ADDRESSES.finditer(match["rest"])
            }
        elif (match := _ATTRS.match(line)) and match["dev"].strip() in current:
            report = current[match["dev"].strip()]
            report.privileged = match["priv"] == "priv"
            report.instruction = match["kind"] == "inst"
            report.read = match["rw"] == "read"
            report.stage2 = match["stage"] == "s2"
            report.class_text = match["cls"]
            report.tt_read = None if match["tt"] is None else match["tt"] == "read"
            report.stall = match["stall"] is not None
            report.stag = int(match["stag"], 16)
    return events
