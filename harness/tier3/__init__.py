"""Tier 3: QEMU's own nesting under test, on a real KVM host or simulated as L2 inside L1.

- ``hostcheck``: a real host's device, IOMMU group, KVM, iommufd and IOMMU nesting
  capability (GET_HW_INFO), each with the exact reason a test skips on.
- ``passthrough``: the passthrough topologies (``arm-smmuv3,accel=on``, ``intel-iommu``
  with first-stage translation) and the machines built from them.
- ``l1`` / ``l2``: the simulation, an L2 QEMU inside an L1 guest, reached through L1
  (``forward``) with the same machine, QMP, trace and agent APIs as a local guest.
The scenarios are in ``harness.scenarios.tier3``, the command line (``harness tier3
check|boot|run``) in ``harness.commands.tier3``.
"""
