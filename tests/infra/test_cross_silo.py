"""A cross-silo stack under mocks: each cluster's resources on its own provider, the hub's allowlist
made of exactly the silos' certificates, a silo's network reaching the hub only, a hub reachable
from the silos only."""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

import pytest
from cross_silo_stack import (
    STACK,
    allowlist,
    committed,
    federation_config,
    manifests,
    one,
    run_with,
    secret_data,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from infra import layout
from infra.clusters import HUB, PROVIDER_TYPE
from infra.harness.mocked import cluster_manifests, run_program
from infra.manifests import by_cluster

SILOS = ("silo-a", "silo-b")
NAMESPACES = {HUB: "tff-hub", "silo-a": "tff-silo", "silo-b": "tff-silo"}


def test_each_cluster_gets_one_provider_for_its_own_context() -> None:
    providers = {p.name: p.inputs.get("context") for p in committed().of_type(PROVIDER_TYPE)}
    assert providers == {"kubernetes": "kind-hub", "kubernetes-silo-a": "kind-silo-a", "kubernetes-silo-b": "kind-silo-b"}


def test_every_resource_lands_on_its_own_clusters_provider() -> None:
    found = manifests(committed())
    assert set(found) == {HUB, *SILOS}
    for cluster, items in found.items():
        for m in items:
            namespace = m["metadata"]["name"] if m["kind"] == "Namespace" else m["metadata"]["namespace"]
            assert namespace == NAMESPACES[cluster], (cluster, m["kind"], m["metadata"]["name"])
    hub_kinds = {m["kind"] for m in found[HUB]}
    assert {"Pod", "PersistentVolumeClaim", "Service"} <= hub_kinds and "Deployment" not in hub_kinds
    for silo in SILOS:
        kinds = {m["kind"] for m in found[silo]}
        assert "Deployment" in kinds and not kinds & {"Pod", "Service", "PersistentVolumeClaim"}


def test_a_resource_on_the_default_provider_is_caught() -> None:
    run = committed()
    stray = next(r for r in run.resources if r.type == "kubernetes:apps/v1:Deployment")
    run.resources.append(type(stray)(stray.type, "stray", stray.inputs, provider="urn:pulumi:x::y::pulumi:providers:kubernetes::default::id"))
    try:
        with pytest.raises(LookupError, match="stray"):
            by_cluster(run)
    finally:
        run.resources.pop()


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _silo_tls(run: Any, silo: str) -> dict[str, str]:
    return secret_data(one(manifests(run)[silo], "Secret", "tff-client-tls"))


def test_the_hub_accepts_exactly_the_silos_certificates() -> None:
    run = committed()
    prints = {s: _cert(_silo_tls(run, s)["tls.crt"]).fingerprint(hashes.SHA256()).hex() for s in SILOS}
    assert allowlist(run) == prints
    assert len(set(prints.values())) == len(SILOS)
    security = federation_config(one(manifests(run)[HUB], "ConfigMap"))["security"]
    assert security["tls"] is True and security["mutual_tls"] is True
    assert run.outputs["siloFingerprints"] == prints


def test_a_silo_removed_from_the_stack_leaves_the_allowlist_and_replaces_the_server_config() -> None:
    before = committed()

    def drop_b(d: dict[str, Any], _f: dict[str, Any]) -> None:
        d["silos"] = d["silos"][:1]  # the federation config as it was: only the silo list changes
        d["silos"][0]["clients"]["replicas"] = 4

    after = run_with(drop_b)
    assert list(allowlist(after)) == ["silo-a"]
    assert allowlist(after)["silo-a"] == allowlist(before)["silo-a"]
    assert set(manifests(after)) == {HUB, "silo-a"}
    old_map = one(manifests(before)[HUB], "ConfigMap")["metadata"]["name"]
    new_map = one(manifests(after)[HUB], "ConfigMap")["metadata"]["name"]
    assert old_map != new_map
    pod = one(manifests(after)[HUB], "Pod")
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "config"]
    assert volume["configMap"]["name"] == new_map


def test_silo_certificates_come_from_the_hub_ca_and_name_their_silo() -> None:
    run = committed()
    server = secret_data(one(manifests(run)[HUB], "Secret", "tff-server-tls"))
    ca = _cert(server["ca.crt"])
    assert _cert(server["tls.crt"]).issuer == ca.subject
    sans = _cert(server["tls.crt"]).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "172.18.0.2" in {str(a) for a in sans.get_values_for_type(x509.IPAddress)}
    for silo in SILOS:
        tls = _silo_tls(run, silo)
        cert = _cert(tls["tls.crt"])
        assert tls["ca.crt"] == server["ca.crt"] and cert.issuer == ca.subject
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == silo
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert "tls.key" in tls


