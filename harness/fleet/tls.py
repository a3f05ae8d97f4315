"""Per-run TLS for the fleet: a fresh ECDSA CA, and one certificate each for scheduler, workers
and the client, made with ``cryptography`` and kept in memory.

The PEMs go to ``distributed.security.Security`` as text (Dask accepts in-memory PEM), and
to each remote worker over its SSH session's standard input: no key is ever written to a
host's disk, a command line or an environment.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

ROLES = ("scheduler", "worker", "client")


@dataclass(frozen=True)
class RunCertificates:
    """The run's CA certificate and a (certificate, key) PEM pair per role."""

    ca: str
    pairs: dict[str, tuple[str, str]]

    def security(self, role: str = "client") -> Any:
        """A ``distributed.security.Security`` requiring TLS, for the controller's side."""
        from distributed.security import Security

        kwargs: dict[str, str] = {"tls_ca_file": self.ca}
        for r, (cert, key) in self.pairs.items():
            if r == "worker" and role != "worker":
                continue
            kwargs[f"tls_{r}_cert"] = cert
            kwargs[f"tls_{r}_key"] = key
        return Security(require_encryption=True, **kwargs)

    def worker_config(self) -> dict[str, Any]:
        """Dask configuration a worker applies in memory (sent over SSH stdin)."""
        cert, key = self.pairs["worker"]
        return {
            "distributed.comm.require-encryption": True,
            "distributed.comm.tls.ca-file": self.ca,
            "distributed.comm.tls.worker.cert": cert,
            "distributed.comm.tls.worker.key": key,
        }


def make_certificates(days: int = 2) -> RunCertificates:
    """A fresh Ed25519 CA and role certificates signed by it, valid for ``days``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(tz=datetime.UTC)
    until = now + datetime.timedelta(days=days)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(key: ec.EllipticCurvePrivateKey) -> str:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("viommu-harness fleet run CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pairs: dict[str, tuple[str, str]] = {}
    for role in ROLES:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(f"viommu-harness fleet {role}"))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        pairs[role] = (cert.public_bytes(serialization.Encoding.PEM).decode(), pem_key(key))
    return RunCertificates(ca_cert.public_bytes(serialization.Encoding.PEM).decode(), pairs)
