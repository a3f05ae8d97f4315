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


def make_run_key(directory: Path, comment: str = "viommu-harness") -> RunKey:
    """Generate a fresh key pair in ``directory`` (which must be private)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    path = directory / "id_ed25519"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return RunKey(private_key=path, public_line=f"{public.decode()} {comment}")
