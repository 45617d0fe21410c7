"""What the ``tls`` provider would return, made under Pulumi mocks (:mod:`infra.harness.mocked`): real keys,
requests and certificates, so fingerprints and the hub's allowlist are computed exactly as in a real run.

Deterministic, so two renders of one commit are byte-identical: each key is an Ed25519 key derived from
the resource's logical name (Ed25519 signatures are deterministic too), each validity window fixed.
Stand-ins for review and tests only: a real ``pulumi up`` gets the provider's own random material.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from infra.placeholders import is_placeholder, placeholder

PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
SELF_SIGNED = "tls:index/selfSignedCert:SelfSignedCert"
CERT_REQUEST = "tls:index/certRequest:CertRequest"
LOCALLY_SIGNED = "tls:index/locallySignedCert:LocallySignedCert"
_NOT_BEFORE = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _pem(cert: x509.Certificate | x509.CertificateSigningRequest) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key(pem: str) -> ed25519.Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey), type(key)
    return key


def _name(subject: Mapping[str, Any] | None) -> x509.Name:
    common = (subject or {}).get("commonName")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)] if common else [])


def _sans(inputs: Mapping[str, Any]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in inputs.get("dnsNames") or []]
    return names + [x509.IPAddress(ipaddress.ip_address(a)) for a in inputs.get("ipAddresses") or []]


def _certificate(
    name: str, subject: x509.Name, issuer: x509.Name, public_key: Any, signer: Any, inputs: Mapping[str, Any],
    sans: list[x509.GeneralName],
) -> str:
    hours = int(inputs.get("validityPeriodHours") or 24)
    uses = set(inputs.get("allowedUses") or [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(int.from_bytes(hashlib.sha256(name.encode()).digest()[:16], "big") >> 1)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_BEFORE + datetime.timedelta(hours=hours))
        .add_extension(x509.BasicConstraints(ca=bool(inputs.get("isCaCertificate")), path_length=None), True)
    )
    usages = [o for u, o in (("server_auth", ExtendedKeyUsageOID.SERVER_AUTH),
                             ("client_auth", ExtendedKeyUsageOID.CLIENT_AUTH)) if u in uses]
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
    return _pem(builder.sign(signer, None))


def outputs(type_: str, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The outputs a ``tls`` resource adds to its inputs (empty for any other type)."""
    if type_ == PRIVATE_KEY:
        key = ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"mock-key:{name}".encode()).digest())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        return {"privateKeyPem": pem, "privateKeyPemPkcs8": pem, "publicKeyPem": public}
    if type_ == SELF_SIGNED:
        key = _key(inputs["privateKeyPem"])
        subject = _name(inputs.get("subject"))
        return {"certPem": _certificate(name, subject, subject, key.public_key(), key, inputs, _sans(inputs))}
    if type_ == CERT_REQUEST:
        key = _key(inputs["privateKeyPem"])
        builder = x509.CertificateSigningRequestBuilder().subject_name(_name(inputs.get("subject")))
        if sans := _sans(inputs):
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
        return {"certRequestPem": _pem(builder.sign(key, None))}
    if type_ == LOCALLY_SIGNED:
        if is_placeholder(inputs["caCertPem"]) or is_placeholder(inputs["caPrivateKeyPem"]):
            return {"certPem": placeholder(f"certificate {name} signed by the stack's CA")}
        request = x509.load_pem_x509_csr(inputs["certRequestPem"].encode())
        ca = x509.load_pem_x509_certificate(inputs["caCertPem"].encode())
        try:
            sans = list(request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            sans = []
        cert = _certificate(
            name, request.subject, ca.subject, request.public_key(), _key(inputs["caPrivateKeyPem"]), inputs, sans
        )
        return {"certPem": cert}
    return {}
