"""The prod stack's shape on the engine cluster: TLS and client auth on, their material set with
``pulumi config set --secret``, digest-pinned images, 10 clients, the ``standard-rwo`` storage class.
Created, every Pod Ready, the secrets in the cluster and encrypted everywhere Pulumi keeps them."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from pathlib import Path

import pytest
import yaml
from engine_cluster import ControlPlane
from engine_stack import PACK_RAN, EngineStack, is_ready, k8s_resources, target_overrides
from engine_timings import Clock

pytestmark = pytest.mark.engine

NAMESPACE = "tff-k8s-prodci"
clock = Clock("prod")


def tls_material(namespace: str) -> dict[str, str]:
    """A CA and a server certificate for the Service's DNS name (what docs/kubernetes.md asks for)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tff-k8s test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    dns = f"tff-server.{namespace}.svc"
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return {
        "tlsCaCert": ca.public_bytes(pem).decode(),
        "tlsServerCert": cert.public_bytes(pem).decode(),
        "tlsServerKey": key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    }


@pytest.fixture(scope="module")
def prod(plane: ControlPlane, scratch: Path) -> EngineStack:
    stack = EngineStack(plane, scratch, "prodci", "prod", target_overrides(plane, NAMESPACE))
    yield stack
    if stack.state_resources():
        stack.destroy()
    stack.remove()


class TestProdShapedStack:
    token = secrets.token_hex(32)

    def test_secrets_are_set_encrypted(self, prod: EngineStack) -> None:
        with clock("pulumi config set --secret (x4)"):
            prod.set_secret("authToken", self.token)
            for key, value in tls_material(NAMESPACE).items():
                prod.set_secret(key, value)
        config = yaml.safe_load(prod.stack_file.read_text())["config"]
        for key in ("authToken", "tlsCaCert", "tlsServerCert", "tlsServerKey"):
            assert set(config[f"tff-k8s:{key}"]) == {"secure"}, key
        assert self.token not in prod.stack_file.read_text()

    def test_up_creates_it_ready(self, prod: EngineStack, plane: ControlPlane) -> None:
        with clock("preview"):
            preview = prod.preview(policy_config=prod.policy_config())
        assert preview.ok, preview.output
        with clock("up (create)"):
            result = prod.up(policy_config=prod.policy_config())
        assert result.ok, result.output
        assert PACK_RAN in result.output and "Policy Violations" not in result.output
        assert is_ready(plane.get(f"/api/v1/namespaces/{NAMESPACE}/pods/tff-server"))
        deployment = plane.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/tff-client")
        assert deployment["status"].get("readyReplicas") == 10
        claim = plane.get(f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims/tff-server-checkpoints")
        assert claim["spec"]["storageClassName"] == "standard-rwo"
        assert claim["status"]["phase"] == "Bound"

    def test_secrets_reach_the_cluster_and_stay_encrypted_in_state(
        self, prod: EngineStack, plane: ControlPlane
    ) -> None:
        secrets_in_ns = plane.get(f"/api/v1/namespaces/{NAMESPACE}/secrets")["items"]
        values = [base64.b64decode(v).decode() for s in secrets_in_ns for v in (s.get("data") or {}).values()]
        assert self.token in values
        assert self.token not in prod.exported_state_text()
        assert any(r["type"] == "kubernetes:core/v1:Secret" for r in k8s_resources(prod))

    def test_destroy(self, prod: EngineStack) -> None:
        with clock("destroy"):
            result = prod.destroy()
        assert result.ok, result.output
        assert prod.state_resources() == []
