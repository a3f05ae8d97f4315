"""Stage-1 page tables (x86-64 for VT-d first stage, Arm VMSAv8-64) built in a byte buffer.

Builders lay tables out at the address the IOMMU will see them at; walkers read the bytes
back as the hardware would and say what an address translates to, or why it faults.
"""

from harness.pgtable.alloc import DirtyRange, TableMemory
from harness.pgtable.arm import ArmAttrs, ArmPageTable, ArmStage1Config, arm_geometry, walk_arm
from harness.pgtable.base import PageTable
from harness.pgtable.common import READ_WRITE, Fault, FaultKind, Level, Perms, Translation
from harness.pgtable.x86 import VtdFirstStageConfig, X86Attrs, X86PageTable, walk_x86, x86_geometry

__all__ = [
    "READ_WRITE",
    "ArmAttrs",
    "ArmPageTable",
    "ArmStage1Config",
    "DirtyRange",
    "Fault",
    "FaultKind",
    "Level",
    "PageTable",
    "Perms",
    "TableMemory",
    "Translation",
    "VtdFirstStageConfig",
    "X86Attrs",
    "X86PageTable",
    "arm_geometry",
    "walk_arm",
    "walk_x86",
    "x86_geometry",
]
