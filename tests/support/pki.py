"""Test TLS material: a CA, a server certificate and a client certificate, written as PEM files
(the `cryptography` package is in the locked environment)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

LOCAL_NAMES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(directory: Path, server_names: tuple[str, ...] = LOCAL_NAMES) -> Pki:
    """``server_names``: the DNS names and IP addresses the server certificate is valid for."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: Any, path: Path) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    def cert(subject: str, key: Any, issuer: Any, issuer_key: Any, *, ca: bool, usage: Any = None,
             sans: list[Any] | None = None) -> Any:
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("tff-k8s test CA", ca_key, name("tff-k8s test CA"), ca_key, ca=True)
    pki = Pki(*(directory / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")))
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for who, cert_path, key_path, usage, sans in (
        ("tff-server", pki.server_cert, pki.server_key, ExtendedKeyUsageOID.SERVER_AUTH,
         [_san(x509, n) for n in server_names]),
        ("tff-client", pki.client_cert, pki.client_key, ExtendedKeyUsageOID.CLIENT_AUTH, None),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        write_key(key, key_path)
        cert_path.write_bytes(cert(who, key, ca_cert.subject, ca_key, ca=False, usage=usage, sans=sans)
                              .public_bytes(serialization.Encoding.PEM))
    return pki




def _san(x509: Any, name: str) -> Any:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)
