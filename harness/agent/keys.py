"""Per-run SSH key pairs (Ed25519), written 0600 into a private run directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(frozen=True)
class RunKey:
    """A key pair made for one run: the private key file and the OpenSSH public line."""

    private_key: Path
    public_line: str


def _write_key_pair(path: Path, comment: str) -> RunKey:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return RunKey(private_key=path, public_line=f"{public.decode()} {comment}")


def make_run_key(directory: Path, comment: str = "viommu-harness") -> RunKey:
    """Generate a fresh key pair in ``directory`` (which must be private)."""
    return _write_key_pair(directory / "id_ed25519", comment)


def make_host_key(directory: Path) -> RunKey:
    """A host key pair for the guest's sshd (``ssh_host_ed25519_key``, 0600, in ``directory``).

    The guest gets the private half through fw_cfg; the harness keeps the public line and
    accepts no other host key, so it never talks to another guest's sshd by mistake.
    """
    return _write_key_pair(directory / "ssh_host_ed25519_key", "viommu-harness-host")
