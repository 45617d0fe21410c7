"""Rotating a stack secret (TLS material, the client token) updates its Secret in place, and the Pods
read it only at start: the Pods that mount it must be rolled. Each workload's Pod template carries a
hash of exactly the material it mounts, and nothing of the values themselves."""

from __future__ import annotations

import json
import re
from functools import cache

import pytest

from infra.config_objects import SECRETS_DIGEST_ANNOTATION
from infra.declared import MockedRun
from infra.harness.mocked import run_program
from infra.stack_inputs import SECRET_KEYS

BASE = {f"tff-k8s:{k}": f"random-{k}-0f3c9a" for k in SECRET_KEYS}
POD, DEPLOYMENT = "kubernetes:core/v1:Pod", "kubernetes:apps/v1:Deployment"


@cache
def _run(rotated: str | None = None) -> MockedRun:
    secrets = dict(BASE)
    if rotated is not None:
        secrets[f"tff-k8s:{rotated}"] += "-rotated"
    return run_program("prod", secrets=secrets)


def _digests(run: MockedRun) -> tuple[str, str]:
    server = run.one(POD).inputs["metadata"]["annotations"][SECRETS_DIGEST_ANNOTATION]
    clients = run.one(DEPLOYMENT).inputs["spec"]["template"]["metadata"]["annotations"]
    return server, clients[SECRETS_DIGEST_ANNOTATION]


@pytest.mark.parametrize(
    ("rotated", "server_rolls", "clients_roll"),
    [
        ("authToken", True, True),  # both mount the token
        ("tlsCaCert", True, True),  # both trust the CA
        ("tlsServerCert", True, False),  # only the server mounts its certificate and key
        ("tlsServerKey", True, False),
        ("tlsClientCert", False, False),  # prod runs without mutual TLS: nobody mounts it
    ],
)
def test_a_rotation_rolls_exactly_the_pods_that_read_it(
    rotated: str, server_rolls: bool, clients_roll: bool
) -> None:
    before, after = _digests(_run()), _digests(_run(rotated))
    assert (before[0] != after[0], before[1] != after[1]) == (server_rolls, clients_roll)


def test_the_same_material_gives_the_same_digest() -> None:
    """A deploy without a rotation changes nothing (no needless restarts)."""
    assert _digests(_run()) == _digests(run_program("prod", secrets=BASE))


def test_the_server_pod_is_replaced_when_its_digest_changes() -> None:
    """A bare Pod is not restarted by a new annotation: Pulumi must replace it (delete first: the Pod's
    name is fixed). The Deployment needs nothing: a changed template is a rollout."""
    pod = _run().one(POD)
    assert f'metadata.annotations["{SECRETS_DIGEST_ANNOTATION}"]' in pod.replace_on_changes
    assert pod.delete_before_replace
    assert _run().one(DEPLOYMENT).replace_on_changes == ()


def test_the_annotation_holds_a_hash_and_no_secret_value() -> None:
    run = _run()
    for digest in _digests(run):
        assert re.fullmatch(r"[0-9a-f]{64}", digest)
    outside_secrets = json.dumps([r.inputs for r in run.resources if not r.type.endswith(":Secret")])
    assert not [value for value in BASE.values() if value in outside_secrets]
    # a secret anywhere in them would make Pulumi hide the whole Pod metadata / Deployment spec in diffs
    assert run.one(POD).secret_paths == () and run.one(DEPLOYMENT).secret_paths == ()


def test_a_stack_without_secrets_carries_no_digest() -> None:
    run = run_program("dev")
    assert "annotations" not in run.one(POD).inputs["metadata"]
    assert "annotations" not in run.one(DEPLOYMENT).inputs["spec"]["template"]["metadata"]
