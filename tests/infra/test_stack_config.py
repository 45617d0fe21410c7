"""The typed stack config: defaults, the committed stack files, and the rules each bad value breaks."""

from __future__ import annotations

import pytest

from infra.image_ref import check_image, parse_image
from infra.quantity import byte_count, cpu_millis, format_bytes, format_cpu
from infra.stack_config import StackConfigError, parse
from infra.stack_files import stack_config

DIGEST = "sha256:" + "ab" * 32


def test_defaults_are_a_valid_dev_config() -> None:
    cfg = parse({}, {})
    assert cfg.deployment.environment == "dev"
    assert cfg.deployment.clients.replicas >= cfg.federation.training.min_clients
    assert cfg.federation.client.server_address == "tff-server.tff-k8s.svc:50051"


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_committed_stack_files_parse(stack: str) -> None:
    raw = stack_config(stack)
    assert set(raw) <= {"tff-k8s:deployment", "tff-k8s:federation"}, (
        "secrets belong in `pulumi config set --secret`"
    )
    cfg = parse(raw["tff-k8s:deployment"], raw["tff-k8s:federation"])
    assert cfg.deployment.environment == stack
    d = cfg.deployment
    assert (
        cfg.federation.client.server_address
        == f"{d.server.name}.{d.namespace}.svc:{cfg.federation.server.port}"
    )


def test_dev_targets_kind_with_local_images() -> None:
    raw = stack_config("dev")
    cfg = parse(raw["tff-k8s:deployment"], raw["tff-k8s:federation"])
    assert cfg.deployment.kubernetes.context == "kind-tff-k8s"
    assert cfg.deployment.image.pull_policy == "IfNotPresent"
    assert cfg.deployment.clients.replicas == 3


def test_prod_is_bigger_pinned_and_encrypted() -> None:
    dev_raw, prod_raw = stack_config("dev"), stack_config("prod")
    dev = parse(dev_raw["tff-k8s:deployment"], dev_raw["tff-k8s:federation"])
    prod = parse(prod_raw["tff-k8s:deployment"], prod_raw["tff-k8s:federation"])
    assert prod.deployment.clients.replicas > dev.deployment.clients.replicas
    for side in ("server", "clients"):
        prod_req, dev_req = (getattr(c.deployment, side).resources.requests for c in (prod, dev))
        assert cpu_millis(prod_req.cpu) > cpu_millis(dev_req.cpu)
        assert byte_count(prod_req.memory) > byte_count(dev_req.memory)
    assert parse_image(prod.deployment.image.ref).digest
    assert prod.federation.security.tls and prod.federation.security.token_file
    assert prod.deployment.server.storage.storage_class


