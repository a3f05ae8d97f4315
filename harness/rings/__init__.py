"""Fault-ring checkers: one per ring format, each returning a :class:`RingVerdict`, never raising.

- :mod:`~harness.rings.iommufd_fault`: iommufd fault queue (iommu_hwpt_pgfault groups, responses)
- :mod:`~harness.rings.veventq`: iommufd vEVENTQ (sequence numbers, LOST_EVENTS, vendor records)
- :mod:`~harness.rings.legacy_region`: seed 000's VFIO DMA fault / fault-response regions
- :mod:`~harness.rings.smmu_evtq`: the SMMUv3 event queue (PROD/CONS, wrap, overflow)
- :mod:`~harness.rings.vtd_queues`: VT-d fault-recording registers and page request queue
"""

from harness.rings.expect import ExpectedFault, FaultView, Match, match_expected
from harness.rings.iommufd_fault import FaultQueueChecker, check_fault_queue
from harness.rings.legacy_region import (
    FAULT_RING,
    RESPONSE_RING,
    LegacyRing,
    LegacyRingChecker,
    check_fault_region,
    check_legacy_rings,
)
from harness.rings.payloads import DecoderCheck, PayloadCheck, SmmuEventCheck
from harness.rings.smmu_evtq import SmmuEventQueue, check_smmu_evtq
from harness.rings.verdict import Malformed, RingVerdict
from harness.rings.veventq import VEvent, VEventQChecker, check_veventq, parse_veventq
from harness.rings.vtd_queues import (
    VtdFaultRecorder,
    VtdPageRequestQueue,
    check_fault_recording,
    check_page_request_queue,
)

__all__ = [
    "FAULT_RING",
    "RESPONSE_RING",
    "DecoderCheck",
    "ExpectedFault",
    "FaultQueueChecker",
    "FaultView",
    "LegacyRing",
    "LegacyRingChecker",
    "Malformed",
    "Match",
    "PayloadCheck",
    "RingVerdict",
    "SmmuEventCheck",
    "SmmuEventQueue",
    "VEvent",
    "VEventQChecker",
    "VtdFaultRecorder",
    "VtdPageRequestQueue",
    "check_fault_queue",
    "check_fault_recording",
    "check_fault_region",
    "check_legacy_rings",
    "check_page_request_queue",
    "check_smmu_evtq",
    "check_veventq",
    "match_expected",
    "parse_veventq",
]
