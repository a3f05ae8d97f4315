"""The harness's exception types: one family, each naming what was wrong.

    HarnessError
     ├── ConfigError            bad description / option / argument (before anything runs)
     │    └── MissingCapabilityError  (harness.qemu.probe) QEMU lacks a device or property
     ├── PrerequisiteError      a host tool, package or binary is missing
     │    └── QemuNotFoundError (harness.qemu.probe) no QEMU binary for the arch
     ├── DecodeError / EncodeError   bytes or values that do not fit a format
     └── ...                    the rest sit beside their raisers (MachineError, AgentError,
                                IoctlError, ImageBuildError, ...)

Callers branch on these types, never on an error's text; only ``MissingCapabilityError``
and ``PrerequisiteError`` turn into skips, and their messages name what is missing.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base of every error the harness raises on purpose."""


class ConfigError(HarnessError):
    """A machine description, option or argument is invalid; raised before anything runs."""


class PrerequisiteError(HarnessError):
    """A host tool, package or binary is missing (``scripts/setup.sh`` installs it)."""


class DecodeError(HarnessError, ValueError):
    """Bytes or a register value cannot be decoded: names the field that is wrong.

    Every decoder in ``harness.vtd``, ``harness.smmuv3``, ``harness.pgtable`` and
    ``harness.rings`` raises only this type for bad input (short buffers, reserved bits
    set, impossible field values).
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class EncodeError(HarnessError, ValueError):
    """A value cannot be encoded into the named field (out of range, misaligned, ...)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