BAD_CASES = [
    # (deployment, federation, key the error must name, words it must contain)
    (
        {"clients": {"replicas": 2}},
        {"training": {"min_clients": 3, "clients_per_round": 2}},
        "deployment.clients.replicas",
        "min_clients",
    ),
    (
        {
            "clients": {
                "resources": {
                    "requests": {"cpu": "1", "memory": "1Gi"},
                    "limits": {"cpu": "500m", "memory": "1Gi"},
                }
            }
        },
        {},
        "deployment.clients.resources",
        "limits.cpu",
    ),
    (
        {
            "server": {
                "resources": {
                    "requests": {"cpu": "1", "memory": "2Gi"},
                    "limits": {"cpu": "1", "memory": "1Gi"},
                }
            }
        },
        {},
        "deployment.server.resources",
        "limits.memory",
    ),
    ({"image": {"ref": "ghcr.io/x/tff-k8s:latest"}}, {}, "deployment.image.ref", "latest"),
    ({"image": {"ref": "ghcr.io/x/tff-k8s"}}, {}, "deployment.image.ref", "neither tag nor digest"),
    ({"environment": "prod", "image": {"ref": "ghcr.io/x/tff-k8s:1.0"}}, {}, "deployment.image.ref", "digest"),
    ({"images": {"server": f"ghcr.io/x/s@{DIGEST}"}}, {}, "deployment.images", "one image serves both roles"),
    ({"image": {"pull_secrets": ["Ghcr_Pull"]}}, {}, "deployment.image.pull_secrets.0", "DNS-1123 subdomain"),
    ({"image": {"pull_secrets": ["a", "b", "a"]}}, {}, "deployment.image.pull_secrets", "more than once"),
    ({"image": {"pull_secrets": "ghcr-pull"}}, {}, "deployment.image.pull_secrets", "tuple"),
    ({"network": {"dns_cidrs": ["169.254.20.10/16"]}}, {}, "deployment.network.dns_cidrs", "host bits set"),
    ({"network": {"dns_cidrs": ["kube-dns"]}}, {}, "deployment.network.dns_cidrs", "not a CIDR block"),
    ({"network": {"dns_cidrs": ["0.0.0.0/0"]}}, {}, "deployment.network.dns_cidrs", "every address"),
    (
        {"network": {"dns_cidrs": ["169.254.20.10", "169.254.20.10/32"]}},
        {},
        "deployment.network.dns_cidrs",
        "more than once",
    ),
    ({}, {"server": {"health_port": 50051}}, "federation.server", "must differ"),
    (
        {"environment": "prod", "image": {"ref": f"s@{DIGEST}"}},
        {"security": {"tls": False}},
        "federation.security.tls",
        "prod requires TLS",
    ),
    (
        {"environment": "prod", "image": {"ref": f"s@{DIGEST}"}},
        {"security": {"token_file": None}},
        "federation.security.token_file",
        "auth",
    ),
    ({"replica": 3}, {}, "deployment.replica", "unknown key"),
    ({"clients": {"replicas": 3, "cpu": "1"}}, {}, "deployment.clients.cpu", "unknown key"),
    ({}, {"training": {"roundz": 3}}, "federation.training.roundz", "unknown key"),
    (
        {},
        {"training": {"min_clients": 2, "clients_per_round": 3}},
        "federation.training",
        "clients_per_round",
    ),
    ({}, {"client": {"server_address": "elsewhere:1"}}, "federation.client.server_address", "Service"),
    ({"namespace": "TFF_K8S"}, {}, "deployment.namespace", "DNS-1123"),
    ({"server": {"storage": {"size": "lots"}}}, {}, "deployment.server.storage.size", "byte quantity"),
    ({"clients": {"max_surge": 0, "max_unavailable": 0}}, {}, "deployment.clients", "never progress"),
    ({"clients": {"replicas": 3, "max_disrupted": 4}}, {}, "deployment.clients.max_disrupted", "exceeds"),
    ({"clients": {"max_disrupted": 0}}, {}, "deployment.clients.max_disrupted", "greater than or equal to 1"),
    ({"clients": {"min_available": 2}}, {}, "deployment.clients.min_available", "max_disrupted"),
    ({}, {"server": {"host": "127.0.0.1"}}, "federation.server.host", "0.0.0.0"),
    ({}, {"client": {"health_port": 0}}, "federation.client.health_port", "probes"),
    ({}, {"data": {"source": "npz", "npz_dir": "/data"}}, "federation.data.source", "npz"),
    ({}, {"server": {"output_dir": "/tmp/out"}}, "federation.server.output_dir", "overlaps"),
    ({}, {"security": {"cert_file": "/etc/other/tls.crt"}}, "federation.security.cert_file", "one directory"),
]


@pytest.mark.parametrize(("deployment", "federation", "key", "words"), BAD_CASES)
def test_bad_config_names_the_key(deployment: dict, federation: dict, key: str, words: str) -> None:
    with pytest.raises(StackConfigError) as err:
        parse(deployment, federation)
    message = str(err.value)
    assert f"{key}:" in message and words in message, message


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(StackConfigError) as err:
        parse({"bogus": 1, "image": {"ref": "x:latest"}}, {"client": {"server_address": "a:1"}})
    message = str(err.value)
    for key in ("deployment.bogus", "deployment.image.ref", "federation.client.server_address"):
        assert f"{key}:" in message, message


@pytest.mark.parametrize(("quantity", "millis"), [("500m", 500), ("2", 2000), ("0.25", 250), ("1.5", 1500)])
def test_cpu_quantities(quantity: str, millis: int) -> None:
    assert cpu_millis(quantity) == millis
    assert cpu_millis(format_cpu(millis)) == millis


@pytest.mark.parametrize(
    ("quantity", "count"), [("512Mi", 512 * 2**20), ("2Gi", 2 * 2**30), ("1G", 10**9), ("100", 100)]
)
def test_byte_quantities(quantity: str, count: int) -> None:
    assert byte_count(quantity) == count
    assert byte_count(format_bytes(count)) == count


@pytest.mark.parametrize("bad", ["", "1.5m", "-1", "two", "0"])
def test_bad_cpu_quantities_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        cpu_millis(bad)


@pytest.mark.parametrize(
    ("ref", "repository", "tag", "digest"),
    [
        ("tff-k8s-server:dev", "tff-k8s-server", "dev", None),
        ("localhost:5000/tff/server:1.2", "localhost:5000/tff/server", "1.2", None),
        ("localhost:5000/tff/server", "localhost:5000/tff/server", None, None),
        (f"ghcr.io/a/b:1.0@{DIGEST}", "ghcr.io/a/b", "1.0", DIGEST),
    ],
)
def test_image_references_parse(ref: str, repository: str, tag: str | None, digest: str | None) -> None:
    assert parse_image(ref) == (repository, tag, digest)


def test_registry_port_is_not_a_tag() -> None:
    with pytest.raises(ValueError, match="neither tag nor digest"):
        check_image("localhost:5000/tff/server", require_digest=False)
    with pytest.raises(ValueError, match="digest"):
        check_image("ghcr.io/a/b@sha256:short", require_digest=False)
