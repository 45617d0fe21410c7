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
    """``server_names``: the DNS names and IP addresses the server certificate is valid for. The CA's
    key is kept beside it (ca.key) so :func:`issue_client` can sign more client certificates."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _cert("tff-k8s test CA", ca_key, _name("tff-k8s test CA"), ca_key, ca=True)
    pki = Pki(*(directory / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")))
    pki.ca.write_bytes(_pem(ca_cert))
    _write_key(ca_key, directory / "ca.key")
    _leaf("tff-server", pki.server_cert, pki.server_key, pki, ExtendedKeyUsageOID.SERVER_AUTH,
          [_san(x509, n) for n in server_names])
    _leaf("tff-client", pki.client_cert, pki.client_key, pki, ExtendedKeyUsageOID.CLIENT_AUTH, None)
    return pki


def issue_client(pki: Pki, name: str) -> tuple[Path, Path]:
    """Another client certificate (and key) signed by ``pki``'s CA, as ``<name>.crt`` / ``<name>.key``
    beside it: e.g. one per silo of a cross-silo federation."""
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert_path, key_path = pki.ca.parent / f"{name}.crt", pki.ca.parent / f"{name}.key"
    _leaf(name, cert_path, key_path, pki, ExtendedKeyUsageOID.CLIENT_AUTH, None)
    return cert_path, key_path


def _leaf(subject: str, cert_path: Path, key_path: Path, pki: Pki, usage: Any, sans: list[Any] | None) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    ca_key = serialization.load_pem_private_key((pki.ca.parent / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    _write_key(key, key_path)
    cert_path.write_bytes(_pem(_cert(subject, key, ca_cert.subject, ca_key, ca=False, usage=usage, sans=sans)))


def _name(cn: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _write_key(key: Any, path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _cert(subject: str, key: Any, issuer: Any, issuer_key: Any, *, ca: bool, usage: Any = None,
          sans: list[Any] | None = None) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _san(x509: Any, name: str) -> Any:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)
