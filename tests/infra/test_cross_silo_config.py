"""Bad cross-silo config stops the program before any resource, naming the key to fix."""

from __future__ import annotations

from typing import Any

import pytest
from cross_silo_stack import STACK, Edit, config

from infra.harness.mocked import run_program
from infra.stack_config import StackConfigError


def _fails_before_any_resource(edit: Edit, **kwargs: Any) -> str:
    run = run_program(STACK, overrides=config(edit), check=False, **kwargs)
    assert isinstance(run.error, StackConfigError), run.error
    assert run.resources == [], [r.name for r in run.resources]
    return str(run.error)


def _silo(i: int, **changes: Any) -> Edit:
    def edit(d: dict[str, Any], _f: dict[str, Any]) -> None:
        d["silos"][i] |= changes

    return edit


def _hub(**changes: Any) -> Edit:
    def edit(d: dict[str, Any], _f: dict[str, Any]) -> None:
        d["hub"] = {k: v for k, v in (d["hub"] | changes).items() if v is not None}

    return edit


def _security(**changes: Any) -> Edit:
    def edit(_d: dict[str, Any], f: dict[str, Any]) -> None:
        f["security"] |= changes

    return edit


def _hub_clients(d: dict[str, Any], _f: dict[str, Any]) -> None:
    d["clients"] = {"replicas": 3}


def _named_hub(d: dict[str, Any], _f: dict[str, Any]) -> None:
    d["hub"]["public_address"] = "hub.example.org:30051"
    for silo in d["silos"]:
        del silo["hub_cidr"]


def _too_few(_d: dict[str, Any], f: dict[str, Any]) -> None:
    f["training"] |= {"min_clients": 5, "clients_per_round": 5}


CASES = {
    "duplicate silo names": (_silo(1, name="silo-a"), "deployment.silos.1.name"),
    "TLS off across clusters": (_security(tls=False, mutual_tls=False), "federation.security.tls"),
    "mutual TLS off across clusters": (_security(mutual_tls=False), "federation.security.mutual_tls"),
    "two silos in one namespace of one cluster": (
        _silo(1, kubernetes={"context": "kind-silo-a"}),
        "deployment.silos.1.namespace",
    ),
    "a silo in the hub's namespace": (
        _silo(0, kubernetes={"context": "kind-hub"}, namespace="tff-hub"),
        "deployment.silos.0.namespace",
    ),
    "a silo reaching the hub without an address": (_hub(public_address=None), "deployment.hub.public_address"),
    "a silo the generated CA cannot sign": (_silo(0, identity={"generate": False}), "deployment.silos.0.identity.generate"),
    "a load balancer the stack does not allow": (
        _hub(service_type="LoadBalancer", node_port=None),
        "deployment.network.allow_load_balancer",
    ),
    "a node port service without its port": (_hub(node_port=None), "deployment.hub.node_port"),
    "a hub name without the silo's egress block": (_named_hub, "deployment.silos.0.hub_cidr"),
    "clients on the hub": (_hub_clients, "deployment.clients"),
    "fewer clients in all silos than a round needs": (_too_few, "deployment.silos"),
    "a silo named like the hub's folder": (_silo(0, name="hub"), "deployment.silos.0.name"),
    "an open egress block": (_silo(0, hub_cidr="0.0.0.0/0"), "deployment.silos.0.hub_cidr"),
    "a data path that leaves its claim": (_silo(0, data={"pvc": "x", "path": "../etc"}), "deployment.silos.0.data.path"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_cross_silo_config_is_named(case: str) -> None:
    edit, key = CASES[case]
    message = _fails_before_any_resource(edit)
    assert f"{key}:" in message, message


def test_a_silo_without_credentials_names_its_stack_secrets() -> None:
    def from_secrets(d: dict[str, Any], _f: dict[str, Any]) -> None:
        d["hub"]["ca"] = "secrets"
        d["silos"][1]["identity"] = {"generate": False}

    secrets = {f"tff-k8s:{k}": "x" for k in ("tlsCaCert", "tlsServerCert", "tlsServerKey", "tlsCaKey")}
    message = _fails_before_any_resource(from_secrets, secrets=secrets)
    assert "tff-k8s:tlsClientCert-silo-b: missing stack secret" in message
    assert "tff-k8s:tlsClientKey-silo-b" in message and "silo-a" not in message


def test_generated_silo_certificates_under_a_stack_ca_need_its_key() -> None:
    def ca_from_secrets(d: dict[str, Any], _f: dict[str, Any]) -> None:
        d["hub"]["ca"] = "secrets"

    secrets = {f"tff-k8s:{k}": "x" for k in ("tlsCaCert", "tlsServerCert", "tlsServerKey")}
    message = _fails_before_any_resource(ca_from_secrets, secrets=secrets)
    assert "tff-k8s:tlsCaKey: missing stack secret" in message


def test_the_committed_stack_needs_no_secrets() -> None:
    assert run_program(STACK, secrets={}).error is None