def _policies(found: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m["spec"] for m in found if m["kind"] == "NetworkPolicy"}


def test_a_silo_reaches_dns_and_the_hubs_address_only() -> None:
    for silo in SILOS:
        policies = _policies(manifests(committed())[silo])
        assert set(policies) == {"tff-k8s-default-deny", "tff-k8s-allow-dns", "tff-k8s-clients-to-hub"}
        assert not any(spec.get("ingress") for spec in policies.values())
        (rule,) = policies["tff-k8s-clients-to-hub"]["egress"]
        assert rule == {"to": [{"ipBlock": {"cidr": "172.18.0.0/16"}}], "ports": [{"port": 30051, "protocol": "TCP"}]}


def test_the_hub_admits_the_server_port_from_the_silos_ranges_only() -> None:
    policies = _policies(manifests(committed())[HUB])
    assert set(policies) == {"tff-k8s-default-deny", "tff-k8s-allow-dns", "tff-k8s-server-from-silos"}
    (rule,) = policies["tff-k8s-server-from-silos"]["ingress"]
    assert rule == {"from": [{"ipBlock": {"cidr": "172.18.0.0/16"}}], "ports": [{"port": 50051, "protocol": "TCP"}]}
    assert not any(spec.get("egress") for name, spec in policies.items() if name != "tff-k8s-allow-dns")


def test_a_hub_address_given_as_an_ip_is_the_silos_egress_by_default() -> None:
    def no_cidr(d: dict[str, Any], _f: dict[str, Any]) -> None:
        for silo in d["silos"]:
            del silo["hub_cidr"]

    (rule,) = _policies(manifests(run_with(no_cidr))["silo-a"])["tff-k8s-clients-to-hub"]["egress"]
    assert rule["to"] == [{"ipBlock": {"cidr": "172.18.0.2/32"}}]


def test_silo_clients_dial_the_hubs_public_address_with_their_own_certificate() -> None:
    for silo in SILOS:
        found = manifests(committed())[silo]
        container = one(found, "Deployment")["spec"]["template"]["spec"]["containers"][0]
        assert {"name": "SERVER_ADDRESS", "value": "172.18.0.2:30051"} in container["env"]
        fed = federation_config(one(found, "ConfigMap"))
        assert fed["client"]["server_address"] == "172.18.0.2:30051"
        assert fed["security"]["silos"] == []  # the allowlist is the server's alone
        assert set(_silo_tls(committed(), silo)) == {"ca.crt", "tls.crt", "tls.key"}


def test_the_hub_is_exposed_on_its_node_port_and_counted_in_its_quota() -> None:
    found = manifests(committed())[HUB]
    public = one(found, "Service", "tff-server-public")["spec"]
    assert public["type"] == "NodePort" and public["externalTrafficPolicy"] == "Local"
    assert [(p["port"], p["nodePort"]) for p in public["ports"]] == [(50051, 30051)]
    assert one(found, "Service", "tff-server")["spec"]["type"] == "ClusterIP"  # metrics stay inside
    hard = one(found, "ResourceQuota")["spec"]["hard"]
    assert (hard["services.nodeports"], hard["services.loadbalancers"], hard["pods"]) == ("1", "0", "1")


