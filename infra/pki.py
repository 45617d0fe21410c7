"""Cross-silo certificates: the server's, each silo's client certificate, and the allowlist the server
reads (``security.silos``: each silo's name and the SHA-256 of its certificate).

The material comes from stack secrets or, where the stack asks (``deployment.hub.ca: generate``,
``deployment.silos[i].identity.generate``), from the ``tls`` provider: the keys then live in the
stack's state, encrypted as secrets. A silo is known by its certificate's fingerprint, never by a name
it states, so the allowlist is derived from the very certificates the silos get.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pulumi
import pulumi_tls as tls
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from infra.meta import child
from infra.placeholders import is_placeholder
from infra.stack_fields import ip_literal
from infra.stack_inputs import CA_CERT, CERT, KEY, Credentials
from infra.stack_schema import StackConfig
from services.common.config import SiloIdentity

KEY_ALGORITHM = tls.PrivateKeyArgs(algorithm="ECDSA", ecdsa_curve="P256")
SERVER_USES = ["digital_signature", "key_encipherment", "server_auth"]
CLIENT_USES = ["digital_signature", "key_encipherment", "client_auth"]
CA_USES = ["cert_signing", "crl_signing", "digital_signature"]


def cert_sha256(pem: str) -> str:
    """SHA-256 of a PEM certificate's DER, lowercase hex: what the server compares a client's to.

    A mocks placeholder (``tff-k8s render`` never decrypts stack secrets) hashes as text, so a render
    still shows where each fingerprint lands."""
    if is_placeholder(pem):
        return hashlib.sha256(pem.encode()).hexdigest()
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate ({exc}): check the silo's tlsClientCert-<silo> stack secret") from None
    return cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class SiloMaterial:
    tls: dict[str, pulumi.Output[str]]  # ca.crt, tls.crt, tls.key: what the silo's client Secret holds
    fingerprint: pulumi.Output[str]


class FederationPki(pulumi.ComponentResource):
    server_tls: dict[str, pulumi.Output[str]]
    silos: dict[str, SiloMaterial]
    allowlist: pulumi.Output[tuple[SiloIdentity, ...]]

    def __init__(
        self, name: str, cfg: StackConfig, creds: Credentials, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("tff-k8s:pki:FederationPki", name, None, opts)
        self._name, self._hours = name, cfg.deployment.hub.validity_hours
        d = cfg.deployment
        if d.hub.ca == "generate":
            ca_key = self._private_key(f"{name}-ca")
            ca_cert = tls.SelfSignedCert(
                f"{name}-ca",
                private_key_pem=ca_key.private_key_pem,
                is_ca_certificate=True,
                allowed_uses=CA_USES,
                validity_period_hours=self._hours,
                subject=tls.SelfSignedCertSubjectArgs(common_name=f"{d.instance} federation CA"),
                opts=child(self),
            ).cert_pem
            ca_key_pem: pulumi.Output[str] | None = ca_key.private_key_pem
            host = d.hub.host
            service = f"{d.server.name}.{d.namespace}"
            key, cert = self._issue(
                "server",
                ca_cert,
                ca_key.private_key_pem,
                common_name=d.server.name,
                uses=SERVER_USES,
                dns_names=[d.server.name, service, f"{service}.svc", *([] if ip_literal(host) else [host])],
                ip_addresses=[host] if ip_literal(host) else [],
            )
            self.server_tls = {CA_CERT: ca_cert, CERT: cert, KEY: key}
        else:
            self.server_tls = dict(creds.server_tls)
            ca_cert, ca_key_pem = creds.server_tls[CA_CERT], creds.ca_key
        self.silos = {}
        for silo in d.silos:
            if silo.identity.generate:
                assert ca_key_pem is not None  # read_credentials asked for tlsCaKey
                key, cert = self._issue(silo.name, ca_cert, ca_key_pem, common_name=silo.name, uses=CLIENT_USES)
            else:
                cert, key = creds.silos[silo.name][CERT], creds.silos[silo.name][KEY]
            # A fingerprint reveals nothing of the key: unsecret it, so the ConfigMap and previews show it.
            fingerprint = pulumi.Output.unsecret(cert.apply(cert_sha256))
            self.silos[silo.name] = SiloMaterial({CA_CERT: ca_cert, CERT: cert, KEY: key}, fingerprint)
        names = list(self.silos)
        self.allowlist = pulumi.Output.all(*(m.fingerprint for m in self.silos.values())).apply(
            lambda prints: tuple(SiloIdentity(name=n, cert_sha256=p) for n, p in zip(names, prints, strict=True))
        )
        self.register_outputs({})

    def _private_key(self, name: str) -> tls.PrivateKey:
        return tls.PrivateKey(name, KEY_ALGORITHM, opts=child(self))

    def _issue(
        self,
        who: str,
        ca_cert: pulumi.Input[str],
        ca_key: pulumi.Input[str],
        *,
        common_name: str,
        uses: list[str],
        dns_names: list[str] | None = None,
        ip_addresses: list[str] | None = None,
    ) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        """A new key and a certificate for it, signed by the CA: (key PEM, certificate PEM)."""
        name = f"{self._name}-{who}"
        key = self._private_key(name)
        request = tls.CertRequest(
            name,
            private_key_pem=key.private_key_pem,
            subject=tls.CertRequestSubjectArgs(common_name=common_name),
            dns_names=dns_names or None,
            ip_addresses=ip_addresses or None,
            opts=child(self),
        )
        cert = tls.LocallySignedCert(
            name,
            cert_request_pem=request.cert_request_pem,
            ca_cert_pem=ca_cert,
            ca_private_key_pem=ca_key,
            allowed_uses=uses,
            validity_period_hours=self._hours,
            opts=child(self),
        )
        return key.private_key_pem, cert.cert_pem
