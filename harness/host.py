"""Facts about the machine the harness runs on, needed by both the image builds and QEMU."""

from __future__ import annotations

import platform


def host_arch() -> str:
    """This machine's architecture in the harness's naming (``x86_64``, ``arm64``)."""
    machine = platform.machine()
    return {"amd64": "x86_64", "aarch64": "arm64"}.get(machine, machine)
