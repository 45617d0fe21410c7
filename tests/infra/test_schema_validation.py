"""Bad stack config, run through the real program under mocks, stops it before any resource exists."""

from __future__ import annotations

import copy

import pytest

from infra.harness.mocked import run_program
from infra.stack_config import StackConfigError
from infra.stack_files import stack_config
from infra.stack_inputs import SECRET_KEYS

DEPLOYMENT, FEDERATION = "tff-k8s:deployment", "tff-k8s:federation"


def _with(stack: str, key: str, path: str, value: object) -> dict:
    """The stack's ``key`` config object with the dotted ``path`` set to ``value``."""
    obj = copy.deepcopy(stack_config(stack)[key])
    *parents, leaf = path.split(".")
    node = obj
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return {key: obj}


def _fails_before_any_resource(stack: str, **kwargs: object) -> str:
    run = run_program(stack, check=False, **kwargs)  # type: ignore[arg-type]
    assert isinstance(run.error, StackConfigError), run.error
    assert run.resources == [], [r.name for r in run.resources]
    return str(run.error)


CASES = [
    ("dev", DEPLOYMENT, "clients.replicas", 1, "deployment.clients.replicas"),
    ("prod", DEPLOYMENT, "clients.resources.limits.memory", "1Gi", "deployment.clients.resources"),
    ("prod", DEPLOYMENT, "image.ref", "ghcr.io/tff-k8s/tff-k8s:latest", "deployment.image.ref"),
    ("prod", DEPLOYMENT, "image.ref", "ghcr.io/tff-k8s/tff-k8s:0.1.0", "deployment.image.ref"),
    ("dev", DEPLOYMENT, "clients.replicaz", 3, "deployment.clients.replicaz"),
    ("dev", FEDERATION, "training.min_clients", 4, "deployment.clients.replicas"),
    ("prod", FEDERATION, "security.tls", False, "federation.security.tls"),
    ("dev", FEDERATION, "training.aggregator", "median", "federation.training.aggregator"),
]


@pytest.mark.parametrize(("stack", "key", "path", "value", "named"), CASES)
def test_invalid_config_fails_before_any_resource(
    stack: str, key: str, path: str, value: object, named: str
) -> None:
    message = _fails_before_any_resource(stack, overrides=_with(stack, key, path, value))
    assert f"{named}:" in message, message


def test_malformed_config_object_is_named() -> None:
    message = _fails_before_any_resource("dev", overrides={DEPLOYMENT: "[1, 2"})
    assert "deployment:" in message


def test_config_section_must_be_a_mapping() -> None:
    message = _fails_before_any_resource("dev", overrides={FEDERATION: [1, 2]})
    assert "federation: must be a mapping" in message


@pytest.mark.parametrize("missing", ["authToken", "tlsCaCert", "tlsServerCert", "tlsServerKey"])
def test_prod_without_a_stack_secret_names_it(missing: str) -> None:
    secrets = {f"tff-k8s:{k}": f"value-of-{k}" for k in SECRET_KEYS if k != missing}
    message = _fails_before_any_resource("prod", secrets=secrets)
    assert f"tff-k8s:{missing}: missing stack secret" in message
    assert f"pulumi config set --secret tff-k8s:{missing}" in message


def test_mutual_tls_needs_client_certificates() -> None:
    secrets = {f"tff-k8s:{k}": "x" for k in ("authToken", "tlsCaCert", "tlsServerCert", "tlsServerKey")}
    message = _fails_before_any_resource(
        "prod", secrets=secrets, overrides=_with("prod", FEDERATION, "security.mutual_tls", True)
    )
    assert "tff-k8s:tlsClientCert" in message and "tff-k8s:tlsClientKey" in message


def test_dev_needs_no_secrets() -> None:
    run = run_program("dev", secrets={})
    assert run.error is None
    assert not [r for r in run.resources if r.type == "kubernetes:core/v1:Secret"]


def test_secret_values_reach_secrets_as_pulumi_secrets() -> None:
    secrets = {f"tff-k8s:{k}": f"value-of-{k}" for k in SECRET_KEYS}
    run = run_program("prod", secrets=secrets)
    by_name = {r.name: r for r in run.resources if r.type == "kubernetes:core/v1:Secret"}
    assert by_name["tff-k8s-auth"].inputs["stringData"] == {"token": "value-of-authToken"}
    assert by_name["tff-server-tls"].inputs["stringData"] == {
        "ca.crt": "value-of-tlsCaCert",
        "tls.crt": "value-of-tlsServerCert",
        "tls.key": "value-of-tlsServerKey",
    }
    # without mutual TLS the clients get the CA only, never a private key
    assert by_name["tff-client-tls"].inputs["stringData"] == {"ca.crt": "value-of-tlsCaCert"}
    assert all(r.secret_paths == ("stringData",) for r in by_name.values())
