"""Intel VT-d formats: registers, PASID/context entries, invalidation descriptors, faults.

Standard library only (shipped into guests). Decoders raise ``DecodeError`` naming the
field, encoders ``EncodeError``, ``predict_registers`` ``ConfigError``.
"""

from __future__ import annotations

from harness.vtd.context import (
    ContextEntry,
    RootEntry,
    ScalableContextEntry,
    ScalableRootEntry,
    TranslationType,
)
from harness.vtd.dmesg import DmarFault, InvalidPageRequest, dmar_faults, parse_dmesg_faults
from harness.vtd.faults import FaultRecord
from harness.vtd.invalidation import (
    CcGranularity,
    ContextCacheInvalidation,
    DescriptorType,
    DeviceTlbInvalidation,
    IecInvalidation,
    InvalidationDescriptor,
    InvalidationWait,
    IotlbGranularity,
    IotlbInvalidation,
    PasidCacheGranularity,
    PasidCacheInvalidation,
    PasidDeviceTlbInvalidation,
    PasidIotlbGranularity,
    PasidIotlbInvalidation,
    decode_invalidation,
)
from harness.vtd.pasid import Fspm, PasidDirEntry, PasidEntry, Pgtt, pasid_index
from harness.vtd.predict import predict, predict_registers, resolve_config
from harness.vtd.prq import PageRequest
from harness.vtd.reasons import FAULT_REASONS, FaultKind, fault_kind, fault_reason_name
from harness.vtd.registers import Cap, Ecap

__all__ = [
    "FAULT_REASONS",
    "Cap",
    "CcGranularity",
    "ContextCacheInvalidation",
    "ContextEntry",
    "DescriptorType",
    "DeviceTlbInvalidation",
    "DmarFault",
    "Ecap",
    "FaultKind",
    "FaultRecord",
    "Fspm",
    "IecInvalidation",
    "InvalidPageRequest",
    "InvalidationDescriptor",
    "InvalidationWait",
    "IotlbGranularity",
    "IotlbInvalidation",
    "PageRequest",
    "PasidCacheGranularity",
    "PasidCacheInvalidation",
    "PasidDeviceTlbInvalidation",
    "PasidDirEntry",
    "PasidEntry",
    "PasidIotlbGranularity",
    "PasidIotlbInvalidation",
    "Pgtt",
    "RootEntry",
    "ScalableContextEntry",
    "ScalableRootEntry",
    "TranslationType",
    "decode_invalidation",
    "dmar_faults",
    "fault_kind",
    "fault_reason_name",
    "parse_dmesg_faults",
    "pasid_index",
    "predict",
    "predict_registers",
    "resolve_config",
]