def test_a_load_balancer_hub_limits_its_sources_and_uses_the_public_port() -> None:
    def balanced(d: dict[str, Any], _f: dict[str, Any]) -> None:
        d["hub"] = {"public_address": "203.0.113.7:443", "service_type": "LoadBalancer", "ca": "generate",
                    "silo_cidrs": ["198.51.100.0/24"],
                    "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"}}
        d["network"] = {"allow_load_balancer": True}
        for silo in d["silos"]:
            del silo["hub_cidr"]

    found = manifests(run_with(balanced))
    public = one(found[HUB], "Service", "tff-server-public")
    assert public["metadata"]["annotations"] == {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"}
    spec = public["spec"]
    assert spec["type"] == "LoadBalancer" and spec["loadBalancerSourceRanges"] == ["198.51.100.0/24"]
    assert [(p["port"], p["targetPort"]) for p in spec["ports"]] == [(443, 50051)]
    hard = one(found[HUB], "ResourceQuota")["spec"]["hard"]
    assert (hard["services.loadbalancers"], hard["services.nodeports"]) == ("1", "1")
    (rule,) = _policies(found["silo-a"])["tff-k8s-clients-to-hub"]["egress"]
    assert rule["to"] == [{"ipBlock": {"cidr": "203.0.113.7/32"}}] and rule["ports"][0]["port"] == 443


def test_a_silo_with_its_own_data_mounts_its_claim_read_only() -> None:
    def own_data(d: dict[str, Any], _f: dict[str, Any]) -> None:
        d["silos"][0]["data"] = {"pvc": "ward-7-shards", "path": "digits/npz"}

    found = manifests(run_with(own_data))
    spec = one(found["silo-a"], "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "data"]
    assert volume["persistentVolumeClaim"] == {"claimName": "ward-7-shards", "readOnly": True}
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "data"]
    assert mount == {"name": "data", "mountPath": layout.DATA_DIR, "readOnly": True}
    data = federation_config(one(found["silo-a"], "ConfigMap"))["data"]
    assert data["source"] == "npz" and data["npz_dir"] == f"{layout.DATA_DIR}/digits/npz"
    assert one(found["silo-a"], "ResourceQuota")["spec"]["hard"]["persistentvolumeclaims"] == "1"
    assert federation_config(one(found["silo-b"], "ConfigMap"))["data"]["source"] == "digits"
    assert "data" not in {v["name"] for v in one(found["silo-b"], "Deployment")["spec"]["template"]["spec"]["volumes"]}


def test_outputs_per_silo() -> None:
    outputs = committed().outputs
    assert outputs["clientReplicas"] == 4 and outputs["publicAddress"] == "172.18.0.2:30051"
    assert set(outputs["silos"]) == set(SILOS)
    for silo in SILOS:
        out = outputs["silos"][silo]
        assert out["namespace"] == "tff-silo" and out["clientReplicas"] == 2
        assert out["logsCommand"].startswith(f"kubectl --context kind-{silo} --namespace tff-silo logs")
    assert "clientLogsCommand" not in outputs


# --- certificates from stack secrets (what the container test renders with) ---------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def _issue(name: str, key: ec.EllipticCurvePrivateKey, ca: tuple[x509.Name, ec.EllipticCurvePrivateKey]) -> str:
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca[0])
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca[1], hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_identities_from_stack_secrets_are_the_allowlist() -> None:
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (ca_name, ca_key)
    secrets = {"tff-k8s:tlsCaCert": _issue("test CA", ca_key, ca), "tff-k8s:tlsServerKey": _pem_key(server_key := _key()),
               "tff-k8s:tlsServerCert": _issue("tff-server", server_key, ca)}
    for silo in SILOS:
        key = _key()
        secrets |= {f"tff-k8s:tlsClientCert-{silo}": _issue(silo, key, ca), f"tff-k8s:tlsClientKey-{silo}": _pem_key(key)}

    def from_secrets(d: dict[str, Any], _f: dict[str, Any]) -> None:
        d["hub"]["ca"] = "secrets"
        for silo in d["silos"]:
            silo["identity"] = {"generate": False}

    from cross_silo_stack import config

    found = cluster_manifests(STACK, overrides=config(from_secrets), secrets=secrets)
    assert not [r for r in run_program(STACK, overrides=config(from_secrets), secrets=secrets).resources
                if r.type.startswith("tls:")], "nothing generated"
    expected = {s: hashlib.sha256(_cert(secrets[f"tff-k8s:tlsClientCert-{s}"]).public_bytes(serialization.Encoding.DER)).hexdigest() for s in SILOS}
    silos = federation_config(one(found[HUB], "ConfigMap"))["security"]["silos"]
    assert {s["name"]: s["cert_sha256"] for s in silos} == expected
    for silo in SILOS:
        tls = secret_data(one(found[silo], "Secret", "tff-client-tls"))
        assert tls == {"ca.crt": secrets["tff-k8s:tlsCaCert"], "tls.crt": secrets[f"tff-k8s:tlsClientCert-{silo}"],
                       "tls.key": secrets[f"tff-k8s:tlsClientKey-{silo}"]}


def test_the_documented_prod_shaped_example_deploys_under_mocks() -> None:
    """docs/kubernetes.md's cloud load balancer example, as written: valid, on its own providers, with
    both silos (one from stack secrets, one generated under the stack's CA) in the allowlist."""
    import re

    import yaml

    from infra.stack_files import REPO_ROOT

    docs = (REPO_ROOT / "docs" / "kubernetes.md").read_text()
    section = docs.split("### A prod-shaped cross-silo stack", 1)[1]
    example = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S)[1])["config"]
    run = run_program("prod", overrides=example)  # prod's file, every key replaced by the example's
    providers = {p.name: p.inputs.get("kubeconfig") for p in run.of_type(PROVIDER_TYPE)}
    assert providers["kubernetes-hospital-a"] == "/etc/tff-k8s/hospital-a.kubeconfig"
    assert set(allowlist(run)) == {"hospital-a", "hospital-b"}
    public = one(manifests(run)[HUB], "Service", "tff-server-public")["spec"]
    assert public["type"] == "LoadBalancer" and public["loadBalancerSourceRanges"] == ["198.51.100.0/24", "203.0.113.0/24"]
